//! The plan: what an allowed query asks of each side and of the PSI protocols.
//!
//! A [`Plan`] only comes out of [`Collaboration::plan`](crate::Collaboration::plan), so holding
//! one means the query was checked against the collaboration. It says, for each side, which
//! member and table take part, the local filter, the group columns and (for the receiver) the
//! value columns; which protocol runs; the release threshold; and how the protocol's outcome
//! becomes result rows (outputs, `ORDER BY`, `LIMIT`).
//!
//! A list query (both tables under list rules) plans [`Protocol::List`]: each side names the
//! [`list_columns`](SidePlan::list_columns) it contributes to the output rows, and the outputs
//! are [`OutputValue::ListColumn`]s.

use std::cmp::Ordering;

use cleanroom_data::{Format, SourceOptions};
use cleanroom_psi::{Domain, GroupCount, GroupDecision, NoiseBounds, Normalization};
use serde::{Serialize, Serializer};

use crate::aggregate::{AggregateFunction, Computation};
use crate::privacy::PlanPrivacy;
use crate::reason::{Reason, ReasonCode, Refusal};
use crate::value::{compare_text, is_null};

/// Which PSI protocol the plan runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Intersection sizes only (no value columns).
    Cardinality,
    /// Intersection sizes and sums of the receiver's value columns over the intersection.
    IntersectionSum,
    /// The matched rows themselves (labeled PSI): the receiver learns which of its rows match
    /// and the matcher's list columns of those rows, for a query over two list-rule tables.
    List,
}

impl Protocol {
    /// The name the plan's JSON and the server's log use (`cardinality`, `intersection_sum`,
    /// `list`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Cardinality => "cardinality",
            Protocol::IntersectionSum => "intersection_sum",
            Protocol::List => "list",
        }
    }
}

/// The part a member plays in the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The data provider (owner of the non-querier table); learns intersection sizes per group
    /// and decides what is released.
    Matcher,
    /// The querying member; holds the value columns and learns the released result.
    Receiver,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Matcher => "matcher",
            Role::Receiver => "receiver",
        })
    }
}

/// A comparison operator of a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CompareOp {
    /// `=`
    #[serde(rename = "=")]
    Eq,
    /// `<>` (or `!=`)
    #[serde(rename = "<>")]
    NotEq,
    /// `<`
    #[serde(rename = "<")]
    Lt,
    /// `<=`
    #[serde(rename = "<=")]
    LtEq,
    /// `>`
    #[serde(rename = ">")]
    Gt,
    /// `>=`
    #[serde(rename = ">=")]
    GtEq,
}

impl CompareOp {
    /// The operator with its operands swapped (`5 < x` is `x > 5`).
    pub fn flipped(self) -> Self {
        match self {
            Self::Lt => Self::Gt,
            Self::LtEq => Self::GtEq,
            Self::Gt => Self::Lt,
            Self::GtEq => Self::LtEq,
            other => other,
        }
    }

    fn holds(self, ordering: Ordering) -> bool {
        match self {
            Self::Eq => ordering == Ordering::Equal,
            Self::NotEq => ordering != Ordering::Equal,
            Self::Lt => ordering == Ordering::Less,
            Self::LtEq => ordering != Ordering::Greater,
            Self::Gt => ordering == Ordering::Greater,
            Self::GtEq => ordering != Ordering::Less,
        }
    }
}

