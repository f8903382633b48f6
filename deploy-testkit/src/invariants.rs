//! The invariant checker: what must hold of a fleet at every moment and at the end of a run.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use deploy_core::{AppId, InstanceId, InstanceState, Pool, Weight};
use tokio::time::Instant;

use crate::state::{AppState, FleetState, Membership};

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum ViolationKind {
    /// The routing in force does not sum to 100%.
    RoutingSum {
        /// The actual total.
        total_basis_points: u64,
    },
    /// A pool that receives traffic has no healthy member in rotation: its share of users
    /// gets errors.
    PoolWithoutHealthyMember {
        /// The pool.
        pool: Pool,
        /// Its share of traffic.
        weight: Weight,
    },
    /// Fewer healthy instances in rotation than the app's capacity floor.
    BelowCapacityFloor {
        /// Healthy instances in rotation.
        healthy: usize,
        /// The configured floor.
        floor: usize,
    },
    /// At the end: an instance runs but is in no rotation (leaked capacity).
    RunningButNotRegistered {
        /// The instance.
        instance: InstanceId,
    },
    /// At the end: an instance is stopped or failed (an update begun and not finished).
    HalfUpdated {
        /// The instance.
        instance: InstanceId,
        /// Its state.
        state: InstanceState,
    },
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RoutingSum { total_basis_points } => {
                write!(f, "routing sums to {total_basis_points} bp instead of 10000")
            }
            Self::PoolWithoutHealthyMember { pool, weight } => {
                write!(
                    f,
                    "pool '{pool}' gets {weight} of traffic with no healthy member in rotation"
                )
            }
            Self::BelowCapacityFloor { healthy, floor } => {
                write!(
                    f,
                    "{healthy} healthy instances in rotation, below the floor of {floor}"
                )
            }
            Self::RunningButNotRegistered { instance } => {
                write!(f, "instance '{instance}' is running but in no rotation")
            }
            Self::HalfUpdated { instance, state } => {
                write!(f, "instance '{instance}' was left {state:?}")
            }
        }
    }
}

impl ViolationKind {
    /// Which condition this is, apart from the measured values: a floor breach that goes
    /// from 1 healthy instance to 0 is the same ongoing condition.
    fn condition(&self) -> String {
        match self {
            Self::RoutingSum { .. } => "routing-sum".to_owned(),
            Self::PoolWithoutHealthyMember { pool, .. } => format!("empty-pool:{pool}"),
            Self::BelowCapacityFloor { .. } => "capacity-floor".to_owned(),
            Self::RunningButNotRegistered { instance } => format!("unregistered:{instance}"),
            Self::HalfUpdated { instance, .. } => format!("half-updated:{instance}"),
        }
    }
}

/// A broken rule, when it broke and for which app.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Violation {
    /// Time since the fleet was created (on tokio's clock).
    pub at: Duration,
    /// The app.
    pub app: AppId,
    /// What broke.
    pub kind: ViolationKind,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:?}] {}: {}", self.at, self.app, self.kind)
    }
}

/// Records each violation once when it starts; a condition that persists is not recorded
/// again until it has cleared.
#[derive(Debug, Default)]
pub(crate) struct InvariantChecker {
    ongoing: BTreeSet<(AppId, String)>,
    history: Vec<Violation>,
}

impl InvariantChecker {
    pub(crate) fn record(&mut self, at: Duration, findings: Vec<(AppId, ViolationKind)>) {
        let mut now_ongoing = BTreeSet::new();
        for (app, kind) in findings {
            let condition = (app.clone(), kind.condition());
            if !self.ongoing.contains(&condition) {
                tracing::warn!(%app, violation = %kind, "fleet invariant violated");
                self.history.push(Violation { at, app, kind });
            }
            now_ongoing.insert(condition);
        }
        self.ongoing = now_ongoing;
    }

    /// Records end-of-run findings (which are not "ongoing": the run is over).
    pub(crate) fn record_final(&mut self, at: Duration, findings: Vec<(AppId, ViolationKind)>) {
        for (app, kind) in findings {
            self.history.push(Violation { at, app, kind });
        }
    }

    /// The conditions in force and the history, for a fleet image.
    pub(crate) fn parts(&self) -> (Vec<(AppId, String)>, Vec<Violation>) {
        (self.ongoing.iter().cloned().collect(), self.history.clone())
    }

    pub(crate) fn from_parts(ongoing: Vec<(AppId, String)>, history: Vec<Violation>) -> Self {
        Self {
            ongoing: ongoing.into_iter().collect(),
            history,
        }
    }

    pub(crate) fn history(&self) -> &[Violation] {
        &self.history
    }
}

/// Healthy instances of `app` in rotation.
pub(crate) fn healthy_in_rotation(
    state: &FleetState,
    app: &AppId,
    app_state: &AppState,
    now: Instant,
) -> usize {
    app_state
        .members
        .iter()
        .filter(|(id, m)| **m == Membership::Active && state.is_healthy(app, id, now))
        .count()
}

/// The continuous rules: routing sums to 100%, weighted pools have a healthy member in
/// rotation, capacity stays at or above the floor once it has been reached.
pub(crate) fn evaluate(state: &FleetState, now: Instant) -> Vec<(AppId, ViolationKind)> {
    let mut findings = Vec::new();
    for (app, app_state) in &state.apps {
        if let Some(split) = &app_state.routing {
            let total_basis_points = split.total_basis_points();
            if total_basis_points != u64::from(Weight::MAX_BASIS_POINTS) {
                findings.push((app.clone(), ViolationKind::RoutingSum { total_basis_points }));
            }
            for (pool, weight) in split.iter() {
                let members = app_state.active_members(pool);
                if !members.iter().any(|id| state.is_healthy(app, id, now)) {
                    findings.push((
                        app.clone(),
                        ViolationKind::PoolWithoutHealthyMember {
                            pool: pool.clone(),
                            weight,
                        },
                    ));
                }
            }
        }
        let floor = app_state.capacity_floor;
        if app_state.floor_reached {
            let healthy = healthy_in_rotation(state, app, app_state, now);
            if healthy < floor {
                findings.push((app.clone(), ViolationKind::BelowCapacityFloor { healthy, floor }));
            }
        }
    }
    findings
}

/// The end-of-run rules: nothing running outside rotation, nothing left stopped or failed.
pub(crate) fn evaluate_end(state: &FleetState) -> Vec<(AppId, ViolationKind)> {
    let mut findings = Vec::new();
    for (app, app_state) in &state.apps {
        for id in app_state.sorted_ids() {
            let Some(sim) = app_state.instances.get(id) else {
                continue;
            };
            match sim.state {
                InstanceState::Running if !app_state.members.contains_key(id) => {
                    findings.push((
                        app.clone(),
                        ViolationKind::RunningButNotRegistered { instance: id.clone() },
                    ));
                }
                InstanceState::Stopped | InstanceState::Failed => findings.push((
                    app.clone(),
                    ViolationKind::HalfUpdated {
                        instance: id.clone(),
                        state: sim.state,
                    },
                )),
                _ => {}
            }
        }
    }
    findings
}
