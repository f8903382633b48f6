//! [`AlertmanagerNotifier`]: alerts and silences through Alertmanager's API v2.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deploy_core::{BackendError, Delivery, Notification, NotificationAction, Notifier};

use super::{HttpTarget, send};

const BACKEND: &str = "alertmanager";
/// The label [`AlertmanagerNotifier`] puts the notification's key in, so every action on a
/// key is one alert (and an acknowledgement silences it by this label).
pub const ALERTMANAGER_KEY_LABEL: &str = "dedup_key";

/// Hands notifications to Alertmanager (`POST /api/v2/alerts`), which groups, routes and
/// deduplicates them with its own configuration.
///
/// - Trigger posts the alert with `startsAt` now. Its labels are the notification's labels,
///   `alertname` (from the labels, else `deploykit`), `severity` and `dedup_key` (the key),
///   so re-sending the same key is the same alert to Alertmanager; `summary` and
///   `description` are annotations.
/// - Resolve posts the same labels with `endsAt` now, which resolves the alert.
/// - Acknowledge creates a silence (`POST /api/v2/silences`) matching `dedup_key` for the
///   acknowledgement period (default 4 h): someone is on it, so stop paging.
///
/// One request per `notify`: 200 is delivered; 400 (an invalid alert, such as a label name
/// Alertmanager refuses) is [`BackendError::Rejected`], final; 429, 5xx and network errors
/// are retryable, for the caller to retry.
#[derive(Debug)]
pub struct AlertmanagerNotifier {
    target: HttpTarget,
    acknowledgement: Duration,
}

impl AlertmanagerNotifier {
    /// Posts to the Alertmanager at `base_url` (`http://host:9093`).
    ///
    /// # Errors
    /// [`BackendError::Rejected`] when `base_url` is not an http(s) URL.
    pub fn new(base_url: impl Into<String>) -> Result<Self, BackendError> {
        let base = base_url.into().trim_end_matches('/').to_owned();
        Ok(Self {
            target: HttpTarget::new("alertmanager notifier", base, Duration::from_secs(5))?,
            acknowledgement: Duration::from_secs(4 * 3600),
        })
    }

    /// How long an acknowledgement silences the alert (default 4 h); a period reaching past
    /// the year 9999 silences until its end.
    #[must_use]
    pub fn acknowledgement(mut self, period: Duration) -> Self {
        self.acknowledgement = period;
        self
    }

    crate::http::http_target_options!("5 s", "an Alertmanager");

    /// The API path and body for `notification`.
    fn request(&self, notification: &Notification) -> (&'static str, serde_json::Value) {
        let now = chrono::Utc::now();
        match notification.action {
            NotificationAction::Acknowledge => {
                let until = silence_end(now, self.acknowledgement);
                let silence = serde_json::json!({
                    "matchers": [{
                        "name": ALERTMANAGER_KEY_LABEL,
                        "value": notification.key,
                        "isRegex": false,
                        "isEqual": true,
                    }],
                    "startsAt": now.to_rfc3339(),
                    "endsAt": until.to_rfc3339(),
                    "createdBy": "deploykit",
                    "comment": format!("acknowledged: {}", notification.summary),
                });
                ("/api/v2/silences", silence)
            }
            action => {
                let mut labels = notification.labels.clone();
                labels
                    .entry("alertname".to_owned())
                    .or_insert_with(|| "deploykit".to_owned());
                labels.insert(ALERTMANAGER_KEY_LABEL.to_owned(), notification.key.to_string());
                let mut labels = serde_json::json!(labels);
                labels["severity"] = serde_json::json!(notification.severity);
                let mut alert = serde_json::json!({
                    "labels": labels,
                    "annotations": {
                        "summary": notification.summary,
                        "description": notification.body,
                    },
                });
                if action == NotificationAction::Resolve {
                    alert["endsAt"] = now.to_rfc3339().into();
                } else {
                    alert["startsAt"] = now.to_rfc3339().into();
                }
                ("/api/v2/alerts", serde_json::json!([alert]))
            }
        }
    }
}

/// `now + period`, saturating at the last second of 9999 (RFC 3339 has four-digit years):
/// `now + from_std(period)` panicked for periods above about 262 000 years (review M16).
fn silence_end(now: DateTime<Utc>, period: Duration) -> DateTime<Utc> {
    let last = DateTime::<Utc>::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC);
    chrono::TimeDelta::from_std(period)
        .ok()
        .and_then(|period| now.checked_add_signed(period))
        .map_or(last, |end| end.min(last))
}

#[async_trait]
impl Notifier for AlertmanagerNotifier {
    async fn notify(&self, notification: &Notification) -> Result<Delivery, BackendError> {
        let (path, body) = self.request(notification);
        let request = self.target.request(reqwest::Method::POST, path).json(&body);
        send(BACKEND, "alertmanager post", self.target.timeout, request, &[200]).await?;
        Ok(Delivery::Delivered)
    }
}

#[cfg(test)]
mod tests {
    use deploy_core::{IdempotencyKey, Severity};

    use super::*;

    /// Security review M16: a huge acknowledgement period panicked in `now + from_std(ack)`.
    #[test]
    fn huge_acknowledgement_periods_silence_until_the_year_9999() {
        let key = IdempotencyKey::new("alert/shop/HighErrorRate").unwrap();
        let ack = Notification {
            action: NotificationAction::Acknowledge,
            ..Notification::trigger(key, Severity::Critical, "on it")
        };
        for period in [
            Duration::MAX,
            Duration::from_secs(u64::MAX / 2),
            Duration::from_secs(400_000 * 365 * 86_400),
        ] {
            let notifier = AlertmanagerNotifier::new("http://127.0.0.1:9093")
                .unwrap()
                .acknowledgement(period);
            let (path, silence) = notifier.request(&ack);
            assert_eq!(path, "/api/v2/silences");
            assert_eq!(silence["endsAt"], "9999-12-31T23:59:59+00:00", "{period:?}");
        }
        let now = Utc::now();
        assert_eq!(
            silence_end(now, Duration::from_secs(60)),
            now + chrono::TimeDelta::seconds(60)
        );
    }
}
