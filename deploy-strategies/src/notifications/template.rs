//! Rendering a notification's summary and body: Jinja templates (minijinja) in a sandbox
//! with no loader (no file access, no `include`), strict undefined variables and a fuel
//! limit, checked once at build time against a sample of every variable.

use std::collections::BTreeMap;

use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};

use super::{NotificationError, Trigger};

/// Instructions one render may run: far above any sane message, low enough that a loop
/// over `range(10**9)` stops at once instead of stalling a delivery task.
const FUEL: u64 = 50_000;

/// Longest summary sent, in characters (PagerDuty's `summary` limit); longer ones are cut.
pub const MAX_SUMMARY_CHARS: usize = 1024;

/// Longest body sent, in characters; longer ones are cut.
pub const MAX_BODY_CHARS: usize = 16 * 1024;

/// The part of a template: names it in errors.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Part {
    Summary,
    Body,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Self::Summary => "summary",
            Self::Body => "body",
        }
    }
}

/// The default summary and body of `trigger`.
pub(crate) fn defaults(trigger: Trigger) -> (&'static str, &'static str) {
    match trigger {
        Trigger::Started => (
            "{{ app }}: rolling out {{ version }} ({{ strategy }})",
            "Revision {{ revision }} of {{ app }} started rolling out {{ version }} with a {{ strategy }} strategy.",
        ),
        Trigger::StepReached => (
            "{{ app }}{% if version %} {{ version }}{% endif %}: step {{ step }}, {{ step_name }}",
            "Revision {{ revision }} of {{ app }} reached step {{ step }} ({{ step_name }}).\
             {% if traffic %} Traffic: {{ traffic }}.{% endif %}",
        ),
        Trigger::Paused => (
            "{{ app }}{% if version %} {{ version }}{% endif %}: paused, {{ reason }}",
            "Revision {{ revision }} of {{ app }} paused at step {{ step }} ({{ step_name }}): {{ reason }}.\
             {% if traffic %} Traffic: {{ traffic }}.{% endif %}",
        ),
        Trigger::Promoted => (
            "{{ app }}{% if version %} {{ version }}{% endif %}: promoted{% if full %} to all traffic{% endif %}",
            "Revision {{ revision }} of {{ app }} was promoted at step {{ step }} ({{ step_name }})\
             {% if full %}, straight to all traffic{% endif %}.",
        ),
        Trigger::AnalysisFailed => (
            "{{ app }}{% if version %} {{ version }}{% endif %}: analysis {{ outcome }} at step {{ step }}",
            "Analysis of revision {{ revision }} of {{ app }} ({{ version }}) at step {{ step }}: {{ analysis }}",
        ),
        Trigger::AnalysisInconclusive => (
            "{{ app }}{% if version %} {{ version }}{% endif %}: analysis inconclusive at step {{ step }}",
            "Analysis of revision {{ revision }} of {{ app }} ({{ version }}) at step {{ step }} could not \
             decide; the rollout waits for a human: {{ analysis }}",
        ),
        Trigger::RolledBack => (
            "{{ app }}: {{ version }} rolled back",
            "Revision {{ revision }} of {{ app }} ({{ version }}) was rolled back: {{ reason }}",
        ),
        Trigger::Completed => (
            "{{ app }}: {{ version }} is live",
            "Revision {{ revision }} of {{ app }} completed: {{ version }} serves all traffic.",
        ),
        Trigger::Failed => (
            "{{ app }}: rollout of {{ version }} failed",
            "Revision {{ revision }} of {{ app }} ({{ version }}) stopped in a failed state: {{ reason }}",
        ),
    }
}

/// What a template can use. Every variable is always present (empty, `none` or `false`
/// when it does not apply), so a misspelt name fails the build-time check.
#[derive(Debug, Clone, Default)]
pub(crate) struct Context {
    pub trigger: &'static str,
    pub app: String,
    pub revision: u64,
    pub version: String,
    pub strategy: String,
    pub step: Option<usize>,
    pub step_name: String,
    pub reason: String,
    pub analysis: String,
    pub outcome: String,
    pub full: bool,
    /// `(pool, percent)` in pool order.
    pub weights: Vec<(String, f64)>,
    pub traffic: String,
}

impl Context {
    /// A context with every variable set, for checking templates at build time.
    pub(crate) fn sample(trigger: Trigger) -> Self {
        Self {
            trigger: trigger.name(),
            app: "shop".into(),
            revision: 7,
            version: "2.0".into(),
            strategy: "canary".into(),
            step: Some(3),
            step_name: "pause 2m".into(),
            reason: "timed pause".into(),
            analysis: "error-rate: 0.01 <= 0.05".into(),
            outcome: "failed".into(),
            full: false,
            weights: vec![("rev-7".into(), 20.0), ("stable".into(), 80.0)],
            traffic: "rev-7=20.00%, stable=80.00%".into(),
        }
    }

