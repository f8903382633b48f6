//! [`IncidentManager`]: incidents in a record store, changed by compare-and-swap, escalated
//! and notified.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deploy_core::retry::RetryPolicy;
use deploy_core::time::{ClockExt, DynClock, SystemClock};
use deploy_core::{
    DynNotifier, DynRecordStore, IdempotencyKey, Notification, NotificationAction, Precondition,
    RecordStoreExt, StoreError, WriteOptions,
};

use super::model::{
    EscalationPolicy, EscalationState, Incident, IncidentStatus, IncidentTimelineEntry, IncidentUpdate,
    NewIncident, Postmortem,
};
use crate::delivery::{default_retry, deliver};
use crate::error::IncidentError;

/// Options of an [`IncidentManager`].
#[derive(Debug, Clone)]
pub struct IncidentOptions {
    /// Key prefix in the store (default `incidents/`).
    pub prefix: String,
    /// The wall clock incidents are stamped with (default [`SystemClock`]).
    pub clock: Arc<DynClock>,
    /// How long after resolution a post-mortem is due (default 5 days).
    pub postmortem_after: Duration,
    /// The post-mortem document template.
    pub postmortem_template: String,
    /// How notifications and pages are retried (default: 200 ms doubling up to 10 s, as
    /// many attempts as start within 60 s); the notifier itself does not retry.
    pub retry: RetryPolicy,
}

impl Default for IncidentOptions {
    fn default() -> Self {
        Self {
            prefix: "incidents/".into(),
            clock: SystemClock::shared(),
            postmortem_after: Duration::from_secs(5 * 24 * 3600),
            postmortem_template:
                "## Summary\n\n## Impact\n\n## Timeline\n\n## Root cause\n\n## Action items\n".into(),
            retry: default_retry(),
        }
    }
}

