//! Compiling a [`FlagSet`] into an immutable [`Snapshot`]: every check happens here, once,
//! so evaluation never fails and never parses an operand.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use deploy_core::time::DynClock;

use crate::context::{Context, Field};
use crate::error::FlagError;
use crate::hash::{Murmur3, VARIANT_SEED};
use crate::index::FlagIndex;
use crate::matchers::{CompiledConstraint, Owner};
use crate::metrics::{CountBlock, CounterRegistry};
use crate::model::{
    FlagDefinition, FlagKind, FlagSet, PayloadKind, Rule, Segment, Stickiness, VariantDefinition,
};
use crate::pattern::MAX_REGEXES;

/// The compiled flags of one version of the definitions. Immutable; the engine swaps whole
/// snapshots. Evaluate through [`Snapshot::evaluate`](crate::Snapshot::evaluate) or the
/// engine.
#[derive(Debug)]
pub struct Snapshot {
    pub(crate) flags: FlagIndex,
    pub(crate) segments: BTreeMap<String, Segment>,
    pub(crate) version: u64,
    /// Counts of evaluations made on the snapshot directly (not through an engine's reader).
    pub(crate) shared_counts: Arc<CountBlock>,
}

#[derive(Debug)]
pub(crate) struct CompiledFlag {
    pub(crate) definition: FlagDefinition,
    pub(crate) rules: Box<[CompiledRule]>,
    pub(crate) variants: Option<VariantSplit>,
    pub(crate) off_variant: Option<CompiledVariant>,
    pub(crate) prerequisites: Box<[CompiledPrerequisite]>,
    /// Counter slot of `enabled`; `disabled` is the next one.
    pub(crate) slot: usize,
    /// The answer when it does not depend on the caller (disabled, or no rules or
    /// prerequisites).
    pub(crate) constant: Option<bool>,
}

#[derive(Debug)]
pub(crate) struct CompiledRule {
    pub(crate) never: bool,
    pub(crate) constraints: Box<[CompiledConstraint]>,
    pub(crate) rollout: Option<CompiledRollout>,
    pub(crate) variants: Option<VariantSplit>,
}

#[derive(Debug)]
pub(crate) struct CompiledRollout {
    pub(crate) percentage: u32,
    pub(crate) stickiness: CompiledStickiness,
    pub(crate) hash: Murmur3,
}

#[derive(Debug)]
pub(crate) struct CompiledPrerequisite {
    pub(crate) flag: Box<str>,
    pub(crate) enabled: bool,
    pub(crate) variants: Box<[Box<str>]>,
}

/// A stickiness chain with names resolved to fields.
#[derive(Debug)]
pub(crate) struct CompiledStickiness {
    chain: Box<[Field]>,
    random_last: bool,
}

/// What a stickiness chain found in a context.
pub(crate) enum StickyKey<'a> {
    Value(&'a str),
    Random,
}

impl CompiledStickiness {
    fn compile(stickiness: &Stickiness) -> Self {
        let mut chain = Vec::new();
        let mut random_last = false;
        for name in &stickiness.0 {
            if name == Stickiness::RANDOM {
                // Anything after `random` can never be reached.
                random_last = true;
                break;
            }
            chain.push(Field::from_name(name));
        }
        Self {
            chain: chain.into(),
            random_last,
        }
    }

    #[inline]
    pub(crate) fn resolve<'a>(&self, context: &'a Context) -> Option<StickyKey<'a>> {
        for field in &self.chain {
            if let Some(value) = context.field(field) {
                return Some(StickyKey::Value(value));
            }
        }
        self.random_last.then_some(StickyKey::Random)
    }
}

/// A weighted list of variants with its bucketing.
#[derive(Debug)]
pub(crate) struct VariantSplit {
    pub(crate) variants: Box<[CompiledVariant]>,
    pub(crate) total_weight: u32,
    pub(crate) stickiness: CompiledStickiness,
    pub(crate) hash: Murmur3,
    pub(crate) has_overrides: bool,
    /// More than one variant can be drawn, so serving one is a split.
    pub(crate) is_split: bool,
}

