//! Reading a member's CSV file into the PSI table a plan asks for, streaming row by row (a
//! 10-million-row file is never held as text in memory).

use std::path::{Path, PathBuf};

use cleanroom_psi::{ListProviderTable, ListQuerierTable, MatcherTable, ReceiverTable};
use cleanroom_rules::{DataError, Plan, QuerierRows};

/// A data file that cannot be turned into the plan's table.
#[derive(Debug, thiserror::Error)]
pub enum DataFileError {
    /// The file cannot be opened or its header read.
    #[error("{path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: csv::Error,
    },
    /// A record is not valid CSV (or not UTF-8).
    #[error("{path}: {source}")]
    Record {
        /// The file.
        path: PathBuf,
        /// What went wrong, with its line.
        #[source]
        source: csv::Error,
    },
    /// The rows do not fit the plan (missing column, non-integer value, ...).
    #[error("{path}: {source}")]
    Rows {
        /// The file.
        path: PathBuf,
        /// What the plan found, with its row and column.
        #[source]
        source: DataError,
    },
}

/// Runs `build` over the header and records of the CSV file at `path`; a CSV error stops the
/// rows and is reported in preference to whatever `build` made of the truncated input.
fn with_rows<T>(
    path: &Path,
    build: impl FnOnce(&[String], &mut dyn Iterator<Item = Vec<String>>) -> Result<T, DataError>,
) -> Result<T, DataFileError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .map_err(|source| DataFileError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let header: Vec<String> = reader
        .headers()
        .map_err(|source| DataFileError::Open {
            path: path.to_path_buf(),
            source,
        })?
        .iter()
        .map(str::to_owned)
        .collect();
    let mut failure = None;
    let built = {
        let mut rows = reader.records().map_while(|record| match record {
            Ok(record) => Some(record.iter().map(str::to_owned).collect::<Vec<String>>()),
            Err(e) => {
                failure = Some(e);
                None
            }
        });
        build(&header, &mut rows)
    };
    if let Some(source) = failure {
        return Err(DataFileError::Record {
            path: path.to_path_buf(),
            source,
        });
    }
    built.map_err(|source| DataFileError::Rows {
        path: path.to_path_buf(),
        source,
    })
}

/// The matcher's table of `plan` from the CSV file at `path` (the plan's matcher-side filter
/// and group columns applied).
pub fn matcher_table(plan: &Plan, path: &Path) -> Result<MatcherTable, DataFileError> {
    with_rows(path, |header, rows| plan.matcher_table(header, rows))
}

/// The receiver's table of `plan` from the CSV file at `path` (the plan's receiver-side
/// filter, group columns and value columns applied).
pub fn receiver_table(plan: &Plan, path: &Path) -> Result<ReceiverTable, DataFileError> {
    with_rows(path, |header, rows| plan.receiver_table(header, rows))
}

/// The list provider's table of a list `plan` from the CSV file at `path` (the plan's
/// matcher-side filter applied; only the identifier and the matcher's list columns are read).
pub fn list_provider_table(plan: &Plan, path: &Path) -> Result<ListProviderTable, DataFileError> {
    with_rows(path, |header, rows| plan.list_provider_table(header, rows))
}

/// The list querier's table of a list `plan` from the CSV file at `path`, with the kept rows
/// the result is joined from (the plan's receiver-side filter applied).
pub fn list_querier_table(
    plan: &Plan,
    path: &Path,
) -> Result<(ListQuerierTable, QuerierRows), DataFileError> {
    with_rows(path, |header, rows| plan.list_querier_table(header, rows))
}

/// The header of the CSV file at `path`.
pub fn header(path: &Path) -> Result<Vec<String>, DataFileError> {
    let mut reader = csv::Reader::from_path(path).map_err(|source| DataFileError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let header = reader.headers().map_err(|source| DataFileError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(header.iter().map(str::to_owned).collect())
}
