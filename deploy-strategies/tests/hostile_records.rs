//! Hostile stored records (issue 14): whatever bytes or JSON sit in an app's rollout
//! journal and instance-list records (a corrupted file, a half-migrated schema, someone
//! writing the store by hand), `Rollout::resume` returns a rollout that ends (an operator
//! answering its holds) or a typed error: never a panic, never a hang. A refused resume leaves the records as they were and
//! the lease free.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use deploy_core::{LeaseStore, RecordStore, RecordStoreExt};
use deploy_strategies::{PauseReason, ResumePolicy, RolloutError, Strategy as RolloutStrategy};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Simulated time after which a resumed rollout counts as hung.
const HANG: Duration = Duration::from_secs(6 * 3600);
/// Simulated time after which the test's operator aborts a resumed rollout.
const GIVE_UP: Duration = Duration::from_secs(3600);
const JOURNAL: &str = "rollouts/shop/journal";
const INSTANCES: &str = "rollouts/shop/instances";

/// Real records of interrupted rollouts, `(journal, instance list)`: a canary's and a
/// rolling update's, each left by a deployer killed mid-rollout.
fn interrupted() -> &'static [(Value, Option<Value>)] {
    static RECORDS: OnceLock<Vec<(Value, Option<Value>)>> = OnceLock::new();
    RECORDS.get_or_init(|| {
        paused_runtime().block_on(async {
            let mut records = Vec::new();
            for (strategy, writes) in [(canary(), 2), (rolling(), 3)] {
                let world = world(floor_for(&strategy)).await;
                world.crash_deployer_after(strategy, writes).await;
                let read = async |key| {
                    let record = world.store.get(key).await.unwrap()?;
                    Some(serde_json::from_slice(&record.value).unwrap())
                };
                records.push((read(JOURNAL).await.expect("a journal"), read(INSTANCES).await));
            }
            records
        })
    })
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// A stored record as a test writes it.
#[derive(Debug, Clone)]
enum Stored {
    Absent,
    Bytes(Vec<u8>),
    /// A real record of `interrupted()[base]` with edits.
    Edited {
        base: usize,
        edits: Vec<Edit>,
    },
}

/// An edit at the `node`-th value of a JSON tree, counted in pre-order and wrapping.
#[derive(Debug, Clone)]
enum Edit {
    /// Any value in its place (mostly breaks the record's shape).
    Replace {
        node: usize,
        with: Value,
    },
    /// A hostile value of the same JSON type (keeps the record readable, breaks its sense).
    Twist {
        node: usize,
        pick: usize,
    },
    RemoveField {
        node: usize,
        field: usize,
    },
}

/// A hostile value of `value`'s JSON type.
fn twisted(value: Value, pick: usize) -> Value {
    match value {
        Value::Number(_) => [
            json!(0),
            json!(1),
            json!(3),
            json!(1u64 << 32),
            json!(u64::MAX),
            json!(-1),
            json!(0.5),
        ][pick % 7]
            .clone(),
        Value::String(text) => [
            String::new(),
            "rev-0".into(),
            "stable".into(),
            "9.9.9".into(),
            "../../etc".into(),
            text.repeat(64),
            "\u{0}é\u{202e}".into(),
        ][pick % 7]
            .clone()
            .into(),
        Value::Array(mut items) => match pick % 3 {
            0 => Value::Array(Vec::new()),
            1 => {
                items.extend(items.clone());
                Value::Array(items)
            }
            _ => {
                items.reverse();
                Value::Array(items)
            }
        },
        Value::Bool(flag) => Value::Bool(!flag),
        Value::Null => json!(pick),
        object @ Value::Object(_) => object,
    }
}

fn hostile_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        Just(json!(u64::MAX)),
        ".{0,24}".prop_map(Value::from),
        prop_oneof![
            Just("rev-0"),
            Just("stable"),
            Just("9.9"),
            Just("rolled_back"),
            Just("../x")
        ]
        .prop_map(Value::from),
        Just(Value::from("x".repeat(10_000))),
        Just(json!([])),
        Just(json!({})),
        Just(json!({"phase": "completed"})),
        Just(json!({"phase": "bogus", "reason": 7})),
        (0usize..300).prop_map(|depth| (0..depth).fold(json!(0), |inner, _| json!([inner]))),
        prop::collection::vec(any::<u32>().prop_map(Value::from), 0..64).prop_map(Value::from),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        1 => (any::<usize>(), hostile_value()).prop_map(|(node, with)| Edit::Replace { node, with }),
        6 => (any::<usize>(), any::<usize>()).prop_map(|(node, pick)| Edit::Twist { node, pick }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(node, field)| Edit::RemoveField { node, field }),
    ]
}

fn stored() -> impl Strategy<Value = Stored> {
    prop_oneof![
        1 => Just(Stored::Absent),
        2 => prop::collection::vec(any::<u8>(), 0..256).prop_map(Stored::Bytes),
        5 => (0usize..2, prop::collection::vec(edit(), 1..3)).prop_map(|(base, edits)| Stored::Edited { base, edits }),
    ]
}

fn size(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(size).sum(),
        Value::Object(fields) => fields.values().map(size).sum(),
        _ => 0,
    }
}

/// The `n`-th value of `value` in pre-order (`n < size(value)`).
fn node(value: &mut Value, mut n: usize) -> &mut Value {
    if n == 0 {
        return value;
    }
    n -= 1;
    let children: Box<dyn Iterator<Item = &mut Value>> = match value {
        Value::Array(items) => Box::new(items.iter_mut()),
        Value::Object(fields) => Box::new(fields.values_mut()),
        _ => Box::new(std::iter::empty()),
    };
    for child in children {
        let size = size(child);
        if n < size {
            return node(child, n);
        }
        n -= size;
    }
    unreachable!("n is within the tree")
}

