//! Flag evaluation, side by side: deploykit, Unleash's Yggdrasil and LaunchDarkly's
//! evaluation crate evaluate the same five flags, each engine loading its own JSON
//! (benches/data/flags) and evaluating through its public API:
//! (a) on, no rules; (b) user id in a list of 3; (c) 50% rollout by user id;
//! (d) regex on an email attribute; (e) semver greater-than on an app-version attribute.
//!
//! deploykit is measured twice: through `FlagEngine::is_enabled` (a thread-local finds the
//! thread's cached snapshot) and through a `FlagReader` (the handle a worker keeps).
//!
//! A second group reads while a writer thread replaces the snapshot 1,000 times a second.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use deploykit::flags::{Context, FileFormat, FlagEngine};
use launchdarkly_server_sdk_evaluation as ld;

const CASES: [(&str, &str); 5] = [
    ("a_on", "a-on"),
    ("b_user_in_list", "b-list"),
    ("c_rollout_50", "c-rollout"),
    ("d_regex_email", "d-regex"),
    ("e_semver_gt", "e-semver"),
];
const USER: &str = "u2";
const EMAIL: &str = "ann@example.com";
const APP_VERSION: &str = "2.5.1";

fn data(name: &str) -> String {
    let path = format!("{}/benches/data/flags/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

fn deploykit_engine() -> FlagEngine {
    let set = FileFormat::Json
        .parse(&data("deploykit.json"), "deploykit.json")
        .expect("deploykit flags");
    FlagEngine::with_flags(set).expect("deploykit flags compile")
}

fn deploykit_context() -> Context {
    Context::new()
        .user_id(USER)
        .property("email", EMAIL)
        .property("appVersion", APP_VERSION)
}

fn yggdrasil_engine() -> unleash_yggdrasil::EngineState {
    let features: unleash_yggdrasil::ClientFeatures =
        serde_json::from_str(&data("unleash.json")).expect("unleash flags");
    let engine = unleash_yggdrasil::EngineState::default();
    engine.take_state(unleash_yggdrasil::UpdateMessage::FullResponse(features));
    engine
}

fn yggdrasil_context() -> unleash_yggdrasil::Context {
    unleash_yggdrasil::Context {
        user_id: Some(USER.into()),
        properties: Some(HashMap::from([
            ("email".into(), EMAIL.into()),
            ("appVersion".into(), APP_VERSION.into()),
        ])),
        ..Default::default()
    }
}

struct LdStore {
    flags: HashMap<String, ld::Flag>,
}

impl ld::Store for LdStore {
    fn flag(&self, flag_key: &str) -> Option<ld::Flag> {
        self.flags.get(flag_key).cloned()
    }

    fn segment(&self, _segment_key: &str) -> Option<ld::Segment> {
        None
    }
}

fn launchdarkly_store() -> LdStore {
    let flags: Vec<ld::Flag> = serde_json::from_str(&data("launchdarkly.json")).expect("launchdarkly flags");
    LdStore {
        flags: flags.into_iter().map(|flag| (flag.key.clone(), flag)).collect(),
    }
}

fn launchdarkly_context() -> ld::Context {
    ld::ContextBuilder::new(USER)
        .set_string("email", EMAIL)
        .set_string("appVersion", APP_VERSION)
        .build()
        .expect("launchdarkly context")
}

fn launchdarkly_eval(store: &LdStore, key: &str, context: &ld::Context) -> bool {
    let flag = store.flags.get(key).expect("flag");
    ld::evaluate(store, flag, context, None)
        .value
        .and_then(|value| value.as_bool())
        .unwrap_or(false)
}

fn side_by_side(c: &mut Criterion) {
    let deploykit = deploykit_engine();
    let deploykit_ctx = deploykit_context();
    let yggdrasil = yggdrasil_engine();
    let yggdrasil_ctx = yggdrasil_context();
    let launchdarkly = launchdarkly_store();
    let launchdarkly_ctx = launchdarkly_context();

    // Same answers, or the comparison means nothing.
    for (case, flag) in CASES {
        let ours = deploykit.is_enabled(flag, &deploykit_ctx);
        assert_eq!(
            ours,
            yggdrasil.is_enabled(flag, &yggdrasil_ctx, &None),
            "{case}: deploykit vs yggdrasil"
        );
        if flag != "c-rollout" {
            // LaunchDarkly buckets differently; the rollout case only needs to evaluate.
            assert_eq!(
                ours,
                launchdarkly_eval(&launchdarkly, flag, &launchdarkly_ctx),
                "{case}: deploykit vs launchdarkly"
            );
            assert!(ours, "{case} should be on for the benchmark user");
        }
    }

    let mut group = c.benchmark_group("flags");
    for (case, flag) in CASES {
        group.bench_function(format!("{case}/deploykit"), |b| {
            b.iter(|| deploykit.is_enabled(black_box(flag), black_box(&deploykit_ctx)))
        });
        let mut reader = deploykit.reader();
        group.bench_function(format!("{case}/deploykit_reader"), |b| {
            b.iter(|| reader.is_enabled(black_box(flag), black_box(&deploykit_ctx)))
        });
        group.bench_function(format!("{case}/yggdrasil"), |b| {
            b.iter(|| yggdrasil.is_enabled(black_box(flag), black_box(&yggdrasil_ctx), &None))
        });
        group.bench_function(format!("{case}/launchdarkly"), |b| {
            b.iter(|| launchdarkly_eval(&launchdarkly, black_box(flag), black_box(&launchdarkly_ctx)))
        });
    }
    group.finish();
}

fn reads_during_updates(c: &mut Criterion) {
    let engine = Arc::new(deploykit_engine());
    let context = deploykit_context();
    let sets = [
        FileFormat::Json
            .parse(&data("deploykit.json"), "deploykit.json")
            .expect("flags"),
        {
            let mut changed = FileFormat::Json
                .parse(&data("deploykit.json"), "deploykit.json")
                .expect("flags");
            changed.flags[0].description = "changed".into();
            changed
        },
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (engine, stop) = (engine.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut replaced = 0u64;
            while !stop.load(Ordering::Relaxed) {
                engine
                    .replace(sets[(replaced % 2) as usize].clone())
                    .expect("valid flags");
                replaced += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            replaced
        })
    };
    let mut group = c.benchmark_group("flags_during_updates");
    for (case, flag) in CASES {
        group.bench_function(format!("{case}/deploykit"), |b| {
            b.iter(|| engine.is_enabled(black_box(flag), black_box(&context)))
        });
        let mut reader = engine.reader();
        group.bench_function(format!("{case}/deploykit_reader"), |b| {
            b.iter(|| reader.is_enabled(black_box(flag), black_box(&context)))
        });
    }
    group.finish();
    stop.store(true, Ordering::Relaxed);
    let replaced = writer.join().expect("writer");
    println!("the writer replaced the snapshot {replaced} times during the reads");
}

criterion_group!(benches, side_by_side, reads_during_updates);
criterion_main!(benches);
