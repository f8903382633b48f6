//! What keeps an alert from being notified: silences and inhibition.

use std::hash::Hasher;

use chrono::{DateTime, Utc};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::labels::{Fingerprint, Labels, Matcher, all_match};
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
        self.active(now) && all_match(&self.matchers, labels)
    }

    fn active(&self, now: DateTime<Utc>) -> bool {
        self.starts_at <= now && now < self.ends_at
    }
}

/// The dispatcher's silences, with which of them match each stored alert: an alert is
/// matched against a silence once, so a verdict looks at the silences added since the
/// alert's last one and at those that match it, not at all of them.
#[derive(Debug, Default)]
pub(crate) struct Silences {
    /// With their serial numbers, ascending (the order they were added in).
    silences: Vec<(u64, Silence)>,
    next_serial: u64,
    /// Per stored alert: the serial up to which silences were matched against it, and the
    /// serials of those that matched.
    matched: FxHashMap<Fingerprint, (u64, Vec<u64>)>,
}

impl Silences {
    /// Adds a silence.
    pub(crate) fn add(&mut self, silence: Silence) {
        self.silences.push((self.next_serial, silence));
        self.next_serial += 1;
    }

    /// Drops the silences `gone` selects; whether there were any.
    pub(crate) fn drop_where(&mut self, gone: impl Fn(&Silence) -> bool) -> bool {
        let before = self.silences.len();
        self.silences.retain(|(_, silence)| !gone(silence));
        self.silences.len() != before
    }

    /// Every silence, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Silence> + '_ {
        self.silences.iter().map(|(_, silence)| silence)
    }

    /// How many there are.
    pub(crate) fn len(&self) -> usize {
        self.silences.len()
    }

    /// Whether one of them mutes `labels` at `now`.
    pub(crate) fn mute(&self, labels: &Labels, now: DateTime<Utc>) -> bool {
        self.silences
            .iter()
            .any(|(_, silence)| silence.mutes(labels, now))
    }

    /// [`mute`](Self::mute) for the alert stored under `fingerprint`, remembering which
    /// silences match it until it is [forgotten](Self::forget).
    pub(crate) fn mute_stored(
        &mut self,
        fingerprint: Fingerprint,
        labels: &Labels,
        now: DateTime<Utc>,
    ) -> bool {
        let (checked, matching) = self.matched.entry(fingerprint).or_default();
        let first_new = self.silences.partition_point(|(serial, _)| serial < checked);
        matching.extend(
            self.silences[first_new..]
                .iter()
                .filter(|(_, silence)| all_match(&silence.matchers, labels))
                .map(|(serial, _)| *serial),
        );
        *checked = self.next_serial;
        let silences = &self.silences;
        let find = |serial: u64| {
            silences
                .binary_search_by_key(&serial, |(serial, _)| *serial)
                .ok()
                .map(|at| &silences[at].1)
        };
        matching.retain(|serial| find(*serial).is_some());
        matching
            .iter()
            .any(|serial| find(*serial).is_some_and(|silence| silence.active(now)))
    }

    /// Drops what is remembered for the alert stored under `fingerprint`.
    pub(crate) fn forget(&mut self, fingerprint: Fingerprint) {
        self.matched.remove(&fingerprint);
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
    /// Whether `target` is muted by one of `firing` (alerts that fire), looking at each.
    /// The dispatcher gets the same verdict from an index of the firing sources.
    pub fn inhibits<'a>(&self, target: &Alert, mut firing: impl Iterator<Item = &'a Alert>) -> bool {
        all_match(&self.target, &target.labels)
            && firing.any(|source| self.is_source(source) && self.agree(&source.labels, &target.labels))
    }

    /// Whether `alert` can mute: it fires and matches `source`.
    fn is_source(&self, alert: &Alert) -> bool {
        alert.state == AlertState::Firing && all_match(&self.source, &alert.labels)
    }

    /// Whether a source with `source` labels mutes a target with `target` labels: another
    /// alert, with both carrying every `equal` label with the same value.
    fn agree(&self, source: &Labels, target: &Labels) -> bool {
        source != target
            && self
                .equal
                .iter()
                .all(|name| match (source.get(name), target.get(name)) {
                    (Some(a), Some(b)) => a == b,
                    _ => false,
                })
    }

    /// A hash of the `equal` values of `labels`; `None` when one is missing (such an alert
    /// neither mutes nor is muted by this rule).
    fn equal_key(&self, labels: &Labels) -> Option<u64> {
        let mut hasher = fnv::FnvHasher::default();
        for name in &self.equal {
            hasher.write(labels.get(name)?.as_bytes());
            hasher.write_u8(0xff);
        }
        Some(hasher.finish())
    }
}

