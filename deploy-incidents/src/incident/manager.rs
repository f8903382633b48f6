//! [`IncidentManager`]: incidents in a record store, changed by compare-and-swap, escalated
//! and notified.
//!
//! Key layout: `incidents/items/<id>` (the incident), `incidents/by-key/<dedup key>` (the id
//! of the latest incident with that key) and `incidents/open/<id>` (an empty marker while it
//! is open, so escalation reads open incidents only). To keep several managers apart in one
//! store, give each a [`Prefixed`](deploy_core::store::Prefixed) store.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deploy_core::retry::RetryPolicy;
use deploy_core::time::{ClockExt, DynClock, SystemClock};
use deploy_core::{
    DynNotifier, DynRecordStore, IdempotencyKey, Notification, NotificationAction, Precondition,
    RecordStoreExt, RecordVersion, StoreError, WriteOptions,
};

use super::model::{
    EscalationPolicy, EscalationState, Incident, IncidentStatus, IncidentTimelineEntry, IncidentUpdate,
    NewIncident, Postmortem,
};
use crate::delivery::{default_retry, deliver};
use crate::error::IncidentError;

const ITEMS: &str = "incidents/items/";
const BY_KEY: &str = "incidents/by-key/";
const OPEN: &str = "incidents/open/";
/// What a re-trigger writes in the timeline; a run of them is one entry with a count.
const RETRIGGERED: &str = "re-triggered";

/// Options of an [`IncidentManager`].
#[derive(Debug, Clone)]
pub struct IncidentOptions {
    /// The wall clock incidents are stamped with (default [`SystemClock`]).
    pub clock: Arc<DynClock>,
    /// How long after resolution a post-mortem is due (default 5 days).
    pub postmortem_after: Duration,
    /// The post-mortem document template.
    pub postmortem_template: String,
    /// How notifications and pages are retried (default: 200 ms doubling up to 10 s, as
    /// many attempts as start within 60 s); the notifier itself does not retry.
    pub retry: RetryPolicy,
    /// How long a resolved (or closed) incident is kept after its resolution before
    /// [`IncidentManager::prune`] deletes it (default 90 days; `Duration::MAX` keeps all).
    pub retention: Duration,
}

