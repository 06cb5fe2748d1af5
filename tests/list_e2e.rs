//! The `cleanroom` binary's list queries: `serve` and `query --format json` / `--output
//! FILE.csv` over the list fixture (`cleanroom_testkit::list`), rows compared exactly with the
//! join computed in the clear. The in-process list tests are `crates/service/tests/list_e2e.rs`.

use cleanroom_rules::Value;
use cleanroom_testkit::ADVERTISER_TOKEN;
use cleanroom_testkit::list::*;

/// Runs `cleanroom` with `args` and the advertiser's token; returns (exit code, stdout, stderr).
fn cleanroom(args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cleanroom"))
        .args(args)
        .env("CLEANROOM_TOKEN", ADVERTISER_TOKEN)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn the_cli_lists_to_json_and_writes_csv_atomically() {
    use cleanroom_testkit::ServeProcess;

    let fx = ListFixture::new();
    let (config, state) = (fx.path("collab.toml"), fx.path("cli-state.db"));
    let (config, state) = (config.to_str().unwrap(), state.to_str().unwrap());
    let subscribers = format!("subscribers={}", fx.path("subscribers.csv").display());
    let customers = format!("customers={}", fx.path("customers.csv").display());
    let server = ServeProcess::start(
        env!("CARGO_BIN_EXE_cleanroom"),
        &[
            "--config",
            config,
            "--member",
            "publisher",
            "--data",
            &subscribers,
            "--listen",
            "127.0.0.1:0",
            "--state",
            state,
        ],
    );
    let url = server.url.clone();
    let base = [
        "query",
        "--config",
        config,
        "--member",
        "advertiser",
        "--data",
        &customers,
        "--server",
        &url,
        "--quiet",
    ];

    // JSON: the same shape as an aggregate's result.
    let (code, stdout, stderr) = cleanroom(&[&base[..], &["--format", "json", OVERLAP]].concat());
    assert_eq!(code, 0, "{stderr}");
    let got: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        got["columns"],
        serde_json::json!(["customer_id", "segment", "newsletter", "region"])
    );
    assert_eq!(got["suppressed_rows"], 0);
    let rows: Vec<Vec<Value>> = got["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().map_or(Value::Null, |s| Value::Text(s.into())))
                .collect()
        })
        .collect();
    assert_eq!(sorted(rows), fx.plain_overlap());

    // --output: the rows as CSV in the file, nothing on stdout, no temporary file left.
    let out_dir = fx.path("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("weekly.csv");
    std::fs::write(&out, "stale contents\n").unwrap();
    let out_arg = out.to_str().unwrap();
    let (code, stdout, stderr) = cleanroom(&[&base[..], &["--output", out_arg, WEEKLY]].concat());
    assert_eq!((code, stdout.as_str()), (0, ""), "{stderr}");
    let mut want = fx.plain(
        |s| s[1] == "weekly-briefing",
        |c, s| vec![value(&s[2]), value(&c[2])],
    );
    want.dedup();
    let rank = |v: &Value| match v {
        Value::Text(t) => (0, t.clone()),
        _ => (1, String::new()),
    };
    want.sort_by_key(|r| (rank(&r[0]), rank(&r[1])));
    let mut expected = String::from("region,segment\n");
    for row in &want {
        let cells: Vec<String> = row
            .iter()
            .map(|v| match v {
                Value::Text(t) => t.clone(),
                _ => String::new(),
            })
            .collect();
        expected.push_str(&cells.join(","));
        expected.push('\n');
    }
    assert_eq!(std::fs::read_to_string(&out).unwrap(), expected);
    let entries: Vec<_> = std::fs::read_dir(&out_dir).unwrap().collect();
    assert_eq!(entries.len(), 1, "{entries:?}");

    // A refused list query leaves the file as it was and exits 1 with the reason code.
    let refused = "SELECT s.signup_date FROM customers cu JOIN subscribers s ON cu.email = s.email";
    let (code, _, stderr) = cleanroom(&[&base[..], &["--output", out_arg, refused]].concat());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("output_not_list_column"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), expected);

    server.stop();
}
