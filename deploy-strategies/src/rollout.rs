//! Starting and resuming rollouts: [`Rollout`] and its builder. A rollout runs in a task of
//! its own ([`crate::runner`]) under the app's lease ([`crate::lease`]).

use std::sync::Arc;
use std::time::Duration;

use deploy_core::{
    AppId, ChannelSink, DynDeploymentGuard, DynEventSink, DynStore, InstanceState, Lease, Pool, Precondition,
    RecordStoreExt, RecordVersion, Revision, StoreError, TrafficSplit, Version, WriteOptions,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::converge::Converger;
use crate::error::{RolloutError, SpecError};
use crate::handle::{RolloutControl, RolloutHandle};
use crate::hooks::{Hook, HookPoint, RegisteredHook};
use crate::journal::{InstanceList, Journal, Start, instances_key, journal_key, lease_name};
use crate::lease::LeaseKeeper;
use crate::notifications::RolloutNotifications;
use crate::options::{RolloutBackends, RolloutOptions};
use crate::runner::{Runner, detail_of, status_of};
use crate::spec::Strategy;
use crate::watch::GuardConfig;

/// What `resume` does with an interrupted rollout that was going forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResumePolicy {
    /// Carry on from the interrupted step (which runs again; steps are idempotent).
    #[default]
    Continue,
    /// Roll back to the previous version.
    RollBack,
}

/// A holder name no other deployer shares: host, process and a random part, so two
/// containers that both run as PID 1 (or two `Rollout`s in one process) never collide.
fn unique_holder() -> String {
    let host = gethostname::gethostname();
    let host = host.to_string_lossy();
    let host = if host.is_empty() { "deployer".into() } else { host };
    format!("{host}-{}-{:016x}", std::process::id(), rand::random::<u64>())
}

/// Builds a [`Rollout`].
#[derive(Debug)]
pub struct RolloutBuilder {
    strategy: Strategy,
    backends: RolloutBackends,
    store: Arc<DynStore>,
    sink: Option<Arc<DynEventSink>>,
    hooks: Vec<RegisteredHook>,
    options: RolloutOptions,
    holder: String,
    guard: Option<GuardConfig>,
    notifications: Option<RolloutNotifications>,
}

impl RolloutBuilder {
    /// Tells `notifications`' subscribers what the rollout does (started, step reached,
    /// paused, promoted, analysis failed or inconclusive, rolled back, completed, failed).
    /// Delivery happens in the background and never holds up or fails the rollout; each
    /// report lists the deliveries for its revision as they stood when the rollout ended
    /// ([`RolloutReport::notifications`](crate::RolloutReport::notifications)).
    #[must_use]
    pub fn notifications(mut self, notifications: RolloutNotifications) -> Self {
        self.notifications = Some(notifications);
        self
    }

    /// Watches the rollout with `guard`: from the first traffic to the new version's pool
    /// until the rollout ends, its alert `rules` are checked every `every`, scoped to that
    /// pool. A firing critical alert rolls back at once (the reason names the rule and the
    /// incident) and the guard is told ([`DeploymentGuard::rolled_back`]); other alerts are
    /// recorded in the report, not acted on. A failed check is logged and tried again at the
    /// next interval: it never fails the rollout. The guard is released when the rollout
    /// ends. Works with every strategy (blue-green's post-promotion window included).
    ///
    /// [`DeploymentGuard::rolled_back`]: deploy_core::DeploymentGuard::rolled_back
    #[must_use]
    pub fn guard(mut self, guard: Arc<DynDeploymentGuard>, rules: Vec<String>, every: Duration) -> Self {
        self.guard = Some(GuardConfig { guard, rules, every });
        self
    }

    /// Sends events to `sink` too (they always go to `tracing` and to each handle).
    #[must_use]
    pub fn event_sink(mut self, sink: Arc<DynEventSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Runs `hook` at `point`; it fails if it takes longer than `timeout`.
    #[must_use]
    pub fn hook(mut self, point: HookPoint, timeout: Duration, hook: impl Hook) -> Self {
        self.hooks.push(RegisteredHook {
            point,
            timeout,
            hook: Arc::new(hook),
        });
        self
    }

    /// Timing and limits.
    #[must_use]
    pub fn options(mut self, options: RolloutOptions) -> Self {
        self.options = options;
        self
    }

    /// This deployer's name in leases (default: host name, process id and a random part,
    /// unique to this builder). A live lease is refused to every acquirer, this name
    /// included, so a restarted deployer resumes once its old holding has lapsed.
    #[must_use]
    pub fn holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = holder.into();
        self
    }

