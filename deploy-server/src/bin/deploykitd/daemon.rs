//! Composing the daemon from its configuration: the store, the simulated fleet, one
//! [`Deployer`] per app, flags, alerting and incidents, and the server's router, served until
//! shutdown.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use deploy_backends::ProcessInfra;
use deploy_core::{DynClock, DynMetricsSource, DynNotifier, DynRecordStore, DynStore, MemoryStore, Pool};
use deploy_flags::{FeatureFlagManager, FileFormat, FlagError, ManagerOptions};
use deploy_incidents::{Dispatcher, IncidentManager, IncidentOptions, Route};
use deploy_store::postgres::{PostgresOptions, PostgresStore};
use deploy_store::sqlite::{SqliteOptions, SqliteStore};
use deploy_strategies::control::{ControlOptions, Deployer, RolloutClient};
use deploy_strategies::{Rollout, RolloutBackends, Strategy};
use deploy_testkit::{SimFleet, TrafficHandle, VersionProfile};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::alerting::Alerting;
use crate::config::{DaemonConfig, MetricsConfig, StoreConfig};
use crate::notifier::LogNotifier;

/// How long shutdown waits for the deployers and open connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What can stop the daemon once its configuration is valid.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DaemonError {
    /// The store could not be opened.
    #[error("opening the store: {0}")]
    Store(#[source] deploy_store::OpenError),
    /// The fleet could not be set up.
    #[error("setting up the simulated fleet for {app}: {source}")]
    Fleet {
        /// The app.
        app: String,
        /// Why.
        #[source]
        source: deploy_core::BackendError,
    },
    /// A version's simulated behaviour is out of range.
    #[error("app {app}: {source}")]
    Profile {
        /// The app.
        app: String,
        /// Why.
        #[source]
        source: deploy_testkit::ProfileError,
    },
    /// A rollout could not be built.
    #[error("app {app}: {source}")]
    Rollout {
        /// The app.
        app: String,
        /// Why.
        #[source]
        source: deploy_strategies::RolloutError,
    },
    /// The flags could not be loaded.
    #[error("flags: {0}")]
    Flags(#[source] FlagError),
    /// The flags file could not be read.
    #[error("flags file {path}: {source}")]
    FlagsFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// HAProxy, process or health-check backends could not be set up.
    #[error("backends: {0}")]
    Backends(String),
    /// The metrics source could not be set up.
    #[error("metrics: {0}")]
    Metrics(String),
    /// Alerting or incidents could not be set up.
    #[error("alerting: {0}")]
    Alerts(String),
    /// The server could not be built.
    #[error("server: {0}")]
    Server(String),
    /// The listen address could not be bound.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What `--demo` adds: a driver rolling out releases, and the token to print.
#[derive(Debug, Clone)]
pub(crate) struct DemoMode {
    /// Idle time between a rollout's end and the next one.
    pub(crate) interval: Duration,
    /// The admin token, printed for the newcomer.
    pub(crate) token: String,
}

/// Opens the configured store.
async fn open_store(config: &StoreConfig) -> Result<Arc<DynStore>, DaemonError> {
    Ok(match config {
        StoreConfig::Sqlite(path) => Arc::new(
            SqliteStore::open(SqliteOptions::new(path))
                .await
                .map_err(DaemonError::Store)?,
        ),
        StoreConfig::Postgres { url, schema } => {
            let mut options = PostgresOptions::new(url.expose().clone());
            if let Some(schema) = schema {
                options = options.schema(schema.clone());
            }
            Arc::new(
                PostgresStore::connect(options)
                    .await
                    .map_err(DaemonError::Store)?,
            )
        }
        StoreConfig::Memory => Arc::new(MemoryStore::new()),
    })
}

/// Creates the flags of `config.flags_file` (or the demo's) that the store does not have.
async fn seed_flags(
    manager: &FeatureFlagManager,
    config: &DaemonConfig,
    demo: bool,
) -> Result<usize, DaemonError> {
    let set = match (&config.flags_file, demo) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).map_err(|source| DaemonError::FlagsFile {
                path: path.display().to_string(),
                source,
            })?;
            FileFormat::of(path)
                .parse(&text, &path.display().to_string())
                .map_err(DaemonError::Flags)?
        }
        (None, true) => crate::demo::flags(),
        (None, false) => return Ok(0),
    };
    let mut created = 0;
    for flag in set.flags {
        match manager.create_flag("deploykitd", flag).await {
            Ok(_) => created += 1,
            Err(FlagError::FlagExists(_)) => {}
            Err(error) => return Err(DaemonError::Flags(error)),
        }
    }
    Ok(created)
}

/// The pool an app is first served from: blue for blue-green (whose rollouts alternate
/// blue and green), stable otherwise.
fn first_pool(strategy: &Strategy) -> Pool {
    match strategy {
        Strategy::BlueGreen(_) => Pool::blue(),
        _ => Pool::stable(),
    }
}

