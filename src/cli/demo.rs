//! `cleanroom demo`: a whole measurement on built-in sample data, with nothing to set up.
//!
//! A publisher (the matcher) holds ad impressions by campaign; an advertiser (the receiver)
//! holds purchases with amounts. The demo asks: per campaign, how many people who saw it bought
//! something, and for how much? Both roles run in this process through the real messages.

use super::output::render_table;
use super::sample;
use anyhow::{Context, Result};
use clap::Args;
use cleanroom_psi::{Domain, MatcherTable, Normalization, ReceiverTable, match_offline};
use std::process::ExitCode;
use std::time::Instant;

/// Arguments of `cleanroom demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Groups with fewer matched people than this are suppressed.
    #[arg(long, default_value_t = 100)]
    threshold: u64,
}

/// Run the demo and print what each side learned and what crossed the wire.
pub fn run(args: DemoArgs) -> Result<ExitCode> {
    let impressions = sample::impressions();
    let purchases = sample::purchases();
    let mut matcher = MatcherTable::new(Normalization::Email);
    for row in &impressions.rows {
        matcher.push(&row[1], &row[0])?;
    }
    let mut receiver = ReceiverTable::new(Normalization::Email, 1)?;
    for row in &purchases.rows {
        let amount: u64 = row[1].parse().context("sample amount")?;
        receiver.push("", &row[0], &[amount])?;
    }
    println!(
        "publisher: {} impressions; advertiser: {} purchases by {} people",
        impressions.rows.len(),
        purchases.rows.len(),
        receiver.distinct(),
    );
    let started = Instant::now();
    let domain = Domain::new("cleanroom-demo", "email");
    let report = match_offline(&domain, matcher, receiver, args.threshold)?;
    let elapsed = started.elapsed();

    let columns = ["campaign", "buyers", "revenue", "avg_per_buyer"]
        .map(String::from)
        .to_vec();
    let rows: Vec<Vec<String>> = report
        .outcome
        .groups
        .iter()
        .map(|g| {
            let revenue = g.sums[0];
            vec![
                g.matcher_group.clone(),
                g.intersection_size.to_string(),
                format!("{}.{:02}", revenue / 100, revenue % 100),
                format!("{:.2}", revenue as f64 / 100.0 / g.intersection_size as f64),
            ]
        })
        .collect();
    println!(
        "\nPeople who saw each campaign and bought (threshold {}):\n",
        args.threshold
    );
    print!("{}", render_table(&columns, &rows));
    println!(
        "suppressed groups (under the threshold): {}",
        report.outcome.suppressed_groups
    );
    println!(
        "\nOn the wire: {} messages, {} bytes, in {:.2?}; no identifier left either side.",
        report.messages, report.bytes, elapsed
    );
    Ok(ExitCode::SUCCESS)
}
