//! The collaboration file: members, abilities, tables, identifiers and analysis rules.
//!
//! The file is TOML and identical on every member's side. [`Collaboration::from_toml_str`] parses
//! it and validates everything before anything else can use it; every mistake is reported with
//! the key and the line it was found on. A loaded [`Collaboration`] is therefore consistent by
//! construction: owners are members, rule columns are table columns, thresholds are in range,
//! names are unique and every table has an analysis rule.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use cleanroom_data::{NullValues, SourceOptions};
use cleanroom_psi::Normalization;
use cleanroom_psi::elgamal::MAX_ITEM_VALUE;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use toml::Spanned;

use crate::privacy::{
    DEFAULT_MAX_GROUPS_PER_IDENTIFIER, Epsilon, Privacy, QueryLimits, SumRanges, sum_bound_fits,
};

/// Smallest `min_threshold` an aggregation rule may declare.
pub const MIN_THRESHOLD: u64 = 2;
/// Largest `min_threshold` an aggregation rule may declare.
pub const MAX_THRESHOLD: u64 = 100_000;

/// What a member may do in a collaboration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ability {
    /// May run queries (and is then the PSI receiver of its own queries).
    Query,
    /// May receive query results.
    ReceiveResults,
}

impl Ability {
    /// The name used in the collaboration file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Query => "query",
            Self::ReceiveResults => "receive_results",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "query" => Some(Self::Query),
            "receive_results" => Some(Self::ReceiveResults),
            _ => None,
        }
    }
}

impl fmt::Display for Ability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An aggregate function an aggregation rule can allow on a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AggregateFunction {
    /// `COUNT(c)`: rows where `c` is not NULL.
    Count,
    /// `COUNT(DISTINCT c)`.
    CountDistinct,
    /// `SUM(c)`.
    Sum,
    /// `SUM(DISTINCT c)`.
    SumDistinct,
    /// `AVG(c)`.
    Avg,
}

impl AggregateFunction {
    /// The name used in the collaboration file (`COUNT_DISTINCT`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Count => "COUNT",
            Self::CountDistinct => "COUNT_DISTINCT",
            Self::Sum => "SUM",
            Self::SumDistinct => "SUM_DISTINCT",
            Self::Avg => "AVG",
        }
    }

    /// How the function is written in SQL, with `column` as its argument.
    pub fn sql(self, column: &str) -> String {
        match self {
            Self::Count => format!("COUNT({column})"),
            Self::CountDistinct => format!("COUNT(DISTINCT {column})"),
            Self::Sum => format!("SUM({column})"),
            Self::SumDistinct => format!("SUM(DISTINCT {column})"),
            Self::Avg => format!("AVG({column})"),
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "COUNT" => Some(Self::Count),
            "COUNT_DISTINCT" => Some(Self::CountDistinct),
            "SUM" => Some(Self::Sum),
            "SUM_DISTINCT" => Some(Self::SumDistinct),
            "AVG" => Some(Self::Avg),
            _ => None,
        }
    }
}

impl fmt::Display for AggregateFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A member of the collaboration: a name, its abilities and the hash of its bearer token.
#[derive(Clone)]
pub struct Member {
    name: String,
    abilities: BTreeSet<Ability>,
    token_sha256: [u8; 32],
    client_cert_sha256: Option<[u8; 32]>,
    max_rows_per_session: u64,
}

/// The rows a member may bring to one session unless its entry says otherwise
/// (`max_rows_per_session`): a provider's session costs about 150 bytes of memory per querier
/// row (143 MiB for a million), so four concurrent sessions at this quota take about 3 GiB.
pub const DEFAULT_MEMBER_ROWS_PER_SESSION: u64 = 5_000_000;

/// The largest `max_rows_per_session` a member entry may give.
pub const MAX_MEMBER_ROWS_PER_SESSION: u64 = 1_000_000_000;

