//! Arbitrary input never panics the loaders or the evaluator: random bytes, random JSON,
//! random YAML token soup, and random flag-shaped JSON and YAML (to reach the deeper checks)
//! are either refused with a typed error or compiled, and whatever compiles evaluates; the
//! same goes for Unleash client features and deltas, and for garbage stored under a flag
//! manager's keys (reported and skipped, never fatal).

use std::sync::Arc;

use deploy_core::{DynStore, MemoryStore, RecordStoreExt};
use deploy_flags::unleash::UnleashState;
use deploy_flags::{Context, FeatureFlagManager, FileFormat, FlagDefinition, FlagEngine, FlagError, FlagSet};
use proptest::prelude::*;
use serde_json::{Value, json};

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1.0e6f64..1.0e6).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            proptest::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9.:/@^$*()\\[\\]-]{0,10}",
        Just("1.2.3".into()),
        Just("10.0.0.0/8".into()),
        Just("2024-01-01T00:00:00Z".into())
    ]
}

fn operator() -> impl Strategy<Value = String> {
    proptest::sample::select(vec![
        "IN",
        "NOT_IN",
        "STR_CONTAINS",
        "STR_STARTS_WITH",
        "STR_ENDS_WITH",
        "REGEX",
        "NUM_EQ",
        "NUM_GT",
        "NUM_GTE",
        "NUM_LT",
        "NUM_LTE",
        "SEMVER_EQ",
        "SEMVER_GT",
        "SEMVER_GTE",
        "SEMVER_LT",
        "SEMVER_LTE",
        "DATE_AFTER",
        "DATE_BEFORE",
        "IN_CIDR",
        "BOGUS",
    ])
    .prop_map(str::to_owned)
}

fn constraint() -> impl Strategy<Value = Value> {
    (proptest::sample::select(vec!["userId", "email", "currentTime", "remoteAddress", "v"]), operator(), proptest::collection::vec(text(), 0..3), proptest::option::of(text()), any::<bool>(), any::<bool>())
        .prop_map(|(name, operator, values, value, inverted, case_insensitive)| {
            json!({"contextName": name, "operator": operator, "values": values, "value": value, "inverted": inverted, "caseInsensitive": case_insensitive})
        })
}

fn variant() -> impl Strategy<Value = Value> {
    (proptest::sample::select(vec!["a", "b", "c"]), 0u32..5, proptest::sample::select(vec!["string", "number", "json", "csv"]), text())
        .prop_map(|(name, weight, kind, value)| json!({"name": name, "weight": weight, "payload": {"type": kind, "value": value}}))
}

fn flag_shaped() -> impl Strategy<Value = Value> {
    let rule = (
        proptest::collection::vec(constraint(), 0..3),
        proptest::option::of(0u32..150),
        proptest::collection::vec(variant(), 0..3),
        proptest::collection::vec(proptest::sample::select(vec!["s1", "s2"]), 0..2),
    )
        .prop_map(|(constraints, percentage, variants, segments)| {
            let mut rule = json!({"constraints": constraints, "variants": variants, "segments": segments});
            if let Some(percentage) = percentage {
                rule["rollout"] = json!({"percentage": percentage, "stickiness": "userId"});
            }
            rule
        });
    let flag = (
        proptest::sample::select(vec!["f1", "f2", "f3"]),
        any::<bool>(),
        proptest::sample::select(vec!["boolean", "string", "number", "json"]),
        proptest::collection::vec(rule, 0..3),
        proptest::collection::vec(variant(), 0..3),
        proptest::option::of(proptest::sample::select(vec!["f1", "f2", "f3", "zz"])),
    )
        .prop_map(|(name, enabled, kind, rules, variants, prerequisite)| {
            let mut flag =
                json!({"name": name, "enabled": enabled, "kind": kind, "rules": rules, "variants": variants});
            if let Some(prerequisite) = prerequisite {
                flag["prerequisites"] = json!([{"flag": prerequisite}]);
            }
            flag
        });
    (
        proptest::collection::vec(flag, 0..4),
        proptest::collection::vec(constraint(), 0..2),
    )
        .prop_map(
            |(flags, segment)| json!({"flags": flags, "segments": [{"id": "s1", "constraints": segment}]}),
        )
}

