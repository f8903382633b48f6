//! [`HaproxyLoadBalancer`]: pools and routing as servers and weights of an HAProxy backend.

mod routing;
mod runtime;
mod weights;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{
    AppId, BackendError, Instance, InstanceId, LoadBalancer, Pool, RequestPolicy, TrafficSplit,
};

pub use routing::HaproxyRequestRouting;
use runtime::{Address, ServerRow};
pub use runtime::{HaproxyRuntime, ServerState};

/// A [`LoadBalancer`] over HAProxy's runtime API.
///
/// Each app is an HAProxy backend (named after the app unless mapped with
/// [`backend`](Self::backend)) using a dynamic balancing algorithm (`roundrobin`,
/// `leastconn` or `random`). Instances become dynamic servers named `<pool>:<instance>`
/// (`add server`), so membership and pools survive a restart of the deployer: everything is
/// read back from `show servers state`.
///
/// A [`TrafficSplit`] becomes per-server weights (HAProxy's 1..=256): each pool's share is
/// divided evenly among its servers in rotation, scaled so the largest per-server share is
/// 256. The split HAProxy applies therefore differs from the target by the rounding of those
/// integers (for example 10% to one server against 90% over four: 28 against 4 x 256, i.e.
/// 9.86%). [`routing`](LoadBalancer::routing) reads the weights back: when they are exactly
/// those the last target asks for (given the servers now in rotation) it reports that
/// target; otherwise it reports the split the weights give, so an out-of-band change or a
/// half-applied set shows up as a mismatch.
///
/// `deregister` puts the server in `drain` (no new requests, in-flight ones finish), waits
/// until its current sessions reach zero or `drain` has passed (polling every
/// [`drain_poll`](Self::drain_poll)), then puts it in maintenance and deletes it. Changes
/// to one backend are made one at a time, but not the waiting: drains overlap.
///
/// The backend should close server connections after each response (`option
/// http-server-close`) and retry failed connections elsewhere (`retries`, `option
/// redispatch`), so that a server that leaves never takes a request with it;
/// `deploy_lab::launch::Haproxy` (the unpublished lab crate) writes such a configuration.
#[derive(Debug)]
pub struct HaproxyLoadBalancer {
    runtime: HaproxyRuntime,
    backends: HashMap<AppId, String>,
    /// The last target per app, to tell "as set" from "changed behind our back".
    targets: Mutex<HashMap<AppId, TrafficSplit>>,
    /// One change at a time per backend: weights depend on every server of a backend.
    changes: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    drain_poll: Duration,
    /// Per app, how its backend routes requests (see [`HaproxyRequestRouting`]).
    routing: HashMap<AppId, HaproxyRequestRouting>,
    /// The last request policy set per app, to report it as set.
    policies: Mutex<HashMap<AppId, RequestPolicy>>,
}

impl HaproxyLoadBalancer {
    /// A balancer over the runtime API socket at `socket`.
    pub fn new(socket: impl AsRef<Path>) -> Self {
        Self::with_runtime(HaproxyRuntime::new(socket))
    }

    /// A balancer over a configured runtime client.
    pub fn with_runtime(runtime: HaproxyRuntime) -> Self {
        Self {
            runtime,
            backends: HashMap::new(),
            targets: Mutex::new(HashMap::new()),
            changes: Mutex::new(HashMap::new()),
            drain_poll: Duration::from_millis(250),
            routing: HashMap::new(),
            policies: Mutex::new(HashMap::new()),
        }
    }

    /// Routes `app`'s requests by header, cookie and client as `routing` says (its
    /// [`RequestRouting`](deploy_core::RequestRouting) implementation); the backend's
    /// configuration must contain [`HaproxyRequestRouting::config_lines`].
    #[must_use]
    pub fn request_routing(mut self, app: AppId, routing: HaproxyRequestRouting) -> Self {
        self.routing.insert(app, routing);
        self
    }

    /// How often a draining server's sessions are polled (default 250 ms; each poll is one
    /// runtime-API connection).
    #[must_use]
    pub fn drain_poll(mut self, every: Duration) -> Self {
        self.drain_poll = every.max(Duration::from_millis(1));
        self
    }

    /// Waits for, and holds, the right to change `backend`.
    async fn change(&self, backend: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = Arc::clone(self.changes.lock().entry(backend.to_owned()).or_default());
        lock.lock_owned().await
    }

    /// Serves `app` through the HAProxy backend named `backend` (default: the app's id).
    #[must_use]
    pub fn backend(mut self, app: AppId, backend: impl Into<String>) -> Self {
        self.backends.insert(app, backend.into());
        self
    }

    /// The runtime API client.
    pub fn runtime(&self) -> &HaproxyRuntime {
        &self.runtime
    }

