//! Running a plan: rows in, PSI tables out; PSI outcome in, result rows out.
//!
//! These functions are pure: the caller reads the data (CSV, database) and moves protocol
//! messages; the plan decides which rows take part, what their group keys and values are,
//! which groups are released and what the result looks like.
//!
//! Group keys: a side that is not grouped puts every row in group `""`. A grouped side encodes
//! the tuple of its group columns as a JSON array of strings and `null`s (`["spring","EU"]`,
//! `[null]`), which is unambiguous for any cell contents and never equals `""`.

use std::cmp::Ordering;

use cleanroom_psi::{InputError, MatcherTable, ReceiverOutcome, ReceiverTable};
use serde::Serialize;

use crate::plan::{AggregatePlan, AggregateValue, Join, Plan, Role, SidePlan, ValueKind};
use crate::value::{Value, is_null};
use cleanroom_data::{Decimal, Position, Row};

/// Why rows could not be turned into a PSI table. Each row error names where the row is (the
/// physical line of a CSV record, the row of a Parquet file) as its source reported it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The header lacks a column the plan reads.
    #[error("table {table:?}: the header has no column {column:?}")]
    MissingColumn {
        /// The collaboration table.
        table: String,
        /// The missing column.
        column: String,
    },
    /// The header names a column the plan reads more than once.
    #[error("table {table:?}: the header names column {column:?} more than once")]
    DuplicateColumn {
        /// The collaboration table.
        table: String,
        /// The repeated column.
        column: String,
    },
    /// A row is too short to hold a column the plan reads.
    #[error("table {table:?}, {at}: no field for column {column:?} (the row has {fields} fields)")]
    ShortRow {
        /// The collaboration table.
        table: String,
        /// Where the row is.
        at: Position,
        /// The column.
        column: String,
        /// How many fields the row has.
        fields: usize,
    },
    /// A `SUM`/`AVG` cell that is neither NULL nor a non-negative integer (or, for a column
    /// with a declared scale, a non-negative decimal with at most that many digits after the
    /// point).
    #[error("table {table:?}, {at}, column {column:?}: {value:?} is not a non-negative {what}")]
    NotAnInteger {
        /// The collaboration table.
        table: String,
        /// Where the row is.
        at: Position,
        /// The column.
        column: String,
        /// The cell.
        value: String,
        /// What was expected: `integer`, or `decimal with 2 digits after the point`.
        what: String,
    },
    /// A summed column that the file types as `DECIMAL` with one scale while the rule
    /// declares another (`decimal_columns`). Values are never rescaled silently.
    #[error(
        "table {table:?}, column {column:?}: the file's DECIMAL column has scale {file} but the \
         rule declares scale {declared} (decimal_columns); values are never rescaled: declare \
         scale {file} or write the column with scale {declared}"
    )]
    ScaleMismatch {
        /// The collaboration table.
        table: String,
        /// The column.
        column: String,
        /// The rule's scale.
        declared: u8,
        /// The file's scale.
        file: u8,
    },
    /// A summed column that the file types as `DECIMAL` with a scale the rule does not
    /// declare and that cannot be taken from the file (beyond 18 digits, or under
    /// differential privacy, where `sum_bounds` count units of the declared scale).
    #[error(
        "table {table:?}, column {column:?}: the file's DECIMAL column has scale {file}; {reason}"
    )]
    FileScale {
        /// The collaboration table.
        table: String,
        /// The column.
        column: String,
        /// The file's scale.
        file: u8,
        /// Why it cannot be used as it is.
        reason: String,
    },
    /// The table belongs to the other kind of plan.
    #[error(transparent)]
    PlanKind(#[from] PlanKindError),
    /// The PSI table refused the plan's shape (e.g. too many value columns).
    #[error("table {table:?}: {source}")]
    Table {
        /// The collaboration table.
        table: String,
        /// The PSI error.
        #[source]
        source: InputError,
    },
    /// The PSI table refused the row (e.g. a value above the protocol's maximum, a group key
    /// too long for the wire).
    #[error("table {table:?}, {at}: {source}")]
    Input {
        /// The collaboration table.
        table: String,
        /// Where the row is.
        at: Position,
        /// The PSI error.
        #[source]
        source: InputError,
    },
    /// The kept rows could not be written where a job of buckets spills them.
    #[error("table {table:?}: writing its rows to bucket files: {source}")]
    Spill {
        /// The collaboration table.
        table: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a kept row could not be placed in a [`MatcherRows`] or [`ReceiverRows`].
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// The PSI table refused the row.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The row could not be written to its bucket file.
    #[error(transparent)]
    Spill(#[from] std::io::Error),
}

impl DataError {
    /// The error of placing the row at `at` of `table`.
    pub(crate) fn placing(table: &str, at: Position, error: PlaceError) -> DataError {
        match error {
            PlaceError::Input(source) => DataError::Input {
                table: table.to_owned(),
                at,
                source,
            },
            PlaceError::Spill(source) => DataError::Spill {
                table: table.to_owned(),
                source,
            },
        }
    }
}

/// Why a plan cannot build a table of the other kind of plan (a list table from an
/// aggregation plan, or an aggregation table from a list plan).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {plan} plan has no {table} table")]
pub struct PlanKindError {
    /// What the plan is: `list` or `aggregation`.
    pub plan: &'static str,
    /// The table asked for.
    pub table: &'static str,
}

/// Why a protocol outcome does not fit the plan (a peer that does not follow the plan).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultError {
    /// A group key is not what the plan's grouped side produces.
    #[error("the {role}'s group key {key:?} is not a group key of this plan")]
    BadGroupKey {
        /// The side whose key is wrong.
        role: Role,
        /// The key as received.
        key: String,
    },
    /// A group carries the wrong number of sums.
    #[error("a result group has {got} sums; the plan has {expected} value columns")]
    SumCount {
        /// Value columns of the plan.
        expected: usize,
        /// Sums received.
        got: usize,
    },
    /// An outcome of the other kind of protocol: aggregates for a list plan, or a list for
    /// an aggregation plan.
    #[error("a {got} outcome cannot be the result of a {plan} plan")]
    ProtocolMismatch {
        /// What the plan runs: `list` or `aggregation`.
        plan: &'static str,
        /// What the outcome holds.
        got: &'static str,
    },
    /// A listed row of the matcher with the wrong number of values.
    #[error("a listed row has {got} values; the plan lists {expected} of the matcher's columns")]
    ListRowWidth {
        /// The matcher's list columns in the plan.
        expected: usize,
        /// Values in the row.
        got: usize,
    },
}

/// The result of a query: output columns in `SELECT` order, released rows after `ORDER BY` and
/// `LIMIT`, and how many groups were suppressed by the threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResultTable {
    /// Output column names.
    pub columns: Vec<String>,
    /// Released rows, each with one value per column.
    pub rows: Vec<Vec<Value>>,
    /// Groups whose matched distinct identifiers were below the release threshold.
    pub suppressed_rows: u64,
    /// For a grouped query under differential privacy, the provider's noisy count of
    /// identifiers that were in more output rows than `max_groups_per_identifier` and were
    /// kept in that many ([`PlanPrivacy::bounded`](crate::privacy::PlanPrivacy::bounded) gives
    /// its noise); `None` when nothing can be bounded (exact or ungrouped queries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bounded_identifiers: Option<u64>,
}

