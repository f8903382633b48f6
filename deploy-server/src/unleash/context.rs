//! Unleash contexts (JSON objects or query strings) as deploykit [`Context`]s.

use deploy_flags::Context;
use serde_json::Value;

/// A context from Unleash's JSON: standard fields at the top, custom ones under
/// `properties` (a custom field at the top counts as a property too, as Unleash does).
/// Numbers and booleans count as their text; `null` as absent.
pub(super) fn from_json(json: &Value) -> Context {
    let mut context = Context::new();
    let Some(fields) = json.as_object() else {
        return context;
    };
    for (name, value) in fields {
        if name == "properties" {
            for (property, value) in value.as_object().into_iter().flatten() {
                if let Some(value) = text(value) {
                    context.set(property.clone(), value);
                }
            }
        } else if let Some(value) = text(value) {
            context.set(name.clone(), value);
        }
    }
    context
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Null | Value::Object(_) | Value::Array(_) => None,
        other => Some(other.to_string()),
    }
}

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