fn unleash_shaped() -> impl Strategy<Value = Value> {
    let strategy = (proptest::sample::select(vec!["default", "flexibleRollout", "userWithId", "gradualRolloutRandom", "remoteAddress", "custom"]), text(), proptest::collection::vec(constraint(), 0..3), proptest::collection::vec(0i64..3, 0..2), proptest::collection::vec(variant(), 0..2))
        .prop_map(|(name, parameter, constraints, segments, variants)| {
            json!({"name": name, "parameters": {"rollout": parameter, "userIds": parameter, "percentage": parameter, "IPs": parameter, "groupId": "g"}, "constraints": constraints, "segments": segments, "variants": variants})
        });
    let feature = (
        proptest::sample::select(vec!["a", "b"]),
        any::<bool>(),
        proptest::collection::vec(strategy, 0..3),
        proptest::collection::vec(variant(), 0..3),
        proptest::option::of(proptest::sample::select(vec!["a", "b", "c"])),
    )
        .prop_map(|(name, enabled, strategies, variants, parent)| {
            let mut feature =
                json!({"name": name, "enabled": enabled, "strategies": strategies, "variants": variants});
            if let Some(parent) = parent {
                feature["dependencies"] = json!([{"feature": parent}]);
            }
            feature
        });
    (proptest::collection::vec(feature, 0..4), proptest::collection::vec(constraint(), 0..2))
        .prop_map(|(features, constraints)| json!({"version": 2, "features": features, "segments": [{"id": 1, "constraints": constraints}]}))
}

fn contexts() -> Vec<Context> {
    vec![
        Context::new(),
        Context::new()
            .user_id("u1")
            .property("email", "a@b.c")
            .property("v", "1.2.3")
            .remote_address("10.1.2.3"),
        Context::new()
            .session_id("s")
            .property("currentTime", "not a date")
            .property("v", "x"),
    ]
}

fn evaluate_everything(engine: &FlagEngine) {
    let snapshot = engine.snapshot();
    for context in contexts() {
        for name in ["f1", "f2", "f3", "a", "b", "zz"] {
            let _ = snapshot.evaluate(name, &context);
            let _ = engine.evaluate(name, &context);
        }
    }
}

/// JSON as block-style YAML (strings double-quoted, which JSON's escapes are valid for).
fn to_yaml(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                out.push_str(&format!("\n{pad}- "));
                to_yaml(item, indent + 2, out);
            }
        }
        Value::Object(entries) if !entries.is_empty() => {
            for (key, item) in entries {
                out.push_str(&format!("\n{pad}{}: ", Value::from(key.as_str())));
                to_yaml(item, indent + 2, out);
            }
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Pieces that mean something to a YAML parser, to build adversarial documents from.
fn yaml_soup() -> impl Strategy<Value = String> {
    let token = proptest::sample::select(vec![
        "flags:",
        "- ",
        "name: ",
        "a",
        "enabled: true",
        "&x ",
        "*x",
        "<<: *x",
        "[",
        "]",
        "{",
        "}",
        ", ",
        ": ",
        "? ",
        "|",
        ">-",
        "'",
        "\"",
        "#",
        "---",
        "...",
        "!!str ",
        "!tag ",
        "\n",
        "\n  ",
        "\t",
        "%YAML 1.2\n",
        "\\u0000",
        "1e999",
        "-.inf",
        "0x1F",
        "~",
        "é",
    ]);
    proptest::collection::vec(token, 0..40).prop_map(|tokens| tokens.concat())
}

fn assert_parse_error(error: &FlagError, format: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        matches!(error, FlagError::Parse { origin, format: found, .. } if origin == "random" && *found == format),
        "not a {} parse error: {}",
        format,
        error
    );
    Ok(())
}

