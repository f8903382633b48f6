//! Hostile input into every decoder reachable from outside (TOML, YAML and JSON files and
//! store documents, environment variable names and values): each gives a tree or a typed
//! error, quickly, without panicking; YAML alias bombs and deep nesting are refused; and a
//! secret of the wrong type never shows in an error, a `Debug` or a log line (security
//! review issue 14, M8.4).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use deploy_config::validate::OneOf;
use deploy_config::{
    ConfigError, ConfigSource, ConfigurationManager, Defaults, EnvVars, Format, KnownPaths, Node,
    Requirement, Scope, Value, extract, parse,
};
use deploy_config::{Files, StoreSource};
use deploy_core::{MemoryStore, RecordStoreExt};
use proptest::prelude::*;
use serde::Deserialize;

use common::{assert_hidden, logged};

const FORMATS: [Format; 3] = [Format::Toml, Format::Yaml, Format::Json];

/// How long one decode may take: far more than any of these inputs needs.
const QUICK: Duration = Duration::from_secs(2);

fn depth(node: &Node) -> usize {
    1 + match &node.value {
        Value::Array(items) => items.iter().map(depth).max().unwrap_or(0),
        Value::Table(table) => table.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Parses `text` as `format` and checks the outcome: a tree whose every line is in the text
/// and whose depth is bounded, or a parse error naming the format and a line in the text.
fn decode(text: &str, format: Format) -> Result<Node, ConfigError> {
    let started = Instant::now();
    let result = parse(text, format, "p", "p.conf");
    assert!(
        started.elapsed() < QUICK,
        "{format:?} took {:?}",
        started.elapsed()
    );
    // YAML counts a lone `\r` as a line break too.
    let lines = text.replace("\r\n", "\n").split(['\n', '\r']).count() as u32;
    match &result {
        Ok(tree) => {
            assert!(depth(tree) <= 130, "{format:?}: a tree {} deep", depth(tree));
            for (path, leaf) in tree.leaves() {
                let line = leaf.origin.line.unwrap_or(0);
                assert!(
                    (1..=lines).contains(&line),
                    "{format:?}: {path} at line {line} of {lines}"
                );
            }
        }
        Err(ConfigError::Parse {
            format: name,
            line,
            file,
            ..
        }) => {
            assert_eq!(*name, format!("{format:?}").to_uppercase());
            assert_eq!(file, "p.conf");
            assert!(*line <= lines + 1, "{format:?}: error at line {line} of {lines}");
        }
        Err(other) => panic!("{format:?}: not a parse error: {other:?}"),
    }
    result
}

/// Fragments of TOML, YAML and JSON syntax, so generated input gets past the first byte.
fn adversarial() -> impl Strategy<Value = String> {
    let fragment = prop::sample::select(vec![
        "[",
        "]",
        "{",
        "}",
        "&a ",
        "*a",
        ": ",
        ":",
        "\n",
        "  ",
        "- ",
        "\"",
        "'",
        "#",
        " = ",
        ".",
        ",",
        "a",
        "key",
        "\"k\"",
        "1",
        "-1e999",
        "1e400",
        "0x7fffffffffffffffffff",
        "9223372036854775808",
        "!!binary ",
        "!tag ",
        "? ",
        "|\n",
        ">-\n",
        "---\n",
        "...\n",
        "\\u0000",
        "\\ud800",
        "[[t]]",
        "[t]",
        "\t",
        "é",
        "\u{feff}",
        "%YAML 1.2\n",
        "<<: ",
        "nan",
        "inf",
        "true",
        "null",
        "~",
        "1979-05-27T07:32:00Z",
        "'''",
        "\"\"\"",
        "\r\n",
    ]);
    prop::collection::vec(fragment, 0..160).prop_map(|parts| parts.concat())
}

/// Values nested `depth` deep in each format's own syntax.
fn nested(format: Format, kind: usize, depth: usize) -> String {
    match (format, kind % 3) {
        (Format::Toml, 0) => format!("a = {}1{}", "[".repeat(depth), "]".repeat(depth)),
        (Format::Toml, 1) => format!("a = {}1{}", "{b = ".repeat(depth), "}".repeat(depth)),
        (Format::Toml, _) => format!("{} = 1", vec!["a"; depth.max(1)].join(".")),
        (Format::Json, 0) | (Format::Yaml, 0) => format!("{}1{}", "[".repeat(depth), "]".repeat(depth)),
        (Format::Json, _) => format!("{}1{}", "{\"a\": ".repeat(depth), "}".repeat(depth)),
        (Format::Yaml, 1) => format!("{}1{}", "{a: ".repeat(depth), "}".repeat(depth)),
        // Block style: indentation grows quadratically, so fewer levels.
        (Format::Yaml, _) => (0..depth.min(400))
            .map(|level| format!("{}a:\n", "  ".repeat(level)))
            .chain([format!("{}b: 1\n", "  ".repeat(depth.min(400)))])
            .collect(),
    }
}

fn env_scope() -> Scope {
    Scope::new("production", "shop").unwrap()
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Typed {
    server: Option<Server>,
    log_level: Option<String>,
    servers: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Server {
    port: Option<u16>,
    host: Option<String>,
}

fn env_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "APP_[A-Za-z0-9_]{0,40}",
        "[A-Z_]{0,12}",
        any::<String>(),
        (0usize..300).prop_map(|levels| format!("APP_{}X", "X__".repeat(levels))),
        prop::sample::select(vec![
            "APP_SERVER__PORT",
            "APP_SERVER_PORT",
            "APP_LOG_LEVEL",
            "APP_SERVERS",
            "APP_"
        ])
        .prop_map(str::to_owned),
    ]
}

fn env_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::sample::select(vec![
            "8080",
            "-1",
            "1e999",
            "true",
            "null",
            "[1,2]",
            "a,b,,c",
            "{\"a\":1}",
            "[[[",
            ""
        ])
        .prop_map(str::to_owned),
        (0usize..400).prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth))),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any bytes, in every format: a tree or a typed parse error.
    #[test]
    fn arbitrary_bytes_decode_or_fail_typed(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let text = String::from_utf8_lossy(&bytes);
        for format in FORMATS {
            let _ = decode(&text, format);
        }
    }

    /// Syntax fragments stitched together, in every format: a tree or a typed parse error.
    #[test]
    fn adversarial_syntax_decodes_or_fails_typed(text in adversarial()) {
        for format in FORMATS {
            let _ = decode(&text, format);
        }
    }

    /// Nesting: shallow documents load with their full depth, deep ones are refused with a
    /// parse error rather than overflowing the stack.
    #[test]
    fn deep_nesting_is_refused_not_overflowed(levels in 0usize..3000, kind in 0usize..3) {
        for format in FORMATS {
            let text = nested(format, kind, levels);
            let result = decode(&text, format);
            let built = if format == Format::Yaml && kind % 3 == 2 { levels.min(400) } else { levels };
            if built <= 60 {
                let tree = result.unwrap_or_else(|error| panic!("{format:?} {kind} {levels}: {error}"));
                prop_assert!(depth(&tree) >= built, "{format:?} {kind} {levels}: {}", depth(&tree));
            } else if built > 200 {
                prop_assert!(result.is_err(), "{format:?} {kind} {levels} loaded");
            }
        }
    }

    /// YAML alias bombs (nested fan-out, or one big anchored string aliased many times) are
    /// refused at the first alias, before anything is copied; so is a single alias.
    #[test]
    fn yaml_aliases_and_alias_bombs_are_refused(levels in 1usize..12, fan_out in 1usize..12, payload in 1usize..100_000) {
        let mut bomb = format!("a0: &a0 [\"{}\"]\n", "x".repeat(payload));
        for level in 1..=levels {
            let refs = vec![format!("*a{}", level - 1); fan_out].join(", ");
            bomb.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
        }
        for format in [Format::Yaml, Format::Json] {
            match decode(&bomb, format) {
                Err(ConfigError::Parse { message, line, .. }) => {
                    if format == Format::Yaml {
                        prop_assert!(message.contains("alias") && line == 2, "{message} at {line}");
                    }
                }
                other => prop_assert!(false, "{format:?}: {other:?}"),
            }
        }
    }

    /// Any bytes as a file (each extension) or a store document, through the sources
    /// themselves: layers, or a parse error, or a source error (a file that is not UTF-8).
    #[test]
    fn files_and_store_documents_load_or_fail_typed(
        bytes in prop::collection::vec(any::<u8>(), 0..1024),
        extension in prop::sample::select(vec!["toml", "yaml", "yml", "json"]),
    ) {
        let dir = std::env::temp_dir().join(format!("deploykit-config-hostile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("base.{extension}")), &bytes).unwrap();
        let store = Arc::new(MemoryStore::new());
        let results = runtime().block_on(async {
            store.put("config/base", bytes.clone().into()).await.unwrap();
            let file = Files::new(&dir).load(&env_scope(), &KnownPaths::default()).await;
            let stored = StoreSource::new(store, "config/").load(&env_scope(), &KnownPaths::default()).await;
            [file, stored]
        });
        let _ = std::fs::remove_dir_all(&dir);
        let utf8 = std::str::from_utf8(&bytes).is_ok();
        for (index, result) in results.into_iter().enumerate() {
            match result {
                Ok(layers) => prop_assert_eq!(layers.len(), 1),
                Err(ConfigError::Parse { .. }) => {}
                Err(ConfigError::Source { .. }) if index == 0 && !utf8 => {}
                Err(other) => prop_assert!(false, "{index}: {other:?}"),
            }
        }
    }

    /// Environment variables, any names and values, with any known paths: a layer or a typed
    /// error (a name nesting too deep). Every value comes from a variable with the prefix, and
    /// there is one exactly when such a variable exists; extraction into a typed struct
    /// succeeds or names the key.
    #[test]
    fn environment_variables_load_or_fail_typed(
        vars in prop::collection::vec((env_name(), env_value()), 0..12),
        known in prop::collection::vec(prop::sample::select(vec!["server.port", "server.host", "log_level", "servers", "a.b"]), 0..5),
        arrays in prop::collection::vec(prop::sample::select(vec!["servers", "server.port", "log_level"]), 0..3),
    ) {
        let known = KnownPaths {
            paths: known.into_iter().map(str::to_owned).collect(),
            arrays: arrays.into_iter().map(str::to_owned).collect(),
            ..KnownPaths::default()
        };
        let names: Vec<String> = vars.iter().map(|(name, _)| name.clone()).collect();
        let source = EnvVars::from_map("APP", vars);
        let started = Instant::now();
        let result = runtime().block_on(source.load(&env_scope(), &known));
        prop_assert!(started.elapsed() < QUICK);
        match result {
            Ok(layers) => {
                prop_assert_eq!(layers.len(), 1);
                let tree = &layers[0].tree;
                // An empty layer is one empty table, made by the source rather than a variable.
                let leaves = match &tree.value {
                    Value::Table(table) if table.is_empty() => Vec::new(),
                    _ => tree.leaves(),
                };
                for (path, leaf) in &leaves {
                    let origin = leaf.origin.source.strip_prefix("env ").unwrap_or_default();
                    prop_assert!(origin.len() > 4 && origin.starts_with("APP_") && names.iter().any(|name| name == origin),
                        "{path} from {}", leaf.origin);
                }
                let prefixed = names.iter().any(|name| name.len() > 4 && name.starts_with("APP_"));
                prop_assert_eq!(prefixed, leaves.iter().any(|(_, leaf)| leaf.origin.source.starts_with("env APP_")));
                if let Err(errors) = extract::<Typed>(tree) {
                    prop_assert!(matches!(&errors.0[..], [ConfigError::Extract { .. }]), "{errors}");
                }
            }
            Err(ConfigError::Source { message, .. }) => {
                prop_assert!(message.contains("nests deeper"), "{message}");
                prop_assert!(names.iter().any(|name| name.matches("__").count() >= 128), "{message}");
            }
            Err(other) => prop_assert!(false, "not a source error: {other:?}"),
        }
    }

    /// A secret of the wrong type, from a file-like default or an environment variable: its
    /// value is in no extraction error, validator error, `Debug`, or logged line.
    #[test]
    fn a_wrongly_typed_secret_never_shows(secret in "[a-z]{3}[0-9]{3}[A-Z]{3}[a-z0-9]{0,8}", via_env in any::<bool>()) {
        runtime().block_on(async {
            let manager = ConfigurationManager::new();
            let base = serde_json::json!({"db": {"password": if via_env { "placeholder" } else { secret.as_str() }}});
            manager.add_config_source(Defaults::new("defaults", &base).unwrap(), Requirement::Required);
            if via_env {
                let vars = [("APP_DB__PASSWORD".to_owned(), secret.clone())];
                manager.add_config_source(EnvVars::from_map("APP", vars), Requirement::Required);
            }
            manager.mark_secret("db.password");
            let (config, logs) = logged(manager.get_config("production", "shop")).await;
            let config = config.unwrap();
            let mut shown = vec![logs, format!("{config:?}"), format!("{manager:?}")];
            for error in [
                config.get_at::<u16>("db.password").unwrap_err(),
                config.get_at::<bool>("db.password").unwrap_err(),
                config.get_at::<Vec<u8>>("db").unwrap_err(),
            ] {
                shown.extend([error.to_string(), format!("{error:?}")]);
            }
            manager.add_validator(OneOf { path: "db.password".into(), allowed: vec!["x".into()] });
            let (refused, logs) = logged(manager.reload("production", "shop")).await;
            let errors = refused.unwrap_err();
            prop_assert!(logs.contains("configuration refused"), "{logs}");
            shown.extend([logs, errors.to_string(), format!("{errors:?}")]);
            for text in &shown {
                assert_hidden(text, &[&secret]);
            }
            Ok(())
        })?;
    }
}

/// Found by `adversarial_syntax_decodes_or_fails_typed`: an empty tagged YAML value has no
/// position of its own and was placed at line 0 (it takes the tag's line), and an empty value
/// at the end of the stream was placed past the last line.
#[test]
fn empty_yaml_values_are_placed_within_the_text() {
    let tree = decode("a: 1\nb: !tag\n", Format::Yaml).unwrap();
    assert_eq!(tree.get("b").unwrap().origin.line, Some(2));
    // And an empty value at the end of the stream was placed past the last line.
    let tree = decode("? ", Format::Yaml).unwrap();
    assert_eq!(tree.get("null").unwrap().origin.line, Some(1));
}
