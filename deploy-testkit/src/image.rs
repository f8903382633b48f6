//! A fleet's state as plain data, so a fleet can outlive the process driving it: crash
//! tests persist the image after every change and a fresh process restores it and carries
//! on, as a real fleet would still be there after its deployer was killed.

use std::collections::HashMap;
use std::time::Duration;

use deploy_core::{AppId, InstanceId, InstanceState, Pool, RequestPolicy, TrafficSplit, Version};
use serde::{Deserialize, Serialize};

use crate::fleet::SimFleet;
use crate::invariants::{InvariantChecker, Violation};
use crate::profile::{ProfileError, VersionProfile};
use crate::state::{AppState, Membership, SimInstance};

/// Everything about a fleet that outlives a deployer: apps, instances, membership,
/// routing, version profiles and the invariant checker's record. (Faults, latencies and
/// traffic history belong to the process driving the fleet and are not included.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetImage {
    /// Per app.
    pub apps: Vec<AppImage>,
    /// Version profiles: app, version, error rate, p50, p99.
    pub profiles: Vec<(AppId, Version, f64, Duration, Duration)>,
    /// The next instance number to hand out.
    pub next_instance: u64,
    /// Installs attempted so far.
    pub installs: u32,
    /// Invariant conditions in force.
    pub ongoing: Vec<(AppId, String)>,
    /// Every violation recorded.
    pub violations: Vec<Violation>,
}

/// One app in a [`FleetImage`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppImage {
    /// The app.
    pub app: AppId,
    /// Its instances.
    pub instances: Vec<InstanceImage>,
    /// Its routing.
    pub routing: Option<TrafficSplit>,
    /// Its request routing (routes and stickiness), if one was set. Sticky placements are
    /// traffic history and are not included.
    #[serde(default)]
    pub request_policy: Option<RequestPolicy>,
    /// Healthy instances in rotation it must keep once reached.
    pub capacity_floor: usize,
    /// Whether the floor has been reached (and is enforced).
    pub floor_reached: bool,
}

/// One instance in a [`FleetImage`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceImage {
    /// Its id.
    pub id: InstanceId,
    /// Its pool.
    pub pool: Pool,
    /// Its version.
    pub version: Version,
    /// Its state.
    pub state: InstanceState,
    /// Its address.
    pub address: String,
    /// Whether it is registered, and if so whether it is draining.
    pub draining: Option<bool>,
}

impl SimFleet {
    /// The fleet's state as data.
    pub fn image(&self) -> FleetImage {
        let state = self.state();
        let (ongoing, violations) = state.invariants.parts();
        let mut apps: Vec<AppImage> = state
            .apps
            .iter()
            .map(|(app, app_state)| {
                let mut instances: Vec<InstanceImage> = app_state
                    .instances
                    .iter()
                    .map(|(id, instance)| InstanceImage {
                        id: id.clone(),
                        pool: instance.pool.clone(),
                        version: instance.version.clone(),
                        state: instance.state,
                        address: instance.address.clone(),
                        draining: app_state
                            .members
                            .get(id)
                            .map(|membership| *membership == Membership::Draining),
                    })
                    .collect();
                instances.sort_by(|a, b| a.id.cmp(&b.id));
                AppImage {
                    app: app.clone(),
                    instances,
                    routing: app_state.routing.clone(),
                    request_policy: app_state.request_policy.clone(),
                    capacity_floor: app_state.capacity_floor,
                    floor_reached: app_state.floor_reached,
                }
            })
            .collect();
        apps.sort_by(|a, b| a.app.cmp(&b.app));
        let mut profiles: Vec<_> = state
            .profiles
            .iter()
            .map(|((app, version), profile)| {
                (
                    app.clone(),
                    version.clone(),
                    profile.error_rate(),
                    profile.p50(),
                    profile.p99(),
                )
            })
            .collect();
        profiles.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        FleetImage {
            apps,
            profiles,
            next_instance: state.next_instance,
            installs: state.installs,
            ongoing,
            violations,
        }
    }

    /// Replaces the fleet's apps, instances, profiles and invariant record with `image`'s.
    ///
    /// # Errors
    /// A profile in the image is out of range; the fleet is unchanged.
    pub fn restore(&self, image: FleetImage) -> Result<(), ProfileError> {
        let profiles = image
            .profiles
            .into_iter()
            .map(|(app, version, error_rate, p50, p99)| {
                Ok(((app, version), VersionProfile::new(error_rate, p50, p99)?))
            })
            .collect::<Result<HashMap<_, _>, ProfileError>>()?;
        let mut state = self.state();
        state.apps = image
            .apps
            .into_iter()
            .map(|app| {
                let mut app_state = AppState {
                    routing: app.routing,
                    request_policy: app.request_policy,
                    capacity_floor: app.capacity_floor,
                    floor_reached: app.floor_reached,
                    ..AppState::default()
                };
                for instance in app.instances {
                    if let Some(draining) = instance.draining {
                        let membership = if draining {
                            Membership::Draining
                        } else {
                            Membership::Active
                        };
                        app_state.members.insert(instance.id.clone(), membership);
                    }
                    app_state.instances.insert(
                        instance.id,
                        SimInstance {
                            pool: instance.pool,
                            version: instance.version,
                            state: instance.state,
                            address: instance.address,
                            busy_until: None,
                            born: None,
                        },
                    );
                }
                (app.app, app_state)
            })
            .collect();
        state.profiles = profiles;
        state.next_instance = image.next_instance;
        state.installs = image.installs;
        state.invariants = InvariantChecker::from_parts(image.ongoing, image.violations);
        state.changed();
        Ok(())
    }
}
