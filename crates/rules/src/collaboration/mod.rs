//! The collaboration file: members, abilities, tables, identifiers and analysis rules.
//!
//! The file is TOML and identical on every member's side. [`Collaboration::from_toml_str`] parses
//! it and validates everything before anything else can use it; every mistake is reported with
//! the key and the line it was found on. A loaded [`Collaboration`] is therefore consistent by
//! construction: owners are members, rule columns are table columns, thresholds are in range,
//! names are unique and every table has an analysis rule.
//!
//! Loading runs in two stages: [`raw`] deserializes the text with serde into `Raw*` shapes
//! that keep every value's position in the file, then [`validate`] turns them into the typed
//! values of this module, naming the key and line of any mistake as a [`CollaborationError`]
//! ([`problem`]). This module holds the typed values and their accessors.

mod problem;
mod raw;
mod validate;

pub use problem::{CollaborationError, Problem};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use cleanroom_data::SourceOptions;
use cleanroom_psi::Normalization;
use cleanroom_psi::sealed::SealingKey;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use crate::aggregate::AggregateFunction;
use crate::privacy::{Privacy, QueryLimits};

/// Smallest `min_threshold` an aggregation rule may declare.
pub const MIN_THRESHOLD: u64 = 2;
/// Largest `min_threshold` an aggregation rule may declare.
pub const MAX_THRESHOLD: u64 = 100_000;

/// What a member may do in a collaboration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ability {
    /// May run queries (and plays the PSI receiver of its own queries, with its table).
    Query,
    /// May receive query results: its own queries' (by default), or those of queries that
    /// name it as a receiver.
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

/// A member of the collaboration: a name, its abilities and the hash of its bearer token.
#[derive(Clone)]
pub struct Member {
    name: String,
    abilities: BTreeSet<Ability>,
    token_sha256: [u8; 32],
    client_cert_sha256: Option<[u8; 32]>,
    max_rows_per_session: u64,
    result_key: Option<SealingKey>,
    relay_key: Option<SealingKey>,
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

    /// The public key results are sealed to when this member receives the result of a query
    /// it did not run (`result_key`); `None`: it can receive only its own queries' results.
    pub fn result_key(&self) -> Option<&SealingKey> {
        self.result_key.as_ref()
    }

    /// The public key that other providers' messages are sealed to when this member serves a
    /// table in a join across three or more members (`relay_key`), so that the querier who
    /// relays them can neither read nor replace them; `None`: it cannot take part in such a
    /// join as a provider.
    pub fn relay_key(&self) -> Option<&SealingKey> {
        self.relay_key.as_ref()
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

/// Bytes in a GiB, the unit of [`Pricing::per_gib`].
pub const GIB: u64 = 1 << 30;

/// The unit prices a collaboration declares (`[collaboration.pricing]`): a currency and at
/// least one price, each finite and `>= 0`. Prices are per unit of the work a session records:
/// rows read on both sides, bytes on the wire in both directions, and the server's compute
/// time.
#[derive(Debug, Clone, PartialEq)]
pub struct Pricing {
    currency: String,
    per_million_rows: Option<f64>,
    per_gib: Option<f64>,
    per_cpu_hour: Option<f64>,
}

impl Pricing {
    /// The currency of every price: three uppercase ASCII letters (an ISO 4217 code).
    pub fn currency(&self) -> &str {
        &self.currency
    }

    /// The price per million rows read, both sides together (`per_million_rows`).
    pub fn per_million_rows(&self) -> Option<f64> {
        self.per_million_rows
    }

    /// The price per GiB (2^30 bytes) on the wire, both directions together (`per_gib`).
    pub fn per_gib(&self) -> Option<f64> {
        self.per_gib
    }

    /// The price per hour of the server's session compute time (`per_cpu_hour`).
    pub fn per_cpu_hour(&self) -> Option<f64> {
        self.per_cpu_hour
    }

    /// The price of `rows` read, `bytes` on the wire and `cpu_seconds` of compute: each
    /// declared price times its quantity in its unit, summed (an undeclared price adds
    /// nothing). Finite and `>= 0` for any arguments.
    pub fn price(&self, rows: u64, bytes: u64, cpu_seconds: f64) -> f64 {
        // Quantities far beyond 2^53 lose precision as f64; prices are estimates at that scale.
        #[allow(clippy::cast_precision_loss)]
        let (rows, bytes) = (rows as f64, bytes as f64);
        let part = |price: Option<f64>, quantity: f64| price.map_or(0.0, |p| p * quantity);
        part(self.per_million_rows, rows / 1e6)
            + part(self.per_gib, bytes / GIB as f64)
            + part(self.per_cpu_hour, cpu_seconds.max(0.0) / 3600.0)
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
    sha256: [u8; 32],
    payer: Option<String>,
    pricing: Option<Pricing>,
}

impl Collaboration {
    /// SHA-256 of the file's text as both sides must hold it: a leading byte-order mark removed
    /// and every CRLF read as LF, nothing else changed. Two members whose files have the same
    /// digest planned from the same terms; the session start carries it (PROTOCOL.md 3.2).
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    /// The digest [`Collaboration::sha256`] gives a collaboration file's `text`.
    pub fn digest_of(text: &str) -> [u8; 32] {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut hasher = Sha256::new();
        let mut lines = text.split("\r\n");
        if let Some(first) = lines.next() {
            hasher.update(first.as_bytes());
        }
        for line in lines {
            hasher.update(b"\n");
            hasher.update(line.as_bytes());
        }
        hasher.finalize().into()
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

    /// The member who pays for every query (`[collaboration] payer`); always a member of the
    /// collaboration. `None`: each query's querier pays for it ([`payer_of`](Self::payer_of)).
    pub fn payer(&self) -> Option<&str> {
        self.payer.as_deref()
    }

    /// Who pays for a query of `querier`: the collaboration's [`payer`](Self::payer), else the
    /// querier itself.
    pub fn payer_of<'a>(&'a self, querier: &'a str) -> &'a str {
        self.payer.as_deref().unwrap_or(querier)
    }

    /// The unit prices (`[collaboration.pricing]`); `None`: the collaboration declares none.
    pub fn pricing(&self) -> Option<&Pricing> {
        self.pricing.as_ref()
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
