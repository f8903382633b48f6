//! The engine's semantics: operators, segments, rollouts, variants, prerequisites, reasons,
//! and updates that either apply whole or leave the previous snapshot serving.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use deploy_core::time::TokioClock;
use deploy_flags::{
    Constraint, Context, FlagChange, FlagDefinition, FlagEngine, FlagError, FlagKind, FlagSet, Operator,
    Payload, PercentageRollout, Prerequisite, Reason, Rule, Segment, Stickiness, VariantDefinition,
    VariantOverride,
};

fn engine_with(flags: Vec<FlagDefinition>) -> FlagEngine {
    FlagEngine::with_flags(FlagSet {
        flags,
        segments: Vec::new(),
    })
    .expect("valid flags")
}

fn constrained(name: &str, constraint: Constraint) -> FlagDefinition {
    FlagDefinition::new(name, true).with_rule(Rule {
        constraints: vec![constraint],
        ..Rule::default()
    })
}

fn on(engine: &FlagEngine, flag: &str, context: &Context) -> bool {
    engine.is_enabled(flag, context)
}

fn with(name: &str, value: &str) -> Context {
    Context::new().property(name, value)
}

#[test]
fn list_and_string_operators() {
    let engine = engine_with(vec![
        constrained("in", Constraint::list("plan", Operator::In, &["pro", "team"])),
        constrained("not-in", Constraint::list("plan", Operator::NotIn, &["free"])),
        constrained(
            "contains",
            Constraint::list("email", Operator::StrContains, &["@corp"]),
        ),
        constrained(
            "starts",
            Constraint::list("email", Operator::StrStartsWith, &["ADMIN"]).case_insensitive(),
        ),
        constrained("ends", Constraint::list("email", Operator::StrEndsWith, &[".io"])),
        constrained(
            "not-ends",
            Constraint::list("email", Operator::StrEndsWith, &[".io"]).inverted(),
        ),
        constrained(
            "big-list",
            Constraint::list(
                "userId",
                Operator::In,
                &(0..100)
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            ),
        ),
    ]);
    assert!(on(&engine, "in", &with("plan", "team")));
    assert!(!on(&engine, "in", &with("plan", "free")));
    assert!(
        !on(&engine, "in", &Context::new()),
        "a missing attribute is in no list"
    );
    assert!(
        on(&engine, "not-in", &Context::new()),
        "a missing attribute is not in any list"
    );
    assert!(!on(&engine, "not-in", &with("plan", "free")));
    assert!(on(&engine, "contains", &with("email", "ann@corp.example")));
    assert!(
        on(&engine, "starts", &with("email", "Admin@x.io")),
        "case-insensitive"
    );
    assert!(!on(&engine, "starts", &with("email", "user@x.io")));
    assert!(on(&engine, "ends", &with("email", "a@b.io")));
    assert!(!on(&engine, "not-ends", &with("email", "a@b.io")));
    assert!(
        on(&engine, "not-ends", &Context::new()),
        "inverting a failed match"
    );
    assert!(on(&engine, "big-list", &Context::new().user_id("99")));
    assert!(!on(&engine, "big-list", &Context::new().user_id("100")));
}

#[test]
fn case_insensitive_matching_handles_non_ascii() {
    let engine = engine_with(vec![
        constrained(
            "contains",
            Constraint::list("city", Operator::StrContains, &["ÜBER"]).case_insensitive(),
        ),
        constrained(
            "ends",
            Constraint::list("city", Operator::StrEndsWith, &["STRASSE"]).case_insensitive(),
        ),
    ]);
    assert!(on(&engine, "contains", &with("city", "neu-über-alles")));
    assert!(on(&engine, "ends", &with("city", "Hauptstrasse")));
    assert!(!on(&engine, "ends", &with("city", "Hauptweg")));
}

