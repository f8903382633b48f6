//! Grouping, deduplication and delivery (Alertmanager semantics).
//!
//! Each alert goes to the routes that match it and joins the group its route's `group_by`
//! labels select. A new group notifies after `group_wait`; afterwards it is looked at every
//! `group_interval` and notifies when its firing set changed or alerts resolved; an
//! unchanged firing group is notified again after `repeat_interval`. The notification log
//! (per group and receiver) is what makes repeated evaluations of the same alerts quiet.
//! Silenced and inhibited alerts are left out; expired silences are dropped. Deliveries
//! retry with exponential backoff until a deadline, but only failures the notifier marks
//! retryable.
//!
//! Every notification of a group (its firing, repeats and resolve) carries one key, the
//! group's: a hash of the receiver and the group key, the same in every process. A receiver
//! like PagerDuty uses it as the dedup key, so the resolve closes what the firing opened.
//!
//! Two kinds of time, each from one source the dispatcher reads itself: grouping timers are
//! durations on `tokio::time`, silences are wall time from the injected [`Clock`](deploy_core::time::Clock). With
//! [`TokioClock`](deploy_core::time::TokioClock) both move together under a paused runtime.

use std::collections::HashMap;

use rustc_hash::{FxHashMap, FxHashSet};
use std::hash::Hasher;
use std::sync::Arc;

use deploy_core::retry::RetryPolicy;
use deploy_core::time::{ClockExt, DynClock};
use deploy_core::{DynNotifier, IdempotencyKey, Notification, NotificationAction, Severity};
use tokio::time::Instant;

use crate::delivery::{default_retry, deliver};
use crate::error::AlertError;
use crate::labels::{Fingerprint, Labels};
use crate::route::Route;
use crate::rule::{Alert, AlertState};
use crate::suppress::{InhibitRule, Inhibitions, Silence, Silences};

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
    /// Readable key: route id and grouping labels.
    key: String,
    route: usize,
    alerts: FxHashSet<Fingerprint>,
    next_flush: Instant,
}

#[derive(Debug)]
struct Stored {
    alert: Alert,
    /// In the group of every route it matches: until a flush takes it out of one, an update
    /// in the same state needs no routing.
    grouped: bool,
}

#[derive(Debug, Clone, Copy)]
struct LogEntry {
    firing: u64,
    sent_at: Instant,
    /// The sequence number of the last notification sent for the group.
    sequence: u64,
}

/// Routes, groups, deduplicates and delivers alerts.
///
/// Its `Debug` shows receiver names and counts, never the notifiers (which hold secrets).
pub struct Dispatcher {
    routes: Vec<Route>,
    tree: Route,
    receivers: HashMap<String, Arc<DynNotifier>>,
    silences: Silences,
    inhibitions: Inhibitions,
    /// Wall time, for silences.
    clock: Arc<DynClock>,
    retry: RetryPolicy,
    // Keys are hashes already: FxHash is enough.
    alerts: FxHashMap<Fingerprint, Stored>,
    /// By group hash (route and grouping labels).
    groups: FxHashMap<u64, Group>,
    /// Per group (a group has one route, so one receiver).
    log: FxHashMap<u64, LogEntry>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut receivers: Vec<&String> = self.receivers.keys().collect();
        receivers.sort_unstable();
        f.debug_struct("Dispatcher")
            .field("routes", &self.routes.len())
            .field("receivers", &receivers)
            .field("silences", &self.silences.len())
            .field("inhibitions", &self.inhibitions.len())
            .field("alerts", &self.alerts.len())
            .field("groups", &self.groups.len())
            .finish_non_exhaustive()
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
    /// A dispatcher over a compiled routing tree and its receivers; `clock` is the wall
    /// time silences are scheduled in.
    pub fn new(tree: Route, receivers: HashMap<String, Arc<DynNotifier>>, clock: Arc<DynClock>) -> Self {
        let mut routes = Vec::new();
        flatten(&tree, &mut routes);
        Self {
            routes,
            tree,
            receivers,
            silences: Silences::default(),
            inhibitions: Inhibitions::default(),
            clock,
            retry: default_retry(),
            alerts: FxHashMap::default(),
            groups: FxHashMap::default(),
            log: FxHashMap::default(),
        }
    }

