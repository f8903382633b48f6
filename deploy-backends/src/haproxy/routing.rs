//! Request routing on HAProxy: header and cookie routes and sticky weights, as entries of
//! one map file per backend that fixed lines of the backend's configuration read.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use async_trait::async_trait;
use deploy_core::{AppId, BackendError, Pool, RequestMatch, RequestPolicy, RequestRoute, RequestRouting};

use super::runtime::{validate_map_path, validate_map_word, validate_name};
use super::{HaproxyLoadBalancer, Server};

/// Slots a routed request picks from at random (`rand(24)` in the configuration); a route's
/// pool has its servers spread over them, so 1, 2, 3, 4, 6, 8, 12 or 24 servers share
/// routed requests evenly.
pub(crate) const SLOTS: usize = 24;

const STICKY: &str = "sticky";
const EPOCH: &str = "epoch";

/// How one app's HAProxy backend routes requests by header and cookie: the map file its
/// configuration reads and the header and cookie names it looks at.
///
/// HAProxy's configuration names the headers and cookies it reads, so a route can match only
/// a name given here (and written into the configuration with
/// [`config_lines`](Self::config_lines)); which values go to which pool, which servers take
/// routed requests, and stickiness are entries of the map, changed through the runtime API.
///
/// ```
/// use deploy_backends::HaproxyRequestRouting;
/// let routing = HaproxyRequestRouting::new("/etc/haproxy/shop.map")?
///     .header("X-Canary")?
///     .cookie("team")?;
/// let lines = routing.config_lines("req.hdr(x-client-id)");
/// assert!(lines.contains("use-server %[var(txn.dk_srv)] if { var(txn.dk_srv) -m found }"));
/// # Ok::<(), deploy_core::BackendError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyRequestRouting {
    map: String,
    headers: Vec<String>,
    cookies: Vec<String>,
}

impl HaproxyRequestRouting {
    /// Routing through the map file at `map` (an absolute path of `A-Z a-z 0-9 / . _ -`).
    ///
    /// # Errors
    /// [`BackendError::Rejected`] for any other path.
    pub fn new(map: impl AsRef<Path>) -> Result<Self, BackendError> {
        let map = map.as_ref().to_str().unwrap_or_default().to_owned();
        validate_map_path(&map)?;
        Ok(Self {
            map,
            headers: Vec::new(),
            cookies: Vec::new(),
        })
    }

    /// Routes may match header `name` (stored lower-case).
    ///
    /// # Errors
    /// [`BackendError::Rejected`] for a name that is not an HTTP token.
    pub fn header(mut self, name: &str) -> Result<Self, BackendError> {
        let name = match RequestMatch::header(name, "x") {
            Ok(RequestMatch::Header { name, .. }) => name,
            _ => return Err(rejected(format!("header name {name:?} is not an HTTP token"))),
        };
        if !self.headers.contains(&name) {
            self.headers.push(name);
        }
        Ok(self)
    }

    /// Routes may match cookie `name`.
    ///
    /// # Errors
    /// [`BackendError::Rejected`] for a name that is not an HTTP token.
    pub fn cookie(mut self, name: &str) -> Result<Self, BackendError> {
        if RequestMatch::cookie(name, "x").is_err() {
            return Err(rejected(format!("cookie name {name:?} is not an HTTP token")));
        }
        if !self.cookies.iter().any(|c| c == name) {
            self.cookies.push(name.to_owned());
        }
        Ok(self)
    }

    /// The map file.
    pub fn map(&self) -> &str {
        &self.map
    }

