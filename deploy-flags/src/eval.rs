//! Evaluating compiled flags: the hot path. Nothing here allocates, locks or reads a clock
//! (date constraints without a `currentTime` read the engine's, as they must).

use rand::Rng;

use crate::compile::{
    CompiledFlag, CompiledRule, CompiledVariant, MAX_PREREQUISITES, Snapshot, StickyKey, Variant,
    VariantSplit,
};
use crate::context::Context;
use crate::metrics::Tally;
use crate::model::FlagKind;

/// Why an evaluation came out as it did. Maps onto OpenFeature's reasons with
/// [`Reason::as_openfeature`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The flag's switch is off.
    Disabled,
    /// A prerequisite (by its index in the flag's list) was not in the required state.
    PrerequisiteFailed {
        /// Index into the flag's `prerequisites`.
        prerequisite: usize,
    },
    /// The flag has no rules and is on for everyone.
    Static,
    /// A rule (by index) matched the caller, or a variant override pinned it.
    TargetingMatch {
        /// Index into the flag's `rules`.
        rule: Option<usize>,
    },
    /// The caller fell into a percentage rollout or a weighted variant split.
    Split {
        /// Index of the rule whose rollout or variants decided, if any.
        rule: Option<usize>,
    },
    /// No rule matched; the flag is off for this caller.
    Default,
    /// The flag could not be evaluated.
    Error(ErrorCode),
}

/// Why an evaluation failed, as OpenFeature's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// No flag of that name.
    FlagNotFound,
    /// The flag serves another type than the one asked for.
    TypeMismatch,
}

impl Reason {
    /// The OpenFeature reason name (`DISABLED`, `STATIC`, `TARGETING_MATCH`, `SPLIT`,
    /// `DEFAULT`, `ERROR`); a failed prerequisite reports `PREREQUISITE_FAILED`.
    pub fn as_openfeature(&self) -> &'static str {
        match self {
            Self::Disabled => "DISABLED",
            Self::PrerequisiteFailed { .. } => "PREREQUISITE_FAILED",
            Self::Static => "STATIC",
            Self::TargetingMatch { .. } => "TARGETING_MATCH",
            Self::Split { .. } => "SPLIT",
            Self::Default => "DEFAULT",
            Self::Error(_) => "ERROR",
        }
    }
}

/// The outcome of one evaluation, borrowing the snapshot it came from.
#[derive(Debug, Clone, Copy)]
pub struct Evaluation<'s> {
    enabled: bool,
    variant: Option<&'s CompiledVariant>,
    kind: Option<FlagKind>,
    reason: Reason,
}

impl<'s> Evaluation<'s> {
    const NOT_FOUND: Self = Self {
        enabled: false,
        variant: None,
        kind: None,
        reason: Reason::Error(ErrorCode::FlagNotFound),
    };

    /// Whether the flag is on for the caller.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The variant served: the matched one while on, the off variant (if any) while off.
    pub fn variant(&self) -> Option<&'s Variant> {
        self.variant.map(|compiled| &compiled.variant)
    }

    /// The variant's name, or `disabled` when none is served (Unleash's convention).
    pub fn variant_name(&self) -> &'s str {
        self.variant.map_or("disabled", |compiled| &compiled.variant.name)
    }

    /// Why.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// The flag's kind; `None` when the flag does not exist.
    pub fn kind(&self) -> Option<FlagKind> {
        self.kind
    }
}

impl Snapshot {
    /// Evaluates a flag for a caller and counts the evaluation. An unknown flag evaluates to
    /// off with [`ErrorCode::FlagNotFound`].
    ///
    /// ```
    /// use deploy_flags::{Context, FlagDefinition, FlagEngine, FlagSet};
    ///
    /// let engine = FlagEngine::new();
    /// engine.replace(FlagSet { flags: vec![FlagDefinition::new("dark-mode", true)], ..Default::default() })?;
    /// let snapshot = engine.snapshot();
    /// assert!(snapshot.evaluate("dark-mode", &Context::new()).enabled());
    /// assert!(!snapshot.evaluate("no-such-flag", &Context::new()).enabled());
    /// # Ok::<(), deploy_flags::FlagError>(())
    /// ```
    #[inline]
    pub fn evaluate(&self, name: &str, context: &Context) -> Evaluation<'_> {
        self.evaluate_counted(name, context, Tally::Shared(&self.shared_counts))
    }

    /// Whether a flag is on for a caller (unknown flags are off), counting the evaluation.
    /// Cheaper than [`Snapshot::evaluate`]: no variant is chosen.
    #[inline]
    pub fn is_enabled(&self, name: &str, context: &Context) -> bool {
        self.is_enabled_counted(name, context, Tally::Shared(&self.shared_counts))
    }

    #[inline(always)]
    pub(crate) fn is_enabled_counted(&self, name: &str, context: &Context, tally: Tally<'_>) -> bool {
        let Some(flag) = self.flags.get(name) else {
            return false;
        };
        let enabled = flag.is_on(self, context);
        tally.add(flag.slot + usize::from(!enabled));
        enabled
    }

    #[inline]
    pub(crate) fn evaluate_counted(&self, name: &str, context: &Context, tally: Tally<'_>) -> Evaluation<'_> {
        let Some(flag) = self.flags.get(name) else {
            return Evaluation::NOT_FOUND;
        };
        let evaluation = flag.decide(self, context);
        tally.add(flag.slot + usize::from(!evaluation.enabled));
        if let Some(variant) = evaluation.variant {
            tally.add(variant.slot);
        }
        evaluation
    }
}

