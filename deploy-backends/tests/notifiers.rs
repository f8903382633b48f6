//! Notifiers against receivers: a local webhook receiver that checks signatures, a local
//! stand-in for PagerDuty's Events API v2 (the real one is not reachable from here), and a
//! real Alertmanager. A notifier makes one request per call and classifies its failures;
//! the retries are core's, here through `Retrying` (the same loop and classification as
//! deploy-incidents' Dispatcher).

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use deploy_backends::{
    AlertmanagerNotifier, PagerDutyNotifier, Retrying, SIGNATURE_HEADER, WebhookNotifier,
    verify_signature_fresh,
};
use deploy_core::retry::{Backoff, Retry, RetryPolicy};
use deploy_core::{
    BackendError, Delivery, IdempotencyKey, Notification, NotificationAction, Notifier, Severity, conformance,
};
use deploy_lab::launch::Alertmanager;

const SECRET: &[u8] = b"webhook-secret";

/// Core's retry policy, quick: 4 attempts, 20 ms doubling to 100 ms, within 10 s.
fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        backoff: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
            multiplier: 2.0,
        },
        max_attempts: 4,
        deadline: Some(Duration::from_secs(10)),
    }
}

fn notification(key: &str, action: NotificationAction) -> Notification {
    Notification {
        action,
        ..Notification::trigger(
            IdempotencyKey::new(key).unwrap(),
            Severity::Critical,
            "shop error rate 30%",
        )
        .with_label("app", "shop")
        .with_label("alertname", "HighErrorRate")
    }
}

/// A receiver that answers with scripted statuses first (then 200 / 202) and records what
/// it was sent.
#[derive(Default)]
struct Receiver {
    script: Mutex<VecDeque<(StatusCode, Option<u64>)>>,
    received: Mutex<Vec<(HeaderMap, Bytes)>>,
}

impl Receiver {
    fn scripted(statuses: &[(u16, Option<u64>)]) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(
                statuses
                    .iter()
                    .map(|(s, after)| (StatusCode::from_u16(*s).unwrap(), *after))
                    .collect(),
            ),
            received: Mutex::default(),
        })
    }

    fn next(&self, headers: HeaderMap, body: Bytes) -> Option<Response> {
        self.received.lock().unwrap().push((headers, body));
        let (status, retry_after) = self.script.lock().unwrap().pop_front()?;
        let mut response = (status, "scripted").into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", seconds.to_string().parse().unwrap());
        }
        Some(response)
    }

    fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

async fn webhook_receiver(receiver: Arc<Receiver>) -> String {
    async fn receive(State(receiver): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> Response {
        let signature = headers
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let valid = verify_signature_fresh(
            SECRET,
            &body,
            &signature,
            SystemTime::now(),
            Duration::from_secs(300),
        );
        if let Some(scripted) = receiver.next(headers, body) {
            return scripted;
        }
        if valid {
            StatusCode::OK.into_response()
        } else {
            (StatusCode::UNAUTHORIZED, "bad signature").into_response()
        }
    }
    serve(Router::new().route("/hook", post(receive)).with_state(receiver)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_sent_once_per_call_and_retried_by_the_caller() {
    let receiver = Receiver::scripted(&[(503, None), (500, None)]);
    let url = format!("{}/hook", webhook_receiver(Arc::clone(&receiver)).await);
    let notifier = Arc::new(WebhookNotifier::new(&url, SECRET.to_vec()).unwrap());
    // Core's retry around the notifier: two scripted failures, then the trigger; the
    // re-sent trigger is a duplicate; then the repeat and the resolve.
    let retrying = Retrying::new(Arc::clone(&notifier), quick_retries());
    conformance::notifier(&retrying, "webhook-").await;
    assert_eq!(receiver.count(), 5);
    let received = receiver.received.lock().unwrap().clone();
    let (headers, body) = &received[2];
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(
        (json["key"].as_str(), json["action"].as_str()),
        (Some("webhook-conformance"), Some("trigger"))
    );
    assert_eq!(headers["idempotency-key"], "webhook-conformance/trigger/0");
    assert!(verify_signature_fresh(
        SECRET,
        body,
        headers[SIGNATURE_HEADER].to_str().unwrap(),
        SystemTime::now(),
        Duration::from_secs(300),
    ));

    // The notifier itself makes one request per call: a 503 comes back retryable.
    receiver
        .script
        .lock()
        .unwrap()
        .push_back((StatusCode::SERVICE_UNAVAILABLE, None));
    let before = receiver.count();
    let err = notifier
        .notify(&notification("once", NotificationAction::Trigger))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Unavailable { message, retry_after: None, .. } if message.contains("503")),
        "{err}"
    );
    assert_eq!(Retry::from(&err), Retry::Yes);
    assert_eq!(receiver.count(), before + 1);

    // The wrong secret: the receiver says 401, which is final: not retried even by a
    // retrying caller.
    let before = receiver.count();
    let forged = Retrying::new(
        WebhookNotifier::new(&url, b"guess".to_vec()).unwrap(),
        quick_retries(),
    );
    let err = forged
        .notify(&notification("forged", NotificationAction::Trigger))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Rejected { reason, .. } if reason.contains("401")),
        "{err}"
    );
    assert_eq!(Retry::from(&err), Retry::No);
    assert_eq!(receiver.count(), before + 1);

    // A receiver that never answers: one request, a retryable timeout.
    let silent = serve(Router::new().route(
        "/hook",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            StatusCode::OK
        }),
    ))
    .await;
    let hanging = WebhookNotifier::new(format!("{silent}/hook"), SECRET.to_vec())
        .unwrap()
        .timeout(Duration::from_millis(200));
    let started = Instant::now();
    let err = hanging
        .notify(&notification("hang", NotificationAction::Trigger))
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Timeout { .. }), "{err}");
    assert_eq!(Retry::from(&err), Retry::Yes);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

