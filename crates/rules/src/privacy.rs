//! Differential privacy and repeated-query limits: what the collaboration file sets, and what
//! it means for each plan.
//!
//! ```toml
//! [collaboration.privacy]
//! epsilon_budget = 10.0     # per querying member, over the whole collaboration
//! epsilon_per_query = 0.5   # what one aggregation query spends
//! max_groups_per_identifier = 4  # output rows one person may count in (default 4)
//!
//! [collaboration.limits]
//! queries_per_member = 500          # released queries per member, over the collaboration
//! queries_per_member_per_day = 50   # released queries per member per UTC day
//!
//! [table.rule]                      # every SUM/AVG column of an aggregation rule, with privacy
//! sum_bounds = { amount = [0, 100000] }
//! ```
//!
//! With a privacy section, every aggregation query's result is made `(ε, δ)`-differentially
//! private for `ε = epsilon_per_query` and `δ ≤ 2·e^−(46 − ε)` per released value (from bounding
//! the noise at 46 scales), with respect to adding or removing one identifier of the matcher's
//! (data provider's) table:
//!
//! - contributions are bounded: with `K = max_groups_per_identifier`, an identifier counts (and
//!   sums) in every output row it belongs to, up to `K` of them; one in more is kept in `K`
//!   chosen at random by the matcher, which holds either its own grouping or, at match time,
//!   every match of the querier's grouping, and never trusts the querier to bound itself
//!   ([`cleanroom_psi::Matcher::with_noise`]). An ungrouped query has one output row, so `K`
//!   is 1 there. The receiver clamps each identifier's total of a summed column in a group into
//!   its `sum_bounds` (a `COUNT(c)` column into `[0, 1]`) before encrypting it
//!   ([`PlanPrivacy::value_bounds`]);
//! - the query's `ε` is split evenly over the released statistics: the matcher's group sizes
//!   (which the receiver learns from the protocol itself), the intersection sizes, each value
//!   column's sums and, for a grouped query, the number of identifiers whose contributions
//!   were bounded. One identifier moves the group sizes by at most `K` (1 unless the matcher is
//!   grouped), the counts by `K`, a column's sums by `K·high` and the bounded count by 1 (its
//!   sensitivity `Δ`, in L1 over all rows); each gets discrete Laplace noise of scale
//!   `Δ·S/ε` with `S` the number of statistics ([`dp`]). For the group sizes, the matcher pads
//!   each group with a public bound plus that noise of random dummies
//!   ([`PlanPrivacy::dummies`]). So the query costs `ε` in total;
//! - the matcher adds the noise before release, decides the threshold on the noisy count, and
//!   decides every output row, matched or not ([`Plan::decide`](crate::Plan::decide));
//! - the service charges `ε` to the querying member's budget in the transaction that records
//!   the release, and refuses queries beyond `epsilon_budget`.
//!
//! Epsilons are kept as integer millionths ([`Epsilon`]) so that budgets add up exactly.
//! Without a privacy section results are exact; thresholds and limits still apply. List
//! queries release matched rows, as list rules allow, and are not noised (limits apply).

use std::fmt;

/// What the engine sums: value columns, their range, and the noise a sum can carry.
const MAX_VALUE_COLUMNS: usize = cleanroom_psi::Capabilities::ECDH.value_columns;
const MAX_ITEM_VALUE: u64 = cleanroom_psi::Capabilities::ECDH.max_item_value;
const MAX_SUM_NOISE: u64 = cleanroom_psi::Capabilities::ECDH.max_sum_noise;
use cleanroom_psi::{GroupCount, GroupDecision, NoiseBounds};
use serde::Serialize;

use crate::dp::{self, Scale};
use crate::plan::{AggregatePlan, AggregateValue, Plan, ValueKind};

/// Millionths per unit of epsilon.
pub const EPSILON_UNITS: u64 = 1_000_000;
/// Largest epsilon the collaboration file accepts (per query or as a budget).
pub const MAX_EPSILON: u64 = 1_000 * EPSILON_UNITS;
/// `max_groups_per_identifier` when the collaboration does not set it: a person seen in up to
/// four campaigns (or stores, or days) counts in all of them, for four times the noise of
/// counting once.
pub const DEFAULT_MAX_GROUPS_PER_IDENTIFIER: u32 = 4;