/// Callers pinned to a variant: an attribute and the values that pin.
pub(crate) type Pins = (Field, Box<[Box<str>]>);

#[derive(Debug)]
pub(crate) struct CompiledVariant {
    pub(crate) variant: Variant,
    pub(crate) weight: u32,
    pub(crate) overrides: Box<[Pins]>,
    pub(crate) slot: usize,
}

/// A variant as served: its name and payload. Cloning shares the text (no allocation).
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// The variant's name.
    pub name: Arc<str>,
    /// The value it carries, if any.
    pub payload: Option<VariantPayload>,
}

/// A variant's payload: the text as defined and, where it parses, the typed value.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantPayload {
    /// The declared type.
    pub kind: PayloadKind,
    /// The value as written.
    pub text: Arc<str>,
    /// The value as a number, when it is one.
    pub number: Option<f64>,
    /// The value as JSON, for `json` payloads.
    pub json: Option<Arc<serde_json::Value>>,
}

impl Snapshot {
    /// An empty snapshot: every flag is unknown.
    pub fn empty() -> Self {
        Self {
            flags: FlagIndex::default(),
            segments: BTreeMap::new(),
            version: 0,
            shared_counts: Arc::new(CountBlock::empty()),
        }
    }

    /// The version: 0 for the empty snapshot, then one more for each accepted update.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Number of flags.
    pub fn len(&self) -> usize {
        self.flags.len()
    }

    /// True when there are no flags.
    pub fn is_empty(&self) -> bool {
        self.flags.len() == 0
    }

    /// The definition of a flag, as loaded.
    pub fn definition(&self, name: &str) -> Option<&FlagDefinition> {
        self.flags.get(name).map(|flag| &flag.definition)
    }

    /// Every definition and segment, sorted by name: what this snapshot was compiled from.
    pub fn to_flag_set(&self) -> FlagSet {
        let mut flags: Vec<_> = self
            .flags
            .iter()
            .map(|(_, flag)| flag.definition.clone())
            .collect();
        flags.sort_by(|a, b| a.name.cmp(&b.name));
        FlagSet {
            flags,
            segments: self.segments.values().cloned().collect(),
        }
    }

    /// Compiles `set`, reusing flags of `previous` whose definition and segments are unchanged.
    /// Date constraints read `clock` when the caller gives no `currentTime`. When
    /// `quarantine`, an invalid flag (and any flag whose prerequisites it breaks) is left out
    /// and its error returned alongside; otherwise the first error fails the whole set.
    pub(crate) fn compile(
        set: FlagSet,
        previous: &Snapshot,
        counters: &CounterRegistry,
        clock: &Arc<DynClock>,
        quarantine: bool,
    ) -> Result<(Self, Vec<FlagError>), FlagError> {
        let mut segments = BTreeMap::new();
        for segment in set.segments {
            let owner = Owner::Segment(&segment.id);
            if segment.id.is_empty() {
                return Err(owner.error("id", "must not be empty"));
            }
            for (index, constraint) in segment.constraints.iter().enumerate() {
                CompiledConstraint::compile(constraint, &owner, &format!("constraints[{index}]"), clock)?;
            }
            let id = segment.id.clone();
            if segments.insert(id.clone(), segment).is_some() {
                return Err(Owner::Segment(&id).error("id", "two segments share this id"));
            }
        }
        let mut quarantined = Vec::new();
        let mut set_aside = |error: FlagError| match error.flag() {
            Some(_) if quarantine => {
                quarantined.push(error);
                Ok(())
            }
            _ => Err(error),
        };
        let mut flags = FlagIndex::default();
        let mut regexes = 0;
        for definition in set.flags {
            let reusable = previous.flags.get(definition.name.as_str()).filter(|old| {
                old.definition == definition
                    && referenced_segments(&definition)
                        .all(|id| previous.segments.get(id) == segments.get(id))
            });
            let compiled = match reusable {
                Some(old) => Ok(old.clone()),
                None => CompiledFlag::compile(definition, &segments, counters, clock).map(Arc::new),
            };
            let compiled = match compiled.and_then(|flag| count_regexes(flag, &mut regexes)) {
                Ok(compiled) => compiled,
                Err(error) => {
                    set_aside(error)?;
                    continue;
                }
            };
            let name = compiled.definition.name.clone();
            if !flags.insert(&name, compiled) {
                set_aside(FlagError::invalid(&name, "name", "two flags share this name"))?;
            }
        }
        for error in check_prerequisites(&flags) {
            let name = error.flag().unwrap_or_default().to_owned();
            set_aside(error)?;
            flags.remove(&name);
        }
        let shared_counts = counters.shared_block();
        let snapshot = Self {
            flags,
            segments,
            version: previous.version + 1,
            shared_counts,
        };
        Ok((snapshot, quarantined))
    }
}

