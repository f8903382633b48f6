//! `deploykitd --demo`: a configuration that needs nothing but the binary, and a driver that
//! keeps rolling out new versions of the demo apps (every third one bad, so rollbacks
//! happen) so there is always something to watch.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use deploy_config::Secret;
use deploy_core::{AppId, MetricName, MetricQuery, MetricTarget, Pool, Version};
use deploy_incidents::{AlertRule, Comparison, RouteConfig};
use deploy_strategies::control::{Intent, IntentState, RolloutClient};
use deploy_strategies::{AnalysisMetric, AnalysisSpec, BlueGreenSpec, CanarySpec, RolloutOptions, Strategy};
use deploy_testkit::{SimFleet, VersionProfile};
use tokio::sync::watch;

use crate::config::{
    AlertsConfig, AppConfig, DaemonConfig, MetricsConfig, ReceiverConfig, ReceiverKind, StoreConfig,
};

/// The name of the demo's admin token.
pub(crate) const DEMO_TOKEN_NAME: &str = "demo-admin";

/// Error rate of the demo's bad builds.
const BAD_ERROR_RATE: f64 = 0.25;

/// The demo configuration: SQLite in `dir`, a canary app (`web`) and a blue-green app
/// (`api`) on the simulated fleet, an alert on the canary's error rate, and a fresh admin
/// token.
pub(crate) fn config(dir: &Path, listen: SocketAddr, token: String) -> DaemonConfig {
    let analysis = |window: u64| {
        AnalysisSpec::new(
            vec![AnalysisMetric::max_mean(
                "error_rate",
                MetricName::error_rate(),
                Duration::from_secs(window),
                0.05,
            )],
            Duration::from_secs(3),
            1,
        )
    };
    let options = |replicas: usize| RolloutOptions {
        replicas: Some(replicas),
        drain: Duration::from_millis(500),
        health_timeout: Duration::from_secs(30),
        poll_interval: Duration::from_millis(200),
        lease_ttl: Duration::from_secs(10),
        ..RolloutOptions::default()
    };
    let web = AppConfig {
        name: app("web"),
        version: version("1.0.0"),
        replicas: 4,
        traffic: 200,
        strategy: Strategy::Canary(CanarySpec {
            analysis: Some(analysis(3)),
            ..CanarySpec::standard(Duration::from_secs(3), None)
        }),
        options: options(4),
        profiles: Vec::new(),
    };
    // The standard schedule's steps were built without analysis; ask for it at each.
    let web = AppConfig {
        strategy: match web.strategy {
            Strategy::Canary(mut spec) => {
                spec.steps.retain(|step| step.weight.basis_points() >= 500);
                for step in &mut spec.steps {
                    step.analyze = true;
                }
                Strategy::Canary(spec)
            }
            other => other,
        },
        ..web
    };
    let api = AppConfig {
        name: app("api"),
        version: version("2.0.0"),
        replicas: 3,
        traffic: 100,
        strategy: Strategy::BlueGreen(BlueGreenSpec {
            // The idle pool has no traffic before the switch: analyse after it.
            pre_promotion: None,
            post_promotion: Some(analysis(3)),
            manual_promotion: false,
            scale_down_delay: Duration::from_secs(10),
        }),
        options: options(3),
        profiles: Vec::new(),
    };
    // A canary runs in a pool named after its revision, so pool rules watch api's blue and
    // green pools: a bad release serves all of api's traffic between the switch and the
    // analysis that switches back.
    let pool_errors = |pool: Pool| AlertRule {
        name: "ApiErrorRate".into(),
        query: MetricQuery::new(
            MetricName::error_rate(),
            MetricTarget::Pool {
                app: app("api"),
                pool: pool.clone(),
            },
            Duration::from_secs(3),
        )
        .unwrap_or_else(|_| unreachable!("a 3 s window is valid")),
        comparison: Comparison::Above,
        threshold: 0.1,
        for_duration: Duration::from_secs(1),
        keep_firing_for: Duration::from_secs(5),
        labels: [("severity", "critical"), ("app", "api"), ("pool", pool.as_str())]
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect(),
        annotations: [(
            "summary".to_owned(),
            format!("api's {pool} pool fails more than 10% of requests"),
        )]
        .into_iter()
        .collect(),
    };
    DaemonConfig {
        listen,
        allow_anonymous_reads: false,
        store: StoreConfig::Sqlite(dir.join("deploykit.db")),
        bootstrap: Some((DEMO_TOKEN_NAME.to_owned(), Secret::new(token))),
        bootstrap_name: DEMO_TOKEN_NAME.to_owned(),
        seed: 17,
        metrics: MetricsConfig::Simulated,
        real: None,
        history_limit: 10,
        events_per_revision: 1000,
        apps: vec![web, api],
        flags_file: None,
        alerts: AlertsConfig {
            interval: Duration::from_secs(1),
            rules: vec![pool_errors(Pool::blue()), pool_errors(Pool::green())],
            route: RouteConfig {
                receiver: Some("log".into()),
                group_by: Some(vec!["alertname".into(), "app".into()]),
                group_wait: Some(Duration::from_secs(1)),
                group_interval: Some(Duration::from_secs(10)),
                repeat_interval: Some(Duration::from_secs(600)),
                ..RouteConfig::default()
            },
            receivers: vec![ReceiverConfig {
                name: "log".into(),
                kind: ReceiverKind::Log,
            }],
        },
        tls: None,
    }
}