impl Member {
    /// The member's unique name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The member's abilities, each listed once, in a fixed order.
    pub fn abilities(&self) -> impl Iterator<Item = Ability> + '_ {
        self.abilities.iter().copied()
    }

    /// Whether the member has `ability`.
    pub fn can(&self, ability: Ability) -> bool {
        self.abilities.contains(&ability)
    }

    /// The most rows the member may bring to one session (its entry's `max_rows_per_session`,
    /// else [`DEFAULT_MEMBER_ROWS_PER_SESSION`]); a provider refuses a larger table before any
    /// protocol message, and its matcher accepts no larger set.
    pub fn max_rows_per_session(&self) -> u64 {
        self.max_rows_per_session
    }

    /// The SHA-256 of the DER client certificate the member must present over TLS, when its
    /// entry pins one (`client_cert_sha256`): a server then refuses the member's token without
    /// that certificate. `None`: the token alone authenticates.
    pub fn client_cert_sha256(&self) -> Option<&[u8; 32]> {
        self.client_cert_sha256.as_ref()
    }

    /// Whether SHA-256(`token`) equals the member's `token_sha256`. The comparison of the two
    /// digests takes the same time wherever they differ.
    pub fn token_matches(&self, token: &str) -> bool {
        let digest = Sha256::digest(token.as_bytes());
        digest.as_slice().ct_eq(&self.token_sha256[..]).into()
    }
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("name", &self.name)
            .field("abilities", &self.abilities)
            .field("max_rows_per_session", &self.max_rows_per_session)
            .finish_non_exhaustive()
    }
}

/// The identifier column of a table and how its values are normalized before matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identifier {
    column: String,
    normalization: Normalization,
}

impl Identifier {
    /// The column holding the identifier; always one of the table's columns.
    pub fn column(&self) -> &str {
        &self.column
    }

    /// How identifiers are canonicalized before hashing.
    pub fn normalization(&self) -> Normalization {
        self.normalization
    }
}

/// An aggregation analysis rule: only aggregates over the join may leave the clean room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregationRule {
    join_columns: Vec<String>,
    dimension_columns: Vec<String>,
    aggregate_columns: BTreeMap<String, BTreeSet<AggregateFunction>>,
    min_threshold: u64,
    sum_bounds: BTreeMap<String, (u64, u64)>,
    scales: BTreeMap<String, u8>,
}

impl AggregationRule {
    /// Digits after the decimal point of a summed column's values (`decimal_columns =
    /// { amount = { scale = 2 } }`); 0, an integer column, when not declared. Sums of a column
    /// with scale 2 are exact sums of cents, printed with two decimals.
    pub fn scale(&self, column: &str) -> u8 {
        self.scales.get(column).copied().unwrap_or(0)
    }

    /// Columns the table may be joined on.
    pub fn join_columns(&self) -> &[String] {
        &self.join_columns
    }

    /// Columns that may be output, grouped and filtered.
    pub fn dimension_columns(&self) -> &[String] {
        &self.dimension_columns
    }

    /// Columns that may be aggregated, with the functions allowed on each.
    pub fn aggregate_columns(&self) -> &BTreeMap<String, BTreeSet<AggregateFunction>> {
        &self.aggregate_columns
    }

    /// Smallest number of matched distinct identifiers an output row needs to be released;
    /// always in `MIN_THRESHOLD..=MAX_THRESHOLD`.
    pub fn min_threshold(&self) -> u64 {
        self.min_threshold
    }

    /// Whether `column` is a join column.
    pub fn is_join_column(&self, column: &str) -> bool {
        self.join_columns.iter().any(|c| c == column)
    }

    /// Whether `column` is a dimension column.
    pub fn is_dimension(&self, column: &str) -> bool {
        self.dimension_columns.iter().any(|c| c == column)
    }

    /// Per `SUM`/`AVG` column, the interval `[low, high]` each identifier's total is clamped
    /// into under differential privacy (`sum_bounds`; set for every such column exactly when
    /// the collaboration has a privacy section).
    pub fn sum_bounds(&self) -> &BTreeMap<String, (u64, u64)> {
        &self.sum_bounds
    }

    /// Whether `function` is allowed on `column`.
    pub fn allows(&self, function: AggregateFunction, column: &str) -> bool {
        self.aggregate_columns
            .get(column)
            .is_some_and(|functions| functions.contains(&function))
    }
}

/// A list analysis rule: matched rows of `list_columns` may be listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRule {
    join_columns: Vec<String>,
    list_columns: Vec<String>,
}

impl ListRule {
    /// Columns the table may be joined on.
    pub fn join_columns(&self) -> &[String] {
        &self.join_columns
    }

    /// Columns that may be listed.
    pub fn list_columns(&self) -> &[String] {
        &self.list_columns
    }

    /// Whether `column` is a join column.
    pub fn is_join_column(&self, column: &str) -> bool {
        self.join_columns.iter().any(|c| c == column)
    }