/// Adds a flag's regexes to the snapshot's count, refusing it past [`MAX_REGEXES`].
fn count_regexes(flag: Arc<CompiledFlag>, count: &mut usize) -> Result<Arc<CompiledFlag>, FlagError> {
    let own = flag
        .rules
        .iter()
        .flat_map(|rule| rule.constraints.iter())
        .filter(|constraint| constraint.is_regex())
        .count();
    *count += own;
    if *count > MAX_REGEXES {
        *count -= own;
        return Err(FlagError::invalid(
            &flag.definition.name,
            "rules",
            format!("more than {MAX_REGEXES} regex constraints in one flag set"),
        ));
    }
    Ok(flag)
}

fn referenced_segments(definition: &FlagDefinition) -> impl Iterator<Item = &str> {
    definition
        .rules
        .iter()
        .flat_map(|rule| rule.segments.iter().map(String::as_str))
}

/// The longest prerequisite chain a flag may head, in flags (itself included): deeper
/// definitions are refused at load, so neither the load nor an evaluation recurses far.
pub const MAX_PREREQUISITE_DEPTH: usize = 8;

/// How many distinct flags one flag may depend on, directly or through others: each is
/// decided at most once per evaluation and remembered on the stack.
pub const MAX_PREREQUISITES: usize = 32;

/// Where the prerequisite check is with a flag.
enum Visit<'a> {
    OnPath,
    /// Checked: its depth (longest chain below it) and every flag it depends on.
    Valid(usize, HashSet<&'a str>),
    Invalid,
}

/// The flags whose prerequisites are not sound, one error each: a prerequisite that does
/// not exist or is itself invalid, a cycle, a chain longer than [`MAX_PREREQUISITE_DEPTH`],
/// more than [`MAX_PREREQUISITES`] flags depended on. One iterative depth-first pass
/// (no recursion, so no chain length overflows the stack).
fn check_prerequisites(flags: &FlagIndex) -> Vec<FlagError> {
    let mut visits: HashMap<&str, Visit<'_>> = HashMap::new();
    let mut cyclic = HashSet::new();
    let mut errors = Vec::new();
    let mut names: Vec<&str> = flags.iter().map(|(name, _)| name).collect();
    names.sort_unstable();
    for start in names {
        if visits.contains_key(start) {
            continue;
        }
        visits.insert(start, Visit::OnPath);
        let mut path: Vec<(&str, usize)> = vec![(start, 0)];
        while let Some((name, next)) = path.pop() {
            let prerequisites = flags.get(name).map_or(&[][..], |flag| &flag.prerequisites[..]);
            if let Some(prerequisite) = prerequisites.get(next) {
                path.push((name, next + 1));
                let parent = &*prerequisite.flag;
                match visits.get(parent) {
                    None if flags.contains_key(parent) => {
                        visits.insert(parent, Visit::OnPath);
                        path.push((parent, 0));
                    }
                    Some(Visit::OnPath) if cyclic.insert(parent) => {
                        let from = path
                            .iter()
                            .position(|(on_path, _)| *on_path == parent)
                            .unwrap_or(0);
                        let mut cycle: Vec<String> =
                            path[from..].iter().map(|(name, _)| name.to_string()).collect();
                        cycle.push(parent.to_owned());
                        errors.push(FlagError::PrerequisiteCycle {
                            flag: parent.to_owned(),
                            cycle,
                        });
                    }
                    _ => {}
                }
                continue;
            }
            let verdict = judge(name, prerequisites, &visits);
            let visit = match verdict {
                _ if cyclic.contains(name) => Visit::Invalid,
                Ok((depth, closure)) => Visit::Valid(depth, closure),
                Err(error) => {
                    errors.push(error);
                    Visit::Invalid
                }
            };
            visits.insert(name, visit);
        }
    }
    errors
}

