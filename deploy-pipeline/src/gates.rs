//! Quality gates: a stage that passes only when measurements of earlier stages do.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;

use crate::stage::{Stage, StageContext, StageError, StageOutput};

type Predicate = dyn Fn(&StageContext) -> Result<(), (String, String)> + Send + Sync;

/// One check of a [`QualityGate`].
#[derive(Clone)]
pub enum Gate {
    /// `metric` of `stage` must be at least `min`.
    AtLeast {
        /// The stage whose output is read.
        stage: String,
        /// The metric.
        metric: String,
        /// The minimum.
        min: f64,
    },
    /// `metric` of `stage` must be at most `max`.
    AtMost {
        /// The stage whose output is read.
        stage: String,
        /// The metric.
        metric: String,
        /// The maximum.
        max: f64,
    },
    /// Any check: `Err((measured, requirement))` fails it.
    Custom {
        /// Its name, for the failure.
        name: String,
        /// The check.
        check: Arc<Predicate>,
    },
}

impl Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AtLeast { stage, metric, min } => write!(f, "{stage}.{metric} >= {min}"),
            Self::AtMost { stage, metric, max } => write!(f, "{stage}.{metric} <= {max}"),
            Self::Custom { name, .. } => write!(f, "custom `{name}`"),
        }
    }
}

impl Gate {
    /// Coverage (percent) of `stage` at least `min`.
    pub fn coverage_at_least(stage: &str, min: f64) -> Self {
        Self::AtLeast {
            stage: stage.into(),
            metric: "coverage".into(),
            min,
        }
    }

    /// No failed tests in `stage`.
    pub fn no_failed_tests(stage: &str) -> Self {
        Self::AtMost {
            stage: stage.into(),
            metric: "failed_tests".into(),
            max: 0.0,
        }
    }

    /// At most `max` vulnerabilities reported by `stage`.
    pub fn vulnerabilities_at_most(stage: &str, max: f64) -> Self {
        Self::AtMost {
            stage: stage.into(),
            metric: "vulnerabilities".into(),
            max,
        }
    }

    /// A custom check.
    pub fn custom(
        name: impl Into<String>,
        check: impl Fn(&StageContext) -> Result<(), (String, String)> + Send + Sync + 'static,
    ) -> Self {
        Self::Custom {
            name: name.into(),
            check: Arc::new(check),
        }
    }

    fn check(&self, context: &StageContext) -> Result<(), StageError> {
        let failed = |gate: String, measured: Option<f64>, requirement: String| StageError::GateFailed {
            gate,
            measured: measured.map_or_else(|| "missing".to_owned(), |value| value.to_string()),
            requirement,
        };
        match self {
            Self::AtLeast { stage, metric, min } => match context.metric(stage, metric) {
                Some(value) if value >= *min => Ok(()),
                measured => Err(failed(format!("{stage}.{metric}"), measured, format!(">= {min}"))),
            },
            Self::AtMost { stage, metric, max } => match context.metric(stage, metric) {
                Some(value) if value <= *max => Ok(()),
                measured => Err(failed(format!("{stage}.{metric}"), measured, format!("<= {max}"))),
            },
            Self::Custom { name, check } => {
                check(context).map_err(|(measured, requirement)| StageError::GateFailed {
                    gate: name.clone(),
                    measured,
                    requirement,
                })
            }
        }
    }
}

/// A stage that passes only if every gate does; the first failing gate is the reason.
#[derive(Debug, Clone, Default)]
pub struct QualityGate {
    gates: Vec<Gate>,
}

impl QualityGate {
    /// A stage with these gates.
    pub fn new(gates: Vec<Gate>) -> Self {
        Self { gates }
    }
}

#[async_trait]
impl Stage for QualityGate {
    async fn run(&self, context: &StageContext) -> Result<StageOutput, StageError> {
        for gate in &self.gates {
            gate.check(context)?;
            context.log.line(format!("gate {gate:?}: passed"));
        }
        Ok(StageOutput::default())
    }
}
