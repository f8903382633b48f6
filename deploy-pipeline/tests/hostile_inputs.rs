//! Hostile inputs and growth (issue 14): names that would escape their store key, logs and
//! runs that grew without bound, run records overwritten, and stored records or stage graphs
//! that are garbage.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use deploy_core::time::TokioClock;
use deploy_core::{DynRecordStore, MemoryStore, RecordStoreExt, StoreError};
use deploy_pipeline::{
    FnStage, LOG_MAX_BYTES, LOG_MAX_LINES, Pipeline, PipelineError, PipelineRunner, RunStatus, StageLog,
    StageOptions, StageOutput, StageStatus,
};
use parking_lot::Mutex;
use proptest::prelude::*;

fn ok(name: &'static str) -> FnStage {
    FnStage::new(name, |_| async { Ok(StageOutput::default()) })
}

fn runner(store: &Arc<DynRecordStore>) -> PipelineRunner {
    PipelineRunner::new(store.clone(), TokioClock::new().shared())
}

/// Security review m18: pipeline and stage names went into store keys unchecked (a pipeline
/// `a/runs` wrote into another's runs, a stage `x/y` came back from the store as `y`).
#[test]
fn names_that_are_not_one_key_segment_are_refused() {
    for (pipeline, stage, what, bad) in [
        ("a/runs", "s", "pipeline", "a/runs"),
        ("", "s", "pipeline", ""),
        ("p", "x/y", "stage", "x/y"),
        ("p", "..", "stage", ".."),
    ] {
        let built = Pipeline::builder(pipeline)
            .stage(stage, ok("s"), StageOptions::default())
            .build();
        match built {
            Err(PipelineError::InvalidName { what: got, name }) => {
                assert_eq!((got, name.as_str()), (what, bad))
            }
            other => panic!("{pipeline}/{stage}: {other:?}"),
        }
    }
}

/// Security review m13: a stage's log was an unbounded list persisted as one record; it
/// keeps its tail within `LOG_MAX_LINES` / `LOG_MAX_BYTES` now, saying how much it dropped.
#[tokio::test(start_paused = true)]
async fn a_chatty_stage_keeps_the_tail_of_its_log() {
    let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
    let chatty = FnStage::new("chatty", |context| async move {
        context.log.line("x".repeat(4 * LOG_MAX_BYTES));
        for line in 0..5_000 {
            context.log.line(format!("line {line}"));
        }
        Ok(StageOutput::default())
    });
    let pipeline = Pipeline::builder("p")
        .stage("chatty", chatty, StageOptions::default())
        .build()
        .unwrap();
    let runner = runner(&store);
    let handle = runner.start(Arc::new(pipeline)).await.unwrap();
    let id = handle.id.clone();
    handle.wait().await.unwrap();
    let logs = &runner.get_pipeline_logs(&id).await.unwrap()["chatty"];
    assert_eq!(logs.len(), LOG_MAX_LINES + 1);
    assert_eq!(logs[0], "[4001 earlier lines dropped]");
    assert_eq!(
        (logs[1].as_str(), logs[LOG_MAX_LINES].as_str()),
        ("line 4000", "line 4999")
    );
}

/// Security review m13: every run was kept for ever; a runner keeps the newest finished
/// runs of each pipeline (`keep_runs`, default `DEFAULT_KEPT_RUNS`), records and logs.
#[tokio::test(start_paused = true)]
async fn only_the_newest_finished_runs_are_kept() {
    let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
    let runner = runner(&store).keep_runs(3);
    let logged = FnStage::new("logged", |context| async move {
        context.log.line("hello");
        Ok(StageOutput::default())
    });
    let pipeline = Arc::new(
        Pipeline::builder("p")
            .stage("s", logged, StageOptions::default())
            .build()
            .unwrap(),
    );
    let other = Arc::new(
        Pipeline::builder("q")
            .stage("s", ok("s"), StageOptions::default())
            .build()
            .unwrap(),
    );
    runner.start(other).await.unwrap().wait().await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let handle = runner.start(pipeline.clone()).await.unwrap();
        ids.push(handle.id.clone());
        handle.wait().await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    for (at, id) in ids.iter().enumerate() {
        let status = runner.get_pipeline_status("p", id).await;
        let logs = runner.get_pipeline_logs(id).await;
        if at < 2 {
            assert!(
                matches!(status, Err(PipelineError::UnknownRun(_))),
                "{id}: {status:?}"
            );
            assert!(
                matches!(logs, Err(PipelineError::UnknownRun(_))),
                "{id}: {logs:?}"
            );
        } else {
            assert_eq!(status.unwrap().status, RunStatus::Succeeded);
            assert_eq!(logs.unwrap()["s"], ["hello"]);
        }
    }
    assert_eq!(store.list("pipelines/p/runs/").await.unwrap().len(), 3);
    assert_eq!(
        store.list("pipelines/q/runs/").await.unwrap().len(),
        1,
        "other pipelines untouched"
    );
}