impl Default for IncidentOptions {
    fn default() -> Self {
        Self {
            clock: SystemClock::shared(),
            postmortem_after: Duration::from_secs(5 * 24 * 3600),
            postmortem_template:
                "## Summary\n\n## Impact\n\n## Timeline\n\n## Root cause\n\n## Action items\n".into(),
            retry: default_retry(),
            retention: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// Opens, updates, escalates and prunes incidents.
///
/// Its `Debug` leaves out the store and the notifier (which may hold credentials).
pub struct IncidentManager {
    store: Arc<DynRecordStore>,
    notifier: Arc<DynNotifier>,
    policies: BTreeMap<String, EscalationPolicy>,
    options: IncidentOptions,
}

impl std::fmt::Debug for IncidentManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncidentManager")
            .field("policies", &self.policies.keys().collect::<Vec<_>>())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// `now + duration`, or `None` when that is past what `chrono` can represent (a delay of
/// `Duration::MAX` means "never"). Checked: no configured duration can panic here.
fn after(now: DateTime<Utc>, duration: Duration) -> Option<DateTime<Utc>> {
    chrono::Duration::from_std(duration)
        .ok()
        .and_then(|delta| now.checked_add_signed(delta))
}

/// `now + duration`, saturating at the latest representable instant.
fn after_saturating(now: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    after(now, duration).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl IncidentManager {
    /// A manager keeping incidents in `store` and notifying through `notifier`.
    ///
    /// # Errors
    /// [`IncidentError::InvalidRetry`] when `options.retry` does not
    /// [validate](RetryPolicy::validate).
    pub fn new(
        store: Arc<DynRecordStore>,
        notifier: Arc<DynNotifier>,
        options: IncidentOptions,
    ) -> Result<Self, IncidentError> {
        options.retry.validate().map_err(IncidentError::InvalidRetry)?;
        Ok(Self {
            store,
            notifier,
            policies: BTreeMap::new(),
            options,
        })
    }

    /// Registers an escalation policy.
    ///
    /// # Errors
    /// [`IncidentError::InvalidPolicy`] for a policy without levels.
    pub fn add_policy(&mut self, policy: EscalationPolicy) -> Result<(), IncidentError> {
        if policy.levels.is_empty() {
            return Err(IncidentError::InvalidPolicy {
                policy: policy.name,
                reason: "it has no levels".into(),
            });
        }
        self.policies.insert(policy.name.clone(), policy);
        Ok(())
    }

    fn now(&self) -> DateTime<Utc> {
        self.options.clock.now_utc()
    }

    fn key(&self, id: &str) -> String {
        format!("{ITEMS}{id}")
    }

    fn index_key(&self, dedup: &IdempotencyKey) -> String {
        format!("{BY_KEY}{dedup}")
    }

    fn open_key(&self, id: &str) -> String {
        format!("{OPEN}{id}")
    }

    /// Opens an incident, or attaches the trigger to the open incident with the same key.
    ///
    /// Two managers triggering the same key at once open one incident: the dedup index is
    /// only pointed at a new incident if it is still as read, and the loser drops its own
    /// and attaches to the winner's.
    ///
    /// # Errors
    /// An invalid dedup key, an unknown escalation policy, store errors.
    pub async fn create_incident(&self, actor: &str, new: NewIncident) -> Result<Incident, IncidentError> {
        let dedup = IdempotencyKey::new(new.dedup_key.clone())
            .map_err(|error| IncidentError::InvalidDedupKey(error.to_string()))?;
        let policy = match &new.escalation_policy {
            None => None,
            Some(name) => {
                Some(
                    self.policies
                        .get(name)
                        .cloned()
                        .ok_or_else(|| IncidentError::InvalidPolicy {
                            policy: name.clone(),
                            reason: "not registered".into(),
                        })?,
                )
            }
        };
        let index_key = self.index_key(&dedup);
        loop {
            let index = self.store.get_json::<String>(&index_key).await?;
            if let Some((id, _)) = &index
                && let Some((incident, _)) = self.store.get_json::<Incident>(&self.key(id)).await?
                && incident.status.is_open()
                // An entry pointing at another key's incident is stale: replaced below.
                && incident.dedup_key == dedup
            {
                return self
                    .change(id, |incident, now| {
                        incident.triggers = incident.triggers.saturating_add(1);
                        match incident.timeline.last_mut() {
                            Some(last) if last.what == RETRIGGERED && last.actor == actor => {
                                last.at = now;
                                last.repeats = last.repeats.saturating_add(1);
                            }
                            _ => incident
                                .timeline
                                .push(IncidentTimelineEntry::new(now, actor, RETRIGGERED)),
                        }
                        Ok(Some(Vec::new()))
                    })
                    .await;
            }
            let incident = self.insert(actor, &dedup, &new, policy.clone()).await?;
            // Marked open before it is indexed: every open incident has its marker (a stale
            // marker is dropped by `escalate_due`).
            if let Err(error) = self
                .store
                .create(&self.open_key(&incident.id), Default::default())
                .await
            {
                let _ = self.store.delete(&self.key(&incident.id)).await;
                return Err(error.into());
            }
            let unchanged = index.map_or(Precondition::Absent, |(_, version)| {
                Precondition::Version(version)
            });
            let claimed = self
                .store
                .put_json(&index_key, &incident.id, WriteOptions::when(unchanged))
                .await;
            if let Err(error) = claimed {
                // Not indexed, it would escalate unseen: take it back (best effort if the
                // store is failing), then attach to the winner or report the failure.
                let dropped = self.store.delete(&self.key(&incident.id)).await;
                let _ = self.store.delete(&self.open_key(&incident.id)).await;
                match error {
                    StoreError::Conflict { .. } => {
                        dropped?;
                        continue;
                    }
                    error => return Err(error.into()),
                }
            }
            let mut notifications = vec![self.notification(&incident, NotificationAction::Trigger, "opened")];
            notifications.extend(
                incident
                    .escalation
                    .as_ref()
                    .and_then(|escalation| self.page(&incident, escalation)),
            );
            self.send(notifications).await;
            return Ok(incident);
        }
    }

    /// Writes a new incident under a fresh id; nothing is notified yet.
    async fn insert(
        &self,
        actor: &str,
        dedup: &IdempotencyKey,
        new: &NewIncident,
        policy: Option<EscalationPolicy>,
    ) -> Result<Incident, IncidentError> {
        let now = self.now();
        let escalation = policy.map(|policy| EscalationState {
            // A delay too long to represent never escalates further (registered policies
            // have levels).
            next_at: policy.levels.first().and_then(|level| after(now, level.delay)),
            policy,
            level: 0,
            loops_done: 0,
        });
        let mut incident = Incident {
            id: String::new(),
            dedup_key: dedup.clone(),
            title: new.title.clone(),
            severity: new.severity,
            status: IncidentStatus::Triggered,
            created_at: now,
            acknowledged_at: None,
            resolved_at: None,
            resolution: None,
            roles: BTreeMap::new(),
            timeline: vec![IncidentTimelineEntry::new(now, actor, "triggered")],
            escalation,
            postmortem: None,
            triggers: 1,
        };
        // Ids are time-ordered; two incidents in one millisecond take the next suffix.
        let base = rand_suffix(dedup, now);
        for attempt in 0u16.. {
            incident.id = format!(
                "inc-{}-{:04x}",
                now.format("%Y%m%d%H%M%S%3f"),
                base.wrapping_add(attempt)
            );
            match self
                .store
                .put_json(
                    &self.key(&incident.id),
                    &incident,
                    WriteOptions::when(Precondition::Absent),
                )
                .await
            {
                Ok(_) => break,
                Err(StoreError::Conflict { .. }) if attempt < u16::MAX => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Ok(incident)
    }

    /// Applies a change.
    ///
    /// # Errors
    /// [`IncidentError::InvalidTransition`] (nothing is written), unknown incident or action
    /// item, store errors.
    pub async fn update_incident(
        &self,
        actor: &str,
        id: &str,
        update: IncidentUpdate,
    ) -> Result<Incident, IncidentError> {
        let postmortem_after = self.options.postmortem_after;
        let template = self.options.postmortem_template.clone();
        self.change(id, |incident, now| {
            let transition = |incident: &mut Incident, to: IncidentStatus| {
                if !incident.status.can_become(to) {
                    return Err(IncidentError::InvalidTransition {
                        id: incident.id.clone(),
                        from: incident.status,
                        to,
                    });
                }
                incident.status = to;
                Ok(())
            };
            let (what, action) = match &update {
                IncidentUpdate::Acknowledge => {
                    transition(incident, IncidentStatus::Acknowledged)?;
                    incident.acknowledged_at.get_or_insert(now);
                    if let Some(escalation) = &mut incident.escalation {
                        escalation.next_at = None;
                    }
                    ("acknowledged".to_owned(), Some(NotificationAction::Acknowledge))
                }
                IncidentUpdate::Mitigate => {
                    transition(incident, IncidentStatus::Mitigated)?;
                    ("mitigated".to_owned(), None)
                }
                IncidentUpdate::Resolve | IncidentUpdate::ResolveWithSummary(_) => {
                    transition(incident, IncidentStatus::Resolved)?;
                    incident.resolved_at = Some(now);
                    incident.resolution = match &update {
                        IncidentUpdate::ResolveWithSummary(summary) if !summary.trim().is_empty() => {
                            Some(summary.trim().to_owned())
                        }
                        _ => None,
                    };
                    if let Some(escalation) = &mut incident.escalation {
                        escalation.next_at = None;
                    }
                    if incident.postmortem.is_none() {
                        incident.postmortem = Some(Postmortem {
                            due: after_saturating(now, postmortem_after),
                            template: template.clone(),
                            action_items: Vec::new(),
                        });
                    }
                    let what = match &incident.resolution {
                        Some(summary) => format!("resolved: {summary}"),
                        None => "resolved".to_owned(),
                    };
                    (what, Some(NotificationAction::Resolve))
                }
                IncidentUpdate::Close => {
                    transition(incident, IncidentStatus::Closed)?;
                    ("closed".to_owned(), None)
                }
                IncidentUpdate::Reopen => {
                    transition(incident, IncidentStatus::Triggered)?;
                    incident.resolved_at = None;
                    incident.resolution = None;
                    ("reopened".to_owned(), Some(NotificationAction::Trigger))
                }
                IncidentUpdate::Severity(severity) => {
                    let what = format!("severity {:?} -> {severity:?}", incident.severity);
                    incident.severity = *severity;
                    (what, Some(NotificationAction::Trigger))
                }
                IncidentUpdate::AssignRole { role, person } => {
                    incident.roles.insert(role.clone(), person.clone());
                    (format!("{role}: {person}"), None)
                }
                IncidentUpdate::Note(text) => (format!("note: {text}"), None),
                IncidentUpdate::AddActionItem(item) => {
                    let postmortem = incident.postmortem.get_or_insert_with(|| Postmortem {
                        due: after_saturating(now, postmortem_after),
                        template: template.clone(),
                        action_items: Vec::new(),
                    });
                    postmortem.action_items.push(item.clone());
                    (format!("action item: {} ({})", item.title, item.owner), None)
                }
                IncidentUpdate::CompleteActionItem(index) => {
                    let item = incident
                        .postmortem
                        .as_mut()
                        .and_then(|postmortem| postmortem.action_items.get_mut(*index))
                        .ok_or_else(|| IncidentError::UnknownActionItem {
                            id: incident.id.clone(),
                            index: *index,
                        })?;
                    item.done = true;
                    (format!("action item done: {}", item.title), None)
                }
            };
            incident
                .timeline
                .push(IncidentTimelineEntry::new(now, actor, &what));
            Ok(Some(action.map(|action| (action, what)).into_iter().collect()))
        })
        .await
    }

    /// Resolves an incident.
    ///
    /// # Errors
    /// As [`IncidentManager::update_incident`].
    pub async fn resolve_incident(&self, actor: &str, id: &str) -> Result<Incident, IncidentError> {
        self.update_incident(actor, id, IncidentUpdate::Resolve).await
    }

    /// Resolves an incident with a summary of what was done
    /// ([`IncidentUpdate::ResolveWithSummary`]): kept as [`Incident::resolution`] and written
    /// in the timeline.
    ///
    /// # Errors
    /// As [`IncidentManager::update_incident`].
    pub async fn resolve_with_summary(
        &self,
        actor: &str,
        id: &str,
        summary: &str,
    ) -> Result<Incident, IncidentError> {
        self.update_incident(actor, id, IncidentUpdate::ResolveWithSummary(summary.to_owned()))
            .await
    }

    /// An incident by id.
    ///
    /// # Errors
    /// Unknown incident, store errors.
    pub async fn get(&self, id: &str) -> Result<Incident, IncidentError> {
        self.store
            .get_json::<Incident>(&self.key(id))
            .await?
            .map(|(incident, _)| incident)
            .ok_or_else(|| IncidentError::UnknownIncident(id.to_owned()))
    }

    /// Every incident, oldest first.
    ///
    /// # Errors
    /// Store errors; [`StoreError::Codec`] naming a stored record that is not an incident.
    pub async fn list(&self) -> Result<Vec<Incident>, IncidentError> {
        let mut incidents: Vec<Incident> = self
            .store
            .list_json::<Incident>(ITEMS)
            .await?
            .into_iter()
            .map(|(_, incident, _)| incident)
            .collect();
        incidents.sort_by_key(|incident| incident.created_at);
        Ok(incidents)
    }

    /// Pages the next escalation level of every unacknowledged open incident that is due;
    /// returns the ids escalated. Only open incidents are read.
    ///
    /// An incident whose stored record cannot be escalated (undecodable, or an escalation
    /// state pointing past its policy's levels: [`IncidentError::InvalidRecord`]) is logged
    /// and skipped; the others are escalated.
    ///
    /// # Errors
    /// Store errors listing the open incidents.
    pub async fn escalate_due(&self) -> Result<Vec<String>, IncidentError> {
        let mut escalated = Vec::new();
        for record in self.store.list(OPEN).await? {
            let Some(id) = record.key.strip_prefix(OPEN) else {
                continue;
            };
            let stale = match self.escalate(id).await {
                Ok((incident, paged)) => {
                    if paged {
                        escalated.push(id.to_owned());
                    }
                    !incident.status.is_open()
                }
                Err(IncidentError::UnknownIncident(_)) => true,
                Err(error) => {
                    tracing::warn!(%error, incident = id, "cannot escalate; skipped");
                    false
                }
            };
            if stale {
                // Left by a failed clean-up. Conditional: a reopen rewrites the marker.
                let _ = self.delete_if(&record.key, record.version).await;
            }
        }
        Ok(escalated)
    }

    /// Escalates one incident if it is due; the incident and whether it paged.
    async fn escalate(&self, id: &str) -> Result<(Incident, bool), IncidentError> {
        let invalid = |reason: String| IncidentError::InvalidRecord {
            id: id.to_owned(),
            reason,
        };
        // Whether the last run of the change escalated (it may run again on a conflict).
        let mut paged = false;
        let updated = self
            .change(id, |incident, now| {
                paged = false;
                let Some(escalation) = incident.escalation.as_mut() else {
                    return Ok(None);
                };
                let due = escalation.next_at.is_some_and(|at| at <= now);
                if !due || incident.status != IncidentStatus::Triggered {
                    return Ok(None);
                }
                let levels = &escalation.policy.levels;
                if escalation.level >= levels.len() {
                    return Err(invalid(format!(
                        "escalation level {} of a policy with {} level(s)",
                        escalation.level,
                        levels.len()
                    )));
                }
                let mut next = escalation.level + 1;
                if next == levels.len() {
                    if escalation.loops_done >= escalation.policy.loops {
                        escalation.next_at = None;
                        return Ok(Some(Vec::new()));
                    }
                    escalation.loops_done += 1;
                    next = 0;
                }
                let level = &levels[next];
                let what = format!("escalated to level {} ({})", next + 1, level.targets.join(", "));
                escalation.next_at = after(now, level.delay);
                escalation.level = next;
                paged = true;
                incident
                    .timeline
                    .push(IncidentTimelineEntry::new(now, "system", &what));
                Ok(Some(vec![(NotificationAction::Trigger, "escalated".into())]))
            })
            .await?;
        // The level escalated to is paged even when its delay means it is the last.
        if paged && let Some(escalation) = &updated.escalation {
            self.send(self.page(&updated, escalation).into_iter().collect())
                .await;
        }
        Ok((updated, paged))
    }

    /// Store upkeep; run it now and then (daily, say), and once after upgrading from 0.1.
    /// Deletes the resolved and closed incidents whose resolution is older than
    /// [`IncidentOptions::retention`], with their dedup index entries, and returns their
    /// ids; nothing else removes incidents. Marks open incidents that have no open marker
    /// (written by 0.1, or a marker write failed), so `escalate_due` sees them.
    ///
    /// An incident changed meanwhile (reopened, say) is kept: each delete is conditional on
    /// the version read.
    ///
    /// # Errors
    /// Store errors; [`StoreError::Codec`] naming a stored record that is not an incident.
    pub async fn prune(&self) -> Result<Vec<String>, IncidentError> {
        let Some(cutoff) = chrono::Duration::from_std(self.options.retention)
            .ok()
            .and_then(|retention| self.now().checked_sub_signed(retention))
        else {
            return Ok(Vec::new());
        };
        let marked: HashSet<String> = self
            .store
            .list(OPEN)
            .await?
            .into_iter()
            .map(|record| record.key)
            .collect();
        let mut pruned = Vec::new();
        for (key, incident, version) in self.store.list_json::<Incident>(ITEMS).await? {
            let expired =
                !incident.status.is_open() && incident.resolved_at.is_some_and(|resolved| resolved <= cutoff);
            let id = key.strip_prefix(ITEMS).unwrap_or(&key);
            let marker = self.open_key(id);
            if incident.status.is_open() && !marked.contains(&marker) {
                // Conditional: a concurrent change may have marked it; a failure is retried
                // at the next run.
                let _ = self.store.create(&marker, Default::default()).await;
            }
            if expired && self.delete_if(&key, version).await? {
                // An index entry left behind (unreadable, or the store failed) is harmless:
                // the next trigger of its key finds no incident and replaces it.
                let index_key = self.index_key(&incident.dedup_key);
                if let Ok(Some((indexed, version))) = self.store.get_json::<String>(&index_key).await
                    && indexed == id
                {
                    let _ = self.delete_if(&index_key, version).await;
                }
                pruned.push(id.to_owned());
            }
        }
        Ok(pruned)
    }

    /// Deletes `key` if it is still at `version`; whether it did.
    async fn delete_if(&self, key: &str, version: RecordVersion) -> Result<bool, StoreError> {
        match self
            .store
            .delete_opts(key, WriteOptions::when(Precondition::Version(version)))
            .await
        {
            Err(StoreError::Conflict { .. }) => Ok(false),
            deleted => deleted,
        }
    }

    /// Read-modify-write with compare-and-swap; `apply` returns the notifications to send
    /// (action, what) once the write landed, or `None` to leave the incident as it is. It
    /// runs again on a conflict, so only the last run's notifications are sent. The open
    /// marker follows the status (a failure to update it is logged: `escalate_due` drops a
    /// stale one).
    async fn change(
        &self,
        id: &str,
        mut apply: impl FnMut(
            &mut Incident,
            DateTime<Utc>,
        ) -> Result<Option<Vec<(NotificationAction, String)>>, IncidentError>
        + Send,
    ) -> Result<Incident, IncidentError> {
        let mut notifications = Vec::new();
        let mut was_open = false;
        let unknown = || IncidentError::UnknownIncident(id.to_owned());
        let (incident, _) = self
            .store
            .update_json::<Incident, IncidentError>(&self.key(id), WriteOptions::default(), |current| {
                let mut incident = current.ok_or_else(unknown)?;
                was_open = incident.status.is_open();
                let Some(sent) = apply(&mut incident, self.now())? else {
                    notifications.clear();
                    return Ok(None);
                };
                notifications = sent;
                Ok(Some(incident))
            })
            .await?
            .ok_or_else(unknown)?;
        let marker = self.open_key(id);
        let marked = match (was_open, incident.status.is_open()) {
            (false, true) => self.store.put(&marker, Default::default()).await.map(drop),
            (true, false) => self.store.delete(&marker).await.map(drop),
            _ => Ok(()),
        };
        if let Err(error) = marked {
            tracing::warn!(%error, incident = id, "cannot update the open-incident marker");
        }
        let notifications = notifications
            .into_iter()
            .map(|(action, what)| self.notification(&incident, action, &what))
            .collect();
        self.send(notifications).await;
        Ok(incident)
    }

    fn notification(&self, incident: &Incident, action: NotificationAction, what: &str) -> Notification {
        Notification {
            key: incident.dedup_key.clone(),
            action,
            // Each notification about an incident follows a timeline entry: a reopened
            // incident's trigger is a new notification.
            sequence: u64::try_from(incident.timeline.len()).unwrap_or(u64::MAX),
            severity: incident.severity,
            summary: format!("[{:?}] {}: {what}", incident.severity, incident.title),
            body: format!("incident {} is {:?}", incident.id, incident.status),
            labels: [("incident".to_owned(), incident.id.clone())].into(),
        }
    }

    /// The page of the level `escalation` is at (`None` if the policy has no such level).
    fn page(&self, incident: &Incident, escalation: &EscalationState) -> Option<Notification> {
        let level = escalation.policy.levels.get(escalation.level)?;
        // Each page is a new event for the people paged: its own key.
        let key = format!(
            "{}/page/{}/{}",
            incident.id, escalation.loops_done, escalation.level
        );
        Some(Notification {
            key: IdempotencyKey::new(key).unwrap_or_else(|_| incident.dedup_key.clone()),
            action: NotificationAction::Trigger,
            sequence: 0,
            severity: incident.severity,
            summary: format!("page level {}: {}", escalation.level + 1, incident.title),
            body: format!("paging {}", level.targets.join(", ")),
            labels: [
                ("incident".to_owned(), incident.id.clone()),
                ("escalation_level".to_owned(), (escalation.level + 1).to_string()),
                ("targets".to_owned(), level.targets.join(",")),
            ]
            .into(),
        })
    }

    async fn send(&self, notifications: Vec<Notification>) {
        for notification in notifications {
            let (attempts, result) =
                deliver(self.notifier.as_ref(), &notification, &self.options.retry).await;
            if let Err(error) = result {
                tracing::warn!(%error, attempts, key = %notification.key, "incident notification failed");
            }
        }
    }
}

/// A short suffix that keeps ids unique when two incidents open in the same millisecond.
fn rand_suffix(dedup: &IdempotencyKey, now: DateTime<Utc>) -> u16 {
    use std::hash::Hasher;
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(dedup.as_str().as_bytes());
    hasher.write_i64(now.timestamp_nanos_opt().unwrap_or_default());
    (hasher.finish() & 0xffff) as u16
}