    /// The lines the app's `backend` section must contain, after `balance`: a stick table
    /// keyed on `sticky_key` (a sample fetch naming the client, such as `src` or
    /// `req.hdr(x-client-id)`), one lookup per header and cookie name, the pick of a server
    /// of the route's pool, a 503 when that pool has none in rotation (a routed request
    /// never falls back to the weights), `use-server`, and stickiness only for requests no
    /// route took and while the map says `sticky on`. `sticky_key` is written as given: it
    /// is configuration, not input.
    pub fn config_lines(&self, sticky_key: &str) -> String {
        let map = &self.map;
        let mut lines = String::new();
        let _ = writeln!(lines, "  stick-table type string len 128 size 100k expire 1h");
        let _ = writeln!(lines, "  http-request set-var(txn.dk_slot) rand({SLOTS})");
        let lookups = self
            .headers
            .iter()
            .map(|name| ('h', name, format!("req.fhdr({name})")))
            .chain(
                self.cookies
                    .iter()
                    .map(|name| ('c', name, format!("req.cook({name})"))),
            );
        for (index, (kind, name, fetch)) in lookups.enumerate() {
            let _ = writeln!(lines, "  http-request set-var(txn.dk_{index}) {fetch}");
            let _ = writeln!(
                lines,
                "  http-request set-var(txn.dk_pool) str({kind}:{name}=),concat(,txn.dk_{index},),map({map}) \
                 if !{{ var(txn.dk_pool) -m found }} {{ var(txn.dk_{index}) -m found }}"
            );
        }
        let _ = writeln!(
            lines,
            "  http-request set-var(txn.dk_srv) str(s:),concat(,txn.dk_pool,@),concat(,txn.dk_slot,),map({map}) \
             if {{ var(txn.dk_pool) -m found }}"
        );
        let _ = writeln!(
            lines,
            "  http-request return status 503 if {{ var(txn.dk_pool) -m found }} !{{ var(txn.dk_srv) -m found }}"
        );
        let _ = writeln!(
            lines,
            "  use-server %[var(txn.dk_srv)] if {{ var(txn.dk_srv) -m found }}"
        );
        let _ = writeln!(
            lines,
            "  stick on {sticky_key} if !{{ var(txn.dk_pool) -m found }} {{ str({STICKY}),map({map}) -m str on }}"
        );
        lines
    }

    /// Checks that `policy` uses only names this configuration reads.
    fn check(&self, policy: &RequestPolicy) -> Result<(), BackendError> {
        for route in &policy.routes {
            let known = match &route.matches {
                RequestMatch::Header { name, .. } => self.headers.contains(name),
                RequestMatch::Cookie { name, .. } => self.cookies.contains(name),
            };
            if !known {
                return Err(rejected(format!(
                    "route {} : the HAProxy configuration of map {} reads no such {}",
                    route.matches,
                    self.map,
                    match route.matches {
                        RequestMatch::Header { .. } => "header",
                        RequestMatch::Cookie { .. } => "cookie",
                    }
                )));
            }
            validate_name("pool", route.pool.as_str())?;
            // Checked again here, whatever built the match: these words go into commands.
            validate_map_word("map key", &route_key(&route.matches))?;
        }
        Ok(())
    }
}

fn rejected(reason: String) -> BackendError {
    BackendError::Rejected {
        operation: "set_request_policy",
        reason,
    }
}

/// The map key of a route's match.
fn route_key(matches: &RequestMatch) -> String {
    match matches {
        RequestMatch::Header { name, value } => format!("h:{name}={value}"),
        RequestMatch::Cookie { name, value } => format!("c:{name}={value}"),
    }
}

/// The map entries that send routed requests for each of `pools` to their servers in
/// rotation, spread over the slots.
fn slot_entries<'a>(pools: impl Iterator<Item = &'a Pool>, servers: &[Server]) -> BTreeMap<String, String> {
    let mut entries = BTreeMap::new();
    for pool in pools {
        let mut names: Vec<&str> = servers
            .iter()
            .filter(|s| &s.pool == pool && s.in_rotation())
            .map(|s| s.row.name.as_str())
            .collect();
        names.sort_unstable();
        if names.is_empty() {
            continue;
        }
        for slot in 0..SLOTS {
            entries.insert(format!("s:{pool}@{slot}"), names[slot % names.len()].to_owned());
        }
    }
    entries
}

/// The policy a map's entries give, routes in key order; `None` when it holds none of ours.
fn policy_of(entries: &BTreeMap<String, String>) -> Option<RequestPolicy> {
    let epoch = entries.get(EPOCH)?.parse().ok()?;
    let routes = entries
        .iter()
        .filter_map(|(key, pool)| {
            let (kind, rest) = key.split_once(':')?;
            let (name, value) = rest.split_once('=')?;
            let matches = match kind {
                "h" => RequestMatch::header(name, value).ok()?,
                "c" => RequestMatch::cookie(name, value).ok()?,
                _ => return None,
            };
            Some(RequestRoute {
                matches,
                pool: Pool::new(pool).ok()?,
            })
        })
        .collect();
    Some(RequestPolicy {
        routes,
        sticky: entries.get(STICKY).is_some_and(|v| v == "on"),
        epoch,
    })
}

