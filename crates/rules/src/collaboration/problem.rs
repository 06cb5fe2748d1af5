//! What can go wrong when loading a collaboration file: the [`CollaborationError`] with its
//! origin and line, and the validation [`Problem`] it names.

use std::path::PathBuf;

/// Largest value the engine sums per item and column.
const MAX_ITEM_VALUE: u64 = cleanroom_psi::Capabilities::ECDH.max_item_value;

use super::{MAX_MEMBER_ROWS_PER_SESSION, MAX_THRESHOLD, MIN_THRESHOLD};

/// Why a collaboration file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CollaborationError {
    /// The file could not be read.
    #[error("cannot read collaboration file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not TOML, or not shaped like a collaboration file (wrong type, unknown or
    /// missing key).
    #[error("{origin}:{line}: {message}")]
    Toml {
        /// Where the text came from (a path, or a label).
        origin: String,
        /// 1-based line of the mistake (1 when the parser gave no position).
        line: usize,
        /// The parser's description.
        message: String,
    },
    /// A value is well-formed TOML but breaks a rule of the collaboration file.
    #[error("{origin}:{line}: {key}: {problem}")]
    Invalid {
        /// Where the text came from (a path, or a label).
        origin: String,
        /// 1-based line of the offending value.
        line: usize,
        /// Dotted path of the offending key, e.g. `table.rule.min_threshold`.
        key: String,
        /// What is wrong with it.
        problem: Problem,
    },
}

impl CollaborationError {
    /// The 1-based line of the mistake, when the error is about the file's content.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Read { .. } => None,
            Self::Toml { line, .. } | Self::Invalid { line, .. } => Some(*line),
        }
    }

    /// The problem, when the error is a validation error.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Self::Invalid { problem, .. } => Some(problem),
            _ => None,
        }
    }
}