#[test]
fn regex_numbers_versions_dates_and_networks() {
    let engine = engine_with(vec![
        constrained(
            "regex",
            Constraint::single("email", Operator::Regex, r"^[a-z]+@example\.com$"),
        ),
        constrained(
            "regex-ci",
            Constraint::single("email", Operator::Regex, r"^ann@").case_insensitive(),
        ),
        constrained("num-gte", Constraint::single("age", Operator::NumGte, "18")),
        constrained("num-eq", Constraint::single("score", Operator::NumEq, "0.3")),
        constrained(
            "semver-gt",
            Constraint::single("appVersion", Operator::SemverGt, "2.1.0"),
        ),
        constrained(
            "semver-lte",
            Constraint::single("appVersion", Operator::SemverLte, "2.1.0-rc.2"),
        ),
        constrained(
            "after",
            Constraint::single("currentTime", Operator::DateAfter, "2026-01-01T00:00:00Z"),
        ),
        constrained(
            "signup-before",
            Constraint::single("signup", Operator::DateBefore, "2020-06-01T00:00:00+02:00"),
        ),
        constrained(
            "cidr",
            Constraint::list(
                "remoteAddress",
                Operator::InCidr,
                &["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"],
            ),
        ),
    ]);
    assert!(on(&engine, "regex", &with("email", "ann@example.com")));
    assert!(!on(&engine, "regex", &with("email", "ann@example.org")));
    assert!(on(&engine, "regex-ci", &with("email", "ANN@x")));
    assert!(on(&engine, "num-gte", &with("age", "18")));
    assert!(!on(&engine, "num-gte", &with("age", "17.9")));
    assert!(
        !on(&engine, "num-gte", &with("age", "eighteen")),
        "not a number fails"
    );
    assert!(on(&engine, "num-eq", &with("score", "0.30")));
    assert!(
        on(&engine, "semver-gt", &with("appVersion", "2.10.0")),
        "numeric, not lexical"
    );
    assert!(!on(&engine, "semver-gt", &with("appVersion", "2.1.0")));
    assert!(
        !on(&engine, "semver-gt", &with("appVersion", "2.2")),
        "not a version fails"
    );
    assert!(on(&engine, "semver-lte", &with("appVersion", "2.1.0-rc.1")));
    assert!(
        !on(&engine, "semver-lte", &with("appVersion", "2.1.0")),
        "a release outranks its release candidates"
    );
    let at = |year| Context::new().current_time(Utc.with_ymd_and_hms(year, 3, 1, 0, 0, 0).unwrap());
    assert!(on(&engine, "after", &at(2026)));
    assert!(!on(&engine, "after", &at(2025)));
    assert!(on(
        &engine,
        "signup-before",
        &with("signup", "2020-05-31T21:00:00Z")
    ));
    assert!(!on(
        &engine,
        "signup-before",
        &with("signup", "2020-05-31T21:30:00-01:00")
    ));
    assert!(on(&engine, "cidr", &Context::new().remote_address("10.20.30.40")));
    assert!(on(&engine, "cidr", &Context::new().remote_address("192.168.1.7")));
    assert!(!on(
        &engine,
        "cidr",
        &Context::new().remote_address("192.168.1.8")
    ));
    assert!(on(&engine, "cidr", &Context::new().remote_address("2001:db8::1")));
    assert!(!on(&engine, "cidr", &Context::new().remote_address("not-an-ip")));
}

#[tokio::test(start_paused = true)]
async fn date_constraints_without_a_current_time_read_the_engines_clock() {
    let launch = Utc.with_ymd_and_hms(2027, 6, 1, 12, 0, 0).unwrap();
    let clock = TokioClock::with_epoch((launch - chrono::Duration::hours(1)).into());
    let engine = FlagEngine::with_clock(clock.shared());
    let after_launch = Rule {
        constraints: vec![Constraint::single(
            "currentTime",
            Operator::DateAfter,
            "2027-06-01T12:00:00Z",
        )],
        ..Rule::default()
    };
    engine
        .replace(FlagSet {
            flags: vec![FlagDefinition::new("launch", true).with_rule(after_launch)],
            ..FlagSet::default()
        })
        .unwrap();
    assert!(!on(&engine, "launch", &Context::new()));
    tokio::time::advance(Duration::from_secs(3_601)).await;
    assert!(on(&engine, "launch", &Context::new()));
    assert!(
        !on(
            &engine,
            "launch",
            &Context::new().current_time(launch - chrono::Duration::days(1))
        ),
        "a caller's currentTime wins over the clock"
    );
}