/// Whether two policies route alike (routes compared as sets: HAProxy tries names in its
/// configuration's order, not the policy's).
fn same(a: &RequestPolicy, b: &RequestPolicy) -> bool {
    let set = |p: &RequestPolicy| p.routes.iter().cloned().collect::<HashSet<_>>();
    a.sticky == b.sticky && a.epoch == b.epoch && set(a) == set(b)
}

impl HaproxyLoadBalancer {
    /// The map entries of `app` now, with its routing configuration.
    async fn map_of(
        &self,
        app: &AppId,
    ) -> Result<Option<(&HaproxyRequestRouting, BTreeMap<String, String>)>, BackendError> {
        let Some(routing) = self.routing.get(app) else {
            return Ok(None);
        };
        let entries = self.runtime.map_entries(routing.map()).await?;
        Ok(Some((routing, entries.into_iter().collect())))
    }

    /// Brings the map's server slots in line with `servers` (the backend's servers as they
    /// are about to be) for the pools routes send requests to: called under the backend's
    /// change lock when a server enters or leaves rotation, so routed requests never reach
    /// a server that is draining.
    pub(super) async fn refresh_slots(&self, app: &AppId, servers: &[Server]) -> Result<(), BackendError> {
        let Some((routing, entries)) = self.map_of(app).await? else {
            return Ok(());
        };
        let pools: BTreeSet<Pool> = policy_of(&entries)
            .map(|policy| policy.routes.into_iter().map(|route| route.pool).collect())
            .unwrap_or_default();
        let slots = slot_entries(pools.iter(), servers);
        let mut entries = entries;
        self.apply_entries(routing.map(), &mut entries, &slots, |key| key.starts_with("s:"))
            .await
    }

    /// Puts `wanted` into `map`, then deletes the entries `stale` selects that `wanted`
    /// lacks; `current` mirrors the map as it changes.
    async fn apply_entries(
        &self,
        map: &str,
        current: &mut BTreeMap<String, String>,
        wanted: &BTreeMap<String, String>,
        stale: impl Fn(&str) -> bool,
    ) -> Result<(), BackendError> {
        for (key, value) in wanted {
            let exists = match current.get(key) {
                Some(now) if now == value => continue,
                now => now.is_some(),
            };
            self.runtime.put_map_entry(map, key, value, exists).await?;
            current.insert(key.clone(), value.clone());
        }
        let doomed: Vec<String> = current
            .keys()
            .filter(|key| stale(key) && !wanted.contains_key(*key))
            .cloned()
            .collect();
        for key in doomed {
            self.runtime.delete_map_entry(map, &key).await?;
            current.remove(&key);
        }
        Ok(())
    }
}

