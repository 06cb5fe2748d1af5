//! Usage and the contributors' log through the binary: a real `serve` and `query`, then
//! `cleanroom usage` (sessions, rows and buckets exactly as they ran, attributed to the
//! collaboration's payer, priced by hand) and `cleanroom audit --contributor`.

use cleanroom_testkit::*;

/// Runs the `cleanroom` binary with `args` and, when given, `token`; returns (exit code,
/// stdout, stderr).
fn cleanroom(args: &[&str], token: Option<&str>) -> (i32, String, String) {
    run_cleanroom(env!("CARGO_BIN_EXE_cleanroom"), args, token)
}

/// The fixture with `payer = "analyst"` and prices in EUR.
fn billed_fixture() -> Fixture {
    Fixture::new(5).edited(|toml| {
        let name = "name = \"End-to-end tests\"\n";
        assert!(toml.contains(name));
        toml.replacen(
            name,
            &format!(
                "{name}payer = \"analyst\"\n[collaboration.pricing]\ncurrency = \"EUR\"\n\
                 per_million_rows = 2.0\nper_gib = 0.1\nper_cpu_hour = 36.0\n"
            ),
            1,
        )
    })
}

/// The JSON of `cleanroom usage <args>`.
fn usage(args: &[&str]) -> serde_json::Value {
    let (code, stdout, stderr) = cleanroom(&[&["usage"], args].concat(), None);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn usage_counts_what_ran_for_the_payer_and_contributors_see_their_tables() {
    let fx = billed_fixture();
    assert_eq!(fx.collaboration.payer(), Some("analyst"));
    let config = fx.path("collab.toml");
    let state = fx.path("state.db");
    let (config, state) = (config.to_str().unwrap(), state.to_str().unwrap());
    let conversions = format!("conversions={}", fx.path("conversions.csv").display());

    let server = ServeProcess::publisher(
        env!("CARGO_BIN_EXE_cleanroom"),
        &fx,
        std::path::Path::new(state),
    );
    let url = server.url.clone();
    let query = |sql: &str| {
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
                "json",
                "--quiet",
                sql,
            ],
            Some(ADVERTISER_TOKEN),
        )
    };
    for _ in 0..2 {
        let (code, _, stderr) = query(BY_CAMPAIGN);
        assert_eq!(code, 0, "{stderr}");
    }
    // Refused at admission (the panel is the analyst's, not this server's): read nothing,
    // costs nothing.
    let (code, _, stderr) = query(
        "SELECT p.segment, COUNT(DISTINCT c.email) AS n FROM panel p \
         JOIN conversions c ON p.email = c.email GROUP BY p.segment",
    );
    assert_ne!(code, 0, "{stderr}");
    server.stop();

    let (code, stdout, stderr) = cleanroom(&["audit", "--state", state, "--format", "json"], None);
    assert_eq!(code, 0, "{stderr}");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(entries.len(), 3, "{stdout}");
    assert_eq!(entries[2]["decision"], "refused", "{stdout}");
    assert_eq!(
        (entries[2]["payer"].as_str(), entries[2]["buckets"].as_u64()),
        (Some(""), Some(0))
    );
    let bytes: u64 = entries[..2]
        .iter()
        .map(|e| e["bytes_received"].as_u64().unwrap() + e["bytes_sent"].as_u64().unwrap())
        .sum();

    let report = usage(&["--state", state, "--config", config, "--format", "json"]);
    assert_eq!(report["currency"], "EUR");
    assert_eq!(report["collaboration_id"], "e2e-collaboration");
    let days = report["days"].as_array().unwrap();
    assert_eq!(days.len(), 1, "{report}");
    let day = &days[0];
    let (matcher_rows, receiver_rows) = (
        2 * fx.impressions.rows.len() as u64,
        2 * fx.conversions.rows.len() as u64,
    );
    assert_eq!(day["payer"], "analyst");
    assert_eq!(day["sessions"], 2);
    assert_eq!(day["buckets"], 2);
    assert_eq!(day["matcher_rows"], matcher_rows);
    assert_eq!(day["receiver_rows"], receiver_rows);
    assert_eq!(day["rows_read"], matcher_rows + receiver_rows);
    assert_eq!(day["bytes"], bytes);
    let seconds = day["compute_seconds"].as_f64().unwrap();
    assert!(seconds > 0.0, "{report}");
    let by_hand = (matcher_rows + receiver_rows) as f64 / 1e6 * 2.0
        + bytes as f64 / (1u64 << 30) as f64 * 0.1
        + seconds / 3600.0 * 36.0;
    let price = day["price"].as_f64().unwrap();
    assert!((price - by_hand).abs() < 1e-12, "{price} != {by_hand}");
    assert_eq!(report["payers"].as_array().unwrap().len(), 1);
    assert_eq!(report["payers"][0]["payer"], "analyst");
    assert_eq!(report["total"]["sessions"], 2);
    assert!((report["total"]["price"].as_f64().unwrap() - by_hand).abs() < 1e-12);

    // Without the collaboration file: the same figures, no price.
    let unpriced = usage(&["--state", state, "--format", "json"]);
    assert_eq!(unpriced["currency"], serde_json::Value::Null);
    assert_eq!(
        unpriced["days"][0]["rows_read"],
        matcher_rows + receiver_rows
    );
    assert_eq!(unpriced["days"][0]["price"], serde_json::Value::Null);
    // --since: a later day has nothing.
    let later = usage(&[
        "--state",
        state,
        "--since",
        "2999-01-01",
        "--format",
        "json",
    ]);
    assert_eq!(later["days"].as_array().unwrap().len(), 0);
    assert_eq!(later["total"]["sessions"], 0);
    let (code, _, stderr) = cleanroom(&["usage", "--state", state, "--since", "yesterday"], None);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("YYYY-MM-DD"), "{stderr}");
    let (code, stdout, stderr) = cleanroom(&["usage", "--state", state, "--config", config], None);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.lines().next().unwrap().ends_with("price_EUR"),
        "{stdout}"
    );
    // Header, rule, the day's line, the payer's total, the total.
    assert_eq!(stdout.lines().count(), 5, "{stdout}");
    assert!(
        stdout.lines().nth(2).unwrap().contains(" analyst "),
        "{stdout}"
    );

    // The contributors' log: the publisher's and the advertiser's tables were used by both
    // sessions that ran; the analyst's by none.
    let contributor = |member: &str| {
        let (code, stdout, stderr) = cleanroom(
            &[
                "audit",
                "--state",
                state,
                "--contributor",
                member,
                "--format",
                "json",
            ],
            None,
        );
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str::<Vec<serde_json::Value>>(&stdout).unwrap()
    };
    let publisher = contributor("publisher");
    assert_eq!(publisher.len(), 2);
    for entry in &publisher {
        assert_eq!(entry["decision"], "released");
        assert_eq!(entry["sql"], BY_CAMPAIGN);
        let used = entry["used"].as_array().unwrap();
        assert_eq!(used.len(), 1, "{entry}");
        assert_eq!(used[0]["table"], "impressions");
        assert_eq!(used[0]["columns"], serde_json::json!(["email", "campaign"]));
    }
    let advertiser = contributor("advertiser");
    assert_eq!(advertiser.len(), 2);
    assert_eq!(advertiser[0]["used"][0]["table"], "conversions");
    assert!(contributor("analyst").is_empty());
}
