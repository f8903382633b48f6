//! Rank statistics for the baseline-vs-canary judge: the Mann-Whitney U test (tie-corrected,
//! normal approximation) and the Hodges-Lehmann shift estimate with its distribution-free
//! confidence interval.
//!
//! The Hodges-Lehmann estimate is the median of all `m * n` pairwise differences. It is
//! computed without enumerating them: the k-th smallest difference is searched for by its
//! value, counting the differences on either side of a candidate with one merge-like pass
//! over the two sorted samples. The bounds of the search are always differences themselves,
//! and a candidate equal to the k-th difference ends it, so tied data (all values equal,
//! whole milliseconds, mostly zeros) converges as fast as smooth data. The cost is
//! `O((m + n) log(m + n))` for the sorts plus at most about 100 passes of `O(m + n)`, and the
//! memory `O(m + n)` for every input.

/// The result of comparing a canary sample with a baseline sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// Mann-Whitney U of the canary sample.
    pub u: f64,
    /// Standardised U (tie-corrected, with continuity correction); positive when the canary
    /// tends to be larger.
    pub z: f64,
    /// One-sided p-value for "the canary tends to be larger".
    pub p_greater: f64,
    /// One-sided p-value for "the canary tends to be smaller".
    pub p_less: f64,
    /// Hodges-Lehmann estimate of the shift, canary minus baseline.
    pub shift: f64,
    /// Lower end of the confidence interval of the shift.
    pub shift_low: f64,
    /// Upper end of the confidence interval of the shift.
    pub shift_high: f64,
}

impl Comparison {
    /// Two-sided p-value.
    pub fn p_two_sided(&self) -> f64 {
        (2.0 * self.p_greater.min(self.p_less)).min(1.0)
    }
}

/// Standard normal cumulative distribution.
pub(crate) fn normal_cdf(z: f64) -> f64 {
    0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)
}

/// The z-score with `p` of the standard normal distribution below it, for p in (0, 1)
/// (Acklam's rational approximation refined by one Newton step; accurate to ~1e-12).
pub(crate) fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    let x = if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    };
    // One Newton step on the exact CDF.
    let density = (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
    x - (normal_cdf(x) - p) / density
}

/// Compares `canary` with `baseline` at `confidence` (for the shift interval). Samples are
/// meant to be finite (a `Series` is); an empty sample is no evidence either way (a shift of
/// NaN in an unbounded interval), and NaN or infinite values give meaningless numbers but
/// neither a panic nor unbounded work.
pub(crate) fn compare(baseline: &[f64], canary: &[f64], confidence: f64) -> Comparison {
    if baseline.is_empty() || canary.is_empty() {
        return Comparison {
            u: 0.0,
            z: 0.0,
            p_greater: 0.5,
            p_less: 0.5,
            shift: f64::NAN,
            shift_low: f64::NEG_INFINITY,
            shift_high: f64::INFINITY,
        };
    }
    let mut x = baseline.to_vec();
    let mut y = canary.to_vec();
    // Values equal in this order are bit-identical, so an unstable sort (no buffer) is as
    // good as a stable one.
    x.sort_unstable_by(f64::total_cmp);
    y.sort_unstable_by(f64::total_cmp);
    let (u, z) = mann_whitney(&x, &y);
    let (shift, shift_low, shift_high) = hodges_lehmann(&x, &y, confidence);
    Comparison {
        u,
        z,
        p_greater: 1.0 - normal_cdf(z),
        p_less: normal_cdf(z),
        shift,
        shift_low,
        shift_high,
    }
}