/// A flag's depth and dependencies once its prerequisites are checked, or why it is invalid.
fn judge<'a>(
    name: &str,
    prerequisites: &'a [CompiledPrerequisite],
    visits: &HashMap<&str, Visit<'a>>,
) -> Result<(usize, HashSet<&'a str>), FlagError> {
    let mut depth = 0;
    let mut closure = HashSet::new();
    for (index, prerequisite) in prerequisites.iter().enumerate() {
        let parent = &*prerequisite.flag;
        let field = format!("prerequisites[{index}].flag");
        match visits.get(parent) {
            Some(Visit::Valid(parent_depth, parent_closure)) => {
                depth = depth.max(parent_depth + 1);
                closure.insert(parent);
                closure.extend(parent_closure.iter().copied());
            }
            None => {
                return Err(FlagError::invalid(
                    name,
                    field,
                    format!("no flag named `{parent}`"),
                ));
            }
            Some(_) => return Err(FlagError::invalid(name, field, format!("`{parent}` is invalid"))),
        }
        if closure.len() > MAX_PREREQUISITES {
            return Err(FlagError::invalid(
                name,
                "prerequisites",
                format!("depends on more than {MAX_PREREQUISITES} flags"),
            ));
        }
    }
    if depth >= MAX_PREREQUISITE_DEPTH {
        return Err(FlagError::invalid(
            name,
            "prerequisites",
            format!("heads a prerequisite chain longer than {MAX_PREREQUISITE_DEPTH} flags"),
        ));
    }
    Ok((depth, closure))
}

impl CompiledFlag {
    fn compile(
        definition: FlagDefinition,
        segments: &BTreeMap<String, Segment>,
        counters: &CounterRegistry,
        clock: &Arc<DynClock>,
    ) -> Result<Self, FlagError> {
        let name = definition.name.as_str();
        let owner = Owner::Flag(name);
        if name.is_empty() {
            return Err(FlagError::invalid(name, "name", "must not be empty"));
        }
        let slot = counters.flag_slot(name);
        let rules = definition
            .rules
            .iter()
            .enumerate()
            .map(|(index, rule)| compile_rule(rule, index, &definition, segments, counters, clock))
            .collect::<Result<Box<[_]>, _>>()?;
        let default_stickiness = definition
            .variants
            .first()
            .and_then(|variant| variant.stickiness.clone());
        let variants = compile_split(
            &definition.variants,
            &definition,
            "variants",
            default_stickiness.as_ref(),
            name,
            counters,
        )?;
        let off_variant = match &definition.off_variant {
            None => None,
            Some(off) => {
                let found = definition
                    .variants
                    .iter()
                    .find(|variant| variant.name == *off)
                    .ok_or_else(|| {
                        owner.error("offVariant", format!("`{off}` is not one of the flag's variants"))
                    })?;
                Some(compile_variant(found, &definition, "offVariant", counters)?)
            }
        };
        let prerequisites = definition
            .prerequisites
            .iter()
            .enumerate()
            .map(|(index, prerequisite)| {
                if prerequisite.flag == name {
                    return Err(owner.error(
                        format!("prerequisites[{index}].flag"),
                        "a flag cannot depend on itself",
                    ));
                }
                if definition.prerequisites[..index]
                    .iter()
                    .any(|earlier| earlier.flag == prerequisite.flag)
                {
                    return Err(owner.error(
                        format!("prerequisites[{index}].flag"),
                        format!("`{}` is listed twice", prerequisite.flag),
                    ));
                }
                Ok(CompiledPrerequisite {
                    flag: prerequisite.flag.as_str().into(),
                    enabled: prerequisite.enabled,
                    variants: prerequisite
                        .variants
                        .iter()
                        .map(|variant| variant.as_str().into())
                        .collect(),
                })
            })
            .collect::<Result<Box<[_]>, _>>()?;
        let constant = if !definition.enabled {
            Some(false)
        } else if rules.is_empty() && prerequisites.is_empty() {
            Some(true)
        } else {
            None
        };
        Ok(Self {
            rules,
            variants,
            off_variant,
            prerequisites,
            slot,
            constant,
            definition,
        })
    }
}

