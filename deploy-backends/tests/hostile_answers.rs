//! Hostile HTTP answers, from local stand-ins on 127.0.0.1 only.
//!
//! - Item 8 of the hostile-inputs issue: any status, `Retry-After` and body from a stand-in,
//!   generated, into PagerDuty, Alertmanager, the webhook and Prometheus: a value or a typed
//!   error as documented, within the timeout, never a panic.
//! - Security review M6: Prometheus answers whose sample timestamps or values cannot be a
//!   time or a number get a typed error naming the field, never a panic in the rollout
//!   runner.
//! - Security review m4: bodies larger than the cap (64 KiB for health checks and
//!   notifiers, configurable for Prometheus) are read no further and give a typed outcome;
//!   redirects are not followed, so a 302 cannot pass a health check and a 307 / 308 cannot
//!   re-send a notification (PagerDuty's routing key, a webhook's signature) elsewhere.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use deploy_backends::{
    AlertmanagerNotifier, HttpHealthChecker, PagerDutyNotifier, PrometheusMetrics, WebhookNotifier,
};
use deploy_core::{
    AppId, BackendError, Delivery, HealthChecker, HealthStatus, IdempotencyKey, Instance, InstanceId,
    InstanceState, MetricName, MetricQuery, MetricTarget, MetricsSource, Notification, Notifier, Pool,
    Severity, ValidationError, Version,
};
use proptest::prelude::*;

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
        .endpoint(format!("{redirect}/v2/enqueue"))
        .unwrap();
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

/// What the generated stand-in answers next: status, `Retry-After` and body.
type Answer = (u16, Option<String>, String);

/// One stand-in for all the generated cases, on its own runtime.
struct StandIn {
    runtime: tokio::runtime::Runtime,
    url: String,
    answer: Arc<Mutex<Answer>>,
}

fn stand_in() -> &'static StandIn {
    static STAND_IN: OnceLock<StandIn> = OnceLock::new();
    STAND_IN.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let answer: Arc<Mutex<Answer>> = Arc::new(Mutex::new((200, None, String::new())));
        let current = Arc::clone(&answer);
        let router = Router::new().fallback(move || {
            let (status, retry_after, body) = current.lock().unwrap().clone();
            async move {
                let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
                if let Some(value) = retry_after {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, value.parse().unwrap());
                }
                response
            }
        });
        let url = runtime.block_on(serve(router));
        StandIn { runtime, url, answer }
    })
}

/// Sample timestamps: the hand-picked hostile ones (beyond 9999, negative, huge) and any
/// finite float.
fn timestamp() -> impl Strategy<Value = String> {
    prop_oneof![
        prop_oneof![
            Just("1e19"),
            Just("1e20"),
            Just("9.3e18"),
            Just("1.7976931348623157e308"),
            Just("-1"),
            Just("-1e300"),
            Just("1e17"),
            Just("253402300800"),
        ]
        .prop_map(str::to_owned),
        (0u64..4_000_000_000).prop_map(|t| t.to_string()),
        any::<f64>()
            .prop_filter("finite", |t| t.is_finite())
            .prop_map(|t| format!("{t:e}")),
    ]
}

