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

/// MTTA and MTTR of `incidents`.
pub fn response_times(incidents: &[Incident]) -> ResponseTimes {
    let mean = |spans: Vec<chrono::Duration>| {
        let count = spans.len() as u32;
        (count > 0).then(|| {
            let total: chrono::Duration = spans.into_iter().sum();
            total.to_std().unwrap_or_default() / count
        })
    };
    ResponseTimes {
        mtta: mean(
            incidents
                .iter()
                .filter_map(|incident| Some(incident.acknowledged_at? - incident.created_at))
                .collect(),
        ),
        mttr: mean(
            incidents
                .iter()
                .filter_map(|incident| Some(incident.resolved_at? - incident.created_at))
                .collect(),
        ),
    }
}
