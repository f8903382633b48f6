//! The routing tree (Alertmanager semantics): an alert enters at the root and descends into
//! the first child whose matchers match (and further siblings when that child has
//! `continue`); a node whose children all miss takes the alert itself. Receivers, grouping
//! and timers are inherited from the parent unless set.

use std::time::Duration;

use crate::error::AlertError;
use crate::labels::{Labels, Matcher, all_match};

/// Defaults as in Alertmanager.
pub const DEFAULT_GROUP_WAIT: Duration = Duration::from_secs(30);
/// Default group interval.
pub const DEFAULT_GROUP_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Default repeat interval.
pub const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(4 * 3600);

/// A route as configured: anything unset is inherited.
#[derive(Debug, Clone, Default)]
pub struct RouteConfig {
    /// The receiver (required at the root).
    pub receiver: Option<String>,
    /// Matchers such as `severity="critical"`, `service=~"api|web"`.
    pub matchers: Vec<String>,
    /// Keep trying later siblings after this route matched.
    pub continue_matching: bool,
    /// Labels an alert group is keyed by (`...` means every label).
    pub group_by: Option<Vec<String>>,
    /// Wait before a new group's first notification.
    pub group_wait: Option<Duration>,
    /// Wait between notifications of a group that changed.
    pub group_interval: Option<Duration>,
    /// Wait before notifying an unchanged group again.
    pub repeat_interval: Option<Duration>,
    /// Child routes.
    pub routes: Vec<RouteConfig>,
}

/// Grouping: by these labels, or by every label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    /// These labels.
    Labels(Vec<String>),
    /// Every label (one group per alert).
    All,
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Position in the tree (`root`, `root.0`, `root.0.2`), also the group key's prefix.
    pub id: String,
    /// Preorder number in the tree (0 for the root).
    pub index: usize,
    /// The receiver.
    pub receiver: String,
    /// The matchers.
    pub matchers: Vec<Matcher>,
    /// Whether siblings after this one are tried too.
    pub continue_matching: bool,
    /// Grouping.
    pub group_by: GroupBy,
    /// Timers.
    pub group_wait: Duration,
    /// Timers.
    pub group_interval: Duration,
    /// Timers.
    pub repeat_interval: Duration,
    /// Children.
    pub routes: Vec<Route>,
}

impl Route {
    /// Compiles a tree, checking matchers, receivers and timers.
    ///
    /// # Errors
    /// [`AlertError::InvalidMatcher`], [`AlertError::UnknownReceiver`] (also a root without
    /// one), [`AlertError::InvalidTimers`] (a repeat interval below the group interval, a
    /// zero group interval).
    pub fn compile(config: &RouteConfig, receivers: &[String]) -> Result<Self, AlertError> {
        let root_receiver = config
            .receiver
            .clone()
            .ok_or_else(|| AlertError::UnknownReceiver {
                route: "root".into(),
                receiver: "(none: the root route needs a receiver)".into(),
            })?;
        let inherited = Route {
            id: String::new(),
            index: 0,
            receiver: root_receiver,
            matchers: Vec::new(),
            continue_matching: false,
            group_by: GroupBy::Labels(vec!["alertname".into()]),
            group_wait: DEFAULT_GROUP_WAIT,
            group_interval: DEFAULT_GROUP_INTERVAL,
            repeat_interval: DEFAULT_REPEAT_INTERVAL,
            routes: Vec::new(),
        };
        compile(config, &inherited, "root".into(), receivers, &mut 0)
    }

    /// Calls `each` for every route an alert with `labels` goes to (no allocation).
    pub fn for_each_match<'a>(&'a self, labels: &Labels, each: &mut impl FnMut(&'a Route)) -> bool {
        if !all_match(&self.matchers, labels) {
            return false;
        }
        let mut matched_child = false;
        for child in &self.routes {
            if child.for_each_match(labels, each) {
                matched_child = true;
                if !child.continue_matching {
                    break;
                }
            }
        }
        if !matched_child {
            each(self);
        }
        true
    }

    /// A hash of the group an alert with `labels` joins on this route (with its route).
    pub fn group_hash(&self, labels: &Labels) -> u64 {
        use std::hash::Hasher;
        let mut hasher = fnv::FnvHasher::default();
        hasher.write_usize(self.index);
        match &self.group_by {
            GroupBy::All => hasher.write_u64(crate::labels::Fingerprint::of(labels).0),
            GroupBy::Labels(names) => {
                for name in names {
                    hasher.write(labels.get(name).map_or("", String::as_str).as_bytes());
                    hasher.write_u8(0xff);
                }
            }
        }
        hasher.finish()
    }

    /// The routes an alert with `labels` goes to.
    pub fn matching(&self, labels: &Labels) -> Vec<&Route> {
        let mut found = Vec::new();
        self.for_each_match(labels, &mut |route| found.push(route));
        found
    }

    /// The group key of an alert on this route: the route and its grouping labels' values.
    pub fn group_key(&self, labels: &Labels) -> String {
        let values: Vec<String> = match &self.group_by {
            GroupBy::All => labels
                .iter()
                .map(|(name, value)| format!("{name}={value:?}"))
                .collect(),
            GroupBy::Labels(names) => names
                .iter()
                .map(|name| format!("{name}={:?}", labels.get(name).map_or("", String::as_str)))
                .collect(),
        };
        format!("{}:{{{}}}", self.id, values.join(","))
    }
}

fn compile(
    config: &RouteConfig,
    parent: &Route,
    id: String,
    receivers: &[String],
    next_index: &mut usize,
) -> Result<Route, AlertError> {
    let index = *next_index;
    *next_index += 1;
    let receiver = config.receiver.clone().unwrap_or_else(|| parent.receiver.clone());
    if !receivers.contains(&receiver) {
        return Err(AlertError::UnknownReceiver { route: id, receiver });
    }
    let matchers = config
        .matchers
        .iter()
        .map(|text| Matcher::parse(text))
        .collect::<Result<Vec<_>, _>>()?;
    let group_by = match &config.group_by {
        None => parent.group_by.clone(),
        Some(labels) if labels.iter().any(|label| label == "...") => GroupBy::All,
        Some(labels) => GroupBy::Labels(labels.clone()),
    };
    let group_wait = config.group_wait.unwrap_or(parent.group_wait);
    let group_interval = config.group_interval.unwrap_or(parent.group_interval);
    let repeat_interval = config.repeat_interval.unwrap_or(parent.repeat_interval);
    if group_interval.is_zero() {
        return Err(AlertError::InvalidTimers {
            route: id,
            reason: "group_interval must be above zero".into(),
        });
    }
    if repeat_interval < group_interval {
        return Err(AlertError::InvalidTimers {
            route: id,
            reason: format!("repeat_interval {repeat_interval:?} is below group_interval {group_interval:?}"),
        });
    }
    let mut route = Route {
        id: id.clone(),
        index,
        receiver,
        matchers,
        continue_matching: config.continue_matching,
        group_by,
        group_wait,
        group_interval,
        repeat_interval,
        routes: Vec::new(),
    };
    for (index, child) in config.routes.iter().enumerate() {
        let compiled = compile(child, &route, format!("{id}.{index}"), receivers, next_index)?;
        route.routes.push(compiled);
    }
    Ok(route)
}
