//! 1,000,000 alert updates over 10,000 distinct fingerprints through routing, grouping and
//! deduplication (the dispatcher's notification log), with a minute passing and due groups
//! flushing every 100,000 updates, next to computing the 1,000,000 fingerprints alone.
//!
//! Two shapes:
//! - `dispatch_1m`, what a rule evaluator sends: every update carries a new value, so each
//!   one is stored again (no repeat fast path); 100 silences, one of them expired and a new
//!   one added every 10,000 updates, and each lasting 5 to 15 minutes, so silences also end
//!   on their own (the per-alert silence memo is invalidated all the time); 20 inhibition
//!   rules (critical alerts mute the warnings of the same alert name and team), checked
//!   for every alert of every group flushed.
//! - `dispatch_1m_no_inhibition`: the same without the inhibition rules, to show their
//!   share;
//! - `dispatch_1m_repeats`, the earlier shape kept for comparison: the same value each
//!   time (after the first 10,000 updates nothing is stored), 100 silences that never
//!   change, no inhibition.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use deploykit::core::DynNotifier;
use deploykit::core::time::{ClockExt, TokioClock};
use deploykit::incidents::{
    Alert, AlertState, Dispatcher, Fingerprint, InhibitRule, Labels, Matcher, Route, RouteConfig, Silence,
};
use deploykit::testkit::RecordingNotifier;

const UPDATES: usize = 1_000_000;
const DISTINCT: usize = 10_000;
const SILENCES: usize = 100;
const INHIBITIONS: usize = 20;
/// Updates between two flushes (a minute passes).
const FLUSH_EVERY: usize = 100_000;
/// Updates between two silence changes (one expired, one added) in the realistic shape.
const SILENCE_CHURN_EVERY: usize = 10_000;

/// What the updates and the dispatcher's configuration look like.
#[derive(Clone, Copy)]
struct Shape {
    /// A new value in every update, silences expired and added during the run.
    changing: bool,
    /// The 20 inhibition rules.
    inhibition: bool,
}

const SHAPES: [(&str, Shape); 3] = [
    (
        "dispatch_1m",
        Shape {
            changing: true,
            inhibition: true,
        },
    ),
    (
        "dispatch_1m_no_inhibition",
        Shape {
            changing: true,
            inhibition: false,
        },
    ),
    (
        "dispatch_1m_repeats",
        Shape {
            changing: false,
            inhibition: false,
        },
    ),
];

fn alerts() -> Vec<Alert> {
    (0..DISTINCT)
        .map(|index| {
            let labels: Labels = [
                ("alertname".to_owned(), format!("Alert{}", index % 50)),
                ("instance".to_owned(), format!("host-{index}")),
                (
                    "severity".to_owned(),
                    if index % 10 == 0 { "critical" } else { "warning" }.to_owned(),
                ),
                ("team".to_owned(), ["api", "web", "db"][index % 3].to_owned()),
            ]
            .into();
            Alert {
                labels,
                annotations: Labels::new(),
                state: AlertState::Firing,
                value: 1.0,
                fired_at: None,
                resolved_at: None,
            }
        })
        .collect()
}

/// Silence number `n`: mutes one instance from `from` for 5 to 15 minutes.
fn silence(n: usize, from: DateTime<Utc>) -> Silence {
    Silence {
        id: format!("s{n}"),
        matchers: vec![Matcher::parse(&format!("instance=host-{}", (n * 97) % DISTINCT)).expect("matcher")],
        starts_at: from - chrono::Duration::hours(1),
        ends_at: from + chrono::Duration::minutes(5 + (n % 11) as i64),
        created_by: "bench".into(),
        comment: "bench".into(),
    }
}