/// Runs the daemon until `shutdown` resolves: prints where it serves (and, in demo mode,
/// the token and the commands to try), then serves.
pub(crate) async fn run(
    config: DaemonConfig,
    demo: Option<DemoMode>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let clock: Arc<DynClock> = deploy_core::SystemClock::shared();
    let store = open_store(&config.store).await?;
    let (stop, stopped) = watch::channel(false);

    // The simulated fleet: every app served at its configured version, with traffic.
    let fleet = SimFleet::builder().seed(config.seed).build();
    let mut traffic: Vec<TrafficHandle> = Vec::new();
    // With real backends the fleet is not used: nothing is served at start, and the first
    // rollout of each app deploys it.
    let simulated_apps = if config.real.is_none() {
        &config.apps[..]
    } else {
        &[]
    };
    for app in simulated_apps {
        for (version, error_rate, p50, p99) in &app.profiles {
            let profile =
                VersionProfile::new(*error_rate, *p50, *p99).map_err(|source| DaemonError::Profile {
                    app: app.name.to_string(),
                    source,
                })?;
            fleet.set_version_profile(&app.name, version, profile);
        }
        fleet
            .serve(&app.name, &first_pool(&app.strategy), &app.version, app.replicas)
            .await
            .map_err(|source| DaemonError::Fleet {
                app: app.name.to_string(),
                source,
            })?;
        // Ten ticks a second, so a canary's share of the traffic shows up quickly.
        traffic.push(fleet.generate_traffic(&app.name, app.traffic.div_ceil(10), Duration::from_millis(100)));
    }

    // Metrics for analysis and alert rules: the fleet's own, or Prometheus's.
    let metrics: Arc<DynMetricsSource> = match &config.metrics {
        MetricsConfig::Simulated => Arc::new(fleet.clone()),
        MetricsConfig::Prometheus(prometheus) => Arc::new(
            prometheus
                .build()
                .map_err(|error| DaemonError::Metrics(error.to_string()))?,
        ),
    };

    // HAProxy, processes and HTTP health checks, shared by every app.
    let backends = match &config.real {
        None => RolloutBackends {
            metrics: Arc::clone(&metrics),
            ..RolloutBackends::from_one(fleet.clone())
        },
        Some(real) => {
            let infra = ProcessInfra::new(real.process.spec())
                .map_err(|error| DaemonError::Backends(format!("processes: {error}")))?;
            let health = real
                .health
                .build()
                .map_err(|error| DaemonError::Backends(format!("health checks: {error}")))?;
            RolloutBackends {
                load_balancer: Arc::new(real.load_balancer()),
                infra: Arc::new(infra),
                health: Arc::new(health),
                metrics: Arc::clone(&metrics),
                request_routing: None,
            }
        }
    };

    // The control records' limits and clock, shared by the deployers and the server.
    let control = ControlOptions {
        history_limit: config.history_limit,
        events_per_revision: config.events_per_revision,
        clock: Arc::clone(&clock),
    };
    // Built now, started once the server is bound: a setup error leaves every app alone.
    let mut rollouts_by_app = Vec::new();
    for app in &config.apps {
        let rollout = Rollout::builder(app.strategy.clone(), backends.clone(), Arc::clone(&store))
            .options(app.options.clone())
            .build()
            .map_err(|source| DaemonError::Rollout {
                app: app.name.to_string(),
                source,
            })?;
        rollouts_by_app.push((app.name.clone(), rollout));
    }
    let rollouts = RolloutClient::with_options(Arc::clone(&store), control.clone());

    // Flags, in the store, followed across processes.
    let records: Arc<DynRecordStore> = store.clone();
    let flags = Arc::new(
        FeatureFlagManager::open(
            records.clone(),
            ManagerOptions {
                clock: Arc::clone(&clock),
                ..ManagerOptions::default()
            },
        )
        .await
        .map_err(DaemonError::Flags)?,
    );
    seed_flags(&flags, &config, demo.is_some()).await?;
    let flag_sync = flags.spawn_sync().await.map_err(DaemonError::Flags)?;

    // Alerting and incidents.
    let mut receivers: HashMap<String, Arc<DynNotifier>> = HashMap::new();
    for receiver in &config.alerts.receivers {
        let notifier = receiver.notifier().map_err(|(setting, error)| {
            DaemonError::Alerts(format!("receiver {:?} ({setting}): {error}", receiver.name))
        })?;
        receivers.insert(receiver.name.clone(), notifier);
    }
    let incident_notifier: Arc<DynNotifier> = Arc::new(LogNotifier {
        name: "incidents".into(),
    });
    let incidents = Arc::new(
        IncidentManager::new(
            records.clone(),
            incident_notifier,
            IncidentOptions {
                clock: Arc::clone(&clock),
                ..IncidentOptions::default()
            },
        )
        .map_err(|error| DaemonError::Alerts(error.to_string()))?,
    );
    let route = Route::compile(&config.alerts.route, &config.alerts.receiver_names())
        .map_err(|error| DaemonError::Alerts(error.to_string()))?;
    let dispatcher = Arc::new(tokio::sync::Mutex::new(Dispatcher::new(
        route,
        receivers,
        Arc::clone(&clock),
    )));
    let alerting = Alerting::new(
        Arc::clone(&metrics),
        &config.alerts.rules,
        Arc::clone(&dispatcher),
        Arc::clone(&incidents),
    )
    .map_err(|error| DaemonError::Alerts(error.to_string()))?;
    let alerting = tokio::spawn(alerting.run(config.alerts.interval, stopped.clone()));

    // The server.
    let mut builder = deploy_server::ServerBuilder::new(Arc::clone(&store))
        .clock(Arc::clone(&clock))
        .rollouts(rollouts.clone())
        .flags(Arc::clone(&flags))
        .incidents(Arc::clone(&incidents))
        .dispatcher(Arc::clone(&dispatcher))
        .allow_anonymous_reads(config.allow_anonymous_reads)
        .secure_cookies(config.tls.is_some());
    let token = match &config.bootstrap {
        Some((name, secret)) => {
            builder = builder.bootstrap_token(name.clone(), secret.expose().clone());
            demo.as_ref().map(|demo| demo.token.clone())
        }
        None => {
            let generated = crate::token::generate();
            builder = builder.bootstrap_token(config.bootstrap_name.clone(), generated.clone());
            Some(generated)
        }
    };
    let router = builder
        .build()
        .map_err(|error| DaemonError::Server(error.to_string()))?;

    #[cfg(feature = "tls")]
    let tls = match &config.tls {
        Some((cert, key)) => Some(
            deploy_server::TlsConfig::from_pem_files(cert, key)
                .map_err(|error| DaemonError::Server(error.to_string()))?,
        ),
        None => None,
    };

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| DaemonError::Bind {
            addr: config.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| DaemonError::Bind {
        addr: config.listen,
        source,
    })?;
    // One deployer per app.
    let mut deployers = Vec::new();
    for (app, rollout) in rollouts_by_app {
        let mut stopped = stopped.clone();
        let deployer = Deployer::new(app.clone(), rollout, control.clone());
        let task = tokio::spawn(deployer.run(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }));
        deployers.push((app, task));
    }
    announce(local, &config, token.as_deref(), demo.is_some());

    let demo_drivers: Vec<JoinHandle<()>> = match &demo {
        Some(mode) => config
            .apps
            .iter()
            .map(|app| {
                tokio::spawn(crate::demo::drive(
                    rollouts.clone(),
                    fleet.clone(),
                    app.name.clone(),
                    app.version.clone(),
                    mode.interval,
                    stopped.clone(),
                ))
            })
            .collect(),
        None => Vec::new(),
    };

    let server = {
        let mut stopped = stopped.clone();
        let stopping = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        #[cfg(feature = "tls")]
        match tls {
            Some(tls) => tokio::spawn(deploy_server::serve_tls(listener, router, tls, stopping)),
            None => tokio::spawn(deploy_server::serve(listener, router, stopping)),
        }
        #[cfg(not(feature = "tls"))]
        tokio::spawn(deploy_server::serve(listener, router, stopping))
    };

    shutdown.await;
    eprintln!("deploykitd: shutting down");
    let _ = stop.send(true);
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    for (app, task) in deployers {
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => eprintln!("deploykitd: deployer of {app} ended with: {error}"),
            Ok(Err(error)) => eprintln!("deploykitd: deployer of {app} failed: {error}"),
            Err(_) => eprintln!("deploykitd: deployer of {app} did not stop within {SHUTDOWN_GRACE:?}"),
        }
    }
    // Open event streams never end by themselves: give connections a bounded time.
    match tokio::time::timeout_at(deadline, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => eprintln!("deploykitd: serving ended with: {error}"),
        Ok(Err(error)) => eprintln!("deploykitd: the server task failed: {error}"),
        Err(_) => eprintln!("deploykitd: closing connections still open after {SHUTDOWN_GRACE:?}"),
    }
    for driver in demo_drivers {
        driver.abort();
    }
    alerting.abort();
    flag_sync.abort();
    drop(traffic);
    Ok(())
}

/// Prints where the daemon serves, and what to try.
fn announce(local: SocketAddr, config: &DaemonConfig, token: Option<&str>, demo: bool) {
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{local}");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "deploykitd: serving {url}");
    let _ = writeln!(out, "deploykitd: dashboard {url}/ui (sign in with a token)");
    let apps: Vec<String> = config.apps.iter().map(|app| app.name.to_string()).collect();
    let _ = writeln!(out, "deploykitd: apps: {}", apps.join(", "));
    if let Some(token) = token {
        let kind = if demo {
            "demo admin token"
        } else {
            "generated bootstrap admin token (not stored; shown once)"
        };
        let _ = writeln!(out, "deploykitd: {kind} ({}): {token}", config.bootstrap_name);
        let _ = writeln!(out, "Try, in another terminal:");
        let _ = writeln!(out, "  export DEPLOYCTL_SERVER={url}");
        let _ = writeln!(out, "  export DEPLOYCTL_TOKEN={token}");
        let _ = writeln!(out, "  deployctl rollouts list");
        if let Some(first) = apps.first() {
            let _ = writeln!(out, "  deployctl rollouts watch {first}");
        }
    }
    let _ = out.flush();
}
