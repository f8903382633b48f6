//! What a dashboard charts: a canary's analyses on the simulated fleet keep the series they
//! read (canary and baseline, downsampled) with the threshold or the judge's shift, and the
//! published status carries them to other processes. Paused clock.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{REPLICAS, v, world};
use deploy_core::{AnalysisOutcome, DynStore, MetricName, TokioClock};
use deploy_strategies::control::{ControlOptions, Deployer, Intent, PublishedStatus, RolloutClient};
use deploy_strategies::{
    AnalysisMetric, AnalysisSpec, CanarySpec, CanaryStep, Judge, MAX_SERIES_POINTS, Pause, Strategy,
};
use tokio::sync::oneshot;

/// Long enough for the rollout here; a test that waits longer has failed.
const PATIENCE: Duration = Duration::from_secs(6 * 3600);

/// Error rate at most 5% (a threshold) and the median latency judged against stable, over a
/// two-minute window (120 one-second samples: more than a chart keeps).
fn charted_analysis() -> AnalysisSpec {
    let window = Duration::from_secs(120);
    AnalysisSpec::new(
        vec![
            AnalysisMetric::max_mean("error-rate", MetricName::error_rate(), window, 0.05),
            AnalysisMetric::judged("p50", MetricName::latency_p50_ms(), window, Judge::increase(5.0)),
        ],
        Duration::from_secs(60),
        2,
    )
}

fn canary() -> Strategy {
    let steps = [25.0, 100.0]
        .into_iter()
        .map(|p| CanaryStep::percent(p, Pause::For(Duration::from_secs(120))).unwrap())
        .collect();
    Strategy::Canary(CanarySpec {
        steps,
        analysis: Some(charted_analysis()),
        background: None,
        baseline: false,
        sticky: false,
    })
}

#[tokio::test(start_paused = true)]
async fn a_canary_publishes_its_analysis_series_for_charts() {
    let world = world(REPLICAS).await;
    let options = ControlOptions {
        clock: TokioClock::new().shared(),
        ..ControlOptions::default()
    };
    let store: Arc<DynStore> = world.store.clone();
    let client = RolloutClient::with_options(store, options.clone());
    let rollout = world.rollout_as(canary(), "deployer-a");
    let (stop, stopped) = oneshot::channel::<()>();
    let deployer = tokio::spawn(Deployer::new(world.app.clone(), rollout, options).run(async {
        let _ = stopped.await;
    }));
    client
        .request(&world.app, Intent::Start { version: v("2.0") }, "alice")
        .await
        .unwrap();

    // The first step's analysis, judged against stable while both take traffic.
    let status = wait_status(&client, &world, |s| s.last_analysis.is_some()).await;
    let record = status.last_analysis.expect("an analysis");
    let result = &record.result;
    assert_eq!(
        result.outcome,
        AnalysisOutcome::Successful,
        "{}",
        result.summary()
    );

    let errors = &result.metrics[0];
    assert_eq!(
        (errors.name.as_str(), errors.measurements.len()),
        ("error-rate", 2)
    );
    for measurement in &errors.measurements {
        let series = measurement
            .series
            .as_ref()
            .expect("a threshold keeps the canary's series");
        assert!(!series.canary.is_empty(), "{measurement:?}");
        assert!(series.canary.len() <= MAX_SERIES_POINTS);
        assert!(series.canary.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
        assert!(series.baseline.is_empty());
        assert_eq!(
            (series.min, series.max, series.comparison),
            (None, Some(0.05), None)
        );
    }

    let p50 = &result.metrics[1];
    assert_eq!((p50.name.as_str(), p50.measurements.len()), ("p50", 2));
    for measurement in &p50.measurements {
        let series = measurement.series.as_ref().expect("a judge keeps both series");
        assert!(
            !series.canary.is_empty() && !series.baseline.is_empty(),
            "{measurement:?}"
        );
        assert!(series.canary.len() <= MAX_SERIES_POINTS);
        assert!(series.baseline.len() <= MAX_SERIES_POINTS);
        let shift = series.comparison.expect("a bounded shift estimate");
        assert!(shift.low <= shift.shift && shift.shift <= shift.high, "{shift:?}");
        assert_eq!(shift.tolerance, 5.0);
    }

    // The status as another process reads it: JSON, with the series in place.
    let json = serde_json::to_value(client.status(&world.app).await.unwrap().unwrap()).unwrap();
    let points = &json["last_analysis"]["result"]["metrics"][1]["measurements"][0]["series"]["baseline"];
    assert!(
        points[0]["at_ms"].as_i64().is_some() && points[0]["value"].as_f64().is_some(),
        "{json}"
    );

    let _ = stop.send(());
    deployer.await.unwrap().unwrap();
}

/// Waits (polling the store, as another process would) until the status satisfies `condition`.
async fn wait_status(
    client: &RolloutClient,
    world: &common::World,
    condition: impl Fn(&PublishedStatus) -> bool,
) -> PublishedStatus {
    let wait = async {
        loop {
            if let Some(status) = client.status(&world.app).await.unwrap()
                && condition(&status)
            {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .expect("the status never got there")
}
