//! Traffic shares: [`Weight`] and [`TrafficSplit`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::ids::Pool;

/// A share of traffic in basis points: 0..=10_000, where 10_000 is 100%.
///
/// Basis points make 0.5% canary steps exact, where floating point percentages would not be.
///
/// ```
/// # use deploy_core::Weight;
/// let half_percent = Weight::from_basis_points(50)?;
/// assert_eq!(half_percent, Weight::from_percent(0.5)?);
/// assert_eq!(half_percent.to_string(), "0.50%");
/// assert!(Weight::from_percent(101.0).is_err());
/// # Ok::<(), deploy_core::ValidationError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Weight(u16);

impl Weight {
    /// 0%.
    pub const ZERO: Weight = Weight(0);
    /// 100%.
    pub const FULL: Weight = Weight(Self::MAX_BASIS_POINTS);
    /// 100% in basis points.
    pub const MAX_BASIS_POINTS: u16 = 10_000;

    /// A weight of `basis_points` (1 bp = 0.01%).
    ///
    /// # Errors
    /// [`ValidationError::WeightOutOfRange`] above 10_000.
    pub fn from_basis_points(basis_points: u32) -> Result<Self, ValidationError> {
        u16::try_from(basis_points)
            .ok()
            .filter(|bp| *bp <= Self::MAX_BASIS_POINTS)
            .map(Self)
            .ok_or(ValidationError::WeightOutOfRange {
                basis_points: i64::from(basis_points),
                percent: f64::from(basis_points) / 100.0,
            })
    }

    /// A weight of `percent`, rounded to the nearest basis point.
    ///
    /// # Errors
    /// [`ValidationError::NonFinitePercent`] for NaN or infinity,
    /// [`ValidationError::WeightOutOfRange`] outside 0..=100.
    pub fn from_percent(percent: f64) -> Result<Self, ValidationError> {
        if !percent.is_finite() {
            return Err(ValidationError::NonFinitePercent(percent));
        }
        let basis_points = (percent * 100.0).round();
        if !(0.0..=f64::from(Self::MAX_BASIS_POINTS)).contains(&basis_points) {
            return Err(ValidationError::WeightOutOfRange {
                // In range of i64 after the finiteness check for any sane input; `as`
                // saturates for the absurd ones, which is fine for a message.
                basis_points: basis_points as i64,
                percent,
            });
        }
        Ok(Self(basis_points as u16))
    }

    /// The weight in basis points.
    pub fn basis_points(self) -> u16 {
        self.0
    }

    /// The weight as a fraction in 0.0..=1.0.
    pub fn fraction(self) -> f64 {
        f64::from(self.0) / f64::from(Self::MAX_BASIS_POINTS)
    }

    /// What remains of 100% after this weight.
    #[must_use]
    pub fn complement(self) -> Self {
        Self(Self::MAX_BASIS_POINTS - self.0)
    }

    /// Whether the weight is 0%.
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}%", self.0 / 100, self.0 % 100)
    }
}

impl TryFrom<u32> for Weight {
    type Error = ValidationError;
    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Self::from_basis_points(value)
    }
}

impl From<Weight> for u32 {
    fn from(value: Weight) -> u32 {
        u32::from(value.0)
    }
}

/// How an app's traffic is spread over its pools: pool -> weight, summing to exactly 100%.
///
/// Pools with weight 0 are dropped at construction, so two splits that route the same
/// traffic compare equal; a pool that is absent gets no traffic. A split is always an
/// absolute target (never a delta), so applying it twice is harmless.
///
/// ```
/// # use deploy_core::{Pool, TrafficSplit, Weight};
/// let split = TrafficSplit::canary(Pool::stable(), Pool::canary(), Weight::from_percent(5.0)?)?;
/// assert_eq!(split.weight_of(&Pool::canary()), Weight::from_percent(5.0)?);
/// assert_eq!(split.weight_of(&Pool::stable()).basis_points(), 9_500);
/// assert_eq!(split.to_string(), "canary=5.00%, stable=95.00%");
///
/// // 60% + 39% is rejected with the actual total.
/// let short = TrafficSplit::new([
///     (Pool::blue(), Weight::from_percent(60.0)?),
///     (Pool::green(), Weight::from_percent(39.0)?),
/// ]);
/// assert_eq!(short.unwrap_err().to_string(), "traffic split sums to 99.00%, it must sum to exactly 100%");
/// # Ok::<(), deploy_core::ValidationError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<Pool, Weight>", into = "BTreeMap<Pool, Weight>")]
pub struct TrafficSplit(BTreeMap<Pool, Weight>);

impl TrafficSplit {
    /// A split from `(pool, weight)` pairs.
    ///
    /// # Errors
    /// [`ValidationError::DuplicatePool`] when a pool appears twice,
    /// [`ValidationError::SplitSum`] when the weights do not add up to 100%.
    pub fn new(weights: impl IntoIterator<Item = (Pool, Weight)>) -> Result<Self, ValidationError> {
        let mut map = BTreeMap::new();
        let mut total: u64 = 0;
        for (pool, weight) in weights {
            total += u64::from(weight.basis_points());
            if map.contains_key(&pool) {
                return Err(ValidationError::DuplicatePool {
                    pool: pool.to_string(),
                });
            }
            map.insert(pool, weight);
        }
        if total != u64::from(Weight::MAX_BASIS_POINTS) {
            return Err(ValidationError::SplitSum {
                total_basis_points: total,
            });
        }
        map.retain(|_, weight| !weight.is_zero());
        Ok(Self(map))
    }

