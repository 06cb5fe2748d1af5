//! End-to-end tests of the gRPC matching service on loopback: a server started in-process on
//! 127.0.0.1:0 (the publisher, serving `impressions`) and clients of the advertiser (bringing
//! `conversions`). Results are compared exactly with a plain computation over the same CSV
//! files; refusals, authentication, limits, disconnects, concurrency, TLS and what crosses
//! the wire are checked against the exact status codes and audit entries.
//!
//! Here, the test that runs the `cleanroom` binary (`serve`, `query`, `audit`); the in-process
//! ones are `crates/service/tests/service_e2e.rs`.

use cleanroom_rules::Value;
use cleanroom_testkit::*;

/// Runs the `cleanroom` binary with `args` and, when given, `token`; returns (exit code,
/// stdout, stderr).
fn cleanroom(args: &[&str], token: Option<&str>) -> (i32, String, String) {
    cleanroom_testkit::run_cleanroom(env!("CARGO_BIN_EXE_cleanroom"), args, token)
}

// ------------------------------------------------------------------------------------ tests

// ------------------------------------------------------------------------- the binary

fn value_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) => serde_json::json!(i),
        Value::Float(x) => serde_json::json!(x),
        Value::Decimal(d) => serde_json::json!(d.to_string()),
        Value::Text(s) => serde_json::json!(s),
    }
}

#[test]
fn the_cli_serves_queries_and_audits() {
    let fx = Fixture::new(5);
    let config = fx.path("collab.toml");
    let state = fx.path("cli-state.db");
    let (config, state) = (config.to_str().unwrap(), state.to_str().unwrap());
    let impressions = format!("impressions={}", fx.path("impressions.csv").display());
    let conversions = format!("conversions={}", fx.path("conversions.csv").display());

    // Plaintext is refused off loopback before anything listens.
    let (code, _, stderr) = cleanroom(
        &[
            "serve",
            "--config",
            config,
            "--member",
            "publisher",
            "--data",
            &impressions,
            "--listen",
            "0.0.0.0:0",
            "--state",
            state,
        ],
        None,
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("loopback"), "{stderr}");

    let server = ServeProcess::publisher(
        env!("CARGO_BIN_EXE_cleanroom"),
        &fx,
        std::path::Path::new(state),
    );
    let url = server.url.clone();

    let query = |sql: &str, format: &str, token: Option<&str>| {
        cleanroom(
            &[
                "query",
                "--config",
                config,
                "--member",
                "advertiser",
                "--data",
                &conversions,
                "--server",
                &url,
                "--format",
                format,
                "--quiet",
                sql,
            ],
            token,
        )
    };

    let (code, stdout, stderr) = query(BY_CAMPAIGN, "json", Some(ADVERTISER_TOKEN));
    assert_eq!(code, 0, "{stderr}");
    let (want, want_suppressed) = fx.plain_by_campaign();
    let expected = serde_json::json!({
        "columns": ["campaign", "buyers", "revenue"],
        "rows": want.iter().map(|r| r.iter().map(value_json).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "suppressed_rows": want_suppressed,
    });
    let got: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(got, expected);

    // The token from a file, CSV output.
    let token_file = fx.path("token");
    std::fs::write(&token_file, format!("{ADVERTISER_TOKEN}\n")).unwrap();
    let (code, stdout, stderr) = cleanroom(
        &[
            "query",
            "--config",
            config,
            "--member",
            "advertiser",
            "--data",
            &conversions,
            "--server",
            &url,
            "--format",
            "csv",
            "--quiet",
            "--token-file",
            token_file.to_str().unwrap(),
            BY_CAMPAIGN,
        ],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    let mut expected_csv = String::from("campaign,buyers,revenue\n");
    for row in &want {
        let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        expected_csv.push_str(&cells.join(","));
        expected_csv.push('\n');
    }
    assert_eq!(stdout, expected_csv);

    // Refused locally: exit 1 with the reason code.
    let count_star = "SELECT i.campaign, COUNT(*) AS n FROM impressions i \
                      JOIN conversions c ON i.email = c.email GROUP BY i.campaign";
    let (code, stdout, stderr) = query(count_star, "json", Some(ADVERTISER_TOKEN));
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    assert!(stderr.contains("count_star"), "{stderr}");

    // A wrong token and a missing token.
    let (code, _, stderr) = query(BY_CAMPAIGN, "json", Some("wrong-token"));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("Unauthenticated"), "{stderr}");
    let (code, _, stderr) = query(BY_CAMPAIGN, "json", None);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("CLEANROOM_TOKEN"), "{stderr}");

    // Killed outright: the log still holds both released results.
    server.stop();
    let (code, stdout, stderr) = cleanroom(&["audit", "--state", state, "--format", "json"], None);
    assert_eq!(code, 0, "{stderr}");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(entries.len(), 2, "{stdout}");
    for entry in &entries {
        assert_eq!(entry["decision"], "released");
        assert_eq!(entry["member"], "advertiser");
        assert_eq!(entry["sql"], BY_CAMPAIGN);
        assert_eq!(entry["released_rows"], want.len() as u64);
        assert_eq!(entry["suppressed_rows"], want_suppressed);
        assert!(entry["bytes_received"].as_u64().unwrap() > 0);
    }
    let (code, stdout, _) = cleanroom(&["audit", "--state", state], None);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("started_at"), "{stdout}");
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
}
