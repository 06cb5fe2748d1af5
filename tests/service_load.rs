//! Load on one server: `cleanroom bench --concurrency K --duration S` runs K sessions at once
//! against a `cleanroom serve` child on 127.0.0.1 and checks every result, the audit log and the
//! server's memory. A short run here; `CLEANROOM_SOAK_SECONDS=N cargo test --release --test
//! service_load -- --ignored` runs the soak.
//!
//! Network hygiene (`crates/service/src/listener.rs`) against an in-process server is tested in
//! `crates/service/tests/service_load.rs`.

/// Runs the load test and returns its JSON report.
fn bench(concurrency: usize, seconds: u64, size: u64) -> serde_json::Value {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cleanroom"))
        .args(["bench", "--protocol", "sum", "--format", "json", "--size"])
        .arg(size.to_string())
        .arg("--concurrency")
        .arg(concurrency.to_string())
        .arg("--duration")
        .arg(seconds.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    serde_json::from_slice(&output.stdout).unwrap()
}

fn check(report: &serde_json::Value, concurrency: u64, growth_bound_mib: u64) {
    assert_eq!(report["concurrency"], concurrency);
    assert_eq!(report["errors"], 0, "{report}");
    let sessions = report["sessions"].as_u64().unwrap();
    assert!(sessions >= concurrency, "{report}");
    // Every result received has its release in the audit log, and nothing else is there.
    assert_eq!(
        report["audit_released"], report["results_received"],
        "{report}"
    );
    assert_eq!(report["audit_entries"], report["results_received"]);
    assert_eq!(
        report["results_received"].as_u64().unwrap(),
        sessions + concurrency,
        "the warm-up round adds one session per client"
    );
    let warm = report["server_rss_after_warmup_bytes"].as_u64().unwrap();
    let end = report["server_rss_end_bytes"].as_u64().unwrap();
    assert!(
        end <= warm + growth_bound_mib * 1024 * 1024,
        "the server grew from {warm} to {end} bytes: {report}"
    );
}

#[test]
fn concurrent_sessions_against_one_server() {
    let report = bench(4, 3, 200);
    check(&report, 4, 32);
}

#[test]
#[ignore = "soak: CLEANROOM_SOAK_SECONDS (default 600) of 8 concurrent sessions"]
fn soak_concurrent_sessions() {
    let seconds = std::env::var("CLEANROOM_SOAK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let report = bench(8, seconds, 2000);
    eprintln!("{report}");
    check(&report, 8, 32);
}

// ------------------------------------------------------------------------- network hygiene
