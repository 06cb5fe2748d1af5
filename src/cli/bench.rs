//! `cleanroom bench`: its command line, the tables it names, and its reports. The harness
//! itself (sessions, measurements, the load test) is the `cleanroom-bench` crate.

use super::output::{Format, render_table};
use super::table_input::{amount, cell, parse_spec};
use anyhow::{Context, Result, ensure};
use clap::Args;
use cleanroom_bench::{BenchProtocol, Identifiers, Load, Report, Session, Tables, Transport};
use cleanroom_data::{Table, TableSpec};
use cleanroom_psi::Normalization;
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `cleanroom bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Identifiers per party (generated, unless --left and --right name tables).
    #[arg(long, required_unless_present = "left")]
    size: Option<u64>,
    /// Fraction of identifiers common to both parties.
    #[arg(long, default_value_t = 0.5, conflicts_with = "left")]
    overlap: f64,
    /// Run on this table as the matcher's (provider's) instead of generated identifiers: a CSV
    /// or Parquet file or an `s3://` object, with options after commas (`,format=parquet`,
    /// `,delimiter=semicolon`, `,has_header=false`, `,quote=...`), as `cleanroom match` takes
    /// it. The result is checked against a plain computation over both tables.
    #[arg(long, value_name = "TABLE", requires = "right", conflicts_with_all = ["size", "concurrency"],
          value_parser = parse_spec)]
    left: Option<TableSpec>,
    /// The receiver's (querier's) table, as --left; it holds the summed column.
    #[arg(long, value_name = "TABLE", requires = "left", value_parser = parse_spec)]
    right: Option<TableSpec>,
    /// With --left/--right: the identifier column of both tables (matched as written).
    #[arg(long, value_name = "COLUMN", default_value = "id")]
    id_column: String,
    /// With --left/--right: the column of --right summed by the sum protocols (non-negative
    /// integers, or a Parquet DECIMAL column, summed in units of its scale).
    #[arg(long, value_name = "COLUMN", default_value = "value")]
    value_column: String,
    /// Protocol to run.
    #[arg(long, value_enum, default_value_t = BenchProtocol::Cardinality)]
    protocol: BenchProtocol,
    /// Transport between the parties.
    #[arg(long, value_enum, default_value_t = Transport::Memory)]
    transport: Transport,
    /// Run the session as a job of this many buckets (in memory, cardinality and sum), one
    /// session per bucket, released once: --left/--right split by a keyed hash, generated
    /// identifiers by ranges, each bucket generated when its turn comes. Without it, more
    /// than 2^24 generated identifiers per party run in buckets of at most 2^20, so that
    /// --size goes to 10^8 in bounded memory.
    #[arg(long, value_name = "B", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65536))]
    buckets: u32,
    /// Join this many members (3 to 5: the querier, up to three filters and the matcher) in
    /// memory, with a sum, each holding --size identifiers of which --overlap are shared by
    /// all; reports time and bytes per element against the two-party session on the same
    /// querier and matcher, measured in the same run (best of --runs).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(3..=5),
          conflicts_with_all = ["left", "concurrency", "buckets", "transport", "protocol"])]
    parties: Option<u8>,
    /// With --parties: how many times to run both sessions (the best time of each counts).
    #[arg(long, value_name = "R", default_value_t = 1, requires = "parties")]
    runs: u32,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Load test: run this many sessions at once, again and again, against one `cleanroom
    /// serve` child process on 127.0.0.1 (implies the gRPC transport).
    #[arg(long, value_name = "K")]
    concurrency: Option<usize>,
    /// How long the load test runs, in seconds (with --concurrency).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 10.0,
        requires = "concurrency"
    )]
    duration: f64,
}