    /// Sets how deliveries are retried (default: 200 ms doubling up to 10 s, as many
    /// attempts as start within 60 s). Only failures the notifier marks retryable are
    /// retried; the notifiers themselves do not retry.
    ///
    /// # Errors
    /// [`AlertError::InvalidRetry`] for a policy that does not
    /// [validate](RetryPolicy::validate).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Result<Self, AlertError> {
        retry.validate().map_err(AlertError::InvalidRetry)?;
        self.retry = retry;
        Ok(self)
    }

    /// Adds an inhibition rule.
    pub fn add_inhibition(&mut self, rule: InhibitRule) {
        self.inhibitions.add(
            rule,
            self.alerts
                .iter()
                .map(|(fingerprint, stored)| (fingerprint, &stored.alert)),
        );
    }

    /// The alerts it holds (the last update of each, resolved ones until a flush drops
    /// them), in no particular order.
    pub fn alerts(&self) -> impl Iterator<Item = &Alert> + '_ {
        self.alerts.values().map(|stored| &stored.alert)
    }

    /// The silences it holds (expired ones until the next flush drops them), oldest first.
    pub fn silences(&self) -> impl Iterator<Item = &Silence> + '_ {
        self.silences.iter()
    }

    /// Adds a silence.
    pub fn add_silence(&mut self, silence: Silence) {
        self.silences.add(silence);
    }

    /// Ends a silence now (it is dropped); `false` if there is none with that id (an
    /// expired silence is dropped at the next flush).
    pub fn expire_silence(&mut self, id: &str) -> bool {
        self.silences.drop_where(|silence| silence.id == id)
    }

    /// Takes in an alert update (from a rule evaluation or an external source). A new
    /// value or annotations of a known alert in the same state are taken in place, and the
    /// alert is only routed again if a flush took it out of a group. A new group is due
    /// `group_wait` from now.
    pub fn receive(&mut self, alert: &Alert) {
        let fingerprint = alert.fingerprint();
        if let Some(known) = self.alerts.get_mut(&fingerprint)
            && known.alert.state == alert.state
        {
            // What rule evaluations mostly send: nothing allocated, inhibition unchanged.
            let stored = &mut known.alert;
            if stored.value.to_bits() != alert.value.to_bits() || stored.annotations != alert.annotations {
                stored.value = alert.value;
                stored.annotations.clone_from(&alert.annotations);
                stored.fired_at = alert.fired_at;
                stored.resolved_at = alert.resolved_at;
            }
            if known.grouped {
                return;
            }
        } else {
            let stored = Stored {
                alert: alert.clone(),
                grouped: false,
            };
            let before = self.alerts.insert(fingerprint, stored);
            self.inhibitions.update(
                fingerprint,
                before.as_ref().map(|before| &before.alert),
                Some(alert),
            );
        }
        let Self {
            tree,
            groups,
            routes,
            alerts,
            ..
        } = self;
        // Read once, and only when a group is new: most updates join a known group.
        let mut now = None;
        tree.for_each_match(&alert.labels, &mut |route| {
            let hash = route.group_hash(&alert.labels);
            let group = groups.entry(hash).or_insert_with(|| Group {
                key: route.group_key(&alert.labels),
                route: route.index,
                alerts: FxHashSet::default(),
                next_flush: *now.get_or_insert_with(Instant::now) + routes[route.index].group_wait,
            });
            group.alerts.insert(fingerprint);
        });
        if let Some(stored) = alerts.get_mut(&fingerprint) {
            stored.grouped = true;
        }
    }

    /// When the next group is due, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.groups.values().map(|group| group.next_flush).min()
    }

    /// Whether an alert is silenced or inhibited now.
    pub fn is_muted(&self, alert: &Alert) -> bool {
        let now = self.clock.now_utc();
        self.silences.mute(&alert.labels, now)
            || self.inhibitions.inhibits(alert, |fingerprint| {
                self.alerts.get(fingerprint).map(|stored| &stored.alert)
            })
    }

    /// Flushes every group that is due now, after dropping expired silences.
    pub async fn flush_due(&mut self) -> Vec<DeliveryRecord> {
        let wall = self.clock.now_utc();
        self.silences.drop_where(|silence| silence.ends_at <= wall);
        let now = Instant::now();
        let mut due: Vec<(Instant, u64)> = self
            .groups
            .iter()
            .filter(|(_, group)| group.next_flush <= now)
            .map(|(hash, group)| (group.next_flush, *hash))
            .collect();
        // Oldest first, then a stable order.
        due.sort_unstable();
        let mut records = Vec::new();
        for (_, hash) in due {
            records.extend(self.flush(hash, now).await);
        }
        records
    }

    async fn flush(&mut self, hash: u64, now: Instant) -> Option<DeliveryRecord> {
        let group = self.groups.get(&hash)?;
        let key = group.key.clone();
        let route = self.routes[group.route].clone();
        let mut fingerprints: Vec<Fingerprint> = group.alerts.iter().copied().collect();
        fingerprints.sort_unstable();
        // Mutable phase: which members are muted (which silences match is remembered).
        let wall = self.clock.now_utc();
        let mut visible = Vec::with_capacity(fingerprints.len());
        let alerts = &self.alerts;
        let stored = |fingerprint: &Fingerprint| alerts.get(fingerprint).map(|stored| &stored.alert);
        for fingerprint in &fingerprints {
            let Some(alert) = stored(fingerprint) else {
                continue;
            };
            if !self.silences.mute_stored(*fingerprint, &alert.labels, wall)
                && !self.inhibitions.inhibits(alert, stored)
            {
                visible.push(*fingerprint);
            }
        }
        // Shared phase: what to say.
        let firing: Vec<(Fingerprint, &Alert)> = visible
            .iter()
            .filter_map(|fingerprint| stored(fingerprint).map(|alert| (*fingerprint, alert)))
            .filter(|(_, alert)| alert.state == AlertState::Firing)
            .collect();
        let resolved: Vec<&Alert> = visible
            .iter()
            .filter_map(stored)
            .filter(|alert| alert.state == AlertState::Resolved)
            .collect();
        let firing_hash = set_hash(firing.iter().map(|(fingerprint, _)| fingerprint));
        let previous = self.log.get(&hash).copied();
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
            let firing_alerts: Vec<&Alert> = firing.iter().map(|(_, alert)| *alert).collect();
            // Counts up per group, and from the wall clock (in ms) so a restarted dispatcher
            // does not reuse numbers a receiver has already seen.
            let wall_ms = u64::try_from(self.clock.now_utc().timestamp_millis()).unwrap_or(0);
            let sequence = previous
                .map_or(0, |entry| entry.sequence.saturating_add(1))
                .max(wall_ms);
            let notification =
                notification(&key, &route.receiver, &firing_alerts, &resolved).with_sequence(sequence);
            let (attempts, error) = self.deliver(&route.receiver, &notification).await;
            if error.is_none() {
                self.log.insert(
                    hash,
                    LogEntry {
                        firing: firing_hash,
                        sent_at: now,
                        sequence,
                    },
                );
            }
            Some(DeliveryRecord {
                group: key.clone(),
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
        let resolved_members: Vec<Fingerprint> = fingerprints
            .iter()
            .copied()
            .filter(|fingerprint| {
                stored(fingerprint).is_some_and(|alert| alert.state == AlertState::Resolved)
            })
            .collect();
        if let Some(group) = self.groups.get_mut(&hash) {
            if delivered {
                for fingerprint in &resolved_members {
                    group.alerts.remove(fingerprint);
                    if let Some(stored) = self.alerts.get_mut(fingerprint) {
                        stored.grouped = false;
                    }
                }
            }
            group.next_flush = now + route.group_interval;
            if group.alerts.is_empty() {
                self.groups.remove(&hash);
                self.log.remove(&hash);
            }
        }
        for fingerprint in resolved_members {
            if !self
                .groups
                .values()
                .any(|group| group.alerts.contains(&fingerprint))
            {
                let removed = self.alerts.remove(&fingerprint);
                self.inhibitions
                    .update(fingerprint, removed.as_ref().map(|removed| &removed.alert), None);
                self.silences.forget(fingerprint);
            }
        }
        record
    }

    /// Sends with retries on retryable failures, as the policy allows.
    async fn deliver(&self, receiver: &str, notification: &Notification) -> (u32, Option<String>) {
        let Some(notifier) = self.receivers.get(receiver) else {
            return (0, Some(format!("no notifier for receiver `{receiver}`")));
        };
        let (attempts, result) = deliver(notifier.as_ref(), notification, &self.retry).await;
        (attempts, result.err().map(|error| error.to_string()))
    }
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

/// The key of every notification of `group` (a route's group key) to `receiver`: the same
/// for its firing, repeats and resolve, in every process (FNV-1a, like fingerprints).
fn group_dedup_key(receiver: &str, group: &str) -> IdempotencyKey {
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(receiver.as_bytes());
    hasher.write_u8(0xff);
    hasher.write(group.as_bytes());
    IdempotencyKey::new(format!("group/{:016x}", hasher.finish()))
        .unwrap_or_else(|_| unreachable!("a hash makes a valid key"))
}

fn notification(group: &str, receiver: &str, firing: &[&Alert], resolved: &[&Alert]) -> Notification {
    let key = group_dedup_key(receiver, group);
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
        sequence: 0,
        severity: severity(&all),
        summary,
        body,
        labels,
    }
}