/// The prerequisites decided during one evaluation, so that each is decided once however
/// many flags depend on it (a diamond-shaped set is linear, not exponential). Lives on the
/// stack: load-time checks bound a flag's distinct prerequisites by [`MAX_PREREQUISITES`].
struct Decided<'s> {
    len: usize,
    entries: [(usize, Evaluation<'s>); MAX_PREREQUISITES],
}

impl<'s> Decided<'s> {
    fn new() -> Self {
        Self {
            len: 0,
            entries: [(usize::MAX, Evaluation::NOT_FOUND); MAX_PREREQUISITES],
        }
    }

    /// `flag`'s outcome, deciding it on first use.
    fn get(&mut self, flag: &'s CompiledFlag, snapshot: &'s Snapshot, context: &Context) -> Evaluation<'s> {
        if let Some((_, outcome)) = self.entries[..self.len]
            .iter()
            .find(|(slot, _)| *slot == flag.slot)
        {
            return *outcome;
        }
        let outcome = flag.decide_with(snapshot, context, self);
        if let Some(entry) = self.entries.get_mut(self.len) {
            *entry = (flag.slot, outcome);
            self.len += 1;
        }
        outcome
    }
}

impl CompiledFlag {
    /// Decides without counting.
    fn decide<'s>(&'s self, snapshot: &'s Snapshot, context: &Context) -> Evaluation<'s> {
        self.decide_with(snapshot, context, &mut Decided::new())
    }

    fn decide_with<'s>(
        &'s self,
        snapshot: &'s Snapshot,
        context: &Context,
        decided: &mut Decided<'s>,
    ) -> Evaluation<'s> {
        #[cfg(test)]
        tests::DECISIONS.with(|count| count.set(count.get() + 1));
        let kind = Some(self.definition.kind);
        let off = |reason| Evaluation {
            enabled: false,
            variant: self.off_variant.as_ref(),
            kind,
            reason,
        };
        if !self.definition.enabled {
            return off(Reason::Disabled);
        }
        if let Some(prerequisite) = self.failed_prerequisite(snapshot, context, decided) {
            return off(Reason::PrerequisiteFailed { prerequisite });
        }
        if self.rules.is_empty() {
            return self.serve(None, None, Reason::Static, context);
        }
        for (index, rule) in self.rules.iter().enumerate() {
            if let Some(partial) = rule.matches(context) {
                let reason = if partial {
                    Reason::Split { rule: Some(index) }
                } else {
                    Reason::TargetingMatch { rule: Some(index) }
                };
                return self.serve(rule.variants.as_ref(), Some(index), reason, context);
            }
        }
        off(Reason::Default)
    }

    /// Whether the flag is on, without choosing a variant: all `is_enabled` needs.
    #[inline]
    fn is_on(&self, snapshot: &Snapshot, context: &Context) -> bool {
        if let Some(constant) = self.constant {
            return constant;
        }
        self.definition.enabled
            && (self.prerequisites.is_empty()
                || self
                    .failed_prerequisite(snapshot, context, &mut Decided::new())
                    .is_none())
            && (self.rules.is_empty() || self.rules.iter().any(|rule| rule.matches(context).is_some()))
    }

    /// The index of the first prerequisite not in its required state.
    fn failed_prerequisite<'s>(
        &self,
        snapshot: &'s Snapshot,
        context: &Context,
        decided: &mut Decided<'s>,
    ) -> Option<usize> {
        self.prerequisites.iter().position(|prerequisite| {
            let satisfied = snapshot.flags.get(&prerequisite.flag).is_some_and(|parent| {
                let outcome = decided.get(parent, snapshot, context);
                let variant_ok = prerequisite.variants.is_empty()
                    || outcome.variant.is_none_or(|variant| {
                        prerequisite
                            .variants
                            .iter()
                            .any(|name| **name == *variant.variant.name)
                    });
                outcome.enabled == prerequisite.enabled && variant_ok
            });
            !satisfied
        })
    }

    fn serve<'s>(
        &'s self,
        rule_variants: Option<&'s VariantSplit>,
        rule: Option<usize>,
        reason: Reason,
        context: &Context,
    ) -> Evaluation<'s> {
        let kind = Some(self.definition.kind);
        let Some(split) = rule_variants.or(self.variants.as_ref()) else {
            return Evaluation {
                enabled: true,
                variant: None,
                kind,
                reason,
            };
        };
        let (variant, pinned) = split.choose(context);
        let reason = if pinned {
            Reason::TargetingMatch { rule }
        } else if split.is_split {
            Reason::Split { rule }
        } else {
            reason
        };
        Evaluation {
            enabled: true,
            variant: Some(variant),
            kind,
            reason,
        }
    }
}