    /// Whether `column` may be output or filtered on in a list query.
    pub fn is_list_column(&self, column: &str) -> bool {
        self.list_columns.iter().any(|c| c == column)
    }
}

/// The analysis rule a table's owner attached to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnalysisRule {
    /// Aggregates only, with a minimum threshold.
    Aggregation(AggregationRule),
    /// Lists of matched rows.
    List(ListRule),
}

impl AnalysisRule {
    /// `"aggregation"` or `"list"`, as in the collaboration file.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Aggregation(_) => "aggregation",
            Self::List(_) => "list",
        }
    }
}

/// A table a member brought to the collaboration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    name: String,
    owner: String,
    columns: Vec<String>,
    identifier: Identifier,
    rule: AnalysisRule,
    source: SourceOptions,
}

impl Table {
    /// How the owner's file of this table is read by default: its format (`format = "parquet"`;
    /// otherwise from the extension), CSV dialect (`delimiter`, `quote`, `has_header`) and the
    /// collaboration's NULL spellings (`[collaboration] null_values`). Command-line options
    /// override the format and dialect.
    pub fn source_options(&self) -> &SourceOptions {
        &self.source
    }

    /// The table's unique name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name of the member who owns the table; always a member of the collaboration.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The table's columns, each listed once.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Whether `column` is one of the table's columns (exact, case-sensitive).
    pub fn has_column(&self, column: &str) -> bool {
        self.columns.iter().any(|c| c == column)
    }

    /// The identifier column and its normalization.
    pub fn identifier(&self) -> &Identifier {
        &self.identifier
    }

    /// The owner's analysis rule for this table.
    pub fn rule(&self) -> &AnalysisRule {
        &self.rule
    }
}

/// A validated collaboration: what the partners agreed on before any data moves.
#[derive(Debug, Clone)]
pub struct Collaboration {
    id: String,
    name: String,
    members: Vec<Member>,
    tables: Vec<Table>,
    privacy: Option<Privacy>,
    limits: QueryLimits,
}

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
        max = cleanroom_psi::noise::MAX_CONTRIBUTIONS
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
    /// A column that is both a join column and a dimension column (it would expose identifiers).
    #[error("column {0:?} is both a join column and a dimension column")]
    JoinDimensionOverlap(String),
}

// ----- raw shapes, as they appear in the file -----

/// A list of strings, each with its position in the file.
type SpannedList = Spanned<Vec<Spanned<String>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    collaboration: RawHeader,
    #[serde(default)]
    member: Vec<RawMember>,
    #[serde(default)]
    table: Vec<RawTable>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    id: Spanned<String>,
    name: Option<String>,
    privacy: Option<Spanned<RawPrivacy>>,
    limits: Option<RawLimits>,
    null_values: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrivacy {
    epsilon_budget: Spanned<f64>,
    epsilon_per_query: Spanned<f64>,
    sum_ranges: Option<Spanned<String>>,
    max_groups_per_identifier: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    queries_per_member: Option<Spanned<i64>>,
    queries_per_member_per_day: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    name: Spanned<String>,
    #[serde(default)]
    abilities: Vec<Spanned<String>>,
    token_sha256: Spanned<String>,
    client_cert_sha256: Option<Spanned<String>>,
    max_rows_per_session: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    name: Spanned<String>,
    owner: Spanned<String>,
    columns: SpannedList,
    identifier: RawIdentifier,
    rule: Option<RawRule>,
    format: Option<Spanned<String>>,
    delimiter: Option<Spanned<String>>,
    quote: Option<Spanned<String>>,
    has_header: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentifier {
    column: Spanned<String>,
    normalize: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    join_columns: Option<SpannedList>,
    dimension_columns: Option<SpannedList>,
    aggregate_columns: Option<Spanned<BTreeMap<String, SpannedList>>>,
    min_threshold: Option<Spanned<i64>>,
    list_columns: Option<SpannedList>,
    sum_bounds: Option<RawSumBounds>,
    decimal_columns: Option<Spanned<BTreeMap<String, Spanned<RawDecimal>>>>,
}

/// `decimal_columns = { column = { scale = 2 } }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDecimal {
    scale: i64,
}

/// `sum_bounds = { column = [low, high], ... }`, with positions.
type RawSumBounds = Spanned<BTreeMap<String, Spanned<Vec<i64>>>>;