fn compile_rule(
    rule: &Rule,
    index: usize,
    flag: &FlagDefinition,
    segments: &BTreeMap<String, Segment>,
    counters: &CounterRegistry,
    clock: &Arc<DynClock>,
) -> Result<CompiledRule, FlagError> {
    let owner = Owner::Flag(&flag.name);
    let at = format!("rules[{index}]");
    let mut constraints = Vec::new();
    for (position, constraint) in rule.constraints.iter().enumerate() {
        constraints.push(CompiledConstraint::compile(
            constraint,
            &owner,
            &format!("{at}.constraints[{position}]"),
            clock,
        )?);
    }
    for (position, id) in rule.segments.iter().enumerate() {
        let segment = segments.get(id).ok_or_else(|| {
            owner.error(
                format!("{at}.segments[{position}]"),
                format!("no segment with id `{id}`"),
            )
        })?;
        for constraint in &segment.constraints {
            // Segments were checked on their own; errors here cannot happen but stay typed.
            constraints.push(CompiledConstraint::compile(
                constraint,
                &Owner::Segment(id),
                "constraints",
                clock,
            )?);
        }
    }
    let rollout = match &rule.rollout {
        None => None,
        Some(rollout) => {
            if rollout.percentage > 100 {
                return Err(owner.error(
                    format!("{at}.rollout.percentage"),
                    format!("{} is outside 0..=100", rollout.percentage),
                ));
            }
            if rollout.stickiness.0.is_empty() {
                return Err(owner.error(
                    format!("{at}.rollout.stickiness"),
                    "must name at least one attribute",
                ));
            }
            let group = rollout.group_id.as_deref().unwrap_or(&flag.name);
            Some(CompiledRollout {
                percentage: rollout.percentage,
                stickiness: CompiledStickiness::compile(&rollout.stickiness),
                hash: Murmur3::with_prefix(0, group),
            })
        }
    };
    let stickiness = rule
        .variant_stickiness
        .as_ref()
        .or(rule.rollout.as_ref().map(|rollout| &rollout.stickiness));
    let group = rule
        .variant_group_id
        .as_deref()
        .or(rule
            .rollout
            .as_ref()
            .and_then(|rollout| rollout.group_id.as_deref()))
        .unwrap_or(&flag.name);
    let variants = compile_split(
        &rule.variants,
        flag,
        &format!("{at}.variants"),
        stickiness,
        group,
        counters,
    )?;
    Ok(CompiledRule {
        never: rule.disabled,
        constraints: constraints.into(),
        rollout,
        variants,
    })
}

