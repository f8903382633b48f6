//! The fleet's shared state and the synchronous logic over it. The trait impls in
//! `fleet.rs` wait (latency, hangs, drains) outside the lock and call in here.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use deploy_core::{
    AppId, BackendError, HealthStatus, Instance, InstanceId, InstanceState, Pool, RequestPolicy,
    TrafficSplit, Version,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::time::Instant;

use crate::fault::{Fault, FaultPlan};
use crate::idmap::IdMap;
use crate::invariants::{AppLimits, InvariantChecker, ViolationKind};
use crate::profile::{AgeEffect, VersionProfile};
use crate::traffic::TrafficLog;

/// Backend name used in errors.
pub(crate) const BACKEND: &str = "sim-fleet";

#[derive(Debug, Clone)]
pub(crate) struct SimInstance {
    pub(crate) pool: Pool,
    pub(crate) version: Version,
    pub(crate) state: InstanceState,
    pub(crate) address: String,
    /// Until when requests routed to it may still be running (the last one plus its
    /// version's p99 latency).
    pub(crate) busy_until: Option<Instant>,
    /// When it was provisioned, for the app's [`AgeEffect`]; `None` when unknown (restored
    /// from a fleet image), which counts as warm.
    pub(crate) born: Option<Instant>,
}

/// Whether a member takes new traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Membership {
    Active,
    Draining,
}

#[derive(Debug, Default)]
pub(crate) struct AppState {
    // Lookups by id are the hot path at fleet scale (see `IdMap`); where order shows (member
    // lists, traffic spread, reports), ids are sorted at that point.
    pub(crate) instances: IdMap<SimInstance>,
    pub(crate) members: IdMap<Membership>,
    pub(crate) routing: Option<TrafficSplit>,
    pub(crate) capacity_floor: usize,
    /// Whether the app has had `capacity_floor` healthy instances in rotation yet; the
    /// floor is enforced from then on, so bringing an app up is not a violation.
    pub(crate) floor_reached: bool,
    pub(crate) traffic: TrafficLog,
    /// Request routes and stickiness on top of `routing` (`None` before the first set).
    pub(crate) request_policy: Option<RequestPolicy>,
    /// Where each sticky client was placed, and in which epoch.
    pub(crate) placements: HashMap<String, (u64, Pool)>,
    /// Turns the round-robin over a pool's members for single requests.
    pub(crate) next_target: u64,
}

impl AppState {
    /// Active members of `pool`, in id order.
    pub(crate) fn active_members<'a>(&'a self, pool: &Pool) -> Vec<&'a InstanceId> {
        let mut ids: Vec<&InstanceId> = self
            .members
            .iter()
            .filter(|(id, membership)| {
                **membership == Membership::Active && self.instances.get(id).is_some_and(|i| &i.pool == pool)
            })
            .map(|(id, _)| id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Instance ids in id order.
    pub(crate) fn sorted_ids(&self) -> Vec<&InstanceId> {
        let mut ids: Vec<&InstanceId> = self.instances.keys().collect();
        ids.sort_unstable();
        ids
    }
}

#[derive(Debug)]
pub(crate) struct FleetState {
    pub(crate) apps: BTreeMap<AppId, AppState>,
    pub(crate) profiles: HashMap<(AppId, Version), VersionProfile>,
    /// How instances' ages change how they serve, per app (not part of a fleet image).
    pub(crate) age_effects: HashMap<AppId, AgeEffect>,
    pub(crate) faults: FaultPlan,
    pub(crate) latencies: HashMap<crate::Operation, Duration>,
    pub(crate) installs: u32,
    pub(crate) next_instance: u64,
    pub(crate) rng: StdRng,
    pub(crate) started: Instant,
    pub(crate) invariants: InvariantChecker,
    /// Off for scale benchmarks, where checking after every operation costs O(fleet).
    pub(crate) checking: bool,
    /// Calls made through handles that record them (`SimFleet::as_caller`).
    pub(crate) calls: Vec<crate::fleet::CallRecord>,
    /// How long a member in rotation may fail its health check before that is a violation.
    pub(crate) unhealthy_grace: Option<Duration>,
    /// What the checker was told per app beyond the floor (not part of a fleet image).
    pub(crate) limits: BTreeMap<AppId, AppLimits>,
    /// Counts changes to the fleet, for watchers (the invariant timer, persisters).
    pub(crate) changes: tokio::sync::watch::Sender<u64>,
}

