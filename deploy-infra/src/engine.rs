//! Plan, apply, destroy and refresh.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::Value;

use crate::model::{InfraError, Provider, Resource, check_name};
use crate::state::{HeldLock, Intent, ResourceState, State, StateStore};

/// What a plan does to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Make it.
    Create,
    /// Change it in place.
    Update,
    /// Delete and make it again (tainted, or a change the provider cannot make in place).
    Replace,
    /// Remove it.
    Delete,
    /// Leave it.
    NoOp,
}

/// One resource's change.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// `kind.name`.
    pub id: String,
    /// What happens.
    pub action: Action,
    /// Recorded configuration (or attributes, for drift).
    pub before: Option<Value>,
    /// Desired configuration.
    pub after: Option<Value>,
    kind: String,
    name: String,
    depends_on: Vec<String>,
    /// Keys whose values `render` hides.
    sensitive: BTreeSet<String>,
}

/// The changes that bring recorded state to the desired one, in a valid order.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The environment.
    pub environment: String,
    /// Every resource's change, in apply order.
    pub changes: Vec<Change>,
}

impl Plan {
    /// Changes other than no-ops.
    pub fn actions(&self) -> Vec<(&str, Action)> {
        self.changes
            .iter()
            .filter(|change| change.action != Action::NoOp)
            .map(|change| (change.id.as_str(), change.action))
            .collect()
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.actions().is_empty()
    }

    /// A readable diff: `+` create, `~` update, `-/+` replace, `-` delete; the values of
    /// keys marked [sensitive](Resource::sensitive) show as `(sensitive)`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for change in self.changes.iter().filter(|change| change.action != Action::NoOp) {
            let sign = match change.action {
                Action::Create => "+",
                Action::Update => "~",
                Action::Replace => "-/+",
                Action::Delete => "-",
                Action::NoOp => " ",
            };
            let _ = writeln!(out, "{sign} {}", change.id);
            if let (Some(Value::Object(before)), Some(Value::Object(after))) = (&change.before, &change.after)
            {
                for key in before.keys().chain(after.keys()).collect::<BTreeSet<_>>() {
                    let shown = |value: &Value| match change.sensitive.contains(key) {
                        true => "(sensitive)".to_owned(),
                        false => value.to_string(),
                    };
                    let line = match (before.get(key), after.get(key)) {
                        (Some(old), Some(new)) if old != new => format!("{} -> {}", shown(old), shown(new)),
                        (Some(old), None) => format!("{} -> (removed)", shown(old)),
                        (None, Some(new)) => shown(new),
                        _ => continue,
                    };
                    let _ = writeln!(out, "    {key}: {line}");
                }
            }
        }
        let count = |action| {
            self.changes
                .iter()
                .filter(|change| change.action == action)
                .count()
        };
        let _ = write!(
            out,
            "Plan: {} to create, {} to update, {} to replace, {} to delete.",
            count(Action::Create),
            count(Action::Update),
            count(Action::Replace),
            count(Action::Delete)
        );
        out
    }
}

/// What an apply did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ApplyReport {
    /// Resources changed, with the action.
    pub done: Vec<(String, Action)>,
    /// Resources whose provider call failed, with the error.
    pub failed: Vec<(String, String)>,
    /// Resources not attempted because a dependency failed.
    pub skipped: Vec<String>,
    /// Intents a previous crash left, resolved at load.
    pub recovered: Vec<String>,
}

/// Infrastructure as code over providers and a state store.
#[derive(Debug, Clone)]
pub struct Infra {
    providers: HashMap<String, Arc<dyn Provider>>,
    states: StateStore,
    /// Provider calls in flight at most (default 10).
    pub parallelism: usize,
    /// How long the environment's lock outlives its holder (default 15 minutes): an
    /// operation renews it every third of this for as long as it runs, so it only says how
    /// long a holder that died blocks the environment. Clamped to
    /// [`MIN_LOCK_TTL`](crate::MIN_LOCK_TTL)`..=`[`MAX_LOCK_TTL`](crate::MAX_LOCK_TTL).
    pub lock_ttl: Duration,
}

impl Infra {
    /// An engine over `states`.
    pub fn new(states: StateStore) -> Self {
        Self {
            providers: HashMap::new(),
            states,
            parallelism: 10,
            lock_ttl: Duration::from_secs(900),
        }
    }

