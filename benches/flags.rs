//! Flag evaluation, side by side: deploykit, Unleash's Yggdrasil and LaunchDarkly's
//! evaluation crate evaluate the same flags for the same users, each engine loading its own
//! JSON (benches/data/flags) and evaluating through its public API. Six flag shapes:
//! (a) on, no rules; (b) user id in a list of 3; (c) 50% rollout by user id;
//! (d) a literal-suffix pattern, `^.*@example\.com$`: a regex that deploykit recognises at
//!     compile time and answers with `ends_with` (Yggdrasil runs the regex crate on it;
//!     LaunchDarkly's crate compiles the regex again on every evaluation);
//! (e) semver greater-than on an app-version attribute;
//! (f) a general regex, `^[a-z]+[0-9]{0,4}@(example|test)\.(com|org)$` (classes, a counted
//!     quantifier in the middle, alternation): no literal shortcut serves it, every engine
//!     runs a regex.
//!
//! Each shape is timed two ways:
//! - `<case>/one_user/<engine>`: one fixed user every time (the earlier measure, kept for
//!   comparison: the branch predictor's and the caches' best case);
//! - `<case>/1k_users/<engine>`: 1,000 distinct users in turn (ids, emails across five
//!   domains and app versions from 0.x to 3.x, so answers vary).
//!
//! `snapshot_10k/<engine>`: every engine holds 10,000 flags (the six above and 9,994 copies
//! of shapes a–e under other names; no copies of (f), as a deploykit snapshot holds at most
//! `MAX_REGEXES` general regexes), and each evaluation takes the next of 10,007 (flag, user)
//! pairs drawn at random over all flags and the 1,000 users.
//!
//! Every answer is cross-checked between engines before timing (LaunchDarkly buckets
//! rollouts differently, so its rollout answers are not compared). Inputs are built outside
//! the timing. Known biases: deploykit counts every evaluation (the peers' calls here do
//! not); the LaunchDarkly harness finds a flag in a SipHash `HashMap`.
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

use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime};
use deploykit::flags::{Context, FileFormat, FlagEngine, FlagSet};
use launchdarkly_server_sdk_evaluation as ld;
use serde_json::Value;

const CASES: [(&str, &str); 6] = [
    ("a_on", "a-on"),
    ("b_user_in_list", "b-list"),
    ("c_rollout_50", "c-rollout"),
    ("d_literal_suffix", "d-suffix"),
    ("e_semver_gt", "e-semver"),
    ("f_regex", "f-regex"),
];
const USERS: usize = 1_000;
const SNAPSHOT_FLAGS: usize = 10_000;
/// The (flag, user) pairs of the 10,000-flag case; prime, so no flag is tied to a user.
const SNAPSHOT_PAIRS: usize = 10_007;

/// One user's attributes, given to every engine alike.
struct User {
    id: String,
    email: String,
    app_version: String,
}

/// The earlier benchmark's single user.
fn fixed_user() -> User {
    User {
        id: "u2".into(),
        email: "ann@example.com".into(),
        app_version: "2.5.1".into(),
    }
}

fn users() -> Vec<User> {
    let names = ["ann", "bob", "carla", "dmitri", "eve"];
    let domains = [
        "example.com",
        "example.org",
        "test.com",
        "mail.example.com",
        "example.co",
    ];
    (0..USERS)
        .map(|k| User {
            id: format!("u{k}"),
            email: format!("{}{k}@{}", names[k % 5], domains[(k / 5) % 5]),
            app_version: format!("{}.{}.{}", k % 4, (k / 4) % 10, k % 7),
        })
        .collect()
}

fn data(name: &str) -> Value {
    let path = format!("{}/benches/data/flags/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// `flags` grown to `total` with copies of its first five (shapes a–e), renamed `<name>-<i>`
/// in the fields listed in `names`.
fn grown(flags: &mut Vec<Value>, total: usize, names: &[&str]) {
    let originals: Vec<Value> = flags[..5].to_vec();
    for i in flags.len()..total {
        let mut copy = originals[i % 5].clone();
        for field in names {
            let name = format!("{}-{i}", copy[*field].as_str().expect("a name"));
            copy[*field] = Value::String(name);
        }
        flags.push(copy);
    }
}

fn array<'a>(value: &'a mut Value, field: Option<&str>) -> &'a mut Vec<Value> {
    let value = match field {
        Some(field) => &mut value[field],
        None => value,
    };
    value.as_array_mut().expect("an array of flags")
}

