//! Running a list plan: rows in, labeled-PSI inputs out; the list outcome in, result rows out.
//!
//! The matcher (data provider) keeps the rows that pass its filter and hands each one's
//! identifier and [list columns](crate::SidePlan::list_columns) to
//! [`ListProviderTable`]: those values, and no other column, travel encrypted to the receiver,
//! which can open only the ones of identifiers it holds too. The receiver keeps the rows that
//! pass its own filter; their identifiers go into [`ListQuerierTable`] and their own list
//! columns stay in [`QuerierRows`], which [`ListPlan::list_result`] joins with the opened rows
//! exactly as `a JOIN b ON a.id = b.id` would: every pair of a receiver row and a matcher row
//! with the same normalized identifier gives one output row.
//!
//! Row order: by the output columns left to right (NULLs last), so the order of either side's
//! data shows nowhere; then `ORDER BY`, then `DISTINCT` keeps one of each row, then `LIMIT`.

use std::cmp::Ordering;

use cleanroom_psi::{ListOutcome, ListProviderTable, ListQuerierTable};

use crate::exec::{DataError, Located, PlaceError, PlanKindError, ResultError, ResultTable, texts};
use crate::plan::{ListPlan, Plan, Role};
use crate::value::{Value, is_null};
use cleanroom_data::Row;

/// Where a list provider's kept rows go: its labeled-PSI table, or a partition of them into
/// buckets (a job of buckets, each loaded into a table of its own when its turn comes).
pub trait ListProviderRows {
    /// One kept row: `raw_identifier` (not normalized yet) and one value per list column.
    fn push(&mut self, raw_identifier: &str, values: &[&str]) -> Result<(), PlaceError>;
}

impl ListProviderRows for ListProviderTable {
    fn push(&mut self, raw_identifier: &str, values: &[&str]) -> Result<(), PlaceError> {
        Ok(ListProviderTable::push(self, raw_identifier, values).map(drop)?)
    }
}

/// The receiver's rows that take part in a list query: per kept row, its normalized
/// identifier and the values of the receiver's own list columns. They never leave the
/// receiver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuerierRows {
    rows: Vec<(String, Vec<String>)>,
}

impl QuerierRows {
    /// Rows kept (passing the filter, with a usable identifier).
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row was kept.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

fn cell_value(cell: &str) -> Value {
    if is_null(cell) {
        Value::Null
    } else {
        Value::Text(cell.to_owned())
    }
}

impl ListPlan {
    /// Builds the matcher's labeled-PSI table of a list plan from its rows: applies the
    /// matcher-side filter and reads the identifier and the matcher's list columns of each kept
    /// row (cells as they are; an empty cell is NULL in the result). `header` names the columns
    /// of `rows`; columns the plan does not read may be absent. Errors name the table, the
    /// 1-based row and the column.
    pub fn list_provider_table(
        &self,
        header: &[String],
        rows: impl Iterator<Item = Row>,
    ) -> Result<ListProviderTable, DataError> {
        let side = &self.join.matcher;
        let mut table = ListProviderTable::new(side.normalization, side.list_columns.len())
            .map_err(|source| DataError::Table {
                table: side.table.clone(),
                source,
            })?;
        self.list_provider_rows(header, rows, &mut table)?;
        Ok(table)
    }

    /// [`list_provider_table`](Self::list_provider_table)'s kept rows into `into` (a job's
    /// bucket files) instead of a table: the same filter, the same cells, the same errors.
    pub fn list_provider_rows(
        &self,
        header: &[String],
        rows: impl Iterator<Item = Row>,
        into: &mut impl ListProviderRows,
    ) -> Result<(), DataError> {
        let side = &self.join.matcher;
        let located = Located::new(side, header)?;
        for row in rows {
            let (at, row) = texts(row);
            if !located.keeps(&row, at)? {
                continue;
            }
            let identifier = located.cell(&row, located.identifier, at)?;
            let values = located
                .lists
                .iter()
                .map(|&index| located.cell(&row, index, at))
                .collect::<Result<Vec<&str>, _>>()?;
            into.push(identifier, &values)
                .map_err(|error| DataError::placing(&side.table, at, error))?;
        }
        Ok(())
    }