/// Security review m11: the dedup was check, send, insert, so two concurrent sends of one
/// key both went out. Now the key is reserved before sending (one delivery at the
/// receiver), and released when the delivery fails, so a retry still sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_are_delivered_once_and_a_failure_releases_the_key() {
    let receiver = Receiver::scripted(&[]);
    let slow = Arc::clone(&receiver);
    let url = serve(Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| async move {
            slow.next(headers, body);
            tokio::time::sleep(Duration::from_millis(200)).await;
            StatusCode::OK
        }),
    ))
    .await;
    let notifier = WebhookNotifier::new(format!("{url}/hook"), SECRET.to_vec()).unwrap();
    let trigger = notification("alert/shop/HighErrorRate", NotificationAction::Trigger);
    let (first, second) = tokio::join!(notifier.notify(&trigger), notifier.notify(&trigger));
    let mut outcomes = [first.unwrap(), second.unwrap()];
    outcomes.sort_by_key(|delivery| *delivery == Delivery::Duplicate);
    assert_eq!(outcomes, [Delivery::Delivered, Delivery::Duplicate]);
    assert_eq!(receiver.count(), 1);

    let receiver = Receiver::scripted(&[(503, None)]);
    let url = format!("{}/hook", webhook_receiver(Arc::clone(&receiver)).await);
    let notifier = WebhookNotifier::new(&url, SECRET.to_vec()).unwrap();
    assert!(notifier.notify(&trigger).await.unwrap_err().is_retryable());
    assert_eq!(notifier.notify(&trigger).await.unwrap(), Delivery::Delivered);
    assert_eq!(notifier.notify(&trigger).await.unwrap(), Delivery::Duplicate);
    assert_eq!(receiver.count(), 2);
}

/// What the PagerDuty stand-in knows of each dedup key.
#[derive(Default)]
struct PagerDuty {
    receiver: Arc<Receiver>,
    incidents: Mutex<BTreeMap<String, String>>,
}

/// Validates like Events API v2: routing key, action, dedup key, and a payload with summary,
/// source and a known severity on triggers; 202 with the dedup key, 400 with errors.
async fn enqueue(State(pd): State<Arc<PagerDuty>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(scripted) = pd.receiver.next(headers, body.clone()) {
        return scripted;
    }
    let invalid = |why: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"status": "invalid event", "message": "Event object is invalid", "errors": [why]})),
        )
            .into_response()
    };
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return invalid("not JSON");
    };
    if event["routing_key"].as_str().is_none_or(|k| k.len() != 32) {
        return invalid("'routing_key' is invalid");
    }
    let Some(key) = event["dedup_key"]
        .as_str()
        .filter(|k| !k.is_empty() && k.len() <= 255)
    else {
        return invalid("'dedup_key' is invalid");
    };
    let action = event["event_action"].as_str().unwrap_or_default();
    let mut incidents = pd.incidents.lock().unwrap();
    match action {
        "trigger" => {
            let payload = &event["payload"];
            let severity_ok = ["critical", "error", "warning", "info"]
                .contains(&payload["severity"].as_str().unwrap_or_default());
            if payload["summary"].as_str().is_none() || payload["source"].as_str().is_none() || !severity_ok {
                return invalid("'payload' is invalid");
            }
            incidents.insert(key.to_owned(), "triggered".to_owned());
        }
        "acknowledge" | "resolve" => {
            if let Some(state) = incidents.get_mut(key) {
                *state = if action == "resolve" {
                    "resolved"
                } else {
                    "acknowledged"
                }
                .to_owned();
            }
        }
        _ => return invalid("'event_action' is invalid"),
    }
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"status": "success", "message": "Event processed", "dedup_key": key})),
    )
        .into_response()
}

