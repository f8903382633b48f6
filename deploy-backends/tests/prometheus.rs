//! `PrometheusMetrics` against a real Prometheus scraping demo-service processes, and
//! against endpoints that answer garbage, errors or nothing.

mod common;

use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use common::{Artifacts, app, pool, version};
use deploy_backends::{ProcessInfra, PrometheusMetrics, QueryTemplate};
use deploy_core::{
    BackendError, InfraManager, MetricName, MetricQuery, MetricTarget, MetricsSource, conformance,
};
use deploy_lab::demo::LoadGenerator;
use deploy_lab::launch::Prometheus;

fn query(metric: MetricName, pool_name: &str) -> MetricQuery {
    let target = MetricTarget::Pool {
        app: app(),
        pool: pool(pool_name),
    };
    MetricQuery::new(metric, target, Duration::from_secs(30))
        .unwrap()
        .with_step(Duration::from_secs(1))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_passes_the_metrics_source_suite_scraping_the_demo_service() {
    let prometheus = launch_or_skip!(Prometheus::start().await);
    let artifacts = Artifacts::new(&[("1.0", 0.1)]);
    let infra = ProcessInfra::new(artifacts.spec().prometheus_targets(prometheus.targets_file())).unwrap();
    let blue = infra
        .provision(&app(), &pool("blue"), &version("1.0"), 1)
        .await
        .unwrap();
    let load = LoadGenerator::new(format!("http://{}/", blue[0].address.as_ref().unwrap()))
        .concurrency(1)
        .max_duration(Duration::from_secs(120))
        .start()
        .unwrap();
    let metrics = PrometheusMetrics::new(prometheus.url())
        .unwrap()
        .for_demo_service()
        .min_interval(Duration::from_secs(3));
    // Discovery (at most every 5 s) and two scrapes before rates exist.
    let started = Instant::now();
    loop {
        let mut ready = true;
        for metric in [MetricName::error_rate(), MetricName::latency_p99_ms()] {
            ready &= !metrics.query(&query(metric, "blue")).await.unwrap().is_empty();
        }
        if ready {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "no data from Prometheus"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    conformance::metrics_source(
        &metrics,
        &query(MetricName::error_rate(), "blue"),
        &query(MetricName::error_rate(), "green"),
    )
    .await;

    // The demo fails exactly 10% of its requests; Prometheus sees it.
    let errors = metrics
        .query(&query(MetricName::error_rate(), "blue"))
        .await
        .unwrap();
    let mean = errors.mean().unwrap();
    assert!((0.07..=0.13).contains(&mean), "error rate {mean}");
    // A version target selects on the version label.
    let by_version = MetricQuery::new(
        MetricName::requests(),
        MetricTarget::Version {
            app: app(),
            version: version("1.0"),
        },
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(
        metrics
            .query(&by_version)
            .await
            .unwrap()
            .values()
            .any(|v| v > 0.0)
    );
    // A template that does not aggregate is refused rather than summed behind the caller's back.
    let loose = metrics.clone().template(
        MetricName::new("per_code").unwrap(),
        QueryTemplate::new("rate(demo_requests_total{$selector}[$interval])").unwrap(),
    );
    let per_code = query(MetricName::new("per_code").unwrap(), "blue");
    assert!(matches!(
        loose.query(&per_code).await,
        Err(BackendError::Rejected { .. })
    ));
    let report = load.stop().await;
    assert!(report.sent > 0);
}

/// A fake Prometheus answering every query the same way.
async fn fake(status: StatusCode, body: &'static str, delay: Duration) -> String {
    let router = Router::new().fallback(get(move || async move {
        tokio::time::sleep(delay).await;
        (status, body)
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_errors_and_silence_get_typed_errors_within_the_timeout() {
    let error_rate = query(MetricName::error_rate(), "blue");
    let source = |url: String| {
        PrometheusMetrics::new(url)
            .unwrap()
            .for_demo_service()
            .timeout(Duration::from_millis(300))
    };
    let html = source(fake(StatusCode::OK, "<html>not prometheus</html>", Duration::ZERO).await);
    let err = html.query(&error_rate).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Unavailable { message, .. } if message.contains("invalid response")),
        "{err}"
    );

    let bad_query = source(
        fake(
            StatusCode::BAD_REQUEST,
            r#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#,
            Duration::ZERO,
        )
        .await,
    );
    let err = bad_query.query(&error_rate).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Rejected { reason, .. } if reason.contains("bad_data")),
        "{err}"
    );
    assert!(!err.is_retryable());

    let down = source(fake(StatusCode::SERVICE_UNAVAILABLE, "overloaded", Duration::ZERO).await);
    assert!(down.query(&error_rate).await.unwrap_err().is_retryable());

    let hung = source(fake(StatusCode::OK, "{}", Duration::from_secs(30)).await);
    let started = Instant::now();
    let err = hung.query(&error_rate).await.unwrap_err();
    assert!(matches!(err, BackendError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));

    let wrong_shape = source(
        fake(
            StatusCode::OK,
            r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
            Duration::ZERO,
        )
        .await,
    );
    assert!(matches!(
        wrong_shape.query(&error_rate).await,
        Err(BackendError::Unavailable { .. })
    ));

    let unknown = query(MetricName::new("no_such_metric").unwrap(), "blue");
    assert!(matches!(
        html.query(&unknown).await,
        Err(BackendError::NotFound { kind: "metric", .. })
    ));
    assert!(PrometheusMetrics::new("localhost:9090").is_err());
}
