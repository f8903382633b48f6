//! The contract suite for [`Provider`]: run it against every implementation (feature
//! `conformance`). A violation panics with a message naming the broken rule, so it is meant
//! for tests.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use deploy_infra::{SimProvider, conformance};
//! use serde_json::json;
//!
//! conformance::provider(&SimProvider::new("sim"), "fresh", &json!({"size": 1}), &json!({"size": 2}), None).await;
//! # }
//! ```

use serde_json::Value;

use crate::model::Provider;

/// Runs [`Provider`]'s `# Contract` on the resource `name`, which must not exist yet:
/// creates it with `config`, updates it to `changed`, deletes it, each twice (idempotence),
/// reading it back after each; then, given `refused` (a name and configuration that
/// `validate` refuses), checks that `create` and `update` of it fail and leave nothing.
/// Leaves `name` deleted.
///
/// # Panics
/// When the provider breaks the contract.
pub async fn provider(
    provider: &dyn Provider,
    name: &str,
    config: &Value,
    changed: &Value,
    refused: Option<(&str, &Value)>,
) {
    let kind = provider.kind().to_owned();
    let read = async |config: &Value| {
        let read = provider.read(name, config).await;
        read.unwrap_or_else(|error| panic!("{}: read of {name} failed: {error}", provider.kind()))
    };
    assert_eq!(
        read(config).await,
        None,
        "{kind}: read of a missing resource is Ok(None)"
    );
    for config in [config, changed] {
        provider
            .validate(name, config)
            .unwrap_or_else(|reason| panic!("{kind}: validate refused {config}: {reason}"));
        assert!(
            !provider.requires_replace(config, config),
            "{kind}: a configuration is not a replace of itself"
        );
    }

    let created = provider.create(name, config).await.expect("create");
    assert_eq!(
        read(config).await,
        Some(created.clone()),
        "{kind}: read returns what create did"
    );
    let again = provider.create(name, config).await.expect("create again");
    assert_eq!(
        again, created,
        "{kind}: create again with the same configuration is idempotent"
    );

    let updated = provider.update(name, changed).await.expect("update");
    assert_eq!(
        read(changed).await,
        Some(updated.clone()),
        "{kind}: read returns what update did"
    );
    let again = provider.update(name, changed).await.expect("update again");
    assert_eq!(
        again, updated,
        "{kind}: update again with the same configuration is idempotent"
    );

    provider.delete(name, changed).await.expect("delete");
    assert_eq!(read(changed).await, None, "{kind}: nothing is left after delete");
    provider
        .delete(name, changed)
        .await
        .unwrap_or_else(|error| panic!("{kind}: deleting a missing resource is Ok, got {error}"));

    if let Some((name, config)) = refused {
        assert!(
            provider.validate(name, config).is_err(),
            "{kind}: the refused case validates"
        );
        assert!(
            provider.create(name, config).await.is_err(),
            "{kind}: create of a refused case fails"
        );
        assert!(
            provider.update(name, config).await.is_err(),
            "{kind}: update of a refused case fails"
        );
        assert!(
            !matches!(provider.read(name, config).await, Ok(Some(_))),
            "{kind}: a refused create or update leaves nothing"
        );
    }
}