/// The three engines, each holding the same `total` flags (at least the six cases).
struct Engines {
    deploykit: FlagEngine,
    yggdrasil: unleash_yggdrasil::EngineState,
    launchdarkly: LdStore,
    names: Vec<String>,
}

impl Engines {
    fn load(total: usize) -> Self {
        let mut deploykit = data("deploykit.json");
        grown(array(&mut deploykit, Some("flags")), total, &["name"]);
        let mut unleash = data("unleash.json");
        grown(array(&mut unleash, Some("features")), total, &["name"]);
        let mut launchdarkly = data("launchdarkly.json");
        grown(array(&mut launchdarkly, None), total, &["key", "salt"]);

        let names = array(&mut deploykit, Some("flags"))
            .iter()
            .map(|flag| flag["name"].as_str().expect("a name").to_owned())
            .collect();
        Self {
            deploykit: FlagEngine::with_flags(deploykit_set(&deploykit)).expect("deploykit flags compile"),
            yggdrasil: {
                let features: unleash_yggdrasil::ClientFeatures =
                    serde_json::from_value(unleash).expect("unleash flags");
                let engine = unleash_yggdrasil::EngineState::default();
                engine.take_state(unleash_yggdrasil::UpdateMessage::FullResponse(features));
                engine
            },
            launchdarkly: {
                let flags: Vec<ld::Flag> = serde_json::from_value(launchdarkly).expect("launchdarkly flags");
                LdStore {
                    flags: flags.into_iter().map(|flag| (flag.key.clone(), flag)).collect(),
                }
            },
            names,
        }
    }
}

fn deploykit_set(flags: &Value) -> FlagSet {
    FileFormat::Json
        .parse(&flags.to_string(), "deploykit.json")
        .expect("deploykit flags")
}

/// One user as each engine takes it.
struct Contexts {
    deploykit: Context,
    yggdrasil: unleash_yggdrasil::Context,
    launchdarkly: ld::Context,
}

