//! Rules, routing, grouping timers, silences, inhibition, dedup and delivery retries, all on
//! tokio's paused clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deploy_core::retry::{Backoff, RetryPolicy};
use deploy_core::time::{ClockExt, DynClock, TokioClock};
use deploy_core::{DynNotifier, MetricName, MetricQuery, MetricTarget, NotificationAction};
use deploy_incidents::{
    Alert, AlertError, AlertRule, AlertState, Comparison, Dispatcher, InhibitRule, Labels, MatchOp, Matcher,
    Route, RouteConfig, RuleEvaluator, Silence,
};
use deploy_testkit::RecordingNotifier;
use tokio::time::Instant;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

fn rule(for_secs: u64, keep_secs: u64) -> AlertRule {
    AlertRule {
        name: "HighErrorRate".into(),
        query: MetricQuery::new(
            MetricName::error_rate(),
            MetricTarget::Pool {
                app: deploy_core::AppId::new("shop").unwrap(),
                pool: deploy_core::Pool::stable(),
            },
            Duration::from_secs(60),
        )
        .unwrap(),
        comparison: Comparison::Above,
        threshold: 0.05,
        for_duration: Duration::from_secs(for_secs),
        keep_firing_for: Duration::from_secs(keep_secs),
        labels: labels(&[("severity", "critical")]),
        annotations: labels(&[("summary", "errors above 5%")]),
    }
}

#[tokio::test(start_paused = true)]
async fn rules_go_pending_then_firing_then_resolved_after_keep_firing_for() {
    let mut evaluator = RuleEvaluator::new(rule(60, 120)).unwrap();
    let tick = Duration::from_secs(30);
    let mut states = Vec::new();
    for value in [0.01, 0.2, 0.2, 0.2, 0.01, 0.01, 0.01, 0.01, 0.01, 0.2] {
        let alert = evaluator.observe(Some(value), Instant::now());
        states.push(alert.map_or(AlertState::Inactive, |alert| alert.state));
        tokio::time::advance(tick).await;
    }
    use AlertState::*;
    assert_eq!(
        states,
        [
            Inactive, Pending, Pending, Firing, Firing, Firing, Firing, Resolved, Inactive, Pending
        ]
    );
    // A pending alert that stops breaching goes back to inactive; no data counts as no breach.
    let mut evaluator = RuleEvaluator::new(rule(60, 0)).unwrap();
    assert_eq!(
        evaluator.observe(Some(1.0), Instant::now()).unwrap().state,
        Pending
    );
    assert!(evaluator.observe(None, Instant::now()).is_none());
    assert!(
        RuleEvaluator::new(AlertRule {
            threshold: f64::NAN,
            ..rule(0, 0)
        })
        .is_err()
    );
}

fn tree() -> Route {
    let config = RouteConfig {
        receiver: Some("default".into()),
        group_by: Some(vec!["alertname".into()]),
        group_wait: Some(Duration::from_secs(30)),
        group_interval: Some(Duration::from_secs(300)),
        repeat_interval: Some(Duration::from_secs(3600)),
        routes: vec![
            RouteConfig {
                receiver: Some("pager".into()),
                matchers: vec![r#"severity="critical""#.into()],
                continue_matching: true,
                ..RouteConfig::default()
            },
            RouteConfig {
                receiver: Some("team".into()),
                matchers: vec!["team=~\"api|web\"".into()],
                ..RouteConfig::default()
            },
        ],
        ..RouteConfig::default()
    };
    Route::compile(&config, &["default".into(), "pager".into(), "team".into()]).unwrap()
}

fn alert(name: &str, extra: &[(&str, &str)], state: AlertState) -> Alert {
    let mut labels = labels(extra);
    labels.insert("alertname".into(), name.into());
    Alert {
        labels,
        annotations: Labels::new(),
        state,
        value: 1.0,
        fired_at: None,
        resolved_at: None,
    }
}

struct Setup {
    dispatcher: Dispatcher,
    pager: Arc<RecordingNotifier>,
    team: Arc<RecordingNotifier>,
    default: Arc<RecordingNotifier>,
    /// Wall time, moving with tokio's paused clock.
    wall: Arc<DynClock>,
}

fn setup() -> Setup {
    let (pager, team, default) = (
        Arc::new(RecordingNotifier::new()),
        Arc::new(RecordingNotifier::new()),
        Arc::new(RecordingNotifier::new()),
    );
    let receivers: HashMap<String, Arc<DynNotifier>> = [
        ("pager".to_owned(), pager.clone() as Arc<DynNotifier>),
        ("team".into(), team.clone() as Arc<DynNotifier>),
        ("default".into(), default.clone() as Arc<DynNotifier>),
    ]
    .into();
    let wall = TokioClock::new().shared();
    let dispatcher = Dispatcher::new(tree(), receivers, wall.clone())
        .with_retry(RetryPolicy {
            backoff: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(4),
                multiplier: 2.0,
            },
            max_attempts: 10,
            deadline: Some(Duration::from_secs(10)),
        })
        .unwrap();
    Setup {
        dispatcher,
        pager,
        team,
        default,
        wall,
    }
}

