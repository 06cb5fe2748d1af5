//! `cleanroom`: the command-line front of the cleanroom engine. Thin by design: it parses
//! arguments, reads files, and prints results; the work happens in `cleanroom-psi`,
//! `cleanroom-rules` and `cleanroom-service`.
#![forbid(unsafe_code)]

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Privacy-preserving data collaboration: match customer lists without sharing them.
#[derive(Parser)]
#[command(name = "cleanroom", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole collaboration on built-in sample data and print the result.
    Demo(cli::demo::DemoArgs),
    /// Match two CSV files offline (both roles in this process) and print counts and sums.
    Match(cli::matching::MatchArgs),
    /// Measure matching throughput against the raw cost of the curve operations.
    Bench(cli::bench::BenchArgs),
    /// Serve this member's tables to querying partners (gRPC matching service).
    Serve(cli::serve::ServeArgs),
    /// Ask a partner's server a question over both members' data.
    Query(cli::query::QueryArgs),
    /// Print a server's audit log of query attempts.
    Audit(cli::audit::AuditArgs),
    /// Print each member's privacy budget and query counts from a server's state.
    Budget(cli::budget::BudgetArgs),
    /// Check a query against the collaboration's rules without touching any data.
    Check(cli::check::CheckArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => cli::demo::run(args),
        Command::Match(args) => cli::matching::run(args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Serve(args) => cli::serve::run(args),
        Command::Query(args) => cli::query::run(args),
        Command::Audit(args) => cli::audit::run(args),
        Command::Budget(args) => cli::budget::run(args),
        Command::Check(args) => cli::check::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
