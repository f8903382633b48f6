//! Response-time statistics over incidents.

use std::time::Duration;

use super::model::Incident;

/// Mean time to acknowledge and to resolve over a set of incidents (those that got there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResponseTimes {
    /// Mean time to acknowledge.
    pub mtta: Option<Duration>,
    /// Mean time to resolve.
    pub mttr: Option<Duration>,
}

/// MTTA and MTTR of `incidents`. Spans that end before they start (clock skew, a bad
/// record) are left out; the sums cannot overflow.
pub fn response_times(incidents: &[Incident]) -> ResponseTimes {
    let mean = |spans: &mut dyn Iterator<Item = chrono::Duration>| {
        let (total, count) = spans
            .filter_map(|span| span.to_std().ok())
            .fold((0u128, 0u128), |(total, count), span| {
                (total.saturating_add(span.as_nanos()), count + 1)
            });
        // The mean is at most the longest span, a `chrono::Duration`: its seconds fit.
        let mean = total.checked_div(count)?;
        let seconds = u64::try_from(mean / 1_000_000_000).unwrap_or(u64::MAX);
        Some(Duration::new(seconds, (mean % 1_000_000_000) as u32))
    };
    let since_created = |at: fn(&Incident) -> Option<chrono::DateTime<chrono::Utc>>| {
        move |incident: &Incident| Some(at(incident)? - incident.created_at)
    };
    ResponseTimes {
        mtta: mean(&mut incidents.iter().filter_map(since_created(|i| i.acknowledged_at))),
        mttr: mean(&mut incidents.iter().filter_map(since_created(|i| i.resolved_at))),
    }
}