/// A privacy parameter `ε`, in integer millionths: exact to add and compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epsilon(u64);

impl Epsilon {
    /// `micros / 10^6`.
    pub const fn from_micros(micros: u64) -> Self {
        Self(micros)
    }

    /// The value in millionths.
    pub const fn micros(self) -> u64 {
        self.0
    }

    /// The value as a float, for display.
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / EPSILON_UNITS as f64
    }

    /// Parses a value from the collaboration file: positive, finite, at most 1000 and a
    /// multiple of 10^-6.
    pub(crate) fn parse(value: f64) -> Option<Self> {
        if !value.is_finite() || value <= 0.0 {
            return None;
        }
        let micros = value * EPSILON_UNITS as f64;
        let rounded = micros.round();
        if (micros - rounded).abs() > 1e-6 * rounded.max(1.0) || rounded < 1.0 {
            return None;
        }
        let micros = rounded as u64;
        (micros <= MAX_EPSILON).then_some(Self(micros))
    }
}

/// Prints the shortest decimal form: `0.5`, `10`, `0.000001`.
impl fmt::Display for Epsilon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / EPSILON_UNITS;
        let frac = self.0 % EPSILON_UNITS;
        if frac == 0 {
            return write!(f, "{whole}");
        }
        let digits = format!("{frac:06}");
        write!(f, "{whole}.{}", digits.trim_end_matches('0'))
    }
}

impl Serialize for Epsilon {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.as_f64())
    }
}

/// How the provider knows that the querier's encrypted values lie in their `sum_bounds`
/// (`[collaboration.privacy] sum_ranges`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SumRanges {
    /// Every encrypted value carries a zero-knowledge range proof that the provider verifies
    /// before matching (`cleanroom_psi::range_proof`): sums are differentially private against
    /// a malicious querier. The default.
    #[default]
    Proven,
    /// Nothing is proven: the querier is trusted to clamp its values, and sums are
    /// differentially private only against an honest querier (counts are not affected).
    Trusted,
}

impl SumRanges {
    /// The value of the `sum_ranges` key.
    pub fn as_str(self) -> &'static str {
        match self {
            SumRanges::Proven => "proven",
            SumRanges::Trusted => "trusted",
        }
    }
}

/// The collaboration's `[collaboration.privacy]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Privacy {
    pub(crate) epsilon_budget: Epsilon,
    pub(crate) epsilon_per_query: Epsilon,
    pub(crate) sum_ranges: SumRanges,
    pub(crate) max_groups_per_identifier: u32,
}

impl Privacy {
    /// How many output rows of a grouped query one identifier may count in
    /// (`max_groups_per_identifier`, [`DEFAULT_MAX_GROUPS_PER_IDENTIFIER`] unless set).
    pub fn max_groups_per_identifier(&self) -> u32 {
        self.max_groups_per_identifier
    }

    /// The total `ε` each querying member may spend in the collaboration.
    pub fn epsilon_budget(&self) -> Epsilon {
        self.epsilon_budget
    }

    /// The `ε` one aggregation query spends; at most the budget.
    pub fn epsilon_per_query(&self) -> Epsilon {
        self.epsilon_per_query
    }

    /// Whether the querier's encrypted values are proven to lie in their ranges.
    pub fn sum_ranges(&self) -> SumRanges {
        self.sum_ranges
    }
}

/// The collaboration's `[collaboration.limits]` section: how many queries each member may have
/// released. `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueryLimits {
    pub(crate) per_member: Option<u64>,
    pub(crate) per_member_per_day: Option<u64>,
}

impl QueryLimits {
    /// Released queries per member over the whole collaboration (`queries_per_member`).
    pub fn per_member(&self) -> Option<u64> {
        self.per_member
    }

    /// Released queries per member per UTC day (`queries_per_member_per_day`).
    pub fn per_member_per_day(&self) -> Option<u64> {
        self.per_member_per_day
    }
}

/// Statistics a query may release, at most: the matcher's group sizes, the intersection sizes,
/// every value column and the number of bounded identifiers.
const MAX_STATISTICS: u64 = 3 + MAX_VALUE_COLUMNS as u64;

