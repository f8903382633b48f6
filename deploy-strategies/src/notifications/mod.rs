//! Telling people what a rollout does: [`RolloutNotifications`] turns a rollout's
//! [`DeploymentEvent`]s into notifications (started, step reached, paused, promoted,
//! analysis failed or inconclusive, rolled back, completed, failed), renders them with
//! templates, and delivers them to named [`Notifier`](deploy_core::Notifier)s (webhook,
//! PagerDuty, Alertmanager) in the background, after Argo Notifications' triggers,
//! templates and subscriptions.
//!
//! Give it to [`RolloutBuilder::notifications`](crate::RolloutBuilder::notifications): the
//! rollout's events reach it, and [`RolloutReport::notifications`](crate::RolloutReport::notifications)
//! lists the deliveries. It is an [`EventSink`] too, for events from elsewhere.
//!
//! ```
//! use std::sync::Arc;
//! use deploy_core::{AppId, DeploymentEvent, DeploymentEventKind, EventSink, Revision, Version};
//! use deploy_strategies::notifications::{DeliveryStatus, RolloutNotifications, Trigger};
//! use deploy_testkit::RecordingNotifier;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let chat = RecordingNotifier::new();
//! let notifications = RolloutNotifications::builder()
//!     .receiver("chat", Arc::new(chat.clone()))
//!     .subscribe("*", [Trigger::Started, Trigger::RolledBack], "chat")
//!     .template(Trigger::Started, "{{ app }} {{ version }} is on its way", "{{ strategy }}, revision {{ revision }}")
//!     .build()?;
//!
//! let (app, revision) = (AppId::new("shop")?, Revision::FIRST);
//! let started = DeploymentEventKind::Started { version: Version::new("2.0")?, strategy: "canary".into() };
//! notifications.emit(&DeploymentEvent { app: app.clone(), revision, kind: started });
//! notifications.idle().await;
//!
//! assert_eq!(chat.delivered()[0].summary, "shop 2.0 is on its way");
//! assert_eq!(chat.delivered()[0].key.as_str(), "rollout/shop/1/started");
//! assert_eq!(notifications.deliveries(&app, revision)[0].status, DeliveryStatus::Delivered);
//! # Ok(())
//! # }
//! ```
//!
//! # Triggers
//!
//! | trigger | fired by | key suffix | severity |
//! |---|---|---|---|
//! | `started` | `Started` (not repeated on resume) | `started` | info |
//! | `step_reached` | `StepEntered` of the forward plan (rollback steps are not announced) | `step_reached/<step>` | info |
//! | `paused` | `Paused`: timed or manual pause steps, operator pauses, inconclusive holds | `paused/<step>` | info |
//! | `promoted` | `Promoted` (an operator's promote or full promote) | `promoted/<step>` | info |
//! | `analysis_failed` | `AnalysisCompleted` with outcome failed or error | `analysis_failed/<step>` | warning |
//! | `analysis_inconclusive` | `AnalysisCompleted` with outcome inconclusive | `analysis_inconclusive/<step>` | warning |
//! | `rolled_back` | `RollbackFinished` (with the reason of the `RollbackStarted` before it) | `rolled_back` | warning |
//! | `completed` | `Completed` | `completed` | info |
//! | `failed` | `Failed` | `failed` | critical |
//!
//! `<step>` is the plan step the rollout is in (the last `StepEntered`). Severities can be
//! changed per trigger with [`RolloutNotificationsBuilder::severity`].
//!
//! # Exactly once per key
//!
//! Every notification's [`IdempotencyKey`] is `rollout/<app>/<revision>/<trigger>[/<step>]`.
//! Retries send the same notification (same key and sequence), so a receiver that
//! deduplicates (PagerDuty's `dedup_key`, Alertmanager's labels, the webhook notifier's
//! idempotency header) shows it once even when an attempt reached it but its answer was
//! lost; a notifier answering [`Delivery::Duplicate`](deploy_core::Delivery::Duplicate)
//! counts as delivered. An event seen twice (a resumed deployer emits the step it resumes
//! again) is sent once. Distinct events that share a key (an operator's pause after a
//! timed pause at the same step) get the next [`Notification::sequence`](deploy_core::Notification::sequence).
//!
//! # Templates
//!
//! Summary and body per trigger are [Jinja] templates run by minijinja: no loader (no file
//! access, no `include`), nothing escaped, strict undefined variables, and a fuel limit on
//! each render. Every template is rendered once at build time against sample values, so a
//! syntax error or a misspelt variable is a [`NotificationError::Template`] naming the
//! trigger before anything runs. Summaries are cut to
//! [`MAX_SUMMARY_CHARS`], bodies to [`MAX_BODY_CHARS`]. Variables (all always defined):
//!
//! | variable | value |
//! |---|---|
//! | `trigger` | the trigger's name |
//! | `app`, `revision`, `version`, `strategy` | the rollout (`version` and `strategy` are empty when the rollout was resumed by another process) |
//! | `step`, `step_name` | the plan step (index from 0, `none` before the first; an analysis' own step for analysis triggers) and what it does |
//! | `reason` | why it paused, rolled back or failed; empty otherwise |
//! | `analysis`, `outcome` | the last analysis' summary and verdict (`failed`, `error`, `inconclusive`, `successful`); empty before one |
//! | `full` | a `promoted` that skipped every remaining step |
//! | `weights` | the routing in effect: a list of `{pool, percent}` |
//! | `traffic` | the same as text (`rev-7=20.00%, stable=80.00%`); empty before the first shift |
//!
//! # Delivery
//!
//! [`EventSink::emit`] renders and queues; it never waits on a receiver. Each receiver has
//! its own queue, delivered in order by a background tokio task (started on demand, gone
//! when the queue is empty). Each notification is tried under the [`RetryPolicy`] (retrying
//! what [`BackendError::is_retryable`](deploy_core::BackendError::is_retryable) calls
//! transient), each attempt bounded by the attempt timeout, so a receiver that hangs or
//! fails delays only its own later notifications and never the rollout.
//! [`RolloutNotifications::deliveries`] tells what became of each.
//!
//! # Memory
//!
//! Bounded: at most [`MAX_RECORDS_PER_ROLLOUT`] delivery records and [`MAX_SEEN_PER_ROLLOUT`]
//! remembered events per rollout (the oldest settled record, and the oldest event, make
//! room), at most [`RolloutNotificationsBuilder::max_rollouts`] rollouts (the oldest one
//! with nothing pending is forgotten first), and at most
//! [`MAX_QUEUED_PER_RECEIVER`] notifications waiting per receiver (past it a notification
//! is recorded as failed, not queued).
//!
//! [Jinja]: https://jinja.palletsprojects.com/en/stable/templates/

