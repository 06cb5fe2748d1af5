//! `cleanroom budget`: print each member's privacy budget and query counts from a server's
//! state database.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, ValueEnum};
use cleanroom_service::{Standing, StateDb};

use super::output::render_table;

/// Arguments of `cleanroom budget`.
#[derive(Args, Debug)]
pub struct BudgetArgs {
    /// The server's state database.
    #[arg(long, value_name = "PATH")]
    state: PathBuf,
    /// Output format (JSON: an array of objects).
    #[arg(long, value_enum, default_value_t = BudgetFormat::Table)]
    format: BudgetFormat,
}

/// How `cleanroom budget` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BudgetFormat {
    /// Aligned columns for a terminal.
    Table,
    /// One JSON document on stdout.
    Json,
}

const COLUMNS: [&str; 8] = [
    "collaboration",
    "member",
    "epsilon_spent",
    "epsilon_budget",
    "epsilon_remaining",
    "queries",
    "queries_today",
    "queries_remaining",
];

/// `-` for "no privacy" or "no limit".
fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn cells(s: &Standing) -> Vec<String> {
    // What is left today: the smaller of the total and the daily allowance.
    let total = s.queries_per_member.map(|l| l.saturating_sub(s.queries));
    let daily = s
        .queries_per_member_per_day
        .map(|l| l.saturating_sub(s.queries_today));
    let remaining = match (total, daily) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    vec![
        s.collaboration_id.clone(),
        s.member.clone(),
        s.epsilon_spent.to_string(),
        or_dash(s.epsilon_budget),
        or_dash(s.epsilon_remaining),
        s.queries.to_string(),
        s.queries_today.to_string(),
        or_dash(remaining),
    ]
}

/// Renders standings in `format`.
pub fn render(standings: &[Standing], format: BudgetFormat) -> Result<String> {
    Ok(match format {
        BudgetFormat::Json => {
            let mut json = serde_json::to_string_pretty(standings)?;
            json.push('\n');
            json
        }
        BudgetFormat::Table => {
            let columns: Vec<String> = COLUMNS.iter().map(|c| (*c).to_owned()).collect();
            let rows: Vec<Vec<String>> = standings.iter().map(cells).collect();
            render_table(&columns, &rows)
        }
    })
}

/// Prints every member's standing.
pub fn run(args: BudgetArgs) -> Result<ExitCode> {
    // Its errors name the file.
    let state = StateDb::open_read_only(&args.state)?;
    print!("{}", render(&state.standings()?, args.format)?);
    Ok(ExitCode::SUCCESS)
}