/// The noise of a statistic that one identifier moves by at most `sensitivity`, when `shares`
/// statistics split `epsilon`: scale `sensitivity·shares/ε`.
fn scale(sensitivity: u64, shares: u64, epsilon: Epsilon) -> Option<Scale> {
    let t = u128::from(sensitivity) * u128::from(shares) * u128::from(EPSILON_UNITS);
    Scale::new(u64::try_from(t).ok()?, epsilon.micros())
}

/// Whether a sum bound of `high` keeps the noise of any query under `privacy` within what the
/// encrypted sums can carry ([`MAX_SUM_NOISE`]).
pub(crate) fn sum_bound_fits(high: u64, privacy: &Privacy) -> bool {
    high <= MAX_ITEM_VALUE
        && scale(
            high.max(1) * u64::from(privacy.max_groups_per_identifier),
            MAX_STATISTICS,
            privacy.epsilon_per_query,
        )
        .is_some_and(|s| s.tail_bound() <= MAX_SUM_NOISE)
}

/// The noise of one released statistic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Noise {
    /// How much one identifier can move the statistic.
    pub sensitivity: u64,
    /// The `ε` this statistic spends.
    pub epsilon: Epsilon,
    /// The discrete Laplace scale, `sensitivity / epsilon`.
    #[serde(serialize_with = "scale_as_f64")]
    pub scale: Scale,
    /// The largest noise ever added (the draw is clamped to `±bound`; see
    /// [`Scale::tail_bound`]).
    pub bound: u64,
}

fn scale_as_f64<S: serde::Serializer>(scale: &Scale, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(scale.as_f64())
}

impl Noise {
    fn new(sensitivity: u64, shares: u64, epsilon: Epsilon) -> Self {
        let scale = scale(sensitivity.max(1), shares, epsilon)
            .expect("sensitivity and epsilon validated when the collaboration was loaded");
        Self {
            sensitivity,
            epsilon: Epsilon::from_micros(epsilon.micros() / shares),
            scale,
            bound: scale.tail_bound(),
        }
    }

    /// The half-width `k` of the 95% interval: the noise is within `±k` with probability at
    /// least 0.95.
    pub fn interval95(&self) -> u64 {
        self.scale.interval(0.95)
    }
}

/// How a plan's results are made differentially private.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanPrivacy {
    /// What the query spends.
    pub epsilon: Epsilon,
    /// The noise of the matcher's group sizes (the receiver learns them from the protocol):
    /// each group is padded with `bound + noise` dummies.
    pub set_size: Noise,
    /// The noise of every intersection size.
    pub count: Noise,
    /// How many output rows one identifier counts in at most: the collaboration's
    /// `max_groups_per_identifier` for a grouped query, 1 for an ungrouped one.
    pub max_groups: u32,
    /// The noise of the number of identifiers whose contributions were bounded, for a grouped
    /// query (`None`: an ungrouped query bounds nothing).
    pub bounded: Option<Noise>,
    /// The noise of each value column's sums, in value-column order.
    pub sums: Vec<Noise>,
    /// Per value column, the interval each identifier's total is clamped into.
    pub value_bounds: Vec<(u64, u64)>,
    /// Whether the receiver proves its encrypted values lie in `value_bounds`.
    pub sum_ranges: SumRanges,
}

/// The name of the mechanism, as results report it.
pub const MECHANISM: &str = "discrete_laplace";

/// What the querier is told about the noise of one output column.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputNoise {
    /// The output column.
    pub column: String,
    /// `count`, `sum`, `avg` (noisy sum over noisy count) or `none` (a dimension).
    pub kind: &'static str,
    /// The discrete Laplace scale of the released value (of the sum, for an average).
    pub scale: f64,
    /// Half-width of the 95% interval around the released value (of the sum, for an
    /// average).
    pub interval95: u64,
    /// For an average: the scale of the noisy count it divides by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count_scale: Option<f64>,
    /// For an average: the 95% half-width of the noisy count it divides by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count_interval95: Option<u64>,
}

impl OutputNoise {
    /// An output column without noise (a dimension or a list column).
    fn exact(column: &str) -> Self {
        Self {
            column: column.to_owned(),
            kind: "none",
            scale: 0.0,
            interval95: 0,
            count_scale: None,
            count_interval95: None,
        }
    }
}