    /// Registers the provider of a kind.
    pub fn provider(mut self, provider: impl Provider) -> Self {
        self.providers
            .insert(provider.kind().to_owned(), Arc::new(provider));
        self
    }

    fn provider_of(&self, kind: &str, id: &str) -> Result<&Arc<dyn Provider>, InfraError> {
        self.providers.get(kind).ok_or_else(|| InfraError::UnknownKind {
            resource: id.into(),
            kind: kind.into(),
        })
    }

    /// Checks the declaration and returns ids in dependency order.
    fn order(&self, desired: &[Resource]) -> Result<Vec<String>, InfraError> {
        let mut by_id: BTreeMap<String, &Resource> = BTreeMap::new();
        for resource in desired {
            check_name("resource kind", &resource.kind, false)?;
            let id = resource.id();
            let provider = self.provider_of(&resource.kind, &id)?;
            provider
                .validate(&resource.name, &resource.config)
                .map_err(|reason| InfraError::InvalidConfig {
                    resource: id.clone(),
                    reason,
                })?;
            if by_id.insert(id.clone(), resource).is_some() {
                return Err(InfraError::Duplicate(id));
            }
        }
        for (id, resource) in &by_id {
            if let Some(missing) = resource
                .depends_on
                .iter()
                .find(|dependency| !by_id.contains_key(*dependency))
            {
                return Err(InfraError::MissingDependency {
                    resource: id.clone(),
                    dependency: missing.clone(),
                });
            }
        }
        let mut order = Vec::with_capacity(by_id.len());
        post_order(
            by_id.keys().map(String::as_str),
            |id| by_id[id].depends_on.as_slice(),
            |id| order.push(id.to_owned()),
        )
        .map_err(InfraError::Cycle)?;
        Ok(order)
    }

    /// The changes that would bring `environment` to `desired` (recorded state, after
    /// resolving what a crash left).
    ///
    /// # Errors
    /// Unknown kinds, undeclared dependencies, cycles (named), invalid configuration.
    pub async fn plan(&self, environment: &str, desired: &[Resource]) -> Result<Plan, InfraError> {
        let mut state = self.states.load(environment).await?;
        state.recover();
        self.plan_against(environment, desired, &state)
    }

    fn plan_against(
        &self,
        environment: &str,
        desired: &[Resource],
        state: &State,
    ) -> Result<Plan, InfraError> {
        let order = self.order(desired)?;
        let by_id: HashMap<String, &Resource> =
            desired.iter().map(|resource| (resource.id(), resource)).collect();
        let mut changes = Vec::new();
        // Deletions first, dependents before what they depend on.
        let mut doomed: Vec<&String> = state
            .resources
            .keys()
            .filter(|id| !by_id.contains_key(*id))
            .collect();
        let depths = depths(state);
        doomed.sort_by_key(|id| std::cmp::Reverse(depths.get(id.as_str()).copied().unwrap_or(0)));
        for id in doomed {
            let recorded = &state.resources[id];
            changes.push(Change {
                id: id.clone(),
                action: Action::Delete,
                before: Some(recorded.config.clone()),
                after: None,
                kind: recorded.kind.clone(),
                name: recorded.name.clone(),
                depends_on: Vec::new(),
                sensitive: recorded.sensitive.clone(),
            });
        }
        for id in order {
            let resource = by_id[&id];
            let provider = self.provider_of(&resource.kind, &id)?;
            let recorded = state.resources.get(&id);
            let (action, before) = match recorded {
                None => (Action::Create, None),
                Some(recorded) if recorded.tainted => (Action::Replace, Some(recorded.config.clone())),
                Some(recorded) if recorded.config == resource.config => {
                    (Action::NoOp, Some(recorded.config.clone()))
                }
                Some(recorded) if provider.requires_replace(&recorded.config, &resource.config) => {
                    (Action::Replace, Some(recorded.config.clone()))
                }
                Some(recorded) => (Action::Update, Some(recorded.config.clone())),
            };
            // A value once sensitive stays hidden in the diff that replaces it.
            let was_sensitive = recorded.map(|recorded| &recorded.sensitive).into_iter().flatten();
            changes.push(Change {
                id,
                action,
                before,
                after: Some(resource.config.clone()),
                kind: resource.kind.clone(),
                name: resource.name.clone(),
                depends_on: resource.depends_on.clone(),
                sensitive: resource.sensitive.iter().chain(was_sensitive).cloned().collect(),
            });
        }
        Ok(Plan {
            environment: environment.into(),
            changes,
        })
    }