mod delivery;
mod template;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use deploy_core::retry::{Backoff, RetryPolicy};
use deploy_core::{
    AnalysisOutcome, AppId, DeploymentEvent, DeploymentEventKind, DynNotifier, EventSink, IdempotencyKey,
    Notification, Revision, Severity, TrafficSplit, ValidationError,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::outcome::verdict;

pub use delivery::MAX_QUEUED_PER_RECEIVER;
pub use template::{MAX_BODY_CHARS, MAX_SUMMARY_CHARS};

use delivery::{Job, Receiver};
use template::{Context, Templates};

/// Delivery records kept per rollout, at most.
pub const MAX_RECORDS_PER_ROLLOUT: usize = 256;

/// Events remembered per rollout for deduplication, at most.
pub const MAX_SEEN_PER_ROLLOUT: usize = 1024;

/// Rollouts tracked at once unless [`RolloutNotificationsBuilder::max_rollouts`] says
/// otherwise.
pub const DEFAULT_MAX_ROLLOUTS: usize = 64;

/// Longest receiver name, in characters.
pub const MAX_RECEIVER_NAME_LEN: usize = 64;

/// What a notification is about: the rollout moments people subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The rollout started.
    Started,
    /// The rollout entered a step of its forward plan.
    StepReached,
    /// The rollout paused (a pause step, an operator, an inconclusive analysis).
    Paused,
    /// An operator promoted the rollout.
    Promoted,
    /// An analysis failed or could not run.
    AnalysisFailed,
    /// An analysis could not decide; the rollout waits for a human.
    AnalysisInconclusive,
    /// The rollout was rolled back: the previous version serves all traffic again.
    RolledBack,
    /// The new version serves all traffic.
    Completed,
    /// The rollout stopped in a failed state.
    Failed,
}

