//! Faults the simulated fleet can be told to inject: [`Fault`] and [`Operation`].

use std::time::Duration;

use deploy_core::{BackendError, InstanceId, Version};
use tokio::time::Instant;

use crate::state::BACKEND;

/// A fleet operation, for latency settings and hangs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Operation {
    /// `InfraManager::list_instances`.
    ListInstances,
    /// `InfraManager::provision`.
    Provision,
    /// `InfraManager::fetch_artifact`.
    FetchArtifact,
    /// `InfraManager::stop_instance`.
    StopInstance,
    /// `InfraManager::install`.
    Install,
    /// `InfraManager::start_instance`.
    StartInstance,
    /// `InfraManager::decommission`.
    Decommission,
    /// `LoadBalancer::register`.
    Register,
    /// `LoadBalancer::deregister` (before draining starts).
    Deregister,
    /// `LoadBalancer::members`.
    Members,
    /// `LoadBalancer::routing`.
    ReadRouting,
    /// `LoadBalancer::set_routing`.
    SetRouting,
    /// `RequestRouting::request_policy`.
    ReadRequestPolicy,
    /// `RequestRouting::set_request_policy`.
    SetRequestPolicy,
    /// `HealthChecker::check`.
    HealthCheck,
    /// `MetricsSource::query`.
    MetricsQuery,
}

/// Something going wrong in the fleet, on purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Every update (install) of this instance fails; the instance stays stopped on its old
    /// version, as a failed install leaves a real machine.
    FailUpdateOf(InstanceId),
    /// The k-th install in the fleet's life (counting from 1) fails.
    FailNthUpdate(u32),
    /// Instances running this version come up unhealthy: checks say so and their requests
    /// fail.
    UnhealthyVersion(Version),
    /// The instance alternates between healthy and unhealthy every `period`, starting
    /// healthy when the fault is injected.
    FlappingHealth {
        /// The instance.
        instance: InstanceId,
        /// How long each phase lasts.
        period: Duration,
    },
    /// `set_routing` fails with a retryable error and changes nothing.
    SetRoutingFails,
    /// `set_routing` reports success and changes nothing.
    SetRoutingIgnored,
    /// `set_request_policy` fails with a retryable error and changes nothing.
    SetRequestPolicyFails,
    /// Metric queries succeed with empty series.
    MetricsNoData,
    /// Metric queries fail with a retryable error (the source is down).
    MetricsDown,
    /// The operation never completes; callers must time out.
    Hang(Operation),
    /// Once this many more changes have been made to the fleet (counted from the
    /// injection; see [`SimFleet::changes`](crate::SimFleet::changes)), every call hangs, as
    /// if its caller had died right after the last one: for killing a deployer in the
    /// middle of a step, at any change it makes.
    FreezeAfterChanges(u64),
}

/// A fault in force, with how many more times it fires.
#[derive(Debug, Clone)]
pub(crate) struct ActiveFault {
    pub(crate) fault: Fault,
    pub(crate) remaining: Option<u32>,
    pub(crate) since: Instant,
    /// The fleet's change count when it was injected.
    pub(crate) changes: u64,
}

/// The faults in force.
#[derive(Debug, Default)]
pub(crate) struct FaultPlan {
    active: Vec<ActiveFault>,
}

impl FaultPlan {
    pub(crate) fn inject(&mut self, fault: Fault, times: Option<u32>, changes: u64) {
        self.active.push(ActiveFault {
            fault,
            remaining: times,
            since: Instant::now(),
            changes,
        });
    }

    /// Whether calls are frozen, the fleet's change count being `changes`.
    pub(crate) fn frozen(&self, changes: u64) -> bool {
        self.active.iter().any(|active| match active.fault {
            // The injection itself is a change.
            Fault::FreezeAfterChanges(after) => changes.saturating_sub(active.changes) > after,
            _ => false,
        })
    }

    pub(crate) fn remove(&mut self, fault: &Fault) {
        self.active.retain(|f| f.fault != *fault);
    }

    pub(crate) fn clear(&mut self) {
        self.active.clear();
    }

    /// The faults in force.
    pub(crate) fn active(&self) -> impl Iterator<Item = &ActiveFault> {
        self.active.iter()
    }

    /// Whether a fault matching `matches` is in force, without using it up (for states,
    /// such as health, that are observed rather than triggered).
    pub(crate) fn find(&self, matches: impl Fn(&Fault) -> bool) -> Option<&ActiveFault> {
        self.active.iter().find(|f| matches(&f.fault))
    }

    /// Fires a fault matching `matches`, using up one of its occurrences.
    pub(crate) fn fire(&mut self, matches: impl Fn(&Fault) -> bool) -> bool {
        let Some(index) = self.active.iter().position(|f| matches(&f.fault)) else {
            return false;
        };
        let fault = &mut self.active[index];
        match &mut fault.remaining {
            Some(1) => {
                self.active.remove(index);
            }
            Some(n) => *n -= 1,
            None => {}
        }
        true
    }

    /// Fires `fault` if it is in force: the sim fleet's unavailability, `what` saying what
    /// failed.
    pub(crate) fn fail(&mut self, fault: Fault, what: &str) -> Result<(), BackendError> {
        match self.fire(|f| *f == fault) {
            true => Err(BackendError::unavailable(
                BACKEND,
                format!("injected fault: {what}"),
            )),
            false => Ok(()),
        }
    }
}