/// A row filter one side applies to its own rows before matching. Literals are texts (`None`
/// is the `NULL` literal); comparisons follow [`compare_text`], and `NULL` follows SQL's
/// three-valued logic (a row is kept only when the filter is true).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Filter {
    /// Every filter holds.
    And {
        /// The filters.
        all: Vec<Filter>,
    },
    /// At least one filter holds.
    Or {
        /// The filters.
        any: Vec<Filter>,
    },
    /// The filter does not hold.
    Not {
        /// The negated filter.
        filter: Box<Filter>,
    },
    /// `column op value`.
    Compare {
        /// The column.
        column: String,
        /// The operator.
        op: CompareOp,
        /// The literal.
        value: Option<String>,
    },
    /// `column [NOT] IN (values)`.
    In {
        /// The column.
        column: String,
        /// The literals.
        values: Vec<Option<String>>,
        /// `NOT IN`.
        negated: bool,
    },
    /// `column [NOT] BETWEEN low AND high`.
    Between {
        /// The column.
        column: String,
        /// Lower bound (inclusive).
        low: Option<String>,
        /// Upper bound (inclusive).
        high: Option<String>,
        /// `NOT BETWEEN`.
        negated: bool,
    },
    /// `column IS [NOT] NULL`.
    IsNull {
        /// The column.
        column: String,
        /// `IS NOT NULL`.
        negated: bool,
    },
}

impl Filter {
    /// Every column the filter reads, in first-use order, each once.
    pub fn columns(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.collect_columns(&mut out);
        out
    }

    fn collect_columns<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Filter::And { all: list } | Filter::Or { any: list } => {
                list.iter().for_each(|f| f.collect_columns(out))
            }
            Filter::Not { filter } => filter.collect_columns(out),
            Filter::Compare { column, .. }
            | Filter::In { column, .. }
            | Filter::Between { column, .. }
            | Filter::IsNull { column, .. } => {
                if !out.contains(&column.as_str()) {
                    out.push(column);
                }
            }
        }
    }

    /// Evaluates the filter on one row with SQL three-valued logic: `Some(true)`, `Some(false)`
    /// or `None` (unknown, which a `WHERE` treats as false). `cell` returns a column's text.
    pub fn eval<'r>(&self, cell: &impl Fn(&str) -> &'r str) -> Option<bool> {
        match self {
            Filter::And { all } => {
                let mut result = Some(true);
                for f in all {
                    match f.eval(cell) {
                        Some(false) => return Some(false),
                        None => result = None,
                        Some(true) => {}
                    }
                }
                result
            }
            Filter::Or { any } => {
                let mut result = Some(false);
                for f in any {
                    match f.eval(cell) {
                        Some(true) => return Some(true),
                        None => result = None,
                        Some(false) => {}
                    }
                }
                result
            }
            Filter::Not { filter } => filter.eval(cell).map(|b| !b),
            Filter::Compare { column, op, value } => {
                let x = non_null(cell(column))?;
                Some(op.holds(compare_text(x, value.as_deref()?)))
            }
            Filter::In {
                column,
                values,
                negated,
            } => {
                let x = non_null(cell(column))?;
                let mut saw_null = false;
                for v in values {
                    match v {
                        Some(v) if compare_text(x, v) == Ordering::Equal => return Some(!negated),
                        Some(_) => {}
                        None => saw_null = true,
                    }
                }
                if saw_null { None } else { Some(*negated) }
            }
            Filter::Between {
                column,
                low,
                high,
                negated,
            } => {
                let x = non_null(cell(column))?;
                let above = low.as_deref().map(|l| compare_text(x, l) != Ordering::Less);
                let below = high
                    .as_deref()
                    .map(|h| compare_text(x, h) != Ordering::Greater);
                let inside = match (above, below) {
                    (Some(false), _) | (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                };
                inside.map(|b| b != *negated)
            }
            Filter::IsNull { column, negated } => Some(is_null(cell(column)) != *negated),
        }
    }
}

/// Writes a literal as SQL: `'text'` (quotes doubled) or `NULL`.
fn write_literal(f: &mut std::fmt::Formatter<'_>, value: &Option<String>) -> std::fmt::Result {
    match value {
        Some(v) => write!(f, "'{}'", v.replace('\'', "''")),
        None => f.write_str("NULL"),
    }
}

impl std::fmt::Display for CompareOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Eq => "=",
            Self::NotEq => "<>",
            Self::Lt => "<",
            Self::LtEq => "<=",
            Self::Gt => ">",
            Self::GtEq => ">=",
        })
    }
}