/// Run `cleanroom bench`.
pub fn run(args: BenchArgs) -> Result<ExitCode> {
    ensure!(
        (0.0..=1.0).contains(&args.overlap),
        "--overlap must be between 0 and 1"
    );
    let columns = usize::from(args.protocol != BenchProtocol::Cardinality);
    ensure!(
        args.buckets == 1
            || (args.transport == Transport::Memory
                && args.protocol != BenchProtocol::ProvenSum
                && args.concurrency.is_none()),
        "--buckets runs in memory, for cardinality, sum and list"
    );
    let session = Session {
        protocol: args.protocol,
        transport: args.transport,
        interactive: args.format == Format::Table,
        buckets: args.buckets,
    };
    if let (Some(left), Some(right)) = (&args.left, &args.right) {
        let tables = Tables {
            left: left.clone(),
            right: right.clone(),
            id_column: args.id_column.clone(),
            value_column: (columns > 0).then(|| args.value_column.clone()),
        };
        ensure!(
            args.concurrency.is_none(),
            "--left/--right run one session; the load test generates its tables"
        );
        let value = tables.value_column.as_deref();
        let left = read_identifiers(&tables.left, &tables.id_column, None)?;
        let right = read_identifiers(&tables.right, &tables.id_column, value)?;
        let report = cleanroom_bench::run_tables(session, &tables, left, right)?;
        return print_report(args.format, &report);
    }
    let n = args.size.context("--size or --left/--right is needed")?;
    ensure!(n > 0, "--size must be at least 1");
    let common = (args.overlap * n as f64).round() as u64;
    if let Some(parties) = args.parties {
        let report = cleanroom_bench::run_parties(parties, n, common, args.runs)?;
        match args.format {
            Format::Json => println!("{}", serde_json::to_string(&report)?),
            Format::Table | Format::Csv => {
                print!("{}", render_table(&metric_value(), &report.rows()))
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    ensure!(
        args.protocol != BenchProtocol::ProvenSum
            || (args.transport == Transport::Memory && args.concurrency.is_none()),
        "--protocol proven-sum runs in memory only"
    );
    ensure!(
        args.protocol != BenchProtocol::List
            || (args.transport == Transport::Memory && args.concurrency.is_none()),
        "--protocol list runs in memory only"
    );
    if let Some(concurrency) = args.concurrency {
        ensure!(concurrency > 0, "--concurrency must be at least 1");
        ensure!(
            args.duration > 0.0 && args.duration.is_finite(),
            "--duration must be a positive number of seconds"
        );
        let load = Load {
            server: std::env::current_exe().context("locating the cleanroom binary")?,
            size: n,
            common,
            columns,
            concurrency,
            duration: Duration::from_secs_f64(args.duration),
        };
        let report = cleanroom_bench::load::run(&load)?;
        match args.format {
            Format::Json => println!("{}", report.json),
            Format::Table | Format::Csv => {
                print!("{}", render_table(&metric_value(), &report.rows))
            }
        }
        report.verdict()?;
        return Ok(ExitCode::SUCCESS);
    }
    let report = cleanroom_bench::run_generated(session, n, common)?;
    print_report(args.format, &report)
}

/// The columns of the terminal reports.
fn metric_value() -> Vec<String> {
    ["metric", "value"].iter().map(|s| s.to_string()).collect()
}

/// Prints what one session measured.
fn print_report(format: Format, report: &Report) -> Result<ExitCode> {
    match format {
        Format::Json => println!("{}", serde_json::to_string(&report.json)?),
        Format::Table | Format::Csv => print!("{}", render_table(&metric_value(), &report.rows)),
    }
    Ok(ExitCode::SUCCESS)
}

/// One table's identifiers with, when `value` names a column, each row's amount in units of
/// the column's scale (a Parquet `DECIMAL` column's own scale, else 0: integers).
fn read_identifiers(spec: &TableSpec, id_column: &str, value: Option<&str>) -> Result<Identifiers> {
    let mut table = Table::open(spec)?;
    let id = table.column(id_column).map_err(anyhow::Error::msg)?;
    let value = value
        .map(|v| table.column(v).map(|i| (i, v)))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let scale = value
        .and_then(|(i, _)| table.declared_scale(i))
        .unwrap_or(0);
    ensure!(
        scale <= 18,
        "{}: column {:?} has scale {scale}; sums are exact in units of at most 10^-18",
        table.location(),
        value.map_or("", |(_, v)| v)
    );
    let (mut items, mut rows) = (Vec::new(), 0u64);
    while let Some(row) = table.next() {
        let row = row?;
        rows += 1;
        let units = match value {
            Some((i, name)) => amount(cell(&table, &row, i, name)?, name, scale)
                .map_err(|e| anyhow::anyhow!("{}: {}: {e}", table.location(), row.position))?,
            None => 0,
        };
        let Some(text) = cell(&table, &row, id, id_column)?.text() else {
            continue;
        };
        if Normalization::None.apply(&text).is_some() {
            items.push((text.into_owned(), units));
        }
    }
    Ok(Identifiers { items, rows, scale })
}
