//! 1,000,000 alert updates over 10,000 distinct fingerprints through routing, grouping and
//! deduplication (the dispatcher's notification log), with 100 active silences checked at
//! every group flush, next to computing the 1,000,000 fingerprints alone.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use deploykit::core::DynNotifier;
use deploykit::core::time::TokioClock;
use deploykit::incidents::{
    Alert, AlertState, Dispatcher, Fingerprint, Labels, Matcher, Route, RouteConfig, Silence,
};
use deploykit::testkit::RecordingNotifier;

const UPDATES: usize = 1_000_000;
const DISTINCT: usize = 10_000;

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

fn dispatcher() -> Dispatcher {
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
    let clock = TokioClock::new();
    let epoch = DateTime::<Utc>::from(clock.epoch());
    let mut dispatcher = Dispatcher::new(tree, receivers, clock.shared());
    for index in 0..100 {
        dispatcher.add_silence(Silence {
            id: format!("s{index}"),
            matchers: vec![Matcher::parse(&format!("instance=host-{}", index * 97)).expect("matcher")],
            starts_at: epoch - chrono::Duration::hours(1),
            ends_at: epoch + chrono::Duration::hours(1),
            created_by: "bench".into(),
            comment: "bench".into(),
        });
    }
    dispatcher
}

fn updates(c: &mut Criterion) {
    let alerts = alerts();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("alerts");
    group.sample_size(10);
    group.bench_function("fingerprints_only_1m", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for index in 0..UPDATES {
                sum = sum.wrapping_add(Fingerprint::of(&alerts[index % DISTINCT].labels).0);
            }
            sum
        })
    });
    group.bench_function("dispatch_1m", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let mut dispatcher = dispatcher();
                let mut delivered = 0;
                for index in 0..UPDATES {
                    dispatcher.receive(&alerts[index % DISTINCT]);
                    // Every 100,000 updates a minute passes and due groups flush.
                    if index % 100_000 == 99_999 {
                        tokio::time::advance(Duration::from_secs(60)).await;
                        delivered += dispatcher.flush_due().await.len();
                    }
                }
                delivered
            })
        })
    });
    group.finish();

    // The figures asked for: updates per second and the ratio to fingerprints alone.
    let start = Instant::now();
    let mut sum = 0u64;
    for index in 0..UPDATES {
        sum = sum.wrapping_add(Fingerprint::of(&alerts[index % DISTINCT].labels).0);
    }
    let fingerprints = start.elapsed();
    let start = Instant::now();
    runtime.block_on(async {
        let mut dispatcher = dispatcher();
        for index in 0..UPDATES {
            dispatcher.receive(&alerts[index % DISTINCT]);
            if index % 100_000 == 99_999 {
                tokio::time::advance(Duration::from_secs(60)).await;
                dispatcher.flush_due().await;
            }
        }
    });
    let dispatch = start.elapsed();
    println!(
        "alerts: {:.0} updates/s through the dispatcher; {:.1}x the fingerprints alone ({sum:x})",
        UPDATES as f64 / dispatch.as_secs_f64(),
        dispatch.as_secs_f64() / fingerprints.as_secs_f64()
    );
}

criterion_group!(benches, updates);
criterion_main!(benches);