#[async_trait]
impl RequestRouting for HaproxyLoadBalancer {
    /// Writes `policy` into the app's map: the server slots of the routes' pools first,
    /// then the epoch (a new one, or stickiness turned on, clears the stick table), the
    /// stickiness flag and the routes, and last removes what is no longer wanted: routes
    /// before the slots they used.
    async fn set_request_policy(&self, app: &AppId, policy: &RequestPolicy) -> Result<(), BackendError> {
        let Some(routing) = self.routing.get(app) else {
            return Err(rejected(format!(
                "app '{app}' has no request-routing map (HaproxyLoadBalancer::request_routing)"
            )));
        };
        routing.check(policy)?;
        let backend = self.backend_of(app);
        let _change = self.change(backend).await;
        let servers = self.servers(app).await?;
        if let Some(route) = policy
            .routes
            .iter()
            .find(|route| !servers.iter().any(|s| s.pool == route.pool))
        {
            return Err(rejected(format!(
                "route {} goes to pool '{}', which has no server in backend '{backend}'",
                route.matches, route.pool
            )));
        }
        let map = routing.map();
        let mut current: BTreeMap<String, String> =
            self.runtime.map_entries(map).await?.into_iter().collect();
        let before = policy_of(&current);

        let slots = slot_entries(policy.routes.iter().map(|route| &route.pool), &servers);
        self.apply_entries(map, &mut current, &slots, |_| false).await?;

        let epoch = policy.epoch.to_string();
        let replaced = before
            .as_ref()
            .is_none_or(|before| !before.sticky || before.epoch != policy.epoch);
        if policy.sticky && replaced {
            // Placements of an earlier epoch (or from before stickiness) go first.
            let off = BTreeMap::from([
                (EPOCH.to_owned(), epoch.clone()),
                (STICKY.to_owned(), "off".to_owned()),
            ]);
            self.apply_entries(map, &mut current, &off, |_| false).await?;
            self.runtime.clear_table(backend).await?;
        }
        let flags = BTreeMap::from([
            (EPOCH.to_owned(), epoch),
            (
                STICKY.to_owned(),
                if policy.sticky { "on" } else { "off" }.to_owned(),
            ),
        ]);
        self.apply_entries(map, &mut current, &flags, |_| false).await?;

        let mut routes = BTreeMap::new();
        for route in &policy.routes {
            // The first route for a match wins, as the contract says.
            routes
                .entry(route_key(&route.matches))
                .or_insert_with(|| route.pool.to_string());
        }
        let is_route = |key: &str| key.starts_with("h:") || key.starts_with("c:");
        self.apply_entries(map, &mut current, &routes, is_route).await?;
        self.apply_entries(map, &mut current, &slots, |key| key.starts_with("s:"))
            .await?;
        self.policies.lock().insert(app.clone(), policy.clone());
        Ok(())
    }

    /// Reads the policy back from the map: the last one set when the map still says the
    /// same, else what the map says (routes in key order).
    async fn request_policy(&self, app: &AppId) -> Result<Option<RequestPolicy>, BackendError> {
        let Some((_, entries)) = self.map_of(app).await? else {
            return Ok(None);
        };
        let Some(observed) = policy_of(&entries) else {
            return Ok(None);
        };
        let last = self.policies.lock().get(app).cloned();
        Ok(Some(match last {
            Some(last) if same(&last, &observed) => last,
            _ => observed,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_paths_and_names_are_refused() {
        for path in [
            "relative.map",
            "/etc/../x.map",
            "/a b.map",
            "/x.map;show",
            "#1",
            "/x\n",
        ] {
            assert!(HaproxyRequestRouting::new(path).is_err(), "{path:?}");
        }
        let routing = HaproxyRequestRouting::new("/etc/haproxy/shop.map").unwrap();
        assert!(routing.clone().header("x canary").is_err());
        assert!(routing.clone().cookie("a;b").is_err());
        let routing = routing.header("X-Canary").unwrap().cookie("team").unwrap();
        let header = |name: &str| RequestPolicy {
            routes: vec![RequestRoute {
                matches: RequestMatch::header(name, "1").unwrap(),
                pool: Pool::canary(),
            }],
            sticky: false,
            epoch: 0,
        };
        assert!(routing.check(&header("x-canary")).is_ok());
        assert!(
            routing.check(&header("x-other")).is_err(),
            "a header the config never reads"
        );
    }

    #[test]
    fn map_words_are_single_arguments() {
        for bad in [
            "",
            "a b",
            "a;b",
            "a\"b",
            "a\\b",
            "a\nb",
            "a\tb",
            "é",
            &"x".repeat(301),
        ] {
            assert!(validate_map_word("map key", bad).is_err(), "{bad:?}");
        }
        for good in [
            "h:x-canary=always",
            "c:team=a'b#c|d$e%f&g*h+i^j`k~l!m",
            "s:canary@23",
        ] {
            assert!(validate_map_word("map key", good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn a_map_reads_back_as_the_policy_written() {
        let entries = BTreeMap::from([
            ("epoch".to_owned(), "3".to_owned()),
            ("sticky".to_owned(), "on".to_owned()),
            ("h:x-canary=always".to_owned(), "canary".to_owned()),
            ("c:team=internal".to_owned(), "canary".to_owned()),
            ("s:canary@0".to_owned(), "canary:i-1".to_owned()),
        ]);
        let policy = policy_of(&entries).unwrap();
        assert_eq!((policy.sticky, policy.epoch, policy.routes.len()), (true, 3, 2));
        assert_eq!(policy_of(&BTreeMap::new()), None);
    }
}
