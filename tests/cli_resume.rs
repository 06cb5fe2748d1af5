//! Resuming a named job of buckets with the real binaries (issue 18): `query --job-id` killed
//! with SIGKILL in the middle of its job and run again; `serve` killed in the middle of a job
//! and started again on the same state file while the client retries; both for an aggregation
//! and for a list. Each time the result is exactly the plain computation's, and the server's
//! audit log holds one entry for the job, charged once.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cleanroom_testkit::ServeProcess;

const BIN: &str = env!("CARGO_BIN_EXE_cleanroom");

/// Rows on each side: 8 buckets of about 5 000, long enough per bucket to be killed inside.
const ROWS: u64 = 40_000;

const SQL: &str = "SELECT i.campaign, COUNT(DISTINCT c.email) AS buyers, \
     SUM(c.purchase_value) AS revenue FROM impressions i JOIN conversions c \
     ON i.email = c.email GROUP BY i.campaign";

const CAMPAIGNS: [&str; 3] = ["winter", "summer", "spring"];

/// A collaboration directory: the rules tests' collaboration, the publisher's impressions of
/// users 0..ROWS and the advertiser's purchases of users ROWS/2..3·ROWS/2.
fn setup(dir: &Path) {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/rules/tests/data");
    std::fs::copy(data.join("collab.toml"), dir.join("collab.toml")).unwrap();
    let mut impressions = String::from("email,campaign,region,device,age_band\n");
    let mut conversions =
        String::from("email,product,channel,purchase_value,quantity,coupon,store_id\n");
    for i in 0..ROWS {
        let campaign = CAMPAIGNS[(i % 3) as usize];
        impressions.push_str(&format!("user{i}@example.com,{campaign},EU,mobile,35-54\n"));
        let user = i + ROWS / 2;
        let value = i % 100 + 1;
        conversions.push_str(&format!("User{user}@Example.com,tea,web,{value},1,,s1\n"));
    }
    std::fs::write(dir.join("impressions.csv"), impressions).unwrap();
    std::fs::write(dir.join("conversions.csv"), conversions).unwrap();
    // The list's tables: subscribers 0..ROWS, customers ROWS/2..3·ROWS/2, as above.
    let mut subscribers = String::from("email,newsletter,region,signup_date\n");
    let mut customers = String::from("email,customer_id,segment,lifetime_value\n");
    for i in 0..ROWS {
        let newsletter = CAMPAIGNS[(i % 3) as usize];
        subscribers.push_str(&format!("user{i}@example.com,{newsletter},EU,2024-01-01\n"));
        let user = i + ROWS / 2;
        customers.push_str(&format!("User{user}@Example.com,c{user},retail,{i}\n"));
    }
    std::fs::write(dir.join("subscribers.csv"), subscribers).unwrap();
    std::fs::write(dir.join("customers.csv"), customers).unwrap();
}

/// What a job computes: the aggregation [`SQL`] or the list [`LIST_SQL`].
#[derive(Clone, Copy)]
enum Kind {
    Aggregate,
    List,
}

/// Every customer who subscribes, with the newsletter.
const LIST_SQL: &str = "SELECT cu.customer_id, s.newsletter FROM customers cu \
     JOIN subscribers s ON cu.email = s.email";

/// The plain list: `customer_id,newsletter` of every shared user, sorted.
fn plain_list() -> Vec<String> {
    let mut rows: Vec<String> = (ROWS / 2..ROWS)
        .map(|user| format!("c{user},{}", CAMPAIGNS[(user % 3) as usize]))
        .collect();
    rows.sort();
    rows
}

/// `query`'s output checked against the plain computation of `kind`.
fn assert_plain(kind: Kind, stdout: &str) {
    match kind {
        Kind::Aggregate => assert_eq!(parse(stdout), plain()),
        Kind::List => {
            let mut lines = stdout.lines();
            assert_eq!(lines.next(), Some("customer_id,newsletter"), "{stdout}");
            let mut rows: Vec<String> = lines.map(str::to_owned).collect();
            rows.sort();
            assert_eq!(rows, plain_list());
        }
    }
}

