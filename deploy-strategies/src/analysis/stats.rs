//! Rank statistics for the baseline-vs-canary judge: the Mann-Whitney U test (tie-corrected,
//! normal approximation) and the Hodges-Lehmann shift estimate with its distribution-free
//! confidence interval.
//!
//! The Hodges-Lehmann estimate is the median of all `m * n` pairwise differences. It is
//! computed without enumerating them: the k-th smallest difference is found by bisection
//! on its value, counting the differences below a candidate with one merge-like pass over
//! the two sorted samples, so the cost is `O((m + n) log(m + n))` for the sorts plus
//! `O(64 (m + n))` for the search.

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

/// Compares `canary` with `baseline` at `confidence` (for the shift interval). Both
/// samples must be non-empty and finite; the caller checks.
pub(crate) fn compare(baseline: &[f64], canary: &[f64], confidence: f64) -> Comparison {
    let mut x = baseline.to_vec();
    let mut y = canary.to_vec();
    x.sort_by(f64::total_cmp);
    y.sort_by(f64::total_cmp);
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

/// How many differences `y[j] - x[i]` are `<= t`. Both sorted.
fn count_at_most(x: &[f64], y: &[f64], t: f64) -> u64 {
    // For increasing x[i], the y-prefix with y[j] - x[i] <= t only grows.
    let mut j = 0;
    let mut count = 0u64;
    for xi in x {
        while j < y.len() && y[j] - xi <= t {
            j += 1;
        }
        count += j as u64;
    }
    count
}

/// Calls `each` with every difference `y[j] - x[i]` in `(lo, hi]`. Both sorted.
fn differences_between(x: &[f64], y: &[f64], lo: f64, hi: f64, mut each: impl FnMut(f64)) {
    // For increasing x[i], both ends of the y-window only move right.
    let (mut start, mut end) = (0, 0);
    for xi in x {
        while start < y.len() && y[start] - xi <= lo {
            start += 1;
        }
        end = end.max(start);
        while end < y.len() && y[end] - xi <= hi {
            end += 1;
        }
        for yj in &y[start..end] {
            each(yj - xi);
        }
    }
}

/// The k-th smallest (1-based) of the `m * n` differences `y[j] - x[i]`.
fn kth_difference(x: &[f64], y: &[f64], k: u64) -> f64 {
    kth_differences(x, y, k, k).0
}

/// The `k_low`-th and `k_high`-th smallest (1-based, `k_low <= k_high`) of the `m * n`
/// differences `y[j] - x[i]`, without listing them: narrow a value interval holding both
/// until few differences remain in it, then select among those.
fn kth_differences(x: &[f64], y: &[f64], k_low: u64, k_high: u64) -> (f64, f64) {
    let (x_min, x_max) = (x[0], x[x.len() - 1]);
    let (y_min, y_max) = (y[0], y[y.len() - 1]);
    // Invariant: count(<= lo) < k_low and k_high <= count(<= hi).
    let mut lo = (y_min - x_max) - 1.0;
    let mut hi = y_max - x_min;
    let (mut below_lo, mut below_hi) = (0u64, (x.len() * y.len()) as u64);
    let few = (x.len() + y.len()) as u64;
    // Which bound the last round moved (true: the upper one), and how many times in a row.
    let mut last_moved_high = None;
    let mut same_side = 0;
    for _ in 0..200 {
        if below_hi - below_lo <= few {
            break;
        }
        // Interpolate on the counts towards the middle of the wanted ranks (fast on smooth
        // data); when the same bound moved twice running, interpolation is stalling on a
        // lopsided distribution, so bisect.
        let target = (k_low + k_high) as f64 / 2.0;
        let share = if same_side >= 2 {
            0.5
        } else {
            ((target - below_lo as f64) / (below_hi - below_lo) as f64).clamp(0.02, 0.98)
        };
        let mid = lo + (hi - lo) * share;
        if mid <= lo || mid >= hi {
            break;
        }
        let below_mid = count_at_most(x, y, mid);
        let moved_high = if below_mid >= k_high {
            (hi, below_hi) = (mid, below_mid);
            true
        } else if below_mid < k_low {
            (lo, below_lo) = (mid, below_mid);
            false
        } else {
            // `mid` falls between the two ranks: neither bound can move past it.
            break;
        };
        same_side = if last_moved_high == Some(moved_high) {
            same_side + 1
        } else {
            0
        };
        last_moved_high = Some(moved_high);
    }
    let mut candidates = Vec::with_capacity((below_hi - below_lo) as usize);
    differences_between(x, y, lo, hi, |d| candidates.push(d));
    if candidates.is_empty() {
        // Unreachable by the invariant; `hi` bounds the answer either way.
        return (hi, hi);
    }
    let last = candidates.len() - 1;
    let rank = |k: u64| usize::try_from(k - below_lo - 1).unwrap_or(usize::MAX).min(last);
    let (low_rank, high_rank) = (rank(k_low), rank(k_high));
    let low = *candidates.select_nth_unstable_by(low_rank, f64::total_cmp).1;
    // After the first selection everything above `low_rank` is >= it, so the second one
    // only searches that part.
    let high = if high_rank == low_rank {
        low
    } else {
        let upper = &mut candidates[low_rank + 1..];
        *upper
            .select_nth_unstable_by(high_rank - low_rank - 1, f64::total_cmp)
            .1
    };
    (low, high)
}

/// Hodges-Lehmann estimate of `y - x` with its `confidence` interval. Both sorted and
/// non-empty.
fn hodges_lehmann(x: &[f64], y: &[f64], confidence: f64) -> (f64, f64, f64) {
    let (m, n) = (x.len() as u64, y.len() as u64);
    let pairs = m * n;
    let estimate = if pairs % 2 == 1 {
        kth_difference(x, y, pairs.div_ceil(2))
    } else {
        let (below, above) = kth_differences(x, y, pairs / 2, pairs / 2 + 1);
        (below + above) / 2.0
    };
    // Normal approximation of the U distribution for the interval's ranks.
    let z = normal_quantile(0.5 + confidence / 2.0);
    let (mf, nf) = (m as f64, n as f64);
    let spread = z * (mf * nf * (mf + nf + 1.0) / 12.0).sqrt();
    let c = ((mf * nf / 2.0 - spread).floor() as i64).max(1) as u64;
    if c > pairs.div_ceil(2) {
        return (estimate, estimate, estimate);
    }
    let low = kth_difference(x, y, c);
    let high = kth_difference(x, y, pairs + 1 - c);
    (estimate, low, high)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
