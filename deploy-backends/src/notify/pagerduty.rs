//! [`PagerDutyNotifier`]: PagerDuty Events API v2.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{BackendError, Delivery, Notification, NotificationAction, Notifier};

use zeroize::Zeroizing;

use super::{HttpTarget, send};
use crate::http::require_http_url;

const BACKEND: &str = "pagerduty";
/// PagerDuty's Events API v2 endpoint, where [`PagerDutyNotifier`] sends unless told otherwise.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";
/// PagerDuty truncates summaries at 1024 characters; we cut first so the cut is ours.
const MAX_SUMMARY: usize = 1024;

/// Sends trigger / acknowledge / resolve events to PagerDuty's Events API v2, with the
/// notification's key as `dedup_key`, so a re-sent trigger updates the open alert and a
/// resolve closes it.
///
/// One request per `notify`: 202 is delivered; 400 (an invalid event) is
/// [`BackendError::Rejected`], final; 429, 5xx and network errors are retryable
/// ([`BackendError::Unavailable`] with PagerDuty's `Retry-After` as `retry_after`, or
/// [`BackendError::Timeout`]), for the caller to retry.
///
/// Its `Debug` shows the endpoint's host, never the routing key (security review M8), which
/// is zeroized when the notifier is dropped.
pub struct PagerDutyNotifier {
    target: HttpTarget,
    routing_key: Zeroizing<String>,
    source: String,
}

impl fmt::Debug for PagerDutyNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PagerDutyNotifier")
            .field("endpoint", &self.target)
            .field("routing_key", &"[redacted]")
            .field("source", &self.source)
            .finish()
    }
}

impl PagerDutyNotifier {
    /// Sends to PagerDuty with the integration's `routing_key`; events name `source` (this
    /// deployer's host or service) as their origin.
    ///
    /// # Errors
    /// [`BackendError::Rejected`] for an empty routing key or source.
    pub fn new(routing_key: impl Into<String>, source: impl Into<String>) -> Result<Self, BackendError> {
        let (routing_key, source) = (routing_key.into(), source.into());
        if routing_key.trim().is_empty() || source.trim().is_empty() {
            return Err(BackendError::Rejected {
                operation: "pagerduty notifier",
                reason: "routing key and source must not be empty".to_owned(),
            });
        }
        Ok(Self {
            target: HttpTarget::new(
                "pagerduty notifier",
                PAGERDUTY_EVENTS_URL.to_owned(),
                Duration::from_secs(10),
            )?,
            routing_key: Zeroizing::new(routing_key),
            source,
        })
    }

    /// Sends to another endpoint (a proxy, or a local stand-in in tests).
    ///
    /// # Errors
    /// [`BackendError::Rejected`] when `url` is not an http(s) URL (security review m4).
    pub fn endpoint(mut self, url: impl Into<String>) -> Result<Self, BackendError> {
        let url = url.into();
        require_http_url("pagerduty notifier", &url)?;
        self.target.endpoint = url;
        Ok(self)
    }

    crate::http::http_target_options!("10 s", "an endpoint");

    fn event(&self, notification: &Notification) -> serde_json::Value {
        let mut event = serde_json::json!({
            "routing_key": self.routing_key.as_str(),
            "event_action": notification.action,
            "dedup_key": notification.key,
        });
        if notification.action == NotificationAction::Trigger {
            let summary: String = notification.summary.chars().take(MAX_SUMMARY).collect();
            event["payload"] = serde_json::json!({
                "summary": if summary.is_empty() { notification.key.to_string() } else { summary },
                "source": self.source,
                "severity": notification.severity,
                "custom_details": {
                    "body": notification.body,
                    "labels": notification.labels,
                },
            });
        }
        event
    }
}

#[async_trait]
impl Notifier for PagerDutyNotifier {
    async fn notify(&self, notification: &Notification) -> Result<Delivery, BackendError> {
        let request = self
            .target
            .request(reqwest::Method::POST, "")
            .json(&self.event(notification));
        send(BACKEND, "pagerduty event", self.target.timeout, request, &[202]).await?;
        Ok(Delivery::Delivered)
    }
}

#[cfg(test)]
mod tests {
    use deploy_core::{IdempotencyKey, Severity};

    use super::*;

    #[test]
    fn events_carry_the_dedup_key_and_a_payload_only_on_trigger() {
        let notifier = PagerDutyNotifier::new("R0UT1NG", "deployer-1").unwrap();
        let key = IdempotencyKey::new("alert/shop/HighErrorRate").unwrap();
        let trigger =
            Notification::trigger(key, Severity::Critical, "x".repeat(2000)).with_label("app", "shop");
        let event = notifier.event(&trigger);
        assert_eq!(event["event_action"], "trigger");
        assert_eq!(event["dedup_key"], "alert/shop/HighErrorRate");
        assert_eq!(event["payload"]["severity"], "critical");
        assert_eq!(event["payload"]["summary"].as_str().unwrap().len(), 1024);
        assert_eq!(event["payload"]["custom_details"]["labels"]["app"], "shop");
        let resolve = Notification {
            action: NotificationAction::Resolve,
            ..trigger
        };
        let event = notifier.event(&resolve);
        assert_eq!(event["event_action"], "resolve");
        assert!(event.get("payload").is_none());
        assert!(PagerDutyNotifier::new(" ", "x").is_err());
        // Security review m4: the endpoint is checked like every other URL.
        assert!(notifier.endpoint("file:///etc/passwd").is_err());
    }
}