    fn value(&self) -> Value {
        let weights: Vec<Value> = self
            .weights
            .iter()
            .map(|(pool, percent)| {
                Value::from(BTreeMap::from([
                    ("pool".to_owned(), Value::from(pool.as_str())),
                    ("percent".to_owned(), Value::from(*percent)),
                ]))
            })
            .collect();
        let text = |s: &str| Value::from(s);
        Value::from(BTreeMap::from([
            ("trigger".to_owned(), text(self.trigger)),
            ("app".to_owned(), text(&self.app)),
            ("revision".to_owned(), Value::from(self.revision)),
            ("version".to_owned(), text(&self.version)),
            ("strategy".to_owned(), text(&self.strategy)),
            ("step".to_owned(), Value::from(self.step)),
            ("step_name".to_owned(), text(&self.step_name)),
            ("reason".to_owned(), text(&self.reason)),
            ("analysis".to_owned(), text(&self.analysis)),
            ("outcome".to_owned(), text(&self.outcome)),
            ("full".to_owned(), Value::from(self.full)),
            ("weights".to_owned(), Value::from(weights)),
            ("traffic".to_owned(), text(&self.traffic)),
        ]))
    }
}

/// The compiled templates of every trigger.
pub(crate) struct Templates {
    env: Environment<'static>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

fn template_name(trigger: Trigger, part: Part) -> String {
    format!("{}.{}", trigger.name(), part.name())
}

impl Templates {
    /// Compiles `custom` (trigger -> summary, body) over the defaults and renders each once
    /// against [`Context::sample`].
    ///
    /// # Errors
    /// [`NotificationError::Template`] naming the trigger and part: a syntax error, an
    /// unknown variable, filter or function, or a template that runs out of fuel.
    pub(crate) fn new(custom: &BTreeMap<Trigger, (String, String)>) -> Result<Self, NotificationError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Plain text for chat, pagers and mail: nothing is HTML-escaped.
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_fuel(Some(FUEL));
        for trigger in Trigger::ALL {
            let (summary, body) = match custom.get(&trigger) {
                Some((summary, body)) => (summary.clone(), body.clone()),
                None => {
                    let (summary, body) = defaults(trigger);
                    (summary.to_owned(), body.to_owned())
                }
            };
            for (part, source) in [(Part::Summary, summary), (Part::Body, body)] {
                env.add_template_owned(template_name(trigger, part), source)
                    .map_err(|error| template_error(trigger, part, &error))?;
            }
        }
        let templates = Self { env };
        for trigger in Trigger::ALL {
            templates.render(trigger, &Context::sample(trigger))?;
        }
        Ok(templates)
    }

    /// Renders `trigger`'s summary and body, each cut to its length limit.
    ///
    /// # Errors
    /// [`NotificationError::Template`] when rendering fails on this context (a filter
    /// refusing a value, fuel running out).
    pub(crate) fn render(
        &self,
        trigger: Trigger,
        context: &Context,
    ) -> Result<(String, String), NotificationError> {
        let value = context.value();
        let render = |part: Part, limit: usize| {
            self.env
                .get_template(&template_name(trigger, part))
                .and_then(|template| template.render(&value))
                .map(|text| truncate(text, limit))
                .map_err(|error| template_error(trigger, part, &error))
        };
        Ok((
            render(Part::Summary, MAX_SUMMARY_CHARS)?,
            render(Part::Body, MAX_BODY_CHARS)?,
        ))
    }
}

fn template_error(trigger: Trigger, part: Part, error: &minijinja::Error) -> NotificationError {
    let mut message = error.kind().to_string();
    if let Some(detail) = error.detail() {
        message.push_str(": ");
        message.push_str(detail);
    }
    if let Some(line) = error.line() {
        message.push_str(&format!(" (line {line})"));
    }
    NotificationError::Template {
        trigger,
        part: part.name(),
        message,
    }
}

/// `text` cut to at most `limit` characters, an ellipsis marking the cut.
fn truncate(mut text: String, limit: usize) -> String {
    if let Some((at, _)) = text.char_indices().nth(limit) {
        let keep = text[..at]
            .char_indices()
            .nth(limit.saturating_sub(1))
            .map_or(at, |(i, _)| i);
        text.truncate(keep);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_counts_characters_and_marks_the_cut() {
        assert_eq!(truncate("abc".into(), 3), "abc");
        assert_eq!(truncate("abcd".into(), 3), "ab…");
        assert_eq!(truncate("ééééé".into(), 4), "ééé…");
        assert_eq!(truncate("ééééé".into(), 4).chars().count(), 4);
    }

    #[test]
    fn every_default_template_renders_its_sample() {
        let templates = Templates::new(&BTreeMap::new()).unwrap();
        for trigger in Trigger::ALL {
            let (summary, body) = templates.render(trigger, &Context::sample(trigger)).unwrap();
            assert!(summary.starts_with("shop"), "{trigger}: {summary}");
            assert!(body.contains("shop"), "{trigger}: {body}");
            assert!(!summary.contains('\n'), "{trigger}: one line: {summary:?}");
        }
    }
}