/// Loads `text` in `format`; whatever parses either compiles (and evaluates) or is refused
/// with an error naming a flag or segment, leaving the engine as it was.
fn load(text: &str, format: FileFormat) -> Result<Option<FlagSet>, TestCaseError> {
    let name = if format == FileFormat::Json {
        "JSON"
    } else {
        "YAML"
    };
    let set = match format.parse(text, "random") {
        Ok(set) => set,
        Err(error) => {
            assert_parse_error(&error, name)?;
            return Ok(None);
        }
    };
    let engine = FlagEngine::new();
    match engine.replace(set.clone()) {
        Ok(_) => evaluate_everything(&engine),
        Err(error) => {
            let named = error.flag().is_some() || matches!(error, FlagError::InvalidSegment { .. });
            prop_assert!(named, "error names no flag: {error}");
            prop_assert_eq!(
                engine.snapshot().version(),
                0,
                "a refused update changed the snapshot"
            );
        }
    }
    Ok(Some(set))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Every decoder reachable from outside, on arbitrary bytes: a value or a typed error.
    #[test]
    fn arbitrary_bytes_are_refused_or_loaded_by_every_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        load(&text, FileFormat::Json)?;
        load(&text, FileFormat::Yaml)?;
        let mut state = UnleashState::default();
        if let Err(error) = state.hydrate_json(&text) {
            prop_assert!(matches!(error, FlagError::Parse { .. }), "{error}");
        }
        if let Err(error) = state.apply_delta_json(&text) {
            prop_assert!(matches!(error, FlagError::Parse { .. }), "{error}");
        }
    }

    /// YAML built from its own special tokens (anchors, aliases, merge keys, tags, flow and
    /// block collections, directives, odd scalars): parsed or refused, never a panic or hang.
    #[test]
    fn adversarial_yaml_is_refused_or_loaded(text in yaml_soup()) {
        load(&text, FileFormat::Yaml)?;
    }

    /// The same flag set written as JSON and as block YAML loads the same way.
    #[test]
    fn flag_shaped_yaml_reads_as_its_json_does(value in flag_shaped()) {
        let mut yaml = String::new();
        to_yaml(&value, 0, &mut yaml);
        let from_json = load(&value.to_string(), FileFormat::Json)?;
        let from_yaml = load(&yaml, FileFormat::Yaml)?;
        prop_assert_eq!(from_json, from_yaml, "YAML:{}", yaml);
    }

    /// Unleash deltas: a hydration event carrying client features always applies and
    /// loads; random JSON as a delta applies or is a parse error.
    #[test]
    fn unleash_deltas_apply_or_are_refused(shaped in unleash_shaped(), random in any_json()) {
        let mut state = UnleashState::default();
        let delta = json!({"events": [{"type": "hydration", "eventId": 1, "features": shaped["features"], "segments": shaped["segments"]}]});
        state.apply_delta_json(&delta.to_string()).map_err(|error| TestCaseError::fail(error.to_string()))?;
        if let Err(error) = state.apply_delta_json(&random.to_string()) {
            prop_assert!(matches!(error, FlagError::Parse { .. }), "{error}");
        }
        let engine = FlagEngine::new();
        engine.replace(state.to_flag_set().flags).map_err(|error| TestCaseError::fail(error.to_string()))?;
        evaluate_everything(&engine);
    }

    /// Garbage under a flag manager's keys (random bytes, random JSON, flag-shaped records
    /// under random names) never stops `open` or `reload`: every stored flag either serves
    /// or is reported as quarantined, and a valid flag alongside keeps serving.
    #[test]
    fn garbage_in_the_store_is_reported_and_skipped(
        records in proptest::collection::vec(
            (
                prop_oneof!["[a-z]{1,3}", "[a-z/ .é]{1,6}"],
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..64),
                    any_json().prop_map(|value| value.to_string().into_bytes()),
                    flag_shaped().prop_map(|set| json!({
                        "definition": set["flags"].get(0), "revision": 1,
                        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
                        "last_change": {"flag": "f1", "revision": 1, "at": "2026-01-01T00:00:00Z",
                                        "actor": "a", "action": "create", "before": null, "after": null}
                    }).to_string().into_bytes()),
                ],
            ),
            0..6,
        )
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let store: Arc<DynStore> = Arc::new(MemoryStore::new());
            let manager = FeatureFlagManager::open(store.clone(), Default::default()).await.unwrap();
            manager.create_flag("ann", FlagDefinition::new("good-flag", true)).await.unwrap();
            for (name, value) in &records {
                store.put(&format!("flags/defs/{name}"), value.clone().into()).await.unwrap();
            }
            let reopened = FeatureFlagManager::open(store.clone(), Default::default())
                .await
                .map_err(|error| TestCaseError::fail(format!("open failed: {error}")))?;
            manager.reload().await.map_err(|error| TestCaseError::fail(format!("reload failed: {error}")))?;
            for manager in [&manager, &reopened] {
                prop_assert!(manager.is_enabled("good-flag", &Context::new()));
                let snapshot = manager.engine().snapshot();
                let quarantined: Vec<String> = manager.quarantined().into_iter().map(|bad| bad.flag).collect();
                for record in store.list("flags/defs/").await.unwrap() {
                    let name = &record.key["flags/defs/".len()..];
                    let served = snapshot.definition(name).is_some();
                    let reported = quarantined.iter().any(|bad| bad == name);
                    // The record of a deleted flag keeps its history with no definition.
                    let deleted = serde_json::from_slice::<Value>(&record.value)
                        .is_ok_and(|value| value.get("definition").is_some_and(Value::is_null));
                    match deleted {
                        true => prop_assert!(!served, "{name}: a deleted flag serves"),
                        false => prop_assert!(served != reported, "{name}: served {served}, reported {reported}"),
                    }
                }
            }
            Ok(())
        })?;
    }

    #[test]
    fn arbitrary_json_is_refused_or_loaded(value in any_json()) {
        let text = value.to_string();
        if let Ok(set) = FileFormat::Json.parse(&text, "random")
            && let Ok(engine) = FlagEngine::with_flags(set)
        {
            evaluate_everything(&engine);
        }
        let mut state = UnleashState::default();
        if state.hydrate_json(&text).is_ok() {
            let engine = FlagEngine::new();
            let _ = engine.replace(state.to_flag_set().flags);
        }
    }

    #[test]
    fn flag_shaped_json_is_refused_with_a_named_flag_or_loaded(value in flag_shaped()) {
        let engine = FlagEngine::new();
        match FileFormat::Json.parse(&value.to_string(), "random") {
            Ok(set) => match engine.replace(set) {
                Ok(_) => evaluate_everything(&engine),
                Err(error) => {
                    let named = error.flag().is_some() || matches!(error, deploy_flags::FlagError::InvalidSegment { .. });
                    prop_assert!(named, "error names no flag: {error}");
                    prop_assert_eq!(engine.snapshot().version(), 0, "a refused update changed the snapshot");
                }
            },
            Err(error) => prop_assert!(error.to_string().contains("random")),
        }
    }

    #[test]
    fn unleash_state_always_imports_and_evaluates(value in unleash_shaped()) {
        let mut state = UnleashState::default();
        state.hydrate_json(&value.to_string()).expect("well-formed client features");
        let engine = FlagEngine::new();
        let import = state.to_flag_set();
        // Unleash's leniency is translated, so its state always loads (duplicated names aside).
        let names: std::collections::HashSet<_> = import.flags.flags.iter().map(|flag| flag.name.clone()).collect();
        prop_assert_eq!(names.len(), import.flags.flags.len());
        engine.replace(import.flags).map_err(|error| TestCaseError::fail(error.to_string()))?;
        evaluate_everything(&engine);
    }
}
