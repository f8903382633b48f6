//! Infrastructure as code on real files: the resources of each environment come from
//! layered configuration (deploy-config: `base.yaml`, then `staging.yaml` merging resources
//! by name); plan and apply them under a temporary directory, change a file behind the
//! tool's back and see the drift, plan a change, then destroy everything in reverse
//! dependency order.
//!
//! ```text
//! cargo run --example infra
//! ```

use std::sync::Arc;

use deploykit::config::{ArrayPolicy, ConfigurationManager, Files, MergePolicy, Requirement};
use deploykit::core::MemoryStore;
use deploykit::core::time::SystemClock;
use deploykit::infra::{FileProvider, Infra, Resource, StateStore};
use serde_json::json;

const BASE: &str = r#"resources:
  - kind: file
    name: shop/config/app.toml
    config: { content: "port = 8080\nworkers = 4\n" }
  - kind: file
    name: shop/config/limits.toml
    config: { content: "rps = 500\n" }
    depends_on: [file.shop/config/app.toml]
  - kind: file
    name: shop/README
    config: { content: "managed by deploykit\n" }
    depends_on: [file.shop/config/app.toml, file.shop/config/limits.toml]
"#;

const STAGING: &str = r#"resources:
  - kind: file
    name: shop/config/limits.toml
    config: { content: "rps = 50\n" }
    depends_on: [file.shop/config/app.toml]
"#;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("deploykit-infra-example-{}", std::process::id()));
    let (config_dir, root) = (dir.join("config"), dir.join("files"));
    std::fs::create_dir_all(&config_dir)?;
    std::fs::write(config_dir.join("base.yaml"), BASE)?;
    std::fs::write(config_dir.join("staging.yaml"), STAGING)?;
    let config = ConfigurationManager::new();
    let by_name = MergePolicy::default().at("resources", ArrayPolicy::MergeByKey("name".into()));
    config.add_config_source(
        Files::new(&config_dir).with_policy(by_name),
        Requirement::Required,
    );
    let staging = config.get_config("staging", "shop").await?;
    let desired: Vec<Resource> = staging.get_at("resources")?;
    let origin = staging
        .tree()
        .get("resources.1.config.content")
        .map_or("?".into(), |node| node.origin.to_string());
    println!(
        "staging declares {} resources; limits.toml's content comes from {origin}",
        desired.len()
    );

    let states = StateStore::new(Arc::new(MemoryStore::new()), SystemClock::shared());
    let infra = Infra::new(states).provider(FileProvider::new(&root));

    println!("== plan (files under {})", root.display());
    println!("{}", infra.plan("staging", &desired).await?.render());
    let report = infra.apply("staging", &desired, "example").await?;
    println!(
        "\n== apply: {:?}",
        report
            .done
            .iter()
            .map(|(id, action)| format!("{action:?} {id}"))
            .collect::<Vec<_>>()
    );
    println!("plan again: {}", infra.plan("staging", &desired).await?.render());

    println!("\n== someone edits app.toml by hand");
    std::fs::write(root.join("shop/config/app.toml"), "port = 9999\nworkers = 4\n")?;
    let drift = infra.refresh("staging").await?;
    for change in drift
        .changes
        .iter()
        .filter(|change| change.action != deploykit::infra::Action::NoOp)
    {
        println!(
            "drift: {:?} {} (now {})",
            change.action,
            change.id,
            change
                .before
                .as_ref()
                .map_or("gone".into(), |now| now.to_string())
        );
    }

    println!("\n== a change in the declaration: more workers");
    let mut changed = desired.clone();
    changed[0].config = json!({"content": "port = 8080\nworkers = 8\n"});
    println!("{}", infra.plan("staging", &changed).await?.render());
    infra.apply("staging", &changed, "example").await?;
    println!(
        "app.toml now:\n{}",
        std::fs::read_to_string(root.join("shop/config/app.toml"))?
    );

    let destroyed = infra.destroy("staging", "example").await?;
    println!(
        "== destroy: {:?}",
        destroyed
            .done
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
