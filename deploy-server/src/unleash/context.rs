//! Unleash contexts from query strings as deploykit [`Context`]s (JSON ones are
//! [`deploy_flags::unleash::context_from_json`]).

use deploy_flags::Context;

/// A context from a query string, as Unleash's frontend SDKs send it: `userId=..`,
/// `properties[plan]=pro` (or `properties.plan`, or any other name, as a property).
pub(super) fn from_query(pairs: &[(String, String)]) -> Context {
    let mut context = Context::new();
    for (name, value) in pairs {
        let name = name
            .strip_prefix("properties[")
            .and_then(|rest| rest.strip_suffix(']'))
            .or_else(|| name.strip_prefix("properties."))
            .unwrap_or(name);
        context.set(name, value.clone());
    }
    context
}