/// A validation mistake in a collaboration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// A name, id or list that must not be empty is empty.
    #[error("must not be empty")]
    Empty,
    /// Two members share a name.
    #[error("duplicate member name {0:?}")]
    DuplicateMember(String),
    /// Two tables share a name.
    #[error("duplicate table name {0:?}")]
    DuplicateTable(String),
    /// A column is listed twice in the same list.
    #[error("column {0:?} is listed twice")]
    DuplicateColumn(String),
    /// An ability name that is not `query` or `receive_results`.
    #[error("unknown ability {0:?}: expected \"query\" or \"receive_results\"")]
    UnknownAbility(String),
    /// An ability listed twice.
    #[error("ability {0:?} is listed twice")]
    DuplicateAbility(String),
    /// `token_sha256` is not 64 hex digits.
    #[error("not a hex SHA-256 digest (64 hex digits)")]
    BadTokenHash,
    /// Two members share a token hash (in any hex case): the shared token would always
    /// authenticate as the first of them.
    #[error("the same token hash as member {0:?}: each member needs its own token")]
    DuplicateTokenHash(String),
    /// A table's owner is not a member.
    #[error("owner {0:?} is not a member of the collaboration")]
    UnknownOwner(String),
    /// A column named by the identifier or the rule is not one of the table's `columns`.
    #[error("column {column:?} is not one of the columns of table {table:?}")]
    UnknownColumn {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// An unknown identifier normalization.
    #[error("unknown normalization {0:?}: expected one of email, phone, trim, none")]
    UnknownNormalization(String),
    /// A table without `[table.rule]`.
    #[error(
        "table {0:?} has no [table.rule]; a table without an analysis rule can never be queried"
    )]
    MissingRule(String),
    /// A rule type other than `aggregation` or `list`.
    #[error("unknown rule type {0:?}: expected \"aggregation\" or \"list\"")]
    UnknownRuleType(String),
    /// A key the rule type requires is missing.
    #[error("missing key {key:?}, required by a rule of type {rule_type:?}")]
    MissingRuleKey {
        /// The missing key.
        key: &'static str,
        /// The rule type.
        rule_type: &'static str,
    },
    /// A key that belongs to another rule type.
    #[error("key not allowed in a rule of type {rule_type:?}")]
    KeyNotInRule {
        /// The rule type.
        rule_type: &'static str,
    },
    /// `min_threshold` outside `2..=100000`.
    #[error("threshold {0} is out of range {MIN_THRESHOLD}..={MAX_THRESHOLD}")]
    ThresholdOutOfRange(i64),
    /// An aggregate function name that is not one of the five.
    #[error(
        "unknown aggregate function {0:?}: expected COUNT, COUNT_DISTINCT, SUM, SUM_DISTINCT or AVG"
    )]
    UnknownAggregate(String),
    /// A function listed twice for the same column.
    #[error("aggregate function {0:?} is listed twice")]
    DuplicateAggregate(String),
    /// An epsilon that is not a positive multiple of 10^-6 of at most 1000.
    #[error("epsilon {0} must be positive, at most 1000, with at most 6 decimals")]
    BadEpsilon(String),
    /// `sum_ranges` other than `"proven"` or `"trusted"`.
    #[error("sum_ranges must be \"proven\" (the default) or \"trusted\", not {0:?}")]
    BadSumRanges(String),
    /// `result_key` is not the 64 hex digits of a valid ristretto255 point.
    #[error(
        "result_key must be the 64 hex digits of a ristretto255 public key, as `cleanroom key \
         new` prints it"
    )]
    BadResultKey,
    /// `relay_key` is not the 64 hex digits of a valid ristretto255 point.
    #[error(
        "relay_key must be the 64 hex digits of a ristretto255 public key, as `cleanroom key \
         new` prints it"
    )]
    BadRelayKey,
    /// `client_cert_sha256` is not 64 hex digits.
    #[error("client_cert_sha256 must be the 64 hex digits of the SHA-256 of a DER certificate")]
    BadCertificateHash,
    /// Two members pin the same client certificate (in any hex case): it would always
    /// authenticate as the first of them.
    #[error("the same client certificate as member {0:?}: each member needs its own")]
    DuplicateCertificate(String),
    /// A member's `max_rows_per_session` outside 1..=10^9.
    #[error(
        "max_rows_per_session must be an integer from 1 to {MAX_MEMBER_ROWS_PER_SESSION}, got {0}"
    )]
    BadMemberRows(i64),
    /// `max_groups_per_identifier` outside 1..=64.
    #[error(
        "max_groups_per_identifier must be an integer from 1 to {max}, got {0}",
        max = cleanroom_psi::Capabilities::ECDH.max_contributions
    )]
    BadMaxGroups(i64),
    /// `epsilon_per_query` above `epsilon_budget`.
    #[error("epsilon_per_query {per_query} exceeds epsilon_budget {budget}")]
    EpsilonAboveBudget {
        /// epsilon_per_query
        per_query: String,
        /// epsilon_budget
        budget: String,
    },
    /// A query limit that is not a positive integer.
    #[error("a query limit must be a positive integer, got {0}")]
    BadQueryLimit(i64),
    /// `sum_bounds` without `[collaboration.privacy]`: the bounds would do nothing.
    #[error("sum_bounds clamp values for differential privacy only: add [collaboration.privacy]")]
    SumBoundsWithoutPrivacy,
    /// A summed column without bounds while the collaboration has a privacy section.
    #[error(
        "column {0:?} allows SUM or AVG: with [collaboration.privacy] it needs \
         sum_bounds = {{ {0} = [low, high] }} in its rule"
    )]
    MissingSumBounds(String),
    /// `sum_bounds` for a column that allows neither `SUM` nor `AVG`.
    #[error("column {0:?} allows neither SUM nor AVG: it has no sum to bound")]
    SumBoundsNotSummed(String),
    /// A bound that is not `[low, high]` with `0 ≤ low ≤ high ≤ 2^32 − 1`.
    #[error("sum bounds must be [low, high] with 0 <= low <= high <= {MAX_ITEM_VALUE}")]
    BadSumBounds,
    /// A bound whose noise at `epsilon_per_query` would not fit the encrypted sums.
    #[error(
        "the noise for sums bounded by {high} at epsilon_per_query {epsilon} is too large for \
         the encrypted sums: lower the bound or raise epsilon_per_query"
    )]
    SumBoundTooLarge {
        /// the upper bound
        high: u64,
        /// epsilon_per_query
        epsilon: String,
    },
    /// A `decimal_columns` entry for a column that allows neither `SUM` nor `AVG`.
    #[error("column {0:?} allows neither SUM nor AVG: a scale would do nothing")]
    ScaleNotSummed(String),
    /// A scale outside 1..=18 (values are summed as 64-bit integers of the smallest unit).
    #[error("a decimal scale must be between 1 and 18, got {0}")]
    BadScale(i64),
    /// A table source option that cannot be understood (`delimiter = "ab"`, `format = "xls"`).
    #[error("{0}")]
    BadSourceOption(String),
    /// `payer` names no member of the collaboration.
    #[error("payer {0:?} is not a member of the collaboration")]
    UnknownPayer(String),
    /// A `currency` that is not three uppercase ASCII letters (an ISO 4217 code).
    #[error(
        "currency must be three uppercase letters (an ISO 4217 code such as \"EUR\"), got {0:?}"
    )]
    BadCurrency(String),
    /// A unit price that is negative, infinite or not a number.
    #[error("a price must be a finite number >= 0, got {0}")]
    BadPrice(String),
    /// `[collaboration.pricing]` without any unit price.
    #[error(
        "[collaboration.pricing] declares no price: give per_million_rows, per_gib or per_cpu_hour"
    )]
    NoPrice,
    /// A column that is both a join column and a dimension column (it would expose identifiers).
    #[error("column {0:?} is both a join column and a dimension column")]
    JoinDimensionOverlap(String),
}
