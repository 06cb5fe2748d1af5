//! Reading a member's table into the PSI table a plan asks for, through `cleanroom-data` (CSV
//! or Parquet, local or on object storage), streaming row by row: a 10-million-row file is
//! never held as text in memory.

use cleanroom_data::{ReadError, Row, Table as Source, TableSpec};
use cleanroom_psi::{ListProviderTable, ListQuerierTable, MatcherTable, ReceiverTable};
use cleanroom_rules::{DataError, MatcherRows, Plan, QuerierRows, ReceiverRows, Table, TableCheck};

use crate::server::{ServerConfig, ServerError};

/// A table that cannot be turned into the plan's table.
#[derive(Debug, thiserror::Error)]
pub enum DataFileError {
    /// The table cannot be read: not found, malformed CSV at a line, a repeated header name,
    /// an unsupported Parquet type, an object-store failure. The message names the location.
    #[error(transparent)]
    Read(Box<ReadError>),
    /// The rows do not fit the plan (missing column, non-integer value, ...).
    #[error("{location}: {source}")]
    Rows {
        /// The table's location.
        location: String,
        /// What the plan found, with its line (or row) and column.
        #[source]
        source: Box<DataError>,
    },
}

impl From<ReadError> for DataFileError {
    fn from(e: ReadError) -> Self {
        DataFileError::Read(Box::new(e))
    }
}

/// Runs `build` over the header, the columns' declared scales (see
/// [`Source::declared_scale`]) and the rows of the table at `spec`; a read error stops the
/// rows and is reported in preference to whatever `build` made of the truncated input.
fn with_rows<T>(
    spec: &TableSpec,
    build: impl FnOnce(&[String], &[Option<u8>], &mut dyn Iterator<Item = Row>) -> Result<T, DataError>,
) -> Result<T, DataFileError> {
    let mut source = Source::open(spec)?;
    let header = source.header().to_vec();
    let scales: Vec<Option<u8>> = (0..header.len())
        .map(|i| source.declared_scale(i))
        .collect();
    let location = source.location().to_owned();
    let mut failure = None;
    let built = {
        let mut rows = source.by_ref().map_while(|row| match row {
            Ok(row) => Some(row),
            Err(e) => {
                failure = Some(e);
                None
            }
        });
        build(&header, &scales, &mut rows)
    };
    if let Some(e) = failure {
        return Err(e.into());
    }
    built.map_err(|source| DataFileError::Rows {
        location,
        source: Box::new(source),
    })
}

/// The matcher's table of `plan` from the table at `spec` (the plan's matcher-side filter and
/// group columns applied).
pub fn matcher_table(plan: &Plan, spec: &TableSpec) -> Result<MatcherTable, DataFileError> {
    with_rows(spec, |header, _, rows| plan.matcher_table(header, rows))
}

/// [`matcher_table`]'s kept rows into `rows` (a job's bucket files) instead of a table.
pub fn matcher_rows(
    plan: &Plan,
    spec: &TableSpec,
    rows: &mut impl MatcherRows,
) -> Result<(), DataFileError> {
    with_rows(spec, |header, _, source| {
        plan.matcher_rows(header, source, rows)
    })
}

/// [`receiver_table`]'s kept rows into `rows` (a job's bucket files) instead of a table, the
/// file's scales adopted as there.
pub fn receiver_rows(
    plan: &mut Plan,
    spec: &TableSpec,
    rows: &mut impl ReceiverRows,
) -> Result<(), DataFileError> {
    with_rows(spec, |header, scales, source| {
        plan.adopt_file_scales(header, scales)?;
        plan.receiver_rows(header, source, rows)
    })
}

/// The receiver's table of `plan` from the table at `spec` (the plan's receiver-side filter,
/// group columns and value columns applied). A summed column the file types as `DECIMAL`
/// gives `plan` its scale when the rule declares none (see [`Plan::adopt_file_scales`]), so
/// the plan's result prints sums at the scale they were read at.
pub fn receiver_table(plan: &mut Plan, spec: &TableSpec) -> Result<ReceiverTable, DataFileError> {
    with_rows(spec, |header, scales, rows| {
        plan.adopt_file_scales(header, scales)?;
        plan.receiver_table(header, rows)
    })
}

/// The list provider's table of a list `plan` from the table at `spec` (the plan's
/// matcher-side filter applied; only the identifier and the matcher's list columns are read).
pub fn list_provider_table(
    plan: &Plan,
    spec: &TableSpec,
) -> Result<ListProviderTable, DataFileError> {
    with_rows(spec, |header, _, rows| {
        plan.list_provider_table(header, rows)
    })
}

/// [`list_provider_table`]'s kept rows into `rows` (a job's bucket files) instead of a table.
pub fn list_provider_rows(
    plan: &Plan,
    spec: &TableSpec,
    rows: &mut impl cleanroom_rules::ListProviderRows,
) -> Result<(), DataFileError> {
    with_rows(spec, |header, _, source| {
        plan.list_provider_rows(header, source, rows)
    })
}

/// The list querier's table of a list `plan` from the table at `spec`, with the kept rows the
/// result is joined from (the plan's receiver-side filter applied).
pub fn list_querier_table(
    plan: &Plan,
    spec: &TableSpec,
) -> Result<(ListQuerierTable, QuerierRows), DataFileError> {
    with_rows(spec, |header, _, rows| {
        plan.list_querier_table(header, rows)
    })
}

/// A chain filter's distinct identifiers from the table at `spec` (its local filter applied).
pub fn filter_table(
    filter: &cleanroom_rules::ChainFilter,
    spec: &TableSpec,
) -> Result<ListQuerierTable, DataFileError> {
    with_rows(spec, |header, _, rows| filter.identifiers(header, rows))
}

/// The header of the table at `spec` (each name once: a repeated name is an error).
pub fn header(spec: &TableSpec) -> Result<Vec<String>, DataFileError> {
    Ok(Source::open(spec)?.header().to_vec())
}

/// Reads the whole table at `spec` as the collaboration's `table` (see
/// [`Table::check_rows`]): every row well-formed, every column present, every summed value a
/// number of its scale (a Parquet `DECIMAL` column's own scale when the rule declares none,
/// see [`Table::check_typed_rows`]). Returns how many rows there are and how many are never
/// matched.
pub fn check_table(table: &Table, spec: &TableSpec) -> Result<TableCheck, DataFileError> {
    with_rows(spec, |header, scales, rows| {
        table.check_typed_rows(header, scales, rows)
    })
}

impl ServerConfig {
    /// Reads the whole of every table not checked yet in this process (see
    /// [`check_table`]), before any session: a bad line is the provider's to fix at
    /// start-up, naming file, line and column, not a partner's failed query later. Notes each
    /// table's never-matched rows for the audit and returns, for the log, one line per table
    /// checked now with its rows and never-matched rows.
    pub fn check_tables(&self) -> Result<Vec<String>, ServerError> {
        let mut log = Vec::new();
        for (name, spec) in &self.data {
            let Some(table) = self.collaboration.table(name) else {
                return Err(ServerError::UnknownTable(name.clone()));
            };
            if self.state.table_checked(name).is_some() {
                continue;
            }
            let check = check_table(table, spec).map_err(|source| ServerError::Data {
                table: name.clone(),
                source: Box::new(source),
            })?;
            log.push(format!(
                "table {name} ({spec}): {} rows, {} skipped (NULL or empty identifier, never \
                 matched)",
                check.rows, check.skipped_rows
            ));
            self.state
                .set_table_checked(name, check.rows, check.skipped_rows);
        }
        Ok(log)
    }
}
