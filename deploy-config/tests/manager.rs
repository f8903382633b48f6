//! ConfigurationManager: layered files per environment and application, environment
//! variables, the record store, validation, secrets, and reload keeping the last good
//! configuration.

use std::sync::Arc;

use deploy_config::validate::{Custom, OneOf, Pattern, Range, Required};
use deploy_config::{
    Config, ConfigError, ConfigurationManager, Defaults, EnvVars, Files, Requirement, Secret, StoreSource,
};
use deploy_core::{MemoryStore, RecordStoreExt};
use serde::Deserialize;
use tokio::sync::watch;

#[derive(Debug, Deserialize, PartialEq)]
struct Server {
    host: String,
    port: u16,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct App {
    server: Server,
    log_level: String,
    allowed_origins: Vec<String>,
    database: Database,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Database {
    url: String,
    password: Secret<String>,
}

struct Dir(std::path::PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("deploykit-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("production")).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).unwrap();
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn defaults() -> Defaults {
    Defaults::new(
        "defaults",
        &serde_json::json!({
            "server": {"host": "0.0.0.0", "port": 8080},
            "log_level": "info",
            "allowed_origins": [],
            "database": {"url": "postgres://localhost/app", "password": "dev"}
        }),
    )
    .unwrap()
}

#[tokio::test]
async fn files_layer_per_environment_and_application_with_provenance() {
    let dir = Dir::new("layers");
    dir.write("base.toml", "[server]\nhost = \"10.0.0.1\"\nport = 80\n");
    dir.write("production.yaml", "server:\n  port: 443\nlog_level: warn\n");
    dir.write(
        "production/shop.json",
        "{\n  \"allowed_origins\": [\"https://shop.example\"]\n}\n",
    );
    let manager = ConfigurationManager::new();
    manager.add_config_source(defaults(), Requirement::Required);
    manager.add_config_source(Files::new(&dir.0), Requirement::Required);
    let config = manager.get_config("production", "shop").await.unwrap();
    let app: App = config.get().unwrap();
    assert_eq!(
        app.server,
        Server {
            host: "10.0.0.1".into(),
            port: 443
        }
    );
    assert_eq!(app.log_level, "warn");
    assert_eq!(app.allowed_origins, ["https://shop.example"]);
    let stack: Vec<String> = config
        .explain("server.port")
        .iter()
        .map(|entry| entry.origin.to_string())
        .collect();
    assert_eq!(stack.len(), 3, "{stack:?}");
    assert_eq!(stack[0], "defaults");
    assert!(
        stack[1].ends_with("base.toml:3)") && stack[2].ends_with("production.yaml:2)"),
        "{stack:?}"
    );
    // Staging has no staging file: base only.
    let staging: App = manager
        .get_config("staging", "shop")
        .await
        .unwrap()
        .get()
        .unwrap();
    assert_eq!(staging.server.port, 80);
}

#[tokio::test]
async fn environment_variables_resolve_against_the_target_type() {
    let manager = ConfigurationManager::for_type::<App>();
    manager.add_config_source(defaults(), Requirement::Required);
    let vars = [
        ("APP_SERVER__PORT", "9000"),
        ("APP_LOG_LEVEL", "debug"),
        ("APP_ALLOWED_ORIGINS", "https://a.example, https://b.example"),
        ("APP_DATABASE_PASSWORD", "s3cret"),
        ("APP_EXTRA__NESTED__KEY", "kept"),
        ("OTHER_SERVER__PORT", "1"),
    ];
    manager.add_config_source(
        EnvVars::from_map(
            "APP",
            vars.iter()
                .map(|(name, value)| (name.to_string(), value.to_string())),
        ),
        Requirement::Optional,
    );
    let config = manager.get_config("production", "shop").await.unwrap();
    let app: App = config.get().unwrap();
    assert_eq!(app.server.port, 9000, "`__` nests");
    assert_eq!(app.log_level, "debug", "a snake_case field, not log.level");
    assert_eq!(
        app.allowed_origins,
        ["https://a.example", "https://b.example"],
        "a known array takes a list"
    );
    assert_eq!(
        app.database.password.expose(),
        "s3cret",
        "single `_` can also nest into a known path"
    );
    assert_eq!(config.get_at::<String>("extra.nested.key").unwrap(), "kept");
    assert_eq!(
        config.explain("server.port").last().unwrap().origin.to_string(),
        "env APP_SERVER__PORT"
    );
}

#[tokio::test]
async fn all_errors_of_a_load_are_reported_together() {
    let dir = Dir::new("errors");
    dir.write("base.toml", "[server\nport = 80\n");
    let manager = ConfigurationManager::new();
    manager.add_config_source(defaults(), Requirement::Required);
    manager.add_config_source(Files::new(&dir.0), Requirement::Required);
    manager.add_config_source(Files::new(dir.0.join("missing")), Requirement::Required);
    manager.add_config_source(Files::new(dir.0.join("also-missing")), Requirement::Optional);
    let errors = manager.get_config("production", "shop").await.unwrap_err();
    assert_eq!(errors.0.len(), 2, "{errors}");
    assert!(
        matches!(&errors.0[0], ConfigError::Parse { file, line: 1, .. } if file.ends_with("base.toml")),
        "{errors}"
    );
    assert!(
        errors.0[1].to_string().contains("missing") && errors.0[1].to_string().contains("required"),
        "{errors}"
    );
}

#[tokio::test]
async fn validators_report_every_failure_with_its_source() {
    let manager = ConfigurationManager::new();
    manager.add_config_source(
        Defaults::new(
            "defaults",
            &serde_json::json!({"server": {"port": 70000, "host": "bad host"}, "log_level": "loud"}),
        )
        .unwrap(),
        Requirement::Required,
    );
    manager.add_validator(Required(vec!["server.port".into(), "database.url".into()]));
    manager.add_validator(Range {
        path: "server.port".into(),
        min: 1.0,
        max: 65535.0,
    });
    manager.add_validator(OneOf {
        path: "log_level".into(),
        allowed: vec!["info".into(), "warn".into()],
    });
    manager.add_validator(Pattern::new("server.host", r"^[a-z0-9.-]+$").unwrap());
    manager.add_validator(Custom(|tree: &deploy_config::Node| {
        if tree.get("server.tls").is_none() {
            vec![(
                "server.tls".to_owned(),
                "must be configured in production".to_owned(),
            )]
        } else {
            vec![]
        }
    }));
    let errors = manager.get_config("production", "shop").await.unwrap_err();
    let messages: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
    assert_eq!(messages.len(), 5, "{messages:#?}");
    assert!(messages[0].contains("database.url") && messages[0].contains("required"));
    assert!(messages[1].contains("70000") && messages[1].contains("(set by defaults)"));
    assert!(
        messages[2].contains("loud")
            && messages[3].contains("bad host")
            && messages[4].contains("server.tls")
    );
}

#[tokio::test]
async fn secrets_stay_out_of_explain_and_logs() {
    let manager = ConfigurationManager::new();
    manager.add_config_source(defaults(), Requirement::Required);
    manager.mark_secret("database.password");
    let config = manager.get_config("production", "shop").await.unwrap();
    let explained = format!("{:?}", config.explain("database.password"));
    assert!(
        explained.contains("[redacted]") && !explained.contains("dev"),
        "{explained}"
    );
    let described = config.describe().join("\n");
    assert!(
        described.contains("database.password = [redacted]")
            && described.contains("server.port = Integer(8080)"),
        "{described}"
    );
    let app: App = config.get().unwrap();
    assert_eq!(format!("{:?}", app.database.password), "[redacted]");
}

#[tokio::test]
async fn reload_swaps_valid_changes_and_keeps_the_last_good_one() {
    let dir = Dir::new("reload");
    dir.write("base.yaml", "server:\n  host: a\n  port: 1000\n");
    let manager = Arc::new(ConfigurationManager::new());
    manager.add_config_source(Files::new(&dir.0), Requirement::Required);
    manager.add_validator(Range {
        path: "server.port".into(),
        min: 1.0,
        max: 65535.0,
    });
    let mut updates = manager.subscribe("production", "shop");
    let first = manager.get_config("production", "shop").await.unwrap();
    assert_eq!(first.version, 1);
    updates.changed().await.unwrap();

    dir.write("base.yaml", "server:\n  host: a\n  port: 2000\n");
    let second = manager.reload("production", "shop").await.unwrap();
    assert_eq!(
        (second.version, second.get_at::<u16>("server.port").unwrap()),
        (2, 2000)
    );
    updates.changed().await.unwrap();
    assert_eq!(updates.borrow().as_ref().unwrap().version, 2);

    dir.write("base.yaml", "server:\n  host: a\n  port: [oops\n");
    assert!(manager.reload("production", "shop").await.is_err());
    dir.write("base.yaml", "server:\n  host: a\n  port: 99999\n");
    assert!(
        manager
            .reload("production", "shop")
            .await
            .unwrap_err()
            .to_string()
            .contains("99999")
    );
    let current = manager.get_config("production", "shop").await.unwrap();
    assert_eq!(
        (current.version, current.get_at::<u16>("server.port").unwrap()),
        (2, 2000),
        "the last good one serves"
    );
    assert!(
        !updates.has_changed().unwrap(),
        "refused builds are not announced"
    );
    // An unchanged rebuild keeps the version.
    dir.write("base.yaml", "server:\n  host: a\n  port: 2000\n");
    assert_eq!(manager.reload("production", "shop").await.unwrap().version, 2);
}

/// A manager reading `config/` documents from a store that holds `config/base`.
async fn store_backed() -> (Arc<MemoryStore>, Arc<ConfigurationManager>) {
    let store = Arc::new(MemoryStore::new());
    store
        .put("config/base", r#"{"server": {"host": "a", "port": 1}}"#.into())
        .await
        .unwrap();
    let manager = Arc::new(ConfigurationManager::new());
    manager.add_config_source(StoreSource::new(store.clone(), "config/"), Requirement::Required);
    (store, manager)
}

#[tokio::test(start_paused = true)]
async fn spawned_reload_picks_up_store_changes() {
    let (store, manager) = store_backed().await;
    let mut updates = manager.subscribe("production", "shop");
    let task = manager
        .spawn_reload("production", "shop", std::time::Duration::from_secs(5))
        .unwrap();
    updates.wait_for(|config| config.is_some()).await.unwrap();
    store
        .put("config/production/shop", r#"{"server": {"port": 2}}"#.into())
        .await
        .unwrap();
    let config = updates
        .wait_for(|config| config.as_ref().is_some_and(|config| config.version == 2))
        .await
        .unwrap()
        .clone()
        .unwrap();
    assert_eq!(config.get_at::<u16>("server.port").unwrap(), 2);
    assert!(
        config
            .explain("server.port")
            .last()
            .unwrap()
            .origin
            .to_string()
            .contains("config/production/shop")
    );
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn watched_store_changes_rebuild_at_once_and_bad_documents_are_refused() {
    let (store, manager) = store_backed().await;
    let mut updates = manager.subscribe("production", "shop");
    let task = manager.spawn_watch("production", "shop");
    updates.wait_for(|config| config.is_some()).await.unwrap();
    let port = |config: &Option<Arc<Config>>| {
        config
            .as_ref()
            .map(|config| (config.version, config.get_at::<u16>("server.port").unwrap()))
    };

    let written = tokio::time::Instant::now();
    store
        .put("config/production/shop", r#"{"server": {"port": 2}}"#.into())
        .await
        .unwrap();
    updates.changed().await.unwrap();
    assert_eq!(port(&updates.borrow_and_update()), Some((2, 2)));
    assert_eq!(
        written.elapsed(),
        deploy_config::SETTLE,
        "one settling pause, no polling"
    );

    // Another scope's document and an unrelated key are not this scope's changes.
    store
        .put("config/staging", r#"{"server": {"port": 9}}"#.into())
        .await
        .unwrap();
    store.put("flags/x", "{}".into()).await.unwrap();
    // A broken document is refused; the last good configuration keeps serving.
    store.put("config/production", "{ not json".into()).await.unwrap();
    assert!(manager.reload("production", "shop").await.is_err());
    store
        .put(
            "config/production",
            r#"{"server": {"host": "b", "port": 3}}"#.into(),
        )
        .await
        .unwrap();
    updates.changed().await.unwrap();
    // The repaired environment document moves the host; the scope's own document still
    // sets the port over it.
    let config = updates.borrow_and_update().clone().unwrap();
    assert_eq!(config.version, 3);
    assert_eq!(config.get_at::<String>("server.host").unwrap(), "b");
    assert_eq!(config.get_at::<u16>("server.port").unwrap(), 2);
    assert_eq!(config.explain("server.port").len(), 3);
    task.abort();
}

/// Waits, at most 10 s of real time, for build `version` or a later one.
async fn build(updates: &mut watch::Receiver<Option<Arc<Config>>>, version: u64) -> Arc<Config> {
    let reached = updates.wait_for(|config| config.as_ref().is_some_and(|config| config.version >= version));
    tokio::time::timeout(std::time::Duration::from_secs(10), reached)
        .await
        .unwrap_or_else(|_| panic!("no build {version} within 10 s"))
        .unwrap()
        .clone()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_files_rebuild_on_save_including_a_directory_created_later() {
    // Real file-system notifications, so a real clock: every wait is bounded, none is slept.
    let dir = Dir::new("watch");
    std::fs::remove_dir_all(dir.0.join("production")).unwrap();
    dir.write("base.yaml", "server:\n  host: a\n  port: 1\n");
    let manager = Arc::new(ConfigurationManager::new());
    manager.add_config_source(Files::new(&dir.0), Requirement::Required);
    let mut updates = manager.subscribe("production", "shop");
    let task = manager.spawn_watch("production", "shop");
    build(&mut updates, 1).await;
    let port = |config: Arc<Config>| (config.version, config.get_at::<u16>("server.port").unwrap());

    dir.write("base.yaml", "server:\n  host: a\n  port: 2\n");
    assert_eq!(port(build(&mut updates, 2).await), (2, 2));

    std::fs::create_dir_all(dir.0.join("production")).unwrap();
    dir.write("production/shop.toml", "[server]\nport = 3\n");
    assert_eq!(port(build(&mut updates, 3).await), (3, 3));

    // A broken save is refused and the last good configuration serves; the repair lands.
    dir.write("production/shop.toml", "[server\nport = 4\n");
    assert!(manager.reload("production", "shop").await.is_err());
    assert_eq!(
        port(manager.get_config("production", "shop").await.unwrap()),
        (3, 3)
    );
    dir.write("production/shop.toml", "[server]\nport = 4\n");
    assert_eq!(port(build(&mut updates, 4).await), (4, 4));
    task.abort();
}

/// M17 (rest) / m14: a caller asking for ever more distinct scopes cannot grow the cache
/// past `MAX_CACHED_SCOPES`; a subscribed scope is never the one dropped.
#[tokio::test]
async fn the_cache_is_bounded_and_keeps_subscribed_scopes() {
    let manager = ConfigurationManager::new();
    manager.add_config_source(defaults(), Requirement::Required);
    let mut kept = manager.subscribe("production", "kept");
    manager.get_config("production", "kept").await.unwrap();
    for index in 0..deploy_config::MAX_CACHED_SCOPES + 40 {
        manager
            .get_config("production", &format!("app-{index}"))
            .await
            .unwrap();
        assert!(manager.cached_scopes() <= deploy_config::MAX_CACHED_SCOPES);
    }
    // The subscribed entry survived: its sender is alive and still holds the configuration.
    assert!(kept.has_changed().is_ok());
    assert_eq!(
        kept.borrow_and_update().as_ref().map(|config| config.version),
        Some(1)
    );
    // A dropped scope is rebuilt on its next use.
    assert_eq!(
        manager.get_config("production", "app-0").await.unwrap().version,
        1
    );
}

/// m8: a zero reload interval (which made `tokio::time::interval` panic inside the task) is
/// a typed error, and so is a bad scope; a tiny interval works.
#[tokio::test(start_paused = true)]
async fn spawn_reload_refuses_a_zero_interval() {
    let (_store, manager) = store_backed().await;
    let zero = std::time::Duration::ZERO;
    assert_eq!(
        manager.spawn_reload("production", "shop", zero).unwrap_err(),
        ConfigError::InvalidInterval { interval: zero }
    );
    assert!(matches!(
        manager.spawn_reload("../etc", "shop", std::time::Duration::from_secs(1)),
        Err(ConfigError::InvalidScope { .. })
    ));
    let mut updates = manager.subscribe("production", "shop");
    let task = manager
        .spawn_reload("production", "shop", std::time::Duration::from_nanos(1))
        .unwrap();
    updates.wait_for(|config| config.is_some()).await.unwrap();
    assert!(!task.is_finished());
    task.abort();
}