/// The demo's flags, created at start.
pub(crate) fn flags() -> deploy_flags::FlagSet {
    let text = include_str!("../../../examples/flags.yaml");
    deploy_flags::FileFormat::Yaml
        .parse(text, "examples/flags.yaml")
        .unwrap_or_else(|error| unreachable!("the bundled flags parse: {error}"))
}

fn app(name: &str) -> AppId {
    AppId::new(name).unwrap_or_else(|_| unreachable!("{name} is a valid app name"))
}

fn version(text: &str) -> Version {
    Version::new(text).unwrap_or_else(|_| unreachable!("{text} is a valid version"))
}

/// Whether the `n`th demo release (from 1) is a bad build.
pub(crate) fn is_bad(n: u64) -> bool {
    n.is_multiple_of(3)
}

/// The `n`th demo release of an app first serving `first` (`1.0.0` → `1.1.0`, `1.2.0`,
/// `1.3.0-bad`, ...).
pub(crate) fn release(first: &Version, n: u64) -> Version {
    let major = first.as_str().split('.').next().unwrap_or("1");
    let text = if is_bad(n) {
        format!("{major}.{n}.0-bad")
    } else {
        format!("{major}.{n}.0")
    };
    Version::new(&text).unwrap_or_else(|_| first.clone())
}

/// Rolls out a new release of `app` whenever it has been idle for `interval` (the first
/// one at once), through the same intents an operator writes, until `shutdown` is set.
/// Bad releases fail a quarter of their requests on the fleet, so their analysis fails and
/// they roll back.
pub(crate) async fn drive(
    client: RolloutClient,
    fleet: SimFleet,
    app: AppId,
    first: Version,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let poll = Duration::from_millis(500);
    let mut n = 0u64;
    // A refused release is asked for again, later and later (up to a minute).
    let mut retry: Option<Version> = None;
    let mut backoff = interval;
    loop {
        // Wait for the app to be idle: no active rollout and no pending intent.
        loop {
            let busy = match (client.status(&app).await, client.intents(&app).await) {
                (Ok(status), Ok(intents)) => {
                    status.is_some_and(|status| status.phase.is_active())
                        || intents.iter().any(|intent| intent.state.is_pending())
                }
                (Err(error), _) | (_, Err(error)) => {
                    eprintln!("deploykitd: demo: reading {app}: {error}");
                    true
                }
            };
            if !busy {
                break;
            }
            if sleep_or_stop(poll, &mut shutdown).await {
                return;
            }
        }
        let wait = if n == 0 {
            Duration::from_millis(200)
        } else {
            backoff
        };
        if sleep_or_stop(wait, &mut shutdown).await {
            return;
        }
        let next = match retry.take() {
            Some(version) => version,
            None => {
                n += 1;
                let next = release(&first, n);
                if is_bad(n)
                    && let Ok(profile) = VersionProfile::new(
                        BAD_ERROR_RATE,
                        Duration::from_millis(20),
                        Duration::from_millis(80),
                    )
                {
                    fleet.set_version_profile(&app, &next, profile);
                }
                next
            }
        };
        let refused = match client
            .request(
                &app,
                Intent::Start {
                    version: next.clone(),
                },
                "demo",
            )
            .await
        {
            Ok(record) => match decided(&client, &app, record.id, &mut shutdown).await {
                None => return,
                Some(IntentState::Refused { reason, .. }) => Some(reason),
                Some(_) => None,
            },
            Err(error) => Some(error.to_string()),
        };
        match refused {
            Some(reason) => {
                backoff = (backoff * 2).min(Duration::from_secs(60));
                eprintln!(
                    "deploykitd: demo: starting {app} {next} was refused ({reason}); again in {backoff:?}"
                );
                retry = Some(next);
            }
            None => backoff = interval,
        }
    }
}

/// The state of intent `id` once a deployer has decided it; `None` at shutdown.
async fn decided(
    client: &RolloutClient,
    app: &AppId,
    id: u64,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<IntentState> {
    loop {
        if let Ok(intents) = client.intents(app).await
            && let Some(intent) = intents.into_iter().find(|intent| intent.id == id)
            && !intent.state.is_pending()
        {
            return Some(intent.state);
        }
        if sleep_or_stop(Duration::from_millis(250), shutdown).await {
            return None;
        }
    }
}

/// Sleeps `duration`; true when `shutdown` was set meanwhile.
async fn sleep_or_stop(duration: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => false,
        _ = async { shutdown.wait_for(|stop| *stop).await.is_ok() } => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_third_release_is_bad_and_says_so() {
        let first = version("1.0.0");
        let names: Vec<String> = (1..=6).map(|n| release(&first, n).to_string()).collect();
        assert_eq!(
            names,
            ["1.1.0", "1.2.0", "1.3.0-bad", "1.4.0", "1.5.0", "1.6.0-bad"]
        );
    }

    #[test]
    fn the_demo_configuration_is_valid() {
        let dir = Path::new("/tmp");
        let config = config(dir, "127.0.0.1:0".parse().expect("an address"), "dk_test".into());
        for app in &config.apps {
            app.strategy.validate().expect("a valid strategy");
            app.options.validate().expect("valid options");
        }
        assert!(
            deploy_incidents::Route::compile(&config.alerts.route, &config.alerts.receiver_names()).is_ok()
        );
        assert_eq!(flags().flags.len(), 3);
    }
}