/// Opens, updates and escalates incidents.
#[derive(Debug)]
pub struct IncidentManager {
    store: Arc<DynRecordStore>,
    notifier: Arc<DynNotifier>,
    policies: BTreeMap<String, EscalationPolicy>,
    options: IncidentOptions,
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
        format!("{}items/{id}", self.options.prefix)
    }

    fn index_key(&self, dedup: &IdempotencyKey) -> String {
        format!("{}by-key/{dedup}", self.options.prefix)
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
            {
                return self
                    .change(id, |incident, now| {
                        incident.triggers += 1;
                        incident.timeline.push(IncidentTimelineEntry {
                            at: now,
                            actor: actor.into(),
                            what: "re-triggered".into(),
                        });
                        Ok(Vec::new())
                    })
                    .await;
            }
            let incident = self.insert(actor, &dedup, &new, policy.clone()).await?;
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
                match error {
                    StoreError::Conflict { .. } => {
                        dropped?;
                        continue;
                    }
                    error => return Err(error.into()),
                }
            }
            let mut notifications = vec![self.notification(&incident, NotificationAction::Trigger, "opened")];
            if let Some(escalation) = &incident.escalation {
                notifications.push(self.page(&incident, escalation));
            }
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
            // A delay too long to represent never escalates further.
            next_at: after(now, policy.levels[0].delay),
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
            roles: BTreeMap::new(),
            timeline: vec![IncidentTimelineEntry {
                at: now,
                actor: actor.into(),
                what: "triggered".into(),
            }],
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
                IncidentUpdate::Resolve => {
                    transition(incident, IncidentStatus::Resolved)?;
                    incident.resolved_at = Some(now);
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
                    ("resolved".to_owned(), Some(NotificationAction::Resolve))
                }
                IncidentUpdate::Close => {
                    transition(incident, IncidentStatus::Closed)?;
                    ("closed".to_owned(), None)
                }
                IncidentUpdate::Reopen => {
                    transition(incident, IncidentStatus::Triggered)?;
                    incident.resolved_at = None;
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
            incident.timeline.push(IncidentTimelineEntry {
                at: now,
                actor: actor.into(),
                what: what.clone(),
            });
            Ok(action.map(|action| (action, what)).into_iter().collect())
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
    /// Store errors.
    pub async fn list(&self) -> Result<Vec<Incident>, IncidentError> {
        let prefix = format!("{}items/", self.options.prefix);
        let mut incidents: Vec<Incident> = self
            .store
            .list_json::<Incident>(&prefix)
            .await?
            .into_iter()
            .map(|(_, incident, _)| incident)
            .collect();
        incidents.sort_by_key(|incident| incident.created_at);
        Ok(incidents)
    }

    /// Pages the next escalation level of every unacknowledged incident that is due; returns
    /// the ids escalated.
    ///
    /// # Errors
    /// Store errors.
    pub async fn escalate_due(&self) -> Result<Vec<String>, IncidentError> {
        let now = self.now();
        let mut escalated = Vec::new();
        for incident in self.list().await? {
            let due = incident
                .escalation
                .as_ref()
                .and_then(|escalation| escalation.next_at)
                .is_some_and(|at| at <= now);
            if !due || incident.status != IncidentStatus::Triggered {
                continue;
            }
            // Whether the last run of the change escalated (it may run again on a conflict).
            let mut paged = false;
            let updated = self
                .change(&incident.id, |incident, now| {
                    paged = false;
                    let Some(escalation) = incident.escalation.as_mut() else {
                        return Ok(Vec::new());
                    };
                    let mut next = escalation.level + 1;
                    if next == escalation.policy.levels.len() {
                        if escalation.loops_done >= escalation.policy.loops {
                            escalation.next_at = None;
                            return Ok(Vec::new());
                        }
                        escalation.loops_done += 1;
                        next = 0;
                    }
                    escalation.level = next;
                    escalation.next_at = after(now, escalation.policy.levels[next].delay);
                    paged = true;
                    let what = format!(
                        "escalated to level {} ({})",
                        next + 1,
                        escalation.policy.levels[next].targets.join(", ")
                    );
                    incident.timeline.push(IncidentTimelineEntry {
                        at: now,
                        actor: "system".into(),
                        what,
                    });
                    Ok(vec![(NotificationAction::Trigger, "escalated".into())])
                })
                .await?;
            // The level escalated to is paged even when its delay means it is the last.
            if let Some(escalation) = &updated.escalation
                && paged
            {
                self.send(vec![self.page(&updated, escalation)]).await;
                escalated.push(updated.id.clone());
            }
        }
        Ok(escalated)
    }

    /// Read-modify-write with compare-and-swap; `apply` returns the notifications to send
    /// (action, what) once the write landed. It runs again on a conflict, so only the last
    /// run's notifications are sent.
    async fn change(
        &self,
        id: &str,
        mut apply: impl FnMut(
            &mut Incident,
            DateTime<Utc>,
        ) -> Result<Vec<(NotificationAction, String)>, IncidentError>
        + Send,
    ) -> Result<Incident, IncidentError> {
        let mut notifications = Vec::new();
        let unknown = || IncidentError::UnknownIncident(id.to_owned());
        let (incident, _) = self
            .store
            .update_json::<Incident, IncidentError>(&self.key(id), WriteOptions::default(), |current| {
                let mut incident = current.ok_or_else(unknown)?;
                notifications = apply(&mut incident, self.now())?;
                Ok(Some(incident))
            })
            .await?
            .ok_or_else(unknown)?;
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
            severity: incident.severity,
            summary: format!("[{:?}] {}: {what}", incident.severity, incident.title),
            body: format!("incident {} is {:?}", incident.id, incident.status),
            labels: [("incident".to_owned(), incident.id.clone())].into(),
        }
    }

    fn page(&self, incident: &Incident, escalation: &EscalationState) -> Notification {
        let level = &escalation.policy.levels[escalation.level];
        // Each page is a new event for the people paged: its own key.
        let key = format!(
            "{}/page/{}/{}",
            incident.id, escalation.loops_done, escalation.level
        );
        Notification {
            key: IdempotencyKey::new(key).unwrap_or_else(|_| incident.dedup_key.clone()),
            action: NotificationAction::Trigger,
            severity: incident.severity,
            summary: format!("page level {}: {}", escalation.level + 1, incident.title),
            body: format!("paging {}", level.targets.join(", ")),
            labels: [
                ("incident".to_owned(), incident.id.clone()),
                ("escalation_level".to_owned(), (escalation.level + 1).to_string()),
                ("targets".to_owned(), level.targets.join(",")),
            ]
            .into(),
        }
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
