//! What a session yields, as the callers see it: the matcher's exact counts and the decision
//! it takes on each pair of groups, the summary of a release, and the receiver's outcome.
//!
//! These are plain values; the roles that produce them are [`Matcher`](super::Matcher) and
//! [`Receiver`](super::Receiver). Invariants the roles keep for them:
//!
//! - a [`GroupCount`] is exact and never leaves the matcher: what the receiver sees of a pair
//!   is only what a [`GroupDecision`] released (with noise, if the session is noisy);
//! - in a [`ReleaseSummary`] (and the `MatcherDone` that carries it), `released + suppressed`
//!   is the number of pairs of announced groups, matched or not;
//! - a [`ReceiverOutcome`]'s groups are ordered by (matcher group, receiver group), and no
//!   exact intersection size exceeds the receiver's group.

/// The intersection size of one matcher group with one receiver group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupCount {
    /// The matcher's group key.
    pub matcher_group: String,
    /// The receiver's group index (the receiver knows its key).
    pub receiver_group: u32,
    /// Distinct identifiers present in both groups.
    pub intersection_size: u64,
}

/// What a release told the receiver: how many pairs of groups it released and how many it
/// did not (every other pair of announced groups, matched or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleaseSummary {
    /// Pairs released.
    pub released: u64,
    /// Pairs of announced groups not released.
    pub suppressed: u64,
    /// Under noise, the exact number of identifiers whose contributions were bounded
    /// ([`Matcher::with_noise`](super::Matcher::with_noise)): the matcher's identifiers kept
    /// in `k` of their groups, plus the matches kept in `k` of their pairs of groups. Never
    /// sent: the receiver gets the figure the release decided. 0 for exact releases.
    pub bounded: u64,
}

/// What the matcher does with one (matcher group, receiver group) pair at release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupDecision {
    /// Withhold the pair: the receiver only learns that one more pair was suppressed.
    Suppress,
    /// Release the pair, adding `count_noise` to its intersection size (a noisy count below 0
    /// is released as 0) and, per value column, `sum_noise` to its encrypted sums. Noise needs
    /// a matcher made [`with_noise`](super::Matcher::with_noise); an exact release has
    /// `count_noise == 0` and an empty `sum_noise` ([`GroupDecision::EXACT`]).
    Release {
        /// Added to the intersection size.
        count_noise: i64,
        /// Added to each value column's sum (one per value column, or empty for none).
        sum_noise: Vec<i64>,
    },
}

impl GroupDecision {
    /// Release the exact values.
    pub const EXACT: GroupDecision = GroupDecision::Release {
        count_noise: 0,
        sum_noise: Vec::new(),
    };

    pub(super) fn is_exact(&self) -> bool {
        matches!(self, GroupDecision::Release { count_noise: 0, sum_noise } if sum_noise.is_empty())
    }
}

/// The result of one (matcher group, receiver group) pair that the matcher released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupResult {
    /// The matcher's group key.
    pub matcher_group: String,
    /// The receiver's group key.
    pub receiver_group: String,
    /// Distinct identifiers in both groups.
    pub intersection_size: u64,
    /// Per value column, the sum over matched identifiers (empty for cardinality).
    pub sums: Vec<u64>,
}

/// What the receiver learns at the end of a session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReceiverOutcome {
    /// Released groups, ordered by (matcher group, receiver group).
    pub groups: Vec<GroupResult>,
    /// Number of groups the matcher withheld.
    pub suppressed_groups: u64,
    /// Under noise, the matcher's noisy count of identifiers whose contributions it bounded
    /// ([`Matcher::with_noise`](super::Matcher::with_noise)); 0 in exact sessions.
    pub bounded_identifiers: u64,
}
