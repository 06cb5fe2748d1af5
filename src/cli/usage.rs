//! `cleanroom usage`: what the sessions of a server used, per UTC day and payer, with totals per
//! payer and overall, priced when the collaboration declares prices.
//!
//! The figures come from the server's state database ([`StateDb::usage`]): sessions that were
//! charged (admitted) and have ended. Prices come from the collaboration file given with
//! `--config` (its `[collaboration.pricing]`, applied to every line at the time of the report),
//! which also limits the report to that collaboration.
//!
//! The JSON form is one object, stable: `since` and `collaboration_id` (the filters, or null),
//! `currency` (null without prices), `days` (one object per day, collaboration and payer),
//! `payers` (one per payer over every day) and `total`. Every line holds `sessions`,
//! `rows_read` (`matcher_rows` + `receiver_rows`), `bytes` (`bytes_received` + `bytes_sent`),
//! `compute_seconds`, `buckets` and `price` (null without prices).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, ValueEnum};
use cleanroom_rules::{Collaboration, Pricing};
use cleanroom_service::{StateDb, UsageLine};
use serde::Serialize;

use super::output::render_table;

/// Arguments of `cleanroom usage`.
#[derive(Args, Debug)]
pub struct UsageArgs {
    /// The server's state database.
    #[arg(long, value_name = "PATH")]
    state: PathBuf,
    /// Only sessions started on this UTC day or later (YYYY-MM-DD).
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_day)]
    since: Option<String>,
    /// The collaboration file: only its sessions, priced by its `[collaboration.pricing]`.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Output format (JSON: one object, see `cleanroom usage --help`).
    #[arg(long, value_enum, default_value_t = UsageFormat::Table)]
    format: UsageFormat,
}

/// How `cleanroom usage` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum UsageFormat {
    /// Aligned columns for a terminal.
    Table,
    /// One JSON object on stdout.
    Json,
}

/// A UTC day as `YYYY-MM-DD`, checked (month 1–12, day 1–31).
fn parse_day(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let shaped = bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit());
    let in_range = shaped
        && matches!(text[5..7].parse::<u8>(), Ok(1..=12))
        && matches!(text[8..10].parse::<u8>(), Ok(1..=31));
    if in_range {
        Ok(text.to_owned())
    } else {
        Err(format!("expected a UTC day as YYYY-MM-DD, got {text:?}"))
    }
}

/// One line of the report: a day's (or a payer's, or the overall) figures and price.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportLine {
    /// The UTC day; absent in totals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    /// The collaboration; absent in totals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collaboration_id: Option<String>,
    /// The member who pays; absent in the overall total.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// Sessions.
    pub sessions: u64,
    /// Rows read, both sides together.
    pub rows_read: u64,
    /// Rows of the server's table read.
    pub matcher_rows: u64,
    /// Rows of the queriers' tables, as declared.
    pub receiver_rows: u64,
    /// Bytes on the wire, both directions together.
    pub bytes: u64,
    /// Bytes received from the clients.
    pub bytes_received: u64,
    /// Bytes sent to the clients.
    pub bytes_sent: u64,
    /// Seconds of the server's compute sections.
    pub compute_seconds: f64,
    /// Buckets of work.
    pub buckets: u64,
    /// The price in the report's currency; `None` without prices.
    pub price: Option<f64>,
}

impl ReportLine {
    fn of(line: &UsageLine, pricing: Option<&Pricing>) -> ReportLine {
        // Milliseconds as seconds: exact far beyond any real total.
        #[allow(clippy::cast_precision_loss)]
        let compute_seconds = line.compute_ms as f64 / 1000.0;
        ReportLine {
            day: None,
            collaboration_id: None,
            payer: None,
            sessions: line.sessions,
            rows_read: line.rows_read(),
            matcher_rows: line.matcher_rows,
            receiver_rows: line.receiver_rows,
            bytes: line.bytes(),
            bytes_received: line.bytes_received,
            bytes_sent: line.bytes_sent,
            compute_seconds,
            buckets: line.buckets,
            price: pricing.map(|p| p.price(line.rows_read(), line.bytes(), compute_seconds)),
        }
    }
}

