//! Typed extraction of a merged tree into the caller's serde type.

use serde::de::DeserializeOwned;

use crate::error::{ConfigError, ConfigErrors};
use crate::known::known_paths;
use crate::secret::SecretPaths;
use crate::value::Node;

const MISSING: &str = "no source (the key is missing)";

/// Deserializes `tree` into `T`; an error names the key path, what was expected, and the
/// source that set the offending value (or that the key is missing), and never quotes the
/// value of a [`Secret`](crate::Secret) field of `T`.
///
/// # Errors
/// [`ConfigError::Extract`] for the first value that does not fit (serde stops there).
pub fn extract<T: DeserializeOwned>(tree: &Node) -> Result<T, ConfigErrors> {
    extract_at(tree, "", &SecretPaths::default())
}

/// Deserializes the part of `root` at `path` into `T`. Errors name the full path, and the
/// values at `secrets` and at `T`'s [`Secret`](crate::Secret) fields are redacted from them.
pub(crate) fn extract_at<T: DeserializeOwned>(
    root: &Node,
    path: &str,
    secrets: &SecretPaths,
) -> Result<T, ConfigErrors> {
    let Some(node) = root.get(path) else {
        return Err(ConfigErrors(vec![ConfigError::Extract {
            path: path.to_owned(),
            message: "missing".into(),
            origin: MISSING.into(),
        }]));
    };
    serde_path_to_error::deserialize(node.to_json()).map_err(|error| {
        // serde_path_to_error writes `servers[0].host` (`.` for the top); the tree is
        // addressed `servers.0.host`.
        let inner = error.path().to_string().replace('[', ".").replace(']', "");
        let inner = inner.trim_start_matches('.');
        let full = join(path, inner);
        let origin = root
            .get(&full)
            .filter(|_| !full.is_empty())
            .map_or_else(|| MISSING.to_owned(), |node| node.origin.to_string());
        let error = ConfigError::Extract {
            path: full,
            message: error.into_inner().to_string(),
            origin,
        };
        let mut secrets = secrets.clone();
        let typed = known_paths::<T>().secrets;
        secrets.0.extend(typed.iter().map(|inner| join(path, inner)));
        ConfigErrors(vec![secrets.redact(root, error)])
    })
}

fn join(path: &str, inner: &str) -> String {
    match (path, inner) {
        (path, "") => path.to_owned(),
        ("", inner) => inner.to_owned(),
        (path, inner) => format!("{path}.{inner}"),
    }
}
