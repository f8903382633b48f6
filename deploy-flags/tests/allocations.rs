//! Evaluating a flag allocates nothing: checked with a counting global allocator over the
//! five flag shapes of the `flags` benchmark (plus a variant flag, a prerequisite chain and a
//! case-insensitive substring), through every read path. The measured callers are not the
//! ones the warm-up saw: thousands of distinct user ids, emails and versions, so no cache
//! keyed by input can hide an allocation.
//! The counter is process-wide, so this binary runs without libtest (`harness = false` in
//! Cargo.toml): libtest's own thread allocates now and then while a test runs, which made
//! the count flaky on a loaded machine although evaluation itself allocated nothing.

use std::alloc::System;

use deploy_flags::{Context, FileFormat, FlagEngine};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const FLAGS: &str = r##"{
  "flags": [
    { "name": "a-on", "enabled": true },
    { "name": "b-list", "enabled": true,
      "rules": [{ "constraints": [{ "contextName": "userId", "operator": "IN", "values": ["u1", "u2", "u3"] }] }] },
    { "name": "c-rollout", "enabled": true,
      "rules": [{ "rollout": { "percentage": 50, "stickiness": "userId", "groupId": "c-rollout" } }] },
    { "name": "d-regex", "enabled": true,
      "rules": [{ "constraints": [{ "contextName": "email", "operator": "REGEX", "value": "^[a-z]+@example\\.(com|org)$" }] }] },
    { "name": "e-semver", "enabled": true,
      "rules": [{ "constraints": [{ "contextName": "appVersion", "operator": "SEMVER_GT", "value": "2.0.0" }] }] },
    { "name": "f-variants", "enabled": true, "kind": "string",
      "variants": [{ "name": "red", "weight": 1, "payload": { "type": "string", "value": "#f00" } },
                   { "name": "blue", "weight": 1, "payload": { "type": "string", "value": "#00f" } }] },
    { "name": "g-prerequisites", "enabled": true,
      "prerequisites": [{ "flag": "c-rollout" }, { "flag": "f-variants", "variants": ["red"] }] },
    { "name": "h-contains", "enabled": true,
      "rules": [{ "constraints": [{ "contextName": "email", "operator": "STR_CONTAINS", "values": ["EXAMPLE"], "caseInsensitive": true }] }] }
  ]
}"##;

fn main() {
    let engine = FlagEngine::with_flags(FileFormat::Json.parse(FLAGS, "inline").unwrap()).unwrap();
    let warm_up = [
        Context::new()
            .user_id("u2")
            .property("email", "ann@example.com")
            .property("appVersion", "2.5.1"),
        Context::new()
            .user_id("zed")
            .property("email", "ZED@elsewhere")
            .property("appVersion", "1.0.0-rc.1+build.7"),
    ];
    // Built before measuring (building a context allocates); none was seen in the warm-up.
    let measured: Vec<Context> = (0..5_000)
        .map(|index| {
            Context::new()
                .user_id(format!("user-{index}"))
                .property(
                    "email",
                    format!("Person.{index}@{}", ["Example.org", "elsewhere.net"][index % 2]),
                )
                .property(
                    "appVersion",
                    format!("{}.{}.{}-rc.{index}", index % 4, index % 10, index % 7),
                )
        })
        .collect();
    let names = [
        "a-on",
        "b-list",
        "c-rollout",
        "d-regex",
        "e-semver",
        "f-variants",
        "g-prerequisites",
        "h-contains",
        "missing",
    ];
    let mut reader = engine.reader();
    let snapshot = engine.snapshot();
    let run = |reader: &mut deploy_flags::FlagReader<'_>, contexts: &[Context]| {
        let mut on = 0;
        for context in contexts {
            for name in names {
                on += usize::from(engine.is_enabled(name, context));
                on += usize::from(reader.is_enabled(name, context));
                on += usize::from(snapshot.evaluate(name, context).enabled());
                on += usize::from(engine.variant(name, context).is_some());
                on += usize::from(reader.variant(name, context).is_some());
            }
        }
        on
    };
    // The counter sees allocations at all.
    let probe = Region::new(GLOBAL);
    drop(std::hint::black_box(vec![1u8; 16]));
    assert_eq!(probe.change().allocations, 1);
    // Warm up on other callers: the thread's reader cache and the regex engine's per-thread
    // cache.
    assert!(run(&mut reader, &warm_up) > 0);
    let region = Region::new(GLOBAL);
    let total = run(&mut reader, &measured);
    let change = region.change();
    assert_eq!(
        total,
        run(&mut reader, &measured),
        "sticky callers get the same answers"
    );
    assert!(total > 0);
    assert_eq!(
        (change.allocations, change.reallocations),
        (0, 0),
        "{} allocations over {} evaluations of callers not seen before",
        change.allocations,
        measured.len() * names.len() * 5
    );
    println!("evaluation allocates nothing: ok");
}
