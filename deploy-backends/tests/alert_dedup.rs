//! Issue 14 end to end: a deploy-incidents `Dispatcher` delivering through the real
//! `PagerDutyNotifier` to a local stand-in for PagerDuty's Events API v2. A group's firing,
//! its repeat and its resolve must reach PagerDuty under one dedup key, so the resolve
//! closes the alert the firing opened (with a per-notification key it never closed, and
//! each repeat opened another one).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use deploy_backends::PagerDutyNotifier;
use deploy_core::DynNotifier;
use deploy_core::time::SystemClock;
use deploy_incidents::{Alert, AlertState, DeliveryRecord, Dispatcher, Route, RouteConfig};

const ROUTING_KEY: &str = "0123456789abcdef0123456789abcdef";

/// What the stand-in was sent, `(dedup_key, event_action)` in order, and the state of each
/// alert it holds, by dedup key.
#[derive(Default)]
struct PagerDuty {
    events: Mutex<Vec<(String, String)>>,
    alerts: Mutex<BTreeMap<String, String>>,
}

/// Accepts well-formed events like Events API v2 (202), refuses the rest (400).
async fn enqueue(State(pd): State<Arc<PagerDuty>>, body: Bytes) -> (StatusCode, String) {
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not JSON".into());
    };
    let (Some(key), Some(action)) = (event["dedup_key"].as_str(), event["event_action"].as_str()) else {
        return (
            StatusCode::BAD_REQUEST,
            "dedup_key and event_action are required".into(),
        );
    };
    if event["routing_key"].as_str() != Some(ROUTING_KEY) || key.is_empty() || key.len() > 255 {
        return (StatusCode::BAD_REQUEST, "invalid routing or dedup key".into());
    }
    pd.events
        .lock()
        .unwrap()
        .push((key.to_owned(), action.to_owned()));
    let mut alerts = pd.alerts.lock().unwrap();
    match action {
        "trigger" => {
            alerts.insert(key.to_owned(), "triggered".into());
        }
        "resolve" => {
            if let Some(state) = alerts.get_mut(key) {
                *state = "resolved".into();
            }
        }
        _ => return (StatusCode::BAD_REQUEST, "invalid event_action".into()),
    }
    (
        StatusCode::ACCEPTED,
        format!(r#"{{"status":"success","dedup_key":"{key}"}}"#),
    )
}

/// Starts the stand-in on 127.0.0.1; its Events API URL.
async fn pagerduty(pd: Arc<PagerDuty>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v2/enqueue", listener.local_addr().unwrap());
    let router = Router::new().route("/v2/enqueue", post(enqueue)).with_state(pd);
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

/// Waits for the next due group and flushes.
async fn flush_next(dispatcher: &mut Dispatcher) -> Vec<DeliveryRecord> {
    if let Some(at) = dispatcher.next_deadline() {
        tokio::time::sleep_until(at).await;
    }
    dispatcher.flush_due().await
}

// Real time (the HTTP round trips need it), with timers of tens of milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_firing_repeat_and_resolve_reach_pagerduty_under_one_dedup_key() {
    let pd = Arc::new(PagerDuty::default());
    let url = pagerduty(Arc::clone(&pd)).await;
    let notifier = PagerDutyNotifier::new(ROUTING_KEY, "deployer-1")
        .unwrap()
        .endpoint(&url)
        .unwrap();
    let tree = Route::compile(
        &RouteConfig {
            receiver: Some("pagerduty".into()),
            group_wait: Some(Duration::from_millis(10)),
            group_interval: Some(Duration::from_millis(50)),
            repeat_interval: Some(Duration::from_millis(100)),
            ..RouteConfig::default()
        },
        &["pagerduty".into()],
    )
    .unwrap();
    let receivers: HashMap<String, Arc<DynNotifier>> =
        [("pagerduty".to_owned(), Arc::new(notifier) as Arc<DynNotifier>)].into();
    let mut dispatcher = Dispatcher::new(tree, receivers, SystemClock::shared());
    let firing = Alert {
        labels: [
            ("alertname".to_owned(), "HighErrorRate".to_owned()),
            ("app".to_owned(), "shop".to_owned()),
            ("severity".to_owned(), "critical".to_owned()),
        ]
        .into(),
        annotations: Default::default(),
        state: AlertState::Firing,
        value: 0.3,
        fired_at: None,
        resolved_at: None,
    };

    dispatcher.receive(&firing);
    let mut records = flush_next(&mut dispatcher).await;
    assert_eq!(records.len(), 1, "the firing");
    // Unchanged and firing: quiet at the group interval, repeated at the repeat interval.
    for _ in 0..4 {
        let repeat = flush_next(&mut dispatcher).await;
        if !repeat.is_empty() {
            records.extend(repeat);
            break;
        }
    }
    assert_eq!(records.len(), 2, "the repeat");
    dispatcher.receive(&Alert {
        state: AlertState::Resolved,
        ..firing
    });
    records.extend(flush_next(&mut dispatcher).await);

    assert!(records.iter().all(|record| record.error.is_none()), "{records:?}");
    let key = records[0].notification.key.to_string();
    let events = pd.events.lock().unwrap().clone();
    assert_eq!(
        events,
        [
            (key.clone(), "trigger".to_owned()),
            (key.clone(), "trigger".to_owned()),
            (key.clone(), "resolve".to_owned()),
        ]
    );
    let alerts = pd.alerts.lock().unwrap().clone();
    assert_eq!(
        alerts,
        BTreeMap::from([(key, "resolved".to_owned())]),
        "one PagerDuty alert, closed by the resolve"
    );
}
