//! What keeps an alert from being notified: silences and inhibition.

use chrono::{DateTime, Utc};

use crate::labels::{Labels, Matcher, all_match};
use crate::rule::{Alert, AlertState};

/// Mutes matching alerts between two instants.
#[derive(Debug, Clone)]
pub struct Silence {
    /// An id to expire it by.
    pub id: String,
    /// Alerts matching all of these are muted.
    pub matchers: Vec<Matcher>,
    /// From.
    pub starts_at: DateTime<Utc>,
    /// Until (exclusive).
    pub ends_at: DateTime<Utc>,
    /// Who set it.
    pub created_by: String,
    /// Why.
    pub comment: String,
}

impl Silence {
    /// Whether it mutes `labels` at `now`.
    pub fn mutes(&self, labels: &Labels, now: DateTime<Utc>) -> bool {
        self.starts_at <= now && now < self.ends_at && all_match(&self.matchers, labels)
    }
}

/// Mutes target alerts while a matching source alert fires and they agree on `equal`.
#[derive(Debug, Clone)]
pub struct InhibitRule {
    /// What a muting alert looks like.
    pub source: Vec<Matcher>,
    /// What a muted alert looks like.
    pub target: Vec<Matcher>,
    /// Labels both must carry with the same value. A label missing from either side does
    /// not count as equal, so it never inhibits.
    pub equal: Vec<String>,
}

impl InhibitRule {
    /// Whether `target` is muted by one of `firing` (alerts that fire).
    pub fn inhibits<'a>(&self, target: &Alert, mut firing: impl Iterator<Item = &'a Alert>) -> bool {
        if !all_match(&self.target, &target.labels) {
            return false;
        }
        firing.any(|source| {
            source.state == AlertState::Firing
                && source.labels != target.labels
                && all_match(&self.source, &source.labels)
                && self
                    .equal
                    .iter()
                    .all(|name| match (source.labels.get(name), target.labels.get(name)) {
                        (Some(a), Some(b)) => a == b,
                        _ => false,
                    })
        })
    }
}