/// The whole report, as `--format json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The `--since` day, if given.
    pub since: Option<String>,
    /// The collaboration of `--config`, if given.
    pub collaboration_id: Option<String>,
    /// The currency of every price; `None` without prices.
    pub currency: Option<String>,
    /// Per UTC day, collaboration and payer.
    pub days: Vec<ReportLine>,
    /// Per payer, over every day.
    pub payers: Vec<ReportLine>,
    /// Everything together.
    pub total: ReportLine,
}

impl Report {
    /// The report of `lines` (as [`StateDb::usage`] returns them), priced by `pricing`.
    pub fn new(
        lines: &[UsageLine],
        pricing: Option<&Pricing>,
        since: Option<String>,
        collaboration_id: Option<String>,
    ) -> Report {
        let mut per_payer: BTreeMap<&str, UsageLine> = BTreeMap::new();
        let mut total = UsageLine::default();
        for line in lines {
            per_payer.entry(&line.payer).or_default().add(line);
            total.add(line);
        }
        Report {
            since,
            collaboration_id,
            currency: pricing.map(|p| p.currency().to_owned()),
            days: lines
                .iter()
                .map(|l| ReportLine {
                    day: Some(l.day.clone()),
                    collaboration_id: Some(l.collaboration_id.clone()),
                    payer: Some(l.payer.clone()),
                    ..ReportLine::of(l, pricing)
                })
                .collect(),
            payers: per_payer
                .iter()
                .map(|(payer, l)| ReportLine {
                    payer: Some((*payer).to_owned()),
                    ..ReportLine::of(l, pricing)
                })
                .collect(),
            total: ReportLine::of(&total, pricing),
        }
    }

    /// The report as JSON (one object, a final newline).
    pub fn to_json(&self) -> Result<String> {
        let mut json = serde_json::to_string_pretty(self)?;
        json.push('\n');
        Ok(json)
    }

    /// The report as a table: a line per day and payer, then `total` per payer and overall.
    pub fn to_table(&self) -> String {
        let mut columns: Vec<String> = [
            "day",
            "collaboration",
            "payer",
            "sessions",
            "rows_read",
            "bytes",
            "compute_seconds",
            "buckets",
        ]
        .map(str::to_owned)
        .to_vec();
        if let Some(currency) = &self.currency {
            columns.push(format!("price_{currency}"));
        }
        let cells = |line: &ReportLine, day: &str, payer: &str| {
            let mut row = vec![
                line.day.clone().unwrap_or_else(|| day.to_owned()),
                line.collaboration_id
                    .clone()
                    .unwrap_or_else(|| "*".to_owned()),
                line.payer.clone().unwrap_or_else(|| payer.to_owned()),
                line.sessions.to_string(),
                line.rows_read.to_string(),
                line.bytes.to_string(),
                format!("{:.3}", line.compute_seconds),
                line.buckets.to_string(),
            ];
            if let Some(price) = line.price {
                row.push(format!("{price:.6}"));
            }
            row
        };
        let mut rows: Vec<Vec<String>> = self.days.iter().map(|l| cells(l, "", "")).collect();
        rows.extend(self.payers.iter().map(|l| cells(l, "total", "")));
        rows.push(cells(&self.total, "total", "*"));
        render_table(&columns, &rows)
    }
}

/// Prints the usage report.
pub fn run(args: UsageArgs) -> Result<ExitCode> {
    let collaboration = match &args.config {
        Some(path) => Some(Collaboration::load(path)?),
        None => None,
    };
    // Its errors name the file.
    let state = StateDb::open_read_only(&args.state)?;
    let id = collaboration.as_ref().map(|c| c.id().to_owned());
    let lines = state.usage(args.since.as_deref(), id.as_deref())?;
    if lines.is_empty() && args.format == UsageFormat::Table {
        match &id {
            Some(id) => eprintln!("no sessions of collaboration {id:?} were charged"),
            None => eprintln!("no sessions were charged"),
        }
    }
    let pricing = collaboration.as_ref().and_then(Collaboration::pricing);
    let report = Report::new(&lines, pricing, args.since, id);
    match args.format {
        UsageFormat::Json => print!("{}", report.to_json()?),
        UsageFormat::Table => print!("{}", report.to_table()),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_checked() {
        assert_eq!(parse_day("2026-12-02").unwrap(), "2026-12-02");
        for bad in [
            "2026-13-01",
            "2026-12-32",
            "26-12-02",
            "2026/12/02",
            "2026-1-02x",
        ] {
            assert!(parse_day(bad).is_err(), "{bad}");
        }
    }
}
