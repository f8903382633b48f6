//! Real processes against the durable stores: deployers killed with SIGKILL mid-step (canary,
//! rolling and blue-green) and resumed by a fresh process, two deployers racing for one app, a deployer cut off from
//! its store while a successor takes over, and a flag change crossing processes through
//! PostgreSQL.
//!
//! The children are this same test binary, re-run with `DEPLOYKIT_CHILD` set (the
//! `child_entry` test does the work then and exits). The simulated fleet outlives each
//! child the way a real fleet outlives its deployer: every change to it is persisted (as a
//! `FleetImage`) in the same store as it happens, operations in flight included (an
//! instance draining, stopped mid-update, provisioned but not yet registered), and each
//! child restores it on start.
//!
//! SQLite runs everywhere; PostgreSQL needs `DEPLOYKIT_PG_URL` (skipped with a message
//! without it, failing under `DEPLOYKIT_REQUIRE_REAL=1`). Trials per backend:
//! `DEPLOYKIT_CRASH_TRIALS` (default 20).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use deploykit::core::{
    AppId, Artifact, BackendError, DynStore, HealthChecker, HealthStatus, InfraManager, Instance, InstanceId,
    InstanceState, LoadBalancer, MetricName, MetricQuery, MetricsSource, Pool, RecordStoreExt, Series,
    TrafficSplit, Version, Weight, WriteOptions,
};
use deploykit::flags::{Context, FeatureFlagManager, FlagDefinition, ManagerOptions};
use deploykit::store::postgres::{PostgresOptions, PostgresStore};
use deploykit::store::sqlite::{SqliteOptions, SqliteStore};
use deploykit::strategies::{
    AnalysisMetric, AnalysisSpec, BlueGreenSpec, CanarySpec, CanaryStep, Pause, Quantity, ResumePolicy,
    RollingSpec, Rollout, RolloutBackends, RolloutError, RolloutOptions, RolloutOutcome, Strategy,
};
use deploykit::testkit::{FaultyStore, FleetImage, Operation, SimFleet, VersionProfile};
use tokio::sync::Mutex;

const FLEET_KEY: &str = "crash/fleet";
const REPLICAS: usize = 4;

fn app() -> AppId {
    AppId::new("shop").expect("app id")
}

fn v1() -> Version {
    Version::new("1.0").expect("version")
}

fn v2() -> Version {
    Version::new("2.0").expect("version")
}

// ---------------------------------------------------------------- the durable fleet

/// The simulated fleet, persisted to the store after every change (under a lock, so images
/// land in order): as the change happens, so a kill can leave an operation half done, and
/// again before the change is reported done.
#[derive(Clone, Debug)]
struct DurableFleet {
    fleet: SimFleet,
    store: Arc<DynStore>,
    persist_lock: Arc<Mutex<()>>,
}

impl DurableFleet {
    /// Opens the fleet in `store` (standing it up on first use), its checker told what
    /// `strategy` promises.
    async fn open(store: Arc<DynStore>, strategy: &Strategy) -> Self {
        let floor = match strategy {
            Strategy::Rolling(_) => REPLICAS - 1,
            _ => REPLICAS,
        };
        let fleet = SimFleet::builder()
            .capacity_floor(&app(), floor)
            .unhealthy_grace(Duration::from_millis(500))
            .build();
        let durable = Self {
            fleet,
            store,
            persist_lock: Arc::new(Mutex::new(())),
        };
        match durable
            .store
            .get_json::<FleetImage>(FLEET_KEY)
            .await
            .expect("read the fleet")
        {
            Some((image, _)) => durable.fleet.restore(image).expect("restore the fleet"),
            None => {
                durable
                    .fleet
                    .serve(&app(), &Pool::stable(), &v1(), REPLICAS)
                    .await
                    .expect("stand the app up");
                durable.persist().await.expect("persist the fleet");
            }
        }
        let limit = match strategy {
            Strategy::Rolling(_) => REPLICAS + 1,
            _ => 2 * REPLICAS,
        };
        durable.fleet.set_instance_limit(&app(), limit);
        if let Strategy::Canary(spec) = strategy {
            let steps = spec.steps.iter().map(|step| step.weight).chain([Weight::FULL]);
            durable
                .fleet
                .set_exposure_steps(&app(), Pool::stable(), steps.collect());
        }
        let mut changes = durable.fleet.changes();
        let persister = durable.clone();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                // A failed write is retried at the next change, and `done` writes too.
                let _ = persister.persist().await;
            }
        });
        durable
    }

    async fn persist(&self) -> Result<(), BackendError> {
        let _turn = self.persist_lock.lock().await;
        let image = self.fleet.image();
        self.store
            .put_json(FLEET_KEY, &image, WriteOptions::default())
            .await
            .map(|_| ())
            .map_err(|error| BackendError::unavailable("durable-fleet", error.to_string()))
    }

    async fn done<T>(&self, result: Result<T, BackendError>) -> Result<T, BackendError> {
        let value = result?;
        self.persist().await?;
        Ok(value)
    }
}