/// Turns byte offsets into keyed, lined errors.
struct Locator<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Locator<'_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        1 + self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    fn invalid<T>(&self, key: &str, span: &Spanned<T>, problem: Problem) -> CollaborationError {
        CollaborationError::Invalid {
            origin: self.origin.to_owned(),
            line: self.line(span.span().start),
            key: key.to_owned(),
            problem,
        }
    }
}

impl Collaboration {
    /// Reads and validates the collaboration file at `path`; errors name the path, key and line.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, CollaborationError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| CollaborationError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and validates a collaboration file's text; `origin` (a path or a label) prefixes
    /// every error, followed by the line and key of the mistake.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, CollaborationError> {
        let at = Locator { text, origin };
        let raw: RawFile = toml::from_str(text).map_err(|e| CollaborationError::Toml {
            origin: origin.to_owned(),
            line: e.span().map_or(1, |s| at.line(s.start)),
            message: e.message().trim().to_owned(),
        })?;

        let id = raw.collaboration.id;
        if id.get_ref().trim().is_empty() {
            return Err(at.invalid("collaboration.id", &id, Problem::Empty));
        }
        let id = id.into_inner();
        let name = raw.collaboration.name.unwrap_or_else(|| id.clone());
        let privacy = match &raw.collaboration.privacy {
            Some(p) => Some(validate_privacy(&at, p.get_ref())?),
            None => None,
        };
        let limits = match &raw.collaboration.limits {
            Some(l) => validate_limits(&at, l)?,
            None => QueryLimits::default(),
        };

        let mut members: Vec<Member> = Vec::with_capacity(raw.member.len());
        for m in raw.member {
            members.push(validate_member(&at, m, &members)?);
        }
        let nulls = match raw.collaboration.null_values {
            Some(list) => NullValues::new(list.into_inner()),
            None => NullValues::default(),
        };
        let mut tables: Vec<Table> = Vec::with_capacity(raw.table.len());
        for t in raw.table {
            let table = validate_table(&at, t, &members, &tables, privacy.as_ref(), &nulls)?;
            tables.push(table);
        }
        Ok(Self {
            id,
            name,
            members,
            tables,
            privacy,
            limits,
        })
    }

    /// The collaboration id; non-empty, and the domain separator for hashing.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The human-readable name (the id when the file gives none).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The differential privacy settings (`[collaboration.privacy]`); `None`: exact results.
    pub fn privacy(&self) -> Option<&Privacy> {
        self.privacy.as_ref()
    }

    /// The per-member query limits (`[collaboration.limits]`).
    pub fn query_limits(&self) -> &QueryLimits {
        &self.limits
    }

    /// Every member, in file order, names unique.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Every table, in file order, names unique.
    pub fn tables(&self) -> &[Table] {
        &self.tables
    }

    /// Every client certificate digest a member entry pins (`client_cert_sha256`), in member
    /// order; no two are equal.
    pub fn client_cert_pins(&self) -> Vec<[u8; 32]> {
        self.members
            .iter()
            .filter_map(|m| m.client_cert_sha256)
            .collect()
    }

    /// The member called exactly `name`, if any.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// The table called exactly `name`, if any.
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// The tables owned by the member `owner`.
    pub fn tables_of<'a>(&'a self, owner: &'a str) -> impl Iterator<Item = &'a Table> + 'a {
        self.tables.iter().filter(move |t| t.owner == owner)
    }

    /// The member whose SHA-256 token hash matches `token`, if any (every member is compared,
    /// each in constant time).
    pub fn authenticate(&self, token: &str) -> Option<&Member> {
        let mut found = None;
        for member in &self.members {
            if member.token_matches(token) && found.is_none() {
                found = Some(member);
            }
        }
        found
    }
}

