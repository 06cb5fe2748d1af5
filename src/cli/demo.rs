//! `cleanroom demo`: a whole measurement on built-in sample data, with nothing to set up.
//!
//! A publisher holds ad impressions by campaign and runs the matching service (TLS with a
//! throwaway certificate, on a loopback port); an advertiser holds purchases with amounts and
//! queries it: per campaign, how many people who saw it bought something, and for how much?
//! Both members run in this process, but talk only through gRPC, as they would across sites.
//!
//! `--members 3` runs the second scenario: three hospitals count the patients all three
//! share, by diagnosis, with the querier's costs summed; hospitals B and C each serve their
//! table on a port of their own, and A's client relays between them (PROTOCOL.md 7.9). The
//! demo holds all three tables, so it checks the released rows against a plain join.

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
    /// Members joined: 2 (a publisher and an advertiser) or 3 (three hospitals).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=3),
          conflicts_with = "epsilon")]
    members: u8,
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
    if args.members == 3 {
        return run_hospitals(args.threshold);
    }
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

/// The hospitals' collaboration: hospital A (the querier) and its table; `{providers}` is filled
/// in with [`provider_entry`] for B and C, `{...}` with a fresh token hash and the threshold.
const HOSPITALS: &str = r#"
[collaboration]
id = "cleanroom-demo-hospitals"
name = "Three hospitals count their shared patients (demo)"

[[member]]
name = "hospital_a"
abilities = ["query", "receive_results"]
token_sha256 = "{a}"
{providers}
[[table]]
name = "patients_a"
owner = "hospital_a"
columns = ["email", "diagnosis", "cost"]
identifier = { column = "email", normalize = "email" }

[table.rule]
type = "aggregation"
join_columns = ["email"]
dimension_columns = ["diagnosis"]
aggregate_columns = { email = ["COUNT_DISTINCT"], cost = ["SUM", "AVG"] }
min_threshold = {threshold}
"#;

/// A providing hospital's member entry (a fresh token hash, the public half of `relay`) and
/// its table `patients_<letter>`, under the same threshold as A's.
fn provider_entry(letter: char, relay: &cleanroom_psi::sealed::OpeningKey) -> String {
    format!(
        "\n[[member]]\nname = \"hospital_{letter}\"\nabilities = []\ntoken_sha256 = \"{}\"\n\
         relay_key = \"{}\"\n\n[[table]]\nname = \"patients_{letter}\"\nowner = \"hospital_{letter}\"\n\
         columns = [\"email\", \"diagnosis\"]\n\
         identifier = {{ column = \"email\", normalize = \"email\" }}\n\n[table.rule]\n\
         type = \"aggregation\"\njoin_columns = [\"email\"]\ndimension_columns = [\"diagnosis\"]\n\
         aggregate_columns = {{ email = [\"COUNT_DISTINCT\"] }}\nmin_threshold = {{threshold}}\n",
        loopback::fresh_token().1,
        hex::encode(relay.sealing_key().to_bytes())
    )
}

const HOSPITALS_SQL: &str = "SELECT a.diagnosis, COUNT(DISTINCT a.email) AS shared_patients, \
                             SUM(a.cost) AS cost_cents FROM patients_a a \
                             JOIN patients_b b ON a.email = b.email \
                             JOIN patients_c c ON a.email = c.email \
                             GROUP BY a.diagnosis ORDER BY a.diagnosis";

