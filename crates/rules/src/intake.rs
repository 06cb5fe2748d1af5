//! Checking a whole table before any session uses it.
//!
//! A member serving its table reads it once at start-up with [`Table::check_rows`], so that a
//! bad line 5,001 stops the service with the file, line and column named, instead of failing
//! a partner's query later with nothing the partner can act on.

use cleanroom_data::Row;

use crate::collaboration::{AnalysisRule, Table};
use crate::exec::{DataError, amount, settle_scale, texts};
use crate::value::is_null;

/// What reading a whole table found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableCheck {
    /// Data rows read.
    pub rows: u64,
    /// Rows whose identifier is NULL (in any declared spelling) or empty after the table's
    /// normalization: they are never matched, in any query.
    pub skipped_rows: u64,
}

impl Table {
    /// Reads every row of this table's data: the header must name each of the table's columns
    /// exactly once; every row must have a field for each of them; every summed column (`SUM`
    /// or `AVG` in the aggregation rule) must hold NULL or a non-negative number with at most
    /// its declared scale of digits after the point. Counts the rows and those never matched.
    /// The first problem is returned, naming the row's position and the column.
    pub fn check_rows(
        &self,
        header: &[String],
        rows: impl Iterator<Item = Row>,
    ) -> Result<TableCheck, DataError> {
        self.check_typed_rows(header, &[], rows)
    }

    /// [`Table::check_rows`] for a file whose columns may declare their own scale
    /// (`scales[i]` for `header[i]`, a Parquet `DECIMAL(p, s)` column's `s`): a summed column
    /// whose rule declares no scale is checked at the file's, and one whose declared scale
    /// differs from the file's is refused (as is an undeclared one under differential
    /// privacy), as [`Plan::adopt_file_scales`](crate::Plan::adopt_file_scales) decides for a
    /// query.
    pub fn check_typed_rows(
        &self,
        header: &[String],
        scales: &[Option<u8>],
        rows: impl Iterator<Item = Row>,
    ) -> Result<TableCheck, DataError> {
        let mut index = Vec::with_capacity(self.columns().len());
        for column in self.columns() {
            let mut hits = header.iter().enumerate().filter(|(_, h)| *h == column);
            match (hits.next(), hits.next()) {
                (Some((i, _)), None) => index.push(i),
                (None, _) => {
                    return Err(DataError::MissingColumn {
                        table: self.name().to_owned(),
                        column: column.clone(),
                    });
                }
                (Some(_), Some(_)) => {
                    return Err(DataError::DuplicateColumn {
                        table: self.name().to_owned(),
                        column: column.clone(),
                    });
                }
            }
        }
        let position = |c: &str| self.columns().iter().position(|x| x == c);
        let identifier = position(self.identifier().column())
            .map(|p| index[p])
            .expect("the identifier is a column of its table");
        let mut summed: Vec<(usize, &str, u8)> = Vec::new();
        if let AnalysisRule::Aggregation(rule) = self.rule() {
            let private = !rule.sum_bounds().is_empty();
            for (c, f) in rule.aggregate_columns() {
                if !f.iter().any(|f| f.sums()) {
                    continue;
                }
                let Some(p) = position(c) else { continue };
                let i = index[p];
                let file = scales.get(i).copied().flatten();
                let scale = settle_scale(self.name(), c, rule.scale(c), file, private)?;
                summed.push((i, c.as_str(), scale));
            }
        }
        let normalization = self.identifier().normalization();
        let mut check = TableCheck::default();
        for row in rows {
            let (at, row) = texts(row);
            check.rows += 1;
            for (column, &i) in self.columns().iter().zip(&index) {
                if i >= row.len() {
                    return Err(DataError::ShortRow {
                        table: self.name().to_owned(),
                        at,
                        column: column.clone(),
                        fields: row.len(),
                    });
                }
            }
            for &(i, column, scale) in &summed {
                let cell = &row[i];
                if !is_null(cell) && amount(cell, scale).is_none() {
                    return Err(DataError::NotAnInteger {
                        table: self.name().to_owned(),
                        at,
                        column: column.to_owned(),
                        value: cell.clone(),
                        what: match scale {
                            0 => "integer".to_owned(),
                            s => format!("decimal with at most {s} digits after the point"),
                        },
                    });
                }
            }
            if normalization.apply(&row[identifier]).is_none() {
                check.skipped_rows += 1;
            }
        }
        Ok(check)
    }
}
