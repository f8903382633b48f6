//! Secrets stay out of `Debug`, errors and logs (security review M8.3, M8.4), and
//! `Secret<T>` cannot be silently destroyed by a serialize round trip (m16).

mod common;

use deploy_config::validate::{Custom, OneOf, Pattern, Range};
use deploy_config::{ConfigurationManager, Defaults, EnvVars, Requirement, Secret};
use serde::{Deserialize, Serialize};

use common::{assert_hidden, logged};

const SECRET: &str = "hunter2-Zq8x";
const PIN: i64 = 987_654_321;

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Database {
    url: String,
    password: u16,
    pin: String,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct App {
    database: Database,
}

fn manager() -> ConfigurationManager {
    let manager = ConfigurationManager::new();
    let values = serde_json::json!({
        "server": {"port": 8080},
        "database": {"url": "postgres://db/app", "password": SECRET, "pin": PIN},
    });
    manager.add_config_source(Defaults::new("defaults", &values).unwrap(), Requirement::Required);
    manager.mark_secret("database.password");
    manager.mark_secret("database.pin");
    manager
}

/// M8.3: `Config` and `ConfigurationManager` (whose cache holds every configuration) print
/// their structure with secret values `[redacted]`; sources holding values print none.
#[tokio::test]
async fn debug_output_redacts_secret_paths() {
    let manager = manager();
    let config = manager.get_config("production", "shop").await.unwrap();
    for shown in [format!("{config:?}"), format!("{config:#?}")] {
        assert_hidden(&shown, &[SECRET, &PIN.to_string()]);
        assert!(
            shown.contains("database.password") && shown.contains("[redacted]") && shown.contains("8080"),
            "{shown}"
        );
    }
    let shown = format!("{manager:?}");
    assert_hidden(&shown, &[SECRET, &PIN.to_string()]);
    assert!(
        shown.contains("production") && shown.contains("database.pin"),
        "{shown}"
    );
    let env = EnvVars::from_map("APP", [("APP_DATABASE__PASSWORD".to_owned(), SECRET.to_owned())]);
    let defaults = Defaults::new("defaults", &serde_json::json!({"password": SECRET})).unwrap();
    for shown in [format!("{env:?}"), format!("{defaults:?}")] {
        assert_hidden(&shown, &[SECRET]);
    }
    assert!(format!("{env:?}").contains("APP_DATABASE__PASSWORD"));
}

/// M8.4: a secret of the wrong type names the key and the expected type, but not the value,
/// in `Display` and `Debug` of the error, whole or at a path.
#[tokio::test]
async fn extraction_errors_redact_secret_values() {
    let config = manager().get_config("production", "shop").await.unwrap();
    let whole = config.get::<App>().unwrap_err();
    let at = config.get_at::<u16>("database.password").unwrap_err();
    let pin = config.get_at::<bool>("database.pin").unwrap_err();
    for error in [whole, at, pin] {
        for shown in [format!("{error}"), format!("{error:?}")] {
            assert_hidden(&shown, &[SECRET, &PIN.to_string()]);
            assert!(
                shown.contains("database.") && shown.contains("[redacted]"),
                "{shown}"
            );
        }
    }
    let error = config.get_at::<u16>("database.password").unwrap_err().to_string();
    assert!(error.contains("u16") && error.contains("defaults"), "{error}");
    // Values that are not secret are still quoted.
    let error = config.get_at::<u16>("database.url").unwrap_err().to_string();
    assert!(error.contains("postgres://db/app"), "{error}");
}

/// M8.4: validators quote the value they refuse; at a secret path the build's errors and
/// the WARN the manager logs for them show `[redacted]` instead.
#[tokio::test]
async fn validator_errors_and_their_log_redact_secret_values() {
    let manager = manager();
    manager.add_validator(OneOf {
        path: "database.password".into(),
        allowed: vec!["other".into()],
    });
    manager.add_validator(Pattern::new("database.password", "^[0-9]+$").unwrap());
    manager.add_validator(Range {
        path: "database.pin".into(),
        min: 0.0,
        max: 10.0,
    });
    manager.add_validator(Custom(|tree: &deploy_config::Node| {
        let value = tree
            .get("database.password")
            .map(|node| format!("{:?}", node.value));
        vec![("database.password".to_owned(), format!("weak: {value:?}"))]
    }));
    let (result, logs) = logged(manager.get_config("production", "shop")).await;
    let errors = result.unwrap_err();
    assert_eq!(errors.0.len(), 4, "{errors}");
    for shown in [format!("{errors}"), format!("{errors:?}"), logs.clone()] {
        assert_hidden(&shown, &[SECRET, &PIN.to_string()]);
        assert!(
            shown.contains("database.password") && shown.contains("[redacted]"),
            "{shown}"
        );
    }
    assert!(
        logs.contains("WARN") && logs.contains("configuration refused"),
        "{logs}"
    );
}

/// m16: `Serialize` redacts, so reading a serialized secret back is an error rather than a
/// secret whose value is now "[redacted]"; `secret::expose` stores the value itself.
#[test]
fn a_redacted_secret_cannot_be_read_back_and_expose_round_trips() {
    let shown = serde_json::to_string(&Secret::new(SECRET.to_owned())).unwrap();
    assert_eq!(shown, "\"[redacted]\"");
    let error = serde_json::from_str::<Secret<String>>(&shown)
        .unwrap_err()
        .to_string();
    assert!(error.contains("expose"), "{error}");

    #[derive(Serialize, Deserialize)]
    struct Stored {
        #[serde(with = "deploy_config::secret::expose")]
        token: Secret<String>,
        #[serde(with = "deploy_config::secret::expose")]
        pin: Secret<u32>,
    }
    let stored = serde_json::to_string(&Stored {
        token: Secret::new(SECRET.to_owned()),
        pin: Secret::new(1234),
    })
    .unwrap();
    let back: Stored = serde_json::from_str(&stored).unwrap();
    assert_eq!((back.token.expose().as_str(), *back.pin.expose()), (SECRET, 1234));
}

/// m16: equality compares every byte (constant time) and is still exact.
#[test]
fn secret_equality_is_exact() {
    let secret = |text: &str| Secret::new(text.to_owned());
    assert!(secret(SECRET).ct_eq(&secret(SECRET)));
    assert_eq!(secret(SECRET), secret(SECRET));
    for other in ["", "hunter2", "hunter2-Zq8y", "hunter2-Zq8xx", "Hunter2-Zq8x"] {
        assert_ne!(secret(SECRET), secret(other), "{other}");
    }
    assert_eq!(Secret::new(vec![0u8, 1]), Secret::new(vec![0u8, 1]));
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Vault {
    token: Secret<String>,
    pin: Secret<u16>,
    name: String,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct WithVault {
    vault: Vault,
    port: u16,
}

/// M8.3/M8.4, known secret paths: `Secret<T>` fields of the target type are secret without
/// `mark_secret`, in `Debug` (a manager `for_type`) and in extraction errors (any `get`,
/// and the free `extract`); tracing such a type still places environment variables.
#[tokio::test]
async fn secret_fields_of_the_target_type_are_secret_paths() {
    let known = deploy_config::known_paths::<WithVault>();
    assert_eq!(known.secrets, ["vault.token", "vault.pin"]);
    assert!(known.paths.contains(&"vault.name".to_owned()));
    let manager = ConfigurationManager::for_type::<WithVault>();
    let values = serde_json::json!({"vault": {"token": "t", "pin": SECRET, "name": "main"}, "port": 1});
    manager.add_config_source(Defaults::new("defaults", &values).unwrap(), Requirement::Required);
    let vars = [("APP_VAULT_TOKEN".to_owned(), "t0k3n-Qx".to_owned())];
    manager.add_config_source(EnvVars::from_map("APP", vars), Requirement::Required);
    let config = manager.get_config("production", "shop").await.unwrap();
    assert_eq!(config.get_at::<String>("vault.token").unwrap(), "t0k3n-Qx");
    let shown = format!("{config:?}");
    assert_hidden(&shown, &[SECRET, "t0k3n-Qx"]);
    assert!(shown.contains("vault.name") && shown.contains("main"), "{shown}");
    let plain = ConfigurationManager::new();
    plain.add_config_source(Defaults::new("defaults", &values).unwrap(), Requirement::Required);
    let config = plain.get_config("production", "shop").await.unwrap();
    let errors = [
        config.get::<WithVault>().unwrap_err(),
        config.get_at::<Vault>("vault").unwrap_err(),
        deploy_config::extract::<WithVault>(config.tree()).unwrap_err(),
    ];
    for error in errors {
        for shown in [format!("{error}"), format!("{error:?}")] {
            assert_hidden(&shown, &[SECRET]);
            assert!(shown.contains("vault.pin") && shown.contains("u16"), "{shown}");
        }
    }
}

/// m16: formats that ignore the newtype hint hand `Secret` the value itself.
#[test]
fn secrets_read_from_formats_without_newtype_hints() {
    use serde::de::IntoDeserializer;
    use serde::de::value::{Error, SeqDeserializer};
    let text: Secret<String> =
        Secret::deserialize(IntoDeserializer::<Error>::into_deserializer(SECRET)).unwrap();
    assert_eq!(text.expose(), SECRET);
    let number: Secret<u64> =
        Secret::deserialize(IntoDeserializer::<Error>::into_deserializer(7u64)).unwrap();
    assert_eq!(*number.expose(), 7);
    let bytes: Secret<Vec<u8>> =
        Secret::deserialize(SeqDeserializer::<_, Error>::new([1u8, 2].into_iter())).unwrap();
    assert_eq!(bytes.expose(), &[1, 2]);
    let redacted = Secret::<String>::deserialize(IntoDeserializer::<Error>::into_deserializer("[redacted]"));
    assert!(redacted.is_err());
}
