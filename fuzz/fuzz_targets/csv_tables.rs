//! Any bytes as a member's CSV file, read the way `cleanroom serve` and `cleanroom query` read
//! them (flexible records, header first) into the PSI tables of allowed plans: a table or an
//! error naming the row, never a panic.
#![no_main]

use cleanroom_rules::{Collaboration, Plan};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const QUERIES: &[(&str, &str)] = &[
    (
        "advertiser",
        "SELECT i.campaign, COUNT(DISTINCT c.email) FROM impressions i JOIN conversions c \
         ON i.email = c.email GROUP BY i.campaign",
    ),
    (
        "advertiser",
        "SELECT c.product, SUM(c.purchase_value), AVG(c.quantity) FROM impressions i \
         JOIN conversions c ON i.email = c.email WHERE i.region IN ('EU', 'US') \
         AND NOT c.channel = 'web' GROUP BY c.product",
    ),
];

fn plans() -> &'static [Plan] {
    static PLANS: OnceLock<Vec<Plan>> = OnceLock::new();
    PLANS.get_or_init(|| {
        let collaboration = Collaboration::from_toml_str(
            include_str!("../../crates/rules/tests/data/collab.toml"),
            "collab.toml",
        )
        .expect("the test collaboration loads");
        QUERIES
            .iter()
            .map(|(member, sql)| collaboration.plan(member, sql).expect("an allowed query"))
            .collect()
    })
}

/// Header and records as the service's readers see them; a CSV error ends the records.
fn read(data: &[u8]) -> Option<(Vec<String>, Vec<Vec<String>>)> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(data);
    let header = reader.headers().ok()?.iter().map(str::to_owned).collect();
    let rows = reader
        .records()
        .map_while(Result::ok)
        .map(|r| r.iter().map(str::to_owned).collect())
        .collect();
    Some((header, rows))
}

fuzz_target!(|data: &[u8]| {
    let Some((header, rows)) = read(data) else {
        return;
    };
    for plan in plans() {
        let _ = plan.matcher_table(&header, cleanroom_rules::text_rows(rows.iter().cloned()));
        if let Ok(table) = plan.receiver_table(&header, cleanroom_rules::text_rows(rows.iter().cloned())) {
            assert!(table.distinct() <= table.stats().rows);
        }
    }
});