    fn backend_of<'a>(&'a self, app: &'a AppId) -> &'a str {
        self.backends.get(app).map_or(app.as_str(), String::as_str)
    }

    fn target_of(&self, app: &AppId) -> Option<TrafficSplit> {
        self.targets.lock().get(app).cloned()
    }

    /// Servers of the backend with their pool and instance parsed from the name; servers
    /// not named by this balancer are left alone.
    async fn servers(&self, app: &AppId) -> Result<Vec<Server>, BackendError> {
        let rows = self.runtime.servers(self.backend_of(app)).await?;
        Ok(rows.into_iter().filter_map(Server::from_row).collect())
    }

    /// Applies the target weights for the servers now in rotation.
    async fn apply_weights(&self, app: &AppId, servers: &[Server]) -> Result<(), BackendError> {
        let Some(target) = self.target_of(app) else {
            return Ok(());
        };
        let backend = self.backend_of(app);
        let mut changes: Vec<(&Server, u32)> = weights::assign(&target, servers)
            .into_iter()
            .filter(|(server, weight)| server.row.weight != *weight)
            .collect();
        // Raises before cuts: lowering the old pool first would, for a moment, leave no
        // server with weight and HAProxy answering 503.
        changes.sort_by_key(|(server, weight)| *weight < server.row.weight);
        for (server, weight) in changes {
            self.runtime.set_weight(backend, &server.row.name, weight).await?;
        }
        Ok(())
    }

    async fn wait_drained(&self, backend: &str, server: &str, drain: Duration) -> Result<(), BackendError> {
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(drain)
            .unwrap_or(now + Duration::from_secs(86_400 * 365 * 30));
        loop {
            match self.runtime.current_sessions(backend, server).await? {
                None | Some(0) => return Ok(()),
                Some(sessions) if tokio::time::Instant::now() >= deadline => {
                    tracing::warn!(
                        backend,
                        server,
                        sessions,
                        "drain time is up with sessions in flight"
                    );
                    return Ok(());
                }
                Some(_) => tokio::time::sleep(self.drain_poll).await,
            }
        }
    }
}

/// A server this balancer manages.
#[derive(Debug, Clone)]
pub(crate) struct Server {
    pub(crate) pool: Pool,
    pub(crate) instance: InstanceId,
    pub(crate) row: ServerRow,
}

impl Server {
    fn from_row(row: ServerRow) -> Option<Self> {
        let (pool, instance) = row.name.split_once(':')?;
        Some(Self {
            pool: Pool::new(pool).ok()?,
            instance: InstanceId::new(instance).ok()?,
            row,
        })
    }

    pub(crate) fn in_rotation(&self) -> bool {
        self.row.state() == ServerState::Ready
    }
}

fn server_name(pool: &Pool, instance: &InstanceId) -> String {
    format!("{pool}:{instance}")
}

/// The instance's address, parsed strictly ([`Address::parse`]): an address that is not
/// `ip:port`, `[ipv6]:port` or `host-name:port` never reaches the runtime API.
fn address_of(instance: &Instance) -> Result<Address, BackendError> {
    let Some(text) = instance.address.as_deref() else {
        return Err(BackendError::NotFound {
            kind: "routable address (host:port) of instance",
            name: instance.id.to_string(),
        });
    };
    Address::parse(text).map_err(|why| BackendError::Rejected {
        operation: "register",
        reason: format!(
            "instance {}: address {:?} is not ip:port or host:port: {why}",
            instance.id,
            text.chars().take(300).collect::<String>()
        ),
    })
}

#[async_trait]
impl LoadBalancer for HaproxyLoadBalancer {
    async fn register(&self, instance: &Instance) -> Result<(), BackendError> {
        let app = &instance.app;
        let address = address_of(instance)?;
        let (host, port) = (address.host(), address.port());
        let backend = self.backend_of(app);
        runtime::validate_name("backend", backend)?;
        let name = server_name(&instance.pool, &instance.id);
        runtime::validate_name("server", &name)?;
        let _change = self.change(backend).await;
        let mut servers = self.servers(app).await?;
        // An instance that moved pools leaves its old server behind.
        for stale in servers
            .iter()
            .filter(|s| s.instance == instance.id && s.row.name != name)
        {
            self.runtime
                .set_state(backend, &stale.row.name, ServerState::Maint)
                .await?;
            self.runtime.delete_server(backend, &stale.row.name).await?;
        }
        servers.retain(|s| s.instance != instance.id || s.row.name == name);
        match servers.iter_mut().find(|s| s.row.name == name) {
            Some(existing)
                if existing.in_rotation()
                    && existing.row.address == host
                    && existing.row.port == Some(port) =>
            {
                return Ok(());
            }
            Some(existing) => {
                self.runtime.set_address(backend, &name, &address).await?;
                existing.row.admin = 0;
            }
            None => {
                self.runtime.add_server(backend, &name, &address).await?;
                servers.push(Server {
                    pool: instance.pool.clone(),
                    instance: instance.id.clone(),
                    row: ServerRow {
                        name: name.clone(),
                        address: host.clone(),
                        port: Some(port),
                        weight: 0,
                        admin: 0,
                    },
                });
            }
        }
        // Weights first, so the server enters rotation with its share and its pool mates
        // give up theirs in the same change.
        self.apply_weights(app, &servers).await?;
        self.runtime.set_state(backend, &name, ServerState::Ready).await?;
        // A route to its pool now reaches it too.
        if let Some(server) = servers.iter_mut().find(|s| s.row.name == name) {
            server.row.admin = 0;
        }
        self.refresh_slots(app, &servers).await
    }