/// SQL text of the filter, fully parenthesized where operators mix.
impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |f: &mut std::fmt::Formatter<'_>, items: &[Filter], op: &str| {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    write!(f, " {op} ")?;
                }
                match item {
                    Filter::And { .. } | Filter::Or { .. } => write!(f, "({item})")?,
                    _ => write!(f, "{item}")?,
                }
            }
            Ok(())
        };
        match self {
            Filter::And { all } => list(f, all, "AND"),
            Filter::Or { any } => list(f, any, "OR"),
            Filter::Not { filter } => write!(f, "NOT ({filter})"),
            Filter::Compare { column, op, value } => {
                write!(f, "{column} {op} ")?;
                write_literal(f, value)
            }
            Filter::In {
                column,
                values,
                negated,
            } => {
                write!(f, "{column} {}IN (", if *negated { "NOT " } else { "" })?;
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write_literal(f, v)?;
                }
                f.write_str(")")
            }
            Filter::Between {
                column,
                low,
                high,
                negated,
            } => {
                write!(f, "{column} {}BETWEEN ", if *negated { "NOT " } else { "" })?;
                write_literal(f, low)?;
                f.write_str(" AND ")?;
                write_literal(f, high)
            }
            Filter::IsNull { column, negated } => {
                write!(f, "{column} IS {}NULL", if *negated { "NOT " } else { "" })
            }
        }
    }
}

fn non_null(cell: &str) -> Option<&str> {
    (!is_null(cell)).then_some(cell)
}

/// What a receiver value column holds for each row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueKind {
    /// The cell as a non-negative integer (`NULL` counts as 0).
    Integer,
    /// 1 when the cell is not `NULL`, else 0 (for `COUNT(c)` and `AVG(c)`).
    NonNull,
}

/// One value column the receiver feeds to the intersection-sum protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValueColumn {
    /// The receiver table's column.
    pub column: String,
    /// What is summed.
    pub kind: ValueKind,
    /// For [`ValueKind::Integer`]: digits after the decimal point (the rule's
    /// `decimal_columns`); each cell is summed in units of `10^-scale`, exactly. 0 for
    /// integers and for [`ValueKind::NonNull`].
    pub scale: u8,
}

/// One side of the protocol: a member's table, filtered and grouped locally.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SidePlan {
    /// Matcher or receiver.
    pub role: Role,
    /// The member who owns the table and plays the role.
    pub member: String,
    /// The collaboration table.
    pub table: String,
    /// The identifier column matched on.
    pub identifier: String,
    /// How identifiers are normalized (the same on both sides).
    #[serde(serialize_with = "serialize_normalization")]
    pub normalization: Normalization,
    /// The filter applied to the table's rows before matching, if any.
    pub filter: Option<Filter>,
    /// The `GROUP BY` columns of this table, in query order (empty when not grouped here).
    pub group_columns: Vec<String>,
    /// The value columns (receiver only; empty for cardinality and for the matcher).
    pub value_columns: Vec<ValueColumn>,
    /// The columns this side contributes to every output row of a list plan, in first-output
    /// order (empty for aggregation plans). The matcher's travel encrypted to the receiver.
    pub list_columns: Vec<String>,
    /// Every column this side reads: identifier, group, filter, value and list columns.
    pub reads: Vec<String>,
    /// How the side's owner reads its table unless its command line says otherwise: the
    /// table entry's format and CSV dialect and the collaboration's `null_values`. An
    /// independent client reads its file with these to find the same rows and NULLs.
    pub source: TableSource,
    /// The `min_threshold` of this table's rule (0 for a list rule, which has none).
    pub min_threshold: u64,
}

