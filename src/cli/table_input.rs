//! Members' tables as the commands name them: `LOCATION[,key=value]...`, read through
//! `cleanroom-data` (CSV or Parquet, a local path or `s3://`), with errors that name the
//! location, the line (or row) and the column.

use anyhow::{Result, anyhow};
use cleanroom_data::{Cell, Decimal, Row, SourceOptions, Table, TableSpec};

/// Parses a command-line table: a path or object URL, then `,format=parquet`,
/// `,delimiter=semicolon`, `,quote=...`, `,has_header=false` as needed.
pub fn parse_spec(s: &str) -> Result<TableSpec, String> {
    TableSpec::parse_with(s, SourceOptions::default()).map_err(|e| e.to_string())
}

/// The cell of column `index` (named `column`) of `row`, or an error naming the location,
/// the line and the column when the row is too short.
pub fn cell<'r>(table: &Table, row: &'r Row, index: usize, column: &str) -> Result<&'r Cell> {
    row.cells.get(index).ok_or_else(|| {
        anyhow!(
            "{}: {}: no field for column {column:?} (the row has {} fields)",
            table.location(),
            row.position,
            row.cells.len()
        )
    })
}

/// A value cell as a non-negative amount in units of `10^-scale` (NULL counts as 0): an
/// integer, a decimal text with at most `scale` digits after the point, a Parquet integer,
/// or a Parquet decimal of exactly that scale. The error names the column and the value.
pub fn amount(cell: &Cell, column: &str, scale: u8) -> Result<u64> {
    let what = || match scale {
        0 => "a non-negative integer".to_owned(),
        s => format!("a non-negative decimal with at most {s} digits after the point"),
    };
    let decimal = match cell {
        Cell::Null => return Ok(0),
        Cell::Int(i) => Decimal {
            units: i128::from(*i),
            scale: 0,
        }
        .rescale(scale),
        // A typed decimal is read at its own scale only (see `matching::sum_scale`).
        Cell::Decimal(d) if d.scale == scale => Ok(*d),
        Cell::Decimal(d) => Err(cleanroom_data::DecimalError::TooPrecise {
            value: d.to_string(),
            scale,
        }),
        Cell::Text(t) => Decimal::parse(t, scale),
    };
    let value = || cell.text().unwrap_or_default().into_owned();
    let d = decimal.map_err(|_| anyhow!("column {column:?}: {:?} is not {}", value(), what()))?;
    u64::try_from(d.units)
        .map_err(|_| anyhow!("column {column:?}: {:?} is not {}", value(), what()))
}