fn apply(mut value: Value, edits: &[Edit]) -> Value {
    for edit in edits {
        let nodes = size(&value);
        match edit {
            Edit::Replace { node: n, with } => *node(&mut value, n % nodes) = with.clone(),
            Edit::Twist { node: n, pick } => {
                let target = node(&mut value, n % nodes);
                *target = twisted(target.take(), *pick);
            }
            Edit::RemoveField { node: n, field } => {
                if let Value::Object(fields) = node(&mut value, n % nodes)
                    && let Some(name) = fields.keys().nth(field % fields.len().max(1)).cloned()
                {
                    fields.remove(&name);
                }
            }
        }
    }
    value
}

fn bytes(stored: &Stored, instances: bool) -> Option<Vec<u8>> {
    match stored {
        Stored::Absent => None,
        Stored::Bytes(bytes) => Some(bytes.clone()),
        Stored::Edited { base, edits } => {
            let (journal, list) = &interrupted()[*base];
            let value = if instances { list.clone()? } else { journal.clone() };
            Some(serde_json::to_vec(&apply(value, edits)).unwrap())
        }
    }
}

/// Resumes the app over the hostile records and checks the answer; returns whether the
/// rollout resumed and ended with a report.
fn resume_over(journal: &Stored, instances: &Stored, policy: ResumePolicy) -> bool {
    let (journal_bytes, instance_bytes) = (bytes(journal, false), bytes(instances, true));
    paused_runtime().block_on(async {
        let world = world(0).await;
        for (key, value) in [(JOURNAL, &journal_bytes), (INSTANCES, &instance_bytes)] {
            if let Some(value) = value {
                world.store.put(key, value.clone().into()).await.unwrap();
            }
        }
        let strategy: RolloutStrategy = canary();
        let rollout = world.rollout(strategy);
        let outcome = tokio::time::timeout(HANG, async {
            match rollout.resume(&world.app, policy).await {
                Ok(handle) => {
                    // An operator answers every hold (a hold is an answer, not a hang) and
                    // ends timed pauses early; a rollout still going after GIVE_UP (a
                    // journal may ask for days of valid analysis) is aborted, and the
                    // abort must end it.
                    let (control, mut status) = (handle.control(), handle.watch_status());
                    let timed = tokio::spawn(async move {
                        while status.changed().await.is_ok() {
                            let paused = status.borrow_and_update().paused.clone();
                            if paused.is_some_and(|p| p.reason == PauseReason::Timed) {
                                control.promote();
                            }
                        }
                    });
                    let control = handle.control();
                    let give_up = tokio::spawn(async move {
                        tokio::time::sleep(GIVE_UP).await;
                        control.abort();
                    });
                    operate_until_done(&handle).await;
                    let ended = handle.wait().await;
                    timed.abort();
                    give_up.abort();
                    Ok(ended)
                }
                Err(refused) => Err(refused),
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no answer within {HANG:?} of simulated time"));
        match outcome {
            Ok(Err(RolloutError::Stopped { reason, .. })) => {
                assert!(!reason.contains("panic"), "the resumed runner panicked: {reason}");
                false
            }
            Ok(ended) => ended.is_ok(),
            Err(refused) => {
                if let Stored::Bytes(raw) = journal
                    && serde_json::from_slice::<Value>(raw).is_err()
                {
                    assert!(
                        matches!(refused, RolloutError::Journal { .. }),
                        "bytes that are not JSON are a journal error: {refused:?}"
                    );
                }
                let kept = world
                    .store
                    .get(JOURNAL)
                    .await
                    .unwrap()
                    .map(|record| record.value.to_vec());
                assert_eq!(
                    kept, journal_bytes,
                    "a refused resume leaves the journal as it was"
                );
                assert_eq!(
                    world.store.holder("rollouts/shop").await.unwrap(),
                    None,
                    "a refused resume frees the lease"
                );
                false
            }
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::with_cases(256) })]

    #[test]
    fn resume_over_hostile_records_ends_or_refuses_without_panic_or_hang(
        journal in stored(),
        instances in stored(),
        roll_back in any::<bool>(),
    ) {
        let policy = if roll_back { ResumePolicy::RollBack } else { ResumePolicy::Continue };
        resume_over(&journal, &instances, policy);
    }
}

/// The unedited records resume and end: the generator's base cases are real journals.
#[test]
fn the_unedited_records_resume() {
    for base in 0..interrupted().len() {
        let real = Stored::Edited {
            base,
            edits: Vec::new(),
        };
        assert!(resume_over(&real, &real, ResumePolicy::Continue), "base {base}");
    }
}

/// A journal asking for more instances than any fleet has (a corrupted count) is refused
/// on resume, before the deployer plans or provisions them (it used to exhaust memory).
#[test]
fn counts_no_fleet_has_are_refused() {
    for (base, field) in [(0, "replicas"), (1, "instance_count"), (1, "replicas")] {
        let (mut journal, _) = interrupted()[base].clone();
        journal[field] = json!(1u64 << 32);
        let refused = paused_runtime().block_on(async {
            let world = world(0).await;
            world
                .store
                .put(JOURNAL, serde_json::to_vec(&journal).unwrap().into())
                .await
                .unwrap();
            world
                .rollout(canary())
                .resume(&world.app, ResumePolicy::Continue)
                .await
                .expect_err("an implausible journal is refused")
        });
        assert!(
            matches!(&refused, RolloutError::JournalInconsistent { reason, .. } if reason.contains(field)),
            "base {base}, {field}: {refused:?}"
        );
    }
}
