//! What an incident is: its status machine, timeline, escalation state and post-mortem, and
//! the inputs that open and change one.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deploy_core::{IdempotencyKey, Severity};
use serde::{Deserialize, Serialize};

/// Where an incident stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentStatus {
    /// Opened; nobody has taken it yet.
    Triggered,
    /// Someone is on it.
    Acknowledged,
    /// Users are no longer hurt; the cause may remain.
    Mitigated,
    /// Over.
    Resolved,
    /// Reviewed and filed.
    Closed,
}

impl IncidentStatus {
    pub(crate) fn can_become(self, next: IncidentStatus) -> bool {
        use IncidentStatus::*;
        matches!(
            (self, next),
            (Triggered, Acknowledged | Mitigated | Resolved)
                | (Acknowledged, Mitigated | Resolved)
                | (Mitigated, Acknowledged | Resolved)
                | (Resolved, Closed | Triggered)
                | (Closed, Triggered)
        )
    }

    /// Whether the incident is still open (a re-trigger attaches to it).
    pub fn is_open(self) -> bool {
        matches!(self, Self::Triggered | Self::Acknowledged | Self::Mitigated)
    }
}

/// One line of an incident's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentTimelineEntry {
    /// When (the last time, for a repeated entry).
    pub at: DateTime<Utc>,
    /// Who (a person, or `system`).
    pub actor: String,
    /// What happened.
    pub what: String,
    /// How many more times it happened right after (re-triggers in a row are one entry, so
    /// a flapping alert does not grow the record).
    #[serde(default)]
    pub repeats: u32,
}

impl IncidentTimelineEntry {
    pub(crate) fn new(at: DateTime<Utc>, actor: &str, what: &str) -> Self {
        Self {
            at,
            actor: actor.to_owned(),
            what: what.to_owned(),
            repeats: 0,
        }
    }
}

/// Levels notified in turn while an incident stays unacknowledged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EscalationPolicy {
    /// Its name.
    pub name: String,
    /// Levels in order; each waits its delay for an acknowledgement before the next.
    pub levels: Vec<EscalationLevel>,
    /// How many times the whole list repeats after the first pass.
    pub loops: u32,
}

/// One escalation level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EscalationLevel {
    /// Who is paged at this level.
    pub targets: Vec<String>,
    /// How long this level has to acknowledge before the next is paged.
    pub delay: Duration,
}

/// Where an incident is in its escalation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EscalationState {
    /// The policy.
    pub policy: EscalationPolicy,
    /// The level paged last.
    pub level: usize,
    /// Completed passes over the levels.
    pub loops_done: u32,
    /// When the next level is due, while unacknowledged.
    pub next_at: Option<DateTime<Utc>>,
}

/// A post-mortem, scheduled at resolution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Postmortem {
    /// When it is due.
    pub due: DateTime<Utc>,
    /// The document to fill in.
    pub template: String,
    /// Follow-ups.
    pub action_items: Vec<ActionItem>,
}

/// A follow-up of a post-mortem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionItem {
    /// What.
    pub title: String,
    /// Who.
    pub owner: String,
    /// Whether it is done.
    pub done: bool,
}

/// An incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Its id.
    pub id: String,
    /// The key re-triggers attach by (an alert fingerprint, for example).
    pub dedup_key: IdempotencyKey,
    /// What is wrong.
    pub title: String,
    /// How bad.
    pub severity: Severity,
    /// Where it stands.
    pub status: IncidentStatus,
    /// Opened.
    pub created_at: DateTime<Utc>,
    /// First acknowledged.
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// Last resolved.
    pub resolved_at: Option<DateTime<Utc>>,
    /// What was done, as given when it was last resolved
    /// ([`IncidentUpdate::ResolveWithSummary`]); cleared by a reopen. Also in the timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    /// Role -> person (incident commander, scribe...).
    pub roles: BTreeMap<String, String>,
    /// Every change, in order.
    pub timeline: Vec<IncidentTimelineEntry>,
    /// Escalation, if a policy applies.
    pub escalation: Option<EscalationState>,
    /// The post-mortem, once resolved.
    pub postmortem: Option<Postmortem>,
    /// Triggers that attached to this incident (the first included).
    pub triggers: u32,
}

/// A change to an incident.
#[derive(Debug, Clone, PartialEq)]
pub enum IncidentUpdate {
    /// Someone is on it.
    Acknowledge,
    /// Users are no longer hurt.
    Mitigate,
    /// Over.
    Resolve,
    /// Over, with a summary of what was done: kept as [`Incident::resolution`] and written
    /// in the timeline entry (`resolved: <summary>`) and the resolve notification. The
    /// summary is trimmed; a blank one is no summary (as [`IncidentUpdate::Resolve`]).
    ResolveWithSummary(String),
    /// Reviewed.
    Close,
    /// Back to triggered.
    Reopen,
    /// A new severity.
    Severity(Severity),
    /// A role given to a person.
    AssignRole {
        /// The role.
        role: String,
        /// The person.
        person: String,
    },
    /// A note in the timeline.
    Note(String),
    /// A post-mortem follow-up.
    AddActionItem(ActionItem),
    /// A follow-up done, by index.
    CompleteActionItem(usize),
}

/// What opens an incident.
#[derive(Debug, Clone, PartialEq)]
pub struct NewIncident {
    /// Re-triggers with the same key attach to the open incident.
    pub dedup_key: String,
    /// What is wrong.
    pub title: String,
    /// How bad.
    pub severity: Severity,
    /// The escalation policy, by name.
    pub escalation_policy: Option<String>,
}
