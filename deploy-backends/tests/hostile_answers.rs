//! Hostile HTTP answers, from local stand-ins on 127.0.0.1 only.
//!
//! - Security review M6: Prometheus answers whose sample timestamps or values cannot be a
//!   time or a number get a typed error naming the field, never a panic in the rollout
//!   runner.
//! - Security review m4: bodies larger than the cap (64 KiB for health checks and
//!   notifiers, configurable for Prometheus) are read no further and give a typed outcome;
//!   redirects are not followed, so a 302 cannot pass a health check and a 307 / 308 cannot
//!   re-send a notification (PagerDuty's routing key, a webhook's signature) elsewhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use deploy_backends::{HttpHealthChecker, PagerDutyNotifier, PrometheusMetrics, WebhookNotifier};
use deploy_core::{
    AppId, BackendError, HealthChecker, HealthStatus, IdempotencyKey, Instance, InstanceId, InstanceState,
    MetricName, MetricQuery, MetricTarget, MetricsSource, Notification, Notifier, Pool, Severity, Version,
};

/// A fake Prometheus answering every query with `body`.
async fn fake(body: String) -> String {
    let router = Router::new().fallback(get(move || async move { (StatusCode::OK, body) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

fn error_rate() -> MetricQuery {
    let target = MetricTarget::Pool {
        app: AppId::new("shop").unwrap(),
        pool: Pool::new("blue").unwrap(),
    };
    MetricQuery::new(MetricName::error_rate(), target, Duration::from_secs(30)).unwrap()
}

fn matrix(points: &str) -> String {
    format!(
        r#"{{"status":"success","data":{{"resultType":"matrix","result":[{{"metric":{{}},"values":[{points}]}}]}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_sample_timestamps_are_typed_errors_naming_the_field() {
    for timestamp in [
        "1e19",
        "1e20",
        "9.3e18",
        "1.7976931348623157e308",
        "-1",
        "-1e300",
        "1e17",
    ] {
        let url = fake(matrix(&format!(r#"[1700000000,"1"],[{timestamp},"1"]"#))).await;
        let source = PrometheusMetrics::new(url).unwrap().for_demo_service();
        // On the code before the fix this panicked inside `query` (`from_secs_f64` or
        // `SystemTime + Duration`), taking the rollout runner with it.
        let answer = tokio::spawn(async move { source.query(&error_rate()).await })
            .await
            .unwrap_or_else(|panic| panic!("timestamp {timestamp} panicked: {panic}"));
        let err = answer.expect_err(timestamp);
        assert!(
            matches!(&err, BackendError::Unavailable { message, .. }
                if message.contains("sample timestamp") && message.contains("result[0].values[1]")),
            "{timestamp}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_values_that_are_not_numbers_are_typed_errors_and_nan_is_no_data() {
    let url = fake(matrix(r#"[1700000000,"1"],[1700000001,"lots"]"#)).await;
    let source = PrometheusMetrics::new(url).unwrap().for_demo_service();
    let err = source.query(&error_rate()).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Unavailable { message, .. }
            if message.contains("sample value") && message.contains("result[0].values[1]")),
        "{err}"
    );

    // NaN and infinities are how Prometheus says "no traffic": those points are left out.
    let url = fake(matrix(
        r#"[1700000000,"0.5"],[1700000001,"NaN"],[1700000002,"+Inf"],[1700000003,"1e400"]"#,
    ))
    .await;
    let source = PrometheusMetrics::new(url).unwrap().for_demo_service();
    let series = source.query(&error_rate()).await.unwrap();
    assert_eq!(series.len(), 1);
}

/// Serves `router` on 127.0.0.1; its base URL.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

/// At most 1 GiB streamed to whoever asks (any method, any path): `head`, then spaces, in
/// 64 KiB chunks, counting what the stream produced.
async fn endless(head: &'static str) -> (String, Arc<AtomicU64>) {
    const CHUNK: usize = 64 * 1024;
    const TOTAL: u64 = 1 << 30;
    let produced = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&produced);
    let router = Router::new().fallback(move || {
        let counter = Arc::clone(&counter);
        async move {
            let chunks = futures::stream::unfold(0u64, move |sent| {
                let counter = Arc::clone(&counter);
                async move {
                    if sent >= TOTAL {
                        return None;
                    }
                    let chunk = if sent == 0 {
                        Bytes::from_static(head.as_bytes())
                    } else {
                        Bytes::from(vec![b' '; CHUNK])
                    };
                    let length = chunk.len() as u64;
                    counter.fetch_add(length, Ordering::Relaxed);
                    Some((Ok::<_, std::io::Error>(chunk), sent + length))
                }
            });
            (StatusCode::OK, Body::from_stream(chunks))
        }
    });
    (serve(router).await, produced)
}

/// A server that answers every request with `status` and `Location: target`.
async fn redirecting(status: StatusCode, target: String) -> String {
    serve(Router::new().fallback(move || async move { (status, [(header::LOCATION, target)]) })).await
}

/// A server that answers 200 "ok" to everything (for a health check, a webhook and
/// PagerDuty alike) and counts the requests that reached it.
async fn counting_target() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let router = Router::new().fallback(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            (
                StatusCode::ACCEPTED,
                r#"{"status":"success","message":"ok","dedup_key":"k"}"#,
            )
                .into_response()
        }
    });
    (serve(router).await, hits)
}

fn instance_at(address: &str) -> Instance {
    Instance {
        id: InstanceId::new("probe-target").unwrap(),
        app: AppId::new("shop").unwrap(),
        pool: Pool::new("stable").unwrap(),
        version: Version::new("1.0").unwrap(),
        state: InstanceState::Running,
        address: Some(address.to_owned()),
    }
}

fn trigger() -> Notification {
    Notification::trigger(
        IdempotencyKey::new("alert/shop/HighErrorRate").unwrap(),
        Severity::Critical,
        "shop error rate 30%",
    )
}

/// Far less than the 1 GiB on offer: the cap plus what sockets and buffers hold.
const READ_AT_MOST: u64 = 64 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_larger_than_the_cap_are_read_no_further_and_typed() {
    // Health check expecting "ok": the body starts with it, but is endless.
    let (url, produced) = endless("ok").await;
    let checker = HttpHealthChecker::builder()
        .expect_body("ok")
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let status = checker
        .check(&instance_at(url.trim_start_matches("http://")))
        .await
        .unwrap();
    assert_eq!(status, HealthStatus::unhealthy("body larger than 65536 bytes"));
    assert!(produced.load(Ordering::Relaxed) < READ_AT_MOST);

    // Prometheus: a valid start, then whitespace past the configured cap.
    let (url, produced) = endless(r#"{"status":"success","data":{"resultType":"matrix","result":["#).await;
    let source = PrometheusMetrics::new(url)
        .unwrap()
        .for_demo_service()
        .max_body_bytes(1 << 20);
    let err = source.query(&error_rate()).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Unavailable { message, .. }
            if message.contains("larger than 1048576 bytes")),
        "{err}"
    );
    assert!(produced.load(Ordering::Relaxed) < READ_AT_MOST);

    // The default cap (16 MiB) holds too.
    let (url, produced) = endless(r#"{"status":"success","data":{"resultType":"matrix","result":["#).await;
    let source = PrometheusMetrics::new(url).unwrap().for_demo_service();
    let err = source.query(&error_rate()).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Unavailable { message, .. }
            if message.contains("larger than 16777216 bytes")),
        "{err}"
    );
    assert!(produced.load(Ordering::Relaxed) < READ_AT_MOST);

    // A webhook receiver that accepts, then streams: a final, typed refusal.
    let (url, produced) = endless("{}").await;
    let webhook = WebhookNotifier::new(format!("{url}/hook"), b"secret".to_vec()).unwrap();
    let err = webhook.notify(&trigger()).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Rejected { reason, .. } if reason.contains("larger than 65536 bytes")),
        "{err}"
    );
    assert!(!err.is_retryable());
    assert!(produced.load(Ordering::Relaxed) < READ_AT_MOST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed_by_health_checks_notifiers_or_prometheus() {
    // A 302 to a healthy host does not pass a health check, and is not followed.
    let (target, hits) = counting_target().await;
    let redirect = redirecting(StatusCode::FOUND, format!("{target}/health")).await;
    let checker = HttpHealthChecker::builder().expect_status(202).build().unwrap();
    let status = checker
        .check(&instance_at(redirect.trim_start_matches("http://")))
        .await
        .unwrap();
    assert_eq!(status, HealthStatus::unhealthy("HTTP 302 (expected 202)"));
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    // (The target itself is healthy: the checker reaches it directly.)
    let direct = checker
        .check(&instance_at(target.trim_start_matches("http://")))
        .await
        .unwrap();
    assert_eq!(direct, HealthStatus::Healthy);
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // A 307 from PagerDuty's endpoint: the event (and its routing key) is not re-sent.
    let (target, hits) = counting_target().await;
    let redirect = redirecting(StatusCode::TEMPORARY_REDIRECT, format!("{target}/v2/enqueue")).await;
    let pagerduty = PagerDutyNotifier::new("0123456789abcdef0123456789abcdef", "deployer-1")
        .unwrap()
        .endpoint(format!("{redirect}/v2/enqueue"));
    let err = pagerduty.notify(&trigger()).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Rejected { reason, .. } if reason.contains("HTTP 307")),
        "{err}"
    );
    assert!(!err.is_retryable());
    assert_eq!(hits.load(Ordering::SeqCst), 0);

    // A 308 from a webhook: the signed body is not re-sent.
    let redirect = redirecting(StatusCode::PERMANENT_REDIRECT, format!("{target}/hook")).await;
    let webhook = WebhookNotifier::new(format!("{redirect}/hook"), b"secret".to_vec()).unwrap();
    let err = webhook.notify(&trigger()).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Rejected { reason, .. } if reason.contains("HTTP 308")),
        "{err}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0);

    // Prometheus: a 302 is an invalid answer, not followed.
    let redirect = redirecting(StatusCode::FOUND, format!("{target}/api/v1/query_range")).await;
    let source = PrometheusMetrics::new(redirect).unwrap().for_demo_service();
    let err = source.query(&error_rate()).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Unavailable { message, .. } if message.contains("invalid response")),
        "{err}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}