async fn run_for(dispatcher: &mut Dispatcher, duration: Duration) -> Vec<deploy_incidents::DeliveryRecord> {
    let end = Instant::now() + duration;
    let mut records = Vec::new();
    loop {
        let next = dispatcher.next_deadline().filter(|next| *next <= end);
        match next {
            Some(next) => {
                tokio::time::sleep_until(next).await;
                records.extend(dispatcher.flush_due().await);
            }
            None => {
                tokio::time::sleep_until(end).await;
                return records;
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn routing_with_continue_groups_and_timers() {
    let mut s = setup();
    s.dispatcher.receive(&alert(
        "ApiDown",
        &[("severity", "critical"), ("team", "api")],
        AlertState::Firing,
    ));
    s.dispatcher
        .receive(&alert("DiskFull", &[("severity", "warning")], AlertState::Firing));
    // Nothing before group_wait.
    assert!(
        run_for(&mut s.dispatcher, Duration::from_secs(29))
            .await
            .is_empty()
    );
    run_for(&mut s.dispatcher, Duration::from_secs(2)).await;
    assert_eq!(s.pager.delivered().len(), 1, "critical goes to the pager");
    assert_eq!(
        s.team.delivered().len(),
        1,
        "and, with continue, to the team route"
    );
    assert_eq!(
        s.default.delivered().len(),
        1,
        "the warning falls through to the root"
    );
    // A second alert joining the ApiDown group within group_interval waits for it. The
    // pager sees the group's later notifications under the key of its first (a receiver
    // like the recording one reports them as duplicates), so count what was sent.
    let first_key = s.pager.delivered()[0].key.clone();
    s.dispatcher.receive(&alert(
        "ApiDown",
        &[("severity", "critical"), ("team", "api"), ("instance", "b")],
        AlertState::Firing,
    ));
    let to_pager = |records: Vec<deploy_incidents::DeliveryRecord>| -> Vec<deploy_core::Notification> {
        records
            .into_iter()
            .filter(|record| record.receiver == "pager")
            .map(|record| record.notification)
            .collect()
    };
    assert!(
        to_pager(run_for(&mut s.dispatcher, Duration::from_secs(250)).await).is_empty(),
        "group_interval not yet over"
    );
    let pages = to_pager(run_for(&mut s.dispatcher, Duration::from_secs(60)).await);
    assert_eq!(pages.len(), 1);
    assert!(
        pages[0].summary.starts_with("[FIRING:2] ApiDown"),
        "{}",
        pages[0].summary
    );
    assert_eq!(pages[0].key, first_key);
    // Unchanged: quiet until repeat_interval, then repeated.
    assert!(
        to_pager(run_for(&mut s.dispatcher, Duration::from_secs(3000)).await).is_empty(),
        "no repeat before the repeat interval"
    );
    let repeats = to_pager(run_for(&mut s.dispatcher, Duration::from_secs(700)).await);
    assert_eq!(repeats.len(), 1, "repeated after the repeat interval");
    assert_eq!(repeats[0].key, first_key);
}

/// Issue 14: a group's firing, repeat and resolve carry one key (they used to carry a
/// sequence number, so PagerDuty never closed the alert and each repeat opened a new one);
/// the key is the receiver's and the group's, the same in every process, and differs
/// between groups and receivers.
#[tokio::test(start_paused = true)]
async fn a_groups_firing_repeats_and_resolve_share_one_dedup_key() {
    let mut s = setup();
    let firing = alert(
        "ApiDown",
        &[("severity", "critical"), ("team", "api")],
        AlertState::Firing,
    );
    s.dispatcher.receive(&firing);
    s.dispatcher.receive(&alert(
        "DiskFull",
        &[("severity", "critical")],
        AlertState::Firing,
    ));
    let mut records = run_for(&mut s.dispatcher, Duration::from_secs(3700)).await;
    s.dispatcher.receive(&Alert {
        state: AlertState::Resolved,
        ..firing
    });
    records.extend(run_for(&mut s.dispatcher, Duration::from_secs(301)).await);
    let sent = |receiver: &str, name: &str| -> Vec<(NotificationAction, String)> {
        records
            .iter()
            .filter(|record| record.receiver == receiver && record.group.contains(name))
            .map(|record| (record.notification.action, record.notification.key.to_string()))
            .collect()
    };
    let pages = sent("pager", "ApiDown");
    let actions: Vec<NotificationAction> = pages.iter().map(|(action, _)| *action).collect();
    use NotificationAction::{Resolve, Trigger};
    assert_eq!(actions, [Trigger, Trigger, Resolve], "firing, repeat, resolve");
    assert!(pages.iter().all(|(_, key)| *key == pages[0].1), "{pages:?}");
    // Each notification of the group has its own sequence number, so receivers that drop
    // retries (by Notification::identity) still get the repeat and the resolve.
    let sequences: Vec<u64> = records
        .iter()
        .filter(|record| record.receiver == "pager" && record.group.contains("ApiDown"))
        .map(|record| record.notification.sequence)
        .collect();
    assert!(
        sequences.windows(2).all(|pair| pair[0] < pair[1]),
        "{sequences:?}"
    );
    let pager = s.pager.delivered();
    assert_eq!(
        pager.iter().filter(|n| n.key.as_str() == pages[0].1).count(),
        3,
        "the pager's recording notifier took firing, repeat and resolve, none as a duplicate"
    );
    // FNV-1a of "pager", 0xff, `root.0:{alertname="ApiDown"}`: fixed, not per process.
    assert_eq!(pages[0].1, "group/e50f9ac7916bdef3");
    let team = sent("team", "ApiDown");
    let disk = sent("pager", "DiskFull");
    assert!(!team.is_empty() && !disk.is_empty());
    assert_ne!(team[0].1, pages[0].1, "another receiver, another key");
    assert_ne!(disk[0].1, pages[0].1, "another group, another key");
}

#[tokio::test(start_paused = true)]
async fn repeated_evaluations_do_not_renotify_and_resolutions_carry_the_payload() {
    let mut s = setup();
    for _ in 0..10 {
        s.dispatcher
            .receive(&alert("DiskFull", &[("severity", "warning")], AlertState::Firing));
        run_for(&mut s.dispatcher, Duration::from_secs(60)).await;
    }
    assert_eq!(
        s.default.delivered().len(),
        1,
        "ten evaluations, one notification"
    );
    s.dispatcher.receive(&alert(
        "DiskFull",
        &[("severity", "warning")],
        AlertState::Resolved,
    ));
    run_for(&mut s.dispatcher, Duration::from_secs(301)).await;
    let sent = s.default.delivered();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].action, NotificationAction::Resolve);
    assert!(sent[1].body.contains("alertname=DiskFull"), "{}", sent[1].body);
    run_for(&mut s.dispatcher, Duration::from_secs(4000)).await;
    assert_eq!(s.default.delivered().len(), 2, "a resolved group is gone");
}

#[tokio::test(start_paused = true)]
async fn silences_mute_while_active() {
    let mut s = setup();
    let start = s.wall.now_utc();
    s.dispatcher.add_silence(Silence {
        id: "maint".into(),
        matchers: vec![Matcher::parse("alertname=DiskFull").unwrap()],
        starts_at: start,
        ends_at: start + chrono::Duration::hours(1),
        created_by: "ann".into(),
        comment: "disk swap".into(),
    });
    s.dispatcher.receive(&alert("DiskFull", &[], AlertState::Firing));
    run_for(&mut s.dispatcher, Duration::from_secs(31)).await;
    assert!(s.default.delivered().is_empty(), "silenced");
    assert!(s.dispatcher.expire_silence("maint") && !s.dispatcher.expire_silence("nope"));
    // The silence ended at +31 s; the group is looked at again after group_interval.
    run_for(&mut s.dispatcher, Duration::from_secs(300)).await;
    assert_eq!(s.default.delivered().len(), 1, "notified once the silence ended");
}

/// Review m14: silences were never removed, and every flush checked them all. An expired
/// silence is dropped at the next flush (so there is none left to expire).
#[tokio::test(start_paused = true)]
async fn expired_silences_are_dropped() {
    let mut s = setup();
    let start = s.wall.now_utc();
    for (id, hours) in [("maint", 1), ("later", 3)] {
        s.dispatcher.add_silence(Silence {
            id: id.into(),
            matchers: vec![Matcher::parse("alertname=DiskFull").unwrap()],
            starts_at: start,
            ends_at: start + chrono::Duration::hours(hours),
            created_by: "ann".into(),
            comment: "disk swap".into(),
        });
    }
    s.dispatcher.receive(&alert("DiskFull", &[], AlertState::Firing));
    run_for(&mut s.dispatcher, Duration::from_secs(2 * 3600)).await;
    assert!(s.default.delivered().is_empty(), "the later silence still mutes");
    assert!(!s.dispatcher.expire_silence("maint"), "dropped when it ended");
    assert!(s.dispatcher.expire_silence("later"), "still active");
    assert!(
        format!("{:?}", s.dispatcher).contains("silences: 0"),
        "{:?}",
        s.dispatcher
    );
}

#[tokio::test(start_paused = true)]
async fn inhibition_needs_equal_labels_present_on_both() {
    let mut s = setup();
    s.dispatcher.add_inhibition(InhibitRule {
        source: vec![Matcher::parse("alertname=ClusterDown").unwrap()],
        target: vec![Matcher::parse("severity=warning").unwrap()],
        equal: vec!["cluster".into()],
    });
    s.dispatcher.receive(&alert(
        "ClusterDown",
        &[("cluster", "eu"), ("severity", "page")],
        AlertState::Firing,
    ));
    let same_cluster = alert(
        "SlowQueries",
        &[("cluster", "eu"), ("severity", "warning")],
        AlertState::Firing,
    );
    let no_cluster = alert("SlowDisks", &[("severity", "warning")], AlertState::Firing);
    assert!(s.dispatcher.is_muted(&same_cluster));
    assert!(
        !s.dispatcher.is_muted(&no_cluster),
        "a missing label does not count as equal"
    );
    s.dispatcher.receive(&same_cluster);
    s.dispatcher.receive(&no_cluster);
    run_for(&mut s.dispatcher, Duration::from_secs(31)).await;
    let summaries: Vec<String> = s.default.delivered().into_iter().map(|n| n.summary).collect();
    assert!(
        summaries.iter().any(|summary| summary.contains("SlowDisks")),
        "{summaries:?}"
    );
    assert!(
        !summaries.iter().any(|summary| summary.contains("SlowQueries")),
        "{summaries:?}"
    );
}

/// Issue 15: a known alert updated in the same state is not routed again, except when a
/// flush took it out of one of its groups: here the team group announced the resolve (and
/// went away) while the pager failed to, so the resolved alert is still stored; when it is
/// sent again, it rejoins a new team group, due after `group_wait`.
#[tokio::test(start_paused = true)]
async fn an_alert_a_flush_took_out_of_a_group_rejoins_it_when_sent_again() {
    let mut s = setup();
    let mut disk = alert(
        "DiskFull",
        &[("severity", "critical"), ("team", "api")],
        AlertState::Firing,
    );
    s.dispatcher.receive(&disk);
    run_for(&mut s.dispatcher, Duration::from_secs(31)).await;
    assert_eq!((s.pager.delivered().len(), s.team.delivered().len()), (1, 1));
    disk.state = AlertState::Resolved;
    s.dispatcher.receive(&disk);
    s.pager.fail_next(1, false);
    run_for(&mut s.dispatcher, Duration::from_secs(301)).await;
    assert_eq!((s.pager.delivered().len(), s.team.delivered().len()), (1, 2));
    let pager_due = s.dispatcher.next_deadline().unwrap();
    assert!(pager_due > Instant::now() + Duration::from_secs(200));
    disk.value = 2.0;
    s.dispatcher.receive(&disk);
    assert_eq!(
        s.dispatcher.next_deadline(),
        Some(Instant::now() + Duration::from_secs(30))
    );
    // A second update in the same state finds it in both groups: nothing moves.
    s.dispatcher.receive(&disk);
    assert!(
        format!("{:?}", s.dispatcher).contains("groups: 2"),
        "{:?}",
        s.dispatcher
    );
}

#[tokio::test(start_paused = true)]
async fn deliveries_retry_retryable_failures_only() {
    let mut s = setup();
    s.default.fail_next(2, true);
    s.dispatcher.receive(&alert("A", &[], AlertState::Firing));
    let records = run_for(&mut s.dispatcher, Duration::from_secs(40)).await;
    assert_eq!(
        (records[0].attempts, records[0].error.is_none()),
        (3, true),
        "{records:?}"
    );
    let mut s = setup();
    s.default.fail_next(1, false);
    s.dispatcher.receive(&alert("B", &[], AlertState::Firing));
    let records = run_for(&mut s.dispatcher, Duration::from_secs(40)).await;
    assert_eq!(records[0].attempts, 1, "a fatal failure is not retried");
    assert!(records[0].error.is_some());
    let mut s = setup();
    s.default.fail_next(100, true);
    s.dispatcher.receive(&alert("C", &[], AlertState::Firing));
    let records = run_for(&mut s.dispatcher, Duration::from_secs(60)).await;
    // Waits of 1, 2 and 4 s end at 7 s; the next (4 s) would end past the 10 s deadline.
    assert!(
        records[0].error.is_some() && records[0].attempts == 4,
        "the deadline stops retries: {records:?}"
    );
}

#[test]
fn an_invalid_retry_policy_is_refused() {
    let receivers: HashMap<String, Arc<DynNotifier>> = HashMap::new();
    let tree = Route::compile(
        &RouteConfig {
            receiver: Some("default".into()),
            ..RouteConfig::default()
        },
        &["default".into()],
    )
    .unwrap();
    let no_attempts = RetryPolicy::default().with_max_attempts(0);
    assert!(matches!(
        Dispatcher::new(tree, receivers, TokioClock::new().shared()).with_retry(no_attempts),
        Err(AlertError::InvalidRetry(_))
    ));
}

#[test]
fn bad_configuration_is_refused_with_a_typed_error() {
    let receivers = ["default".to_owned()];
    let with = |route: RouteConfig| {
        Route::compile(
            &RouteConfig {
                receiver: Some("default".into()),
                routes: vec![route],
                ..RouteConfig::default()
            },
            &receivers,
        )
    };
    assert!(
        matches!(with(RouteConfig { receiver: Some("nobody".into()), ..RouteConfig::default() }), Err(AlertError::UnknownReceiver { route, .. }) if route == "root.0")
    );
    assert!(matches!(
        with(RouteConfig {
            matchers: vec!["env=~\"(unclosed\"".into()],
            ..RouteConfig::default()
        }),
        Err(AlertError::InvalidMatcher { .. })
    ));
    assert!(matches!(
        with(RouteConfig {
            matchers: vec!["no operator".into()],
            ..RouteConfig::default()
        }),
        Err(AlertError::InvalidMatcher { .. })
    ));
    assert!(matches!(
        with(RouteConfig {
            group_interval: Some(Duration::from_secs(600)),
            repeat_interval: Some(Duration::from_secs(60)),
            ..RouteConfig::default()
        }),
        Err(AlertError::InvalidTimers { .. })
    ));
    assert!(
        Route::compile(&RouteConfig::default(), &receivers).is_err(),
        "the root needs a receiver"
    );
    assert!(Matcher::parse("1bad=x").is_err());
}

/// Review m6: a regex value was pasted into `^(?:…)$`, so `a)|(b` closed the group early and
/// matched anything starting with `a` or ending with `b`, and a valid `(?x)` pattern with a
/// comment swallowed the closing anchor. Values are parsed on their own, anchored as a
/// whole, and bounded in length and compiled size.
#[test]
fn matcher_regexes_are_parsed_alone_anchored_and_bounded() {
    let env = |value: &str| labels(&[("env", value)]);
    let injected = Matcher::new("env", MatchOp::Regex, "a)|(b");
    assert!(
        matches!(&injected, Err(AlertError::InvalidMatcher { reason, .. }) if reason.contains("unopened group")),
        "{injected:?}"
    );
    let alternation = Matcher::new("env", MatchOp::Regex, "prod|staging").unwrap();
    assert!(alternation.matches(&env("prod")) && alternation.matches(&env("staging")));
    assert!(!alternation.matches(&env("production")) && !alternation.matches(&env("pre-staging")));
    let commented = Matcher::new("env", MatchOp::Regex, "(?x) prod # the live one").unwrap();
    assert!(commented.matches(&env("prod")) && !commented.matches(&env("prod2")));
    let negated = Matcher::parse(r#"env!~"prod|staging""#).unwrap();
    assert!(negated.matches(&env("dev")) && !negated.matches(&env("prod")));

    let long = "a".repeat(1025);
    assert!(matches!(
        Matcher::new("env", MatchOp::Regex, long),
        Err(AlertError::InvalidMatcher { reason, .. }) if reason.contains("1025 bytes")
    ));
    // Within the regex crate's default 10 MiB, past the matcher's limit.
    let huge = r"\w{100}";
    assert!(regex::Regex::new(huge).is_ok());
    assert!(matches!(
        Matcher::new("env", MatchOp::Regex, huge),
        Err(AlertError::InvalidMatcher { .. })
    ));
}

/// Review M8 (incidents part): `Debug` of the dispatcher, the monitor and the incident
/// manager printed their notifiers, whose own `Debug` may hold keys.
#[tokio::test(start_paused = true)]
async fn debug_output_leaves_notifiers_out() {
    #[derive(Debug)]
    struct Keyed {
        #[allow(dead_code)] // read by `Debug` only
        routing_key: String,
    }
    #[async_trait::async_trait]
    impl deploy_core::Notifier for Keyed {
        async fn notify(
            &self,
            _: &deploy_core::Notification,
        ) -> Result<deploy_core::Delivery, deploy_core::BackendError> {
            Ok(deploy_core::Delivery::Delivered)
        }
    }
    let secret = "0123456789abcdef0123456789abcdef";
    let keyed: Arc<DynNotifier> = Arc::new(Keyed {
        routing_key: secret.into(),
    });
    assert!(
        format!("{keyed:?}").contains(secret),
        "the notifier itself shows it"
    );
    let dispatcher = Dispatcher::new(
        tree(),
        ["pager", "team", "default"]
            .map(|name| (name.to_owned(), keyed.clone()))
            .into(),
        TokioClock::new().shared(),
    );
    let store: Arc<deploy_core::DynRecordStore> = Arc::new(deploy_core::MemoryStore::new());
    let incidents =
        Arc::new(deploy_incidents::IncidentManager::new(store, keyed.clone(), Default::default()).unwrap());
    let fleet = deploy_testkit::SimFleet::new();
    let monitor = deploy_incidents::OperationalMonitor::new(
        Arc::new(fleet.clone()),
        Arc::new(fleet),
        dispatcher,
        incidents.clone(),
        None,
    );
    let shown = format!("{monitor:?} {incidents:?}");
    assert!(!shown.contains(secret), "{shown}");
    assert!(
        shown.contains(r#"receivers: ["default", "pager", "team"]"#),
        "{shown}"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Review m6: for any pattern over regex punctuation, the matcher accepts exactly the
    /// patterns that parse on their own, and then matches exactly the values the pattern
    /// matches as a whole.
    #[test]
    fn matcher_regexes_match_whole_values_only(
        pattern in "[ab()|*?+.^$\\\\]{0,12}",
        values in proptest::collection::vec("[ab]{0,4}", 1..6),
    ) {
        let alone = regex::Regex::new(&pattern);
        let matcher = Matcher::new("env", MatchOp::Regex, pattern.clone());
        proptest::prop_assert_eq!(alone.is_ok(), matcher.is_ok(), "{:?}", matcher);
        if let Ok(matcher) = matcher {
            // Parses alone, so nothing in it can reach past a group around it.
            let whole = regex::Regex::new(&format!(r"\A(?:{pattern})\z")).unwrap();
            for value in values {
                proptest::prop_assert_eq!(matcher.matches(&labels(&[("env", &value)])), whole.is_match(&value));
            }
        }
    }
}

const LABEL_NAMES: [&str; 4] = ["alertname", "severity", "team", "cluster"];

/// A matcher over the names and values the inhibition property draws from.
fn small_matcher() -> impl proptest::strategy::Strategy<Value = Matcher> {
    use proptest::prelude::*;
    (
        0..LABEL_NAMES.len(),
        prop_oneof![
            Just(MatchOp::Equal),
            Just(MatchOp::NotEqual),
            Just(MatchOp::Regex)
        ],
        prop_oneof![Just("a"), Just("b"), Just(""), Just("a|b")],
    )
        .prop_map(|(name, op, value)| Matcher::new(LABEL_NAMES[name], op, value).unwrap())
}

fn small_rule() -> impl proptest::strategy::Strategy<Value = InhibitRule> {
    use proptest::prelude::*;
    (
        proptest::collection::vec(small_matcher(), 0..3),
        proptest::collection::vec(small_matcher(), 0..3),
        proptest::collection::vec(0..LABEL_NAMES.len(), 0..3),
    )
        .prop_map(|(source, target, equal)| InhibitRule {
            source,
            target,
            equal: equal
                .into_iter()
                .map(|name| LABEL_NAMES[name].to_owned())
                .collect(),
        })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Issue 15: the dispatcher's indexed inhibition (sources indexed per rule as alerts
    /// change state, are resolved and removed by flushes, and for rules added while alerts
    /// are stored) mutes exactly the alerts that `InhibitRule::inhibits`, scanning every
    /// stored alert, mutes: after every update, for every alert of the pool.
    #[test]
    fn indexed_inhibition_agrees_with_scanning_every_alert(
        pool in proptest::collection::vec(
            proptest::collection::vec(proptest::option::of(proptest::prelude::prop_oneof!["a", "b"]), 4),
            1..10,
        ),
        updates in proptest::collection::vec((0..10usize, 0..3usize, proptest::bool::ANY), 0..40),
        rules in proptest::collection::vec(small_rule(), 1..5),
        added_first in 0..5usize,
    ) {
        let pool: Vec<Alert> = pool
            .iter()
            .map(|values| Alert {
                labels: LABEL_NAMES
                    .iter()
                    .zip(values)
                    .filter_map(|(name, value)| value.as_ref().map(|value| (name.to_string(), value.clone())))
                    .collect(),
                ..alert("", &[], AlertState::Firing)
            })
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let config = RouteConfig {
                receiver: Some("default".into()),
                group_by: Some(vec!["alertname".into()]),
                ..RouteConfig::default()
            };
            let receivers: HashMap<String, Arc<DynNotifier>> =
                [("default".to_owned(), Arc::new(RecordingNotifier::new()) as Arc<DynNotifier>)].into();
            let tree = Route::compile(&config, &["default".into()]).unwrap();
            let mut dispatcher = Dispatcher::new(tree, receivers, TokioClock::new().shared());
            let added_first = added_first.min(rules.len());
            for rule in &rules[..added_first] {
                dispatcher.add_inhibition(rule.clone());
            }
            // What was received last per fingerprint: the dispatcher's alerts, but for
            // resolved ones a flush removed (a resolved alert mutes nothing).
            let mut received: HashMap<deploy_incidents::Fingerprint, Alert> = HashMap::new();
            let check = |dispatcher: &Dispatcher, received: &HashMap<_, Alert>, rules: &[InhibitRule]| {
                for target in &pool {
                    let scanned = rules.iter().any(|rule| rule.inhibits(target, received.values()));
                    proptest::prop_assert_eq!(dispatcher.is_muted(target), scanned, "{:?}", target);
                }
                Ok(())
            };
            for (step, (which, state, flush)) in updates.into_iter().enumerate() {
                let mut alert = pool[which % pool.len()].clone();
                alert.state = [AlertState::Pending, AlertState::Firing, AlertState::Resolved][state];
                alert.value = step as f64;
                dispatcher.receive(&alert);
                received.insert(alert.fingerprint(), alert);
                if flush {
                    tokio::time::advance(Duration::from_secs(60)).await;
                    dispatcher.flush_due().await;
                }
                check(&dispatcher, &received, &rules[..added_first])?;
            }
            for rule in &rules[added_first..] {
                dispatcher.add_inhibition(rule.clone());
            }
            check(&dispatcher, &received, &rules)
        })?;
    }
}