fn validate_privacy(at: &Locator<'_>, raw: &RawPrivacy) -> Result<Privacy, CollaborationError> {
    let epsilon = |key: &str, value: &Spanned<f64>| {
        Epsilon::parse(*value.get_ref())
            .ok_or_else(|| at.invalid(key, value, Problem::BadEpsilon(value.get_ref().to_string())))
    };
    let epsilon_budget = epsilon("collaboration.privacy.epsilon_budget", &raw.epsilon_budget)?;
    let epsilon_per_query = epsilon(
        "collaboration.privacy.epsilon_per_query",
        &raw.epsilon_per_query,
    )?;
    if epsilon_per_query > epsilon_budget {
        return Err(at.invalid(
            "collaboration.privacy.epsilon_per_query",
            &raw.epsilon_per_query,
            Problem::EpsilonAboveBudget {
                per_query: epsilon_per_query.to_string(),
                budget: epsilon_budget.to_string(),
            },
        ));
    }
    let sum_ranges = match &raw.sum_ranges {
        None => SumRanges::Proven,
        Some(v) => match v.get_ref().as_str() {
            "proven" => SumRanges::Proven,
            "trusted" => SumRanges::Trusted,
            other => {
                return Err(at.invalid(
                    "collaboration.privacy.sum_ranges",
                    v,
                    Problem::BadSumRanges(other.to_owned()),
                ));
            }
        },
    };
    let max_groups_per_identifier = match &raw.max_groups_per_identifier {
        None => DEFAULT_MAX_GROUPS_PER_IDENTIFIER,
        Some(v) => u32::try_from(*v.get_ref())
            .ok()
            .filter(|k| (1..=cleanroom_psi::noise::MAX_CONTRIBUTIONS).contains(k))
            .ok_or_else(|| {
                at.invalid(
                    "collaboration.privacy.max_groups_per_identifier",
                    v,
                    Problem::BadMaxGroups(*v.get_ref()),
                )
            })?,
    };
    Ok(Privacy {
        epsilon_budget,
        epsilon_per_query,
        sum_ranges,
        max_groups_per_identifier,
    })
}

fn validate_limits(at: &Locator<'_>, raw: &RawLimits) -> Result<QueryLimits, CollaborationError> {
    let limit = |key: &str, value: &Option<Spanned<i64>>| match value {
        None => Ok(None),
        Some(v) => u64::try_from(*v.get_ref())
            .ok()
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or_else(|| at.invalid(key, v, Problem::BadQueryLimit(*v.get_ref()))),
    };
    Ok(QueryLimits {
        per_member: limit(
            "collaboration.limits.queries_per_member",
            &raw.queries_per_member,
        )?,
        per_member_per_day: limit(
            "collaboration.limits.queries_per_member_per_day",
            &raw.queries_per_member_per_day,
        )?,
    })
}

/// Checks `sum_bounds` against the rule's summed columns and the privacy section.
fn validate_sum_bounds(
    at: &Locator<'_>,
    raw: Option<&RawSumBounds>,
    aggregate_columns: &BTreeMap<String, BTreeSet<AggregateFunction>>,
    privacy: Option<&Privacy>,
    kind: &Spanned<String>,
) -> Result<BTreeMap<String, (u64, u64)>, CollaborationError> {
    let summed = |functions: &BTreeSet<AggregateFunction>| {
        functions.contains(&AggregateFunction::Sum) || functions.contains(&AggregateFunction::Avg)
    };
    let Some(privacy) = privacy else {
        return match raw {
            Some(raw) => Err(at.invalid(
                "table.rule.sum_bounds",
                raw,
                Problem::SumBoundsWithoutPrivacy,
            )),
            None => Ok(BTreeMap::new()),
        };
    };
    let mut bounds = BTreeMap::new();
    if let Some(raw) = raw {
        for (column, value) in raw.get_ref() {
            let key = format!("table.rule.sum_bounds.{column}");
            if !aggregate_columns.get(column).is_some_and(summed) {
                return Err(at.invalid(&key, value, Problem::SumBoundsNotSummed(column.clone())));
            }
            let (low, high) = match value.get_ref().as_slice() {
                &[low, high] => (u64::try_from(low).ok(), u64::try_from(high).ok()),
                _ => (None, None),
            };
            let (Some(low), Some(high)) = (low, high) else {
                return Err(at.invalid(&key, value, Problem::BadSumBounds));
            };
            if low > high || high > MAX_ITEM_VALUE {
                return Err(at.invalid(&key, value, Problem::BadSumBounds));
            }
            if !sum_bound_fits(high, privacy) {
                return Err(at.invalid(
                    &key,
                    value,
                    Problem::SumBoundTooLarge {
                        high,
                        epsilon: privacy.epsilon_per_query().to_string(),
                    },
                ));
            }
            bounds.insert(column.clone(), (low, high));
        }
    }
    if let Some((column, _)) = aggregate_columns
        .iter()
        .find(|(c, f)| summed(f) && !bounds.contains_key(*c))
    {
        let problem = Problem::MissingSumBounds(column.clone());
        return Err(match raw {
            Some(raw) => at.invalid("table.rule.sum_bounds", raw, problem),
            None => at.invalid("table.rule.sum_bounds", kind, problem),
        });
    }
    Ok(bounds)
}