    /// Plans and applies under the environment's lock: deletions (dependents first), then
    /// creations and updates in dependency order, up to `parallelism` at once. Each provider
    /// call is recorded as an intent before it starts and committed after, so the state is
    /// accurate whatever happens; a failed or interrupted create or update leaves the
    /// resource tainted (replaced next time).
    ///
    /// The lock is renewed every third of [`Infra::lock_ttl`] while the apply runs, and
    /// every state write carries its fence. If the lock is lost (not renewed in time, or
    /// forced open), the apply makes no further provider call or state write.
    ///
    /// # Errors
    /// As [`Infra::plan`]; [`InfraError::Locked`]; [`InfraError::LockLost`] (calls in flight
    /// then are left as intents, resolved by the next apply); [`InfraError::Apply`] listing
    /// failures (what succeeded is recorded); store errors, which also stop the apply.
    ///
    /// # Cancellation
    /// Dropped, it stops as a crash would: calls in flight are left as intents, and the lock
    /// expires after its TTL (or is forced open).
    pub async fn apply(
        &self,
        environment: &str,
        desired: &[Resource],
        holder: &str,
    ) -> Result<ApplyReport, InfraError> {
        let lock = self
            .states
            .lock(environment, holder, "apply", self.lock_ttl)
            .await?;
        let result = self.hold(&lock, self.apply_locked(&lock, desired)).await;
        self.unlock(&lock, result).await
    }

    /// Deletes everything recorded for the environment, dependents first.
    ///
    /// # Errors
    /// As [`Infra::apply`].
    pub async fn destroy(&self, environment: &str, holder: &str) -> Result<ApplyReport, InfraError> {
        let lock = self
            .states
            .lock(environment, holder, "destroy", self.lock_ttl)
            .await?;
        let result = self.hold(&lock, self.apply_locked(&lock, &[])).await;
        self.unlock(&lock, result).await
    }

    /// Runs `work` while keeping `lock`; a lost lock ends it at once (dropping `work`
    /// mid-call, as a crash would).
    async fn hold<T>(
        &self,
        lock: &HeldLock,
        work: impl Future<Output = Result<T, InfraError>>,
    ) -> Result<T, InfraError> {
        tokio::select! {
            biased;
            lost = self.states.keep(lock) => Err(lost),
            result = work => result,
        }
    }

    /// Releases `lock` after `result`: an operation succeeds only if it held the lock to
    /// its end.
    async fn unlock<T>(&self, lock: &HeldLock, result: Result<T, InfraError>) -> Result<T, InfraError> {
        if let Err(error @ InfraError::LockLost { .. }) = result {
            return Err(error);
        }
        match (result, self.states.unlock(lock).await) {
            (Ok(value), Ok(())) => Ok(value),
            (Ok(_), Err(error)) => Err(error),
            (Err(error), unlocked) => {
                if let Err(unlock) = unlocked {
                    tracing::warn!(environment = %lock.environment, %unlock, "unlock after a failed operation");
                }
                Err(error)
            }
        }
    }