/// A PagerDuty stand-in answering with `script` first; its Events API URL.
async fn pagerduty(script: &[(u16, Option<u64>)]) -> (Arc<PagerDuty>, String) {
    let pd = Arc::new(PagerDuty {
        receiver: Receiver::scripted(script),
        ..PagerDuty::default()
    });
    let url = serve(
        Router::new()
            .route("/v2/enqueue", post(enqueue))
            .with_state(Arc::clone(&pd)),
    )
    .await;
    (pd, format!("{url}/v2/enqueue"))
}

const ROUTING_KEY: &str = "0123456789abcdef0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_events_trigger_acknowledge_and_resolve_and_failures_are_classified() {
    let (pd, url) = pagerduty(&[(429, Some(1)), (502, None)]).await;
    let notifier = PagerDutyNotifier::new(ROUTING_KEY, "deployer-1")
        .unwrap()
        .endpoint(&url)
        .unwrap();
    let trigger = notification("alert/shop/HighErrorRate", NotificationAction::Trigger);

    // One request per call. 429 with `Retry-After: 1`: retryable, and the hint is kept for
    // the caller's retry loop.
    let err = notifier.notify(&trigger).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Unavailable { message, .. } if message.contains("429")),
        "{err}"
    );
    assert_eq!(Retry::from(&err), Retry::After(Duration::from_secs(1)));
    assert_eq!(pd.receiver.count(), 1);
    // 502 without a hint: retryable after the caller's own backoff.
    let err = notifier.notify(&trigger).await.unwrap_err();
    assert!(
        matches!(
            &err,
            BackendError::Unavailable {
                retry_after: None,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(Retry::from(&err), Retry::Yes);
    assert_eq!(pd.receiver.count(), 2);
    // Then accepted.
    assert_eq!(notifier.notify(&trigger).await.unwrap(), Delivery::Delivered);
    assert_eq!(pd.receiver.count(), 3);
    assert_eq!(
        pd.incidents.lock().unwrap()["alert/shop/HighErrorRate"],
        "triggered"
    );
    for (action, state) in [
        (NotificationAction::Acknowledge, "acknowledged"),
        (NotificationAction::Resolve, "resolved"),
    ] {
        notifier
            .notify(&notification("alert/shop/HighErrorRate", action))
            .await
            .unwrap();
        assert_eq!(pd.incidents.lock().unwrap()["alert/shop/HighErrorRate"], state);
    }
    conformance::notifier(&notifier, "pd-").await;

    // 400 is final: a Rejected error quoting PagerDuty's reason, one request even through
    // a retrying caller.
    let before = pd.receiver.count();
    let misconfigured = Retrying::new(
        PagerDutyNotifier::new("short-key", "deployer-1")
            .unwrap()
            .endpoint(&url)
            .unwrap(),
        quick_retries(),
    );
    let err = misconfigured.notify(&trigger).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Rejected { reason, .. } if reason.contains("routing_key")),
        "{err}"
    );
    assert_eq!(Retry::from(&err), Retry::No);
    assert_eq!(pd.receiver.count(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_retry_around_pagerduty_honours_retry_after_and_gives_up_retryable() {
    // The caller's one retry layer (core's `retry`, classifying with `Retry::from`, as
    // deploy-incidents' Dispatcher does): 429 asks for 1 s, then a 502, then accepted.
    let (pd, url) = pagerduty(&[(429, Some(1)), (502, None)]).await;
    let notifier = Retrying::new(
        PagerDutyNotifier::new(ROUTING_KEY, "deployer-1")
            .unwrap()
            .endpoint(&url)
            .unwrap(),
        quick_retries(),
    );
    let started = Instant::now();
    let trigger = notification("alert/shop/HighErrorRate", NotificationAction::Trigger);
    assert_eq!(notifier.notify(&trigger).await.unwrap(), Delivery::Delivered);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured: {:?}",
        started.elapsed()
    );
    assert_eq!(pd.receiver.count(), 3);
    assert_eq!(
        pd.incidents.lock().unwrap()["alert/shop/HighErrorRate"],
        "triggered"
    );

    // 5xx until the policy is spent: retryable, after exactly `max_attempts` requests.
    let (failing, url) = pagerduty(&[(500, None); 10]).await;
    let notifier = Retrying::new(
        PagerDutyNotifier::new(ROUTING_KEY, "deployer-1")
            .unwrap()
            .endpoint(&url)
            .unwrap(),
        quick_retries(),
    );
    let err = notifier.notify(&trigger).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(failing.receiver.count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_retry_after_from_a_slow_receiver_neither_panics_nor_parks_the_caller() {
    // Security review M7: a 503 after more than 1 s with `Retry-After: 18446744073709551615`
    // made `elapsed + wait` overflow and panic in the notifiers' old retry loop.
    let requests = Arc::new(Mutex::new(0));
    let counted = Arc::clone(&requests);
    let url = serve(Router::new().route(
        "/v2/enqueue",
        post(move || async move {
            *counted.lock().unwrap() += 1;
            tokio::time::sleep(Duration::from_millis(1_100)).await;
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [("retry-after", u64::MAX.to_string())],
                "busy",
            )
        }),
    ))
    .await;
    let pagerduty = || {
        PagerDutyNotifier::new(ROUTING_KEY, "deployer-1")
            .unwrap()
            .endpoint(format!("{url}/v2/enqueue"))
            .unwrap()
    };
    let trigger = notification("alert/shop/HighErrorRate", NotificationAction::Trigger);
    let absurd = Duration::from_secs(u64::MAX);

    // The hint is reported as sent.
    let err = pagerduty().notify(&trigger).await.unwrap_err();
    assert_eq!(Retry::from(&err), Retry::After(absurd), "{err}");

    // With a deadline (the Dispatcher's default has one): the wait would end past it, so
    // the caller gets the error at once.
    let started = Instant::now();
    let err = Retrying::new(pagerduty(), quick_retries())
        .notify(&trigger)
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(*requests.lock().unwrap(), 2);

    // Without a deadline the hint is cut to the backoff's max (100 ms): retried, not parked.
    let started = Instant::now();
    let err = Retrying::new(
        pagerduty(),
        quick_retries().with_deadline(None).with_max_attempts(2),
    )
    .notify(&trigger)
    .await
    .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(*requests.lock().unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_receives_alerts_silences_on_acknowledge_and_resolves() {
    let alertmanager = launch_or_skip!(Alertmanager::start().await);
    let notifier = AlertmanagerNotifier::new(alertmanager.url()).unwrap();
    conformance::notifier(&notifier, "am-").await;

    let client = reqwest::Client::new();
    let alerts = || async {
        let url = format!("{}/api/v2/alerts", alertmanager.url());
        let alerts: Vec<serde_json::Value> = client.get(&url).send().await.unwrap().json().await.unwrap();
        alerts
            .into_iter()
            .filter(|a| a["labels"]["dedup_key"] == "alert/shop/HighErrorRate")
            .collect::<Vec<_>>()
    };
    notifier
        .notify(&notification(
            "alert/shop/HighErrorRate",
            NotificationAction::Trigger,
        ))
        .await
        .unwrap();
    let active = alerts().await;
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(active[0]["labels"]["alertname"], "HighErrorRate");
    assert_eq!(active[0]["labels"]["severity"], "critical");
    assert_eq!(active[0]["annotations"]["summary"], "shop error rate 30%");

    notifier
        .notify(&notification(
            "alert/shop/HighErrorRate",
            NotificationAction::Acknowledge,
        ))
        .await
        .unwrap();
    let mut state = serde_json::Value::Null;
    for _ in 0..50 {
        state = alerts().await[0]["status"]["state"].clone();
        if state == "suppressed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "suppressed", "acknowledging silences the alert");

    notifier
        .notify(&notification(
            "alert/shop/HighErrorRate",
            NotificationAction::Resolve,
        ))
        .await
        .unwrap();
    assert!(alerts().await.is_empty(), "a resolved alert is no longer listed");

    // A label name Alertmanager refuses is a final rejection.
    let bad = notification("bad-label", NotificationAction::Trigger).with_label("not a label", "x");
    let err = notifier.notify(&bad).await.unwrap_err();
    assert!(matches!(err, BackendError::Rejected { .. }), "{err}");
}
