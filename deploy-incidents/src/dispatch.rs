//! Grouping, deduplication and delivery (Alertmanager semantics).
//!
//! Each alert goes to the routes that match it and joins the group its route's `group_by`
//! labels select. A new group notifies after `group_wait`; afterwards it is looked at every
//! `group_interval` and notifies when its firing set changed or alerts resolved; an
//! unchanged firing group is notified again after `repeat_interval`. The notification log
//! (per group and receiver) is what makes repeated evaluations of the same alerts quiet.
//! Silenced and inhibited alerts are left out. Deliveries retry with exponential backoff
//! until a deadline, but only failures the notifier marks retryable.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hasher;
use std::sync::Arc;
use std::time::Duration;

use deploy_core::{BackendError, DynNotifier, IdempotencyKey, Notification, NotificationAction, Severity};
use tokio::time::Instant;

use crate::labels::{Fingerprint, Labels};
use crate::route::Route;
use crate::rule::{Alert, AlertState};
use crate::suppress::{InhibitRule, Silence, WallClock};

/// Backoff between delivery attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first wait.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
    /// No attempt starts later than this after the first.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
            deadline: Duration::from_secs(60),
        }
    }
}

/// What one flush sent (or failed to send).
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRecord {
    /// The group.
    pub group: String,
    /// The receiver.
    pub receiver: String,
    /// The notification.
    pub notification: Notification,
    /// Attempts made.
    pub attempts: u32,
    /// The final error, when it was not delivered.
    pub error: Option<String>,
}

#[derive(Debug)]
struct Group {
    route: usize,
    alerts: BTreeMap<Fingerprint, ()>,
    next_flush: Instant,
}

#[derive(Debug, Clone, Copy)]
struct LogEntry {
    firing: u64,
    sent_at: Instant,
    /// Notifications sent for the group: part of the idempotency key, so a retry of one
    /// notification is recognised as such while the next notification is new.
    sequence: u64,
}

/// Routes, groups, deduplicates and delivers alerts.
#[derive(Debug)]
pub struct Dispatcher {
    routes: Vec<Route>,
    tree: Route,
    receivers: HashMap<String, Arc<DynNotifier>>,
    silences: Vec<Silence>,
    inhibitions: Vec<InhibitRule>,
    clock: ClockDebug,
    retry: RetryPolicy,
    alerts: HashMap<Fingerprint, Alert>,
    groups: BTreeMap<String, Group>,
    log: HashMap<(String, String), LogEntry>,
}

struct ClockDebug(WallClock);

impl std::fmt::Debug for ClockDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WallClock")
    }
}

fn flatten(route: &Route, out: &mut Vec<Route>) {
    out.push(route.clone());
    for child in &route.routes {
        flatten(child, out);
    }
}

fn set_hash<'a>(fingerprints: impl Iterator<Item = &'a Fingerprint>) -> u64 {
    let mut hasher = fnv::FnvHasher::default();
    for fingerprint in fingerprints {
        hasher.write_u64(fingerprint.0);
    }
    hasher.finish()
}

impl Dispatcher {
    /// A dispatcher over a compiled routing tree and its receivers.
    pub fn new(tree: Route, receivers: HashMap<String, Arc<DynNotifier>>, clock: WallClock) -> Self {
        let mut routes = Vec::new();
        flatten(&tree, &mut routes);
        Self {
            routes,
            tree,
            receivers,
            silences: Vec::new(),
            inhibitions: Vec::new(),
            clock: ClockDebug(clock),
            retry: RetryPolicy::default(),
            alerts: HashMap::new(),
            groups: BTreeMap::new(),
            log: HashMap::new(),
        }
    }

    /// Sets the delivery retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Adds an inhibition rule.
    pub fn add_inhibition(&mut self, rule: InhibitRule) {
        self.inhibitions.push(rule);
    }

    /// Adds a silence.
    pub fn add_silence(&mut self, silence: Silence) {
        self.silences.push(silence);
    }

