//! `cleanroom`: the command-line front of the cleanroom engine. Thin by design: it parses
//! arguments, reads files, and prints results; the work happens in `cleanroom-psi`,
//! `cleanroom-rules` and `cleanroom-service`.
#![forbid(unsafe_code)]

mod arenas;
mod cli;

use clap::{CommandFactory, Parser, Subcommand};
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
    #[command(args_override_self = true)]
    Serve(cli::serve::ServeArgs),
    /// Ask a partner's server a question over both members' data.
    Query(cli::query::QueryArgs),
    /// Print a server's audit log of query attempts.
    Audit(cli::audit::AuditArgs),
    /// Print each member's privacy budget and query counts from a server's state.
    Budget(cli::budget::BudgetArgs),
    /// Print what a server's sessions used per day and payer, priced if the collaboration
    /// declares prices.
    Usage(cli::usage::UsageArgs),
    /// Check a query against the collaboration's rules without touching any data.
    Check(cli::check::CheckArgs),
    /// Make bearer tokens for members (`token new`).
    Token(cli::token::TokenArgs),
    /// Ask a server whether it serves (grpc.health.v1): exit 0 if so, 1 if not.
    Health(cli::health::HealthArgs),
    /// Make a receiver's result key pair (`key new`).
    Key(cli::key::KeyArgs),
    /// Fetch the result of a query that named you as a receiver.
    Results(cli::results::ResultsArgs),
}

fn main() -> ExitCode {
    // Before any thread starts: glibc's arenas are limited from the environment at start-up.
    arenas::limit_arenas();
    // `serve --config-file FILE`: the file's settings become flags before the command line's.
    let serve = Cli::command()
        .find_subcommand("serve")
        .cloned()
        .expect("serve is a subcommand");
    let given: Vec<_> = std::env::args_os().collect();
    let argv = match cli::serve::server_file::expand(given.clone(), &serve) {
        Ok(argv) => argv,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(2);
        }
    };
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            if err.use_stderr() && argv != given {
                eprintln!("note: the settings of --config-file are checked as the flags they name");
            }
            return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(2));
        }
    };
    let result = match cli.command {
        Command::Demo(args) => cli::demo::run(args),
        Command::Match(args) => cli::matching::run(args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Serve(args) => cli::serve::run(args),
        Command::Query(args) => cli::query::run(args),
        Command::Audit(args) => cli::audit::run(args),
        Command::Budget(args) => cli::budget::run(args),
        Command::Usage(args) => cli::usage::run(args),
        Command::Check(args) => cli::check::run(args),
        Command::Token(args) => cli::token::run(args),
        Command::Health(args) => cli::health::run(args),
        Command::Key(args) => cli::key::run(args),
        Command::Results(args) => cli::results::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // Each cause once: thiserror messages often hold their source's text already.
            eprintln!(
                "error: {}",
                cleanroom_service::transport::causes(err.as_ref())
            );
            ExitCode::from(2)
        }
    }
}