/// A side's columns, located in a header.
pub(crate) struct Located<'p> {
    side: &'p SidePlan,
    pub(crate) identifier: usize,
    groups: Vec<usize>,
    filter: Vec<(String, usize)>,
    values: Vec<usize>,
    pub(crate) lists: Vec<usize>,
}

impl<'p> Located<'p> {
    pub(crate) fn new(side: &'p SidePlan, header: &[String]) -> Result<Self, DataError> {
        let find = |column: &str| -> Result<usize, DataError> {
            let mut hits = header.iter().enumerate().filter(|(_, h)| *h == column);
            match (hits.next(), hits.next()) {
                (Some((i, _)), None) => Ok(i),
                (None, _) => Err(DataError::MissingColumn {
                    table: side.table.clone(),
                    column: column.to_owned(),
                }),
                (Some(_), Some(_)) => Err(DataError::DuplicateColumn {
                    table: side.table.clone(),
                    column: column.to_owned(),
                }),
            }
        };
        let filter = match &side.filter {
            Some(f) => f
                .columns()
                .into_iter()
                .map(|c| Ok((c.to_owned(), find(c)?)))
                .collect::<Result<_, DataError>>()?,
            None => Vec::new(),
        };
        Ok(Self {
            side,
            identifier: find(&side.identifier)?,
            groups: side
                .group_columns
                .iter()
                .map(|c| find(c))
                .collect::<Result<_, _>>()?,
            filter,
            values: side
                .value_columns
                .iter()
                .map(|v| find(&v.column))
                .collect::<Result<_, _>>()?,
            lists: side
                .list_columns
                .iter()
                .map(|c| find(c))
                .collect::<Result<_, _>>()?,
        })
    }