impl CompiledRule {
    /// `None` when the rule does not match; `Some(partial)` when it does, `partial` telling
    /// whether a percentage rollout (below 100%) let the caller in.
    #[inline]
    fn matches(&self, context: &Context) -> Option<bool> {
        if self.never
            || !self
                .constraints
                .iter()
                .all(|constraint| constraint.matches(context))
        {
            return None;
        }
        let Some(rollout) = &self.rollout else {
            return Some(false);
        };
        let bucket = match rollout.stickiness.resolve(context)? {
            _ if rollout.percentage == 0 => return None,
            StickyKey::Value(_) if rollout.percentage >= 100 => return Some(false),
            StickyKey::Value(id) => rollout.hash.bucket(id, 100),
            StickyKey::Random => rand::rng().random_range(1..=100),
        };
        (bucket <= rollout.percentage).then_some(rollout.percentage < 100)
    }
}

impl VariantSplit {
    /// The variant for a caller and whether an override pinned it.
    #[inline]
    fn choose(&self, context: &Context) -> (&CompiledVariant, bool) {
        if self.has_overrides {
            for variant in self.variants.iter() {
                let pinned = variant.overrides.iter().any(|(field, values)| {
                    context
                        .field(field)
                        .is_some_and(|value| values.iter().any(|candidate| **candidate == *value))
                });
                if pinned {
                    return (variant, true);
                }
            }
        }
        let target = match self.stickiness.resolve(context) {
            Some(StickyKey::Value(id)) => self.hash.bucket(id, self.total_weight),
            _ => rand::rng().random_range(1..=self.total_weight),
        };
        let mut cumulative = 0;
        for variant in self.variants.iter() {
            cumulative += variant.weight;
            if variant.weight > 0 && cumulative >= target {
                return (variant, false);
            }
        }
        // Unreachable: weights sum to total_weight >= target. Serve the last one regardless.
        (&self.variants[self.variants.len() - 1], false)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use crate::model::{FlagDefinition, FlagSet, Prerequisite};
    use crate::{Context, FlagEngine};

    thread_local! {
        /// Flags decided on this thread (the flag asked for and every prerequisite).
        pub(super) static DECISIONS: Cell<usize> = const { Cell::new(0) };
    }

    /// M12: a diamond ladder (every flag of a level depends on every flag of the next)
    /// used to take width^depth decisions per evaluation; each flag is now decided once.
    #[test]
    fn a_diamond_ladder_decides_each_prerequisite_once() {
        let (width, levels) = (4, crate::MAX_PREREQUISITE_DEPTH);
        let name = |level: usize, index: usize| format!("l{level}-{index}");
        let mut flags = vec![];
        for level in 0..levels {
            for index in 0..if level == 0 { 1 } else { width } {
                let mut flag = FlagDefinition::new(name(level, index), true);
                if level + 1 < levels {
                    flag.prerequisites = (0..width)
                        .map(|parent| Prerequisite {
                            flag: name(level + 1, parent),
                            enabled: true,
                            variants: vec![],
                        })
                        .collect();
                }
                flags.push(flag);
            }
        }
        let engine = FlagEngine::with_flags(FlagSet {
            flags,
            segments: vec![],
        })
        .unwrap();
        let distinct = 1 + width * (levels - 1);
        for evaluate in [
            |engine: &FlagEngine| engine.evaluate("l0-0", &Context::new()).enabled,
            |engine: &FlagEngine| engine.is_enabled("l0-0", &Context::new()),
        ] {
            DECISIONS.with(|count| count.set(0));
            assert!(evaluate(&engine));
            let decisions = DECISIONS.with(Cell::get);
            assert!(
                decisions <= distinct,
                "{decisions} decisions for {distinct} flags"
            );
        }
    }
}
