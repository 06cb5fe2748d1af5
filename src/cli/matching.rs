//! `cleanroom match`: offline matching of two tables through the real protocol messages.
//!
//! Rows whose identifier is NULL (empty, `NULL`, `null`, `\N`) or empty after normalization
//! are never matched; how many each side had is printed with the result.

use super::match_job::{Job, Sides};
use super::output::{CsvCells, Format, render_csv, render_table};
use super::table_input::{amount, cell, parse_spec};
use anyhow::{Context, Result};
use clap::Args;
use cleanroom_data::{Decimal, Table, TableSpec};
use cleanroom_psi::{Domain, Normalization};
use serde_json::json;
use std::collections::BTreeMap;
use std::process::ExitCode;

/// Arguments of `cleanroom match`.
#[derive(Args, Debug)]
pub struct MatchArgs {
    /// The matcher's table (learns only intersection sizes): a CSV or Parquet file or an
    /// `s3://` object, with options after commas (`,delimiter=semicolon`, `,format=parquet`,
    /// `,has_header=false`, `,quote=...`).
    #[arg(value_parser = parse_spec, value_name = "LEFT")]
    left: TableSpec,
    /// The receiver's table (may carry the value column to sum), as LEFT.
    #[arg(value_parser = parse_spec, value_name = "RIGHT")]
    right: TableSpec,
    /// The identifier column, present in both files.
    #[arg(long)]
    id_column: String,
    /// How identifiers are normalized before matching.
    #[arg(long, default_value = "none", value_parser = parse_normalization)]
    normalize: Normalization,
    /// Sum this column of RIGHT over rows whose identifier is in LEFT.
    #[arg(long, value_name = "RIGHT_COLUMN")]
    sum: Option<String>,
    /// Digits after the decimal point of the summed values (2 for amounts such as 12.50):
    /// the sum is exact and printed with this many decimals. By default 0 (integers), or the
    /// scale of a Parquet `DECIMAL` column; a different scale than the column's is refused.
    #[arg(long, value_name = "DIGITS", requires = "sum",
          value_parser = clap::value_parser!(u8).range(0..=18))]
    scale: Option<u8>,
    /// Report per group of this column of LEFT.
    #[arg(long, value_name = "LEFT_COLUMN")]
    group_by: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Match as a job of this many buckets: both tables are read once into bucket files (by a
    /// keyed hash of the identifier) and matched one bucket at a time, so that one bucket's
    /// sets are in memory at once; the result is the same (docs/scale-out.md).
    #[arg(long, value_name = "B", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    buckets: u32,
    /// With --buckets: where the bucket files go (a fresh directory inside it, removed at the
    /// end); by default under the system's temporary directory.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<std::path::PathBuf>,
}

fn parse_normalization(s: &str) -> Result<Normalization, String> {
    s.parse()
        .map_err(|e: cleanroom_psi::UnknownNormalization| e.to_string())
}

/// The domain offline matching hashes in: no collaboration, only the column.
const OFFLINE_COLLABORATION: &str = "cleanroom-offline-match";
/// Group key prefixes: every row is also in the whole-table group, so one session gives both
/// the overall intersection and the per-group ones.
const ALL: &str = "*";
const GROUP: &str = "g:";

/// Opens `spec`, naming it in the error.
fn open(spec: &TableSpec) -> Result<Table> {
    Ok(Table::open(spec)?)
}

/// The index of `column` in `table`.
fn column(table: &Table, column: &str) -> Result<usize> {
    table.column(column).map_err(anyhow::Error::msg)
}

/// The scale the summed column `name` (index `index` of `table`) is read at: `--scale` if
/// given, else the column's own (a Parquet `DECIMAL`), else 0. A `--scale` that differs from
/// the column's is refused: values are never rescaled silently.
fn sum_scale(table: &Table, index: usize, name: &str, given: Option<u8>) -> Result<u8> {
    match (given, table.declared_scale(index)) {
        (Some(given), Some(file)) if given != file => anyhow::bail!(
            "{}: column {name:?} is DECIMAL with scale {file}, but --scale {given} was given; \
             values are never rescaled: give --scale {file} or leave it out",
            table.location()
        ),
        (Some(scale), _) => Ok(scale),
        (None, Some(file)) if file > 18 => anyhow::bail!(
            "{}: column {name:?} is DECIMAL with scale {file}; sums are exact in units of at \
             most 10^-18",
            table.location()
        ),
        (None, file) => Ok(file.unwrap_or(0)),
    }
}

