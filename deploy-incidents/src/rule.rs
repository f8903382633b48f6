//! Alert rules and their state machine (Prometheus semantics): a breach makes an alert
//! pending; held for `for` it fires; once the breach ends it keeps firing for
//! `keep_firing_for`, then resolves.

use std::time::Duration;

use deploy_core::MetricQuery;
use tokio::time::Instant;

use crate::error::AlertError;
use crate::labels::{Fingerprint, Labels};

/// How a measured value is compared with the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// value > threshold
    Above,
    /// value >= threshold
    AtOrAbove,
    /// value < threshold
    Below,
    /// value <= threshold
    AtOrBelow,
}

impl Comparison {
    fn breached(self, value: f64, threshold: f64) -> bool {
        match self {
            Self::Above => value > threshold,
            Self::AtOrAbove => value >= threshold,
            Self::Below => value < threshold,
            Self::AtOrBelow => value <= threshold,
        }
    }
}

/// A rule: a metric query, a comparison with a threshold, timing, labels and annotations.
#[derive(Debug, Clone)]
pub struct AlertRule {
    /// The alert's name (becomes the `alertname` label).
    pub name: String,
    /// What is measured (the series' latest value is compared).
    pub query: MetricQuery,
    /// The comparison.
    pub comparison: Comparison,
    /// The threshold.
    pub threshold: f64,
    /// How long a breach must last before the alert fires.
    pub for_duration: Duration,
    /// How long a firing alert keeps firing after the breach ends.
    pub keep_firing_for: Duration,
    /// Labels of the alert (identity and routing).
    pub labels: Labels,
    /// Annotations (summary, runbook...).
    pub annotations: Labels,
}

impl AlertRule {
    /// Checks the rule.
    ///
    /// # Errors
    /// [`AlertError::InvalidRule`] for an empty name or a non-finite threshold.
    pub fn validate(&self) -> Result<(), AlertError> {
        let invalid = |reason: &str| AlertError::InvalidRule {
            rule: self.name.clone(),
            reason: reason.into(),
        };
        if self.name.is_empty() {
            return Err(invalid("the name must not be empty"));
        }
        if !self.threshold.is_finite() {
            return Err(invalid("the threshold must be a finite number"));
        }
        Ok(())
    }

    /// The alert's labels: the rule's plus `alertname`.
    pub fn alert_labels(&self) -> Labels {
        let mut labels = self.labels.clone();
        labels.insert("alertname".into(), self.name.clone());
        labels
    }
}

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertState {
    /// No breach.
    Inactive,
    /// Breached, not yet for `for`.
    Pending,
    /// Firing.
    Firing,
    /// Was firing; the breach (and `keep_firing_for`) ended.
    Resolved,
}

/// An alert as rules produce it and the dispatcher routes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Identity and routing labels.
    pub labels: Labels,
    /// Annotations.
    pub annotations: Labels,
    /// The state.
    pub state: AlertState,
    /// The last measured value.
    pub value: f64,
    /// When it started firing (tokio time).
    pub fired_at: Option<Instant>,
    /// When it resolved.
    pub resolved_at: Option<Instant>,
}

impl Alert {
    /// The identity of the alert.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.labels)
    }
}

/// Evaluates one rule over time.
#[derive(Debug, Clone)]
pub struct RuleEvaluator {
    rule: AlertRule,
    state: AlertState,
    breach_since: Option<Instant>,
    last_breach: Option<Instant>,
    fired_at: Option<Instant>,
    resolved_at: Option<Instant>,
    value: f64,
}

impl RuleEvaluator {
    /// An evaluator for a valid rule.
    ///
    /// # Errors
    /// As [`AlertRule::validate`].
    pub fn new(rule: AlertRule) -> Result<Self, AlertError> {
        rule.validate()?;
        Ok(Self {
            rule,
            state: AlertState::Inactive,
            breach_since: None,
            last_breach: None,
            fired_at: None,
            resolved_at: None,
            value: f64::NAN,
        })
    }

    /// The rule.
    pub fn rule(&self) -> &AlertRule {
        &self.rule
    }

    /// The current state.
    pub fn state(&self) -> AlertState {
        self.state
    }

    /// Feeds one measurement (`None`: no data, which counts as no breach) taken at `now`;
    /// returns the alert when it is pending, firing, or has just resolved.
    pub fn observe(&mut self, value: Option<f64>, now: Instant) -> Option<Alert> {
        let breached = value.is_some_and(|value| self.rule.comparison.breached(value, self.rule.threshold));
        if let Some(value) = value {
            self.value = value;
        }
        if breached {
            self.last_breach = Some(now);
            match self.state {
                AlertState::Inactive | AlertState::Resolved => {
                    self.breach_since = Some(now);
                    self.resolved_at = None;
                    self.state = AlertState::Pending;
                }
                AlertState::Pending | AlertState::Firing => {}
            }
            let held = self
                .breach_since
                .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
            if self.state == AlertState::Pending && held >= self.rule.for_duration {
                self.state = AlertState::Firing;
                self.fired_at = Some(now);
            }
        } else {
            match self.state {
                AlertState::Pending => {
                    self.state = AlertState::Inactive;
                    self.breach_since = None;
                }
                AlertState::Firing => {
                    let quiet = self
                        .last_breach
                        .map_or(Duration::MAX, |last| now.saturating_duration_since(last));
                    if quiet >= self.rule.keep_firing_for {
                        self.state = AlertState::Resolved;
                        self.resolved_at = Some(now);
                        self.breach_since = None;
                    }
                }
                AlertState::Inactive => {}
                AlertState::Resolved => {
                    // Reported once; quiet afterwards.
                    self.state = AlertState::Inactive;
                    return None;
                }
            }
        }
        self.alert()
    }

    /// Stops watching (the target is gone): a firing alert resolves now and is returned;
    /// anything else is dropped quietly.
    pub fn end(&mut self, now: Instant) -> Option<Alert> {
        let firing = self.state == AlertState::Firing;
        self.state = if firing {
            AlertState::Resolved
        } else {
            AlertState::Inactive
        };
        self.resolved_at = firing.then_some(now);
        self.alert()
    }

    fn alert(&self) -> Option<Alert> {
        match self.state {
            AlertState::Inactive => None,
            state => Some(Alert {
                labels: self.rule.alert_labels(),
                annotations: self.rule.annotations.clone(),
                state,
                value: self.value,
                fired_at: self.fired_at,
                resolved_at: self.resolved_at,
            }),
        }
    }
}
