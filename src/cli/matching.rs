//! `cleanroom match`: offline matching of two CSV files through the real protocol messages.

use super::csv_input::{CsvFile, parse_amount};
use super::output::{Format, render_csv, render_table};
use anyhow::{Context, Result};
use clap::Args;
use cleanroom_psi::{Domain, MatcherTable, Normalization, ReceiverTable, match_offline};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `cleanroom match`.
#[derive(Args, Debug)]
pub struct MatchArgs {
    /// The matcher's table (learns only intersection sizes).
    left: PathBuf,
    /// The receiver's table (may carry the value column to sum).
    right: PathBuf,
    /// The identifier column, present in both files.
    #[arg(long)]
    id_column: String,
    /// How identifiers are normalized before matching.
    #[arg(long, default_value = "none", value_parser = parse_normalization)]
    normalize: Normalization,
    /// Sum this column of RIGHT over rows whose identifier is in LEFT.
    #[arg(long, value_name = "RIGHT_COLUMN")]
    sum: Option<String>,
    /// Report per group of this column of LEFT.
    #[arg(long, value_name = "LEFT_COLUMN")]
    group_by: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
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

/// Run `cleanroom match`.
pub fn run(args: MatchArgs) -> Result<ExitCode> {
    let mut left = CsvFile::open(&args.left)?;
    let id_left = left.column(&args.id_column)?;
    let group_col = args
        .group_by
        .as_deref()
        .map(|g| left.column(g))
        .transpose()?;
    let mut matcher = MatcherTable::new(args.normalize);
    let mut group_keys = std::collections::BTreeSet::new();
    let left_rows = left.for_each(|_, rec| {
        let id = &rec[id_left];
        matcher.push(ALL, id)?;
        if let Some(g) = group_col {
            let key = rec[g].to_owned();
            matcher.push(&format!("{GROUP}{key}"), id)?;
            group_keys.insert(key);
        }
        Ok(())
    })?;

    let mut right = CsvFile::open(&args.right)?;
    let id_right = right.column(&args.id_column)?;
    let sum_col = args
        .sum
        .as_deref()
        .map(|s| right.column(s).map(|i| (i, s)))
        .transpose()?;
    let mut receiver = ReceiverTable::new(args.normalize, usize::from(sum_col.is_some()))?;
    let right_rows = right.for_each(|_, rec| {
        let values = match sum_col {
            Some((i, name)) => vec![parse_amount(&rec[i], name)?],
            None => vec![],
        };
        receiver.push("", &rec[id_right], &values)?;
        Ok(())
    })?;

    let domain = Domain::new(OFFLINE_COLLABORATION, &args.id_column);
    let report = match_offline(&domain, matcher, receiver, 1).context("matching failed")?;
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

    match args.format {
        Format::Json => {
            let mut out = json!({
                "left_rows": left_rows,
                "right_rows": right_rows,
                "intersection_size": total,
            });
            if sum_col.is_some() {
                out["sum"] = json!(total_sum);
            }
            if group_col.is_some() {
                out["groups"] = groups
                    .iter()
                    .map(|(k, n, s)| {
                        let mut g = json!({"key": k, "intersection_size": n});
                        if sum_col.is_some() {
                            g["sum"] = json!(s);
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
                    r.push(s.to_string());
                }
                r
            };
            let mut rows: Vec<Vec<String>> =
                groups.iter().map(|(k, n, s)| row(k, *n, *s)).collect();
            rows.push(row("(all)", total, total_sum));
            if args.format == Format::Csv {
                print!("{}", render_csv(&columns, &rows)?);
            } else {
                println!(
                    "{} rows in {}, {} in {}; identifiers matched on {:?} ({})",
                    left_rows,
                    args.left.display(),
                    right_rows,
                    args.right.display(),
                    args.id_column,
                    args.normalize
                );
                print!("{}", render_table(&columns, &rows));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