#[test]
fn segments_add_their_constraints_to_rules() {
    let set = FlagSet {
        flags: vec![FlagDefinition::new("eu-beta", true).with_rule(Rule {
            segments: vec!["eu".into()],
            constraints: vec![Constraint::list("plan", Operator::In, &["beta"])],
            ..Rule::default()
        })],
        segments: vec![Segment {
            id: "eu".into(),
            constraints: vec![Constraint::list(
                "region",
                Operator::In,
                &["eu-west", "eu-central"],
            )],
        }],
    };
    let engine = FlagEngine::with_flags(set).unwrap();
    assert!(on(
        &engine,
        "eu-beta",
        &Context::new()
            .property("region", "eu-west")
            .property("plan", "beta")
    ));
    assert!(!on(
        &engine,
        "eu-beta",
        &Context::new()
            .property("region", "us-east")
            .property("plan", "beta")
    ));
    assert!(!on(
        &engine,
        "eu-beta",
        &Context::new().property("region", "eu-west")
    ));
}

fn rollout_flag(name: &str, percentage: u32, stickiness: Stickiness, group: Option<&str>) -> FlagDefinition {
    FlagDefinition::new(name, true).with_rule(Rule {
        rollout: Some(PercentageRollout {
            percentage,
            stickiness,
            group_id: group.map(str::to_owned),
        }),
        ..Rule::default()
    })
}

#[test]
fn rollouts_are_sticky_proportional_and_grouped() {
    let engine = engine_with(vec![
        rollout_flag("half", 50, Stickiness::on("userId"), None),
        rollout_flag("same-group-a", 30, Stickiness::on("userId"), Some("shared")),
        rollout_flag("same-group-b", 30, Stickiness::on("userId"), Some("shared")),
        rollout_flag(
            "by-account",
            50,
            Stickiness(vec!["accountId".into(), "userId".into()]),
            Some("g"),
        ),
        rollout_flag("by-user", 50, Stickiness::on("userId"), Some("g")),
        rollout_flag("nobody", 0, Stickiness::default(), None),
        rollout_flag("everybody", 100, Stickiness::default(), None),
    ]);
    let users: Vec<Context> = (0..10_000)
        .map(|i| Context::new().user_id(format!("user-{i}")))
        .collect();
    let share = users.iter().filter(|user| on(&engine, "half", user)).count();
    assert!(
        (4_700..=5_300).contains(&share),
        "50% rollout gave {share} of 10000"
    );
    for user in users.iter().take(200) {
        let first = on(&engine, "half", user);
        assert!((0..5).all(|_| on(&engine, "half", user) == first), "sticky");
        assert_eq!(
            on(&engine, "same-group-a", user),
            on(&engine, "same-group-b", user),
            "a group id selects the same users"
        );
        assert!(!on(&engine, "nobody", user));
        assert!(on(&engine, "everybody", user));
    }
    // The chain falls back to userId when accountId is missing, and prefers accountId.
    let user = Context::new().user_id("u-7");
    assert_eq!(on(&engine, "by-account", &user), on(&engine, "by-user", &user));
    let with_account = |account: &str| {
        Context::new()
            .user_id("u-7")
            .property("userId-free", "x")
            .property("accountId", account)
    };
    let accounts_in = (0..200)
        .filter(|i| on(&engine, "by-account", &with_account(&format!("acct-{i}"))))
        .count();
    assert!(
        accounts_in > 50 && accounts_in < 150,
        "buckets follow the account: {accounts_in}"
    );
    // Sticky on an attribute nobody has: nobody gets it.
    let engine = engine_with(vec![rollout_flag(
        "by-tenant",
        100,
        Stickiness::on("tenant"),
        None,
    )]);
    assert!(!on(&engine, "by-tenant", &Context::new().user_id("1")));
}

fn variant(name: &str, weight: u32, value: &str) -> VariantDefinition {
    VariantDefinition::new(name, weight).with_payload(Payload::string(value))
}

#[test]
fn variants_split_by_weight_honour_overrides_and_report_reasons() {
    let mut flag = FlagDefinition::new("button-color", true);
    flag.kind = FlagKind::String;
    flag.variants = vec![
        variant("red", 700, "#f00"),
        variant("blue", 300, "#00f"),
        variant("ghost", 0, "none"),
    ];
    flag.variants[1].overrides = vec![VariantOverride {
        context_name: "userId".into(),
        values: vec!["vip".into()],
    }];
    flag.off_variant = Some("red".into());
    let engine = engine_with(vec![flag]);
    let mut red = 0;
    for i in 0..10_000 {
        let evaluation = engine.evaluate("button-color", &Context::new().user_id(i.to_string()));
        let name = evaluation.variant.expect("a variant").name;
        assert_ne!(&*name, "ghost", "weight 0 is never drawn");
        red += usize::from(&*name == "red");
        assert!(matches!(evaluation.reason, Reason::Split { rule: None }));
    }
    assert!((6_700..=7_300).contains(&red), "70% weight gave {red}");
    let vip = engine.evaluate("button-color", &Context::new().user_id("vip"));
    assert_eq!(&*vip.variant.unwrap().name, "blue");
    assert!(matches!(vip.reason, Reason::TargetingMatch { rule: None }));
    let payload = engine
        .variant("button-color", &Context::new().user_id("vip"))
        .unwrap()
        .payload
        .unwrap();
    assert_eq!(&*payload.text, "#00f");
}