#[async_trait]
impl LoadBalancer for DurableFleet {
    async fn register(&self, instance: &Instance) -> Result<(), BackendError> {
        self.done(self.fleet.register(instance).await).await
    }

    async fn deregister(
        &self,
        app: &AppId,
        instance: &InstanceId,
        drain: Duration,
    ) -> Result<(), BackendError> {
        self.done(self.fleet.deregister(app, instance, drain).await).await
    }

    async fn members(&self, app: &AppId, pool: &Pool) -> Result<Vec<InstanceId>, BackendError> {
        self.fleet.members(app, pool).await
    }

    async fn routing(&self, app: &AppId) -> Result<Option<TrafficSplit>, BackendError> {
        self.fleet.routing(app).await
    }

    async fn set_routing(&self, app: &AppId, split: &TrafficSplit) -> Result<(), BackendError> {
        self.done(self.fleet.set_routing(app, split).await).await
    }
}

#[async_trait]
impl InfraManager for DurableFleet {
    async fn list_instances(&self, app: &AppId) -> Result<Vec<Instance>, BackendError> {
        self.fleet.list_instances(app).await
    }

    async fn describe_instances(
        &self,
        app: &AppId,
        ids: &[InstanceId],
    ) -> Result<Vec<Instance>, BackendError> {
        self.fleet.describe_instances(app, ids).await
    }

    async fn provision(
        &self,
        app: &AppId,
        pool: &Pool,
        version: &Version,
        count: usize,
    ) -> Result<Vec<Instance>, BackendError> {
        self.done(self.fleet.provision(app, pool, version, count).await)
            .await
    }

    async fn fetch_artifact(&self, app: &AppId, version: &Version) -> Result<Artifact, BackendError> {
        self.fleet.fetch_artifact(app, version).await
    }

    async fn stop_instance(&self, app: &AppId, instance: &InstanceId) -> Result<(), BackendError> {
        self.done(self.fleet.stop_instance(app, instance).await).await
    }

    async fn install(
        &self,
        app: &AppId,
        instance: &InstanceId,
        artifact: &Artifact,
    ) -> Result<(), BackendError> {
        self.done(self.fleet.install(app, instance, artifact).await).await
    }

    async fn start_instance(&self, app: &AppId, instance: &InstanceId) -> Result<Instance, BackendError> {
        self.done(self.fleet.start_instance(app, instance).await).await
    }

    async fn decommission(&self, app: &AppId, instance: &InstanceId) -> Result<(), BackendError> {
        self.done(self.fleet.decommission(app, instance).await).await
    }
}

#[async_trait]
impl HealthChecker for DurableFleet {
    async fn check(&self, instance: &Instance) -> Result<HealthStatus, BackendError> {
        self.fleet.check(instance).await
    }
}

#[async_trait]
impl MetricsSource for DurableFleet {
    async fn query(&self, query: &MetricQuery) -> Result<Series, BackendError> {
        self.fleet.query(query).await
    }
}

// ---------------------------------------------------------------- stores

fn pg_url() -> Option<String> {
    match std::env::var("DEPLOYKIT_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            deploy_testkit::real::skip(
                "DEPLOYKIT_PG_URL is not set (e.g. postgres://postgres@127.0.0.1:5432/test) for the PostgreSQL runs",
            );
            None
        }
    }
}

/// Where a child finds its store: `sqlite:<path>` or `postgres:<schema>` (URL from the env).
async fn open_store(spec: &str) -> Arc<DynStore> {
    if let Some(path) = spec.strip_prefix("sqlite:") {
        Arc::new(
            SqliteStore::open(SqliteOptions::new(path))
                .await
                .expect("open sqlite"),
        )
    } else if let Some(schema) = spec.strip_prefix("postgres:") {
        let url = std::env::var("DEPLOYKIT_PG_URL").expect("DEPLOYKIT_PG_URL");
        Arc::new(
            PostgresStore::connect(PostgresOptions::new(url).schema(schema))
                .await
                .expect("connect postgres"),
        )
    } else {
        panic!("unknown store spec {spec}")
    }
}

