//! Unleash's JSON context as a deploykit [`Context`].

use serde_json::Value;

use crate::context::Context;

/// A context from Unleash's JSON (an SDK's, a frontend request's, a specification case's):
/// standard fields at the top, custom ones under `properties` (a custom field at the top
/// counts as a property too, as Unleash does). Numbers and booleans count as their text;
/// `null`, objects and arrays as absent.
pub fn context_from_json(json: &Value) -> Context {
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