/// U of `y` (the canary) and its tie-corrected, continuity-corrected z-score. Both inputs
/// sorted.
fn mann_whitney(x: &[f64], y: &[f64]) -> (f64, f64) {
    let (m, n) = (x.len() as f64, y.len() as f64);
    let total = m + n;
    // Walk the merged order, giving tied runs their average rank.
    let (mut i, mut j) = (0, 0);
    let mut rank_sum_y = 0.0;
    let mut tie_term = 0.0;
    let mut next_rank = 1.0;
    while i < x.len() || j < y.len() {
        let value = match (x.get(i), y.get(j)) {
            (Some(a), Some(b)) => a.min(*b),
            (Some(a), None) => *a,
            (None, Some(b)) => *b,
            (None, None) => break,
        };
        let from_x = x[i..].iter().take_while(|v| **v == value).count();
        let from_y = y[j..].iter().take_while(|v| **v == value).count();
        if from_x + from_y == 0 {
            // Only NaN, which equals nothing: the caller promised finite samples.
            break;
        }
        let tied = (from_x + from_y) as f64;
        let average_rank = next_rank + (tied - 1.0) / 2.0;
        rank_sum_y += average_rank * from_y as f64;
        tie_term += tied * tied * tied - tied;
        next_rank += tied;
        i += from_x;
        j += from_y;
    }
    let u = rank_sum_y - n * (n + 1.0) / 2.0;
    let mean = m * n / 2.0;
    let variance = m * n / 12.0 * ((total + 1.0) - tie_term / (total * (total - 1.0)).max(1.0));
    if variance <= 0.0 {
        // Every value tied: no evidence either way.
        return (u, 0.0);
    }
    let diff = u - mean;
    let corrected = diff.signum() * (diff.abs() - 0.5).max(0.0);
    (u, corrected / variance.sqrt())
}

/// `v` as an integer with the order of `f64::total_cmp`.
///
/// The search orders differences this way rather than as numbers, so that `-0.0` and `0.0`
/// are told apart exactly as a sort by `total_cmp` tells them apart.
fn key(v: f64) -> i64 {
    let bits = v.to_bits() as i64;
    // Negative numbers: flip every bit but the sign, so larger magnitudes come first.
    bits ^ (((bits >> 63) as u64) >> 1) as i64
}

/// The inverse of [`key`] (the map is its own inverse).
fn from_key(k: i64) -> f64 {
    f64::from_bits((k ^ (((k >> 63) as u64) >> 1) as i64) as u64)
}

/// A threshold in `f64::total_cmp` order, compared as a number first: as numbers, only
/// `-0.0` and `0.0` are equal and distinct in that order (NaN is neither).
#[derive(Debug, Clone, Copy)]
struct Cut {
    key: i64,
    value: f64,
}

impl Cut {
    fn new(key: i64) -> Self {
        Self {
            key,
            value: from_key(key),
        }
    }

    /// Whether `d` comes before the threshold.
    fn below(self, d: f64) -> bool {
        d < self.value || (d == self.value && key(d) < self.key)
    }

    /// Whether `d` comes before the threshold or is it.
    fn at_most(self, d: f64) -> bool {
        d < self.value || (d == self.value && key(d) <= self.key)
    }
}

/// Where a threshold falls among the differences `y[j] - x[i]`.
#[derive(Debug)]
struct Split {
    /// How many differences are below the threshold.
    below: u128,
    /// How many are at or below it.
    at_most: u128,
    /// The largest difference below it, as a key.
    before: Option<i64>,
    /// The smallest difference above it, as a key.
    after: Option<i64>,
}

/// What a search knows: the wanted difference lies in `[lo, hi]` (keys of differences);
/// `below` differences are less than `lo` and `at_most` are at most `hi`.
#[derive(Debug, Clone, Copy)]
struct Bracket {
    lo: i64,
    hi: i64,
    below: u128,
    at_most: u128,
}

/// The search for the k-th smallest difference.
#[derive(Debug, Clone, Copy)]
struct Search {
    k: u128,
    bracket: Bracket,
    found: Option<f64>,
    /// Passes whose threshold this search chose.
    passes: u32,
    /// Which bound moved last (true: the upper one).
    last_moved_high: Option<bool>,
    /// Differences per unit of value around the answer, when it was found by listing: a
    /// neighbouring rank starts from there.
    density: Option<f64>,
    /// The last two thresholds that narrowed the bracket, with the differences at most
    /// them, older first: the secant through them aims the next one.
    probes: [Option<(f64, f64)>; 2],
}

/// Interpolating passes allowed per search; after them it only bisects the key range.
const INTERPOLATIONS: u32 = 24;
/// Interpolating passes plus the at most 64 halvings of the key range, and a margin.
const MAX_PASSES: u32 = INTERPOLATIONS + 72;

