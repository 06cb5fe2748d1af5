//! `cleanroom demo`: a whole measurement on built-in sample data, with nothing to set up.
//!
//! A publisher holds ad impressions by campaign and runs the matching service (TLS with a
//! throwaway certificate, on a loopback port); an advertiser holds purchases with amounts and
//! queries it: per campaign, how many people who saw it bought something, and for how much?
//! Both members run in this process, but talk only through gRPC, as they would across sites.

use super::output::{CsvCells, Format};
use super::query::render_outcome;
use super::sample;
use anyhow::{Context, Result};
use clap::Args;
use cleanroom_bench::loopback::{self, Side};
use cleanroom_rules::Collaboration;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

/// Arguments of `cleanroom demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Output rows with fewer matched people than this are suppressed.
    #[arg(long, default_value_t = 100)]
    threshold: u64,
    /// Make the result differentially private with this epsilon (one query's worth of
    /// budget); amounts are bounded to [0, 100000] cents per person.
    #[arg(long, value_name = "EPSILON")]
    epsilon: Option<f64>,
    /// With --epsilon: how many campaigns one person counts in, at most
    /// (`max_groups_per_identifier`; the collaboration default when absent).
    #[arg(long, value_name = "K", requires = "epsilon")]
    max_groups_per_identifier: Option<u32>,
}

/// The demo's collaboration; `{...}` are filled in with fresh token hashes and the threshold.
const COLLABORATION: &str = r#"
[collaboration]
id = "cleanroom-demo"
name = "Publisher x Advertiser campaign measurement (demo)"

[[member]]
name = "publisher"
abilities = []
token_sha256 = "{publisher}"

[[member]]
name = "advertiser"
abilities = ["query", "receive_results"]
token_sha256 = "{advertiser}"

[[table]]
name = "impressions"
owner = "publisher"
columns = ["email", "campaign", "region"]
identifier = { column = "email", normalize = "email" }

[table.rule]
type = "aggregation"
join_columns = ["email"]
dimension_columns = ["campaign", "region"]
aggregate_columns = { email = ["COUNT_DISTINCT"] }
min_threshold = {threshold}

[[table]]
name = "purchases"
owner = "advertiser"
columns = ["email", "amount", "channel"]
identifier = { column = "email", normalize = "email" }

[table.rule]
type = "aggregation"
join_columns = ["email"]
dimension_columns = ["channel"]
aggregate_columns = { email = ["COUNT_DISTINCT"], amount = ["SUM", "AVG"] }
min_threshold = 2
"#;

const SQL: &str = "SELECT i.campaign, COUNT(DISTINCT p.email) AS buyers, \
                   SUM(p.amount) AS revenue_cents, AVG(p.amount) AS avg_purchase_cents \
                   FROM impressions i JOIN purchases p ON i.email = p.email \
                   GROUP BY i.campaign ORDER BY i.campaign";

/// Run the demo and print the released rows and what crossed the wire.
pub fn run(args: DemoArgs) -> Result<ExitCode> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let impressions = sample::impressions();
    let purchases = sample::purchases();
    let impressions_csv = dir.path().join("impressions.csv");
    let purchases_csv = dir.path().join("purchases.csv");
    std::fs::write(&impressions_csv, impressions.to_csv()?)?;
    std::fs::write(&purchases_csv, purchases.to_csv()?)?;

    let (_, publisher_hash) = loopback::fresh_token();
    let (advertiser_token, advertiser_hash) = loopback::fresh_token();
    let mut text = COLLABORATION
        .replace("{publisher}", &publisher_hash)
        .replace("{advertiser}", &advertiser_hash)
        .replace("{threshold}", &args.threshold.to_string());
    if let Some(epsilon) = args.epsilon {
        let mut privacy = format!(
            "[collaboration.privacy]\nepsilon_budget = {epsilon:?}\nepsilon_per_query = {epsilon:?}\n"
        );
        if let Some(k) = args.max_groups_per_identifier {
            privacy.push_str(&format!("max_groups_per_identifier = {k}\n"));
        }
        text = text
            .replacen("\n[[member]]", &format!("\n{privacy}\n[[member]]"), 1)
            .replace(
                "amount = [\"SUM\", \"AVG\"] }",
                "amount = [\"SUM\", \"AVG\"] }\nsum_bounds = { amount = [0, 100000] }",
            );
    }
    let collaboration = Collaboration::from_toml_str(&text, "demo collaboration")?;

    println!(
        "cleanroom demo: a publisher and an advertiser measure a campaign without sharing lists."
    );
    println!(
        "  publisher serves {} impressions over TLS on a loopback port; advertiser brings {} purchases.",
        impressions.rows.len(),
        purchases.rows.len()
    );
    println!("  query: {SQL}\n");
    let started = Instant::now();
    let outcome = loopback::run(
        collaboration,
        Side {
            member: "publisher",
            data: BTreeMap::from([("impressions".to_owned(), impressions_csv.into())]),
        },
        Side {
            member: "advertiser",
            data: BTreeMap::from([("purchases".to_owned(), purchases_csv.into())]),
        },
        &advertiser_token,
        SQL,
        true,
        dir.path(),
    )?;
    let elapsed = started.elapsed();
    print!(
        "{}",
        render_outcome(&outcome, Format::Table, CsvCells::Safe)?
    );
    let c = &outcome.counters;
    println!(
        "\nOn the wire (session {}): advertiser sent {} messages ({} bytes), received {} ({} bytes) in {:.2?}.",
        outcome.summary.session_id,
        c.messages_sent,
        c.bytes_sent,
        c.messages_received,
        c.bytes_received,
        elapsed
    );
    println!(
        "Only blinded points, comparison tags and encrypted values crossed; no email left either side."
    );
    Ok(ExitCode::SUCCESS)
}