    /// Checks the strategy and builds.
    ///
    /// # Errors
    /// [`RolloutError::InvalidSpec`] naming the bad field.
    pub fn build(self) -> Result<Rollout, RolloutError> {
        self.strategy.validate()?;
        self.options.validate()?;
        // Header and cookie routes and sticky weights need a backend that can do them.
        if let Strategy::Canary(spec) = &self.strategy
            && self.backends.request_routing.is_none()
        {
            if let Some(index) = spec.steps.iter().position(|step| !step.routes.is_empty()) {
                return Err(SpecError::new(
                    "canary.steps.routes",
                    format!(
                        "step {} routes requests by header or cookie, but no request-routing backend \
                         was given (RolloutBackends::with_request_routing)",
                        index + 1
                    ),
                )
                .into());
            }
            if spec.sticky {
                return Err(SpecError::new(
                    "canary.sticky",
                    "sticky routing needs a request-routing backend (RolloutBackends::with_request_routing)",
                )
                .into());
            }
        }
        if let Some(guard) = &self.guard {
            validate_guard(guard)?;
        }
        Ok(Rollout {
            inner: Arc::new(Shared {
                strategy: self.strategy,
                converger: Converger {
                    backends: self.backends,
                    options: self.options,
                },
                store: self.store,
                sink: self.sink,
                hooks: self.hooks,
                holder: self.holder,
                guard: self.guard,
                notifications: self.notifications,
            }),
        })
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) strategy: Strategy,
    pub(crate) converger: Converger,
    pub(crate) store: Arc<DynStore>,
    pub(crate) sink: Option<Arc<DynEventSink>>,
    pub(crate) hooks: Vec<RegisteredHook>,
    pub(crate) holder: String,
    pub(crate) guard: Option<GuardConfig>,
    pub(crate) notifications: Option<RolloutNotifications>,
}

/// A guard needs rules to check, by name, and an interval.
fn validate_guard(guard: &GuardConfig) -> Result<(), SpecError> {
    if guard.rules.is_empty() {
        return Err(SpecError::new("guard.rules", "name at least one alert rule"));
    }
    if let Some(index) = guard.rules.iter().position(|rule| rule.trim().is_empty()) {
        return Err(SpecError::new(
            format!("guard.rules[{index}]"),
            "a rule name cannot be empty",
        ));
    }
    if guard.every.is_zero() {
        return Err(SpecError::new("guard.every", "must be longer than zero"));
    }
    Ok(())
}

/// A strategy composed with backends, a store, an event sink and hooks: starts and resumes
/// rollouts of any app.
///
/// ```
/// # use std::sync::Arc;
/// # use std::time::Duration;
/// # use deploy_core::{AppId, DynStore, InfraManager, LoadBalancer, MemoryStore, Pool, TrafficSplit, Version};
/// # use deploy_strategies::{RolloutBackends, CanarySpec, Rollout, RolloutOutcome, Strategy};
/// # use deploy_testkit::SimFleet;
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let app = AppId::new("shop")?;
/// let fleet = SimFleet::new();
/// for instance in fleet.provision(&app, &Pool::stable(), &Version::new("1.0")?, 4).await? {
///     fleet.register(&instance).await?;
/// }
/// fleet.set_routing(&app, &TrafficSplit::all_to(Pool::stable())).await?;
///
/// let store: Arc<DynStore> = Arc::new(MemoryStore::new());
/// let strategy = Strategy::Canary(CanarySpec::linear(25.0, Duration::from_secs(60), None)?);
/// let rollout = Rollout::builder(strategy, RolloutBackends::from_one(fleet.clone()), store).build()?;
/// let report = rollout.start(&app, &Version::new("2.0")?).await?.wait().await?;
/// assert_eq!(report.outcome, RolloutOutcome::Completed);
/// assert_eq!(fleet.routing(&app).await?.map(|s| s.pools().count()), Some(1));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Rollout {
    pub(crate) inner: Arc<Shared>,
}

impl Rollout {
    /// A builder for `strategy` over `backends`, journaling to `store`.
    pub fn builder(strategy: Strategy, backends: RolloutBackends, store: Arc<DynStore>) -> RolloutBuilder {
        RolloutBuilder {
            strategy,
            backends,
            store,
            sink: None,
            hooks: Vec::new(),
            options: RolloutOptions::default(),
            holder: unique_holder(),
            guard: None,
            notifications: None,
        }
    }