async fn drop_pg_schema(schema: &str) {
    let url = std::env::var("DEPLOYKIT_PG_URL").expect("DEPLOYKIT_PG_URL");
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(&pool)
    .await
    .expect("drop schema");
    pool.close().await;
}

// ---------------------------------------------------------------- the child process

fn canary() -> Strategy {
    let steps = [25.0, 50.0, 100.0]
        .into_iter()
        .map(|percent| CanaryStep::percent(percent, Pause::For(Duration::from_millis(60))).expect("step"))
        .collect();
    let analysis = AnalysisSpec::new(
        vec![AnalysisMetric::max_mean(
            "error-rate",
            MetricName::error_rate(),
            Duration::from_millis(200),
            0.05,
        )],
        Duration::from_millis(40),
        2,
    );
    Strategy::Canary(CanarySpec {
        steps,
        analysis: Some(analysis),
        background: None,
        baseline: false,
        sticky: false,
    })
}

/// The strategy named `name` ("canary", "rolling", "blue-green"), with short waits.
fn strategy(name: &str) -> Strategy {
    match name {
        "canary" => canary(),
        "rolling" => Strategy::Rolling(RollingSpec {
            batch: Quantity::Count(1),
            max_unavailable: Quantity::Count(1),
            max_surge: Quantity::Count(1),
            analysis: None,
        }),
        "blue-green" => Strategy::BlueGreen(BlueGreenSpec {
            scale_down_delay: Duration::from_millis(50),
            ..BlueGreenSpec::default()
        }),
        other => panic!("unknown strategy {other}"),
    }
}

fn options() -> RolloutOptions {
    RolloutOptions {
        replicas: None,
        progress_deadline: Duration::from_secs(60),
        health_timeout: Duration::from_secs(10),
        poll_interval: Duration::from_millis(10),
        // Longer than a request takes (p99 20 ms): a shorter drain cuts requests in flight.
        drain: Duration::from_millis(30),
        lease_ttl: Duration::from_secs(2),
        retry: RolloutOptions::default().retry,
        rollback_attempts: 3,
        max_parallel: 8,
    }
}

async fn rollout(store: Arc<DynStore>, holder: &str, strategy: Strategy) -> (Rollout, DurableFleet) {
    let fleet = DurableFleet::open(store.clone(), &strategy).await;
    let good =
        VersionProfile::new(0.0, Duration::from_millis(5), Duration::from_millis(20)).expect("profile");
    fleet.fleet.set_version_profile(&app(), &v1(), good);
    fleet.fleet.set_version_profile(&app(), &v2(), good);
    // Operations take time, so kills land in the middle of them too (the canary trials
    // keep their calibrated timing).
    let latencies = if matches!(strategy, Strategy::Canary(_)) {
        &[][..]
    } else {
        &[
            (Operation::Provision, 30),
            (Operation::StopInstance, 10),
            (Operation::Install, 20),
            (Operation::StartInstance, 10),
            (Operation::Decommission, 10),
        ][..]
    };
    for &(operation, millis) in latencies {
        fleet.fleet.set_latency(operation, Duration::from_millis(millis));
    }
    let rollout = Rollout::builder(strategy, RolloutBackends::from_one(fleet.clone()), store)
        .options(options())
        .holder(holder)
        .build()
        .expect("rollout");
    (rollout, fleet)
}

fn outcome_name(outcome: &RolloutOutcome) -> &'static str {
    match outcome {
        RolloutOutcome::Completed => "completed",
        RolloutOutcome::RolledBack { .. } => "rolled-back",
        RolloutOutcome::Failed { .. } => "failed",
    }
}

/// Deploys (or resumes) with the strategy `DEPLOYKIT_CHILD_STRATEGY` names and prints
/// `OUTCOME <what>`.
async fn deploy_child(store: Arc<DynStore>, policy: ResumePolicy) {
    let name = std::env::var("DEPLOYKIT_CHILD_STRATEGY").expect("strategy");
    let (rollout, fleet) = rollout(store, "crash-deployer", strategy(&name)).await;
    let traffic = fleet
        .fleet
        .generate_traffic(&app(), 20, Duration::from_millis(10));
    // The killed deployer's lease is refused to everyone, its own name included, until it
    // lapses.
    let resumed = loop {
        match rollout.resume(&app(), policy).await {
            Err(RolloutError::AppBusy { .. }) => tokio::time::sleep(Duration::from_millis(50)).await,
            other => break other,
        }
    };
    let handle = match resumed {
        Ok(handle) => Some(handle),
        Err(RolloutError::NothingToResume { .. }) => {
            // No interrupted rollout: either none had started, or it had finished.
            let settled = fleet.fleet.count_running(&app(), &Pool::stable(), &v2()) == REPLICAS
                || fleet.fleet.image().apps[0]
                    .instances
                    .iter()
                    .all(|instance| instance.version == v2());
            if settled {
                None
            } else {
                Some(rollout.start(&app(), &v2()).await.expect("start"))
            }
        }
        Err(error) => panic!("resume: {error}"),
    };
    let outcome = match handle {
        Some(handle) => outcome_name(&handle.wait().await.expect("rollout").outcome).to_owned(),
        None => "already-done".to_owned(),
    };
    traffic.stop();
    fleet.persist().await.expect("persist");
    println!("OUTCOME {outcome}");
}