fn validate_member(
    at: &Locator<'_>,
    raw: RawMember,
    earlier: &[Member],
) -> Result<Member, CollaborationError> {
    let name = raw.name.get_ref();
    if name.trim().is_empty() {
        return Err(at.invalid("member.name", &raw.name, Problem::Empty));
    }
    if earlier.iter().any(|m| &m.name == name) {
        return Err(at.invalid(
            "member.name",
            &raw.name,
            Problem::DuplicateMember(name.clone()),
        ));
    }
    let mut abilities = BTreeSet::new();
    for a in &raw.abilities {
        let ability = Ability::parse(a.get_ref()).ok_or_else(|| {
            at.invalid(
                "member.abilities",
                a,
                Problem::UnknownAbility(a.get_ref().clone()),
            )
        })?;
        if !abilities.insert(ability) {
            return Err(at.invalid(
                "member.abilities",
                a,
                Problem::DuplicateAbility(a.get_ref().clone()),
            ));
        }
    }
    let mut token_sha256 = [0u8; 32];
    let hex_text = raw.token_sha256.get_ref().trim();
    if hex_text.len() != 64 || hex::decode_to_slice(hex_text, &mut token_sha256).is_err() {
        return Err(at.invalid(
            "member.token_sha256",
            &raw.token_sha256,
            Problem::BadTokenHash,
        ));
    }
    if let Some(other) = earlier.iter().find(|m| m.token_sha256 == token_sha256) {
        return Err(at.invalid(
            "member.token_sha256",
            &raw.token_sha256,
            Problem::DuplicateTokenHash(other.name.clone()),
        ));
    }
    let client_cert_sha256 = match &raw.client_cert_sha256 {
        None => None,
        Some(pin) => {
            let mut digest = [0u8; 32];
            let text = pin.get_ref().trim();
            if text.len() != 64 || hex::decode_to_slice(text, &mut digest).is_err() {
                return Err(at.invalid(
                    "member.client_cert_sha256",
                    pin,
                    Problem::BadCertificateHash,
                ));
            }
            if let Some(other) = earlier
                .iter()
                .find(|m| m.client_cert_sha256 == Some(digest))
            {
                return Err(at.invalid(
                    "member.client_cert_sha256",
                    pin,
                    Problem::DuplicateCertificate(other.name.clone()),
                ));
            }
            Some(digest)
        }
    };
    let max_rows_per_session = match &raw.max_rows_per_session {
        None => DEFAULT_MEMBER_ROWS_PER_SESSION,
        Some(rows) => u64::try_from(*rows.get_ref())
            .ok()
            .filter(|r| (1..=MAX_MEMBER_ROWS_PER_SESSION).contains(r))
            .ok_or_else(|| {
                at.invalid(
                    "member.max_rows_per_session",
                    rows,
                    Problem::BadMemberRows(*rows.get_ref()),
                )
            })?,
    };
    Ok(Member {
        name: raw.name.into_inner(),
        abilities,
        token_sha256,
        client_cert_sha256,
        max_rows_per_session,
    })
}