impl Search {
    fn new(k: u128, all: Bracket) -> Self {
        let in_range = (1..=all.at_most).contains(&k);
        Self {
            k,
            bracket: all,
            found: (!in_range).then_some(f64::NAN),
            passes: 0,
            last_moved_high: None,
            density: None,
            probes: [None, None],
        }
    }

    /// The next threshold.
    ///
    /// The secant through the last two thresholds, or interpolation between the bounds
    /// (fast on smooth data); the middle of the key range when the last threshold did not
    /// halve the distance to the k-th difference (a skewed or heavy-tailed distribution),
    /// and after [`INTERPOLATIONS`] passes, which at most 64 more passes exhaust.
    ///
    /// Either aims a little past the k-th difference, towards the bound that did not move
    /// last, or at the middle of the bracket once that is at most twice `few`: estimates
    /// tend to close in from one side, and a pass that leaves at most `few` differences
    /// between the bounds ends the search.
    fn threshold(&self, few: u128) -> i64 {
        let b = &self.bracket;
        let middle = b.lo.midpoint(b.hi);
        let (below, at_most, k) = (b.below as f64, b.at_most as f64, self.k as f64);
        let stalled = match self.probes {
            [Some((_, c0)), Some((_, c1))] => (c1 - k).abs() > (c0 - k).abs() / 2.0,
            _ => false,
        };
        if self.passes >= INTERPOLATIONS || stalled {
            return middle;
        }
        let few = few as f64;
        let target = if at_most - below <= 2.0 * few {
            // Landing anywhere in [at_most - few, below + few] is enough.
            (below + at_most) / 2.0
        } else {
            let lean = match self.last_moved_high {
                Some(true) => -few / 3.0,
                Some(false) => few / 3.0,
                None => 0.0,
            };
            (k + lean).clamp((below + k) / 2.0, (k + at_most) / 2.0)
        };
        let guess = match self.probes {
            [Some((t0, c0)), Some((t1, c1))] => t1 + (target - c1) * (t1 - t0) / (c1 - c0),
            _ => {
                let (lo, hi) = (from_key(b.lo), from_key(b.hi));
                lo + (hi - lo) * ((target - below) / (at_most - below))
            }
        };
        // Infinities, or a span that overflows, give NaN or a threshold outside the bracket.
        let t = key(guess);
        if guess.is_nan() || !(b.lo..=b.hi).contains(&t) {
            return middle;
        }
        t
    }

    /// Narrows the bracket with a pass at `t`; a threshold outside it tells nothing new.
    fn learn(&mut self, t: i64, at: &Split) {
        let b = &mut self.bracket;
        if self.found.is_some() || !(b.lo..=b.hi).contains(&t) {
            return;
        }
        self.probes = [self.probes[1], Some((from_key(t), at.at_most as f64))];
        let moved_high = if at.at_most < self.k {
            // Above `t`: the next difference up is the new lower bound.
            let Some(after) = at.after else {
                self.found = Some(from_key(b.hi));
                return;
            };
            (b.lo, b.below) = (after, at.at_most);
            false
        } else if at.below >= self.k {
            let Some(before) = at.before else {
                self.found = Some(from_key(b.lo));
                return;
            };
            (b.hi, b.at_most) = (before, at.below);
            true
        } else {
            // below < k <= at_most: some difference equals `t`, and it is the k-th.
            self.found = Some(from_key(t));
            return;
        };
        self.last_moved_high = Some(moved_high);
    }
}

/// Order statistics of the `m * n` differences `y[j] - x[i]` of two sorted samples, in
/// `f64::total_cmp` order.
///
/// Exact because floating-point subtraction is monotone in each argument (rounding is):
/// along a row `x[i]` the differences never decrease with `j`, and for a larger `x[i]` they
/// are never larger. So the differences below any threshold form a prefix of each row that
/// only shrinks as `i` grows, and one merge-like pass counts them. Differences that overflow
/// to an infinity keep that order.
struct Differences<'a> {
    x: &'a [f64],
    y: &'a [f64],
    /// The differences in one bracket, at the end of a search; never longer than `m + n`.
    scratch: Vec<f64>,
    /// How few differences a bracket holds before the search lists them: `m + n`, which
    /// keeps `scratch` linear.
    few: u128,
}