#[test]
fn rule_variants_win_over_flag_variants_and_off_variant_serves_when_off() {
    let mut flag = FlagDefinition::new("pricing", true);
    flag.kind = FlagKind::Number;
    flag.variants = vec![VariantDefinition::new("list", 1).with_payload(Payload::number(10.0))];
    flag.off_variant = Some("list".into());
    flag.rules = vec![Rule {
        name: Some("students".into()),
        constraints: vec![Constraint::list("segment", Operator::In, &["student"])],
        variants: vec![VariantDefinition::new("discount", 1).with_payload(Payload::number(5.0))],
        ..Rule::default()
    }];
    let engine = engine_with(vec![flag.clone()]);
    let student = engine.evaluate("pricing", &with("segment", "student"));
    assert_eq!(
        student.variant.as_ref().unwrap().payload.as_ref().unwrap().number,
        Some(5.0)
    );
    assert_eq!(student.reason, Reason::TargetingMatch { rule: Some(0) });
    let other = engine.evaluate("pricing", &with("segment", "retail"));
    assert!(!other.enabled);
    assert_eq!(other.reason, Reason::Default);
    assert_eq!(
        &*other.variant.unwrap().name,
        "list",
        "the off variant serves when no rule matches"
    );
    flag.enabled = false;
    engine
        .replace(FlagSet {
            flags: vec![flag],
            segments: vec![],
        })
        .unwrap();
    let off = engine.evaluate("pricing", &with("segment", "student"));
    assert_eq!((off.enabled, off.reason), (false, Reason::Disabled));
    assert_eq!(&*off.variant.unwrap().name, "list");
}

#[test]
fn prerequisites_gate_dependents_by_state_and_variant() {
    let mut parent = FlagDefinition::new("new-api", true).with_rule(Rule {
        constraints: vec![Constraint::list("plan", Operator::In, &["beta"])],
        ..Rule::default()
    });
    parent.variants = vec![variant("v2", 1, "v2")];
    let mut child = FlagDefinition::new("new-ui", true);
    child.prerequisites = vec![Prerequisite {
        flag: "new-api".into(),
        enabled: true,
        variants: vec!["v2".into()],
    }];
    let mut fallback = FlagDefinition::new("old-ui", true);
    fallback.prerequisites = vec![Prerequisite {
        flag: "new-api".into(),
        enabled: false,
        variants: vec![],
    }];
    let engine = engine_with(vec![parent, child, fallback]);
    assert!(on(&engine, "new-ui", &with("plan", "beta")));
    assert!(!on(&engine, "old-ui", &with("plan", "beta")));
    let free = engine.evaluate("new-ui", &with("plan", "free"));
    assert_eq!(
        (free.enabled, free.reason),
        (false, Reason::PrerequisiteFailed { prerequisite: 0 })
    );
    assert!(on(&engine, "old-ui", &with("plan", "free")));
    // Prerequisites are not counted as evaluations of the parent.
    assert_eq!(engine.metrics("new-api").unwrap().evaluations, 0);
}

fn error_of(result: Result<u64, FlagError>) -> FlagError {
    result.expect_err("the update must be refused")
}

