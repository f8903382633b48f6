//! [`WebhookNotifier`]: JSON POSTs signed with HMAC-SHA256.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{BackendError, Delivery, Notification, NotificationAction, Notifier};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{HttpTarget, send};

const BACKEND: &str = "webhook";
/// The header carrying `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub const SIGNATURE_HEADER: &str = "X-Deploykit-Signature";
/// How many delivered (key, action) pairs are remembered to report duplicates.
const REMEMBERED: usize = 4096;

/// Posts each notification as JSON to a URL, signed so the receiver can tell it came from
/// whoever holds the secret: header `X-Deploykit-Signature: sha256=<hex>` over the exact
/// body bytes (check it with [`verify_signature`]), plus `Idempotency-Key: <key>/<action>`.
///
/// One request per `notify`: 2xx is delivered; 408, 429, 5xx and network errors are
/// retryable (with the receiver's `Retry-After` as `retry_after`), for the caller to retry;
/// other statuses are [`BackendError::Rejected`]. A (key, action) already delivered by this
/// notifier is [`Delivery::Duplicate`] and not sent again.
#[derive(Debug)]
pub struct WebhookNotifier {
    target: HttpTarget,
    secret: Vec<u8>,
    delivered: Mutex<Remembered>,
}

#[derive(Debug, Default)]
struct Remembered {
    set: HashSet<(String, NotificationAction)>,
    order: VecDeque<(String, NotificationAction)>,
}

impl WebhookNotifier {
    /// Posts to `url`, signing with `secret`; 5 s per request.
    ///
    /// # Errors
    /// [`BackendError::Rejected`] for a URL that is not http(s) or an empty secret.
    pub fn new(url: impl Into<String>, secret: impl Into<Vec<u8>>) -> Result<Self, BackendError> {
        let target = HttpTarget::new("webhook notifier", url.into(), Duration::from_secs(5))?;
        let secret = secret.into();
        if secret.is_empty() {
            return Err(BackendError::Rejected {
                operation: "webhook notifier",
                reason: "the signing secret is empty".to_owned(),
            });
        }
        Ok(Self {
            target,
            secret,
            delivered: Mutex::new(Remembered::default()),
        })
    }

    /// How long one request may take (default 5 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.target.timeout = timeout;
        self
    }

    fn sign(&self, body: &[u8]) -> String {
        format!(
            "sha256={}",
            hex::encode(mac(&self.secret, body).finalize().into_bytes())
        )
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.delivered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn mac(secret: &[u8], body: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    mac
}

/// Whether `header` (`sha256=<hex>`) is the signature of `body` under `secret`, compared in
/// constant time.
pub fn verify_signature(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(bytes) = header
        .strip_prefix("sha256=")
        .and_then(|hex| hex::decode(hex).ok())
    else {
        return false;
    };
    mac(secret, body).verify_slice(&bytes).is_ok()
}

#[async_trait]
impl Notifier for WebhookNotifier {
    async fn notify(&self, notification: &Notification) -> Result<Delivery, BackendError> {
        let id = (notification.key.as_str().to_owned(), notification.action);
        if self.remembered().set.contains(&id) {
            return Ok(Delivery::Duplicate);
        }
        let body = serde_json::to_vec(&serde_json::json!({
            "key": notification.key,
            "action": notification.action,
            "severity": notification.severity,
            "summary": notification.summary,
            "body": notification.body,
            "labels": notification.labels,
            "sent_at": chrono::Utc::now().to_rfc3339(),
        }))
        .map_err(|err| BackendError::Rejected {
            operation: "webhook",
            reason: err.to_string(),
        })?;
        let signature = self.sign(&body);
        let idempotency = format!("{}/{}", notification.key, action_name(notification.action));
        let request = self
            .target
            .post("")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .header("Idempotency-Key", idempotency)
            .body(body);
        send(
            BACKEND,
            "webhook",
            self.target.timeout,
            request,
            &[200, 201, 202, 204],
        )
        .await?;
        let mut remembered = self.remembered();
        if remembered.set.insert(id.clone()) {
            remembered.order.push_back(id);
            if remembered.order.len() > REMEMBERED
                && let Some(oldest) = remembered.order.pop_front()
            {
                remembered.set.remove(&oldest);
            }
        }
        Ok(Delivery::Delivered)
    }
}

pub(crate) fn action_name(action: NotificationAction) -> &'static str {
    match action {
        NotificationAction::Trigger => "trigger",
        NotificationAction::Acknowledge => "acknowledge",
        NotificationAction::Resolve => "resolve",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_tampering_is_caught() {
        let notifier = WebhookNotifier::new("http://127.0.0.1:1/hook", b"s3cret".to_vec()).unwrap();
        let body = br#"{"summary":"deploy failed"}"#;
        let header = notifier.sign(body);
        assert!(header.starts_with("sha256=") && header.len() == 7 + 64);
        assert!(verify_signature(b"s3cret", body, &header));
        assert!(!verify_signature(b"other", body, &header));
        assert!(!verify_signature(
            b"s3cret",
            br#"{"summary":"deploy ok"}"#,
            &header
        ));
        assert!(!verify_signature(b"s3cret", body, "sha256=zz"));
        assert!(!verify_signature(b"s3cret", body, "md5=00"));
        assert!(WebhookNotifier::new("ftp://x", b"k".to_vec()).is_err());
        assert!(WebhookNotifier::new("http://x", Vec::new()).is_err());
    }
}