/// How a table's file is read by default, as the collaboration file declares it (its table
/// entry's `format`, `delimiter`, `quote`, `has_header`, and `[collaboration] null_values`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableSource {
    /// `csv` or `parquet`; `null` when the table entry names none (then the file's extension
    /// decides: `.parquet`/`.pq` is Parquet, anything else CSV).
    pub format: Option<&'static str>,
    /// The CSV field separator, one ASCII character.
    pub delimiter: String,
    /// The CSV quote character, one ASCII character (doubled inside quotes for itself).
    pub quote: String,
    /// Whether the CSV file's first record names the columns (otherwise they are `column_1`,
    /// `column_2`, ...).
    pub has_header: bool,
    /// The text fields that are NULL, compared after trimming white space; always includes
    /// the empty field.
    pub null_values: Vec<String>,
}

impl TableSource {
    /// The description of `options`.
    pub fn of(options: &SourceOptions) -> TableSource {
        TableSource {
            format: options.format.map(|f| match f {
                Format::Csv => "csv",
                Format::Parquet => "parquet",
            }),
            delimiter: char::from(options.csv.delimiter).to_string(),
            quote: char::from(options.csv.quote).to_string(),
            has_header: options.csv.has_header,
            null_values: options.nulls.spellings().to_vec(),
        }
    }
}

fn serialize_normalization<S: Serializer>(n: &Normalization, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(n.name())
}

/// Where an aggregation plan's output column's values come from. Serialized with a `kind`
/// (`dimension`, or the function's: `count_distinct`, `count`, `sum`, `avg`), `table`,
/// `column`, and `key_index` or the function's value-column indices (`value_index`, or
/// `sum_index` and `count_index` for `avg`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AggregateValue {
    /// A dimension column: component `key_index` of the group key.
    Dimension {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// Position of the column in the grouped side's `group_columns`.
        key_index: usize,
    },
    /// An aggregate function the protocols compute.
    Aggregate(Aggregate),
}

/// A computed aggregate of one column: only functions of the
/// [table of aggregate functions](crate::AggregateFunction) that the protocols compute can be
/// planned (never `SUM(DISTINCT)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregate {
    pub(crate) computation: &'static Computation,
    /// The table.
    pub table: String,
    /// The column (the identifier, for `COUNT(DISTINCT)`).
    pub column: String,
    /// The indices of the receiver value columns it reads, in the order the function reads
    /// them (empty for `COUNT(DISTINCT)`; the sum's then the count's for `AVG`).
    pub value_indices: Vec<usize>,
}

impl Aggregate {
    /// The function.
    pub fn function(&self) -> AggregateFunction {
        self.computation.function
    }

    /// How it is computed, for people: `matched distinct t.c`, `SUM(t.c)`, ...
    pub fn describe(&self) -> String {
        (self.computation.describe)(&format!("{}.{}", self.table, self.column))
    }
}

impl Serialize for AggregateValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        match self {
            AggregateValue::Dimension {
                table,
                column,
                key_index,
            } => {
                map.serialize_entry("kind", "dimension")?;
                map.serialize_entry("table", table)?;
                map.serialize_entry("column", column)?;
                map.serialize_entry("key_index", key_index)?;
            }
            AggregateValue::Aggregate(aggregate) => {
                map.serialize_entry("kind", aggregate.computation.kind)?;
                map.serialize_entry("table", &aggregate.table)?;
                map.serialize_entry("column", &aggregate.column)?;
                for (name, index) in aggregate
                    .computation
                    .index_names
                    .iter()
                    .zip(&aggregate.value_indices)
                {
                    map.serialize_entry(name, index)?;
                }
            }
        }
        map.end()
    }
}

/// Where a list plan's output column's values come from: a list column of either table, the
/// cell of each matched row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename = "list_column")]
pub struct ListColumn {
    /// The table.
    pub table: String,
    /// The column.
    pub column: String,
    /// The side whose rows hold it.
    pub role: Role,
    /// Position of the column in that side's [`list_columns`](SidePlan::list_columns).
    pub index: usize,
}

/// One output column of the result, in `SELECT` order: its name and where its values come
/// from (`V`: [`AggregateValue`] in an aggregation plan, [`ListColumn`] in a list plan).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Output<V> {
    /// The column name: the alias, or the expression as written.
    pub name: String,
    /// Where its values come from.
    #[serde(flatten)]
    pub value: V,
}