    async fn apply_locked(&self, lock: &HeldLock, desired: &[Resource]) -> Result<ApplyReport, InfraError> {
        let environment = lock.environment.as_str();
        let mut state = self.states.load(environment).await?;
        let interrupted: Vec<String> = state.intents.keys().cloned().collect();
        let recovered = state.recover();
        // Make the recovery durable: tainted resources recorded, stale intents gone.
        for id in &interrupted {
            self.states
                .put_resource(lock, id, state.resources.get(id))
                .await?;
            self.states.put_intent(lock, id, None).await?;
        }
        let plan = self.plan_against(environment, desired, &state)?;
        let mut report = ApplyReport {
            recovered,
            ..ApplyReport::default()
        };
        // Deletions go one after another (they are few and order matters).
        for change in plan
            .changes
            .iter()
            .filter(|change| change.action == Action::Delete)
        {
            let provider = self.provider_of(&change.kind, &change.id)?.clone();
            match self.step(lock, &provider, change, "delete").await? {
                Ok(()) => report.done.push((change.id.clone(), Action::Delete)),
                Err(error) => report.failed.push((change.id.clone(), error)),
            }
        }
        let work: Vec<&Change> = plan
            .changes
            .iter()
            .filter(|change| !matches!(change.action, Action::Delete | Action::NoOp))
            .collect();
        // Kahn's algorithm: a change is ready when the changes it depends on are done.
        let index: HashMap<&str, usize> = work
            .iter()
            .enumerate()
            .map(|(at, change)| (change.id.as_str(), at))
            .collect();
        let mut waiting: Vec<usize> = vec![0; work.len()];
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); work.len()];
        for (at, change) in work.iter().enumerate() {
            for dependency in &change.depends_on {
                if let Some(&before) = index.get(dependency.as_str()) {
                    waiting[at] += 1;
                    dependents[before].push(at);
                }
            }
        }
        let mut ready: std::collections::VecDeque<usize> =
            (0..work.len()).filter(|at| waiting[*at] == 0).collect();
        let mut doomed = vec![false; work.len()];
        let mut running = FuturesUnordered::new();
        loop {
            while running.len() < self.parallelism.max(1) {
                let Some(at) = ready.pop_front() else { break };
                let change = work[at].clone();
                let provider = self.provider_of(&change.kind, &change.id)?.clone();
                running.push(async move {
                    let result = async {
                        if change.action == Action::Replace
                            && let Err(error) = self.step(lock, &provider, &change, "delete").await?
                        {
                            return Ok(Err(error));
                        }
                        let verb = if change.action == Action::Update {
                            "update"
                        } else {
                            "create"
                        };
                        self.step(lock, &provider, &change, verb).await
                    }
                    .await;
                    (at, change, result)
                });
            }
            let Some((at, change, result)) = running.next().await else {
                break;
            };
            // A store error (a lost lock among them) stops everything: the calls still in
            // flight are dropped with their intents recorded, as in a crash.
            let result = result?;
            let succeeded = result.is_ok();
            match result {
                Ok(()) => report.done.push((change.id.clone(), change.action)),
                Err(error) => report.failed.push((change.id.clone(), error)),
            }
            // Dependents of a failure are skipped, and theirs in turn.
            let mut released = vec![(at, !succeeded)];
            while let Some((done, failed)) = released.pop() {
                for &next in &dependents[done] {
                    doomed[next] |= failed;
                    waiting[next] -= 1;
                    if waiting[next] == 0 {
                        if doomed[next] {
                            report.skipped.push(work[next].id.clone());
                            released.push((next, true));
                        } else {
                            ready.push_back(next);
                        }
                    }
                }
            }
        }
        if report.failed.is_empty() {
            Ok(report)
        } else {
            Err(InfraError::Apply(
                report
                    .failed
                    .iter()
                    .map(|(id, error)| format!("{id}: {error}"))
                    .collect(),
            ))
        }
    }

    /// One provider call: intent recorded, call made, result recorded, intent cleared.
    /// The outer error is the state's (fatal: nothing more can be recorded), the inner one
    /// the provider's (the resource failed).
    async fn step(
        &self,
        lock: &HeldLock,
        provider: &Arc<dyn Provider>,
        change: &Change,
        verb: &str,
    ) -> Result<Result<(), String>, InfraError> {
        let name = change.name.as_str();
        let config = change
            .after
            .clone()
            .or_else(|| change.before.clone())
            .unwrap_or(Value::Null);
        let intent = Intent {
            resource: change.id.clone(),
            action: verb.into(),
            config: config.clone(),
            depends_on: change.depends_on.clone(),
            at: self.states.now(),
        };
        self.states.put_intent(lock, &change.id, Some(&intent)).await?;
        let outcome = match verb {
            "delete" => provider
                .delete(name, change.before.as_ref().unwrap_or(&config))
                .await
                .map(|()| None),
            "update" => provider.update(name, &config).await.map(Some),
            _ => provider.create(name, &config).await.map(Some),
        };
        let recorded = |attributes: Value, tainted: bool| ResourceState {
            kind: change.kind.clone(),
            name: change.name.clone(),
            config: config.clone(),
            attributes,
            depends_on: change.depends_on.clone(),
            tainted,
            sensitive: change.sensitive.clone(),
        };
        let (resource, error) = match outcome {
            Ok(None) => (None, None),
            Ok(Some(attributes)) => (Some(recorded(attributes, false)), None),
            // A failed delete leaves the resource as it was recorded.
            Err(error) if verb == "delete" => {
                let before = change.before.clone().unwrap_or(Value::Null);
                let kept = ResourceState {
                    config: before,
                    ..recorded(Value::Null, false)
                };
                (Some(kept), Some(error.0))
            }
            Err(error) => (Some(recorded(Value::Null, true)), Some(error.0)),
        };
        self.states
            .put_resource(lock, &change.id, resource.as_ref())
            .await?;
        self.states.put_intent(lock, &change.id, None).await?;
        Ok(error.map_or(Ok(()), Err))
    }

    /// Drift: reads every recorded resource and returns, as a read-only plan, what differs
    /// (`Update` when its attributes changed, `Create` when it is gone). It writes nothing,
    /// so it takes no lock (during an apply, calls in flight may show as drift).
    ///
    /// # Errors
    /// Unknown kinds, store errors.
    pub async fn refresh(&self, environment: &str) -> Result<Plan, InfraError> {
        let state = self.states.load(environment).await?;
        let mut changes = Vec::new();
        for (id, recorded) in &state.resources {
            let provider = self.provider_of(&recorded.kind, id)?;
            let now = provider
                .read(&recorded.name, &recorded.config)
                .await
                .map_err(|error| InfraError::Apply(vec![format!("{id}: {error}")]))?;
            let action = match &now {
                None => Action::Create,
                Some(attributes) if *attributes != recorded.attributes => Action::Update,
                Some(_) => Action::NoOp,
            };
            changes.push(Change {
                id: id.clone(),
                action,
                before: now,
                after: Some(recorded.attributes.clone()),
                kind: recorded.kind.clone(),
                name: recorded.name.clone(),
                depends_on: recorded.depends_on.clone(),
                sensitive: recorded.sensitive.clone(),
            });
        }
        Ok(Plan {
            environment: environment.into(),
            changes,
        })
    }
}