    /// Ends a silence now; `false` if there is none with that id.
    pub fn expire_silence(&mut self, id: &str) -> bool {
        let now = (self.clock.0)();
        let mut found = false;
        for silence in self.silences.iter_mut().filter(|silence| silence.id == id) {
            silence.ends_at = silence.ends_at.min(now);
            found = true;
        }
        found
    }

    /// Takes in an alert update (from a rule evaluation or an external source).
    pub fn receive(&mut self, alert: Alert, now: Instant) {
        let fingerprint = alert.fingerprint();
        let keys: Vec<(String, usize)> = self
            .tree
            .matching(&alert.labels)
            .into_iter()
            .filter_map(|route| {
                let index = self
                    .routes
                    .iter()
                    .position(|candidate| candidate.id == route.id)?;
                Some((route.group_key(&alert.labels), index))
            })
            .collect();
        self.alerts.insert(fingerprint, alert);
        for (key, route) in keys {
            let wait = self.routes[route].group_wait;
            let group = self.groups.entry(key).or_insert_with(|| Group {
                route,
                alerts: BTreeMap::new(),
                next_flush: now + wait,
            });
            group.alerts.insert(fingerprint, ());
        }
    }

    /// When the next group is due, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.groups.values().map(|group| group.next_flush).min()
    }

    /// Whether an alert is silenced or inhibited now.
    pub fn is_muted(&self, alert: &Alert) -> bool {
        let now = (self.clock.0)();
        self.silences
            .iter()
            .any(|silence| silence.mutes(&alert.labels, now))
            || self
                .inhibitions
                .iter()
                .any(|rule| rule.inhibits(alert, self.alerts.values()))
    }

    /// Flushes every group due at `now`.
    pub async fn flush_due(&mut self, now: Instant) -> Vec<DeliveryRecord> {
        let due: Vec<String> = self
            .groups
            .iter()
            .filter(|(_, group)| group.next_flush <= now)
            .map(|(key, _)| key.clone())
            .collect();
        let mut records = Vec::new();
        for key in due {
            records.extend(self.flush(&key, now).await);
        }
        records
    }

    async fn flush(&mut self, key: &str, now: Instant) -> Option<DeliveryRecord> {
        let group = self.groups.get(key)?;
        let route = self.routes[group.route].clone();
        let members: Vec<Alert> = group
            .alerts
            .keys()
            .filter_map(|fingerprint| self.alerts.get(fingerprint))
            .cloned()
            .collect();
        let visible: Vec<&Alert> = members.iter().filter(|alert| !self.is_muted(alert)).collect();
        let firing: Vec<&Alert> = visible
            .iter()
            .copied()
            .filter(|alert| alert.state == AlertState::Firing)
            .collect();
        let resolved: Vec<&Alert> = visible
            .iter()
            .copied()
            .filter(|alert| alert.state == AlertState::Resolved)
            .collect();
        let firing_hash = set_hash(
            firing
                .iter()
                .map(|alert| Fingerprint::of(&alert.labels))
                .collect::<Vec<_>>()
                .iter(),
        );
        let log_key = (key.to_owned(), route.receiver.clone());
        let previous = self.log.get(&log_key).copied();
        let unchanged = previous.is_some_and(|entry| entry.firing == firing_hash);
        let repeat_due = previous
            .is_none_or(|entry| now.saturating_duration_since(entry.sent_at) >= route.repeat_interval);
        let worth_sending = if firing.is_empty() {
            // Only resolutions: tell the receiver once, if it was told of the firing.
            !resolved.is_empty() && previous.is_some_and(|entry| entry.firing != set_hash(std::iter::empty()))
        } else {
            !unchanged || !resolved.is_empty() || repeat_due
        };
        let record = if worth_sending {
            let sequence = previous.map_or(1, |entry| entry.sequence + 1);
            let notification = notification(key, &route.id, sequence, &firing, &resolved);
            let (attempts, error) = self.deliver(&route.receiver, &notification).await;
            if error.is_none() {
                self.log.insert(
                    log_key,
                    LogEntry {
                        firing: firing_hash,
                        sent_at: now,
                        sequence,
                    },
                );
            }
            Some(DeliveryRecord {
                group: key.to_owned(),
                receiver: route.receiver.clone(),
                notification,
                attempts,
                error,
            })
        } else {
            None
        };
        // Resolved alerts leave once announced (or when nobody needed telling).
        let delivered = record.as_ref().is_none_or(|record| record.error.is_none());
        if let Some(group) = self.groups.get_mut(key) {
            if delivered {
                for alert in members.iter().filter(|alert| alert.state == AlertState::Resolved) {
                    group.alerts.remove(&Fingerprint::of(&alert.labels));
                }
            }
            group.next_flush = now + route.group_interval;
            if group.alerts.is_empty() {
                self.groups.remove(key);
                self.log.remove(&(key.to_owned(), route.receiver.clone()));
            }
        }
        self.alerts.retain(|fingerprint, alert| {
            alert.state != AlertState::Resolved
                || self
                    .groups
                    .values()
                    .any(|group| group.alerts.contains_key(fingerprint))
        });
        record
    }

    /// Sends with retries on retryable failures until the deadline.
    async fn deliver(&self, receiver: &str, notification: &Notification) -> (u32, Option<String>) {
        let Some(notifier) = self.receivers.get(receiver) else {
            return (0, Some(format!("no notifier for receiver `{receiver}`")));
        };
        let started = Instant::now();
        let mut wait = self.retry.initial;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match notifier.notify(notification).await {
                Ok(_) => return (attempts, None),
                Err(error) if retryable(&error) && started.elapsed() + wait <= self.retry.deadline => {
                    tracing::debug!(%error, attempts, "notification failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(self.retry.max);
                }
                Err(error) => return (attempts, Some(error.to_string())),
            }
        }
    }
}