impl PlanPrivacy {
    pub(crate) fn for_plan(
        plan: &AggregatePlan,
        privacy: &Privacy,
        announced_sets: u64,
        sum_bounds: impl Fn(&str) -> (u64, u64),
    ) -> Self {
        let epsilon = privacy.epsilon_per_query;
        let columns = &plan.join().receiver().value_columns;
        let grouped = plan.grouped_by().is_some();
        let k = if grouped {
            privacy.max_groups_per_identifier
        } else {
            1
        };
        // One share per release: the count, each provider's announced set size (one in two
        // parties; every provider of a chain announces its own), each sum and the bounded count.
        let shares = 1 + announced_sets + columns.len() as u64 + u64::from(grouped);
        // Only the matcher's own groups make its announced sets overlap.
        let set_k = match plan.grouped_by() {
            Some(crate::Role::Matcher) => k,
            _ => 1,
        };
        let value_bounds: Vec<(u64, u64)> = columns
            .iter()
            .map(|c| match c.kind {
                ValueKind::NonNull => (0, 1),
                ValueKind::Integer => sum_bounds(&c.column),
            })
            .collect();
        Self {
            epsilon,
            set_size: Noise::new(u64::from(set_k), shares, epsilon),
            count: Noise::new(u64::from(k), shares, epsilon),
            max_groups: k,
            bounded: grouped.then(|| Noise::new(1, shares, epsilon)),
            sums: value_bounds
                .iter()
                .map(|&(_, high)| Noise::new(high * u64::from(k), shares, epsilon))
                .collect(),
            value_bounds,
            sum_ranges: privacy.sum_ranges,
        }
    }

    /// The ranges the receiver proves its encrypted values lie in (one per value column), or
    /// `None` when the collaboration trusts the querier (`sum_ranges = "trusted"`) or the plan
    /// has no value column.
    pub fn proven_ranges(&self) -> Option<Vec<(u64, u64)>> {
        (self.sum_ranges == SumRanges::Proven && !self.value_bounds.is_empty())
            .then(|| self.value_bounds.clone())
    }

    /// The bounds both PSI roles are given.
    pub fn noise_bounds(&self) -> NoiseBounds {
        NoiseBounds::new(self.sums.iter().map(|n| n.bound).collect())
            .and_then(|b| b.with_max_contributions(self.max_groups))
            .expect("bounds and max_groups_per_identifier validated with the collaboration")
    }

    /// The noise of each output column of `plan`, in `SELECT` order (`none` for every column
    /// of a list plan, which is never noised).
    pub fn outputs(&self, plan: &Plan) -> Vec<OutputNoise> {
        match plan {
            Plan::Aggregate(plan) => self.aggregate_outputs(plan),
            Plan::List(plan) => plan
                .outputs()
                .iter()
                .map(|o| OutputNoise::exact(&o.name))
                .collect(),
        }
    }

    /// The noise of each output column of an aggregation plan (or of a
    /// [`ChainPlan`](crate::ChainPlan)'s [`ends`](crate::ChainPlan::ends)), in `SELECT` order.
    pub fn aggregate_outputs(&self, plan: &AggregatePlan) -> Vec<OutputNoise> {
        plan.outputs()
            .iter()
            .map(|o| self.output(&o.name, &o.value))
            .collect()
    }

    fn output(&self, column: &str, value: &AggregateValue) -> OutputNoise {
        let AggregateValue::Aggregate(aggregate) = value else {
            return OutputNoise::exact(column);
        };
        let computation = aggregate.computation;
        let mut values = aggregate.value_indices.iter().map(|&i| self.sums[i]);
        let noise = values.next().unwrap_or(self.count);
        let count = values.next();
        let kind = computation.noise;
        OutputNoise {
            column: column.to_owned(),
            kind,
            scale: noise.scale.as_f64(),
            interval95: noise.interval95(),
            count_scale: count.map(|n| n.scale.as_f64()),
            count_interval95: count.map(|n| n.interval95()),
        }
    }