    pub(crate) fn cell<'r>(
        &self,
        row: &'r [String],
        index: usize,
        at: Position,
    ) -> Result<&'r str, DataError> {
        row.get(index)
            .map(String::as_str)
            .ok_or_else(|| DataError::ShortRow {
                table: self.side.table.clone(),
                at,
                column: self.column_name(index),
                fields: row.len(),
            })
    }

    fn column_name(&self, index: usize) -> String {
        if index == self.identifier {
            return self.side.identifier.clone();
        }
        if let Some(i) = self.groups.iter().position(|&g| g == index) {
            return self.side.group_columns[i].clone();
        }
        if let Some(i) = self.values.iter().position(|&v| v == index) {
            return self.side.value_columns[i].column.clone();
        }
        if let Some(i) = self.lists.iter().position(|&l| l == index) {
            return self.side.list_columns[i].clone();
        }
        self.filter
            .iter()
            .find(|(_, i)| *i == index)
            .map(|(c, _)| c.clone())
            .unwrap_or_default()
    }

    /// Whether the row passes the side's filter (unknown counts as false).
    pub(crate) fn keeps(&self, row: &[String], at: Position) -> Result<bool, DataError> {
        let Some(filter) = &self.side.filter else {
            return Ok(true);
        };
        for &(_, index) in &self.filter {
            self.cell(row, index, at)?;
        }
        let cell = |column: &str| -> &str {
            self.filter
                .iter()
                .find(|(c, _)| c == column)
                .and_then(|&(_, i)| row.get(i))
                .map_or("", String::as_str)
        };
        Ok(filter.eval(&cell) == Some(true))
    }

    fn group_key(&self, row: &[String], at: Position) -> Result<String, DataError> {
        if self.groups.is_empty() {
            return Ok(String::new());
        }
        let mut key = Vec::with_capacity(self.groups.len());
        for &g in &self.groups {
            let cell = self.cell(row, g, at)?;
            key.push((!is_null(cell)).then_some(cell));
        }
        Ok(encode_group_key(&key))
    }
}

/// A row's position and its cells as text, NULL as the empty string (which the filters, group
/// keys and value columns read as NULL, and which is never matched as an identifier).
pub(crate) fn texts(row: Row) -> (Position, Vec<String>) {
    let cells = row
        .cells
        .into_iter()
        .map(|c| match c {
            cleanroom_data::Cell::Null => String::new(),
            cleanroom_data::Cell::Text(s) => s,
            other => other.text().map(|t| t.into_owned()).unwrap_or_default(),
        })
        .collect();
    (row.position, cells)
}

/// The scale a summed column is read at, from the rule's declared scale (`declared`, 0 when
/// the rule declares none) and the scale the file's own type gives it (`file`: a Parquet
/// `DECIMAL(p, s)`), if any. The file's scale is used when the rule declares none, except
/// under differential privacy (`private`), where the column's `sum_bounds` are in units of
/// the declared scale and so must not change meaning with the file; a declared scale that
/// differs from the file's is refused (never rescaled).
pub(crate) fn settle_scale(
    table: &str,
    column: &str,
    declared: u8,
    file: Option<u8>,
    private: bool,
) -> Result<u8, DataError> {
    let Some(file) = file else {
        return Ok(declared);
    };
    if declared != 0 {
        return if declared == file {
            Ok(declared)
        } else {
            Err(DataError::ScaleMismatch {
                table: table.to_owned(),
                column: column.to_owned(),
                declared,
                file,
            })
        };
    }
    let refuse = |reason: String| DataError::FileScale {
        table: table.to_owned(),
        column: column.to_owned(),
        file,
        reason,
    };
    if file == 0 {
        Ok(0)
    } else if file > MAX_SUM_SCALE {
        Err(refuse(format!(
            "sums are exact in units of at most 10^-{MAX_SUM_SCALE}"
        )))
    } else if private {
        Err(refuse(format!(
            "under differential privacy its sum_bounds count units of the declared scale, so \
             the rule must declare it: decimal_columns = {{ {column} = {{ scale = {file} }} }}"
        )))
    } else {
        Ok(file)
    }
}