/// Waits for the agreed instant, then tries to start; prints `ACTED` or `REFUSED <error>`.
async fn race_child(store: Arc<DynStore>, holder: &str, start_at_ms: u64) {
    let (rollout, fleet) = rollout(store, holder, canary()).await;
    let wait = start_at_ms.saturating_sub(epoch_ms());
    tokio::time::sleep(Duration::from_millis(wait)).await;
    match rollout.start(&app(), &v2()).await {
        Ok(handle) => {
            println!("ACTED");
            let traffic = fleet
                .fleet
                .generate_traffic(&app(), 20, Duration::from_millis(10));
            let report = handle.wait().await.expect("rollout");
            traffic.stop();
            println!("OUTCOME {}", outcome_name(&report.outcome));
        }
        Err(error @ RolloutError::AppBusy { .. }) => println!("REFUSED {error}"),
        Err(error) => panic!("start: {error}"),
    }
}

/// Creates a flag through a manager on the store; prints `WROTE <epoch ms>` when done.
async fn flag_child(store: Arc<DynStore>) {
    let manager = FeatureFlagManager::open(store, ManagerOptions::default())
        .await
        .expect("manager");
    manager
        .create_flag("child", FlagDefinition::new("from-another-process", true))
        .await
        .expect("create");
    println!("WROTE {}", epoch_ms());
}

fn infra_files(root: &std::path::Path) -> (Vec<deploykit::infra::Resource>, deploykit::infra::FileProvider) {
    let resources = (0..60)
        .map(|index| {
            let resource = deploykit::infra::Resource::new(
                "file",
                &format!("layer{}/f{index}", index / 10),
                &serde_json::json!({ "content": format!("{index}\n") }),
            )
            .expect("config");
            if index >= 10 {
                resource.after(format!("file.layer{}/f{}", index / 10 - 1, index - 10))
            } else {
                resource
            }
        })
        .collect();
    (
        resources,
        deploykit::infra::FileProvider::new(root).with_latency(Duration::from_millis(40)),
    )
}

/// Applies 60 slow file resources (6 layers of 10); prints `APPLIED` when done.
async fn infra_child(store: Arc<DynStore>) {
    let root = PathBuf::from(std::env::var("DEPLOYKIT_CHILD_ROOT").expect("root"));
    let (resources, provider) = infra_files(&root);
    let states = deploykit::infra::StateStore::new(store, deploykit::core::time::SystemClock::shared());
    let infra = deploykit::infra::Infra::new(states).provider(provider);
    infra.apply("prod", &resources, "child").await.expect("apply");
    println!("APPLIED");
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[test]
fn child_entry() {
    let Ok(mode) = std::env::var("DEPLOYKIT_CHILD") else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = open_store(&std::env::var("DEPLOYKIT_CHILD_STORE").expect("store")).await;
        match mode.as_str() {
            "deploy" => deploy_child(store, ResumePolicy::Continue).await,
            "deploy-rollback" => deploy_child(store, ResumePolicy::RollBack).await,
            "race" => {
                let holder = std::env::var("DEPLOYKIT_CHILD_HOLDER").expect("holder");
                let start_at = std::env::var("DEPLOYKIT_CHILD_START_AT")
                    .expect("start")
                    .parse()
                    .expect("ms");
                race_child(store, &holder, start_at).await
            }
            "flag" => flag_child(store).await,
            "infra" => infra_child(store).await,
            other => panic!("unknown child mode {other}"),
        }
    });
    // Leave without the test harness's summary: the parent reads this process's lines.
    std::process::exit(0);
}

// ---------------------------------------------------------------- the parent side

fn spawn_child(mode: &str, store: &str, extra: &[(&str, String)]) -> Child {
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env("DEPLOYKIT_CHILD", mode)
        .env("DEPLOYKIT_CHILD_STORE", store)
        .env("RUST_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (key, value) in extra {
        command.env(key, value);
    }
    command.spawn().expect("spawn a child")
}