fn retryable(error: &BackendError) -> bool {
    error.is_retryable()
}

/// Labels every alert of the group shares.
fn common_labels(alerts: &[&Alert]) -> Labels {
    let Some(first) = alerts.first() else {
        return Labels::new();
    };
    first
        .labels
        .iter()
        .filter(|(name, value)| alerts.iter().all(|alert| alert.labels.get(*name) == Some(*value)))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

fn severity(alerts: &[&Alert]) -> Severity {
    alerts
        .iter()
        .map(|alert| match alert.labels.get("severity").map(String::as_str) {
            Some("critical") => Severity::Critical,
            Some("warning") => Severity::Warning,
            _ => Severity::Info,
        })
        .max()
        .unwrap_or(Severity::Info)
}

fn notification(
    group: &str,
    route: &str,
    sequence: u64,
    firing: &[&Alert],
    resolved: &[&Alert],
) -> Notification {
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(group.as_bytes());
    // Route id, group hash and sequence: short, never empty, the same for every retry.
    let key = IdempotencyKey::new(format!("{route}/{:016x}/{sequence}", hasher.finish()))
        .unwrap_or_else(|_| unreachable!("a route id and a hash make a valid key"));
    let all: Vec<&Alert> = firing.iter().chain(resolved).copied().collect();
    let labels = common_labels(&all);
    let name = labels
        .get("alertname")
        .cloned()
        .unwrap_or_else(|| "alerts".into());
    let (action, summary) = if firing.is_empty() {
        (
            NotificationAction::Resolve,
            format!("[RESOLVED] {name} ({} alert(s))", resolved.len()),
        )
    } else {
        (
            NotificationAction::Trigger,
            format!("[FIRING:{}] {name}", firing.len()),
        )
    };
    let mut body = String::new();
    for (title, alerts) in [("Firing", firing), ("Resolved", resolved)] {
        if alerts.is_empty() {
            continue;
        }
        body.push_str(&format!("{title}:\n"));
        for alert in alerts {
            let labels: Vec<String> = alert
                .labels
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            body.push_str(&format!("- {} value={}", labels.join(" "), alert.value));
            if let Some(summary) = alert.annotations.get("summary") {
                body.push_str(&format!(" — {summary}"));
            }
            body.push('\n');
        }
    }
    Notification {
        key,
        action,
        severity: severity(&all),
        summary,
        body,
        labels,
    }
}