/// The dispatcher's inhibition rules, each with the stored alerts that can mute for it
/// (firing, matching its source) by the hash of their `equal` values, kept up to date as
/// alerts change state, so muting an alert is a lookup per rule instead of a scan of all
/// alerts.
#[derive(Debug, Default)]
pub(crate) struct Inhibitions {
    rules: Vec<(InhibitRule, FxHashMap<u64, FxHashSet<Fingerprint>>)>,
}

impl Inhibitions {
    /// Adds `rule`, indexing the sources among the `stored` alerts.
    pub(crate) fn add<'a>(
        &mut self,
        rule: InhibitRule,
        stored: impl Iterator<Item = (&'a Fingerprint, &'a Alert)>,
    ) {
        self.rules.push((rule, FxHashMap::default()));
        for (fingerprint, alert) in stored {
            self.update(*fingerprint, None, Some(alert));
        }
    }

    /// How many rules there are.
    pub(crate) fn len(&self) -> usize {
        self.rules.len()
    }

    /// Records that the alert stored under `fingerprint` went from `before` to `after`
    /// (`None`: not stored). Only a new state or new labels change anything.
    pub(crate) fn update(&mut self, fingerprint: Fingerprint, before: Option<&Alert>, after: Option<&Alert>) {
        for (rule, sources) in &mut self.rules {
            let key = |alert: Option<&Alert>| {
                alert
                    .filter(|alert| rule.is_source(alert))
                    .and_then(|alert| rule.equal_key(&alert.labels))
            };
            let (old, new) = (key(before), key(after));
            if old == new {
                continue;
            }
            if let Some(old) = old
                && let Some(bucket) = sources.get_mut(&old)
            {
                bucket.remove(&fingerprint);
                if bucket.is_empty() {
                    sources.remove(&old);
                }
            }
            if let Some(new) = new {
                sources.entry(new).or_default().insert(fingerprint);
            }
        }
    }

    /// Whether `target` is muted by one of the `stored` alerts (those `update` was told of).
    pub(crate) fn inhibits<'a>(
        &self,
        target: &Alert,
        stored: impl Fn(&Fingerprint) -> Option<&'a Alert>,
    ) -> bool {
        self.rules.iter().any(|(rule, sources)| {
            all_match(&rule.target, &target.labels)
                && rule
                    .equal_key(&target.labels)
                    .and_then(|key| sources.get(&key))
                    .is_some_and(|bucket| {
                        // Colliding hashes aside, every member agrees on `equal`: at most the
                        // target itself is passed over.
                        bucket.iter().any(|fingerprint| {
                            stored(fingerprint)
                                .is_some_and(|source| rule.agree(&source.labels, &target.labels))
                        })
                    })
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::labels::MatchOp;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Issue 15: what `Silences::mute_stored` remembers per alert gives the verdicts of
        /// matching every silence (`mute`), as silences are added, expired, start and end,
        /// and alerts are forgotten.
        #[test]
        fn remembered_silence_verdicts_are_those_of_every_silence(
            steps in proptest::collection::vec((0..4usize, 0..3usize, 0..3usize, 0i64..20, 0i64..20), 1..60),
        ) {
            let base = DateTime::<Utc>::UNIX_EPOCH;
            let minutes = chrono::Duration::minutes;
            let alerts: Vec<Labels> = (0..3).map(|n| [("instance".to_owned(), format!("h{n}"))].into()).collect();
            let mut silences = Silences::default();
            let mut now = base;
            for (op, a, b, from, length) in steps {
                match op {
                    0 => silences.add(Silence {
                        id: format!("s{a}"),
                        matchers: vec![Matcher::new("instance", MatchOp::Regex, format!("h{a}|h{b}")).unwrap()],
                        starts_at: base + minutes(from),
                        ends_at: base + minutes(from + length),
                        created_by: String::new(),
                        comment: String::new(),
                    }),
                    1 => {
                        silences.drop_where(|silence| silence.id == format!("s{a}"));
                    }
                    2 => now = base + minutes(from),
                    _ => silences.forget(Fingerprint(a as u64)),
                }
                for (n, labels) in alerts.iter().enumerate() {
                    prop_assert_eq!(
                        silences.mute_stored(Fingerprint(n as u64), labels, now),
                        silences.mute(labels, now)
                    );
                }
            }
        }
    }
}