/// Waits for a child (bounded) and returns its stdout lines.
fn finish_child(mut child: Child, limit: Duration) -> Vec<String> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            // The harness prints its own "test child_entry ... " before the child's first line.
            let lines: Vec<String> = BufReader::new(child.stdout.take().expect("stdout"))
                .lines()
                .map_while(Result::ok)
                .map(|line| line.trim_start_matches("test child_entry ... ").to_owned())
                .collect();
            assert!(status.success(), "child failed ({status}): {lines:?}");
            return lines;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("a child ran longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn line_with<'a>(lines: &'a [String], prefix: &str) -> Option<&'a str> {
    lines.iter().find_map(|line| line.strip_prefix(prefix))
}

/// The fleet as the last process left it: fully on one version, healthy, in rotation,
/// all traffic on it, and no invariant violation in the record. Returns the version.
async fn settled_version(store: &Arc<DynStore>) -> Version {
    let (image, _) = store
        .get_json::<FleetImage>(FLEET_KEY)
        .await
        .expect("read")
        .expect("a fleet image");
    let fleet = SimFleet::new();
    fleet.restore(image).expect("restore");
    let instances = fleet.list_instances(&app()).await.expect("instances");
    assert_eq!(
        instances.len(),
        REPLICAS,
        "exactly the replicas remain: {instances:#?}"
    );
    let version = instances[0].version.clone();
    assert!(
        instances.iter().all(|instance| instance.version == version),
        "mixed versions: {instances:#?}"
    );
    assert!(
        instances
            .iter()
            .all(|instance| instance.state == InstanceState::Running),
        "{instances:#?}"
    );
    let routing = fleet.routing(&app()).await.expect("routing").expect("routed");
    let pools: Vec<&Pool> = routing.pools().collect();
    assert_eq!(pools.len(), 1, "all traffic on one pool: {routing}");
    let mut members = fleet.members(&app(), pools[0]).await.expect("members");
    members.sort();
    let mut ids: Vec<InstanceId> = instances.iter().map(|instance| instance.id.clone()).collect();
    ids.sort();
    assert_eq!(members, ids, "every instance serves");
    for instance in &instances {
        assert_eq!(
            fleet.check(instance).await.expect("health"),
            HealthStatus::Healthy
        );
    }
    let violations = fleet.finish();
    assert!(violations.is_empty(), "invariant violations: {violations:#?}");
    version
}

struct TrialReport {
    new: usize,
    old: usize,
    killed_mid_run: usize,
    /// Kills that left an operation half done in the fleet: an instance draining, stopped,
    /// or running outside rotation.
    half_done: usize,
}

/// Whether the fleet in `store` has an operation half done.
async fn half_done(store: &Arc<DynStore>) -> bool {
    let image = store.get_json::<FleetImage>(FLEET_KEY).await.expect("read");
    image.is_some_and(|(image, _)| {
        image
            .apps
            .iter()
            .flat_map(|app| &app.instances)
            .any(|instance| instance.state != InstanceState::Running || instance.draining != Some(false))
    })
}

