//! Layered configuration with provenance and a refused reload.
//!
//! ```text
//! cargo run --example config
//! ```
//!
//! Defaults, then `base.toml`, `production.yaml` and `production/shop.json` (written to a
//! temporary directory), then environment variables: the example prints the merged values
//! with where each came from, explains the layer stack of one key, then saves a broken
//! file and an out-of-range port and shows both reloads refused while the last good
//! configuration keeps serving; finally a watcher picks up a good save on its own.

use std::sync::Arc;

use deploykit::config::validate::Range;
use deploykit::config::{ConfigurationManager, Defaults, EnvVars, Files, Requirement, Secret};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Shop {
    server: Server,
    log_level: String,
    database: Database,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Server {
    host: String,
    port: u16,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Database {
    url: String,
    password: Secret<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("deploykit-config-example-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("production"))?;
    std::fs::write(
        dir.join("base.toml"),
        "[server]\nhost = \"0.0.0.0\"\nport = 8080\n\n[database]\nurl = \"postgres://db/shop\"\n",
    )?;
    std::fs::write(
        dir.join("production.yaml"),
        "server:\n  port: 443\nlog_level: warn\n",
    )?;
    std::fs::write(
        dir.join("production/shop.json"),
        "{\n  \"database\": {\n    \"url\": \"postgres://prod-db/shop\"\n  }\n}\n",
    )?;

    let manager = Arc::new(ConfigurationManager::for_type::<Shop>());
    manager.add_config_source(
        Defaults::new(
            "defaults",
            &serde_json::json!({"log_level": "info", "database": {"password": "dev"}}),
        )?,
        Requirement::Required,
    );
    manager.add_config_source(Files::new(&dir), Requirement::Required);
    let env = [("SHOP_DATABASE_PASSWORD".to_owned(), "from-the-vault".to_owned())];
    manager.add_config_source(EnvVars::from_map("SHOP", env), Requirement::Optional);
    manager.add_validator(Range {
        path: "server.port".into(),
        min: 1.0,
        max: 65535.0,
    });
    manager.mark_secret("database.password");

    let config = manager.get_config("production", "shop").await?;
    println!("configuration v{} for production/shop:", config.version);
    for line in config.describe() {
        println!("  {line}");
    }
    println!("\nexplain server.port:");
    for entry in config.explain("server.port") {
        println!("  {:?} from {}", entry.value, entry.origin);
    }
    let shop: Shop = config.get()?;
    println!("\ntyped: {shop:?}");

    println!("\nsaving a broken production.yaml ...");
    std::fs::write(dir.join("production.yaml"), "server:\n  port: [443\n")?;
    if let Err(errors) = manager.reload("production", "shop").await {
        println!("reload refused: {errors}");
    }
    println!("saving an out-of-range port ...");
    std::fs::write(dir.join("production.yaml"), "server:\n  port: 70000\n")?;
    if let Err(errors) = manager.reload("production", "shop").await {
        println!("reload refused: {errors}");
    }
    let current = manager.get_config("production", "shop").await?;
    println!(
        "still serving v{}: server.port = {}",
        current.version,
        current.get_at::<u16>("server.port")?
    );

    // From here a watcher rebuilds on every save (file-system notifications), no reload call.
    let mut updates = manager.subscribe("production", "shop");
    updates.mark_unchanged();
    let watcher = manager.spawn_watch("production", "shop");
    println!("\nwatching; saving a good production.yaml with port 8443 ...");
    std::fs::write(
        dir.join("production.yaml"),
        "server:\n  port: 8443\nlog_level: warn\n",
    )?;
    let rebuilt = updates.wait_for(|config| config.as_ref().is_some_and(|c| c.version > current.version));
    match tokio::time::timeout(std::time::Duration::from_secs(5), rebuilt).await {
        Ok(Ok(config)) => {
            let config = config.clone().ok_or("no configuration")?;
            println!(
                "the watcher rebuilt v{}: server.port = {}",
                config.version,
                config.get_at::<u16>("server.port")?
            );
        }
        _ => println!("no rebuild within 5 s (are file-system notifications available here?)"),
    }
    watcher.abort();
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