    /// Takes the app's lease; returns it with the time the request was sent, from which its
    /// local deadline counts.
    async fn acquire(&self, app: &AppId) -> Result<(Lease, Instant), RolloutError> {
        let ttl = self.inner.converger.options.lease_ttl;
        let sent = Instant::now();
        match self
            .inner
            .store
            .acquire(&lease_name(app), &self.inner.holder, ttl)
            .await
        {
            Ok(lease) => Ok((lease, sent)),
            Err(StoreError::LeaseHeld { holder, .. }) => Err(RolloutError::AppBusy {
                app: app.clone(),
                holder,
            }),
            Err(source) => Err(RolloutError::Journal {
                app: app.clone(),
                source,
            }),
        }
    }

    /// Reads the journal (without a rolling update's instance list).
    async fn read_journal(&self, app: &AppId) -> Result<Option<(Journal, RecordVersion)>, RolloutError> {
        self.inner
            .store
            .get_json::<Journal>(&journal_key(app))
            .await
            .map_err(|source| RolloutError::Journal {
                app: app.clone(),
                source,
            })
    }

    /// Reads a rolling update's instance list into `journal`. A rolling update over a
    /// pool must have one, of its own revision and as long as the journal says: without
    /// it, its rollback or clean-up would act on the wrong instances (or retire them all).
    async fn attach_instances(&self, journal: &mut Journal) -> Result<(), RolloutError> {
        let app = &journal.app;
        let list = self
            .inner
            .store
            .get_json::<InstanceList>(&instances_key(app))
            .await
            .map_err(|source| RolloutError::Journal {
                app: app.clone(),
                source,
            })?;
        let needed = journal.instance_count;
        let inconsistent = |reason: String| RolloutError::JournalInconsistent {
            app: app.clone(),
            reason,
        };
        match list {
            // Journals written before the count was kept have none (0): any list of their
            // revision is theirs.
            Some((list, _))
                if list.revision == journal.revision && (needed == 0 || list.instances.len() == needed) =>
            {
                journal.instances = list.instances;
                Ok(())
            }
            _ if needed == 0 => Ok(()),
            Some((list, _)) if list.revision != journal.revision => Err(inconsistent(format!(
                "the instance list belongs to revision {}, the journal to revision {}",
                list.revision.get(),
                journal.revision.get()
            ))),
            Some((list, _)) => Err(inconsistent(format!(
                "the instance list has {} instances, the journal expects {needed}",
                list.instances.len()
            ))),
            None => Err(inconsistent(format!(
                "the instance list of revision {} ({needed} instances) is missing",
                journal.revision.get()
            ))),
        }
    }

    /// Starts rolling `version` of `app` out.
    ///
    /// # Errors
    /// [`RolloutError::AppBusy`] when another deployer holds the app,
    /// [`RolloutError::Interrupted`] when an earlier rollout must be resumed first,
    /// [`RolloutError::UnknownApp`] when nothing serves the app and no replica count was
    /// given, [`RolloutError::NoInstances`] for a rolling update of a pool with no
    /// instances in rotation; nothing is touched in these cases.
    pub async fn start(&self, app: &AppId, version: &Version) -> Result<RolloutHandle, RolloutError> {
        let (lease, sent) = self.acquire(app).await?;
        match self.prepare(app, version, &lease).await {
            Ok((journal, record)) => Ok(self.spawn(journal, record, lease, sent)),
            Err(err) => {
                let _ = self.inner.store.release(&lease).await;
                Err(err)
            }
        }
    }