#[test]
fn invalid_definitions_name_the_flag_and_field_and_keep_the_previous_snapshot() {
    let engine = engine_with(vec![FlagDefinition::new("stable", true)]);
    let replace = |flag: FlagDefinition| {
        engine.replace(FlagSet {
            flags: vec![FlagDefinition::new("stable", true), flag],
            segments: vec![],
        })
    };
    let cases: Vec<(FlagDefinition, &str)> = vec![
        (
            constrained(
                "bad-regex",
                Constraint::single("email", Operator::Regex, "(unclosed"),
            ),
            "rules[0].constraints[0].value",
        ),
        (
            constrained("bad-number", Constraint::single("age", Operator::NumGt, "ten")),
            "rules[0].constraints[0].value",
        ),
        (
            constrained("bad-semver", Constraint::single("v", Operator::SemverGt, "1.2")),
            "rules[0].constraints[0].value",
        ),
        (
            constrained(
                "bad-date",
                Constraint::single("t", Operator::DateAfter, "yesterday"),
            ),
            "rules[0].constraints[0].value",
        ),
        (
            constrained(
                "bad-cidr",
                Constraint::list("ip", Operator::InCidr, &["10.0.0.0/33"]),
            ),
            "rules[0].constraints[0].values[0]",
        ),
        (
            constrained("no-value", Constraint::list("age", Operator::NumGt, &["1"])),
            "rules[0].constraints[0].value",
        ),
        (
            rollout_flag("too-much", 101, Stickiness::default(), None),
            "rules[0].rollout.percentage",
        ),
        (
            FlagDefinition::new("zero-weights", true).with_variant(VariantDefinition::new("a", 0)),
            "variants",
        ),
        (
            FlagDefinition::new("bad-off", true).with_variant(VariantDefinition::new("a", 1)),
            "offVariant",
        ),
        (
            FlagDefinition::new("missing-segment", true).with_rule(Rule {
                segments: vec!["nope".into()],
                ..Rule::default()
            }),
            "rules[0].segments[0]",
        ),
    ];
    for (mut flag, field) in cases {
        if flag.name == "bad-off" {
            flag.off_variant = Some("b".into());
        }
        let name = flag.name.clone();
        match error_of(replace(flag)) {
            FlagError::InvalidFlag { flag, field: at, .. } => {
                assert_eq!((flag.as_str(), at.as_str()), (name.as_str(), field), "{name}");
            }
            other => panic!("{name}: unexpected {other}"),
        }
        assert!(
            on(&engine, "stable", &Context::new()),
            "the previous snapshot keeps serving"
        );
        assert!(engine.snapshot().definition(&name).is_none());
    }
    assert_eq!(engine.snapshot().version(), 1);
}

#[test]
fn prerequisite_cycles_and_unknown_prerequisites_are_rejected() {
    let depends = |name: &str, on: &str| {
        let mut flag = FlagDefinition::new(name, true);
        flag.prerequisites = vec![Prerequisite {
            flag: on.into(),
            enabled: true,
            variants: vec![],
        }];
        flag
    };
    let error = FlagEngine::with_flags(FlagSet {
        flags: vec![depends("a", "b"), depends("b", "c"), depends("c", "a")],
        segments: vec![],
    })
    .unwrap_err();
    match error {
        FlagError::PrerequisiteCycle { cycle, .. } => assert_eq!(cycle.len(), 4, "{cycle:?}"),
        other => panic!("unexpected {other}"),
    }
    let error = FlagEngine::with_flags(FlagSet {
        flags: vec![depends("a", "ghost")],
        segments: vec![],
    })
    .unwrap_err();
    assert!(
        matches!(&error, FlagError::InvalidFlag { flag, field, .. } if flag == "a" && field == "prerequisites[0].flag"),
        "{error}"
    );
    let error = FlagEngine::with_flags(FlagSet {
        flags: vec![depends("a", "a")],
        segments: vec![],
    })
    .unwrap_err();
    assert!(error.to_string().contains("itself"), "{error}");
}

#[test]
fn malformed_documents_are_parse_errors() {
    for (text, format) in [
        ("{\"flags\": [", deploy_flags::FileFormat::Json),
        ("flags: [ {name: x", deploy_flags::FileFormat::Yaml),
    ] {
        assert!(matches!(
            format.parse(text, "inline"),
            Err(FlagError::Parse { .. })
        ));
    }
    let unknown_operator = r#"{"flags":[{"name":"x","enabled":true,"rules":[{"constraints":[{"contextName":"a","operator":"SOUNDS_LIKE","values":["b"]}]}]}]}"#;
    let error = deploy_flags::FileFormat::Json
        .parse(unknown_operator, "inline")
        .unwrap_err();
    assert!(error.to_string().contains("SOUNDS_LIKE"), "{error}");
}