/// Security review m13: run records were written unconditionally, so two runners that gave
/// a run the same id, or anyone writing the record, lost each other's updates; a run record
/// is created only if absent and written only over the version its run wrote last.
#[tokio::test(start_paused = true)]
async fn run_records_are_never_overwritten_by_another_writer() {
    let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
    let (release, released) = tokio::sync::watch::channel(false);
    let gated = FnStage::new("gated", move |_| {
        let mut released = released.clone();
        async move {
            let _ = released.wait_for(|released| *released).await;
            Ok(StageOutput::default())
        }
    });
    let pipeline = Arc::new(
        Pipeline::builder("p")
            .stage("s", gated, StageOptions::default())
            .build()
            .unwrap(),
    );
    let first = runner(&store).start(pipeline.clone()).await.unwrap();
    // A second runner at the same instant picks the same id: refused, not overwritten.
    match runner(&store).start(pipeline).await {
        Err(PipelineError::Store(StoreError::Conflict { .. })) => {}
        other => panic!("{other:?}"),
    }
    let key = format!("pipelines/p/runs/{}", first.id);
    tokio::task::yield_now().await;
    let (mut foreign, _) = store
        .get_json::<deploy_pipeline::RunRecord>(&key)
        .await
        .unwrap()
        .unwrap();
    foreign.status = RunStatus::Cancelled;
    store.put_json(&key, &foreign, Default::default()).await.unwrap();
    release.send_replace(true);
    let record = first.wait().await.unwrap();
    assert_eq!(record.status, RunStatus::Succeeded, "the run itself ended well");
    let (stored, _) = store
        .get_json::<deploy_pipeline::RunRecord>(&key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored, foreign, "the other writer's record is kept");
}

/// Arbitrary bytes, or JSON of another shape.
fn garbage() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..24),
        Just(b"[\"a\", 1]".to_vec()),
        Just(b"{\"pipeline\": 1}".to_vec()),
        Just(b"[\"line\"]".to_vec()),
        Just(b"null".to_vec()),
    ]
}