    async fn prepare(
        &self,
        app: &AppId,
        version: &Version,
        lease: &Lease,
    ) -> Result<(Journal, RecordVersion), RolloutError> {
        let previous_record = self.read_journal(app).await?;
        if let Some((journal, _)) = &previous_record
            && journal.phase.is_active()
        {
            return Err(RolloutError::Interrupted {
                app: app.clone(),
                revision: journal.revision.get(),
            });
        }
        let backend_error = |source| RolloutError::Backend {
            app: app.clone(),
            source,
        };
        let backends = &self.inner.converger.backends;
        let routing = backends.load_balancer.routing(app).await.map_err(backend_error)?;
        let stable = match routing {
            Some(split) => Some(single_pool(app, &split)?),
            None => None,
        };
        let mut stable_ids = Vec::new();
        let mut previous = None;
        if let Some(pool) = &stable {
            stable_ids = backends
                .load_balancer
                .members(app, pool)
                .await
                .map_err(backend_error)?;
            // The version the pool serves: that of its first running member. Usually the
            // first one answers, so look at a few before reading the whole pool.
            for chunk in [&stable_ids[..stable_ids.len().min(8)], &stable_ids[..]] {
                let described = backends
                    .infra
                    .describe_instances(app, chunk)
                    .await
                    .map_err(backend_error)?;
                previous = described
                    .into_iter()
                    .find(|i| i.state == InstanceState::Running)
                    .map(|i| i.version);
                if previous.is_some() {
                    break;
                }
            }
        }
        let replicas = match self.inner.converger.options.replicas {
            Some(n) if n > 0 => n,
            _ if !stable_ids.is_empty() => stable_ids.len(),
            _ => return Err(RolloutError::UnknownApp { app: app.clone() }),
        };
        let revision = previous_record
            .as_ref()
            .map_or(Revision::FIRST, |(j, _)| j.revision.next());
        let journal = Journal::new(
            self.inner.strategy.clone(),
            Start {
                app: app.clone(),
                revision,
                version: version.clone(),
                previous,
                stable,
                members: stable_ids,
                replicas,
            },
        )?;
        let precondition = match &previous_record {
            Some((_, v)) => Precondition::Version(*v),
            None => Precondition::Absent,
        };
        let store = &self.inner.store;
        if !journal.instances.is_empty() {
            let list = InstanceList {
                revision,
                instances: journal.instances.clone(),
            };
            store
                .put_json(
                    &instances_key(app),
                    &list,
                    WriteOptions::default().fenced(lease.fence()),
                )
                .await
                .map_err(|source| RolloutError::Journal {
                    app: app.clone(),
                    source,
                })?;
        }
        let record = store
            .put_json(
                &journal_key(app),
                &journal,
                WriteOptions::when(precondition).fenced(lease.fence()),
            )
            .await
            .map_err(|source| RolloutError::Journal {
                app: app.clone(),
                source,
            })?;
        Ok((journal, record))
    }

    /// Picks up an interrupted rollout of `app` (its deployer crashed or was killed):
    /// continues it or rolls it back, per `policy`. A rollout that was already rolling back
    /// keeps rolling back.
    ///
    /// # Errors
    /// [`RolloutError::AppBusy`] while the old deployer's lease is live (whatever its
    /// holder name), [`RolloutError::NothingToResume`] when no rollout is interrupted,
    /// [`RolloutError::JournalInconsistent`] when the journal cannot be trusted.
    pub async fn resume(&self, app: &AppId, policy: ResumePolicy) -> Result<RolloutHandle, RolloutError> {
        let (lease, sent) = self.acquire(app).await?;
        match self.interrupted(app).await {
            Ok((mut journal, record)) => {
                if policy == ResumePolicy::RollBack {
                    journal.resume_by_rolling_back();
                }
                Ok(self.spawn(journal, record, lease, sent))
            }
            Err(err) => {
                let _ = self.inner.store.release(&lease).await;
                Err(err)
            }
        }
    }

    /// The journal of an interrupted rollout of `app`, complete.
    async fn interrupted(&self, app: &AppId) -> Result<(Journal, RecordVersion), RolloutError> {
        let Some((mut journal, record)) = self.read_journal(app).await?.filter(|(j, _)| j.phase.is_active())
        else {
            return Err(RolloutError::NothingToResume { app: app.clone() });
        };
        if let Some(reason) = journal.implausible() {
            return Err(RolloutError::JournalInconsistent {
                app: app.clone(),
                reason,
            });
        }
        self.attach_instances(&mut journal).await?;
        Ok((journal, record))
    }

    fn spawn(&self, journal: Journal, record: RecordVersion, lease: Lease, sent: Instant) -> RolloutHandle {
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (status_tx, status_rx) = watch::channel(status_of(&journal, None));
        let (detail_tx, detail_rx) = watch::channel(detail_of(&journal));
        let events = ChannelSink::new(1024);
        let first_events = events.subscribe();
        let (app, revision) = (journal.app.clone(), journal.revision);
        let keeper = LeaseKeeper::start(Arc::clone(&self.inner.store), lease, sent);
        let runner = Runner::new(
            Arc::clone(&self.inner),
            journal,
            record,
            keeper,
            control_rx,
            (status_tx, detail_tx),
            events.clone(),
        );
        let task = tokio::spawn(runner.run());
        RolloutHandle {
            app,
            revision,
            control: RolloutControl { sender: control_tx },
            status: status_rx,
            detail: detail_rx,
            events,
            first_events: Some(first_events),
            task,
        }
    }
}

/// The one pool a settled app routes to.
fn single_pool(app: &AppId, split: &TrafficSplit) -> Result<Pool, RolloutError> {
    let mut pools = split.pools();
    match (pools.next(), pools.next()) {
        (Some(pool), None) => Ok(pool.clone()),
        _ => Err(RolloutError::Backend {
            app: app.clone(),
            source: deploy_core::BackendError::Rejected {
                operation: "start rollout",
                reason: format!("routing is split ({split}); settle it on one pool first"),
            },
        }),
    }
}