impl<'a> Differences<'a> {
    fn new(x: &'a [f64], y: &'a [f64]) -> Self {
        Self {
            x,
            y,
            scratch: Vec::new(),
            few: (x.len() + y.len()) as u128,
        }
    }

    fn pairs(&self) -> u128 {
        self.x.len() as u128 * self.y.len() as u128
    }

    /// All differences: from the smallest, `y[0] - x[m-1]`, to the largest.
    fn everything(&self) -> Option<Bracket> {
        let (x_min, x_max) = (self.x.first()?, self.x.last()?);
        let (y_min, y_max) = (self.y.first()?, self.y.last()?);
        Some(Bracket {
            lo: key(y_min - x_max),
            hi: key(y_max - x_min),
            below: 0,
            at_most: self.pairs(),
        })
    }

    /// The k-th smallest (1-based) difference for each k of `ranks`, NaN for a rank out of
    /// range. The searches share their passes: each pass narrows every bracket that its
    /// threshold falls in.
    fn kths<const N: usize>(&mut self, ranks: [u128; N]) -> [f64; N] {
        let Some(all) = self.everything() else {
            return [f64::NAN; N];
        };
        let mut searches = ranks.map(|k| Search::new(k, all));
        // The first threshold: the difference of the medians, a difference near the middle
        // ranks, and on the tie holding them when the samples are mostly one value.
        let (x, y) = (self.x, self.y);
        let mut seed = x
            .get(x.len() / 2)
            .zip(y.get(y.len() / 2))
            .map(|(xi, yj)| key(yj - xi));
        while let Some(i) = searches.iter().position(|s| s.found.is_none()) {
            let Search { bracket, passes, .. } = searches[i];
            if bracket.lo >= bracket.hi {
                searches[i].found = Some(from_key(bracket.lo));
                continue;
            }
            if passes >= MAX_PASSES {
                // Not reached: every pass shrinks the bracket, and bisection halves it.
                searches[i].found = Some(from_key(bracket.hi));
                continue;
            }
            if bracket.at_most.saturating_sub(bracket.below) <= self.few {
                self.list(bracket);
                let width = from_key(bracket.hi) - from_key(bracket.lo);
                let density = bracket.at_most.saturating_sub(bracket.below) as f64 / width;
                for (j, search) in searches.iter_mut().enumerate() {
                    let inside = bracket.below < search.k && search.k <= bracket.at_most;
                    if search.found.is_none() && (inside || j == i) {
                        search.found = Some(self.select(search.k.saturating_sub(bracket.below + 1)));
                        search.density = (density.is_finite() && density > 0.0).then_some(density);
                    }
                }
                continue;
            }
            // A search's first threshold: the seed, or a step from the nearest rank found by
            // listing, at the density of differences seen there (near the middle, the
            // differences' distribution function is close to a straight line).
            let mut first = seed.take();
            let k = searches[i].k;
            let nearest = searches
                .iter()
                .filter_map(|s| Some((s.k, s.found?, s.density?)))
                .min_by_key(|(found_k, ..)| found_k.abs_diff(k));
            if let (None, 0, Some((found_k, value, density))) = (first, passes, nearest) {
                searches[i].probes[1] = Some((value, found_k as f64));
                first = Some(key(value + (k as f64 - found_k as f64) / density));
            }
            let t = first
                .filter(|t| (bracket.lo..=bracket.hi).contains(t))
                .unwrap_or_else(|| searches[i].threshold(self.few));
            let at = self.split(t);
            searches[i].passes += 1;
            for search in &mut searches {
                search.learn(t, &at);
            }
        }
        searches.map(|s| s.found.unwrap_or(f64::NAN))
    }