    async fn deregister(
        &self,
        app: &AppId,
        instance: &InstanceId,
        drain: Duration,
    ) -> Result<(), BackendError> {
        let backend = self.backend_of(app);
        let change = self.change(backend).await;
        let mut servers = self.servers(app).await?;
        let Some(at) = servers.iter().position(|s| &s.instance == instance) else {
            return Ok(());
        };
        let leaving = servers.remove(at);
        // Routed requests leave it before it drains: a draining server takes no new
        // requests from the weights, but `use-server` would still send them.
        self.refresh_slots(app, &servers).await?;
        if leaving.in_rotation() {
            self.runtime
                .set_state(backend, &leaving.row.name, ServerState::Drain)
                .await?;
            // The rest of the pool takes over its share.
            self.apply_weights(app, &servers).await?;
        }
        // Other changes to the backend (other drains) go on while this one waits (review m15).
        drop(change);
        self.wait_drained(backend, &leaving.row.name, drain).await?;
        let _change = self.change(backend).await;
        let now = self.runtime.servers(backend).await?;
        if now
            .iter()
            .any(|row| row.name == leaving.row.name && row.state() == ServerState::Ready)
        {
            // Registered again while it drained: it stays.
            return Ok(());
        }
        self.runtime
            .set_state(backend, &leaving.row.name, ServerState::Maint)
            .await?;
        if !self.runtime.delete_server(backend, &leaving.row.name).await? {
            // Out of rotation either way; a later register reuses it, the next deregister retries.
            tracing::debug!(backend, server = %leaving.row.name, "server kept in maintenance: connections remain");
        }
        Ok(())
    }

    async fn members(&self, app: &AppId, pool: &Pool) -> Result<Vec<InstanceId>, BackendError> {
        let mut members: Vec<InstanceId> = self
            .servers(app)
            .await?
            .into_iter()
            .filter(|s| &s.pool == pool && s.in_rotation())
            .map(|s| s.instance)
            .collect();
        members.sort();
        Ok(members)
    }

    async fn routing(&self, app: &AppId) -> Result<Option<TrafficSplit>, BackendError> {
        let servers = self.servers(app).await?;
        if let Some(target) = self.target_of(app) {
            let as_set = weights::assign(&target, &servers)
                .into_iter()
                .all(|(server, weight)| server.row.weight == weight);
            if as_set {
                return Ok(Some(target));
            }
        }
        weights::observed_split(&servers)
    }

    async fn set_routing(&self, app: &AppId, split: &TrafficSplit) -> Result<(), BackendError> {
        let _change = self.change(self.backend_of(app)).await;
        let servers = self.servers(app).await?;
        self.targets.lock().insert(app.clone(), split.clone());
        self.apply_weights(app, &servers).await
    }
}

/// The pools of the servers in rotation, with their members, for weight assignment.
pub(crate) fn pools_in_rotation(servers: &[Server]) -> BTreeMap<&Pool, usize> {
    let mut pools = BTreeMap::new();
    for server in servers.iter().filter(|s| s.in_rotation()) {
        *pools.entry(&server.pool).or_insert(0) += 1;
    }
    pools
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_into_host_and_port() {
        for (text, host, port) in [
            ("127.0.0.1:8080", "127.0.0.1", 8080),
            ("[::1]:8080", "::1", 8080),
            ("Shop-1.Internal.example:443", "shop-1.internal.example", 443),
            ("localhost:65535", "localhost", 65535),
        ] {
            let address = Address::parse(text).unwrap();
            assert_eq!((address.host().as_str(), address.port()), (host, port), "{text}");
        }
        for bad in [
            "127.0.0.1",
            "127.0.0.1:0",
            ":80",
            "host:http",
            "host:70000",
            "host:+80",
            "::1:80",
            "[::1:80",
            "[127.0.0.1]:80",
            "-host:80",
            "a..b:80",
            "10.0.0.9:80 redir https://evil.example:443",
            "10.0.0.9:80\tbackup",
            "host#x:80",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
    }
}