#[tokio::test]
async fn deltas_apply_atomically_and_subscribers_hear_of_them() {
    let engine = engine_with(vec![
        FlagDefinition::new("a", true),
        FlagDefinition::new("b", true),
    ]);
    let mut changes = engine.subscribe();
    let version = engine
        .apply([
            FlagChange::Upsert(FlagDefinition::new("a", false)),
            FlagChange::Remove("b".into()),
            FlagChange::Upsert(FlagDefinition::new("c", true)),
        ])
        .unwrap();
    assert_eq!(version, 2);
    let event = changes.recv().await.unwrap();
    assert_eq!(
        (event.version, event.flags),
        (2, vec!["a".to_string(), "b".into(), "c".into()])
    );
    assert!(
        !on(&engine, "a", &Context::new())
            && !on(&engine, "b", &Context::new())
            && on(&engine, "c", &Context::new())
    );
    // One bad change refuses the whole delta.
    let refused = engine.apply([
        FlagChange::Upsert(FlagDefinition::new("a", true)),
        FlagChange::Upsert(rollout_flag("d", 200, Stickiness::default(), None)),
    ]);
    assert!(refused.is_err());
    assert!(
        !on(&engine, "a", &Context::new()),
        "the good half of a refused delta is not applied"
    );
    assert_eq!(engine.snapshot().version(), 2);
}

#[test]
fn counts_survive_updates_and_unknown_flags_report_not_found() {
    let engine = engine_with(vec![FlagDefinition::new("a", true)]);
    for _ in 0..3 {
        on(&engine, "a", &Context::new());
    }
    engine
        .replace(FlagSet {
            flags: vec![FlagDefinition::new("a", false)],
            segments: vec![],
        })
        .unwrap();
    on(&engine, "a", &Context::new());
    let metrics = engine.metrics("a").unwrap();
    assert_eq!(
        (metrics.evaluations, metrics.enabled, metrics.disabled),
        (4, 3, 1)
    );
    assert!(metrics.last_evaluated.is_some());
    let missing = engine.evaluate("ghost", &Context::new());
    assert_eq!(missing.reason.as_openfeature(), "ERROR");
    assert!(engine.metrics("ghost").is_none());
}

fn depending(name: String, on: impl IntoIterator<Item = String>) -> FlagDefinition {
    let mut flag = FlagDefinition::new(name, true);
    flag.prerequisites = on
        .into_iter()
        .map(|parent| Prerequisite {
            flag: parent,
            enabled: true,
            variants: vec![],
        })
        .collect();
    flag
}

/// M12: a 50,000-flag prerequisite chain overflowed the stack (the check recursed); it is
/// refused with an error naming a flag, as is any chain longer than the bound, a flag
/// depending on too many others, and a prerequisite listed twice.
#[test]
fn long_wide_and_repeated_prerequisites_are_refused_by_name() {
    let chain = |length: usize| FlagSet {
        flags: (0..length)
            .map(|index| {
                depending(
                    format!("f{index}"),
                    (index + 1 < length).then(|| format!("f{}", index + 1)),
                )
            })
            .collect(),
        segments: vec![],
    };
    let error = FlagEngine::with_flags(chain(50_000)).unwrap_err();
    assert!(
        matches!(&error, FlagError::InvalidFlag { field, .. } if field == "prerequisites"),
        "{error}"
    );
    assert!(error.flag().is_some_and(|flag| flag.starts_with('f')), "{error}");
    assert!(FlagEngine::with_flags(chain(deploy_flags::MAX_PREREQUISITE_DEPTH)).is_ok());
    let error = FlagEngine::with_flags(chain(deploy_flags::MAX_PREREQUISITE_DEPTH + 1)).unwrap_err();
    assert_eq!(error.flag(), Some("f0"), "{error}");

    let parents: Vec<String> = (0..=deploy_flags::MAX_PREREQUISITES)
        .map(|index| format!("p{index}"))
        .collect();
    let mut flags: Vec<_> = parents
        .iter()
        .map(|name| FlagDefinition::new(name.clone(), true))
        .collect();
    flags.push(depending("wide".into(), parents));
    let error = FlagEngine::with_flags(FlagSet {
        flags,
        segments: vec![],
    })
    .unwrap_err();
    assert_eq!(error.flag(), Some("wide"), "{error}");

    let error = FlagEngine::with_flags(FlagSet {
        flags: vec![
            FlagDefinition::new("base", true),
            depending("twice".into(), ["base".to_string(), "base".into()]),
        ],
        segments: vec![],
    })
    .unwrap_err();
    assert!(
        matches!(&error, FlagError::InvalidFlag { flag, field, .. } if flag == "twice" && field == "prerequisites[1].flag"),
        "{error}"
    );
}