/// The largest scale of a summed column (values are summed as 64-bit integers of units).
const MAX_SUM_SCALE: u8 = 18;

/// A value cell in units of `10^-scale` (an integer for scale 0), if it is a non-negative
/// number with at most `scale` digits after the point that fits 64 bits.
pub(crate) fn amount(cell: &str, scale: u8) -> Option<u64> {
    if scale == 0 {
        return cell.trim().parse::<u64>().ok();
    }
    let d = Decimal::parse(cell, scale).ok()?;
    u64::try_from(d.units).ok()
}

/// Encodes a group-key tuple (`None` = NULL) as the PSI group string: a JSON array.
pub fn encode_group_key(key: &[Option<&str>]) -> String {
    serde_json::to_string(key).expect("a list of strings always serializes")
}

/// Decodes a group string made by [`encode_group_key`] with `arity` components.
pub fn decode_group_key(encoded: &str, arity: usize) -> Option<Vec<Option<String>>> {
    let key: Vec<Option<String>> = serde_json::from_str(encoded).ok()?;
    (key.len() == arity).then_some(key)
}

/// Where a matcher's kept rows go: its PSI table, or a partition of them into buckets (a job
/// of buckets, each loaded into a table of its own when its turn comes).
pub trait MatcherRows {
    /// Announces group `key` even if no row lands in it.
    fn ensure_group(&mut self, key: &str) -> Result<(), InputError>;
    /// One kept row: `raw_identifier` (not normalized yet) in `group`.
    fn push(&mut self, group: &str, raw_identifier: &str) -> Result<(), PlaceError>;
}

impl MatcherRows for MatcherTable {
    fn ensure_group(&mut self, key: &str) -> Result<(), InputError> {
        MatcherTable::ensure_group(self, key)
    }

    fn push(&mut self, group: &str, raw_identifier: &str) -> Result<(), PlaceError> {
        Ok(MatcherTable::push(self, group, raw_identifier).map(drop)?)
    }
}

/// Where a receiver's kept rows go: its PSI table, or a partition of them into buckets.
pub trait ReceiverRows {
    /// One kept row: `raw_identifier` (not normalized yet) in `group`, with one value per
    /// value column.
    fn push(&mut self, group: &str, raw_identifier: &str, values: &[u64])
    -> Result<(), PlaceError>;
}

impl ReceiverRows for ReceiverTable {
    fn push(
        &mut self,
        group: &str,
        raw_identifier: &str,
        values: &[u64],
    ) -> Result<(), PlaceError> {
        Ok(ReceiverTable::push(self, group, raw_identifier, values).map(drop)?)
    }
}

impl AggregatePlan {
    /// Builds the matcher's PSI table from its rows: applies the matcher-side filter, reads the
    /// identifier and (when grouped on this side) the group key of each kept row. `header`
    /// names the columns of `rows`; columns the plan does not read may be absent. Under
    /// differential privacy an ungrouped matcher's one group exists even when empty. Errors
    /// name the table, the 1-based row and the column.
    pub fn matcher_table(
        &self,
        header: &[String],
        rows: impl Iterator<Item = Row>,
    ) -> Result<MatcherTable, DataError> {
        let mut table = MatcherTable::new(self.join.matcher.normalization);
        self.matcher_rows(header, rows, &mut table)?;
        Ok(table)
    }

    /// [`Self::matcher_table`] into any [`MatcherRows`]: the same rows kept, the same group
    /// keys, the same errors.
    pub fn matcher_rows(
        &self,
        header: &[String],
        rows: impl Iterator<Item = Row>,
        table: &mut impl MatcherRows,
    ) -> Result<(), DataError> {
        let located = Located::new(&self.join.matcher, header)?;
        if self.privacy.is_some() && self.grouped_by != Some(Role::Matcher) {
            // Announced even when no row passes the filter: its absence would tell.
            table.ensure_group("").map_err(|source| DataError::Table {
                table: self.join.matcher.table.clone(),
                source,
            })?;
        }
        for row in rows {
            let (at, row) = texts(row);
            if !located.keeps(&row, at)? {
                continue;
            }
            let identifier = located.cell(&row, located.identifier, at)?;
            let group = located.group_key(&row, at)?;
            table
                .push(&group, identifier)
                .map_err(|e| DataError::placing(&self.join.matcher.table, at, e))?;
        }
        Ok(())
    }

