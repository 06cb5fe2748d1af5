//! `cleanroom results`: fetch the result of a query that named you as a receiver.
//!
//! The querier's server keeps the result of each receiver other than the querier; this
//! command fetches it with the member's own token, opens the querier's keys with the member's
//! secret result key (`cleanroom key new`), checks the server's messages as the querier would
//! have, and prints the rows under the member's own copy of the collaboration.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use cleanroom_rules::Collaboration;
use cleanroom_service::Client;

use super::key::read_opening_key;
use super::output::{CsvCells, Format};
use super::query::{Connection, render_with};

/// Arguments of `cleanroom results`.
#[derive(Args, Debug)]
pub struct ResultsArgs {
    /// The collaboration file (TOML), identical on every member's side.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// The receiving member (you).
    #[arg(long, value_name = "NAME")]
    member: String,
    /// Your secret result key (from `cleanroom key new`).
    #[arg(long, value_name = "FILE")]
    key_file: PathBuf,
    #[command(flatten)]
    connection: Connection,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// The session whose result to fetch (its querier was given the id).
    #[arg(value_name = "SESSION_ID")]
    session: String,
}

/// Fetches, opens and prints the result. Exit 0 with a result, 2 for any failure.
pub fn run(args: ResultsArgs) -> Result<ExitCode> {
    let collaboration = Collaboration::load(&args.config)
        .with_context(|| format!("collaboration file {}", args.config.display()))?;
    let key = read_opening_key(&args.key_file, "--key-file")?;
    let config = args.connection.client_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let fetched = runtime.block_on(async {
        let mut client = Client::connect(&config).await?;
        client
            .fetch_result(&collaboration, &args.member, &args.session, &key)
            .await
    });
    let fetched = match fetched {
        Ok(fetched) => fetched,
        Err(error) => {
            eprintln!("results of session {} not fetched: {error}", args.session);
            return Ok(ExitCode::from(2));
        }
    };
    print!(
        "{}",
        render_with(&fetched.result, args.format, &[], CsvCells::Safe)?
    );
    if args.format == Format::Table {
        eprintln!(
            "session {}: query of {} released at {}: {}",
            fetched.session_id, fetched.querier, fetched.released_at, fetched.sql
        );
    }
    Ok(ExitCode::SUCCESS)
}