fn compile_split(
    variants: &[VariantDefinition],
    flag: &FlagDefinition,
    at: &str,
    stickiness: Option<&Stickiness>,
    group: &str,
    counters: &CounterRegistry,
) -> Result<Option<VariantSplit>, FlagError> {
    if variants.is_empty() {
        return Ok(None);
    }
    let owner = Owner::Flag(&flag.name);
    let mut names = HashSet::new();
    let mut compiled = Vec::with_capacity(variants.len());
    let mut total_weight: u32 = 0;
    for (index, variant) in variants.iter().enumerate() {
        let field = format!("{at}[{index}]");
        if !names.insert(variant.name.as_str()) {
            return Err(owner.error(
                format!("{field}.name"),
                format!("two variants are named `{}`", variant.name),
            ));
        }
        total_weight = total_weight
            .checked_add(variant.weight)
            .ok_or_else(|| owner.error(format!("{field}.weight"), "weights overflow"))?;
        compiled.push(compile_variant(variant, flag, &field, counters)?);
    }
    if total_weight == 0 {
        return Err(owner.error(at, "variant weights sum to 0"));
    }
    let drawable = variants.iter().filter(|variant| variant.weight > 0).count();
    let default_chain = Stickiness::default_chain();
    let mut stickiness = CompiledStickiness::compile(stickiness.unwrap_or(&default_chain));
    // A variant is always served: with no sticky attribute the draw is random (as Unleash).
    stickiness.random_last = true;
    Ok(Some(VariantSplit {
        has_overrides: variants.iter().any(|variant| !variant.overrides.is_empty()),
        is_split: drawable > 1,
        variants: compiled.into(),
        total_weight,
        stickiness,
        hash: Murmur3::with_prefix(VARIANT_SEED, group),
    }))
}

fn compile_variant(
    variant: &VariantDefinition,
    flag: &FlagDefinition,
    at: &str,
    counters: &CounterRegistry,
) -> Result<CompiledVariant, FlagError> {
    let owner = Owner::Flag(&flag.name);
    if variant.name.is_empty() {
        return Err(owner.error(format!("{at}.name"), "must not be empty"));
    }
    let payload = match &variant.payload {
        None if flag.kind != FlagKind::Boolean => {
            return Err(owner.error(
                format!("{at}.payload"),
                format!("a {:?} flag needs a payload", flag.kind),
            ));
        }
        None => None,
        Some(payload) => {
            let number = payload
                .value
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|number| number.is_finite());
            let json = match payload.kind {
                PayloadKind::Json => Some(Arc::new(serde_json::from_str(&payload.value).map_err(
                    |error| owner.error(format!("{at}.payload.value"), format!("not JSON: {error}")),
                )?)),
                _ => None,
            };
            let fits = match flag.kind {
                FlagKind::Boolean => true,
                FlagKind::String => matches!(payload.kind, PayloadKind::String | PayloadKind::Csv),
                FlagKind::Number => payload.kind == PayloadKind::Number,
                FlagKind::Json => payload.kind == PayloadKind::Json,
            };
            if !fits {
                return Err(owner.error(
                    format!("{at}.payload.type"),
                    format!("a {:?} payload in a {:?} flag", payload.kind, flag.kind),
                ));
            }
            if payload.kind == PayloadKind::Number && number.is_none() && flag.kind == FlagKind::Number {
                return Err(owner.error(
                    format!("{at}.payload.value"),
                    format!("`{}` is not a number", payload.value),
                ));
            }
            Some(VariantPayload {
                kind: payload.kind,
                text: payload.value.as_str().into(),
                number,
                json,
            })
        }
    };
    let name: Arc<str> = variant.name.as_str().into();
    let overrides = variant
        .overrides
        .iter()
        .map(|rule| {
            (
                Field::from_name(&rule.context_name),
                rule.values.iter().map(|value| value.as_str().into()).collect(),
            )
        })
        .collect();
    Ok(CompiledVariant {
        slot: counters.variant_slot(&flag.name, &name),
        variant: Variant { name, payload },
        weight: variant.weight,
        overrides,
    })
}