    /// Counts the differences on either side of `t` and finds its neighbours.
    fn split(&self, t: i64) -> Split {
        let (x, y) = (self.x, self.y);
        let n = y.len();
        let cut = Cut::new(t);
        // `less` and `up_to` end the row's prefixes below and at-or-below `t`; for larger
        // x[i] both prefixes only grow.
        let (mut less, mut up_to) = (0, 0);
        let (mut below, mut at_most) = (0u128, 0u128);
        // Keys of the nearest differences on either side; the extremes stand for none (only
        // NaN has them).
        let (mut before, mut after) = (i64::MIN, i64::MAX);
        for &xi in x {
            while less < n && cut.below(y[less] - xi) {
                less += 1;
            }
            up_to = usize::max(up_to, less);
            while up_to < n && cut.at_most(y[up_to] - xi) {
                up_to += 1;
            }
            below += less as u128;
            at_most += up_to as u128;
            if less > 0 {
                before = before.max(key(y[less - 1] - xi));
            }
            if up_to < n {
                after = after.min(key(y[up_to] - xi));
            }
        }
        Split {
            below,
            at_most,
            before: (before != i64::MIN).then_some(before),
            after: (after != i64::MAX).then_some(after),
        }
    }

    /// Puts the differences in `bracket` into `scratch`, at most `m + n` of them.
    fn list(&mut self, bracket: Bracket) {
        let (x, y) = (self.x, self.y);
        let n = y.len();
        let room = x.len() + n;
        let wanted = usize::try_from(bracket.at_most.saturating_sub(bracket.below));
        self.scratch.clear();
        self.scratch.reserve(wanted.map_or(room, |w| w.min(room)));
        let (lo, hi) = (Cut::new(bracket.lo), Cut::new(bracket.hi));
        // For increasing x[i], both ends of the row's window only move right.
        let (mut start, mut end) = (0, 0);
        for &xi in x {
            while start < n && lo.below(y[start] - xi) {
                start += 1;
            }
            end = usize::max(end, start);
            while end < n && hi.at_most(y[end] - xi) {
                end += 1;
            }
            let window = y.get(start..end).unwrap_or_default();
            let left = room.saturating_sub(self.scratch.len());
            self.scratch.extend(window.iter().take(left).map(|yj| yj - xi));
        }
    }

    /// The `rank`-th smallest (0-based) listed difference; NaN when none is listed.
    fn select(&mut self, rank: u128) -> f64 {
        let Some(last) = self.scratch.len().checked_sub(1) else {
            return f64::NAN;
        };
        let rank = usize::try_from(rank).map_or(last, |r| r.min(last));
        *self.scratch.select_nth_unstable_by(rank, f64::total_cmp).1
    }
}

