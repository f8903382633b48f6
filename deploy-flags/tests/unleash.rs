//! Unleash semantics beyond the specification files: the delta API, dependent features,
//! the REGEX and IN_CIDR operators, and Unleash's leniency with bad strategies.

use deploy_flags::unleash::UnleashState;
use deploy_flags::{Context, FlagEngine};
use serde_json::json;

fn engine_of(state: &UnleashState) -> FlagEngine {
    let import = state.to_flag_set();
    FlagEngine::with_flags(import.flags).expect("Unleash state always loads")
}

fn hydrated(features: serde_json::Value) -> UnleashState {
    let mut state = UnleashState::default();
    state
        .hydrate_json(&json!({"version": 2, "features": features}).to_string())
        .unwrap();
    state
}

#[test]
fn delta_events_hydrate_update_and_remove() {
    let mut state = UnleashState::default();
    state
        .apply_delta_json(
            &json!({"events": [
                {"type": "hydration", "eventId": 1, "segments": [{"id": 1, "constraints": [{"contextName": "plan", "operator": "IN", "values": ["pro"]}]}],
                 "features": [
                    {"name": "a", "enabled": true, "strategies": [{"name": "default", "segments": [1]}]},
                    {"name": "b", "enabled": true, "strategies": [{"name": "default"}]}]}
            ]})
            .to_string(),
        )
        .unwrap();
    let pro = Context::new().property("plan", "pro");
    let engine = engine_of(&state);
    assert!(
        engine.is_enabled("a", &pro)
            && !engine.is_enabled("a", &Context::new())
            && engine.is_enabled("b", &pro)
    );

    state
        .apply_delta_json(
            &json!({"events": [
                {"type": "segment-updated", "eventId": 2, "segment": {"id": 1, "constraints": [{"contextName": "plan", "operator": "IN", "values": ["team"]}]}},
                {"type": "feature-removed", "eventId": 3, "featureName": "b", "project": "default"},
                {"type": "feature-updated", "eventId": 4, "feature": {"name": "c", "enabled": true, "strategies": []}},
                {"type": "feature-updated", "eventId": 3, "feature": {"name": "stale", "enabled": true}}
            ]})
            .to_string(),
        )
        .unwrap();
    assert_eq!(state.last_event_id(), Some(4));
    let engine = engine_of(&state);
    assert!(!engine.is_enabled("a", &pro), "the segment changed");
    assert!(engine.is_enabled("a", &Context::new().property("plan", "team")));
    assert!(!engine.is_enabled("b", &pro), "removed");
    assert!(engine.is_enabled("c", &Context::new()));
    assert!(
        engine.snapshot().definition("stale").is_none(),
        "an event at or below the last id is skipped"
    );

    state
        .apply_delta_json(
            &json!({"events": [{"type": "segment-removed", "eventId": 5, "segmentId": 1}]}).to_string(),
        )
        .unwrap();
    let import = state.to_flag_set();
    assert!(
        import.warnings.iter().any(|warning| warning.flag == "a"),
        "{:?}",
        import.warnings
    );
    assert!(
        !engine_of(&state).is_enabled("a", &Context::new().property("plan", "team")),
        "a missing segment switches the flag off"
    );
    assert!(
        state
            .apply_delta_json("{\"events\": [{\"type\": \"nonsense\"}]}")
            .is_err()
    );
}

#[test]
fn dependent_features_follow_their_parent() {
    let state = hydrated(json!([
        {"name": "parent", "enabled": true, "strategies": [{"name": "default", "constraints": [{"contextName": "userId", "operator": "IN", "values": ["1", "2"]}]}],
         "variants": [{"name": "blue", "weight": 1, "stickiness": "userId"}]},
        {"name": "child", "enabled": true, "strategies": [{"name": "default"}], "dependencies": [{"feature": "parent"}]},
        {"name": "when-parent-off", "enabled": true, "strategies": [{"name": "default"}], "dependencies": [{"feature": "parent", "enabled": false}]},
        {"name": "blue-child", "enabled": true, "dependencies": [{"feature": "parent", "variants": ["blue"]}]},
        {"name": "red-child", "enabled": true, "dependencies": [{"feature": "parent", "variants": ["red"]}]},
        {"name": "orphan", "enabled": true, "dependencies": [{"feature": "missing"}]},
        {"name": "grandchild", "enabled": true, "dependencies": [{"feature": "child"}]}
    ]));
    let engine = engine_of(&state);
    let one = Context::new().user_id("1");
    let three = Context::new().user_id("3");
    assert!(engine.is_enabled("child", &one) && !engine.is_enabled("child", &three));
    assert!(!engine.is_enabled("when-parent-off", &one) && engine.is_enabled("when-parent-off", &three));
    assert!(engine.is_enabled("blue-child", &one) && !engine.is_enabled("red-child", &one));
    assert!(
        !engine.is_enabled("orphan", &one),
        "a missing parent is an unmet dependency"
    );
    assert!(
        !engine.is_enabled("grandchild", &one),
        "Unleash supports one level of dependencies"
    );
}

