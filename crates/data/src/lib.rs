//! # cleanroom-data
//!
//! Tables where partners keep them, read the same way by every command: a [`Table`] is a
//! header and a stream of [`Row`]s of typed [`Cell`]s, each row with its [`Position`] (the
//! physical line of a CSV file, the row of a Parquet file) for error messages.
//!
//! - **Formats** ([`Format`]): CSV in any [`CsvDialect`] (delimiter, quote, header row; a UTF-8
//!   byte-order mark is dropped; line numbers are physical lines, also with CRLF endings and
//!   quoted line breaks), and Parquet (feature `parquet`: integer, string and `DECIMAL`
//!   columns, each `DECIMAL` with its own scale ([`Table::declared_scale`]); pages
//!   uncompressed or snappy, gzip, LZ4 or zstd; read one row group at a time so memory stays
//!   bounded by the row group; a panic of the Parquet reader on a malformed file is an error).
//! - **Locations** ([`Location`]): a local path, or `s3://bucket/key` (also `gs://`, `az://`;
//!   feature `object-store`) configured by the standard environment variables
//!   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
//!   `AWS_ALLOW_HTTP`, ...). A remote object is streamed to a temporary file first (memory
//!   stays bounded; the file is removed when the table is dropped).
//! - **Bucket files** ([`bucket_files`]): kept rows spilled to one file per bucket of a job,
//!   read back one bucket at a time, so a job holds one bucket in memory.
//! - **NULL** is decided here, once: a CSV field equal to one of the [`NullValues`] after
//!   trimming whitespace (by default empty, `NULL`, `null`, `\N`) and a Parquet NULL both become
//!   [`Cell::Null`], which is never matched as an identifier.
//! - **Headers** naming a column twice are refused: no command may silently pick one of them.
//!
//! The crate knows nothing of collaborations, plans or protocols; `cleanroom-rules` turns rows
//! into protocol tables. Without default features it is only the cell types and the CSV reader.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bucket_files;
mod cell;
mod csv_source;
mod options;
#[cfg(feature = "parquet")]
mod parquet_source;
#[cfg(feature = "object-store")]
mod remote;

use std::fmt;

pub use cell::{Cell, Decimal, DecimalError};
pub use options::{
    CsvDialect, Format, Location, NullValues, OptionError, SourceOptions, TableSpec,
};

/// Where a row is in its file: the physical line a CSV record starts on (1-based, the header
/// is line 1), or the 1-based data row of a file without lines (Parquet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// A CSV record starting on this physical line.
    Line(u64),
    /// The n-th data row (not counting a header).
    Row(u64),
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Line(n) => write!(f, "line {n}"),
            Position::Row(n) => write!(f, "row {n}"),
        }
    }
}

/// One row of a table: its cells in header order (a CSV record may have fewer or more fields
/// than the header; consumers check the columns they read) and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Where the row is, for messages.
    pub position: Position,
    /// The fields.
    pub cells: Vec<Cell>,
}

/// Why a table cannot be read. Every variant names the table's location; those about a row
/// name its [`Position`] and, where known, the column.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The file cannot be opened or read.
    #[error("{location}: {source}")]
    Io {
        /// The table's location.
        location: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A CSV record is malformed (or not UTF-8).
    #[error("{location}: {position}: {message}")]
    Csv {
        /// The table's location.
        location: String,
        /// Where the record is.
        position: Position,
        /// What is wrong with it.
        message: String,
    },
    /// The file has no header row although the dialect says it has one.
    #[error("{location}: the file is empty (no header row)")]
    Empty {
        /// The table's location.
        location: String,
    },
    /// The header names a column twice.
    #[error("{location}: line 1: the header names column {column:?} more than once")]
    DuplicateColumn {
        /// The table's location.
        location: String,
        /// The repeated name.
        column: String,
    },
    /// A Parquet column of a type cleanroom does not read.
    #[error(
        "{location}: column {column:?} has Parquet type {data_type}; cleanroom reads integer, \
         string and decimal columns"
    )]
    UnsupportedType {
        /// The table's location.
        location: String,
        /// The column.
        column: String,
        /// Its Arrow type.
        data_type: String,
    },
    /// A value cannot be represented as a cell (an unsigned 64-bit integer above `i64::MAX`).
    #[error("{location}: {position}, column {column:?}: {message}")]
    Value {
        /// The table's location.
        location: String,
        /// Where the row is.
        position: Position,
        /// The column.
        column: String,
        /// What is wrong.
        message: String,
    },
    /// The Parquet file is invalid or uses an encoding or compression not built in.
    #[error("{location}: {message}")]
    Parquet {
        /// The table's location.
        location: String,
        /// The Parquet reader's message.
        message: String,
    },
    /// The object store refused or failed (credentials, missing object, network).
    #[error("{location}: {message}")]
    Remote {
        /// The table's location.
        location: String,
        /// The object store's message.
        message: String,
    },
    /// A location or format this build cannot read (e.g. `s3://` without `object-store`).
    #[error("{location}: {message}")]
    Unsupported {
        /// The table's location.
        location: String,
        /// What is missing.
        message: String,
    },
}

