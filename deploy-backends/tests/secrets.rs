//! Security review M8: secrets never reach `Debug`, error messages or logs.
//!
//! Every HTTP adapter is pointed at a URL carrying credentials (`user:secretpass@`) and a
//! path token (as Slack- or Teams-style webhook URLs do), on a port where nothing listens;
//! the transport error, the adapter's `Debug` and everything logged meanwhile (at TRACE,
//! captured from a tracing subscriber) must not contain either. reqwest's error `Display`
//! appended `for url (http://user:secretpass@...)` before the fix, and the notifiers derived
//! `Debug` over the HMAC secret and the routing key.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploy_backends::{
    AlertmanagerNotifier, HttpHealthChecker, PagerDutyNotifier, PrometheusMetrics, WebhookNotifier,
};
use deploy_core::{
    AppId, HealthChecker, IdempotencyKey, Instance, InstanceId, InstanceState, MetricName, MetricQuery,
    MetricTarget, MetricsSource, Notification, Notifier, Pool, Severity, Version,
};

const SECRETS: [&str; 4] = ["secretpass", "T0K3N-path-token", "hmac-key-4711", "R0UTINGKEY"];

/// A port on 127.0.0.1 where nothing listens (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What a subscriber wrote, shared with the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Neither a secret nor its bytes as a derived `Debug` of a `Vec<u8>` prints them.
fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        let bytes = format!("{:?}", secret.as_bytes());
        let bytes = bytes.trim_start_matches('[').trim_end_matches(']');
        assert!(
            !text.contains(secret) && !text.contains(bytes),
            "{what} leaks {secret:?}: {text}"
        );
    }
}

fn trigger() -> Notification {
    Notification::trigger(
        IdempotencyKey::new("alert/shop/HighErrorRate").unwrap(),
        Severity::Critical,
        "shop error rate 30%",
    )
}

#[tokio::test]
async fn transport_errors_debug_and_logs_carry_no_credentials_or_path_tokens() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let base = format!("http://user:secretpass@127.0.0.1:{}", closed_port());
    let hook = format!("{base}/services/T0K3N-path-token");

    let webhook = WebhookNotifier::new(&hook, b"hmac-key-4711".to_vec()).unwrap();
    let pagerduty = PagerDutyNotifier::new("R0UTINGKEY", "deployer-1")
        .unwrap()
        .endpoint(&hook)
        .unwrap();
    let alertmanager = AlertmanagerNotifier::new(&hook).unwrap();
    let notifiers: [(&str, &dyn Notifier, String); 3] = [
        ("webhook", &webhook, format!("{webhook:?}")),
        ("pagerduty", &pagerduty, format!("{pagerduty:?}")),
        ("alertmanager", &alertmanager, format!("{alertmanager:?}")),
    ];
    for (name, notifier, shown) in notifiers {
        assert_no_secret(&format!("{name} Debug"), &shown);
        assert!(shown.contains("127.0.0.1"), "{shown}");
        let err = notifier.notify(&trigger()).await.unwrap_err();
        assert!(err.is_retryable(), "{name}: {err}");
        // As the incidents Dispatcher logs a failed delivery.
        tracing::warn!(error = %err, notifier = %shown, "delivery failed");
        assert_no_secret(&format!("{name} error"), &format!("{err} {err:?}"));
    }

    let prometheus = PrometheusMetrics::new(&base).unwrap().for_demo_service();
    assert_no_secret("prometheus Debug", &format!("{prometheus:?}"));
    let target = MetricTarget::Pool {
        app: AppId::new("shop").unwrap(),
        pool: Pool::new("blue").unwrap(),
    };
    let query = MetricQuery::new(MetricName::error_rate(), target, Duration::from_secs(30)).unwrap();
    let err = prometheus.query(&query).await.unwrap_err();
    tracing::warn!(error = %err, "query failed");
    assert_no_secret("prometheus error", &format!("{err} {err:?}"));
    // Nor the PromQL, which reqwest's URL carried as the query string.
    assert!(!err.to_string().contains("demo_requests_total"), "{err}");

    let checker = HttpHealthChecker::builder()
        .path("/health/T0K3N-path-token")
        .build()
        .unwrap();
    let instance = Instance {
        id: InstanceId::new("shop-1").unwrap(),
        app: AppId::new("shop").unwrap(),
        pool: Pool::new("blue").unwrap(),
        version: Version::new("1.0").unwrap(),
        state: InstanceState::Running,
        address: Some(format!("user:secretpass@127.0.0.1:{}", closed_port())),
    };
    let status = checker.check(&instance).await.unwrap();
    tracing::warn!(?status, "probe");
    assert_no_secret("health status", &format!("{status:?}"));
    // A token in the check's query string stays out of the checker's Debug.
    let with_query = HttpHealthChecker::builder()
        .path("/health?token=T0K3N-path-token")
        .build()
        .unwrap();
    let shown = format!("{with_query:?}");
    assert!(shown.contains("/health"), "{shown}");
    assert_no_secret("the health checker", &shown);

    let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("delivery failed"),
        "the subscriber captured: {logged}"
    );
    assert_no_secret("the logs", &logged);
}