#[test]
fn regex_and_cidr_operators() {
    let state = hydrated(json!([
        {"name": "regex", "enabled": true, "strategies": [{"name": "default", "constraints": [{"contextName": "email", "operator": "REGEX", "value": "^[a-z]+@corp\\.com$"}]}]},
        {"name": "regex-ci", "enabled": true, "strategies": [{"name": "default", "constraints": [{"contextName": "email", "operator": "REGEX", "value": "^ADMIN", "caseInsensitive": true}]}]},
        {"name": "bad-regex", "enabled": true, "strategies": [{"name": "default", "constraints": [{"contextName": "email", "operator": "REGEX", "value": "(unclosed"}]}]},
        {"name": "bad-regex-inverted", "enabled": true, "strategies": [{"name": "default", "constraints": [{"contextName": "email", "operator": "REGEX", "value": "(unclosed", "inverted": true}]}]},
        {"name": "cidr", "enabled": true, "strategies": [{"name": "default", "constraints": [{"contextName": "remoteAddress", "operator": "IN_CIDR", "values": ["10.0.0.0/8", "not-an-ip", "2001:db8::/32"]}]}]},
        {"name": "remote", "enabled": true, "strategies": [{"name": "remoteAddress", "parameters": {"IPs": "192.168.0.0/16, 127.0.0.1, junk"}}]}
    ]));
    let engine = engine_of(&state);
    let email = |address: &str| Context::new().property("email", address);
    assert!(
        engine.is_enabled("regex", &email("ann@corp.com"))
            && !engine.is_enabled("regex", &email("Ann@corp.com"))
    );
    assert!(engine.is_enabled("regex-ci", &email("admin@x")));
    assert!(
        !engine.is_enabled("bad-regex", &email("x")),
        "an invalid regex fails its constraint"
    );
    assert!(
        engine.is_enabled("bad-regex-inverted", &email("x")),
        "and inverting it passes"
    );
    let from = |address: &str| Context::new().remote_address(address);
    assert!(engine.is_enabled("cidr", &from("10.9.8.7")) && engine.is_enabled("cidr", &from("2001:db8::5")));
    assert!(!engine.is_enabled("cidr", &from("11.0.0.1")) && !engine.is_enabled("cidr", &Context::new()));
    assert!(
        engine.is_enabled("remote", &from("192.168.4.4")) && engine.is_enabled("remote", &from("127.0.0.1"))
    );
    assert!(!engine.is_enabled("remote", &from("127.0.0.2")));
}

#[test]
fn unleash_leniency_is_translated_with_warnings() {
    let state = hydrated(json!([
        {"name": "unknown-operator", "enabled": true, "strategies": [
            {"name": "default"},
            {"name": "default", "constraints": [{"contextName": "x", "operator": "SOUNDS_LIKE", "values": ["y"]}]}]},
        {"name": "custom-strategy", "enabled": true, "strategies": [{"name": "myCustom"}, {"name": "userWithId", "parameters": {"userIds": "7, 8"}}]},
        {"name": "v-semver", "enabled": true, "strategies": [{"name": "default", "constraints": [{"contextName": "v", "operator": "SEMVER_GT", "value": "v1.0.0", "inverted": true}]}]},
        {"name": "too-much", "enabled": true, "strategies": [{"name": "flexibleRollout", "parameters": {"rollout": "150", "stickiness": "default"}}]}
    ]));
    let import = state.to_flag_set();
    let warned: Vec<&str> = import
        .warnings
        .iter()
        .map(|warning| warning.flag.as_str())
        .collect();
    assert!(
        warned.contains(&"unknown-operator") && warned.contains(&"too-much"),
        "{warned:?}"
    );
    let engine = engine_of(&state);
    assert!(
        !engine.is_enabled("unknown-operator", &Context::new()),
        "one bad strategy switches the whole flag off"
    );
    assert!(!engine.is_enabled("custom-strategy", &Context::new().user_id("9")));
    assert!(
        engine.is_enabled("custom-strategy", &Context::new().user_id("8")),
        "ids are trimmed; custom strategies never match"
    );
    assert!(
        !engine.is_enabled("v-semver", &Context::new().property("v", "0.1.0")),
        "v-prefixed versions fail even inverted"
    );
    assert!(!engine.is_enabled("too-much", &Context::new().user_id("1")));
}