    /// Takes the scales the receiver's file declares for its summed columns (`scales[i]` for
    /// `header[i]`: a Parquet `DECIMAL(p, s)` column's `s`, `None` for untyped columns; see
    /// `cleanroom_data::Table::declared_scale`) before [`Self::receiver_table`] reads its
    /// rows and [`Self::result`] prints its sums: a column whose rule declares no scale is
    /// summed at the file's; a declared scale that differs from the file's is refused, as is
    /// an undeclared one under differential privacy. Columns absent from `header` are left
    /// for [`Self::receiver_table`] to report.
    pub fn adopt_file_scales(
        &mut self,
        header: &[String],
        scales: &[Option<u8>],
    ) -> Result<(), DataError> {
        let private = self.privacy.is_some();
        let table = self.join.receiver.table.clone();
        for column in &mut self.join.receiver.value_columns {
            if column.kind != ValueKind::Integer {
                continue;
            }
            let file = header
                .iter()
                .position(|h| *h == column.column)
                .and_then(|i| scales.get(i).copied().flatten());
            column.scale = settle_scale(&table, &column.column, column.scale, file, private)?;
        }
        Ok(())
    }

    /// Builds the receiver's PSI table from its rows: applies the receiver-side filter, reads
    /// the identifier, the group key (when grouped on this side) and one value per value
    /// column: for `SUM` the cell as a non-negative integer (NULL = 0), for `COUNT` 1 when
    /// the cell is not NULL; `AVG` uses both. Under differential privacy each identifier's
    /// totals are clamped into [`PlanPrivacy::value_bounds`](crate::PlanPrivacy) (its
    /// `sum_bounds`, `[0, 1]` for a count). Errors name the table, the 1-based row and the
    /// column.
    pub fn receiver_table(
        &self,
        header: &[String],
        rows: impl Iterator<Item = Row>,
    ) -> Result<ReceiverTable, DataError> {
        let mut table = self.empty_receiver_table()?;
        self.receiver_rows(header, rows, &mut table)?;
        Ok(table)
    }

    /// The receiver's PSI table before any row: its normalization, value columns and, under
    /// differential privacy, the bounds each identifier's totals are clamped into.
    pub fn empty_receiver_table(&self) -> Result<ReceiverTable, DataError> {
        let mut table = ReceiverTable::new(
            self.join.receiver.normalization,
            self.join.receiver.value_columns.len(),
        )
        .map_err(|source| DataError::Table {
            table: self.join.receiver.table.clone(),
            source,
        })?;
        if let Some(privacy) = &self.privacy {
            table
                .bound_totals(privacy.value_bounds.clone())
                .map_err(|source| DataError::Table {
                    table: self.join.receiver.table.clone(),
                    source,
                })?;
        }
        Ok(table)
    }

    /// [`Self::receiver_table`]'s rows into any [`ReceiverRows`]: the same rows kept, the same
    /// group keys and values, the same errors.
    pub fn receiver_rows(
        &self,
        header: &[String],
        rows: impl Iterator<Item = Row>,
        table: &mut impl ReceiverRows,
    ) -> Result<(), DataError> {
        let located = Located::new(&self.join.receiver, header)?;
        let mut values = vec![0u64; self.join.receiver.value_columns.len()];
        for row in rows {
            let (at, row) = texts(row);
            if !located.keeps(&row, at)? {
                continue;
            }
            let identifier = located.cell(&row, located.identifier, at)?;
            let group = located.group_key(&row, at)?;
            for ((value, column), &index) in values
                .iter_mut()
                .zip(&self.join.receiver.value_columns)
                .zip(&located.values)
            {
                let cell = located.cell(&row, index, at)?;
                *value = match column.kind {
                    ValueKind::NonNull => u64::from(!is_null(cell)),
                    ValueKind::Integer if is_null(cell) => 0,
                    ValueKind::Integer => {
                        amount(cell, column.scale).ok_or_else(|| DataError::NotAnInteger {
                            table: self.join.receiver.table.clone(),
                            at,
                            column: column.column.clone(),
                            value: cell.to_owned(),
                            what: match column.scale {
                                0 => "integer".to_owned(),
                                s => format!("decimal with at most {s} digits after the point"),
                            },
                        })?
                    }
                };
            }
            table
                .push(&group, identifier, &values)
                .map_err(|e| DataError::placing(&self.join.receiver.table, at, e))?;
        }
        Ok(())
    }