fn validate_table(
    at: &Locator<'_>,
    raw: RawTable,
    members: &[Member],
    earlier: &[Table],
    privacy: Option<&Privacy>,
    nulls: &NullValues,
) -> Result<Table, CollaborationError> {
    let mut source = SourceOptions {
        nulls: nulls.clone(),
        ..SourceOptions::default()
    };
    let options = [
        ("format", raw.format.as_ref()),
        ("delimiter", raw.delimiter.as_ref()),
        ("quote", raw.quote.as_ref()),
    ];
    for (key, value) in options {
        if let Some(value) = value {
            source.set(key, value.get_ref()).map_err(|e| {
                at.invalid(
                    &format!("table.{key}"),
                    value,
                    Problem::BadSourceOption(e.to_string()),
                )
            })?;
        }
    }
    if let Some(h) = &raw.has_header {
        source.csv.has_header = *h.get_ref();
    }
    let name = raw.name.get_ref().clone();
    if name.trim().is_empty() {
        return Err(at.invalid("table.name", &raw.name, Problem::Empty));
    }
    if earlier.iter().any(|t| t.name == name) {
        return Err(at.invalid("table.name", &raw.name, Problem::DuplicateTable(name)));
    }
    let owner = raw.owner.get_ref();
    if !members.iter().any(|m| &m.name == owner) {
        return Err(at.invalid(
            "table.owner",
            &raw.owner,
            Problem::UnknownOwner(owner.clone()),
        ));
    }
    if raw.columns.get_ref().is_empty() {
        return Err(at.invalid("table.columns", &raw.columns, Problem::Empty));
    }
    let mut columns: Vec<String> = Vec::with_capacity(raw.columns.get_ref().len());
    for c in raw.columns.get_ref() {
        if c.get_ref().trim().is_empty() {
            return Err(at.invalid("table.columns", c, Problem::Empty));
        }
        if columns.contains(c.get_ref()) {
            return Err(at.invalid(
                "table.columns",
                c,
                Problem::DuplicateColumn(c.get_ref().clone()),
            ));
        }
        columns.push(c.get_ref().clone());
    }
    let known = |key: &str, c: &Spanned<String>| -> Result<String, CollaborationError> {
        if columns.contains(c.get_ref()) {
            Ok(c.get_ref().clone())
        } else {
            Err(at.invalid(
                key,
                c,
                Problem::UnknownColumn {
                    table: name.clone(),
                    column: c.get_ref().clone(),
                },
            ))
        }
    };

    let identifier_column = known("table.identifier.column", &raw.identifier.column)?;
    let normalization: Normalization =
        raw.identifier.normalize.get_ref().parse().map_err(|_| {
            at.invalid(
                "table.identifier.normalize",
                &raw.identifier.normalize,
                Problem::UnknownNormalization(raw.identifier.normalize.get_ref().clone()),
            )
        })?;

    let Some(rule) = raw.rule else {
        return Err(at.invalid("table", &raw.name, Problem::MissingRule(name.clone())));
    };
    let column_list = |key: &str,
                       list: &SpannedList,
                       non_empty: bool|
     -> Result<Vec<String>, CollaborationError> {
        if non_empty && list.get_ref().is_empty() {
            return Err(at.invalid(key, list, Problem::Empty));
        }
        let mut out: Vec<String> = Vec::with_capacity(list.get_ref().len());
        for c in list.get_ref() {
            let column = known(key, c)?;
            if out.contains(&column) {
                return Err(at.invalid(key, c, Problem::DuplicateColumn(column)));
            }
            out.push(column);
        }
        Ok(out)
    };

    let rule = match rule.kind.get_ref().as_str() {
        "aggregation" => {
            const TYPE: &str = "aggregation";
            if let Some(list) = &rule.list_columns {
                return Err(at.invalid(
                    "table.rule.list_columns",
                    list,
                    Problem::KeyNotInRule { rule_type: TYPE },
                ));
            }
            let missing = |key: &'static str| {
                at.invalid(
                    &format!("table.rule.{key}"),
                    &rule.kind,
                    Problem::MissingRuleKey {
                        key,
                        rule_type: TYPE,
                    },
                )
            };
            let join = rule
                .join_columns
                .as_ref()
                .ok_or_else(|| missing("join_columns"))?;
            let join_columns = column_list("table.rule.join_columns", join, true)?;
            let dimension_columns = match &rule.dimension_columns {
                Some(list) => column_list("table.rule.dimension_columns", list, false)?,
                None => Vec::new(),
            };
            if let Some(list) = &rule.dimension_columns {
                for c in list.get_ref() {
                    if join_columns.contains(c.get_ref()) {
                        return Err(at.invalid(
                            "table.rule.dimension_columns",
                            c,
                            Problem::JoinDimensionOverlap(c.get_ref().clone()),
                        ));
                    }
                }
            }
            let aggregates = rule
                .aggregate_columns
                .as_ref()
                .ok_or_else(|| missing("aggregate_columns"))?;
            if aggregates.get_ref().is_empty() {
                return Err(at.invalid("table.rule.aggregate_columns", aggregates, Problem::Empty));
            }
            let mut aggregate_columns = BTreeMap::new();
            for (column, functions) in aggregates.get_ref() {
                let key = format!("table.rule.aggregate_columns.{column}");
                if !columns.contains(column) {
                    return Err(at.invalid(
                        &key,
                        functions,
                        Problem::UnknownColumn {
                            table: name.clone(),
                            column: column.clone(),
                        },
                    ));
                }
                if functions.get_ref().is_empty() {
                    return Err(at.invalid(&key, functions, Problem::Empty));
                }
                let mut set = BTreeSet::new();
                for f in functions.get_ref() {
                    let function = AggregateFunction::parse(f.get_ref()).ok_or_else(|| {
                        at.invalid(&key, f, Problem::UnknownAggregate(f.get_ref().clone()))
                    })?;
                    if !set.insert(function) {
                        return Err(at.invalid(
                            &key,
                            f,
                            Problem::DuplicateAggregate(f.get_ref().clone()),
                        ));
                    }
                }
                aggregate_columns.insert(column.clone(), set);
            }
            let threshold = rule
                .min_threshold
                .as_ref()
                .ok_or_else(|| missing("min_threshold"))?;
            let value = *threshold.get_ref();
            let min_threshold = u64::try_from(value)
                .ok()
                .filter(|t| (MIN_THRESHOLD..=MAX_THRESHOLD).contains(t))
                .ok_or_else(|| {
                    at.invalid(
                        "table.rule.min_threshold",
                        threshold,
                        Problem::ThresholdOutOfRange(value),
                    )
                })?;
            let sum_bounds = validate_sum_bounds(
                at,
                rule.sum_bounds.as_ref(),
                &aggregate_columns,
                privacy,
                &rule.kind,
            )?;
            let mut scales = BTreeMap::new();
            if let Some(decimals) = &rule.decimal_columns {
                for (column, decimal) in decimals.get_ref() {
                    let key = format!("table.rule.decimal_columns.{column}");
                    let summed = aggregate_columns.get(column).is_some_and(|f| {
                        f.contains(&AggregateFunction::Sum) || f.contains(&AggregateFunction::Avg)
                    });
                    if !summed {
                        return Err(at.invalid(
                            &key,
                            decimal,
                            Problem::ScaleNotSummed(column.clone()),
                        ));
                    }
                    let scale = decimal.get_ref().scale;
                    let scale = u8::try_from(scale)
                        .ok()
                        .filter(|s| (1..=18).contains(s))
                        .ok_or_else(|| at.invalid(&key, decimal, Problem::BadScale(scale)))?;
                    scales.insert(column.clone(), scale);
                }
            }
            AnalysisRule::Aggregation(AggregationRule {
                join_columns,
                dimension_columns,
                aggregate_columns,
                min_threshold,
                sum_bounds,
                scales,
            })
        }
        "list" => {
            const TYPE: &str = "list";
            let misplaced = [
                (
                    "dimension_columns",
                    rule.dimension_columns.as_ref().map(|s| s.span()),
                ),
                (
                    "aggregate_columns",
                    rule.aggregate_columns.as_ref().map(|s| s.span()),
                ),
                (
                    "min_threshold",
                    rule.min_threshold.as_ref().map(|s| s.span()),
                ),
                ("sum_bounds", rule.sum_bounds.as_ref().map(|s| s.span())),
                (
                    "decimal_columns",
                    rule.decimal_columns.as_ref().map(|s| s.span()),
                ),
            ];
            for (key, span) in misplaced {
                if let Some(span) = span {
                    return Err(CollaborationError::Invalid {
                        origin: at.origin.to_owned(),
                        line: at.line(span.start),
                        key: format!("table.rule.{key}"),
                        problem: Problem::KeyNotInRule { rule_type: TYPE },
                    });
                }
            }
            let missing = |key: &'static str| {
                at.invalid(
                    &format!("table.rule.{key}"),
                    &rule.kind,
                    Problem::MissingRuleKey {
                        key,
                        rule_type: TYPE,
                    },
                )
            };
            let join = rule
                .join_columns
                .as_ref()
                .ok_or_else(|| missing("join_columns"))?;
            let list = rule
                .list_columns
                .as_ref()
                .ok_or_else(|| missing("list_columns"))?;
            AnalysisRule::List(ListRule {
                join_columns: column_list("table.rule.join_columns", join, true)?,
                list_columns: column_list("table.rule.list_columns", list, true)?,
            })
        }
        other => {
            return Err(at.invalid(
                "table.rule.type",
                &rule.kind,
                Problem::UnknownRuleType(other.to_owned()),
            ));
        }
    };

    Ok(Table {
        owner: owner.clone(),
        name,
        columns,
        identifier: Identifier {
            column: identifier_column,
            normalization,
        },
        rule,
        source,
    })
}