    /// Builds the receiver's side of a list plan from its rows: applies the receiver-side
    /// filter; the identifiers of the kept rows form the labeled-PSI table, and each kept row's
    /// normalized identifier and own list columns are kept for [`ListPlan::list_result`]. Rows
    /// whose identifier is empty after normalization never match and are not kept.
    pub fn list_querier_table(
        &self,
        header: &[String],
        rows: impl Iterator<Item = Row>,
    ) -> Result<(ListQuerierTable, QuerierRows), DataError> {
        let side = &self.join.receiver;
        let located = Located::new(side, header)?;
        let mut table = ListQuerierTable::new(side.normalization);
        let mut kept = QuerierRows::default();
        for row in rows {
            let (at, row) = texts(row);
            if !located.keeps(&row, at)? {
                continue;
            }
            let identifier = located.cell(&row, located.identifier, at)?;
            let mut values = Vec::with_capacity(located.lists.len());
            for &index in &located.lists {
                values.push(located.cell(&row, index, at)?.to_owned());
            }
            table.push(identifier);
            if let Some(id) = side.normalization.apply(identifier) {
                kept.rows.push((id, values));
            }
        }
        Ok((table, kept))
    }

    /// Turns the receiver's list outcome into the result: one row per pair of a kept receiver
    /// row and a matcher row with the same identifier, with the outputs in `SELECT` order (an
    /// empty cell is NULL), sorted by the outputs left to right, then by `ORDER BY`; `DISTINCT`
    /// keeps one of equal rows; then cut at `LIMIT`. `suppressed_rows` is 0: list rules have no
    /// threshold. Fails when a matcher row does not have one value
    /// per matcher list column (a peer that does not follow the plan).
    pub fn list_result(
        &self,
        querier: &QuerierRows,
        outcome: &ListOutcome,
    ) -> Result<ResultTable, ResultError> {
        let expected = self.join.matcher.list_columns.len();
        if let Some(bad) = outcome
            .matches
            .iter()
            .flat_map(|m| &m.rows)
            .find(|r| r.len() != expected)
        {
            return Err(ResultError::ListRowWidth {
                expected,
                got: bad.len(),
            });
        }
        let mut rows: Vec<Vec<Value>> = Vec::new();
        for (identifier, own) in &querier.rows {
            let Some(theirs) = outcome.rows_of(identifier) else {
                continue;
            };
            for their in theirs {
                rows.push(
                    self.outputs
                        .iter()
                        .map(|output| match output.value.role {
                            Role::Receiver => cell_value(&own[output.value.index]),
                            Role::Matcher => cell_value(&their[output.value.index]),
                        })
                        .collect(),
                );
            }
        }
        let by_columns = |a: &Vec<Value>, b: &Vec<Value>| {
            a.iter()
                .zip(b)
                .map(|(x, y)| x.compare(y, false, false))
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal)
        };
        rows.sort_by(by_columns);
        self.join.order(&mut rows);
        if self.distinct {
            // Equal rows are adjacent: the order by all columns puts them together, and the
            // stable ORDER BY sort keeps them together.
            rows.dedup();
        }
        self.join.cut(&mut rows);
        Ok(ResultTable {
            columns: self.outputs.iter().map(|o| o.name.clone()).collect(),
            rows,
            suppressed_rows: 0,
            bounded_identifiers: None,
        })
    }
}

impl Plan {
    /// [`ListPlan::list_provider_table`]; an aggregation plan has none
    /// ([`DataError::PlanKind`]: its matcher builds [`Plan::matcher_table`]).
    pub fn list_provider_table(
        &self,
        header: &[String],
        rows: impl Iterator<Item = Row>,
    ) -> Result<ListProviderTable, DataError> {
        self.list_for("list provider")?
            .list_provider_table(header, rows)
    }

    /// [`ListPlan::list_provider_rows`]; an aggregation plan has none
    /// ([`DataError::PlanKind`]).
    pub fn list_provider_rows(
        &self,
        header: &[String],
        rows: impl Iterator<Item = Row>,
        into: &mut impl ListProviderRows,
    ) -> Result<(), DataError> {
        self.list_for("list provider")?
            .list_provider_rows(header, rows, into)
    }

    /// [`ListPlan::list_querier_table`]; an aggregation plan has none
    /// ([`DataError::PlanKind`]: its receiver builds [`Plan::receiver_table`]).
    pub fn list_querier_table(
        &self,
        header: &[String],
        rows: impl Iterator<Item = Row>,
    ) -> Result<(ListQuerierTable, QuerierRows), DataError> {
        self.list_for("list querier")?
            .list_querier_table(header, rows)
    }

    /// [`ListPlan::list_result`]; fails with [`ResultError::ProtocolMismatch`] for an
    /// aggregation plan.
    pub fn list_result(
        &self,
        querier: &QuerierRows,
        outcome: &ListOutcome,
    ) -> Result<ResultTable, ResultError> {
        match self {
            Plan::List(plan) => plan.list_result(querier, outcome),
            Plan::Aggregate(_) => Err(ResultError::ProtocolMismatch {
                plan: "aggregation",
                got: "list",
            }),
        }
    }

    fn list_for(&self, table: &'static str) -> Result<&ListPlan, PlanKindError> {
        self.as_list().ok_or(PlanKindError {
            plan: "aggregation",
            table,
        })
    }
}