    /// Turns the receiver's protocol outcome into the result: one row per released group with
    /// the outputs in `SELECT` order (counts and sums as integers, sums of a column with a
    /// declared scale as exact decimals of that scale, averages as floats, NULL for
    /// the average of no values), sorted by group key, then by `ORDER BY`, then cut at `LIMIT`.
    /// Groups under the threshold are counted in `suppressed_rows`, whatever the order or
    /// limit. As with an inner join, a group with no matched identifier does not exist: it is
    /// neither a row nor suppressed (so an empty intersection gives no row at all, even without
    /// `GROUP BY`). Fails when the outcome does not fit the plan (a misbehaving peer).
    pub fn result(&self, outcome: &ReceiverOutcome) -> Result<ResultTable, ResultError> {
        let arity = match self.grouped_by {
            Some(role) => self.join.side(role).group_columns.len(),
            None => 0,
        };
        let expected_sums = self.join.receiver.value_columns.len();
        let mut keyed: Vec<(Vec<Option<String>>, Vec<Value>)> =
            Vec::with_capacity(outcome.groups.len());
        for group in &outcome.groups {
            let mut key = None;
            for (role, label) in [
                (Role::Matcher, &group.matcher_group),
                (Role::Receiver, &group.receiver_group),
            ] {
                let bad = || ResultError::BadGroupKey {
                    role,
                    key: label.clone(),
                };
                if self.grouped_by == Some(role) {
                    key = Some(decode_group_key(label, arity).ok_or_else(bad)?);
                } else if !label.is_empty() {
                    return Err(bad());
                }
            }
            let key = key.unwrap_or_default();
            if group.sums.len() != expected_sums {
                return Err(ResultError::SumCount {
                    expected: expected_sums,
                    got: group.sums.len(),
                });
            }
            let row = self
                .outputs
                .iter()
                .map(|output| match &output.value {
                    AggregateValue::Dimension { key_index, .. } => key[*key_index]
                        .as_ref()
                        .map_or(Value::Null, |v| Value::Text(v.clone())),
                    AggregateValue::Aggregate(aggregate) => {
                        let values: Vec<(u64, u8)> = aggregate
                            .value_indices
                            .iter()
                            .map(|&i| (group.sums[i], self.join.receiver.value_columns[i].scale))
                            .collect();
                        (aggregate.computation.result)(group.intersection_size, &values)
                    }
                })
                .collect();
            keyed.push((key, row));
        }
        keyed.sort_by(|(a, _), (b, _)| compare_keys(a, b));
        let mut rows: Vec<Vec<Value>> = keyed.into_iter().map(|(_, row)| row).collect();
        self.join.order(&mut rows);
        self.join.cut(&mut rows);
        Ok(ResultTable {
            columns: self.outputs.iter().map(|o| o.name.clone()).collect(),
            rows,
            suppressed_rows: outcome.suppressed_groups,
            bounded_identifiers: self
                .privacy
                .as_ref()
                .and_then(|p| p.bounded)
                .map(|_| outcome.bounded_identifiers),
        })
    }
}

impl Plan {
    /// [`AggregatePlan::matcher_table`]; a list plan has none ([`DataError::PlanKind`]: its
    /// matcher builds [`Plan::list_provider_table`]).
    pub fn matcher_table(
        &self,
        header: &[String],
        rows: impl Iterator<Item = Row>,
    ) -> Result<MatcherTable, DataError> {
        self.aggregate_for("matcher")?.matcher_table(header, rows)
    }

    /// [`AggregatePlan::matcher_rows`]; a list plan has none ([`DataError::PlanKind`]).
    pub fn matcher_rows(
        &self,
        header: &[String],
        rows: impl Iterator<Item = Row>,
        table: &mut impl MatcherRows,
    ) -> Result<(), DataError> {
        self.aggregate_for("matcher")?
            .matcher_rows(header, rows, table)
    }

