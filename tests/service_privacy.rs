//! Differential privacy, budgets and query limits over the real gRPC service on loopback: a
//! budget charged with each release, refused with RESOURCE_EXHAUSTED once spent and still spent
//! after a restart; a scripted differencing attempt that gets noisy answers and then refusals;
//! a querier set under the threshold refused by the server; query limits; `cleanroom budget`.
//!
//! Here, the tests that run the `cleanroom` binary; the in-process ones are
//! `crates/service/tests/service_privacy.rs`.

use cleanroom_service::Decision;
use tonic::Code;

use cleanroom_testkit::privacy::*;

/// Runs the `cleanroom` binary with `args` and, when given, `token`; returns (exit code,
/// stdout, stderr).
fn cleanroom(args: &[&str], token: Option<&str>) -> (i32, String, String) {
    cleanroom_testkit::run_cleanroom(env!("CARGO_BIN_EXE_cleanroom"), args, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_is_charged_refused_when_spent_and_survives_a_restart() {
    let setup = Setup::new(PRIVATE, BOUNDS);
    let state = setup.path("state.db");

    // First query: released with noise, 0.4 of 1.0 spent.
    let server = Server::start(&setup, &state).await;
    let first = query(&setup, &server, BY_CAMPAIGN, "conversions.csv")
        .await
        .unwrap();
    let privacy = first.accepted.privacy.clone().expect("a private result");
    assert_eq!(privacy.mechanism, "discrete_laplace");
    assert_eq!(privacy.epsilon, 0.4);
    let kinds: Vec<&str> = privacy.outputs.iter().map(|o| o.kind.as_str()).collect();
    assert_eq!(kinds, ["none", "count", "sum"]);
    // ε = 0.4 over the publisher's group sizes, a count, one sum and the bounded count (the
    // query is grouped), with each person counting in up to K = 4 campaigns (the default):
    // scale 4·4/0.4 = 40 and 4·500·4/0.4 = 20000.
    assert_eq!(privacy.max_groups_per_identifier, 4);
    assert_eq!(privacy.outputs[1].scale, 40.0);
    assert_eq!(privacy.outputs[2].scale, 20000.0);
    assert_eq!(privacy.bounded_scale, 10.0);
    let standing = first.summary.standing.unwrap();
    assert_eq!(standing.epsilon_spent, 0.4);
    assert_eq!(standing.epsilon_remaining, Some(0.6));
    // Campaign a: users 30..60 even plus none of alice (not a customer): 15 buyers; b: 15.
    for row in &first.result.rows {
        let buyers = integer(&row[1]);
        assert!(
            (buyers - 15).abs() <= 345,
            "a noisy count within the noise bound: {row:?}"
        );
    }
    server.stop().await;

    // Restarted on the same state file: the second query spends 0.8 in total.
    let server = Server::start(&setup, &state).await;
    let second = query(&setup, &server, BY_CAMPAIGN, "conversions.csv")
        .await
        .unwrap();
    let standing = second.summary.standing.unwrap();
    assert_eq!(standing.epsilon_spent, 0.8);
    assert!((standing.epsilon_remaining.unwrap() - 0.2).abs() < 1e-12);

    // The third would need 0.4 with 0.2 left: RESOURCE_EXHAUSTED, cost and remainder named.
    let (code, message) = remote(
        query(&setup, &server, BY_CAMPAIGN, "conversions.csv")
            .await
            .unwrap_err(),
    );
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(
        message.contains("costs epsilon 0.4") && message.contains("0.2 left of its budget of 1"),
        "{message}"
    );
    let entries = server.state.entries(None, None).unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[2].decision, Decision::Refused);
    assert!(entries[2].reason.contains("privacy budget exhausted"));

    // `cleanroom budget` reads the same file, also while the server runs.
    let state_arg = state.to_str().unwrap();
    let (code, stdout, stderr) =
        cleanroom(&["budget", "--state", state_arg, "--format", "json"], None);
    assert_eq!(code, 0, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let advertiser = &json.as_array().unwrap()[0];
    assert_eq!(advertiser["member"], "advertiser");
    assert_eq!(advertiser["epsilon_spent"], 0.8);
    assert_eq!(advertiser["epsilon_budget"], 1.0);
    assert_eq!(advertiser["queries"], 2);
    let (code, table, _) = cleanroom(&["budget", "--state", state_arg], None);
    assert_eq!(code, 0);
    assert!(
        table.lines().any(|l| l.starts_with("private-e2e")
            && l.contains("advertiser")
            && l.contains("0.8")
            && l.contains("0.2")),
        "{table}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanroom_query_prints_the_noise_and_the_budget() {
    let setup = Setup::new(PRIVATE, BOUNDS);
    let server = Server::start(&setup, &setup.path("state.db")).await;
    let config = setup.path("collab.toml");
    let data = format!("conversions={}", setup.path("conversions.csv").display());
    let args = |format: &'static str| {
        vec![
            "query".to_owned(),
            "--config".to_owned(),
            config.display().to_string(),
            "--member".to_owned(),
            "advertiser".to_owned(),
            "--data".to_owned(),
            data.clone(),
            "--server".to_owned(),
            server.url.clone(),
            "--quiet".to_owned(),
            "--format".to_owned(),
            format.to_owned(),
            BY_CAMPAIGN.to_owned(),
        ]
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cleanroom(&args, Some(ADVERTISER_TOKEN))
    };
    let (code, table, stderr) = tokio::task::spawn_blocking({
        let args = args("table");
        move || run(args)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        table.contains(
            "differentially private result (discrete_laplace): this query spent epsilon 0.4; \
             0.6 of the budget of 1 left"
        ),
        "{table}"
    );
    assert!(
        table.contains("buyers: count + noise of scale 40, within ±120"),
        "{table}"
    );
    assert!(
        table.contains(
            "revenue: sum of per-identifier totals clamped into sum_bounds + noise of scale 20000"
        ),
        "{table}"
    );
    // Each noisy value carries its interval, and the bounded count is told.
    assert!(table.contains(" ±120 "), "{table}");
    assert!(
        table.contains("each identifier counts in at most 4 output rows"),
        "{table}"
    );

    let (code, json, stderr) = tokio::task::spawn_blocking({
        let args = args("json");
        move || run(args)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["privacy"]["mechanism"], "discrete_laplace");
    assert_eq!(json["privacy"]["epsilon"], 0.4);
    assert_eq!(json["privacy"]["outputs"][1]["kind"], "count");
    assert_eq!(json["privacy"]["max_groups_per_identifier"], 4);
    assert!(json["privacy"]["bounded_identifiers"]["value"].is_u64());
    assert_eq!(json["privacy"]["bounded_identifiers"]["interval95"], 30);
    assert!(json["bounded_identifiers"].is_u64());
    assert_eq!(json["privacy"]["epsilon_spent"], 0.8);
    assert_eq!(json["columns"][0], "campaign");

    // The budget is spent: the third query is refused (exit code 1), with the reason's code.
    let (code, _, stderr) = tokio::task::spawn_blocking({
        let args = args("json");
        move || run(args)
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("[budget_exhausted] privacy budget exhausted"),
        "{stderr}"
    );
    server.stop().await;
}