/// Kills a `strategy` deployer at `trials` moments spread over a run, resumes each with a
/// fresh process (continuing or rolling back, in turn), and checks the fleet it leaves.
async fn crash_trials(backend: &str, strategy: &str, trials: usize) -> TrialReport {
    let dir = std::env::temp_dir().join(format!(
        "deploykit-crash-{}-{backend}-{strategy}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let env = [("DEPLOYKIT_CHILD_STRATEGY", strategy.to_owned())];
    let prefix = format!("{backend}_{}", strategy.replace('-', "_"));
    // Calibrate: how long an uninterrupted run takes here.
    let calibration = format!("{prefix}_calibration");
    let spec = store_spec(backend, &dir, &calibration);
    let started = Instant::now();
    let lines = finish_child(spawn_child("deploy", &spec, &env), Duration::from_secs(120));
    let full_run = started.elapsed();
    assert_eq!(line_with(&lines, "OUTCOME "), Some("completed"), "{lines:?}");
    cleanup(backend, &calibration).await;

    let mut report = TrialReport {
        new: 0,
        old: 0,
        killed_mid_run: 0,
        half_done: 0,
    };
    for trial in 0..trials {
        let name = format!("{prefix}_trial_{trial}");
        let spec = store_spec(backend, &dir, &name);
        // Spread the kills over the whole run, a little past its end.
        let kill_after = full_run.mul_f64(1.2 * (trial as f64 + 0.5) / trials as f64);
        let mut first = spawn_child("deploy", &spec, &env);
        std::thread::sleep(kill_after);
        if first.try_wait().expect("wait").is_none() {
            report.killed_mid_run += 1;
        }
        let _ = first.kill(); // SIGKILL
        let _ = first.wait();
        let store = open_store(&spec).await;
        report.half_done += usize::from(half_done(&store).await);
        let mode = if trial % 2 == 0 {
            "deploy"
        } else {
            "deploy-rollback"
        };
        let lines = finish_child(spawn_child(mode, &spec, &env), Duration::from_secs(120));
        let outcome = line_with(&lines, "OUTCOME ");
        assert!(
            matches!(outcome, Some("completed" | "rolled-back" | "already-done")),
            "{strategy} trial {trial}: {lines:?}"
        );
        let version = settled_version(&store).await;
        if version == v2() {
            report.new += 1
        } else {
            report.old += 1
        }
        drop(store);
        cleanup(backend, &name).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    report
}

fn store_spec(backend: &str, dir: &std::path::Path, name: &str) -> String {
    match backend {
        "sqlite" => format!("sqlite:{}", dir.join(format!("{name}.db")).display()),
        _ => format!("postgres:deploykit_{name}_{}", std::process::id()),
    }
}

async fn cleanup(backend: &str, name: &str) {
    if backend == "postgres" {
        drop_pg_schema(&format!("deploykit_{name}_{}", std::process::id())).await;
    }
}

fn trials() -> usize {
    std::env::var("DEPLOYKIT_CRASH_TRIALS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(20)
}

/// Runs the crash trials of `strategy` on `backend`, reports their outcomes, and checks
/// that most kills landed mid-run and, for rolling and blue-green, some mid-operation (so
/// the trials exercised resuming a half-done step, not just restarting).
async fn crash_trials_on(backend: &str, strategy: &str) {
    let started = Instant::now();
    let report = crash_trials(backend, strategy, trials()).await;
    println!(
        "{backend} {strategy}: {} trials in {:.1} s, {} killed mid-run, {} with an operation half done, \
         {} ended new, {} ended old",
        trials(),
        started.elapsed().as_secs_f64(),
        report.killed_mid_run,
        report.half_done,
        report.new,
        report.old
    );
    assert!(
        report.killed_mid_run >= trials() / 2,
        "most kills should land mid-run"
    );
    if strategy != "canary" {
        assert!(
            report.half_done >= trials() / 10,
            "some kills should land mid-operation: {}",
            report.half_done
        );
    }
}

/// Whether this process is a child, or the PostgreSQL runs are to be skipped.
fn skip(backend: &str) -> bool {
    std::env::var("DEPLOYKIT_CHILD").is_ok() || (backend == "postgres" && pg_url().is_none())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_deployers_resume_to_a_settled_fleet_on_sqlite() {
    if !skip("sqlite") {
        crash_trials_on("sqlite", "canary").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_deployers_resume_to_a_settled_fleet_on_postgres() {
    if !skip("postgres") {
        crash_trials_on("postgres", "canary").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_rolling_deployers_resume_mid_step_on_sqlite() {
    if !skip("sqlite") {
        crash_trials_on("sqlite", "rolling").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_rolling_deployers_resume_mid_step_on_postgres() {
    if !skip("postgres") {
        crash_trials_on("postgres", "rolling").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_blue_green_deployers_resume_mid_step_on_sqlite() {
    if !skip("sqlite") {
        crash_trials_on("sqlite", "blue-green").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_blue_green_deployers_resume_mid_step_on_postgres() {
    if !skip("postgres") {
        crash_trials_on("postgres", "blue-green").await;
    }
}

// ---------------------------------------------------------------- store outages

/// A deployer whose store goes away for longer than its lease's TTL stops acting by its
/// local deadline, before a successor resumes; the fleet ends consistent. Real time (the
/// durable stores keep lease time on their own clocks), with a TTL of 1.5 s.
async fn cut_off_deployer_stops_before_its_successor(store: Arc<DynStore>) {
    let fleet = SimFleet::new();
    fleet
        .serve(&app(), &Pool::stable(), &v1(), REPLICAS)
        .await
        .expect("serve");
    // Traffic for the canary's analysis.
    let traffic = fleet.generate_traffic(&app(), 20, Duration::from_millis(10));
    // Provisioning the canary takes longer than the TTL.
    fleet.set_latency(Operation::Provision, Duration::from_secs(4));
    let store = Arc::new(FaultyStore::new(store));
    let ttl = Duration::from_millis(1_500);
    let deployer = |name: &str| {
        let dyn_store: Arc<DynStore> = store.clone();
        Rollout::builder(
            canary(),
            RolloutBackends::from_one(fleet.as_caller(name)),
            dyn_store,
        )
        .options(RolloutOptions {
            lease_ttl: ttl,
            ..options()
        })
        .build()
        .expect("rollout")
    };
    let first = deployer("first").start(&app(), &v2()).await.expect("start");
    let started = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    store.fail_for(Duration::from_secs(3));
    let lost = tokio::time::timeout(Duration::from_secs(10), first.wait())
        .await
        .expect("the cut-off deployer stops");
    assert!(matches!(lost, Err(RolloutError::LeaseLost { .. })), "{lost:?}");
    // Its last renewal was at 0 s at the latest: it stops by 4/5 of the TTL after.
    let local_deadline = started + ttl.mul_f64(0.8);
    assert!(tokio::time::Instant::now() <= local_deadline + Duration::from_millis(200));

    tokio::time::sleep_until(started + Duration::from_millis(3_300)).await;
    fleet.set_latency(Operation::Provision, Duration::ZERO);
    let second = deployer("second")
        .resume(&app(), ResumePolicy::Continue)
        .await
        .expect("resume");
    let report = tokio::time::timeout(Duration::from_secs(60), second.wait())
        .await
        .expect("the successor finishes within a minute")
        .expect("rollout");
    traffic.stop();
    assert_eq!(report.outcome, RolloutOutcome::Completed, "{report:#?}");

    let successor_first = fleet.first_call_by("second").expect("the successor acted");
    let late = fleet.calls_by_since("first", successor_first.min(local_deadline));
    assert!(late.is_empty(), "the cut-off deployer acted late: {late:#?}");
    assert!(fleet.finish().is_empty(), "{:#?}", fleet.violations());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployer_cut_off_from_sqlite_stops_before_its_successor_acts() {
    if std::env::var("DEPLOYKIT_CHILD").is_ok() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("deploykit-outage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let store = open_store(&store_spec("sqlite", &dir, "outage")).await;
    cut_off_deployer_stops_before_its_successor(store).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployer_cut_off_from_postgres_stops_before_its_successor_acts() {
    if std::env::var("DEPLOYKIT_CHILD").is_ok() || pg_url().is_none() {
        return;
    }
    let dir = std::env::temp_dir();
    let spec = store_spec("postgres", &dir, "outage");
    cut_off_deployer_stops_before_its_successor(open_store(&spec).await).await;
    cleanup("postgres", "outage").await;
}

async fn race(backend: &str) {
    let dir = std::env::temp_dir().join(format!("deploykit-race-{}-{backend}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let name = format!("{backend}_race");
    let spec = store_spec(backend, &dir, &name);
    // The fleet exists before the racers start.
    drop(DurableFleet::open(open_store(&spec).await, &canary()).await);
    let start_at = (epoch_ms() + 1_500).to_string();
    let racers: Vec<Child> = ["deployer-a", "deployer-b"]
        .into_iter()
        .map(|holder| {
            spawn_child(
                "race",
                &spec,
                &[
                    ("DEPLOYKIT_CHILD_HOLDER", holder.into()),
                    ("DEPLOYKIT_CHILD_START_AT", start_at.clone()),
                ],
            )
        })
        .collect();
    let outputs: Vec<Vec<String>> = racers
        .into_iter()
        .map(|child| finish_child(child, Duration::from_secs(120)))
        .collect();
    let acted = outputs
        .iter()
        .filter(|lines| lines.iter().any(|line| line == "ACTED"))
        .count();
    let refused: Vec<&str> = outputs
        .iter()
        .filter_map(|lines| line_with(lines, "REFUSED "))
        .collect();
    assert_eq!((acted, refused.len()), (1, 1), "exactly one acts: {outputs:?}");
    assert!(
        refused[0].contains("deployer-"),
        "the refusal names the holder: {}",
        refused[0]
    );
    let store = open_store(&spec).await;
    assert_eq!(settled_version(&store).await, v2());
    drop(store);
    cleanup(backend, &name).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deployers_race_and_exactly_one_acts_on_sqlite() {
    if std::env::var("DEPLOYKIT_CHILD").is_ok() {
        return;
    }
    race("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deployers_race_and_exactly_one_acts_on_postgres() {
    if std::env::var("DEPLOYKIT_CHILD").is_ok() || pg_url().is_none() {
        return;
    }
    race("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_change_crosses_processes_through_postgres_within_a_second() {
    if std::env::var("DEPLOYKIT_CHILD").is_ok() || pg_url().is_none() {
        return;
    }
    let name = "flag_sync";
    let spec = store_spec("postgres", std::path::Path::new("."), name);
    let store = open_store(&spec).await;
    let manager = Arc::new(
        FeatureFlagManager::open(store, ManagerOptions::default())
            .await
            .expect("manager"),
    );
    let sync = manager.spawn_sync().await.expect("sync");
    let writer = spawn_child("flag", &spec, &[]);
    let mut seen_at = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if manager.is_enabled("from-another-process", &Context::new()) {
            seen_at = Some(epoch_ms());
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let lines = finish_child(writer, Duration::from_secs(60));
    let wrote: u64 = line_with(&lines, "WROTE ")
        .expect("the writer reports")
        .parse()
        .expect("ms");
    let seen = seen_at.expect("the flag reached this process");
    let latency = seen.saturating_sub(wrote);
    println!("flag change reached the other process {latency} ms after the write returned");
    assert!(latency < 1_000, "took {latency} ms");
    sync.abort();
    cleanup("postgres", name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_persist_and_sync_on_sqlite_too() {
    if std::env::var("DEPLOYKIT_CHILD").is_ok() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("deploykit-flags-sqlite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let spec = format!("sqlite:{}", dir.join("flags.db").display());
    let first = Arc::new(
        FeatureFlagManager::open(open_store(&spec).await, ManagerOptions::default())
            .await
            .expect("manager"),
    );
    let second = Arc::new(
        FeatureFlagManager::open(open_store(&spec).await, ManagerOptions::default())
            .await
            .expect("manager"),
    );
    let sync = second.spawn_sync().await.expect("sync");
    first
        .create_flag("ann", FlagDefinition::new("durable", false))
        .await
        .expect("create");
    first.enable_flag("bob", "durable", None).await.expect("enable");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !second.is_enabled("durable", &Context::new()) {
        assert!(
            Instant::now() < deadline,
            "the change reached the other store instance"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reopened = FeatureFlagManager::open(open_store(&spec).await, ManagerOptions::default())
        .await
        .expect("reopen");
    assert!(reopened.is_enabled("durable", &Context::new()));
    let actors: Vec<String> = reopened
        .audit_log("durable")
        .await
        .expect("audit")
        .into_iter()
        .map(|entry| entry.actor)
        .collect();
    assert_eq!(actors, ["ann", "bob"]);
    sync.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_apply_leaves_exactly_the_remaining_work_on_sqlite() {
    if std::env::var("DEPLOYKIT_CHILD").is_ok() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("deploykit-infra-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let spec = format!("sqlite:{}", dir.join("state.db").display());
    let root = dir.join("files");
    let mut child = spawn_child(
        "infra",
        &spec,
        &[("DEPLOYKIT_CHILD_ROOT", root.display().to_string())],
    );
    // Six layers of 40 ms: kill during the second or third, counted from the first file
    // (not from the spawn: a loaded machine may take longer than a layer to start a child).
    let started = Instant::now();
    while std::fs::read_dir(root.join("layer0")).map_or(true, |mut files| files.next().is_none()) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the apply never began"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(60));
    let _ = child.kill();
    let _ = child.wait();
    let store = open_store(&spec).await;
    let (resources, provider) = infra_files(&root);
    let infra = deploykit::infra::Infra::new(deploykit::infra::StateStore::new(
        store,
        deploykit::core::time::SystemClock::shared(),
    ))
    .provider(provider);
    let plan = infra.plan("prod", &resources).await.expect("plan");
    let remaining: Vec<&str> = plan.actions().into_iter().map(|(id, _)| id).collect();
    assert!(
        !remaining.is_empty() && remaining.len() < resources.len(),
        "killed mid-apply: {remaining:?}"
    );
    // Exactly the remaining work: every resource not planned has its file, every planned
    // one is either missing or was interrupted (tainted, so replaced).
    for resource in &resources {
        let planned = remaining.contains(&resource.id().as_str());
        let exists = root.join(&resource.name).exists();
        assert!(
            planned || exists,
            "{} is recorded done but its file is missing",
            resource.id()
        );
    }
    for (id, action) in plan.actions() {
        assert!(
            matches!(
                action,
                deploykit::infra::Action::Create | deploykit::infra::Action::Replace
            ),
            "{id}: {action:?}"
        );
    }
    println!(
        "killed apply: {} of {} resources left to do",
        remaining.len(),
        resources.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