fn paused() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Issue 14 / m13: whatever is logged, a log keeps exactly the newest lines (each cut to
    /// `LOG_MAX_BYTES`) within both caps, and counts the rest as dropped.
    #[test]
    fn a_log_keeps_exactly_its_tail_within_the_caps(
        lines in prop::collection::vec((0..1_200usize, any::<char>()), 0..1_600),
    ) {
        let log = StageLog::default();
        let written: Vec<String> = lines.iter().map(|(len, c)| c.to_string().repeat(*len)).collect();
        for line in &written {
            log.line(line.clone());
        }
        let mut kept = log.lines();
        let dropped = log.dropped();
        if dropped > 0 {
            prop_assert_eq!(kept.remove(0), format!("[{dropped} earlier lines dropped]"));
        }
        prop_assert!(kept.len() <= LOG_MAX_LINES);
        prop_assert!(kept.iter().map(String::len).sum::<usize>() <= LOG_MAX_BYTES);
        prop_assert_eq!(dropped as usize + kept.len(), written.len());
        prop_assert_eq!(&kept[..], &written[dropped as usize..]);
    }

    /// Issue 14: stage graphs from arbitrary names and dependencies build or fail with a
    /// typed error; a graph that builds runs every stage once, each after its dependencies.
    #[test]
    fn arbitrary_stage_graphs_build_typed_and_run_in_order(
        name in prop_oneof![4 => "[a-c]{1,3}", 1 => "[a-c/.]{0,3}"],
        named in prop::collection::vec((
            prop_oneof![6 => "[a-z][a-z0-9]{0,2}", 1 => "[a/.]{0,2}"],
            prop::collection::vec(prop_oneof![12 => 0..6usize, 1 => Just(98), 1 => Just(99)], 0..3),
        ), 0..7),
    ) {
        // Dependencies by index: mostly an earlier stage; 98 the last one (a cycle, maybe),
        // 99 one that does not exist.
        let names: Vec<String> = named.iter().map(|(name, _)| name.clone()).collect();
        let stages: Vec<(String, Vec<String>)> = named
            .iter()
            .enumerate()
            .map(|(own, (name, depends_on))| {
                let dependency = |at: &usize| match *at {
                    99 => Some("ghost".to_owned()),
                    98 => names.last().cloned(),
                    at => (at < own).then(|| names[at].clone()),
                };
                (name.clone(), depends_on.iter().filter_map(dependency).collect())
            })
            .collect();
        let finished = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut builder = Pipeline::builder(name);
        for (stage, depends_on) in &stages {
            let (finished, stage_name) = (finished.clone(), stage.clone());
            let work = FnStage::new(stage.clone(), move |_| {
                let (finished, stage_name) = (finished.clone(), stage_name.clone());
                async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    finished.lock().push(stage_name);
                    Ok(StageOutput::default())
                }
            });
            let deps: Vec<&str> = depends_on.iter().map(String::as_str).collect();
            builder = builder.stage(stage.clone(), work, StageOptions::after(&deps));
        }
        let pipeline = match builder.build() {
            Ok(pipeline) => pipeline,
            Err(
                PipelineError::InvalidName { .. }
                | PipelineError::DuplicateStage { .. }
                | PipelineError::UnknownDependency { .. }
                | PipelineError::Cycle { .. },
            ) => return Ok(()),
            Err(other) => return Err(TestCaseError::fail(other.to_string())),
        };
        let record = paused().block_on(async {
            let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
            runner(&store).start(Arc::new(pipeline)).await.unwrap().wait().await.unwrap()
        });
        prop_assert_eq!(&record.status, &RunStatus::Succeeded);
        prop_assert!(record.stages.values().all(|stage| stage.status == StageStatus::Succeeded));
        let order = finished.lock().clone();
        prop_assert_eq!(order.iter().collect::<BTreeSet<_>>().len(), stages.len(), "each once");
        let position: BTreeMap<&String, usize> = order.iter().enumerate().map(|(at, s)| (s, at)).collect();
        for (stage, depends_on) in &stages {
            prop_assert!(depends_on.iter().all(|dependency| position[dependency] < position[stage]));
        }
    }

    /// Issue 14: garbage stored as run records and logs reads as a typed error naming the
    /// record (or a value, when it happens to decode), and runs of the pipeline still work.
    #[test]
    fn stored_garbage_reads_as_typed_errors(record in garbage(), log in garbage()) {
        paused().block_on(async {
            let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
            store.put("pipelines/p/runs/r", record.clone().into()).await.unwrap();
            store.put("pipelines/r/logs/s", log.clone().into()).await.unwrap();
            let runner = runner(&store);
            let status = runner.get_pipeline_status("p", "r").await;
            let decodes = serde_json::from_slice::<deploy_pipeline::RunRecord>(&record).is_ok();
            match status {
                Ok(_) => prop_assert!(decodes),
                Err(PipelineError::Store(StoreError::Codec { key, .. })) => {
                    prop_assert!(!decodes);
                    prop_assert_eq!(key, "p/runs/r");
                }
                Err(other) => prop_assert!(false, "{}", other),
            }
            let logs = runner.get_pipeline_logs("r").await;
            match logs {
                Ok(logs) => prop_assert_eq!(Some(logs["s"].clone()), serde_json::from_slice::<Vec<String>>(&log).ok()),
                Err(PipelineError::Store(StoreError::Codec { key, .. })) => prop_assert_eq!(key, "r/logs/s"),
                Err(other) => prop_assert!(false, "{}", other),
            }
            let pipeline = Pipeline::builder("p").stage("s", ok("s"), StageOptions::default()).build().unwrap();
            let run = runner.start(Arc::new(pipeline)).await.unwrap().wait().await.unwrap();
            prop_assert_eq!(run.status, RunStatus::Succeeded);
            Ok(())
        })?;
    }
}

/// The compare-and-swap of run records (review m13) must not freeze a record after a save
/// whose answer was lost although it landed: the run recognises its own write and goes on
/// saving.
#[tokio::test(start_paused = true)]
async fn a_save_whose_answer_was_lost_does_not_freeze_the_record() {
    let faulty = Arc::new(deploy_testkit::FaultyStore::in_memory());
    let store: Arc<DynRecordStore> = faulty.clone();
    // Run ids end with the runner's sequence number, `-0` for the first: only the record.
    faulty.count_writes_to("-0");
    faulty.lose_answer_after(2);
    let pipeline = Pipeline::builder("p")
        .stage("a", ok("a"), StageOptions::default())
        .stage("b", ok("b"), StageOptions::after(&["a"]))
        .build()
        .unwrap();
    let runner = runner(&store);
    let record = runner
        .start(Arc::new(pipeline))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(record.status, RunStatus::Succeeded);
    assert!(faulty.writes() > 3, "saved after the lost answer");
    assert_eq!(runner.get_pipeline_status("p", &record.id).await.unwrap(), record);
}