/// An output column of an aggregation plan.
pub type AggregateOutput = Output<AggregateValue>;
/// An output column of a list plan.
pub type ListOutput = Output<ListColumn>;

/// One `ORDER BY` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OrderKey {
    /// Index into the outputs.
    pub output: usize,
    /// `DESC`.
    pub descending: bool,
    /// Whether NULLs sort first (default: last when ascending, first when descending).
    pub nulls_first: bool,
}

/// What every plan has, whatever its kind: the collaboration and query, the querier, the two
/// joined sides and how the result rows are ordered and cut.
#[derive(Debug, Clone, PartialEq)]
pub struct Join {
    pub(crate) collaboration_id: String,
    pub(crate) sql: String,
    pub(crate) querier: String,
    pub(crate) domain: String,
    pub(crate) matcher: SidePlan,
    pub(crate) receiver: SidePlan,
    pub(crate) order_by: Vec<OrderKey>,
    pub(crate) limit: Option<u64>,
}

impl Join {
    /// The collaboration the plan was checked against.
    pub fn collaboration_id(&self) -> &str {
        &self.collaboration_id
    }

    /// The SQL text the plan was compiled from.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The querying member (who is also the receiver).
    pub fn querier(&self) -> &str {
        &self.querier
    }

    /// The matcher's side: the other member's table.
    pub fn matcher(&self) -> &SidePlan {
        &self.matcher
    }

    /// The receiver's side: the querier's own table.
    pub fn receiver(&self) -> &SidePlan {
        &self.receiver
    }

    /// The side playing `role`.
    pub fn side(&self, role: Role) -> &SidePlan {
        match role {
            Role::Matcher => &self.matcher,
            Role::Receiver => &self.receiver,
        }
    }

    /// The `ORDER BY` keys, applied after the default order.
    pub fn order_by(&self) -> &[OrderKey] {
        &self.order_by
    }

    /// The `LIMIT`, if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// The label that separates this join's hashes from every other join's: both identifier
    /// columns, matcher's first. Both sides derive the same label from the same plan.
    pub fn domain_label(&self) -> &str {
        &self.domain
    }

    /// The PSI hashing domain both sides must use for this plan.
    pub fn domain(&self) -> Domain {
        Domain::new(&self.collaboration_id, &self.domain)
    }
}

/// A checked aggregation query (two aggregation-rule tables): the matcher learns intersection
/// sizes per group and decides releases, the receiver learns released counts and sums.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregatePlan {
    pub(crate) join: Join,
    pub(crate) grouped_by: Option<Role>,
    pub(crate) min_release: u64,
    pub(crate) outputs: Vec<AggregateOutput>,
    /// Set by [`Collaboration::plan`](crate::Collaboration::plan) for a collaboration with a
    /// privacy section.
    pub(crate) privacy: Option<PlanPrivacy>,
}

impl AggregatePlan {
    /// The collaboration, query, sides, order and limit.
    pub fn join(&self) -> &Join {
        &self.join
    }

    /// [`Protocol::Cardinality`] when no value column is needed, else
    /// [`Protocol::IntersectionSum`].
    pub fn protocol(&self) -> Protocol {
        if self.join.receiver.value_columns.is_empty() {
            Protocol::Cardinality
        } else {
            Protocol::IntersectionSum
        }
    }

    /// Which side's group columns form the group key (`None`: one group, `""` on both sides).
    pub fn grouped_by(&self) -> Option<Role> {
        self.grouped_by
    }

    /// The release threshold: the largest `min_threshold` of the two tables.
    pub fn min_release(&self) -> u64 {
        self.min_release
    }

    /// The output columns, in `SELECT` order.
    pub fn outputs(&self) -> &[AggregateOutput] {
        &self.outputs
    }

    /// How the results are made differentially private; `None` when they are exact.
    pub fn privacy(&self) -> Option<&PlanPrivacy> {
        self.privacy.as_ref()
    }

