//! `cleanroom audit`: print a server's audit log from its state database.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use cleanroom_service::{AuditEntry, Contribution, FailedAuthentication, StateDb, TableUse};

use super::output::{CsvCells, Format, render_csv, render_table};

/// Arguments of `cleanroom audit`.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// The server's state database.
    #[arg(long, value_name = "PATH")]
    state: PathBuf,
    /// Only this member's query attempts.
    #[arg(long, value_name = "NAME")]
    member: Option<String>,
    /// Only the query attempts of this collaboration (one state database may serve several).
    #[arg(long, value_name = "ID")]
    collaboration: Option<String>,
    /// Only the most recent N attempts.
    #[arg(long, value_name = "N")]
    last: Option<u32>,
    /// Output format (JSON: an array of objects).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Instead of the query attempts, the failed authentications: one row per minute, peer
    /// address, member (a valid token without its certificate) and reason, with its count.
    #[arg(long, conflicts_with = "member")]
    auth_failures: bool,
    /// Instead of one querier's attempts, the query log a contributing member is owed: the
    /// entries whose session used a table owned by this member, each with the tables and
    /// columns of the member's it read (attempts refused at admission read none).
    #[arg(
        long,
        value_name = "MEMBER",
        conflicts_with_all = ["member", "auth_failures"]
    )]
    contributor: Option<String>,
}

const FAILURE_COLUMNS: [&str; 7] = [
    "minute",
    "last_at",
    "collaboration_id",
    "peer",
    "member",
    "reason",
    "count",
];

/// Renders failed authentications in `format`.
fn render_failures(rows: &[FailedAuthentication], format: Format) -> Result<String> {
    let columns: Vec<String> = FAILURE_COLUMNS.iter().map(|c| (*c).to_owned()).collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.minute.clone(),
                r.last_at.clone(),
                r.collaboration_id.clone(),
                r.peer.clone(),
                r.member.clone(),
                r.reason.clone(),
                r.count.to_string(),
            ]
        })
        .collect();
    Ok(match format {
        Format::Json => {
            let objects: Vec<serde_json::Value> = cells
                .iter()
                .map(|row| {
                    let mut object = serde_json::Map::new();
                    for (column, cell) in FAILURE_COLUMNS.iter().zip(row) {
                        let value = if *column == "count" {
                            serde_json::Value::from(cell.parse::<u64>().unwrap_or(0))
                        } else {
                            serde_json::Value::from(cell.as_str())
                        };
                        object.insert((*column).to_owned(), value);
                    }
                    serde_json::Value::Object(object)
                })
                .collect();
            let mut json = serde_json::to_string_pretty(&objects)?;
            json.push('\n');
            json
        }
        Format::Csv => render_csv(&columns, &cells, CsvCells::Safe)?,
        Format::Table => render_table(&columns, &cells),
    })
}

const COLUMNS: [&str; 23] = [
    "started_at",
    "session_id",
    "collaboration_id",
    "member",
    "decision",
    "released_rows",
    "suppressed_rows",
    "matcher_rows",
    "receiver_rows",
    "matcher_skipped",
    "receiver_skipped",
    "bounded_identifiers",
    "bounded_disclosed",
    "messages_received",
    "messages_sent",
    "bytes_received",
    "bytes_sent",
    "payer",
    "compute_ms",
    "buckets",
    "buckets_done",
    "sql",
    "reason",
];

fn cells(entry: &AuditEntry) -> Vec<String> {
    vec![
        entry.started_at.clone(),
        entry.session_id.clone(),
        entry.collaboration_id.clone(),
        entry.member.clone(),
        entry.decision.to_string(),
        entry.released_rows.to_string(),
        entry.suppressed_rows.to_string(),
        entry.matcher_rows.to_string(),
        entry.receiver_rows.to_string(),
        entry.matcher_skipped.to_string(),
        entry.receiver_skipped.to_string(),
        entry.bounded_identifiers.to_string(),
        entry.bounded_disclosed.to_string(),
        entry.messages_received.to_string(),
        entry.messages_sent.to_string(),
        entry.bytes_received.to_string(),
        entry.bytes_sent.to_string(),
        entry.payer.clone(),
        entry.compute_ms.to_string(),
        entry.buckets.to_string(),
        entry.buckets_done.to_string(),
        entry.sql.clone(),
        entry.reason.clone(),
    ]
}

/// Renders audit entries in `format`.
pub fn render(entries: &[AuditEntry], format: Format) -> Result<String> {
    let columns: Vec<String> = COLUMNS.iter().map(|c| (*c).to_owned()).collect();
    Ok(match format {
        Format::Json => {
            let mut json = serde_json::to_string_pretty(entries)?;
            json.push('\n');
            json
        }
        Format::Csv => render_csv(
            &columns,
            &entries.iter().map(cells).collect::<Vec<_>>(),
            CsvCells::Safe,
        )?,
        Format::Table => {
            // One line per entry: the SQL and reason without line breaks.
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    cells(e)
                        .into_iter()
                        .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
                        .collect()
                })
                .collect();
            render_table(&columns, &rows)
        }
    })
}

/// `table(column, column) table(...)`: the tables of a contributor a session used.
fn used_cell(used: &[TableUse]) -> String {
    used.iter()
        .map(|u| format!("{}({})", u.table, u.columns.join(", ")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Renders a contributor's log in `format`: the audit columns and `used` (JSON: each entry's
/// fields and `used`, an array of `{member, table, columns}`).
pub fn render_contributions(rows: &[Contribution], format: Format) -> Result<String> {
    if format == Format::Json {
        let mut json = serde_json::to_string_pretty(rows)?;
        json.push('\n');
        return Ok(json);
    }
    let mut columns: Vec<String> = COLUMNS.iter().map(|c| (*c).to_owned()).collect();
    columns.push("used".to_owned());
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let mut cells = cells(&row.entry);
            cells.push(used_cell(&row.used));
            cells
        })
        .collect();
    Ok(match format {
        Format::Csv => render_csv(&columns, &cells, CsvCells::Safe)?,
        _ => {
            let one_line: Vec<Vec<String>> = cells
                .into_iter()
                .map(|row| {
                    row.into_iter()
                        .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
                        .collect()
                })
                .collect();
            render_table(&columns, &one_line)
        }
    })
}

/// Prints the audit log.
pub fn run(args: AuditArgs) -> Result<ExitCode> {
    // Its errors name the file.
    let state = StateDb::open_read_only(&args.state)?;
    if args.auth_failures {
        let mut rows = state.failed_authentications(None)?;
        if let Some(collaboration) = &args.collaboration {
            rows.retain(|r| &r.collaboration_id == collaboration);
        }
        if let Some(last) = args.last {
            rows.drain(..rows.len().saturating_sub(last as usize));
        }
        print!("{}", render_failures(&rows, args.format)?);
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(contributor) = &args.contributor {
        let mut rows = state.contributions(contributor, None)?;
        if let Some(collaboration) = &args.collaboration {
            rows.retain(|r| &r.entry.collaboration_id == collaboration);
        }
        if let Some(last) = args.last {
            rows.drain(..rows.len().saturating_sub(last as usize));
        }
        print!("{}", render_contributions(&rows, args.format)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut entries = state.entries(args.member.as_deref(), None)?;
    if let Some(collaboration) = &args.collaboration {
        entries.retain(|e| &e.collaboration_id == collaboration);
    }
    if let Some(last) = args.last {
        entries.drain(..entries.len().saturating_sub(last as usize));
    }
    print!("{}", render(&entries, args.format)?);
    Ok(ExitCode::SUCCESS)
}