/// m6: regex operands had only the regex crate's defaults (10 MiB programs) and no cap on
/// length or count; each limit is now a typed error naming the flag.
#[test]
fn regex_operands_are_bounded() {
    let regex = |name: &str, pattern: String| {
        constrained(name, Constraint::single("email", Operator::Regex, pattern))
    };
    let refused = |flags| {
        FlagEngine::with_flags(FlagSet {
            flags,
            segments: vec![],
        })
        .expect_err("over a limit")
    };
    let long = refused(vec![regex("long", "a".repeat(deploy_flags::MAX_PATTERN_LEN + 1))]);
    assert!(
        matches!(&long, FlagError::InvalidFlag { flag, field, .. } if flag == "long" && field == "rules[0].constraints[0].value"),
        "{long}"
    );
    // Short, but compiles to a program far over the size limit.
    let huge = refused(vec![regex("huge", r"\w{200}\w{200}\w{200}".into())]);
    assert_eq!(huge.flag(), Some("huge"), "{huge}");
    let many: Vec<_> = (0..=deploy_flags::MAX_REGEXES)
        .map(|index| regex(&format!("r{index}"), format!("^[a-z]+{index}$")))
        .collect();
    let error = refused(many);
    assert!(error.to_string().contains("regex"), "{error}");
}

/// m7: a case-insensitive STR_CONTAINS lowered the value at every position
/// (O(|value|·|needle|), 10⁹ steps for a 1 MB header against a 1 KB needle); it is one
/// linear case-folded search now, and a context holds a bounded number of properties.
#[test]
fn case_insensitive_contains_is_linear_and_contexts_are_bounded() {
    let needle = format!("{}B", "a".repeat(1024));
    let engine = engine_with(vec![constrained(
        "ci",
        Constraint::list("header", Operator::StrContains, &[&needle]).case_insensitive(),
    )]);
    let value = "A".repeat(1 << 20);
    let started = std::time::Instant::now();
    assert!(!on(&engine, "ci", &with("header", &value)));
    assert!(on(&engine, "ci", &with("header", &format!("{value}b"))));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        !on(&engine, "ci", &with("header", "")),
        "an empty value contains nothing"
    );

    let mut context = Context::new();
    for index in 0..Context::MAX_PROPERTIES + 10 {
        context.set(format!("p{index}"), "v");
    }
    assert_eq!(context.get("p0"), Some("v"));
    assert_eq!(context.get(&format!("p{}", Context::MAX_PROPERTIES)), None);
    context.set("p0", "w");
    assert_eq!(
        context.get("p0"),
        Some("w"),
        "an existing property can still change"
    );
}

/// Issue 16: YAML goes through saphyr. Scalars keep their text where the model expects a
/// string (as serde_norway did), errors carry the line, aliases and deep nesting are refused.
#[test]
fn yaml_files_read_through_saphyr() {
    let set = deploy_flags::FileFormat::Yaml
        .parse(
            "flags:\n  - name: 7\n    enabled: true\n    rules:\n      - constraints:\n          - contextName: v\n            operator: NUM_GT\n            value: 1.10\n            values: [1, true, x]\n",
            "inline",
        )
        .unwrap();
    let constraint = &set.flags[0].rules[0].constraints[0];
    assert_eq!(set.flags[0].name, "7");
    assert_eq!(constraint.operator, Operator::NumGt);
    assert_eq!(constraint.value.as_deref(), Some("1.10"));
    assert_eq!(constraint.values, ["1", "true", "x"]);
    let refused = |text: &str| {
        deploy_flags::FileFormat::Yaml
            .parse(text, "inline")
            .unwrap_err()
            .to_string()
    };
    let error = refused("flags:\n  - name: a\n    colour: red\n");
    assert!(error.contains("line 3") && error.contains("colour"), "{error}");
    let error = refused("flags:\n  - &a {name: a}\n  - *a\n");
    assert!(error.contains("line 3: aliases"), "{error}");
    let error = refused("flags:\n  - name: &n a\n  - name: *n\n");
    assert!(error.contains("aliases"), "{error}");
    // Stickiness is read through serde's buffering, which would follow any depth.
    let deep = format!(
        "flags:\n  - name: a\n    rules:\n      - rollout: {{percentage: 5, stickiness: {}{}}}\n",
        "[".repeat(200),
        "]".repeat(200)
    );
    let error = refused(&deep);
    assert!(error.contains("line 4: nested too deeply"), "{error}");
}
