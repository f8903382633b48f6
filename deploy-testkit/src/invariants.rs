//! The invariant checker: what must hold of a fleet at every moment and at the end of a run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use deploy_core::{AppId, InstanceId, InstanceState, Pool, TrafficSplit, Version, Weight};
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
    /// An instance in rotation, or still draining, is not running: every request routed to
    /// it fails (it was stopped before its drain ended).
    StoppedWhileServing {
        /// The instance.
        instance: InstanceId,
        /// Its state.
        state: InstanceState,
    },
    /// An instance left rotation, or was stopped or removed, while requests routed to it
    /// could still be running (a request takes up to its version's p99 latency): they were
    /// cut (it was not drained for long enough).
    InFlightRequestsCut {
        /// The instance.
        instance: InstanceId,
    },
    /// A member in rotation has failed its health check for the fleet's grace or longer
    /// (see [`SimFleetBuilder::unhealthy_grace`](crate::SimFleetBuilder::unhealthy_grace)):
    /// the requests routed to it fail.
    UnhealthyInRotation {
        /// The instance.
        instance: InstanceId,
        /// The grace it outstayed.
        grace: Duration,
    },
    /// More instances than the app's limit (replicas + surge; see
    /// [`SimFleet::set_instance_limit`](crate::SimFleet::set_instance_limit)).
    TooManyInstances {
        /// Instances of the app, in any state.
        instances: usize,
        /// The limit.
        limit: usize,
    },
    /// The traffic off the baseline pool rose past the next step of its schedule (see
    /// [`SimFleet::set_exposure_steps`](crate::SimFleet::set_exposure_steps)).
    Overexposed {
        /// The share now off the baseline.
        weight: Weight,
        /// The most the schedule allowed.
        allowed: Weight,
    },
    /// A request route sends requests to a pool with no healthy member in rotation: every
    /// request it matches fails (a route left behind when its pool was torn down).
    RouteWithoutHealthyMember {
        /// The route's pool.
        pool: Pool,
        /// What the route matches, as text.
        route: String,
    },
    /// At the end (at rest): one pool runs more than one version.
    MixedVersions {
        /// The pool.
        pool: Pool,
        /// Its versions.
        versions: Vec<Version>,
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
            Self::StoppedWhileServing { instance, state } => {
                write!(
                    f,
                    "instance '{instance}' is {state:?} while in rotation or draining"
                )
            }
            Self::InFlightRequestsCut { instance } => {
                write!(f, "instance '{instance}' was cut off with requests in flight")
            }
            Self::UnhealthyInRotation { instance, grace } => {
                write!(
                    f,
                    "instance '{instance}' stayed in rotation unhealthy for {grace:?} or longer"
                )
            }
            Self::TooManyInstances { instances, limit } => {
                write!(f, "{instances} instances, above the limit of {limit}")
            }
            Self::Overexposed { weight, allowed } => {
                write!(
                    f,
                    "{weight} of traffic off the baseline, above the step's {allowed}"
                )
            }
            Self::RouteWithoutHealthyMember { pool, route } => {
                write!(
                    f,
                    "requests with {route} go to pool '{pool}', which has no healthy member in rotation"
                )
            }
            Self::MixedVersions { pool, versions } => {
                write!(f, "pool '{pool}' runs {versions:?} at rest")
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
            Self::StoppedWhileServing { instance, .. } => format!("stopped-serving:{instance}"),
            Self::InFlightRequestsCut { instance } => format!("cut:{instance}"),
            Self::UnhealthyInRotation { instance, .. } => format!("unhealthy:{instance}"),
            Self::TooManyInstances { .. } => "too-many-instances".to_owned(),
            Self::Overexposed { .. } => "overexposed".to_owned(),
            Self::RouteWithoutHealthyMember { pool, route } => format!("route:{route}:{pool}"),
            Self::MixedVersions { pool, .. } => format!("mixed:{pool}"),
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
    /// Since when each member in rotation has been unhealthy (for the grace rule).
    unhealthy_since: BTreeMap<(AppId, InstanceId), Instant>,
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

    /// Records findings that are events, not conditions (end-of-run findings, requests
    /// cut): each is recorded.
    pub(crate) fn record_events(&mut self, at: Duration, findings: Vec<(AppId, ViolationKind)>) {
        for (app, kind) in findings {
            tracing::warn!(%app, violation = %kind, "fleet invariant violated");
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
            unhealthy_since: BTreeMap::new(),
        }
    }

    /// Takes in which members in rotation are unhealthy now, keeping when each turned so.
    pub(crate) fn track_unhealthy(&mut self, unhealthy: Vec<(AppId, InstanceId)>, now: Instant) {
        let mut since = std::mem::take(&mut self.unhealthy_since);
        self.unhealthy_since = unhealthy
            .into_iter()
            .map(|key| {
                let at = since.remove(&key).unwrap_or(now);
                (key, at)
            })
            .collect();
    }

    /// The unhealthy members of `app` in rotation, with since when.
    fn unhealthy_members<'a>(&'a self, app: &'a AppId) -> impl Iterator<Item = (&'a InstanceId, Instant)> {
        self.unhealthy_since
            .iter()
            .filter(move |((of, _), _)| of == app)
            .map(|((_, id), since)| (id, *since))
    }

    /// When the earliest unhealthy member outstays `grace`, if it has not yet.
    pub(crate) fn next_grace_deadline(&self, grace: Duration, now: Instant) -> Option<Instant> {
        self.unhealthy_since
            .values()
            .map(|since| *since + grace)
            .filter(|deadline| *deadline > now)
            .min()
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

/// A schedule for the traffic off a baseline pool (a canary's steps): the share may rise
/// only to the next step at a time.
#[derive(Debug, Clone)]
pub(crate) struct Exposure {
    pub(crate) baseline: Pool,
    pub(crate) steps: Vec<Weight>,
    /// The share off the baseline at the last check.
    pub(crate) share: Weight,
}

impl Exposure {
    /// The share off the baseline that `routing` gives.
    pub(crate) fn share_of(&self, routing: Option<&TrafficSplit>) -> Weight {
        routing.map_or(Weight::ZERO, |split| split.weight_of(&self.baseline).complement())
    }

    /// Takes in the share now; returns the breach if it rose past the next step.
    pub(crate) fn observe(&mut self, share: Weight) -> Option<ViolationKind> {
        let last = std::mem::replace(&mut self.share, share);
        let allowed = self
            .steps
            .iter()
            .copied()
            .find(|step| *step > last)
            .unwrap_or(last);
        (share > allowed).then_some(ViolationKind::Overexposed {
            weight: share,
            allowed,
        })
    }
}

/// What a test or harness told the checker about one app, beyond its capacity floor.
#[derive(Debug, Clone, Default)]
pub(crate) struct AppLimits {
    pub(crate) max_instances: Option<usize>,
    pub(crate) exposure: Option<Exposure>,
}

/// The continuous rules: routing sums to 100%, weighted pools and request routes' pools have
/// a healthy member in rotation, capacity stays at or above the floor once it has been
/// reached, no member in rotation or draining is down, none stays unhealthy past the grace,
/// and the instance limit holds.
pub(crate) fn evaluate(state: &FleetState, now: Instant) -> Vec<(AppId, ViolationKind)> {
    let mut findings = Vec::new();
    for (app, app_state) in &state.apps {
        let mut found = |kind| findings.push((app.clone(), kind));
        if let Some(split) = &app_state.routing {
            let total_basis_points = split.total_basis_points();
            if total_basis_points != u64::from(Weight::MAX_BASIS_POINTS) {
                found(ViolationKind::RoutingSum { total_basis_points });
            }
            for (pool, weight) in split.iter() {
                let members = app_state.active_members(pool);
                if !members.iter().any(|id| state.is_healthy(app, id, now)) {
                    found(ViolationKind::PoolWithoutHealthyMember {
                        pool: pool.clone(),
                        weight,
                    });
                }
            }
        }
        for route in app_state.request_policy.iter().flat_map(|policy| &policy.routes) {
            let members = app_state.active_members(&route.pool);
            if !members.iter().any(|id| state.is_healthy(app, id, now)) {
                found(ViolationKind::RouteWithoutHealthyMember {
                    pool: route.pool.clone(),
                    route: route.matches.to_string(),
                });
            }
        }
        let floor = app_state.capacity_floor;
        if app_state.floor_reached {
            let healthy = healthy_in_rotation(state, app, app_state, now);
            if healthy < floor {
                found(ViolationKind::BelowCapacityFloor { healthy, floor });
            }
        }
        for id in app_state.members.keys() {
            match app_state.instances.get(id) {
                Some(sim) if sim.state != InstanceState::Running => {
                    found(ViolationKind::StoppedWhileServing {
                        instance: id.clone(),
                        state: sim.state,
                    })
                }
                _ => {}
            }
        }
        if let Some(grace) = state.unhealthy_grace {
            for (id, since) in state.invariants.unhealthy_members(app) {
                if now.saturating_duration_since(since) >= grace {
                    found(ViolationKind::UnhealthyInRotation {
                        instance: id.clone(),
                        grace,
                    });
                }
            }
        }
        let limit = state.limits.get(app).and_then(|limits| limits.max_instances);
        let instances = app_state.instances.values().count();
        if let Some(limit) = limit.filter(|limit| instances > *limit) {
            found(ViolationKind::TooManyInstances { instances, limit });
        }
    }
    findings
}

/// The end-of-run rules: nothing running outside rotation, nothing left stopped or failed,
/// no pool running two versions.
pub(crate) fn evaluate_end(state: &FleetState) -> Vec<(AppId, ViolationKind)> {
    let mut findings = Vec::new();
    for (app, app_state) in &state.apps {
        let mut versions: BTreeMap<&Pool, BTreeSet<&Version>> = BTreeMap::new();
        for id in app_state.sorted_ids() {
            let Some(sim) = app_state.instances.get(id) else {
                continue;
            };
            versions.entry(&sim.pool).or_default().insert(&sim.version);
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
        for (pool, versions) in versions.into_iter().filter(|(_, versions)| versions.len() > 1) {
            findings.push((
                app.clone(),
                ViolationKind::MixedVersions {
                    pool: pool.clone(),
                    versions: versions.into_iter().cloned().collect(),
                },
            ));
        }
    }
    findings
}