    /// The bounds of a noisy release, to give both PSI roles
    /// ([`Matcher::with_noise`](cleanroom_psi::Matcher::with_noise),
    /// [`Receiver::with_noise`](cleanroom_psi::Receiver::with_noise)); `None` when exact.
    pub fn noise_bounds(&self) -> Option<NoiseBounds> {
        self.privacy.as_ref().map(PlanPrivacy::noise_bounds)
    }

    /// Whether a group may be released: its matched distinct identifiers reach the release
    /// threshold (the largest `min_threshold` of the two tables). The matcher calls this for
    /// every group before sending the result.
    pub fn release(&self, count: &GroupCount) -> bool {
        count.intersection_size >= self.min_release
    }

    /// The matcher's decision on one pair of groups. Exact plans release a pair whose matched
    /// distinct identifiers reach [`min_release`](Self::min_release) ([`release`](Self::release));
    /// private plans draw the noise from the operating system-seeded CSPRNG and compare the
    /// noisy count ([`PlanPrivacy::decide_with`]).
    pub fn decide(&self, count: &GroupCount) -> GroupDecision {
        match &self.privacy {
            Some(privacy) => privacy.decide_with(count, self.min_release, &mut rand::rng()),
            None if self.release(count) => GroupDecision::EXACT,
            None => GroupDecision::Suppress,
        }
    }

    /// Under differential privacy, the figure the receiver is told for `exact` identifiers whose
    /// contributions the matcher bounded: noisy, drawn from the operating system-seeded CSPRNG
    /// ([`PlanPrivacy::disclose_bounded_with`]); 0 for exact and ungrouped plans.
    pub fn disclose_bounded(&self, exact: u64) -> u64 {
        self.privacy
            .as_ref()
            .map_or(0, |p| p.disclose_bounded_with(exact, &mut rand::rng()))
    }

    /// Whether the querier's side, after its filters, holds enough distinct identifiers: at
    /// least [`min_release`](Self::min_release), or results could single out the few people
    /// in it. The server enforces the same through
    /// [`Matcher::require_receiver_identifiers`](cleanroom_psi::Matcher::require_receiver_identifiers).
    pub fn check_querier_identifiers(&self, distinct: u64) -> Result<(), Refusal> {
        if distinct >= self.min_release {
            return Ok(());
        }
        let table = &self.join.receiver.table;
        Err(Refusal::one(
            Reason::new(
                ReasonCode::QuerierSetTooSmall,
                format!(
                    "table {table:?} has {distinct} distinct identifiers after the query's \
                     filters; at least {} (the release threshold) are required",
                    self.min_release
                ),
            )
            .table(table),
        ))
    }
}

/// A checked list query (two list-rule tables): the receiver learns which of its rows match
/// and the matcher's list columns of those rows. Nothing is aggregated, thresholded or noised.
#[derive(Debug, Clone, PartialEq)]
pub struct ListPlan {
    pub(crate) join: Join,
    pub(crate) outputs: Vec<ListOutput>,
    pub(crate) distinct: bool,
}

impl ListPlan {
    /// The collaboration, query, sides, order and limit. The limit shortens the printed
    /// result only: the receiver learns every matched row of the matcher's list columns.
    pub fn join(&self) -> &Join {
        &self.join
    }

    /// The output columns, in `SELECT` order.
    pub fn outputs(&self) -> &[ListOutput] {
        &self.outputs
    }

    /// Whether the result keeps one copy of each output row (`SELECT DISTINCT`).
    pub fn distinct(&self) -> bool {
        self.distinct
    }
}

/// A checked query, compiled for the PSI protocols: an aggregation or a list, each with its
/// own outputs. Only [`Collaboration::plan`](crate::Collaboration::plan) creates plans.
///
/// The methods here answer for either kind (a list plan has no threshold, grouping or
/// privacy); those that only make sense for one kind fail with a `ProtocolMismatch` /
/// `PlanKind` error for the other.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Counts and sums over the intersection of two aggregation-rule tables.
    Aggregate(AggregatePlan),
    /// The matched rows of two list-rule tables.
    List(ListPlan),
}