fn dispatcher(shape: Shape, clock: &TokioClock) -> Dispatcher {
    let config = RouteConfig {
        receiver: Some("default".into()),
        group_by: Some(vec!["alertname".into(), "team".into()]),
        routes: vec![
            RouteConfig {
                receiver: Some("pager".into()),
                matchers: vec![r#"severity="critical""#.into()],
                continue_matching: true,
                ..RouteConfig::default()
            },
            RouteConfig {
                receiver: Some("team".into()),
                matchers: vec![r#"team=~"api|web""#.into()],
                ..RouteConfig::default()
            },
        ],
        ..RouteConfig::default()
    };
    let names = ["default".to_owned(), "pager".into(), "team".into()];
    let tree = Route::compile(&config, &names).expect("routes");
    let receivers: HashMap<String, Arc<DynNotifier>> = names
        .iter()
        .map(|name| {
            (
                name.clone(),
                Arc::new(RecordingNotifier::new()) as Arc<DynNotifier>,
            )
        })
        .collect();
    let now = clock.now_utc();
    let mut dispatcher = Dispatcher::new(tree, receivers, clock.shared());
    for n in 0..SILENCES {
        let mut silence = silence(n, now);
        if !shape.changing {
            silence.ends_at = now + chrono::Duration::days(1);
        }
        dispatcher.add_silence(silence);
    }
    if shape.inhibition {
        for rule in 0..INHIBITIONS {
            let alertname = format!("alertname=Alert{rule}");
            dispatcher.add_inhibition(InhibitRule {
                source: vec![
                    Matcher::parse(&alertname).expect("matcher"),
                    Matcher::parse("severity=critical").expect("matcher"),
                ],
                target: vec![
                    Matcher::parse(&alertname).expect("matcher"),
                    Matcher::parse("severity=warning").expect("matcher"),
                ],
                equal: vec!["team".into()],
            });
        }
    }
    dispatcher
}

/// Sends the 1,000,000 updates of `shape`; the number of notifications sent.
async fn dispatch(shape: Shape, alerts: &mut [Alert]) -> usize {
    let clock = TokioClock::new();
    let mut dispatcher = dispatcher(shape, &clock);
    let mut next_silence = SILENCES;
    let mut delivered = 0;
    for index in 0..UPDATES {
        let alert = &mut alerts[index % DISTINCT];
        if shape.changing {
            alert.value = index as f64;
        }
        dispatcher.receive(alert);
        if shape.changing && index % SILENCE_CHURN_EVERY == SILENCE_CHURN_EVERY - 1 {
            // The oldest still there (some have ended on their own already) goes, a new one comes.
            dispatcher.expire_silence(&format!("s{}", next_silence - SILENCES));
            dispatcher.add_silence(silence(next_silence, clock.now_utc()));
            next_silence += 1;
        }
        if index % FLUSH_EVERY == FLUSH_EVERY - 1 {
            tokio::time::advance(Duration::from_secs(60)).await;
            delivered += dispatcher.flush_due().await.len();
        }
    }
    delivered
}

fn fingerprints(alerts: &[Alert]) -> u64 {
    (0..UPDATES).fold(0u64, |sum, index| {
        sum.wrapping_add(Fingerprint::of(&alerts[index % DISTINCT].labels).0)
    })
}

fn updates(c: &mut Criterion) {
    let mut alerts = alerts();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("alerts");
    group.sample_size(10);
    group.bench_function("fingerprints_only_1m", |b| b.iter(|| fingerprints(&alerts)));
    for (name, shape) in SHAPES {
        group.bench_function(name, |b| {
            b.iter(|| runtime.block_on(dispatch(shape, &mut alerts)))
        });
    }
    group.finish();

    // The figures asked for: updates per second and the ratio to fingerprints alone (one
    // run each, after criterion's warm-up).
    let start = Instant::now();
    let sum = fingerprints(&alerts);
    let alone = start.elapsed();
    for (name, shape) in SHAPES {
        let start = Instant::now();
        let delivered = runtime.block_on(dispatch(shape, &mut alerts));
        let took = start.elapsed();
        println!(
            "alerts/{name}: {:.0} updates/s through the dispatcher, {delivered} notifications; {:.1}x the fingerprints alone ({sum:x})",
            UPDATES as f64 / took.as_secs_f64(),
            took.as_secs_f64() / alone.as_secs_f64()
        );
    }
}

criterion_group!(benches, updates);
criterion_main!(benches);