/// Hodges-Lehmann estimate of `y - x` with its `confidence` interval. Both sorted; NaN for
/// an empty sample.
fn hodges_lehmann(x: &[f64], y: &[f64], confidence: f64) -> (f64, f64, f64) {
    let mut differences = Differences::new(x, y);
    let pairs = differences.pairs();
    // The median, or the two middle differences of an even count.
    let (k_below, k_above) = (pairs.div_ceil(2), pairs / 2 + 1);
    // Normal approximation of the U distribution for the interval's ranks.
    let z = normal_quantile(0.5 + confidence / 2.0);
    let (mf, nf) = (x.len() as f64, y.len() as f64);
    let spread = z * (mf * nf * (mf + nf + 1.0) / 12.0).sqrt();
    let c = ((mf * nf / 2.0 - spread).floor() as i64).max(1) as u128;
    let interval = c <= pairs.div_ceil(2);
    let (k_low, k_high) = if interval {
        (c, pairs + 1 - c)
    } else {
        (k_below, k_above)
    };
    // The middle first: the interval's ends then start from it.
    let [below, above, low, high] = differences.kths([k_below, k_above, k_low, k_high]);
    let middle = (below + above) / 2.0;
    let estimate = if middle.is_finite() {
        middle
    } else {
        // Near the ends of the range the sum overflows.
        below / 2.0 + above / 2.0
    };
    if interval {
        (estimate, low, high)
    } else {
        (estimate, estimate, estimate)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn kth_difference(x: &[f64], y: &[f64], k: u64) -> f64 {
        Differences::new(x, y).kths([k.into()])[0]
    }

    fn kth_differences(x: &[f64], y: &[f64], k_low: u64, k_high: u64) -> (f64, f64) {
        let [low, high] = Differences::new(x, y).kths([k_low.into(), k_high.into()]);
        (low, high)
    }

    /// The slow, obvious version, for checking.
    fn naive_kth(x: &[f64], y: &[f64], k: usize) -> f64 {
        let mut all: Vec<f64> = x.iter().flat_map(|a| y.iter().map(move |b| b - a)).collect();
        all.sort_by(f64::total_cmp);
        all[k - 1]
    }

    fn sorted(mut v: Vec<f64>) -> Vec<f64> {
        v.sort_by(f64::total_cmp);
        v
    }

    #[test]
    fn kth_difference_matches_enumeration() {
        let x = sorted(vec![3.1, 0.5, 2.2, 2.2, 9.0, -1.5, 4.4]);
        let y = sorted(vec![1.0, 2.2, 7.5, 0.0, 3.3]);
        for k in 1..=(x.len() * y.len()) {
            assert_eq!(kth_difference(&x, &y, k as u64), naive_kth(&x, &y, k), "k = {k}");
        }
    }

    #[test]
    fn kth_difference_matches_enumeration_when_bisecting() {
        // Enough pairs (90,000) that the search bisects before selecting; ties included.
        let x = sorted((0..300).map(|i| ((i * 37) % 101) as f64 * 0.5).collect());
        let y = sorted((0..300).map(|i| ((i * 53) % 89) as f64 * 0.7 + 3.0).collect());
        let mut all: Vec<f64> = x.iter().flat_map(|a| y.iter().map(move |b| b - a)).collect();
        all.sort_by(f64::total_cmp);
        for k in [1, 2, 777, 44_999, 45_000, 45_001, 89_999, 90_000] {
            assert_eq!(kth_difference(&x, &y, k as u64), all[k - 1], "k = {k}");
        }
        for (a, b) in [(1, 2), (45_000, 45_001), (100, 80_000), (89_999, 90_000)] {
            assert_eq!(
                kth_differences(&x, &y, a as u64, b as u64),
                (all[a - 1], all[b - 1]),
                "{a}, {b}"
            );
        }
    }

    #[test]
    fn mann_whitney_matches_a_textbook_case() {
        // Ranks by hand: y gets 2.5, 7, 9, 10, 11 (ties share the average rank), so
        // U = 39.5 - 15 = 24.5; with the tie correction and continuity z = 9 / 5.4146.
        let x = sorted(vec![1.0, 2.0, 3.0, 4.0, 5.0, 5.0]);
        let y = sorted(vec![5.0, 6.0, 7.0, 8.0, 2.0]);
        let (u, z) = mann_whitney(&x, &y);
        assert_eq!(u, 24.5);
        assert!((z - 1.6622).abs() < 1e-3, "z = {z}");
    }

    #[test]
    fn normal_functions_agree() {
        assert!((normal_quantile(0.99) - 2.326_347_874).abs() < 1e-8);
        assert!((normal_quantile(0.5)).abs() < 1e-12);
        assert!((normal_cdf(1.96) - 0.975_002_1).abs() < 1e-6);
        for p in [0.001, 0.02, 0.3, 0.7, 0.98, 0.999] {
            assert!((normal_cdf(normal_quantile(p)) - p).abs() < 1e-10, "p = {p}");
        }
    }

    #[test]
    fn a_shifted_sample_is_detected_with_its_size() {
        let baseline: Vec<f64> = (0..200).map(|i| 100.0 + (i % 20) as f64).collect();
        let canary: Vec<f64> = baseline.iter().map(|v| v + 15.0).collect();
        let result = compare(&baseline, &canary, 0.98);
        assert!(result.p_greater < 1e-6, "{result:?}");
        assert_eq!(result.shift, 15.0);
        assert!(result.shift_low <= 15.0 && result.shift_high >= 15.0);
        assert!(result.shift_high - result.shift_low <= 4.0, "{result:?}");

        let same = compare(&baseline, &baseline, 0.98);
        assert!(same.p_two_sided() > 0.5 && same.shift == 0.0, "{same:?}");
    }

    #[test]
    fn all_values_tied_is_no_evidence() {
        let result = compare(&[1.0; 10], &[1.0; 12], 0.98);
        assert_eq!(
            (result.z, result.shift, result.shift_low, result.shift_high),
            (0.0, 0.0, 0.0, 0.0)
        );
    }

    /// The estimate and interval from the enumerated differences, by the same ranks.
    fn naive_hodges_lehmann(x: &[f64], y: &[f64], confidence: f64) -> [f64; 3] {
        let mut all: Vec<f64> = x.iter().flat_map(|a| y.iter().map(move |b| b - a)).collect();
        all.sort_by(f64::total_cmp);
        let pairs = all.len();
        let estimate = if pairs % 2 == 1 {
            all[pairs / 2]
        } else {
            let (below, above) = (all[pairs / 2 - 1], all[pairs / 2]);
            let middle = (below + above) / 2.0;
            if middle.is_finite() {
                middle
            } else {
                below / 2.0 + above / 2.0
            }
        };
        let z = normal_quantile(0.5 + confidence / 2.0);
        let (mf, nf) = (x.len() as f64, y.len() as f64);
        let spread = z * (mf * nf * (mf + nf + 1.0) / 12.0).sqrt();
        let c = ((mf * nf / 2.0 - spread).floor() as i64).max(1) as usize;
        if c > pairs.div_ceil(2) {
            return [estimate; 3];
        }
        [estimate, all[c - 1], all[pairs - c]]
    }

    /// Checks every rank, the adjacent pairs and the judge's numbers against enumeration,
    /// bit for bit (so `-0.0` and `0.0` count as different).
    fn check_against_enumeration(shape: &str, x: &[f64], y: &[f64]) {
        let (x, y) = (sorted(x.to_vec()), sorted(y.to_vec()));
        let mut all: Vec<f64> = x.iter().flat_map(|a| y.iter().map(move |b| b - a)).collect();
        all.sort_by(f64::total_cmp);
        // Also with passes all the way down, never listing candidates.
        for few in [None, Some(0)] {
            let mut differences = Differences::new(&x, &y);
            differences.few = few.unwrap_or(differences.few);
            for k in 1..=all.len() {
                let [got] = differences.kths([k as u128]);
                let want = all[k - 1];
                assert_eq!(got.to_bits(), want.to_bits(), "{shape}, k = {k}: {got} vs {want}");
            }
            for k in 1..all.len() {
                let [low, high] = differences.kths([k as u128, k as u128 + 1]);
                assert_eq!(
                    (low.to_bits(), high.to_bits()),
                    (all[k - 1].to_bits(), all[k].to_bits()),
                    "{shape}, pair {k}"
                );
            }
        }
        let mut differences = Differences::new(&x, &y);
        if !all.is_empty() {
            let [low, high] = differences.kths([1, all.len() as u128]);
            assert_eq!((low, high), (all[0], all[all.len() - 1]), "{shape}");
            for confidence in [0.5, 0.9, 0.98] {
                let c = compare(&x, &y, confidence);
                let naive = naive_hodges_lehmann(&x, &y, confidence);
                assert_eq!(
                    [c.shift, c.shift_low, c.shift_high].map(f64::to_bits),
                    naive.map(f64::to_bits),
                    "{shape}, confidence {confidence}: {c:?} vs {naive:?}"
                );
            }
        }
    }

    #[test]
    fn awkward_data_matches_enumeration() {
        let whole = |n: usize, step: usize, modulus: usize, offset: f64| -> Vec<f64> {
            (0..n).map(|i| ((i * step) % modulus) as f64 + offset).collect()
        };
        let mostly_zero = |n: usize, seed: usize| -> Vec<f64> {
            (0..n)
                .map(|i| {
                    if (i * 7 + seed).is_multiple_of(10) {
                        0.001 * (i % 13) as f64
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        let cases: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
            ("all equal", vec![0.0; 60], vec![0.0; 50]),
            ("all equal, not zero", vec![7.25; 41], vec![7.25; 60]),
            ("two constants", vec![3.0; 40], vec![5.0; 45]),
            (
                "whole milliseconds",
                whole(60, 37, 9, 20.0),
                whole(55, 53, 11, 21.0),
            ),
            ("90% zeros", mostly_zero(60, 1), mostly_zero(50, 4)),
            (
                "signed zeros",
                [0.0, -0.0, 0.0, 1.0, -1.0].repeat(10),
                [-0.0, 0.0, -0.0, 2.0].repeat(12),
            ),
            (
                "huge values",
                [1e308, -1e308, f64::MAX, 0.0, 1e308].repeat(8),
                [-f64::MAX, 1e308, -1e308, 5.0, 1e308, 1e308].repeat(7),
            ),
            ("one each", vec![2.0], vec![-3.5]),
            ("one baseline", vec![1.0], whole(30, 7, 5, 0.0)),
            // Shapes where interpolating on values goes astray, so the search bisects.
            (
                "outliers",
                (0..60)
                    .map(|i| if i % 7 == 0 { 1e300 } else { i as f64 })
                    .collect(),
                (0..50)
                    .map(|i| if i % 9 == 0 { -1e300 } else { i as f64 + 0.5 })
                    .collect(),
            ),
            (
                "heavy tail",
                (0..60).map(|i| ((i % 23) as f64 - 11.0).exp()).collect(),
                (0..50).map(|i| ((i % 19) as f64 - 9.5).exp() * 1.1).collect(),
            ),
            (
                "two clusters",
                (0..60)
                    .map(|i| {
                        if i % 2 == 0 {
                            i as f64 * 1e-9
                        } else {
                            1e6 + i as f64
                        }
                    })
                    .collect(),
                (0..50)
                    .map(|i| {
                        if i % 2 == 0 {
                            i as f64 * 1e-9
                        } else {
                            1e6 - i as f64
                        }
                    })
                    .collect(),
            ),
        ];
        for (shape, x, y) in cases {
            check_against_enumeration(shape, &x, &y);
        }
    }

    /// Values with many ties, signed zeros, subnormals and huge magnitudes.
    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            4 => (-4i8..=4).prop_map(f64::from),
            1 => Just(-0.0),
            1 => prop::sample::select(vec![
                f64::MAX,
                -f64::MAX,
                1e308,
                -1e308,
                f64::MIN_POSITIVE,
                -5e-324,
                5e-324,
            ]),
            2 => -1e3..1e3f64,
        ]
    }

    proptest! {
        #[test]
        fn small_samples_match_enumeration(
            x in prop::collection::vec(value(), 1..14),
            y in prop::collection::vec(value(), 1..14),
        ) {
            check_against_enumeration("generated", &x, &y);
        }
    }

    #[test]
    fn large_tied_samples_are_quick_and_exact() {
        let result = compare(&[0.0; 10_000], &[0.0; 10_000], 0.98);
        assert_eq!(
            [result.z, result.shift, result.shift_low, result.shift_high].map(f64::to_bits),
            [0.0f64; 4].map(f64::to_bits)
        );
        // Whole milliseconds: a one-millisecond shift is found as exactly 1.
        let baseline: Vec<f64> = (0..10_000).map(|i| (20 + (i * 37) % 41) as f64).collect();
        let canary: Vec<f64> = baseline.iter().map(|v| v + 1.0).collect();
        let result = compare(&baseline, &canary, 0.98);
        assert_eq!(result.shift, 1.0, "{result:?}");
        assert!(result.shift_low <= 1.0 && result.shift_high >= 1.0, "{result:?}");
    }

    #[test]
    fn degenerate_samples_do_not_panic() {
        let empty = compare(&[], &[1.0, 2.0], 0.98);
        assert!(empty.shift.is_nan() && empty.z == 0.0, "{empty:?}");
        assert!(compare(&[1.0], &[], 0.98).shift.is_nan());
        assert!(compare(&[], &[], 0.98).shift.is_nan());
        let one = compare(&[1.0], &[3.0], 0.98);
        assert_eq!((one.shift, one.shift_low, one.shift_high), (2.0, 2.0, 2.0));
        // Differences that overflow to an infinity are ordered like any other.
        let huge = compare(&[-f64::MAX; 3], &[f64::MAX; 3], 0.98);
        assert_eq!(huge.shift, f64::INFINITY, "{huge:?}");
        // Not allowed (a `Series` is finite), but neither a panic nor a hang.
        for bad in [f64::NAN, -f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let samples = [1.0, bad, 3.0, bad, 0.0];
            let _ = compare(&samples, &[2.0, 2.0, bad], 0.98);
            let _ = compare(&[bad; 4], &samples, 0.98);
            let _ = compare(&[bad], &[bad], 0.98);
        }
    }
}