impl Contexts {
    fn of(user: &User) -> Self {
        Self {
            deploykit: Context::new()
                .user_id(&user.id)
                .property("email", &user.email)
                .property("appVersion", &user.app_version),
            yggdrasil: unleash_yggdrasil::Context {
                user_id: Some(user.id.clone()),
                properties: Some(HashMap::from([
                    ("email".into(), user.email.clone()),
                    ("appVersion".into(), user.app_version.clone()),
                ])),
                ..Default::default()
            },
            launchdarkly: ld::ContextBuilder::new(&user.id)
                .set_string("email", user.email.as_str())
                .set_string("appVersion", user.app_version.as_str())
                .build()
                .expect("launchdarkly context"),
        }
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

fn launchdarkly_eval(store: &LdStore, key: &str, context: &ld::Context) -> bool {
    let flag = store.flags.get(key).expect("flag");
    ld::evaluate(store, flag, context, None)
        .value
        .and_then(|value| value.as_bool())
        .unwrap_or(false)
}

/// Same answers from every engine, or the comparison means nothing; how many were on.
fn cross_check(engines: &Engines, pairs: &[(&str, &Contexts)]) -> usize {
    let mut on = 0;
    for (flag, context) in pairs {
        let ours = engines.deploykit.is_enabled(flag, &context.deploykit);
        assert_eq!(
            ours,
            engines.yggdrasil.is_enabled(flag, &context.yggdrasil, &None),
            "{flag}: deploykit vs yggdrasil"
        );
        // LaunchDarkly buckets differently; its rollouts only need to evaluate.
        if !flag.starts_with("c-rollout") {
            assert_eq!(
                ours,
                launchdarkly_eval(&engines.launchdarkly, flag, &context.launchdarkly),
                "{flag}: deploykit vs launchdarkly"
            );
        }
        on += usize::from(ours);
    }
    on
}

/// Times each engine over `pairs`, one pair per evaluation, in turn.
fn bench_engines(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    engines: &Engines,
    pairs: &[(&str, &Contexts)],
) {
    let mut next = cycle(pairs);
    group.bench_function(format!("{id}/deploykit"), |b| {
        b.iter(|| {
            let (flag, context) = next();
            engines
                .deploykit
                .is_enabled(black_box(flag), black_box(&context.deploykit))
        })
    });
    let mut reader = engines.deploykit.reader();
    let mut next = cycle(pairs);
    group.bench_function(format!("{id}/deploykit_reader"), |b| {
        b.iter(|| {
            let (flag, context) = next();
            reader.is_enabled(black_box(flag), black_box(&context.deploykit))
        })
    });
    let mut next = cycle(pairs);
    group.bench_function(format!("{id}/yggdrasil"), |b| {
        b.iter(|| {
            let (flag, context) = next();
            engines
                .yggdrasil
                .is_enabled(black_box(flag), black_box(&context.yggdrasil), &None)
        })
    });
    let mut next = cycle(pairs);
    group.bench_function(format!("{id}/launchdarkly"), |b| {
        b.iter(|| {
            let (flag, context) = next();
            launchdarkly_eval(
                &engines.launchdarkly,
                black_box(flag),
                black_box(&context.launchdarkly),
            )
        })
    });
}

/// The pairs in turn, forever.
fn cycle<'p, 'a>(pairs: &'p [(&'a str, &'a Contexts)]) -> impl FnMut() -> (&'a str, &'a Contexts) + 'p {
    let mut at = 0;
    move || {
        let pair = pairs[at];
        at = if at + 1 == pairs.len() { 0 } else { at + 1 };
        pair
    }
}

fn side_by_side(c: &mut Criterion) {
    let engines = Engines::load(CASES.len());
    let fixed = Contexts::of(&fixed_user());
    let users: Vec<Contexts> = users().iter().map(Contexts::of).collect();

    let mut group = c.benchmark_group("flags");
    for (case, flag) in CASES {
        let one_user = [(flag, &fixed)];
        cross_check(&engines, &one_user);
        assert!(
            flag == "c-rollout" || engines.deploykit.is_enabled(flag, &fixed.deploykit),
            "{case} should be on for the fixed user"
        );
        bench_engines(&mut group, &format!("{case}/one_user"), &engines, &one_user);

        let sweep: Vec<(&str, &Contexts)> = users.iter().map(|user| (flag, user)).collect();
        let on = cross_check(&engines, &sweep);
        println!("{case}: on for {on} of {USERS} users");
        bench_engines(&mut group, &format!("{case}/1k_users"), &engines, &sweep);
    }
    group.finish();

    let big = Engines::load(SNAPSHOT_FLAGS);
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut draw = |below: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        usize::try_from(state >> 33).expect("31 bits") % below
    };
    let pairs: Vec<(&str, &Contexts)> = (0..SNAPSHOT_PAIRS)
        .map(|_| (big.names[draw(SNAPSHOT_FLAGS)].as_str(), &users[draw(USERS)]))
        .collect();
    let on = cross_check(&big, &pairs);
    println!("snapshot_10k: {on} of {SNAPSHOT_PAIRS} evaluations on");
    let mut group = c.benchmark_group("flags");
    bench_engines(&mut group, "snapshot_10k", &big, &pairs);
    group.finish();
}

fn reads_during_updates(c: &mut Criterion) {
    let flags = data("deploykit.json");
    let engine = Arc::new(FlagEngine::with_flags(deploykit_set(&flags)).expect("deploykit flags compile"));
    let context = Contexts::of(&fixed_user()).deploykit;
    let sets = [deploykit_set(&flags), {
        let mut changed = deploykit_set(&flags);
        changed.flags[0].description = "changed".into();
        changed
    }];
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