/// The three hospitals' demo: hospital A queries B's and C's servers, and the released rows
/// are checked against the plain join of the three tables.
fn run_hospitals(threshold: u64) -> Result<ExitCode> {
    use cleanroom_psi::sealed::OpeningKey;
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let tables = sample::hospitals();
    let mut data = Vec::new();
    for (table, name) in tables
        .iter()
        .zip(["patients_a", "patients_b", "patients_c"])
    {
        let path = dir.path().join(format!("{name}.csv"));
        std::fs::write(&path, table.to_csv()?)?;
        data.push(BTreeMap::from([(name.to_owned(), path.into())]));
    }
    let (a_token, a_hash) = loopback::fresh_token();
    let (relay_b, relay_c) = (OpeningKey::generate(), OpeningKey::generate());
    // The providers' tables go after A's member entry; the order of sections does not matter.
    let providers = provider_entry('b', &relay_b) + &provider_entry('c', &relay_c);
    let text = HOSPITALS
        .replace("{a}", &a_hash)
        .replace("{providers}", &providers)
        .replace("{threshold}", &threshold.to_string());
    let collaboration = Collaboration::from_toml_str(&text, "demo collaboration")?;
    println!("cleanroom demo --members 3: three hospitals count the patients they all share.");
    println!(
        "  hospital_b serves {} patients and hospital_c {} over TLS, each on its own loopback \
         port; hospital_a brings {} and relays between them.",
        tables[1].rows.len(),
        tables[2].rows.len(),
        tables[0].rows.len()
    );
    println!("  query: {HOSPITALS_SQL}\n");
    let started = Instant::now();
    let mut data = data.into_iter();
    let (a, b, c) = (
        data.next().expect("three tables"),
        data.next().expect("three tables"),
        data.next().expect("three tables"),
    );
    let outcome = loopback::run_chain(
        collaboration,
        vec![
            loopback::Provider {
                side: Side {
                    member: "hospital_b",
                    data: b,
                },
                relay_key: relay_b,
            },
            loopback::Provider {
                side: Side {
                    member: "hospital_c",
                    data: c,
                },
                relay_key: relay_c,
            },
        ],
        Side {
            member: "hospital_a",
            data: a,
        },
        &a_token,
        HOSPITALS_SQL,
        true,
        dir.path(),
    )?;
    let elapsed = started.elapsed();
    print!(
        "{}",
        render_outcome(&outcome, Format::Table, CsvCells::Safe)?
    );
    for p in &outcome.chain {
        let part = if p.position == outcome.chain.len() {
            "matched and released"
        } else {
            "filtered"
        };
        println!("  {} ({part}): session {}", p.member, p.session_id);
    }
    let c = &outcome.counters;
    println!(
        "\nOn the wire: hospital_a sent {} messages ({} bytes), received {} ({} bytes) in {:.2?}.",
        c.messages_sent, c.bytes_sent, c.messages_received, c.bytes_received, elapsed
    );
    check_hospitals(&tables, &outcome.result, threshold)?;
    println!(
        "Checked against a plain join of the three tables: every released row is exact, and \
         the rows under the threshold were suppressed."
    );
    Ok(ExitCode::SUCCESS)
}

/// The plain join of the three hospitals' tables, by A's diagnosis: (patients all three hold,
/// A's costs of them); fails unless `result` releases exactly the groups at or above
/// `threshold`, with these figures, and suppresses the others.
fn check_hospitals(
    tables: &[sample::SampleTable; 3],
    result: &cleanroom_rules::ResultTable,
    threshold: u64,
) -> Result<()> {
    use std::collections::{BTreeSet, HashSet};
    let norm = |e: &str| e.trim().to_lowercase();
    let held = |t: &sample::SampleTable| -> HashSet<String> {
        t.rows.iter().map(|r| norm(&r[0])).collect()
    };
    let (b, c) = (held(&tables[1]), held(&tables[2]));
    let mut plain: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    let mut seen = BTreeSet::new();
    for row in &tables[0].rows {
        let id = norm(&row[0]);
        if b.contains(&id) && c.contains(&id) && seen.insert(id) {
            let e = plain.entry(row[1].clone()).or_default();
            e.0 += 1;
            e.1 += row[2].parse::<u64>()?;
        }
    }
    let expected: Vec<Vec<String>> = plain
        .iter()
        .filter(|(_, (n, _))| *n >= threshold)
        .map(|(d, (n, s))| vec![d.clone(), n.to_string(), s.to_string()])
        .collect();
    let released: Vec<Vec<String>> = result
        .rows
        .iter()
        .map(|row| row.iter().map(ToString::to_string).collect())
        .collect();
    anyhow::ensure!(
        released == expected,
        "released {released:?}, the plain join gives {expected:?}"
    );
    let under = plain.values().filter(|(n, _)| *n < threshold).count() as u64;
    anyhow::ensure!(
        result.suppressed_rows == under,
        "{} rows suppressed, the plain join has {under} under the threshold",
        result.suppressed_rows
    );
    Ok(())
}