    /// How many dummies the matcher pads one group with: `bound + noise`, in `[0, 2·bound]`,
    /// drawn from the operating system-seeded CSPRNG. The announced size is then the true size
    /// plus discrete Laplace noise, shifted by the public `bound` of [`set_size`](Self::set_size).
    pub fn dummies(&self) -> u64 {
        self.dummies_with(&mut rand::rng())
    }

    /// [`dummies`](Self::dummies) drawn from `rng`.
    pub fn dummies_with<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        let noise = dp::sample_bounded(rng, self.set_size.scale, self.set_size.bound);
        self.set_size.bound.saturating_add_signed(noise)
    }

    /// The figure the receiver is told for `exact` bounded identifiers: `exact` plus discrete
    /// Laplace noise of [`bounded`](Self::bounded)'s scale (0 below 0), drawn from `rng`; 0 for
    /// an ungrouped query, which bounds nothing.
    pub fn disclose_bounded_with<R: rand::Rng + ?Sized>(&self, exact: u64, rng: &mut R) -> u64 {
        match &self.bounded {
            Some(noise) => {
                let z = dp::sample_bounded(rng, noise.scale, noise.bound);
                exact.saturating_add_signed(z)
            }
            None => 0,
        }
    }

    /// The matcher's decision on one pair of groups: draws the noise of the count and of every
    /// sum from `rng`, and releases the pair when the noisy count reaches `min_release`.
    pub fn decide_with<R: rand::Rng + ?Sized>(
        &self,
        count: &GroupCount,
        min_release: u64,
        rng: &mut R,
    ) -> GroupDecision {
        let count_noise = dp::sample_bounded(rng, self.count.scale, self.count.bound);
        let sum_noise = self
            .sums
            .iter()
            .map(|n| dp::sample_bounded(rng, n.scale, n.bound))
            .collect();
        let noisy = i128::from(count.intersection_size) + i128::from(count_noise);
        if noisy < i128::from(min_release) {
            GroupDecision::Suppress
        } else {
            GroupDecision::Release {
                count_noise,
                sum_noise,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epsilons_parse_exactly_and_print_shortest() {
        assert_eq!(Epsilon::parse(0.1), Some(Epsilon::from_micros(100_000)));
        assert_eq!(Epsilon::parse(10.0), Some(Epsilon::from_micros(10_000_000)));
        assert_eq!(Epsilon::parse(0.000001), Some(Epsilon::from_micros(1)));
        for bad in [
            0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            0.0000001,
            1000.5,
            0.1234567,
        ] {
            assert_eq!(Epsilon::parse(bad), None, "{bad}");
        }
        assert_eq!(Epsilon::from_micros(500_000).to_string(), "0.5");
        assert_eq!(Epsilon::from_micros(10_000_000).to_string(), "10");
        assert_eq!(Epsilon::from_micros(1).to_string(), "0.000001");
        assert_eq!(Epsilon::from_micros(1_250_000).to_string(), "1.25");
    }

    #[test]
    fn scales_split_epsilon_over_the_statistics() {
        let eps = Epsilon::from_micros(500_000);
        // A count with two value columns: 3 shares, scale 1·3/0.5 = 6.
        let n = Noise::new(1, 3, eps);
        assert_eq!(n.scale.as_f64(), 6.0);
        assert_eq!(n.epsilon, Epsilon::from_micros(166_666));
        assert_eq!(n.bound, 276);
        // A sum bounded by 100000 alone with the count: scale 100000·2/0.5.
        assert_eq!(Noise::new(100_000, 2, eps).scale.as_f64(), 400_000.0);
    }

    #[test]
    fn sum_bounds_must_fit_the_encrypted_range() {
        let privacy = |micros| Privacy {
            epsilon_budget: Epsilon::from_micros(MAX_EPSILON),
            epsilon_per_query: Epsilon::from_micros(micros),
            sum_ranges: SumRanges::Proven,
            max_groups_per_identifier: 1,
        };
        assert!(sum_bound_fits(100_000, &privacy(100_000)));
        assert!(sum_bound_fits(MAX_ITEM_VALUE, &privacy(10_000)));
        assert!(!sum_bound_fits(MAX_ITEM_VALUE, &privacy(1)));
        assert!(!sum_bound_fits(MAX_ITEM_VALUE + 1, &privacy(1_000_000)));
    }
}
