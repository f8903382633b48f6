//! Arbitrary input never panics the loaders or the evaluator: random JSON (and random
//! flag-shaped JSON, to reach the deeper checks) is either refused with an error or
//! compiled, and whatever compiles evaluates.

use deploy_flags::unleash::UnleashState;
use deploy_flags::{Context, FileFormat, FlagEngine};
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

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
