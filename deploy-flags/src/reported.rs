//! Evaluations counted outside this process (Unleash SDKs reporting to a flag server, other
//! processes of a deployment), summed per flag in the store, so the stale-flag report and
//! the analytics see every process, not only this one.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Variant names kept per flag at most (a report cannot grow a record without bound).
pub const MAX_REPORTED_VARIANTS: usize = 64;
/// Sources (SDK app names) kept per flag at most.
pub const MAX_REPORTED_SOURCES: usize = 64;

/// One report's counts of one flag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvaluationReport {
    /// Evaluations that found it on.
    #[serde(default)]
    pub yes: u64,
    /// Evaluations that found it off.
    #[serde(default)]
    pub no: u64,
    /// Evaluations per variant served.
    #[serde(default)]
    pub variants: BTreeMap<String, u64>,
}

impl EvaluationReport {
    /// Whether it counts nothing.
    pub fn is_empty(&self) -> bool {
        self.yes == 0 && self.no == 0 && self.variants.values().all(|&n| n == 0)
    }
}

/// The sums of every report of one flag, as stored at `flags/evaluations/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedEvaluations {
    /// Evaluations that found it on.
    pub yes: u64,
    /// Evaluations that found it off.
    pub no: u64,
    /// Evaluations per variant served (at most [`MAX_REPORTED_VARIANTS`] names).
    pub variants: BTreeMap<String, u64>,
    /// When the last report that counted it arrived.
    pub last_reported: DateTime<Utc>,
    /// Who reported it (an SDK's `appName`; at most [`MAX_REPORTED_SOURCES`]).
    pub sources: Vec<String>,
}

impl ReportedEvaluations {
    pub(crate) fn new(at: DateTime<Utc>) -> Self {
        Self {
            yes: 0,
            no: 0,
            variants: BTreeMap::new(),
            last_reported: at,
            sources: Vec::new(),
        }
    }

    /// Adds `report`, made by `source` at `at`; counts saturate.
    pub(crate) fn add(&mut self, report: &EvaluationReport, source: &str, at: DateTime<Utc>) {
        self.yes = self.yes.saturating_add(report.yes);
        self.no = self.no.saturating_add(report.no);
        for (variant, count) in &report.variants {
            let room = self.variants.len() < MAX_REPORTED_VARIANTS;
            match self.variants.get_mut(variant) {
                Some(total) => *total = total.saturating_add(*count),
                None if room => {
                    self.variants.insert(variant.clone(), *count);
                }
                None => {}
            }
        }
        self.last_reported = self.last_reported.max(at);
        if !source.is_empty()
            && !self.sources.iter().any(|known| known == source)
            && self.sources.len() < MAX_REPORTED_SOURCES
        {
            self.sources.push(source.to_owned());
        }
    }

    /// All evaluations counted.
    pub fn evaluations(&self) -> u64 {
        self.yes.saturating_add(self.no)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_saturate_and_variants_and_sources_are_bounded() {
        let at = DateTime::<Utc>::UNIX_EPOCH;
        let mut sums = ReportedEvaluations::new(at);
        let report = EvaluationReport {
            yes: u64::MAX,
            no: 2,
            variants: (0..100).map(|n| (format!("v{n}"), 1)).collect(),
        };
        for n in 0..100 {
            sums.add(&report, &format!("app-{n}"), at);
        }
        assert_eq!((sums.yes, sums.no), (u64::MAX, 200));
        assert_eq!(sums.variants.len(), MAX_REPORTED_VARIANTS);
        assert_eq!(sums.sources.len(), MAX_REPORTED_SOURCES);
        assert_eq!(sums.evaluations(), u64::MAX);
    }
}