impl Plan {
    /// What both kinds share: collaboration, query, sides, order and limit.
    pub fn join(&self) -> &Join {
        match self {
            Plan::Aggregate(plan) => &plan.join,
            Plan::List(plan) => &plan.join,
        }
    }

    /// The aggregation plan, if this is one.
    pub fn as_aggregate(&self) -> Option<&AggregatePlan> {
        match self {
            Plan::Aggregate(plan) => Some(plan),
            Plan::List(_) => None,
        }
    }

    /// The list plan, if this is one.
    pub fn as_list(&self) -> Option<&ListPlan> {
        match self {
            Plan::List(plan) => Some(plan),
            Plan::Aggregate(_) => None,
        }
    }

    /// The collaboration the plan was checked against.
    pub fn collaboration_id(&self) -> &str {
        self.join().collaboration_id()
    }

    /// The SQL text the plan was compiled from.
    pub fn sql(&self) -> &str {
        self.join().sql()
    }

    /// The querying member (who is also the receiver).
    pub fn querier(&self) -> &str {
        self.join().querier()
    }

    /// The protocol to run: cardinality when no value column is needed, intersection-sum
    /// when one is, list for a list plan.
    pub fn protocol(&self) -> Protocol {
        match self {
            Plan::Aggregate(plan) => plan.protocol(),
            Plan::List(_) => Protocol::List,
        }
    }

    /// Which side's group columns form the group key (`None`: one group, `""` on both sides;
    /// always `None` for a list plan).
    pub fn grouped_by(&self) -> Option<Role> {
        self.as_aggregate().and_then(AggregatePlan::grouped_by)
    }

    /// The release threshold: the largest `min_threshold` of the two tables (0 for a list
    /// plan: list rules release every matched row).
    pub fn min_release(&self) -> u64 {
        self.as_aggregate().map_or(0, AggregatePlan::min_release)
    }

    /// The matcher's side: the other member's table.
    pub fn matcher(&self) -> &SidePlan {
        self.join().matcher()
    }

    /// The receiver's side: the querier's own table.
    pub fn receiver(&self) -> &SidePlan {
        self.join().receiver()
    }

    /// The side playing `role`.
    pub fn side(&self, role: Role) -> &SidePlan {
        self.join().side(role)
    }

    /// The `ORDER BY` keys, applied after the default order (by group key).
    pub fn order_by(&self) -> &[OrderKey] {
        self.join().order_by()
    }

    /// The `LIMIT`, if any. In a list plan it shortens the printed result only: the receiver
    /// learns every matched row of the matcher's list columns whatever the limit.
    pub fn limit(&self) -> Option<u64> {
        self.join().limit()
    }

    /// Whether a list plan keeps one copy of each output row (`SELECT DISTINCT`); false for
    /// an aggregation plan.
    pub fn distinct(&self) -> bool {
        self.as_list().is_some_and(ListPlan::distinct)
    }

    /// The label that separates this join's hashes from every other join's: both identifier
    /// columns, matcher's first. Both sides derive the same label from the same plan.
    pub fn domain_label(&self) -> &str {
        self.join().domain_label()
    }

    /// The PSI hashing domain both sides must use for this plan.
    pub fn domain(&self) -> Domain {
        self.join().domain()
    }

    /// How the results are made differentially private; `None` when they are exact (no
    /// privacy section, or a list plan).
    pub fn privacy(&self) -> Option<&PlanPrivacy> {
        self.as_aggregate().and_then(AggregatePlan::privacy)
    }

    /// The bounds of a noisy release, to give both PSI roles
    /// ([`Matcher::with_noise`](cleanroom_psi::Matcher::with_noise),
    /// [`Receiver::with_noise`](cleanroom_psi::Receiver::with_noise)); `None` when exact.
    pub fn noise_bounds(&self) -> Option<NoiseBounds> {
        self.as_aggregate().and_then(AggregatePlan::noise_bounds)
    }

