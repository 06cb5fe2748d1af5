//! Reading CSV input files (RFC 4180, header row) with errors that name file, line and column.

use anyhow::{Context, Result, anyhow};
use std::path::{Path, PathBuf};

/// An open CSV file: its header, and its records with their line numbers.
pub struct CsvFile {
    path: PathBuf,
    header: Vec<String>,
    reader: csv::Reader<std::fs::File>,
}

impl CsvFile {
    /// Open `path` and read its header row.
    pub fn open(path: &Path) -> Result<Self> {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(file);
        let header = reader
            .headers()
            .with_context(|| format!("{}: cannot read the header row", path.display()))?
            .iter()
            .map(|h| h.trim().to_owned())
            .collect();
        Ok(Self {
            path: path.to_owned(),
            header,
            reader,
        })
    }

    /// The index of column `name`, or an error naming the file and the columns it has.
    pub fn column(&self, name: &str) -> Result<usize> {
        self.header.iter().position(|h| h == name).ok_or_else(|| {
            anyhow!(
                "{}: line 1: no column {name:?} (columns: {})",
                self.path.display(),
                self.header.join(", ")
            )
        })
    }

    /// Visit every record with its 1-based line number; stops at the first error, which names
    /// the file and line.
    pub fn for_each(
        &mut self,
        mut f: impl FnMut(u64, &csv::StringRecord) -> Result<()>,
    ) -> Result<u64> {
        let mut record = csv::StringRecord::new();
        let mut rows = 0;
        loop {
            let more = self
                .reader
                .read_record(&mut record)
                .with_context(|| format!("{}: malformed CSV", self.path.display()))?;
            if !more {
                return Ok(rows);
            }
            rows += 1;
            let line = record.position().map_or(rows + 1, |p| p.line());
            f(line, &record).with_context(|| format!("{}: line {line}", self.path.display()))?;
        }
    }
}

/// Parse a non-negative integer cell, naming the column on failure.
pub fn parse_amount(cell: &str, column: &str) -> Result<u64> {
    let cell = cell.trim();
    cell.parse::<u64>()
        .map_err(|_| anyhow!("column {column:?}: {cell:?} is not a non-negative integer"))
}