/// Longest chain of recorded dependencies below each recorded resource, computed once for
/// all (deletions go deepest first, so dependents before what they depend on).
fn depths(state: &State) -> HashMap<&str, usize> {
    let mut depths: HashMap<&str, usize> = HashMap::with_capacity(state.resources.len());
    let depends_on = |id: &str| {
        state
            .resources
            .get(id)
            .map_or(&[][..], |r| r.depends_on.as_slice())
    };
    // Recorded state comes from validated plans, so it has no cycle; were one there, the
    // resources it left unvisited would simply count as depth 0.
    let _ = post_order(state.resources.keys().map(String::as_str), depends_on, |id| {
        let depth = depends_on(id)
            .iter()
            .map(|dependency| depths.get(dependency.as_str()).map_or(1, |d| d + 1))
            .max()
            .unwrap_or(0);
        depths.insert(id, depth);
    });
    depths
}

/// Whether a node is on the current path or finished.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    OnPath,
    Done,
}

/// Depth-first post-order over a dependency graph from `roots`: `finish` sees each reachable
/// id once, after all its dependencies. Iterative, since chains can be thousands deep. A
/// cycle stops the walk and is returned as the path that closes it (`a, b, a`).
fn post_order<'a>(
    roots: impl IntoIterator<Item = &'a str>,
    depends_on: impl Fn(&'a str) -> &'a [String],
    mut finish: impl FnMut(&'a str),
) -> Result<(), Vec<String>> {
    let mut marks: HashMap<&'a str, Mark> = HashMap::new();
    // The current path, each with the index of its next dependency to look at.
    let mut path: Vec<(&'a str, usize)> = Vec::new();
    for root in roots {
        if marks.contains_key(root) {
            continue;
        }
        marks.insert(root, Mark::OnPath);
        path.push((root, 0));
        while let Some(&mut (id, ref mut next)) = path.last_mut() {
            let Some(dependency) = depends_on(id).get(*next) else {
                path.pop();
                marks.insert(id, Mark::Done);
                finish(id);
                continue;
            };
            *next += 1;
            match marks.get(dependency.as_str()) {
                Some(Mark::Done) => {}
                Some(Mark::OnPath) => {
                    let from = path.iter().position(|(on, _)| *on == dependency).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        path[from..].iter().map(|(on, _)| (*on).to_owned()).collect();
                    cycle.push(dependency.clone());
                    return Err(cycle);
                }
                None => {
                    marks.insert(dependency, Mark::OnPath);
                    path.push((dependency, 0));
                }
            }
        }
    }
    Ok(())
}