/// The plain answer: per campaign, the buyers and their revenue.
fn plain() -> BTreeMap<String, (u64, u64)> {
    let mut want = BTreeMap::new();
    for i in 0..ROWS {
        let user = i + ROWS / 2;
        if user < ROWS {
            let entry = want
                .entry(CAMPAIGNS[(user % 3) as usize].to_owned())
                .or_insert((0, 0));
            entry.0 += 1;
            entry.1 += i % 100 + 1;
        }
    }
    want
}

/// The result rows of `query --format csv`.
fn parse(stdout: &str) -> BTreeMap<String, (u64, u64)> {
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("campaign,buyers,revenue"), "{stdout}");
    lines
        .map(|line| {
            let cells: Vec<&str> = line.split(',').collect();
            let number = |s: &str| s.parse::<u64>().unwrap();
            (cells[0].to_owned(), (number(cells[1]), number(cells[2])))
        })
        .collect()
}

/// `serve` for the publisher on `listen`, with buckets of 5 000 rows.
fn serve(dir: &Path, listen: &str) -> ServeProcess {
    let impressions = format!("impressions={}", dir.join("impressions.csv").display());
    let subscribers = format!("subscribers={}", dir.join("subscribers.csv").display());
    let (config, state, work) = (
        dir.join("collab.toml"),
        dir.join("state.db"),
        dir.join("server-work"),
    );
    std::fs::create_dir_all(&work).unwrap();
    ServeProcess::start(
        BIN,
        &[
            "--config",
            config.to_str().unwrap(),
            "--member",
            "publisher",
            "--data",
            &impressions,
            "--data",
            &subscribers,
            "--listen",
            listen,
            "--state",
            state.to_str().unwrap(),
            "--bucket-rows",
            "5000",
            "--min-bucket-rows",
            "1000",
            "--work-dir",
            work.to_str().unwrap(),
        ],
    )
}

/// `query --job-id <job>` for the advertiser, its stderr piped.
fn query(dir: &Path, url: &str, job: &str, kind: Kind) -> Child {
    let (data, sql) = match kind {
        Kind::Aggregate => (
            format!("conversions={}", dir.join("conversions.csv").display()),
            SQL,
        ),
        Kind::List => (
            format!("customers={}", dir.join("customers.csv").display()),
            LIST_SQL,
        ),
    };
    let work = dir.join("client-work");
    std::fs::create_dir_all(&work).unwrap();
    Command::new(BIN)
        .args(["query", "--config"])
        .arg(dir.join("collab.toml"))
        .args(["--member", "advertiser", "--data", &data, "--server", url])
        .args(["--bucket-rows", "5000", "--format", "csv", "--job-id", job])
        .arg("--work-dir")
        .arg(&work)
        .arg(sql)
        .env("CLEANROOM_TOKEN", "advertiser-token")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reads `child`'s stderr until a line starts with `prefix`; returns the lines read and the
/// rest of the stream.
fn read_until(
    child: &mut Child,
    prefix: &str,
) -> (
    Vec<String>,
    std::io::Lines<BufReader<std::process::ChildStderr>>,
) {
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let found = line.starts_with(prefix);
        seen.push(line);
        if found {
            return (seen, lines);
        }
    }
    panic!("no line {prefix:?} in {seen:#?}");
}

