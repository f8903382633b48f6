//! [`WebhookNotifier`]: JSON POSTs signed with HMAC-SHA256 over a timestamp and the body.

use parking_lot::Mutex;
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use deploy_core::{BackendError, Delivery, IdempotencyKey, Notification, NotificationAction, Notifier};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{HttpTarget, send};

const BACKEND: &str = "webhook";
/// The header carrying `t=<unix seconds>,sha256=<hex of HMAC-SHA256(secret, "<t>.<body>")>`.
pub const SIGNATURE_HEADER: &str = "X-Deploykit-Signature";
/// How many delivered notifications are remembered to report duplicates.
const REMEMBERED: usize = 4096;

type DeliveryId = (IdempotencyKey, NotificationAction, u64);

/// Posts each notification as JSON to a URL, signed so the receiver can tell it came from
/// whoever holds the secret, and recently: header `X-Deploykit-Signature:
/// t=<unix seconds>,sha256=<hex>`, the HMAC-SHA256 of `<t>.<body>` (the exact body bytes),
/// as Stripe and Slack sign; check it with [`verify_signature_fresh`], which refuses
/// replays older than a tolerance. Plus `Idempotency-Key: <key>/<action>/<sequence>`.
///
/// One request per `notify`: 2xx is delivered; 408, 429, 5xx and network errors are
/// retryable (with the receiver's `Retry-After` as `retry_after`), for the caller to retry;
/// other statuses are [`BackendError::Rejected`]. A notification (its
/// [`Notification::identity`]) already delivered, or being delivered right now, by this
/// notifier is [`Delivery::Duplicate`] and not sent
/// again; a failed delivery forgets it, so a retry sends.
///
/// Its `Debug` shows the URL's host, never the secret (security review M8), which is
/// zeroized when the notifier is dropped.
pub struct WebhookNotifier {
    target: HttpTarget,
    secret: Zeroizing<Vec<u8>>,
    delivered: Mutex<Remembered>,
}

impl fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookNotifier")
            .field("endpoint", &self.target)
            .field("secret", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// Deliveries done or in flight, oldest first.
#[derive(Debug, Default)]
struct Remembered {
    set: HashSet<DeliveryId>,
    order: VecDeque<DeliveryId>,
}

impl WebhookNotifier {
    /// Posts to `url`, signing with `secret`; 5 s per request.
    ///
    /// # Errors
    /// [`BackendError::Rejected`] for a URL that is not http(s) or an empty secret.
    pub fn new(url: impl Into<String>, secret: impl Into<Vec<u8>>) -> Result<Self, BackendError> {
        let target = HttpTarget::new("webhook notifier", url.into(), Duration::from_secs(5))?;
        let secret = Zeroizing::new(secret.into());
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

    crate::http::http_target_options!("5 s", "a receiver");

    fn remembered(&self) -> parking_lot::MutexGuard<'_, Remembered> {
        self.delivered.lock()
    }

    /// Claims `id` for one delivery: `None` when it is delivered or in flight already.
    fn reserve(&self, id: DeliveryId) -> Option<Reservation<'_>> {
        let mut remembered = self.remembered();
        if !remembered.set.insert(id.clone()) {
            return None;
        }
        remembered.order.push_back(id.clone());
        if remembered.order.len() > REMEMBERED
            && let Some(oldest) = remembered.order.pop_front()
        {
            remembered.set.remove(&oldest);
        }
        Some(Reservation {
            notifier: self,
            id: Some(id),
        })
    }
}

/// A delivery in flight: dropped without [`keep`](Self::keep) (a failure, or the caller
/// giving up on the future), it forgets the id so that a retry sends again.
struct Reservation<'a> {
    notifier: &'a WebhookNotifier,
    id: Option<DeliveryId>,
}

impl Reservation<'_> {
    fn keep(mut self) {
        self.id = None;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let mut remembered = self.notifier.remembered();
            remembered.set.remove(&id);
            remembered.order.retain(|other| other != &id);
        }
    }
}

fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The signature header for `body` sent at `timestamp` (unix seconds).
fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mac = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},sha256={}", hex::encode(mac))
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Whether `header` (`t=<unix seconds>,sha256=<hex>`) is the signature of `body` under
/// `secret` (compared in constant time) made at most `tolerance` away from `now`: a
/// captured request replayed later than that is refused.
///
/// ```
/// # use std::time::{Duration, SystemTime};
/// # use deploy_backends::verify_signature_fresh;
/// # let (secret, body, header) = (b"s3cret", b"{}", "t=0,sha256=00");
/// let fresh = verify_signature_fresh(secret, body, header, SystemTime::now(), Duration::from_secs(300));
/// # assert!(!fresh);
/// ```
pub fn verify_signature_fresh(
    secret: &[u8],
    body: &[u8],
    header: &str,
    now: SystemTime,
    tolerance: Duration,
) -> bool {
    let Some((timestamp, signature)) = header
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",sha256="))
    else {
        return false;
    };
    let (Ok(timestamp), Ok(signature)) = (timestamp.parse::<u64>(), hex::decode(signature)) else {
        return false;
    };
    unix_seconds(now).abs_diff(timestamp) <= tolerance.as_secs()
        && mac(secret, timestamp, body).verify_slice(&signature).is_ok()
}

#[async_trait]
impl Notifier for WebhookNotifier {
    async fn notify(&self, notification: &Notification) -> Result<Delivery, BackendError> {
        // Reserved before sending, so a concurrent duplicate is not sent twice (review m11).
        let Some(reservation) = self.reserve(notification.identity()) else {
            return Ok(Delivery::Duplicate);
        };
        let now = chrono::Utc::now();
        let body = serde_json::to_vec(&serde_json::json!({
            "key": notification.key,
            "action": notification.action,
            "sequence": notification.sequence,
            "severity": notification.severity,
            "summary": notification.summary,
            "body": notification.body,
            "labels": notification.labels,
            "sent_at": now.to_rfc3339(),
        }))
        .map_err(|err| BackendError::Rejected {
            operation: "webhook",
            reason: err.to_string(),
        })?;
        let timestamp = u64::try_from(now.timestamp()).unwrap_or(0);
        let signature = sign(&self.secret, timestamp, &body);
        let idempotency = format!(
            "{}/{}/{}",
            notification.key,
            action_name(notification.action),
            notification.sequence
        );
        let request = self
            .target
            .request(reqwest::Method::POST, "")
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
        reservation.keep();
        Ok(Delivery::Delivered)
    }
}

fn action_name(action: NotificationAction) -> &'static str {
    match action {
        NotificationAction::Trigger => "trigger",
        NotificationAction::Acknowledge => "acknowledge",
        NotificationAction::Resolve => "resolve",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Security review m11: the signature covers the timestamp, and a stale one is refused.
    #[test]
    fn signatures_verify_when_fresh_and_tampering_or_replay_is_caught() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let t = unix_seconds(now);
        let body = br#"{"summary":"deploy failed"}"#;
        let header = sign(b"s3cret", t, body);
        assert!(header.starts_with("t=1700000000,sha256=") && header.len() == 20 + 64);
        let five_minutes = Duration::from_secs(300);
        let verify = |secret: &[u8], body: &[u8], header: &str, now| {
            verify_signature_fresh(secret, body, header, now, five_minutes)
        };
        assert!(verify(b"s3cret", body, &header, now));
        assert!(verify(b"s3cret", body, &header, now + five_minutes));
        assert!(verify(b"s3cret", body, &header, now - five_minutes));
        // A replay ten minutes later, or a signature from the future.
        assert!(!verify(b"s3cret", body, &header, now + 2 * five_minutes));
        assert!(!verify(b"s3cret", body, &header, now - 2 * five_minutes));
        // Moving the timestamp forward breaks the signature.
        let moved = header.replacen("t=1700000000", "t=1700000600", 1);
        assert!(!verify(b"s3cret", body, &moved, now + 2 * five_minutes));
        assert!(!verify(b"other", body, &header, now));
        assert!(!verify(b"s3cret", br#"{"summary":"deploy ok"}"#, &header, now));
        for garbage in [
            "sha256=00",
            "t=x,sha256=00",
            "t=1700000000,sha256=zz",
            "",
            "t=1700000000",
        ] {
            assert!(!verify(b"s3cret", body, garbage, now), "{garbage}");
        }
        assert!(WebhookNotifier::new("ftp://x", b"k".to_vec()).is_err());
        assert!(WebhookNotifier::new("http://x", Vec::new()).is_err());
    }
}