/// The rows of one source, one at a time.
trait Source: Send {
    fn next_row(&mut self) -> Option<Result<Row, ReadError>>;
}

/// An open table: its header, then its rows in file order. Iterating yields each row or the
/// first error, after which it yields nothing more.
pub struct Table {
    location: String,
    header: Vec<String>,
    /// Per column, the scale the file declares (Parquet `DECIMAL(p, s)`), if any.
    scales: Vec<Option<u8>>,
    source: Box<dyn Source>,
    failed: bool,
    // A remote object's local copy lives as long as the table.
    #[cfg(feature = "object-store")]
    _download: Option<tempfile::TempPath>,
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("location", &self.location)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl Table {
    /// Opens the table `spec` describes and reads its header (a CSV header row, or the Parquet
    /// schema; `column_1`, `column_2`, ... for a CSV file without a header row). Fails when
    /// the location cannot be read, the format is unknown, the header repeats a name or a
    /// Parquet column has an unsupported type.
    pub fn open(spec: &TableSpec) -> Result<Table, ReadError> {
        let location = spec.location.to_string();
        let format = spec.format();
        #[cfg(feature = "object-store")]
        let (path, download) = match &spec.location {
            Location::Local(path) => (path.clone(), None),
            Location::Remote(url) => {
                let temp = remote::download(url)?;
                (temp.to_path_buf(), Some(temp))
            }
        };
        #[cfg(not(feature = "object-store"))]
        let path = match &spec.location {
            Location::Local(path) => path.clone(),
            Location::Remote(_) => {
                return Err(ReadError::Unsupported {
                    location,
                    message: "this build reads local files only (feature object-store)".into(),
                });
            }
        };
        let (header, scales, source): (Vec<String>, Vec<Option<u8>>, Box<dyn Source>) = match format
        {
            Format::Csv => {
                let (header, source) =
                    csv_source::open(&path, &location, &spec.options.csv, &spec.options.nulls)?;
                let scales = vec![None; header.len()];
                (header, scales, Box::new(source))
            }
            #[cfg(feature = "parquet")]
            Format::Parquet => {
                let (header, source) = parquet_source::open(&path, &location, &spec.options.nulls)?;
                let scales = source.scales();
                (header, scales, Box::new(source))
            }
            #[cfg(not(feature = "parquet"))]
            Format::Parquet => {
                return Err(ReadError::Unsupported {
                    location,
                    message: "this build reads CSV only (feature parquet)".into(),
                });
            }
        };
        check_unique(&header, &location)?;
        Ok(Table {
            location,
            header,
            scales,
            source,
            failed: false,
            #[cfg(feature = "object-store")]
            _download: download,
        })
    }

    /// The column names, in row order, each name once.
    pub fn header(&self) -> &[String] {
        &self.header
    }

    /// The number of digits after the decimal point the file itself declares for column
    /// `index`: `s` for a Parquet `DECIMAL(p, s)` column (whatever its physical type, `INT32`,
    /// `INT64` or `FIXED_LEN_BYTE_ARRAY`), whose cells are [`Cell::Decimal`] of that scale.
    /// `None` for every other column (all CSV columns; Parquet integer and string columns) and
    /// for an index past the header.
    pub fn declared_scale(&self, index: usize) -> Option<u8> {
        self.scales.get(index).copied().flatten()
    }

    /// Where the table is (a path or a URL), as error messages name it.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The index of column `name`, or an error naming the location and the columns there are.
    pub fn column(&self, name: &str) -> Result<usize, String> {
        self.header.iter().position(|h| h == name).ok_or_else(|| {
            format!(
                "{}: no column {name:?} (columns: {})",
                self.location,
                self.header.join(", ")
            )
        })
    }
}

impl Iterator for Table {
    type Item = Result<Row, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let next = self.source.next_row();
        self.failed = matches!(next, Some(Err(_)));
        next
    }
}

fn check_unique(header: &[String], location: &str) -> Result<(), ReadError> {
    let mut seen = std::collections::BTreeSet::new();
    for h in header {
        if !seen.insert(h.as_str()) {
            return Err(ReadError::DuplicateColumn {
                location: location.to_owned(),
                column: h.clone(),
            });
        }
    }
    Ok(())
}

/// Rows of text fields held in memory, numbered from 1 ([`Position::Row`]), each field
/// [`Cell::Null`] when it spells NULL by the default [`NullValues`] and [`Cell::Text`]
/// otherwise: what the CSV adapter yields for the same fields.
pub fn text_rows<I, R, S>(rows: I) -> impl Iterator<Item = Row>
where
    I: IntoIterator<Item = R>,
    R: IntoIterator<Item = S>,
    S: Into<String>,
{
    let nulls = NullValues::default();
    (1u64..).zip(rows).map(move |(n, fields)| Row {
        position: Position::Row(n),
        cells: fields
            .into_iter()
            .map(|f| {
                let f: String = f.into();
                if nulls.is_null(&f) {
                    Cell::Null
                } else {
                    Cell::Text(f)
                }
            })
            .collect(),
    })
}