impl Trigger {
    /// Every trigger, in the order a rollout meets them.
    pub const ALL: [Trigger; 9] = [
        Self::Started,
        Self::StepReached,
        Self::Paused,
        Self::Promoted,
        Self::AnalysisFailed,
        Self::AnalysisInconclusive,
        Self::RolledBack,
        Self::Completed,
        Self::Failed,
    ];

    /// The trigger's name (`step_reached`), as in keys, templates and serde.
    pub fn name(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::StepReached => "step_reached",
            Self::Paused => "paused",
            Self::Promoted => "promoted",
            Self::AnalysisFailed => "analysis_failed",
            Self::AnalysisInconclusive => "analysis_inconclusive",
            Self::RolledBack => "rolled_back",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }

    /// How urgent the trigger's notifications are unless configured otherwise.
    pub fn default_severity(self) -> Severity {
        match self {
            Self::AnalysisFailed | Self::AnalysisInconclusive | Self::RolledBack => Severity::Warning,
            Self::Failed => Severity::Critical,
            _ => Severity::Info,
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Trigger {
    type Err = NotificationError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|trigger| trigger.name() == name)
            .ok_or_else(|| NotificationError::UnknownTrigger {
                name: name.to_owned(),
            })
    }
}

/// What became of one notification to one receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Queued or being tried.
    Pending,
    /// The receiver accepted it.
    Delivered,
    /// The receiver had already seen it (an earlier attempt got through): delivered.
    Duplicate,
    /// Given up.
    Failed {
        /// The last error.
        error: String,
        /// Attempts made (0 when it was never sent: a template that failed on this
        /// event, a full queue, no runtime).
        attempts: u32,
    },
}

impl DeliveryStatus {
    /// Whether the receiver has the notification ([`Delivered`](Self::Delivered) or
    /// [`Duplicate`](Self::Duplicate)).
    pub fn is_delivered(&self) -> bool {
        matches!(self, Self::Delivered | Self::Duplicate)
    }
}

/// One notification to one receiver, for the rollout report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationDelivery {
    /// What it was about.
    pub trigger: Trigger,
    /// The receiver's name.
    pub receiver: String,
    /// Its idempotency key, `rollout/<app>/<revision>/<trigger>[/<step>]`.
    pub key: IdempotencyKey,
    /// Its sequence under the key (0 unless distinct events shared the key).
    pub sequence: u64,
    /// The rendered summary.
    pub summary: String,
    /// What became of it.
    pub status: DeliveryStatus,
}

