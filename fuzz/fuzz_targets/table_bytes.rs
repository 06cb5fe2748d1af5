//! Any bytes as a member's table file, read by `cleanroom-data` exactly as every command reads
//! one: as CSV in two dialects and as Parquet, then (for the rows read before any error) into
//! the receiver's PSI table of an allowed plan, after the plan takes the file's declared
//! decimal scales. Every outcome is rows or an error naming the file; never a panic.
//!
//! `cleanroom-data` turns a panic inside the `parquet` crate (which some malformed files still
//! cause) into an error; libfuzzer-sys's panic hook would abort on it first, so `init` puts a
//! hook back that only prints. A panic anywhere else still reaches libfuzzer-sys's
//! `catch_unwind` around each input, which aborts: a crash, as it should be.
#![no_main]

use cleanroom_data::{SourceOptions, Table, TableSpec};
use cleanroom_rules::{Collaboration, Plan};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

fn plan() -> &'static Plan {
    static PLAN: OnceLock<Plan> = OnceLock::new();
    PLAN.get_or_init(|| {
        let collaboration = Collaboration::from_toml_str(
            include_str!("../../crates/rules/tests/data/collab.toml"),
            "collab.toml",
        )
        .expect("the test collaboration loads");
        collaboration
            .plan(
                "advertiser",
                "SELECT c.product, SUM(c.purchase_value), AVG(c.quantity) FROM impressions i \
                 JOIN conversions c ON i.email = c.email GROUP BY c.product",
            )
            .expect("an allowed query")
    })
}

/// One file per process, rewritten for every input.
fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| std::env::temp_dir().join(format!("cleanroom-fuzz-{}", std::process::id())))
}

fn read(spec: &str) {
    let spec = TableSpec::parse_with(spec, SourceOptions::default()).expect("a valid spec");
    let Ok(mut table) = Table::open(&spec) else {
        return;
    };
    let header = table.header().to_vec();
    let scales: Vec<Option<u8>> = (0..header.len()).map(|i| table.declared_scale(i)).collect();
    let rows: Vec<_> = table.by_ref().map_while(Result::ok).collect();
    let mut plan = plan().clone();
    if plan.adopt_file_scales(&header, &scales).is_ok()
        && let Ok(psi) = plan.receiver_table(&header, rows.into_iter())
    {
        assert!(psi.distinct() <= psi.stats().rows);
    }
    // The rows stopped at the end or at the first error; either way nothing follows.
    assert!(table.next().is_none());
}

fuzz_target!(init: std::panic::set_hook(Box::new(|info| eprintln!("{info}"))), |data: &[u8]| {
    let file = path();
    if std::fs::write(file, data).is_err() {
        return;
    }
    let name = file.display().to_string();
    read(&format!("{name},format=csv"));
    read(&format!("{name},format=csv,delimiter=semicolon,quote=',has_header=false"));
    read(&format!("{name},format=parquet"));
});
