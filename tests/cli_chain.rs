//! Joins across three members through the `cleanroom` binary: `key new --relay`, two `serve
//! --relay-key` processes and one `query --server TABLE=URL …`, exact against a plain join;
//! and `demo --members 3`, which checks itself against its plain join.

use cleanroom_testkit::chain::{Hospitals, REGISTRY_TOKEN, hospital};
use cleanroom_testkit::{ServeProcess, run_cleanroom};

const BIN: &str = env!("CARGO_BIN_EXE_cleanroom");

#[test]
fn a_query_across_three_members_through_serve_and_query_is_exact() {
    let fx = Hospitals::new(2, 3);
    let config = fx.collaboration_file();
    let servers: Vec<ServeProcess> = (0..2)
        .map(|h| {
            let (member, table) = hospital(h);
            let data = format!(
                "{table}={}",
                fx.dir.path().join(format!("{table}.csv")).display()
            );
            let state = fx.dir.path().join(format!("cli-state-{member}.db"));
            let key = fx.relay_key_file(h);
            ServeProcess::start(
                BIN,
                &[
                    "--config",
                    config.to_str().unwrap(),
                    "--member",
                    &member,
                    "--data",
                    &data,
                    "--relay-key",
                    key.to_str().unwrap(),
                    "--listen",
                    "127.0.0.1:0",
                    "--state",
                    state.to_str().unwrap(),
                ],
            )
        })
        .collect();
    let patients = format!("patients={}", fx.dir.path().join("patients.csv").display());
    let sql = format!(
        "SELECT p.region, COUNT(DISTINCT p.email), SUM(p.cost) {} GROUP BY p.region",
        fx.from(2)
    );
    let server_a = format!("visits_a={}", servers[0].url);
    let server_b = format!("visits_b={}", servers[1].url);
    let (code, out, err) = run_cleanroom(
        BIN,
        &[
            "query",
            "--config",
            config.to_str().unwrap(),
            "--member",
            "registry",
            "--data",
            &patients,
            "--server",
            &server_a,
            "--server",
            &server_b,
            "--format",
            "json",
            &sql,
        ],
        Some(REGISTRY_TOKEN),
    );
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let got: std::collections::BTreeMap<String, (u64, u64)> = json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row[0].as_str().unwrap().to_owned(),
                (row[1].as_u64().unwrap(), row[2].as_u64().unwrap()),
            )
        })
        .collect();
    assert_eq!(got, fx.plain(2, None));
    // Each provider's session is named on stderr, the filter's and the matcher's.
    assert!(
        err.contains("visits_b (hospital_b) filtered at position 1"),
        "{err}"
    );
    assert!(
        err.contains("visits_a (hospital_a) matched and released at position 2"),
        "{err}"
    );

    // One unnamed --server for a join across three members is a clear error.
    let (code, _, err) = run_cleanroom(
        BIN,
        &[
            "query",
            "--config",
            config.to_str().unwrap(),
            "--member",
            "registry",
            "--data",
            &patients,
            "--server",
            &servers[0].url,
            &sql,
        ],
        Some(REGISTRY_TOKEN),
    );
    assert_ne!(code, 0);
    assert!(err.contains("TABLE=URL"), "{err}");
    for server in servers {
        server.stop();
    }
}

#[test]
fn key_new_relay_prints_the_relay_key_line() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("relay.key");
    let (code, out, err) = run_cleanroom(
        BIN,
        &[
            "key",
            "new",
            "--relay",
            "--member",
            "hospital_b",
            "--out",
            out_file.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("secret relay key written to"), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("relay_key = \""))
        .unwrap();
    assert_eq!(line.len(), "relay_key = \"\"".len() + 64);
    assert_eq!(std::fs::read_to_string(&out_file).unwrap().trim().len(), 64);
}

#[test]
fn demo_with_three_members_checks_itself_against_the_plain_join() {
    let (code, out, err) = run_cleanroom(BIN, &["demo", "--members", "3"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("suppressed rows (under the threshold): 1"),
        "{out}"
    );
    assert!(
        out.contains("Checked against a plain join of the three tables"),
        "{out}"
    );
    assert!(
        out.contains("hospital_c (filtered)") && out.contains("hospital_b (matched and released)"),
        "{out}"
    );
}

#[test]
fn check_explains_which_member_serves_which_part_of_a_chain() {
    let fx = Hospitals::new(3, 3);
    let config = fx.collaboration_file();
    let sql = format!(
        "SELECT b.diagnosis, COUNT(DISTINCT p.email) {} GROUP BY b.diagnosis",
        fx.from(3)
    );
    let (code, out, err) = run_cleanroom(
        BIN,
        &[
            "check",
            "--config",
            config.to_str().unwrap(),
            "--member",
            "registry",
            &sql,
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    // Grouped by hospital_b's diagnosis: it matches last; the others filter in FROM order.
    assert!(
        out.contains("visits_a (member hospital_a) filters at position 1"),
        "{out}"
    );
    assert!(
        out.contains("visits_c (member hospital_c) filters at position 2"),
        "{out}"
    );
    assert!(
        out.contains("visits_b (member hospital_b) matches at position 3"),
        "{out}"
    );
    let (code, out, _) = run_cleanroom(
        BIN,
        &[
            "check",
            "--config",
            config.to_str().unwrap(),
            "--member",
            "registry",
            "--format",
            "json",
            &sql,
        ],
        None,
    );
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let chain = json["plan"]["chain"].as_array().unwrap();
    let parts: Vec<(&str, &str)> = chain
        .iter()
        .map(|l| (l["table"].as_str().unwrap(), l["part"].as_str().unwrap()))
        .collect();
    assert_eq!(
        parts,
        [
            ("visits_a", "filter"),
            ("visits_c", "filter"),
            ("visits_b", "matcher")
        ]
    );
}
