//! A target type's field paths, for placing environment variables.

use serde::de::DeserializeOwned;
use serde_reflection::{ContainerFormat, Format, Registry, Tracer, TracerConfig};

use crate::source::KnownPaths;

/// The dotted field paths of `T` (and which of them are arrays or [`Secret`](crate::Secret)s),
/// traced from its `Deserialize` impl. Types serde-reflection cannot trace yield no paths (environment
/// variables then nest on `__` only).
pub fn known_paths<T: DeserializeOwned>() -> KnownPaths {
    let mut tracer = Tracer::new(TracerConfig::default());
    let Ok((root, _)) = tracer.trace_simple_type::<T>() else {
        return KnownPaths::default();
    };
    let Ok(registry) = tracer.registry() else {
        return KnownPaths::default();
    };
    let mut known = KnownPaths::default();
    walk(&root, "", &registry, &mut known, 0);
    known
}

fn walk(format: &Format, path: &str, registry: &Registry, known: &mut KnownPaths, depth: usize) {
    // Recursive types would never end; configuration is never this deep.
    if depth > 16 {
        return;
    }
    match format {
        Format::Option(inner) => walk(inner, path, registry, known, depth),
        Format::Seq(_) | Format::TupleArray { .. } => {
            known.paths.push(path.to_owned());
            known.arrays.push(path.to_owned());
        }
        Format::TypeName(name) => match registry.get(name) {
            Some(ContainerFormat::Struct(fields)) => {
                for field in fields {
                    let child = if path.is_empty() {
                        field.name.clone()
                    } else {
                        format!("{path}.{}", field.name)
                    };
                    walk(&field.value, &child, registry, known, depth + 1);
                }
            }
            Some(ContainerFormat::NewTypeStruct(inner)) => {
                if crate::secret::is_secret_name(name) {
                    known.secrets.push(path.to_owned());
                }
                walk(inner, path, registry, known, depth + 1)
            }
            _ if !path.is_empty() => known.paths.push(path.to_owned()),
            _ => {}
        },
        _ if !path.is_empty() => known.paths.push(path.to_owned()),
        _ => {}
    }
}