/// A notifications configuration was rejected at build time.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum NotificationError {
    /// A subscription names a receiver that was never added.
    #[error("subscription for app '{app}' names unknown receiver '{receiver}'")]
    UnknownReceiver {
        /// The subscription's app pattern.
        app: String,
        /// The receiver named.
        receiver: String,
    },
    /// Two receivers have the same name.
    #[error("receiver '{receiver}' is defined twice")]
    DuplicateReceiver {
        /// The name.
        receiver: String,
    },
    /// A receiver name is empty, too long, or has control characters or spaces at its ends.
    #[error("invalid receiver name {receiver:?}: {reason}")]
    InvalidReceiverName {
        /// The name.
        receiver: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A subscription's app is neither `*` nor a valid app id.
    #[error("subscription app '{app}' is neither '*' nor an app id: {source}")]
    InvalidApp {
        /// The pattern given.
        app: String,
        /// Why it is not an app id.
        #[source]
        source: ValidationError,
    },
    /// A subscription lists no trigger.
    #[error("subscription of receiver '{receiver}' for app '{app}' lists no trigger")]
    NoTriggers {
        /// The subscription's app pattern.
        app: String,
        /// Its receiver.
        receiver: String,
    },
    /// A trigger's template does not compile, uses an unknown variable, filter or function,
    /// or runs out of fuel.
    #[error("template of trigger '{trigger}' ({part}): {message}")]
    Template {
        /// The trigger.
        trigger: Trigger,
        /// `summary` or `body`.
        part: &'static str,
        /// What the template engine said.
        message: String,
    },
    /// The retry policy makes no sense.
    #[error("notification retry policy: {0}")]
    InvalidRetry(#[source] ValidationError),
    /// The attempt timeout is zero.
    #[error("notification attempt timeout must be positive")]
    ZeroAttemptTimeout,
    /// `max_rollouts` is zero.
    #[error("notifications must track at least one rollout")]
    ZeroMaxRollouts,
    /// A trigger name that is not one of [`Trigger::ALL`].
    #[error("unknown trigger '{name}'")]
    UnknownTrigger {
        /// The name given.
        name: String,
    },
}

/// Takes a lock, ignoring poisoning: every critical section leaves the state whole.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Clone)]
struct Subscription {
    /// `None` for every app.
    app: Option<AppId>,
    triggers: Vec<Trigger>,
    receiver: String,
}

/// Builds [`RolloutNotifications`]; checks everything in [`build`](Self::build).
#[derive(Debug)]
#[must_use]
pub struct RolloutNotificationsBuilder {
    receivers: Vec<(String, Arc<DynNotifier>)>,
    subscriptions: Vec<(String, Vec<Trigger>, String)>,
    templates: BTreeMap<Trigger, (String, String)>,
    severities: BTreeMap<Trigger, Severity>,
    retry: RetryPolicy,
    attempt_timeout: Duration,
    max_rollouts: usize,
}

impl Default for RolloutNotificationsBuilder {
    fn default() -> Self {
        Self {
            receivers: Vec::new(),
            subscriptions: Vec::new(),
            templates: BTreeMap::new(),
            severities: BTreeMap::new(),
            retry: RetryPolicy {
                backoff: Backoff {
                    initial: Duration::from_secs(1),
                    max: Duration::from_secs(60),
                    multiplier: 2.0,
                },
                max_attempts: 8,
                deadline: Some(Duration::from_secs(600)),
            },
            attempt_timeout: Duration::from_secs(10),
            max_rollouts: DEFAULT_MAX_ROLLOUTS,
        }
    }
}

impl RolloutNotificationsBuilder {
    /// Adds a receiver that subscriptions name: any [`Notifier`](deploy_core::Notifier)
    /// (deploy-backends' webhook, PagerDuty and Alertmanager notifiers, ...).
    pub fn receiver(mut self, name: impl Into<String>, notifier: Arc<DynNotifier>) -> Self {
        self.receivers.push((name.into(), notifier));
        self
    }

    /// Sends `triggers` of rollouts of `app` (an app id, or `*` for every app) to the
    /// receiver named `receiver`. A receiver subscribed twice to a trigger gets it once.
    pub fn subscribe(
        mut self,
        app: impl Into<String>,
        triggers: impl IntoIterator<Item = Trigger>,
        receiver: impl Into<String>,
    ) -> Self {
        self.subscriptions
            .push((app.into(), triggers.into_iter().collect(), receiver.into()));
        self
    }

    /// Replaces `trigger`'s default summary and body templates (see the
    /// [module docs](self) for the variables).
    pub fn template(mut self, trigger: Trigger, summary: impl Into<String>, body: impl Into<String>) -> Self {
        self.templates.insert(trigger, (summary.into(), body.into()));
        self
    }

    /// Sets the severity of `trigger`'s notifications (default: [`Trigger::default_severity`]).
    pub fn severity(mut self, trigger: Trigger, severity: Severity) -> Self {
        self.severities.insert(trigger, severity);
        self
    }

    /// How each notification is retried (default: 1 s doubling to 60 s, 8 attempts,
    /// within 10 minutes).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// How long one attempt may take before it counts as failed (timed out, retryable);
    /// default 10 s.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// How many rollouts' records and dedup state are kept (default
    /// [`DEFAULT_MAX_ROLLOUTS`]).
    pub fn max_rollouts(mut self, max: usize) -> Self {
        self.max_rollouts = max;
        self
    }

    /// Checks the configuration and compiles the templates.
    ///
    /// # Errors
    /// A [`NotificationError`] naming what is wrong: a bad or duplicate receiver name, a
    /// subscription with a bad app, no trigger or an unknown receiver, a template that does
    /// not compile or render its sample, a bad retry policy or timeout.
    pub fn build(self) -> Result<RolloutNotifications, NotificationError> {
        self.retry.validate().map_err(NotificationError::InvalidRetry)?;
        if self.attempt_timeout.is_zero() {
            return Err(NotificationError::ZeroAttemptTimeout);
        }
        if self.max_rollouts == 0 {
            return Err(NotificationError::ZeroMaxRollouts);
        }
        let mut receivers: Vec<Receiver> = Vec::with_capacity(self.receivers.len());
        for (name, notifier) in self.receivers {
            check_receiver_name(&name)?;
            if receivers.iter().any(|receiver| receiver.name == name) {
                return Err(NotificationError::DuplicateReceiver { receiver: name });
            }
            receivers.push(Receiver::new(name, notifier));
        }
        let mut subscriptions = Vec::with_capacity(self.subscriptions.len());
        for (app, triggers, receiver) in self.subscriptions {
            if !receivers.iter().any(|known| known.name == receiver) {
                return Err(NotificationError::UnknownReceiver { app, receiver });
            }
            if triggers.is_empty() {
                return Err(NotificationError::NoTriggers { app, receiver });
            }
            let app = if app == "*" {
                None
            } else {
                Some(
                    AppId::new(app.as_str())
                        .map_err(|source| NotificationError::InvalidApp { app, source })?,
                )
            };
            subscriptions.push(Subscription {
                app,
                triggers,
                receiver,
            });
        }
        let templates = Templates::new(&self.templates)?;
        let (pending, _) = watch::channel(0);
        Ok(RolloutNotifications {
            inner: Arc::new(Inner {
                receivers,
                subscriptions,
                templates,
                severities: self.severities,
                retry: self.retry,
                attempt_timeout: self.attempt_timeout,
                max_rollouts: self.max_rollouts,
                rollouts: Mutex::new(VecDeque::new()),
                pending,
            }),
        })
    }
}

fn check_receiver_name(name: &str) -> Result<(), NotificationError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.chars().count() > MAX_RECEIVER_NAME_LEN {
        Some("longer than 64 characters")
    } else if name.chars().any(char::is_control) {
        Some("has control characters")
    } else if name.trim() != name {
        Some("has spaces at its ends")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NotificationError::InvalidReceiverName {
            receiver: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Rollout notifications: an [`EventSink`] that notifies subscribed receivers of rollout
/// triggers, exactly once per key, in the background. See the [module docs](self).
///
/// Cloning shares the configuration, state and records.
#[derive(Debug, Clone)]
pub struct RolloutNotifications {
    inner: Arc<Inner>,
}

/// What one rollout's events told so far, and what was sent about it.
#[derive(Debug)]
struct RolloutState {
    app: AppId,
    revision: Revision,
    version: String,
    strategy: String,
    step: Option<usize>,
    step_name: String,
    split: Option<TrafficSplit>,
    analysis: String,
    outcome: String,
    rolling_back: bool,
    rollback_reason: String,
    /// `(key, the event as JSON)` of the events notified about, oldest first.
    seen: VecDeque<(String, String)>,
    records: VecDeque<NotificationDelivery>,
}

impl RolloutState {
    fn new(app: AppId, revision: Revision) -> Self {
        Self {
            app,
            revision,
            version: String::new(),
            strategy: String::new(),
            step: None,
            step_name: String::new(),
            split: None,
            analysis: String::new(),
            outcome: String::new(),
            rolling_back: false,
            rollback_reason: String::new(),
            seen: VecDeque::new(),
            records: VecDeque::new(),
        }
    }

    fn has_pending(&self) -> bool {
        self.records
            .iter()
            .any(|record| record.status == DeliveryStatus::Pending)
    }

    /// Takes in what `kind` tells, and says which trigger it fires (with the step for the
    /// key, and the event's own reason), if any.
    fn observe(&mut self, kind: &DeploymentEventKind) -> Option<(Trigger, Option<usize>, String)> {
        match kind {
            DeploymentEventKind::Started { version, strategy } => {
                self.version = version.to_string();
                self.strategy.clone_from(strategy);
                Some((Trigger::Started, None, String::new()))
            }
            DeploymentEventKind::StepEntered { index, name } => {
                self.step = Some(*index);
                self.step_name.clone_from(name);
                // The rollback plan has its own step numbers; its steps are not news.
                (!self.rolling_back).then_some((Trigger::StepReached, Some(*index), String::new()))
            }
            DeploymentEventKind::TrafficShifted { split } => {
                self.split = Some(split.clone());
                None
            }
            DeploymentEventKind::AnalysisCompleted {
                step,
                outcome,
                summary,
            } => {
                self.analysis.clone_from(summary);
                self.outcome = verdict(*outcome).to_owned();
                match outcome {
                    AnalysisOutcome::Failed | AnalysisOutcome::Error => {
                        Some((Trigger::AnalysisFailed, Some(*step), String::new()))
                    }
                    AnalysisOutcome::Inconclusive => {
                        Some((Trigger::AnalysisInconclusive, Some(*step), String::new()))
                    }
                    AnalysisOutcome::Successful => None,
                }
            }
            DeploymentEventKind::Paused { reason } => Some((Trigger::Paused, self.step, reason.clone())),
            DeploymentEventKind::Promoted { .. } => Some((Trigger::Promoted, self.step, String::new())),
            DeploymentEventKind::RollbackStarted { reason } => {
                self.rolling_back = true;
                self.rollback_reason.clone_from(reason);
                None
            }
            DeploymentEventKind::RollbackFinished => {
                Some((Trigger::RolledBack, None, self.rollback_reason.clone()))
            }
            DeploymentEventKind::Completed { version } => {
                self.version = version.to_string();
                Some((Trigger::Completed, None, String::new()))
            }
            DeploymentEventKind::Failed { reason } => Some((Trigger::Failed, None, reason.clone())),
            // Resumed, and kinds added later, fire nothing.
            _ => None,
        }
    }

    /// What templates see; `step` is the event's own step (an analysis'), else the current one.
    fn context(
        &self,
        trigger: Trigger,
        step: Option<usize>,
        reason: String,
        kind: &DeploymentEventKind,
    ) -> Context {
        let weights = self.split.as_ref().map_or_else(Vec::new, |split| {
            split
                .iter()
                .map(|(pool, weight)| (pool.to_string(), f64::from(weight.basis_points()) / 100.0))
                .collect()
        });
        Context {
            trigger: trigger.name(),
            app: self.app.to_string(),
            revision: self.revision.get(),
            version: self.version.clone(),
            strategy: self.strategy.clone(),
            step: step.or(self.step),
            step_name: self.step_name.clone(),
            reason,
            analysis: self.analysis.clone(),
            outcome: self.outcome.clone(),
            full: matches!(kind, DeploymentEventKind::Promoted { full: true }),
            weights,
            traffic: self.split.as_ref().map(ToString::to_string).unwrap_or_default(),
        }
    }

    /// Records `record`, making room by forgetting the oldest settled record (or the
    /// oldest, when none is settled).
    fn push_record(&mut self, record: NotificationDelivery) {
        if self.records.len() >= MAX_RECORDS_PER_ROLLOUT {
            let oldest = self
                .records
                .iter()
                .position(|record| record.status != DeliveryStatus::Pending)
                .unwrap_or(0);
            self.records.remove(oldest);
        }
        self.records.push_back(record);
    }
}

#[derive(Debug)]
struct Inner {
    receivers: Vec<Receiver>,
    subscriptions: Vec<Subscription>,
    templates: Templates,
    severities: BTreeMap<Trigger, Severity>,
    retry: RetryPolicy,
    attempt_timeout: Duration,
    max_rollouts: usize,
    rollouts: Mutex<VecDeque<RolloutState>>,
    /// Deliveries queued or in flight.
    pending: watch::Sender<usize>,
}

impl Inner {
    /// The receivers (indexes) subscribed to `trigger` of `app`, each once.
    fn subscribers(&self, app: &AppId, trigger: Trigger) -> Vec<usize> {
        let mut found: Vec<usize> = self
            .subscriptions
            .iter()
            .filter(|subscription| subscription.app.as_ref().is_none_or(|only| only == app))
            .filter(|subscription| subscription.triggers.contains(&trigger))
            .filter_map(|subscription| {
                self.receivers
                    .iter()
                    .position(|receiver| receiver.name == subscription.receiver)
            })
            .collect();
        found.sort_unstable();
        found.dedup();
        found
    }

    /// Records the final `status` of the delivery of `notification` to `receiver`.
    fn settle(
        &self,
        app: &AppId,
        revision: Revision,
        receiver: &str,
        notification: &Notification,
        status: DeliveryStatus,
    ) {
        {
            let mut rollouts = lock(&self.rollouts);
            let record = rollouts
                .iter_mut()
                .find(|state| &state.app == app && state.revision == revision)
                .and_then(|state| {
                    state.records.iter_mut().find(|record| {
                        record.receiver == receiver
                            && record.key == notification.key
                            && record.sequence == notification.sequence
                    })
                });
            // A record forgotten to bound memory has nobody left to read it.
            if let Some(record) = record {
                record.status = status;
            }
        }
        self.pending
            .send_modify(|pending| *pending = pending.saturating_sub(1));
    }

    /// The rollout's state, made (forgetting the oldest rollout with nothing pending when
    /// full) if new.
    fn state<'a>(
        &self,
        rollouts: &'a mut VecDeque<RolloutState>,
        app: &AppId,
        revision: Revision,
    ) -> &'a mut RolloutState {
        let position = rollouts
            .iter()
            .position(|state| &state.app == app && state.revision == revision);
        let position = match position {
            Some(position) => position,
            None => {
                if rollouts.len() >= self.max_rollouts {
                    let oldest = rollouts
                        .iter()
                        .position(|state| !state.has_pending())
                        .unwrap_or(0);
                    rollouts.remove(oldest);
                }
                rollouts.push_back(RolloutState::new(app.clone(), revision));
                rollouts.len() - 1
            }
        };
        &mut rollouts[position]
    }
}

impl RolloutNotifications {
    /// A builder with no receiver, no subscription and the default templates.
    pub fn builder() -> RolloutNotificationsBuilder {
        RolloutNotificationsBuilder::default()
    }

    /// What was sent about rollout `revision` of `app`, to whom, and what became of it, in
    /// the order the notifications were queued (empty for a rollout not tracked, or
    /// forgotten to bound memory).
    pub fn deliveries(&self, app: &AppId, revision: Revision) -> Vec<NotificationDelivery> {
        lock(&self.inner.rollouts)
            .iter()
            .find(|state| &state.app == app && state.revision == revision)
            .map(|state| state.records.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Waits until no delivery is queued or in flight (each ends within the retry policy's
    /// deadline plus one attempt timeout).
    pub async fn idle(&self) {
        let mut pending = self.inner.pending.subscribe();
        // The sender lives in `self`: the channel cannot close while this waits.
        let _ = pending.wait_for(|pending| *pending == 0).await;
    }

    /// Turns `event` into notifications and queues them.
    fn notify(&self, event: &DeploymentEvent) {
        let inner = &self.inner;
        let mut queued = Vec::new();
        {
            let mut rollouts = lock(&inner.rollouts);
            let state = inner.state(&mut rollouts, &event.app, event.revision);
            let Some((trigger, step, reason)) = state.observe(&event.kind) else {
                return;
            };
            let mut key = format!(
                "rollout/{}/{}/{}",
                event.app,
                event.revision.get(),
                trigger.name()
            );
            if let Some(step) = step {
                key.push_str(&format!("/{step}"));
            }
            let fingerprint =
                serde_json::to_string(&event.kind).unwrap_or_else(|_| format!("{:?}", event.kind));
            if state
                .seen
                .iter()
                .any(|seen| seen.0 == key && seen.1 == fingerprint)
            {
                tracing::debug!(key, "event already notified; not sent again");
                return;
            }
            let sequence = state.seen.iter().filter(|seen| seen.0 == key).count() as u64;
            if state.seen.len() >= MAX_SEEN_PER_ROLLOUT {
                state.seen.pop_front();
            }
            state.seen.push_back((key.clone(), fingerprint));
            let receivers = inner.subscribers(&event.app, trigger);
            if receivers.is_empty() {
                return;
            }
            // Every key is at most 255 characters: app ids are short, the rest is fixed.
            let Ok(key) = IdempotencyKey::new(key) else {
                tracing::warn!(app = %event.app, %trigger, "notification key invalid; not sent");
                return;
            };
            let context = state.context(trigger, step, reason, &event.kind);
            let rendered = inner.templates.render(trigger, &context);
            let severity = inner
                .severities
                .get(&trigger)
                .copied()
                .unwrap_or_else(|| trigger.default_severity());
            for index in receivers {
                let receiver = inner.receivers[index].name.clone();
                let (summary, status, notification) = match &rendered {
                    Ok((summary, body)) => {
                        let mut notification = Notification::trigger(key.clone(), severity, summary.clone())
                            .with_sequence(sequence)
                            .with_label("app", event.app.as_str())
                            .with_label("revision", event.revision.get().to_string())
                            .with_label("trigger", trigger.name());
                        if !state.version.is_empty() {
                            notification = notification.with_label("version", state.version.clone());
                        }
                        notification.body.clone_from(body);
                        (summary.clone(), DeliveryStatus::Pending, Some(notification))
                    }
                    Err(error) => {
                        let status = DeliveryStatus::Failed {
                            error: error.to_string(),
                            attempts: 0,
                        };
                        (String::new(), status, None)
                    }
                };
                state.push_record(NotificationDelivery {
                    trigger,
                    receiver,
                    key: key.clone(),
                    sequence,
                    summary,
                    status,
                });
                if let Some(notification) = notification {
                    inner.pending.send_modify(|pending| *pending += 1);
                    queued.push((index, notification));
                }
            }
        }
        for (index, notification) in queued {
            let job = Job {
                app: event.app.clone(),
                revision: event.revision,
                notification,
            };
            let (app, revision, notification) = (job.app.clone(), job.revision, job.notification.clone());
            if let Err(error) = delivery::enqueue(&self.inner, index, job) {
                tracing::warn!(%app, key = %notification.key, error, "rollout notification not queued");
                let status = DeliveryStatus::Failed { error, attempts: 0 };
                inner.settle(
                    &app,
                    revision,
                    &inner.receivers[index].name,
                    &notification,
                    status,
                );
            }
        }
    }
}

impl EventSink for RolloutNotifications {
    /// Renders and queues; never waits on a receiver.
    fn emit(&self, event: &DeploymentEvent) {
        self.notify(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn notifications_are_shareable_sinks() {
        assert_send_sync::<RolloutNotifications>();
        let sink: Arc<deploy_core::DynEventSink> = Arc::new(RolloutNotifications::builder().build().unwrap());
        drop(sink);
    }

    #[test]
    fn deliveries_serialize_for_the_report() {
        let delivery = NotificationDelivery {
            trigger: Trigger::RolledBack,
            receiver: "pager".into(),
            key: IdempotencyKey::new("rollout/shop/3/rolled_back").unwrap(),
            sequence: 0,
            summary: "shop: 2.0 rolled back".into(),
            status: DeliveryStatus::Failed {
                error: "pagerduty unavailable: 503".into(),
                attempts: 8,
            },
        };
        let json = serde_json::to_value(&delivery).unwrap();
        assert_eq!(json["trigger"], "rolled_back");
        assert_eq!(json["status"]["status"], "failed");
        assert_eq!(json["status"]["attempts"], 8);
        assert_eq!(
            serde_json::from_value::<NotificationDelivery>(json).unwrap(),
            delivery
        );
        assert_eq!(
            serde_json::to_value(DeliveryStatus::Duplicate).unwrap(),
            serde_json::json!({"status": "duplicate"})
        );
    }

    #[test]
    fn trigger_names_round_trip() {
        for trigger in Trigger::ALL {
            assert_eq!(trigger.name().parse::<Trigger>(), Ok(trigger));
            assert_eq!(
                serde_json::to_string(&trigger).unwrap(),
                format!("\"{}\"", trigger.name())
            );
        }
        assert_eq!(
            "stepreached".parse::<Trigger>(),
            Err(NotificationError::UnknownTrigger {
                name: "stepreached".into()
            })
        );
    }
}
