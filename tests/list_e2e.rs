//! List queries over the real gRPC service on loopback: a server started in-process (the
//! publisher, serving `subscribers`) and clients of the advertiser (bringing `customers`), then
//! the `cleanroom` binary itself with `--output FILE.csv`. Rows are compared exactly with the
//! join computed in the clear over the same CSV files; a recording proxy shows that no column
//! outside `list_columns` — and no identifier or listed value in the clear — crosses the wire.
//!
//! Here, the tests that run the `cleanroom` binary; the in-process one is
//! `crates/service/tests/list_e2e.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cleanroom_rules::{Collaboration, Value};
use cleanroom_service::client::Query;
use cleanroom_service::{
    BearerToken, Client, ClientConfig, Limits, QueryOutcome, ServerConfig, StateDb,
};
use cleanroom_testkit::{ADVERTISER_TOKEN, list_collaboration};

/// Every matched pair: the customer, its segment, and the subscriber's newsletter and region.
const OVERLAP: &str = "SELECT cu.customer_id, cu.segment, s.newsletter, s.region \
    FROM customers cu JOIN subscribers s ON cu.email = s.email";

/// One row per (region, segment) among weekly subscribers, in a fixed order.
const WEEKLY: &str = "SELECT DISTINCT s.region, cu.segment FROM customers cu \
    JOIN subscribers s ON cu.email = s.email WHERE s.newsletter = 'weekly-briefing' \
    ORDER BY 1, 2";

/// A deterministic pseudo-random generator (xorshift64*), so every run sees the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// An email as a person might type it: random case changes and surrounding spaces.
fn noisy_email(rng: &mut Rng, n: u64) -> String {
    let base = format!("member{n}@example.org");
    match rng.below(4) {
        0 => base.to_uppercase(),
        1 => format!("  {base} "),
        2 => format!("Member{n}@Example.ORG"),
        _ => base,
    }
}