    /// [`AggregatePlan::receiver_rows`]; a list plan has none ([`DataError::PlanKind`]).
    pub fn receiver_rows(
        &self,
        header: &[String],
        rows: impl Iterator<Item = Row>,
        table: &mut impl ReceiverRows,
    ) -> Result<(), DataError> {
        self.aggregate_for("receiver")?
            .receiver_rows(header, rows, table)
    }

    /// [`AggregatePlan::empty_receiver_table`]; a list plan has none ([`DataError::PlanKind`]).
    pub fn empty_receiver_table(&self) -> Result<ReceiverTable, DataError> {
        self.aggregate_for("receiver")?.empty_receiver_table()
    }

    /// [`AggregatePlan::adopt_file_scales`]; a list plan sums nothing and takes no scale.
    pub fn adopt_file_scales(
        &mut self,
        header: &[String],
        scales: &[Option<u8>],
    ) -> Result<(), DataError> {
        match self {
            Plan::Aggregate(plan) => plan.adopt_file_scales(header, scales),
            Plan::List(_) => Ok(()),
        }
    }

    /// [`AggregatePlan::receiver_table`]; a list plan has none ([`DataError::PlanKind`]: its
    /// receiver builds [`Plan::list_querier_table`]).
    pub fn receiver_table(
        &self,
        header: &[String],
        rows: impl Iterator<Item = Row>,
    ) -> Result<ReceiverTable, DataError> {
        self.aggregate_for("receiver")?.receiver_table(header, rows)
    }

    /// [`AggregatePlan::result`]; fails with [`ResultError::ProtocolMismatch`] for a list
    /// plan.
    pub fn result(&self, outcome: &ReceiverOutcome) -> Result<ResultTable, ResultError> {
        match self {
            Plan::Aggregate(plan) => plan.result(outcome),
            Plan::List(_) => Err(ResultError::ProtocolMismatch {
                plan: "list",
                got: "aggregation",
            }),
        }
    }

    fn aggregate_for(&self, table: &'static str) -> Result<&AggregatePlan, PlanKindError> {
        self.as_aggregate().ok_or(PlanKindError {
            plan: "list",
            table,
        })
    }
}

impl Join {
    /// Sorts result rows by the `ORDER BY` keys; stable, so rows equal under the keys keep the
    /// default order they come in.
    pub(crate) fn order(&self, rows: &mut [Vec<Value>]) {
        if self.order_by.is_empty() {
            return;
        }
        rows.sort_by(|a, b| {
            self.order_by
                .iter()
                .map(|k| a[k.output].compare(&b[k.output], k.descending, k.nulls_first))
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal)
        });
    }

    /// Cuts result rows at the `LIMIT`, if any.
    pub(crate) fn cut(&self, rows: &mut Vec<Vec<Value>>) {
        if let Some(limit) = self.limit {
            rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        }
    }
}

/// Default row order: group keys component by component, NULLs last.
fn compare_keys(a: &[Option<String>], b: &[Option<String>]) -> Ordering {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let x = x.as_ref().map_or(Value::Null, |s| Value::Text(s.clone()));
            let y = y.as_ref().map_or(Value::Null, |s| Value::Text(s.clone()));
            x.compare(&y, false, false)
        })
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_keys_round_trip_and_never_collide() {
        let keys: [&[Option<&str>]; 6] = [
            &[Some("a"), Some("b")],
            &[Some("a\",\"b")],
            &[None],
            &[Some("null")],
            &[Some(""), None],
            &[Some("[\"x\"]")],
        ];
        let encoded: Vec<String> = keys.iter().map(|k| encode_group_key(k)).collect();
        for (k, e) in keys.iter().zip(&encoded) {
            assert_ne!(e, "");
            let decoded = decode_group_key(e, k.len()).unwrap();
            let back: Vec<Option<&str>> = decoded.iter().map(|s| s.as_deref()).collect();
            assert_eq!(&back, k);
        }
        let mut unique = encoded.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), encoded.len());
        assert_eq!(decode_group_key("[\"a\"]", 2), None);
        assert_eq!(decode_group_key("", 0), None);
        assert_eq!(decode_group_key("{}", 1), None);
    }
}