/// The publisher's audit entries, as `cleanroom audit --format json` prints them.
fn audit(dir: &Path) -> Vec<serde_json::Value> {
    let output = Command::new(BIN)
        .args(["audit", "--format", "json", "--state"])
        .arg(dir.join("state.db"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Waits until the one audit entry is `decision`.
fn wait_for_entry(dir: &Path, decision: &str) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let entries = audit(dir);
        if entries.len() == 1 && entries[0]["decision"] == decision {
            return entries[0].clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no {decision} entry: {entries:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Everything under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// The job's one entry, released with all its buckets, and nothing left in either work
/// directory.
fn assert_released_once(dir: &Path, kind: Kind) {
    let entry = wait_for_entry(dir, "released");
    assert_eq!(
        (&entry["buckets"], &entry["buckets_done"]),
        (&8.into(), &8.into())
    );
    // A list's rows are the querier's to count, not the server's.
    let released = match kind {
        Kind::Aggregate => 3,
        Kind::List => 0,
    };
    assert_eq!(entry["released_rows"], released);
    assert!(files(&dir.join("client-work")).is_empty());
    assert!(files(&dir.join("server-work")).is_empty());
}

#[test]
fn a_query_killed_in_the_middle_of_its_job_resumes_under_its_name() {
    killed_query_resumes(Kind::Aggregate);
}

#[test]
fn a_list_query_killed_in_the_middle_of_its_job_resumes_under_its_name() {
    killed_query_resumes(Kind::List);
}

fn killed_query_resumes(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let server = serve(dir.path(), "127.0.0.1:0");

    let mut first = query(dir.path(), &server.url, "nightly-1", kind);
    let (seen, _rest) = read_until(&mut first, "bucket 3 of 8 done");
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    assert!(seen[0].starts_with("bucket 1 of 8:"), "{seen:?}");
    let entry = wait_for_entry(dir.path(), "interrupted");
    let done = entry["buckets_done"].as_u64().unwrap();
    assert!((2..8).contains(&done), "{entry}");
    // The job's value key (a list's saved buckets) waits in the client's work directory.
    let kept = files(&dir.path().join("client-work"));
    let waits = match kind {
        Kind::Aggregate => "key",
        Kind::List => "list",
    };
    assert!(
        kept.iter()
            .any(|p| p.extension().is_some_and(|e| e == waits)),
        "{kept:?}"
    );

    let again = query(dir.path(), &server.url, "nightly-1", kind)
        .wait_with_output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8(again.stdout).unwrap(),
        String::from_utf8(again.stderr).unwrap(),
    );
    assert!(again.status.success(), "{stderr}");
    assert_plain(kind, &stdout);
    // It went on from the buckets the server held.
    let resumed = format!("bucket {done} of 8 done: ");
    assert!(
        stderr.lines().next().unwrap().starts_with(&resumed),
        "{stderr}"
    );
    assert_released_once(dir.path(), kind);
    server.stop();
}

#[test]
fn a_job_whose_server_is_killed_resumes_once_it_is_back() {
    killed_server_resumes(Kind::Aggregate);
}

#[test]
fn a_list_job_whose_server_is_killed_resumes_once_it_is_back() {
    killed_server_resumes(Kind::List);
}

fn killed_server_resumes(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let server = serve(dir.path(), &listen);

    let mut client = query(dir.path(), &server.url, "nightly-2", kind);
    let (_, rest) = read_until(&mut client, "bucket 3 of 8 done");
    server.stop(); // SIGKILL
    // The server's own restart marks the job interrupted; the client, meanwhile, retries.
    std::thread::sleep(Duration::from_millis(500));
    let server = serve(dir.path(), &listen);
    // The result is read while stderr is: a list's rows outgrow a pipe's buffer.
    let mut stdout = client.stdout.take().unwrap();
    let reading = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
        text
    });
    let stderr: Vec<String> = rest.map(Result::unwrap).collect();
    let output = client.wait_with_output().unwrap();
    let stdout = reading.join().unwrap();
    assert!(output.status.success(), "{stderr:#?}");
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("job nightly-2 resumes: trying again in")),
        "{stderr:#?}"
    );
    assert_plain(kind, &stdout);
    assert_released_once(dir.path(), kind);
    server.stop();
}