struct Csv {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Csv {
    fn write(&self, path: &Path) {
        let mut writer = csv::Writer::from_path(path).unwrap();
        writer.write_record(&self.header).unwrap();
        for row in &self.rows {
            writer.write_record(row).unwrap();
        }
        writer.flush().unwrap();
    }
}

fn normalize(email: &str) -> Option<String> {
    let e = email.trim().to_lowercase();
    (!e.is_empty()).then_some(e)
}

fn value(cell: &str) -> Value {
    if cell.trim().is_empty() {
        Value::Null
    } else {
        Value::Text(cell.to_owned())
    }
}

/// The publisher's subscribers (email, newsletter, region, signup_date) over members
/// 0..300, several rows per member, and the advertiser's customers (email, customer_id,
/// segment, lifetime_value) over members 150..450, some twice.
fn data(rng: &mut Rng) -> (Csv, Csv) {
    let newsletters = ["daily-digest", "weekly-briefing", "sports-extra"];
    let regions = ["EU", "US", "APAC", ""];
    let mut subscribers = Vec::new();
    for i in 0..500 {
        let n = rng.below(300);
        subscribers.push(vec![
            noisy_email(rng, n),
            newsletters[rng.below(3) as usize].to_owned(),
            regions[rng.below(4) as usize].to_owned(),
            format!(
                "2023-{:02}-{:02}T{i:03}",
                1 + rng.below(12),
                1 + rng.below(28)
            ),
        ]);
    }
    // An exact duplicate row, and a row without an identifier.
    subscribers.push(subscribers[0].clone());
    subscribers.push(vec![
        "  ".into(),
        "daily-digest".into(),
        "EU".into(),
        "2023-01-01T999".into(),
    ]);
    let segments = ["gold-tier", "silver-tier", ""];
    let mut customers = Vec::new();
    for i in 0..400 {
        let n = 150 + rng.below(300);
        customers.push(vec![
            noisy_email(rng, n),
            format!("CUST-{i:05}"),
            segments[rng.below(3) as usize].to_owned(),
            format!("{}.{:02}", 1000 + rng.below(9000), rng.below(100)),
        ]);
    }
    customers.push(vec![
        String::new(),
        "CUST-99999".into(),
        "gold-tier".into(),
        "5.00".into(),
    ]);
    let header = |h: &[&str]| h.iter().map(|s| s.to_string()).collect();
    (
        Csv {
            header: header(&["email", "newsletter", "region", "signup_date"]),
            rows: subscribers,
        },
        Csv {
            header: header(&["email", "customer_id", "segment", "lifetime_value"]),
            rows: customers,
        },
    )
}

struct Fixture {
    dir: tempfile::TempDir,
    collaboration: Arc<Collaboration>,
    subscribers: Csv,
    customers: Csv,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let toml = list_collaboration("list-e2e", "List queries end to end").render();
        std::fs::write(dir.path().join("collab.toml"), toml).unwrap();
        let collaboration = Arc::new(Collaboration::load(dir.path().join("collab.toml")).unwrap());
        let (subscribers, customers) = data(&mut Rng(0x1157_5EED_0009));
        subscribers.write(&dir.path().join("subscribers.csv"));
        customers.write(&dir.path().join("customers.csv"));
        Fixture {
            dir,
            collaboration,
            subscribers,
            customers,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The join in the clear: for every customer row and every subscriber row passing
    /// `keep` with the same normalized email, `output(customer, subscriber)`; sorted.
    fn plain(
        &self,
        keep: impl Fn(&[String]) -> bool,
        output: impl Fn(&[String], &[String]) -> Vec<Value>,
    ) -> Vec<Vec<Value>> {
        let mut rows = Vec::new();
        for c in &self.customers.rows {
            let Some(id) = normalize(&c[0]) else { continue };
            for s in self.subscribers.rows.iter().filter(|s| keep(s)) {
                if normalize(&s[0]).as_ref() == Some(&id) {
                    rows.push(output(c, s));
                }
            }
        }
        sorted(rows)
    }

    fn plain_overlap(&self) -> Vec<Vec<Value>> {
        self.plain(
            |_| true,
            |c, s| vec![value(&c[1]), value(&c[2]), value(&s[1]), value(&s[2])],
        )
    }
}

fn sorted(mut rows: Vec<Vec<Value>>) -> Vec<Vec<Value>> {
    rows.sort_by_key(|r| format!("{r:?}"));
    rows
}

async fn start_server(fx: &Fixture) -> cleanroom_testkit::Running {
    cleanroom_testkit::serve_in_process(ServerConfig {
        collaboration: Arc::clone(&fx.collaboration),
        member: "publisher".to_owned(),
        data: BTreeMap::from([("subscribers".to_owned(), fx.path("subscribers.csv").into())]),
        limits: Limits::default(),
        connections: cleanroom_service::ConnectionLimits::default(),
        state: Arc::new(StateDb::open(fx.path("state.db")).unwrap()),
        tls: None,
        insecure: false,
        on_session_end: None,
    })
    .await
}

async fn query(fx: &Fixture, addr: SocketAddr, sql: &str) -> QueryOutcome {
    let mut config = ClientConfig::new(
        format!("http://{addr}"),
        BearerToken::new(ADVERTISER_TOKEN).unwrap(),
    );
    config.timeout = Some(Duration::from_secs(60));
    let mut client = Client::connect(&config).await.unwrap();
    let data = BTreeMap::from([("customers".to_owned(), fx.path("customers.csv").into())]);
    client
        .run_query(
            Query {
                collaboration: &fx.collaboration,
                member: "advertiser",
                sql,
                data: &data,
            },
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_outside_the_list_never_cross_the_wire() {
    let fx = Fixture::new();
    let server = start_server(&fx).await;
    let (proxy, to_server, to_client) = cleanroom_testkit::recording_proxy(server.addr).await;
    let outcome = query(&fx, proxy, OVERLAP).await;
    assert_eq!(sorted(outcome.result.rows.clone()), fx.plain_overlap());

    let wire = [
        to_server.lock().unwrap().clone(),
        to_client.lock().unwrap().clone(),
    ]
    .concat();
    let contains = |needle: &str| wire.windows(needle.len()).any(|w| w == needle.as_bytes());
    // The capture is the real traffic: every protocol byte, and the SQL in the clear.
    assert!(wire.len() as u64 >= outcome.counters.bytes_sent + outcome.counters.bytes_received);
    assert!(contains(OVERLAP));
    let mut checked = 0;
    for row in &fx.subscribers.rows {
        // Not a list column: never sent, in any form.
        assert!(!contains(&row[3]), "signup_date {:?} crossed", row[3]);
        if let Some(id) = normalize(&row[0]) {
            assert!(!contains(&id), "{id:?} crossed");
            assert!(!contains(row[0].trim()), "{:?} crossed", row[0]);
        }
        checked += 1;
    }
    for row in &fx.customers.rows {
        // The querier's own columns stay home, listed or not.
        assert!(!contains(&row[1]), "customer_id {:?} crossed", row[1]);
        assert!(!contains(&row[3]), "lifetime_value {:?} crossed", row[3]);
        if let Some(id) = normalize(&row[0]) {
            assert!(!contains(&id), "{id:?} crossed");
        }
        checked += 1;
    }
    // List columns cross only encrypted.
    for listed in ["daily-digest", "weekly-briefing", "sports-extra"] {
        assert!(!contains(listed), "{listed:?} crossed in the clear");
    }
    assert_eq!(checked, 502 + 401);
    server.stop().await;
}

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
    use std::io::BufRead;

    let fx = Fixture::new();
    let (config, state) = (fx.path("collab.toml"), fx.path("cli-state.db"));
    let (config, state) = (config.to_str().unwrap(), state.to_str().unwrap());
    let subscribers = format!("subscribers={}", fx.path("subscribers.csv").display());
    let customers = format!("customers={}", fx.path("customers.csv").display());
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_cleanroom"))
        .args([
            "serve",
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
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(server.stderr.take().unwrap()).lines();
    let banner = lines.next().unwrap().unwrap();
    let url = banner
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {banner:?}"))
        .to_owned();
    std::thread::spawn(move || for _ in lines.by_ref() {});
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

    server.kill().unwrap();
    server.wait().unwrap();
}