fn answers() -> impl Strategy<Value = Answer> {
    let status = prop_oneof![
        Just(200u16),
        Just(202),
        Just(204),
        Just(307),
        Just(400),
        Just(408),
        Just(429),
        Just(503),
        200u16..600,
    ];
    let retry_after = proptest::option::of(prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        "[ -~]{0,30}".prop_map(|text| text.trim().to_owned()),
    ]);
    let body = prop_oneof![
        "\\PC{0,200}",
        proptest::collection::vec(timestamp(), 0..6).prop_map(|times| {
            let points: Vec<String> = times.iter().map(|t| format!(r#"[{t},"1"]"#)).collect();
            matrix(&points.join(","))
        }),
        (1usize..3).prop_map(|k| "x".repeat(k * 40_000)),
    ];
    (status, retry_after, body)
}

/// The first point of a generated matrix whose timestamp is not a time from 1970 to 9999.
fn first_bad_timestamp(body: &str) -> Option<usize> {
    let values: serde_json::Value = serde_json::from_str(body).ok()?;
    let points = values["data"]["result"][0]["values"].as_array()?;
    points.iter().position(|point| {
        point[0]
            .as_f64()
            .is_none_or(|t| !(0.0..=253_402_300_799.0).contains(&t))
    })
}

static CASE: AtomicUsize = AtomicUsize::new(0);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// PagerDuty, Alertmanager and the webhook sort any answer as documented: an accepted
    /// status with a body within 64 KiB is delivered; 408, 429 and 5xx are retryable with the
    /// `Retry-After` seconds kept; everything else is a final `Rejected`. Prometheus gives
    /// series or a typed error, naming the first out-of-range sample timestamp when there is
    /// one. All within the timeout.
    #[test]
    fn generated_answers_are_sorted_as_documented((status, retry_after, body) in answers()) {
        let stand_in = stand_in();
        *stand_in.answer.lock().unwrap() = (status, retry_after.clone(), body.clone());
        let case = CASE.fetch_add(1, Ordering::Relaxed);
        // A 204 or 304 has no body, whatever the handler returned.
        let sent = if status == 204 || status == 304 { 0 } else { body.len() };
        let url = &stand_in.url;
        let timeout = Duration::from_secs(5);
        let pagerduty = PagerDutyNotifier::new("0123456789abcdef0123456789abcdef", "deployer-1")
            .unwrap()
            .endpoint(format!("{url}/v2/enqueue"))
            .unwrap()
            .timeout(timeout);
        let alertmanager = AlertmanagerNotifier::new(url.as_str()).unwrap().timeout(timeout);
        let webhook = WebhookNotifier::new(format!("{url}/hook"), b"secret".to_vec())
            .unwrap()
            .timeout(timeout);
        let notification = Notification::trigger(
            IdempotencyKey::new(format!("alert/{case}")).unwrap(),
            Severity::Critical,
            "generated",
        );
        let notifiers: [(&dyn Notifier, &[u16]); 3] = [
            (&pagerduty, &[202]),
            (&alertmanager, &[200]),
            (&webhook, &[200, 201, 202, 204]),
        ];
        for (notifier, accepted) in notifiers {
            let outcome = stand_in
                .runtime
                .block_on(async { tokio::time::timeout(2 * timeout, notifier.notify(&notification)).await })
                .expect("an answer within the timeout");
            let expected_wait = retry_after.as_deref().and_then(|v| v.trim().parse().ok()).map(Duration::from_secs);
            match outcome {
                Ok(delivery) => {
                    prop_assert_eq!(delivery, Delivery::Delivered);
                    prop_assert!(accepted.contains(&status) && sent <= 64 * 1024);
                }
                Err(BackendError::Unavailable { retry_after, .. }) => {
                    prop_assert!(status == 408 || status == 429 || status >= 500, "{}", status);
                    prop_assert_eq!(retry_after, expected_wait);
                }
                Err(BackendError::Rejected { .. }) => prop_assert!(
                    !(status == 408 || status == 429 || status >= 500)
                        && (!accepted.contains(&status) || sent > 64 * 1024),
                    "{}", status
                ),
                Err(other) => prop_assert!(false, "status {}: {}", status, other),
            }
        }

        let prometheus = PrometheusMetrics::new(url.as_str()).unwrap().for_demo_service().timeout(timeout);
        let outcome = stand_in
            .runtime
            .block_on(async { tokio::time::timeout(2 * timeout, prometheus.query(&error_rate())).await })
            .expect("an answer within the timeout");
        match (outcome, first_bad_timestamp(&body)) {
            (Err(BackendError::Unavailable { message, .. }), Some(at)) if status == 200 => {
                prop_assert!(message.contains("sample timestamp"), "{}", message);
                let field = format!("result[0].values[{at}]");
                prop_assert!(message.contains(&field), "{}", message);
            }
            (Ok(_), bad) => prop_assert!((200..300).contains(&status) && bad.is_none(), "{}", status),
            // Out-of-order samples are refused by the core's `Series`.
            (
                Err(
                    BackendError::Unavailable { .. }
                    | BackendError::Rejected { .. }
                    | BackendError::Invalid(ValidationError::UnorderedSamples { .. }),
                ),
                _,
            ) => {}
            (Err(other), _) => prop_assert!(false, "status {}: {}", status, other),
        }
    }
}