    /// Whether a group may be released ([`AggregatePlan::release`]); a list plan has no
    /// threshold and releases every group.
    pub fn release(&self, count: &GroupCount) -> bool {
        self.as_aggregate().is_none_or(|plan| plan.release(count))
    }

    /// The matcher's decision on one pair of groups ([`AggregatePlan::decide`]); a list plan
    /// has no threshold nor noise and releases every group exactly.
    pub fn decide(&self, count: &GroupCount) -> GroupDecision {
        match self {
            Plan::Aggregate(plan) => plan.decide(count),
            Plan::List(_) => GroupDecision::EXACT,
        }
    }

    /// The noisy count of bounded identifiers ([`AggregatePlan::disclose_bounded`]); 0 for a
    /// list plan.
    pub fn disclose_bounded(&self, exact: u64) -> u64 {
        self.as_aggregate()
            .map_or(0, |plan| plan.disclose_bounded(exact))
    }

    /// Whether the querier's side holds enough distinct identifiers
    /// ([`AggregatePlan::check_querier_identifiers`]); always for a list plan, which has no
    /// threshold.
    pub fn check_querier_identifiers(&self, distinct: u64) -> Result<(), Refusal> {
        match self {
            Plan::Aggregate(plan) => plan.check_querier_identifiers(distinct),
            Plan::List(_) => Ok(()),
        }
    }
}

/// An allowed query's plan as one JSON document: what `cleanroom check --format json` prints
/// and the service's `PlanQuery` call returns, `{"allowed": true, "plan": {...}}`, then, under
/// differential privacy only, `"noise"`: each output column's noise, in `SELECT` order. It is a
/// function of the collaboration file and the SQL alone.
#[derive(Debug, Serialize)]
pub struct AllowedPlan<'a> {
    allowed: bool,
    plan: &'a Plan,
    #[serde(skip_serializing_if = "Option::is_none")]
    noise: Option<Vec<crate::privacy::OutputNoise>>,
}

impl<'a> AllowedPlan<'a> {
    /// The document of `plan`.
    pub fn new(plan: &'a Plan) -> AllowedPlan<'a> {
        AllowedPlan {
            allowed: true,
            plan,
            noise: plan.privacy().map(|p| p.outputs(plan)),
        }
    }

    /// The document as pretty-printed JSON, fields in the order above.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a plan has only string keys and finite numbers")
    }
}

/// The plan as `cleanroom check --format json` prints it: the same fields for both kinds, in
/// this order (`protocol` tells the kind).
impl Serialize for Plan {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(untagged)]
        enum Outputs<'a> {
            Aggregate(&'a [AggregateOutput]),
            List(&'a [ListOutput]),
        }
        #[derive(Serialize)]
        struct Fields<'a> {
            collaboration_id: &'a str,
            sql: &'a str,
            querier: &'a str,
            domain: &'a str,
            protocol: Protocol,
            grouped_by: Option<Role>,
            min_release: u64,
            matcher: &'a SidePlan,
            receiver: &'a SidePlan,
            outputs: Outputs<'a>,
            order_by: &'a [OrderKey],
            limit: Option<u64>,
            distinct: bool,
            privacy: Option<&'a PlanPrivacy>,
        }
        let join = self.join();
        Fields {
            collaboration_id: &join.collaboration_id,
            sql: &join.sql,
            querier: &join.querier,
            domain: &join.domain,
            protocol: self.protocol(),
            grouped_by: self.grouped_by(),
            min_release: self.min_release(),
            matcher: &join.matcher,
            receiver: &join.receiver,
            outputs: match self {
                Plan::Aggregate(plan) => Outputs::Aggregate(&plan.outputs),
                Plan::List(plan) => Outputs::List(&plan.outputs),
            },
            order_by: &join.order_by,
            limit: join.limit,
            distinct: self.distinct(),
            privacy: self.privacy(),
        }
        .serialize(s)
    }
}