impl FleetState {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            apps: BTreeMap::new(),
            profiles: HashMap::new(),
            age_effects: HashMap::new(),
            faults: FaultPlan::default(),
            latencies: HashMap::new(),
            installs: 0,
            next_instance: 0,
            rng: StdRng::seed_from_u64(seed),
            started: Instant::now(),
            invariants: InvariantChecker::default(),
            checking: true,
            calls: Vec::new(),
            unhealthy_grace: None,
            limits: BTreeMap::new(),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Tells watchers that the fleet changed.
    pub(crate) fn changed(&self) {
        self.changes.send_modify(|count| *count = count.wrapping_add(1));
    }

    pub(crate) fn app(&self, app: &AppId) -> Option<&AppState> {
        self.apps.get(app)
    }

    pub(crate) fn app_mut(&mut self, app: &AppId) -> &mut AppState {
        self.apps.entry(app.clone()).or_default()
    }

    pub(crate) fn instance(&self, app: &AppId, id: &InstanceId) -> Result<&SimInstance, BackendError> {
        self.app(app)
            .and_then(|a| a.instances.get(id))
            .ok_or_else(|| BackendError::not_found("instance", id.to_string()))
    }

    pub(crate) fn instance_mut(
        &mut self,
        app: &AppId,
        id: &InstanceId,
    ) -> Result<&mut SimInstance, BackendError> {
        self.apps
            .get_mut(app)
            .and_then(|a| a.instances.get_mut(id))
            .ok_or_else(|| BackendError::not_found("instance", id.to_string()))
    }

    pub(crate) fn describe(&self, app: &AppId, id: &InstanceId) -> Result<Instance, BackendError> {
        let sim = self.instance(app, id)?;
        Ok(Instance {
            id: id.clone(),
            app: app.clone(),
            pool: sim.pool.clone(),
            version: sim.version.clone(),
            state: sim.state,
            address: Some(sim.address.clone()),
        })
    }

    pub(crate) fn profile(&self, app: &AppId, version: &Version) -> VersionProfile {
        self.profiles
            .get(&(app.clone(), version.clone()))
            .copied()
            .unwrap_or_default()
    }

    /// One request served by instance `id` of `app` running `version`: `(failed,
    /// latency_ms)` by its version's profile, made worse while the instance is young by the
    /// app's age effect.
    pub(crate) fn sample(&mut self, app: &AppId, id: &InstanceId, version: &Version) -> (bool, f64) {
        let sample = self.profile(app, version).sample(&mut self.rng);
        let born = self.instance(app, id).ok().and_then(|sim| sim.born);
        match (self.age_effects.get(app).copied(), born) {
            (Some(effect), Some(born)) => {
                let age = Instant::now().saturating_duration_since(born);
                effect.apply(age, sample, &mut self.rng)
            }
            _ => sample,
        }
    }

    /// The ground truth of an instance's health, as a check at `now` would see it.
    pub(crate) fn health(&self, sim: &SimInstance, id: &InstanceId, now: Instant) -> HealthStatus {
        match sim.state {
            InstanceState::Running => {}
            InstanceState::Starting => return HealthStatus::unknown("starting"),
            InstanceState::Stopped => return HealthStatus::unhealthy("stopped"),
            _ => return HealthStatus::unhealthy("failed"),
        }
        if self
            .faults
            .find(|f| matches!(f, Fault::UnhealthyVersion(v) if *v == sim.version))
            .is_some()
        {
            return HealthStatus::unhealthy(format!("version {} fails its health check", sim.version));
        }
        let flapping = self
            .faults
            .find(|f| matches!(f, Fault::FlappingHealth { instance, .. } if instance == id));
        if let Some(active) = flapping
            && let Fault::FlappingHealth { period, .. } = active.fault
        {
            let phase = now.saturating_duration_since(active.since).as_nanos() / period.as_nanos().max(1);
            if phase % 2 == 1 {
                return HealthStatus::unhealthy("health flapping: down phase");
            }
        }
        HealthStatus::Healthy
    }