    /// All traffic to one pool.
    pub fn all_to(pool: Pool) -> Self {
        Self(BTreeMap::from([(pool, Weight::FULL)]))
    }

    /// `canary_weight` to `canary`, the rest to `stable`.
    ///
    /// # Errors
    /// [`ValidationError::DuplicatePool`] when both pools are the same (and the weight is
    /// not 0% or 100%, where the split is one pool anyway).
    pub fn canary(stable: Pool, canary: Pool, canary_weight: Weight) -> Result<Self, ValidationError> {
        Self::new([(stable, canary_weight.complement()), (canary, canary_weight)])
    }

    /// The weight of `pool` (0% when absent).
    pub fn weight_of(&self, pool: &Pool) -> Weight {
        self.0.get(pool).copied().unwrap_or(Weight::ZERO)
    }

    /// Pools that receive traffic, with their weights, in pool order.
    pub fn iter(&self) -> impl Iterator<Item = (&Pool, Weight)> + '_ {
        self.0.iter().map(|(pool, weight)| (pool, *weight))
    }

    /// Pools that receive traffic.
    pub fn pools(&self) -> impl Iterator<Item = &Pool> + '_ {
        self.0.keys()
    }

    /// Total in basis points; always 10_000 for a constructed split. Exposed so that
    /// invariant checkers can verify backends that rebuild splits from their own state.
    pub fn total_basis_points(&self) -> u64 {
        self.0.values().map(|w| u64::from(w.basis_points())).sum()
    }
}

impl fmt::Display for TrafficSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (pool, weight)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{pool}={weight}")?;
        }
        Ok(())
    }
}

impl TryFrom<BTreeMap<Pool, Weight>> for TrafficSplit {
    type Error = ValidationError;
    fn try_from(value: BTreeMap<Pool, Weight>) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<TrafficSplit> for BTreeMap<Pool, Weight> {
    fn from(value: TrafficSplit) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pct(p: f64) -> Weight {
        Weight::from_percent(p).unwrap()
    }

    #[test]
    fn weight_bounds() {
        assert_eq!(Weight::from_basis_points(10_000), Ok(Weight::FULL));
        assert!(matches!(
            Weight::from_basis_points(10_001),
            Err(ValidationError::WeightOutOfRange {
                basis_points: 10_001,
                ..
            })
        ));
        assert!(matches!(
            Weight::from_percent(101.0),
            Err(ValidationError::WeightOutOfRange {
                basis_points: 10_100,
                ..
            })
        ));
        assert!(Weight::from_percent(-0.5).is_err());
        assert!(matches!(
            Weight::from_percent(f64::NAN),
            Err(ValidationError::NonFinitePercent(_))
        ));
        assert!(Weight::from_percent(f64::INFINITY).is_err());
        assert_eq!(pct(0.5).basis_points(), 50);
        assert_eq!(pct(33.333).basis_points(), 3_333);
        assert_eq!(pct(25.0).complement(), pct(75.0));
        assert!((pct(12.5).fraction() - 0.125).abs() < 1e-12);
        assert!(serde_json::from_str::<Weight>("10001").is_err());
    }

    #[test]
    fn split_must_sum_to_one_hundred() {
        let err = TrafficSplit::new([(Pool::blue(), pct(60.0)), (Pool::green(), pct(39.0))]);
        assert_eq!(
            err,
            Err(ValidationError::SplitSum {
                total_basis_points: 9_900
            })
        );
        let over = TrafficSplit::new([(Pool::blue(), pct(60.0)), (Pool::green(), pct(41.0))]);
        assert!(matches!(
            over,
            Err(ValidationError::SplitSum {
                total_basis_points: 10_100
            })
        ));
        assert!(matches!(
            TrafficSplit::new([]),
            Err(ValidationError::SplitSum {
                total_basis_points: 0
            })
        ));
    }

    #[test]
    fn split_rejects_duplicate_pools() {
        let dup = TrafficSplit::new([(Pool::blue(), pct(50.0)), (Pool::blue(), pct(50.0))]);
        assert_eq!(dup, Err(ValidationError::DuplicatePool { pool: "blue".into() }));
        assert!(TrafficSplit::canary(Pool::blue(), Pool::blue(), pct(10.0)).is_err());
    }

    #[test]
    fn zero_weights_are_normalised_away() {
        let with_zero = TrafficSplit::canary(Pool::stable(), Pool::canary(), Weight::ZERO).unwrap();
        assert_eq!(with_zero, TrafficSplit::all_to(Pool::stable()));
        assert_eq!(with_zero.pools().count(), 1);
        assert_eq!(with_zero.weight_of(&Pool::canary()), Weight::ZERO);
    }

    #[test]
    fn split_serde_round_trip_validates() {
        let split = TrafficSplit::canary(Pool::stable(), Pool::canary(), pct(0.5)).unwrap();
        let json = serde_json::to_string(&split).unwrap();
        assert_eq!(json, r#"{"canary":50,"stable":9950}"#);
        assert_eq!(serde_json::from_str::<TrafficSplit>(&json).unwrap(), split);
        assert!(serde_json::from_str::<TrafficSplit>(r#"{"canary":50,"stable":9900}"#).is_err());
    }
}