/// Run `cleanroom match`.
pub fn run(args: MatchArgs) -> Result<ExitCode> {
    let domain = Domain::new(OFFLINE_COLLABORATION, &args.id_column);
    if args.work_dir.is_some() && args.buckets == 1 {
        anyhow::bail!("--work-dir holds the bucket files of --buckets B (B > 1)");
    }
    let mut left = open(&args.left)?;
    let id_left = column(&left, &args.id_column)?;
    let group_col = args
        .group_by
        .as_deref()
        .map(|g| column(&left, g))
        .transpose()?;
    let mut right = open(&args.right)?;
    let id_right = column(&right, &args.id_column)?;
    let sum_col = args
        .sum
        .as_deref()
        .map(|s| column(&right, s).map(|i| (i, s)))
        .transpose()?;
    let scale = match sum_col {
        Some((i, name)) => sum_scale(&right, i, name, args.scale)?,
        None => 0,
    };
    let columns = usize::from(sum_col.is_some());
    let job = (args.buckets > 1)
        .then(|| {
            Job::new(
                &domain,
                args.buckets,
                args.normalize,
                args.work_dir.as_deref(),
            )
        })
        .transpose()?;
    let mut sides = Sides::new(job.as_ref(), args.normalize, columns)?;

    let mut group_keys = std::collections::BTreeSet::new();
    let (mut left_rows, mut left_skipped) = (0u64, 0u64);
    while let Some(row) = left.next() {
        let row = row?;
        left_rows += 1;
        let id = cell(&left, &row, id_left, &args.id_column)?.text();
        let Some(id) = id.filter(|id| args.normalize.apply(id).is_some()) else {
            left_skipped += 1;
            continue;
        };
        let at = |e| anyhow::anyhow!("{}: {}: {e}", left.location(), row.position);
        sides.push_left(ALL, &id).map_err(at)?;
        if let (Some(g), Some(name)) = (group_col, &args.group_by) {
            let key = cell(&left, &row, g, name)?
                .text()
                .map_or_else(|| "NULL".to_owned(), |t| t.into_owned());
            sides.push_left(&format!("{GROUP}{key}"), &id).map_err(at)?;
            group_keys.insert(key);
        }
    }

    let (mut right_rows, mut right_skipped) = (0u64, 0u64);
    while let Some(row) = right.next() {
        let row = row?;
        right_rows += 1;
        let at = |e: anyhow::Error| anyhow::anyhow!("{}: {}: {e}", right.location(), row.position);
        let values = match sum_col {
            Some((i, name)) => {
                vec![amount(cell(&right, &row, i, name)?, name, scale).map_err(at)?]
            }
            None => vec![],
        };
        let id = cell(&right, &row, id_right, &args.id_column)?.text();
        let Some(id) = id.filter(|id| args.normalize.apply(id).is_some()) else {
            right_skipped += 1;
            continue;
        };
        sides.push_right(&id, &values).map_err(at)?;
    }

    let mut groups = vec![ALL.to_owned()];
    groups.extend(group_keys.iter().map(|k| format!("{GROUP}{k}")));
    let report = sides.run(&domain, &groups).context("matching failed")?;
    let mut by_group: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for g in &report.outcome.groups {
        by_group.insert(
            &g.matcher_group,
            (g.intersection_size, g.sums.first().copied().unwrap_or(0)),
        );
    }
    let (total, total_sum) = by_group.get(ALL).copied().unwrap_or((0, 0));
    let groups: Vec<(String, u64, u64)> = group_keys
        .iter()
        .map(|k| {
            let (n, s) = by_group
                .get(format!("{GROUP}{k}").as_str())
                .copied()
                .unwrap_or((0, 0));
            (k.clone(), n, s)
        })
        .collect();

    // A sum with a scale is exact and printed with its decimals (a JSON string, like query's).
    let sum_json = |units: u64| match scale {
        0 => json!(units),
        scale => json!(
            Decimal {
                units: i128::from(units),
                scale
            }
            .to_string()
        ),
    };
    let sum_text = |units: u64| {
        Decimal {
            units: i128::from(units),
            scale,
        }
        .to_string()
    };
    match args.format {
        Format::Json => {
            let mut out = json!({
                "left_rows": left_rows,
                "left_skipped": left_skipped,
                "right_rows": right_rows,
                "right_skipped": right_skipped,
                "skipped_reason": "NULL or empty identifier (never matched)",
                "intersection_size": total,
            });
            if sum_col.is_some() {
                out["sum"] = sum_json(total_sum);
            }
            if group_col.is_some() {
                out["groups"] = groups
                    .iter()
                    .map(|(k, n, s)| {
                        let mut g = json!({"key": k, "intersection_size": n});
                        if sum_col.is_some() {
                            g["sum"] = sum_json(*s);
                        }
                        g
                    })
                    .collect();
            }
            println!("{out}");
        }
        Format::Table | Format::Csv => {
            let mut columns = vec!["group".to_owned(), "intersection_size".to_owned()];
            if sum_col.is_some() {
                columns.push("sum".to_owned());
            }
            let row = |k: &str, n: u64, s: u64| {
                let mut r = vec![k.to_owned(), n.to_string()];
                if sum_col.is_some() {
                    r.push(sum_text(s));
                }
                r
            };
            let mut rows: Vec<Vec<String>> =
                groups.iter().map(|(k, n, s)| row(k, *n, *s)).collect();
            rows.push(row("(all)", total, total_sum));
            if args.format == Format::Csv {
                print!("{}", render_csv(&columns, &rows, CsvCells::Safe)?);
                if left_skipped + right_skipped > 0 {
                    eprintln!(
                        "skipped (NULL or empty identifier, never matched): {left_skipped} in {}, \
                         {right_skipped} in {}",
                        args.left, args.right
                    );
                }
            } else {
                println!(
                    "{} rows in {}, {} in {}; identifiers matched on {:?} ({})",
                    left_rows, args.left, right_rows, args.right, args.id_column, args.normalize
                );
                if left_skipped + right_skipped > 0 {
                    println!(
                        "skipped (NULL or empty identifier, never matched): {left_skipped} in {}, \
                         {right_skipped} in {}",
                        args.left, args.right
                    );
                }
                print!("{}", render_table(&columns, &rows));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