    pub(crate) fn is_healthy(&self, app: &AppId, id: &InstanceId, now: Instant) -> bool {
        self.instance(app, id)
            .is_ok_and(|sim| self.health(sim, id, now).is_healthy())
    }

    /// Re-evaluates the invariants after a change (or at a moment health changes).
    pub(crate) fn check_invariants(&mut self) {
        if !self.checking {
            return;
        }
        let now = Instant::now();
        let mut events = Vec::new();
        let mut reached = Vec::new();
        let mut unhealthy = Vec::new();
        for (app, a) in &self.apps {
            if a.capacity_floor > 0
                && !a.floor_reached
                && crate::invariants::healthy_in_rotation(self, app, a, now) >= a.capacity_floor
            {
                reached.push(app.clone());
            }
            for (id, membership) in a.members.iter() {
                let down = a.instances.get(id).is_some_and(|sim| {
                    sim.state == InstanceState::Running && !self.health(sim, id, now).is_healthy()
                });
                if *membership == Membership::Active && down {
                    unhealthy.push((app.clone(), id.clone()));
                }
            }
        }
        for app in reached {
            self.app_mut(&app).floor_reached = true;
        }
        self.invariants.track_unhealthy(unhealthy, now);
        for (app, limits) in &mut self.limits {
            let Some(exposure) = &mut limits.exposure else {
                continue;
            };
            let share = exposure.share_of(self.apps.get(app).and_then(|a| a.routing.as_ref()));
            events.extend(exposure.observe(share).map(|kind| (app.clone(), kind)));
        }
        let findings = crate::invariants::evaluate(self, now);
        let at = now.saturating_duration_since(self.started);
        self.invariants.record(at, findings);
        self.invariants.record_events(at, events);
    }

    /// Records a cut if `id` may still be serving requests: it is leaving rotation, being
    /// stopped or removed now.
    pub(crate) fn check_drained(&mut self, app: &AppId, id: &InstanceId) {
        let now = Instant::now();
        // Cut requests are gone: an instance is cut once.
        let busy_until = self
            .apps
            .get_mut(app)
            .and_then(|a| a.instances.get_mut(id))
            .and_then(|sim| sim.busy_until.take());
        if self.checking && busy_until.is_some_and(|until| until > now) {
            let at = now.saturating_duration_since(self.started);
            let cut = ViolationKind::InFlightRequestsCut { instance: id.clone() };
            self.invariants.record_events(at, vec![(app.clone(), cut)]);
        }
    }

    /// The next moment health changes without any call (a flapping boundary, a grace
    /// running out), after `now`.
    pub(crate) fn next_transition(&self, now: Instant) -> Option<Instant> {
        let flips = self.faults.active().filter_map(|active| match active.fault {
            Fault::FlappingHealth { period, .. } if !period.is_zero() => {
                let phases = now.saturating_duration_since(active.since).as_nanos() / period.as_nanos() + 1;
                let offset = period.checked_mul(u32::try_from(phases).ok()?)?;
                active.since.checked_add(offset)
            }
            _ => None,
        });
        let grace = self
            .unhealthy_grace
            .and_then(|grace| self.invariants.next_grace_deadline(grace, now));
        flips.chain(grace).min()
    }

    pub(crate) fn next_instance_id(&mut self, app: &AppId, pool: &Pool) -> InstanceId {
        self.next_instance += 1;
        // App and pool names are valid ids and the suffix adds only digits and dashes; an
        // over-long name falls back to a short form.
        InstanceId::new(format!("{app}-{pool}-{}", self.next_instance))
            .or_else(|_| InstanceId::new(format!("i-{}", self.next_instance)))
            .unwrap_or_else(|_| unreachable!("'i-<n>' is a valid instance id"))
    }
}
