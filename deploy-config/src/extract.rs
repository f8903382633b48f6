//! Typed extraction of a merged tree into the caller's serde type.

use serde::de::DeserializeOwned;

use crate::error::{ConfigError, ConfigErrors};
use crate::value::Node;

/// Deserializes `tree` into `T`; an error names the key path, what was expected, and the
/// source that set the offending value (or that the key is missing).
///
/// # Errors
/// [`ConfigError::Extract`] for the first value that does not fit (serde stops there).
pub fn extract<T: DeserializeOwned>(tree: &Node) -> Result<T, ConfigErrors> {
    serde_path_to_error::deserialize(tree.to_json()).map_err(|error| {
        let path = error.path().to_string();
        // serde_path_to_error writes `servers[0].host`; the tree is addressed `servers.0.host`.
        let dotted = path.replace('[', ".").replace(']', "");
        let dotted = if dotted == "." { String::new() } else { dotted };
        let origin = tree.get(&dotted).filter(|_| !dotted.is_empty()).map_or_else(
            || "no source (the key is missing)".to_owned(),
            |node| node.origin.to_string(),
        );
        ConfigErrors(vec![ConfigError::Extract {
            path,
            message: error.into_inner().to_string(),
            origin,
        }])
    })
}
