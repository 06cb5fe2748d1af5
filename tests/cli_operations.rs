//! Running cleanroom as an operator does, through the binary: `token new` and `serve
//! --config-file` (a member admitted by a freshly made token, and no longer by its old one,
//! queries a server whose settings come from a file, one of them overridden on the command
//! line), errors said once with their fix, `serve --client-ca` (refused without TLS, then
//! requiring a certificate of that CA), stopping `serve` with one signal (drain) or two (at
//! once), `health` (exit 0 only when serving); the log (text and JSON lines, RUST_LOG), the
//! metrics, and failed authentications logged, counted and audited without the token.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_cleanroom");

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/rules/tests/data")
        .join(name)
}

/// Runs the binary; exit code, stdout, stderr.
fn cleanroom(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("CLEANROOM_TOKEN")
        .envs(env.iter().copied())
        .output()
        .expect("run cleanroom");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The token and the hash line of `token new`'s output.
fn token_and_hash(stdout: &str) -> (String, String) {
    let token = stdout
        .lines()
        .find_map(|l| l.strip_prefix("token (member \"advertiser\"): "))
        .expect("a token line")
        .to_owned();
    let hash = stdout
        .lines()
        .find_map(|l| l.strip_prefix("token_sha256 = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("a hash line")
        .to_owned();
    (token, hash)
}

#[test]
fn token_new_makes_a_random_256_bit_token_and_the_line_that_admits_it() {
    let (code, stdout, stderr) = cleanroom(&["token", "new", "--member", "advertiser"], &[]);
    assert_eq!(code, 0, "{stderr}");
    let (token, hash) = token_and_hash(&stdout);
    assert_eq!(token.len(), 64);
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_eq!(hash, hex::encode(Sha256::digest(token.as_bytes())));
    let (_, again, _) = cleanroom(&["token", "new", "--member", "advertiser"], &[]);
    assert_ne!(token_and_hash(&again).0, token, "every token is fresh");

    // --out: a new owner-only file holds the token; nothing overwrites it; stdout has no token.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("advertiser.token");
    let out = file.to_str().unwrap();
    let (code, stdout, stderr) = cleanroom(&["token", "new", "--out", out], &[]);
    assert_eq!(code, 0, "{stderr}");
    let written = std::fs::read_to_string(&file).unwrap();
    let written = written.trim_end();
    assert_eq!(written.len(), 64);
    assert!(
        !stdout.contains(written),
        "the token is not printed with --out"
    );
    assert!(stdout.contains(&hex::encode(Sha256::digest(written.as_bytes()))));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (code, _, stderr) = cleanroom(&["token", "new", "--out", out], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--out"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim_end(), written);
}

/// A running `serve`, killed on drop; its stderr lines arrive on a channel.
struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `cleanroom serve <args>`, once it listens, and its `http://` (or `https://`) URL.
    fn start(args: &[&str]) -> (Server, String) {
        Server::start_with_env(args, &[])
    }

    /// [`Server::start`] with `env` added to the environment, which otherwise sets no limit
    /// on glibc's arenas (the binary's own default is tested).
    fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> (Server, String) {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(args)
            .env_remove("MALLOC_ARENA_MAX")
            .env_remove("GLIBC_TUNABLES")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let server = Server { child, lines };
        // The start line, in either log format: `... member "publisher" of collaboration ...
        // on http://127.0.0.1:PORT (state ...)`.
        let start = server.line_with("of collaboration");
        let url = start
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            .expect("the listening address")
            .to_owned();
        (server, url)
    }

    /// Sends the signal `name` (`TERM`, `INT`) to the server.
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The server's exit code, within a minute.
    fn exit_code(&mut self) -> Option<i32> {
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("serve did not exit");
    }

    /// The first stderr line containing `needle`, within a minute.
    fn line_with(&self, needle: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("serve never printed {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }
}

#[test]
fn a_server_file_configures_serve_and_a_fresh_token_admits_its_member() {
    let dir = tempfile::tempdir().unwrap();
    let (_, stdout, _) = cleanroom(&["token", "new", "--member", "advertiser"], &[]);
    let (token, hash) = token_and_hash(&stdout);
    // The collaboration with the advertiser's old hash replaced by the line token new printed.
    let collab = std::fs::read_to_string(data("collab.toml")).unwrap();
    let old = "414eb4cbdada9c62b0fd994eacd4ae564ea18cfe142c15df6ff5331210e26955";
    assert!(collab.contains(old));
    let collab_path = dir.path().join("collab.toml");
    std::fs::write(&collab_path, collab.replace(old, &hash)).unwrap();
    let server_file = dir.path().join("server.toml");
    std::fs::write(
        &server_file,
        format!(
            "config = {:?}\nmember = \"publisher\"\ndata = [{:?}]\nlisten = \"127.0.0.1:0\"\n\
             state = {:?}\nmax-connections = 100\nmax_connections_per_address = 7\n",
            collab_path.to_str().unwrap(),
            format!("impressions={}", data("impressions.csv").display()),
            dir.path().join("state.db").to_str().unwrap(),
        ),
    )
    .unwrap();
    let (server, url) = Server::start(&[
        "--config-file",
        server_file.to_str().unwrap(),
        "--max-connections",
        "50",
    ]);
    // From the file: 7 per address; from the command line, over the file's 100: 50.
    let caps = server.line_with("connections (");
    assert!(
        caps.ends_with("at most 50 connections (7 per address)"),
        "{caps}"
    );

    let conversions = format!("conversions={}", data("conversions.csv").display());
    let query_at = |url: &str, token: &str| {
        cleanroom(
            &[
                "query",
                "--config",
                collab_path.to_str().unwrap(),
                "--member",
                "advertiser",
                "--data",
                &conversions,
                "--server",
                url,
                "--format",
                "json",
                "SELECT i.campaign, COUNT(DISTINCT c.email) AS buyers FROM impressions i \
                 JOIN conversions c ON i.email = c.email GROUP BY i.campaign",
            ],
            &[("CLEANROOM_TOKEN", token)],
        )
    };
    let query = |token: &str| query_at(&url, token);
    let (code, stdout, stderr) = query(&token);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"columns\""), "{stdout}");
    let (code, _, stderr) = query("advertiser-token");
    assert_ne!(code, 0);
    assert!(
        stderr.to_lowercase().contains("unauthenticated") || stderr.contains("token"),
        "{stderr}"
    );

    // https:// against this plaintext server: one line, each cause once, and the fix.
    let tls_url = url.replacen("http://", "https://", 1);
    let (code, _, stderr) = query_at(&tls_url, &token);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert_eq!(stderr.matches("InvalidContentType").count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("use {url}")), "{stderr}");
}

#[test]
fn serve_client_ca_needs_tls_and_then_requires_a_certificate_of_that_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("partners.pem");
    std::fs::write(
        &ca,
        cleanroom_testkit::CertificateAuthority::new("partners").cert_pem(),
    )
    .unwrap();
    let state = dir.path().join("state.db");
    let publisher = publisher_args(&state);
    let args: Vec<&str> = ["serve"]
        .into_iter()
        .chain(publisher.iter().map(String::as_str))
        .collect();
    let expected = "error: --client-ca needs TLS: client certificates are only exchanged in a \
                    TLS handshake; give --tls-cert and --tls-key as well\n";
    // As a flag.
    let mut flag = args.to_vec();
    flag.extend(["--client-ca", ca.to_str().unwrap()]);
    let (code, _, stderr) = cleanroom(&flag, &[]);
    assert_eq!((code, stderr.as_str()), (2, expected));
    // As the same key of a server file.
    let server_file = dir.path().join("server.toml");
    std::fs::write(
        &server_file,
        format!("client-ca = {:?}\n", ca.to_str().unwrap()),
    )
    .unwrap();
    let mut file = args.to_vec();
    file.extend(["--config-file", server_file.to_str().unwrap()]);
    let (code, _, stderr) = cleanroom(&file, &[]);
    assert_eq!((code, stderr.as_str()), (2, expected));
    assert!(!state.exists(), "the state database was created");

    // With TLS, the file's client CA is the one the handshake requires: a probe without a
    // certificate of that CA fails, one with it is told SERVING.
    let server_tls = cleanroom_service::TlsIdentity::self_signed(&["127.0.0.1"]).unwrap();
    let partners = cleanroom_testkit::CertificateAuthority::new("partners");
    std::fs::write(&ca, partners.cert_pem()).unwrap();
    let probe = partners.issue_client("probe");
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (cert, key) = (
        write("server.pem", &server_tls.cert_pem),
        write("server.key", &server_tls.key_pem),
    );
    let (probe_cert, probe_key) = (
        write("probe.pem", &probe.cert_pem),
        write("probe.key", &probe.key_pem),
    );
    let mut tls = file[1..].to_vec();
    tls.extend(["--tls-cert", cert.as_str(), "--tls-key", key.as_str()]);
    let (_server, url) = Server::start(&tls);
    assert!(url.starts_with("https://"), "{url}");
    let (code, _, stderr) = cleanroom(&["health", "--server", &url, "--ca", &cert], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("give --tls-cert and --tls-key"), "{stderr}");
    let (code, stdout, stderr) = cleanroom(
        &[
            "health",
            "--server",
            &url,
            "--ca",
            &cert,
            "--tls-cert",
            &probe_cert,
            "--tls-key",
            &probe_key,
        ],
        &[],
    );
    assert_eq!((code, stdout.as_str()), (0, "SERVING\n"), "{stderr}");
}

#[test]
fn a_missing_state_database_is_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.db");
    for command in ["audit", "budget"] {
        let (code, _, stderr) = cleanroom(&[command, "--state", missing.to_str().unwrap()], &[]);
        assert_eq!(code, 2);
        assert_eq!(
            stderr,
            format!(
                "error: no state database at {} (`cleanroom serve --state` creates one)\n",
                missing.display()
            )
        );
        assert!(
            !missing.exists(),
            "{command} created the database it was to read"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_signal_drains_and_a_second_stops_at_once() {
    use cleanroom_testkit::{
        ADVERTISER_TOKEN, BY_CAMPAIGN, Fixture, raw_client, raw_open, start_message,
    };

    let fx = Fixture::new(5);
    let state = fx.path("state.db");
    let data = format!("impressions={}", fx.path("impressions.csv").display());
    let collab = fx.path("collab.toml");
    let args = [
        "--config",
        collab.to_str().unwrap(),
        "--member",
        "publisher",
        "--data",
        &data,
        "--listen",
        "127.0.0.1:0",
        "--state",
        state.to_str().unwrap(),
    ];
    let start = || start_message(&fx, "advertiser", BY_CAMPAIGN, "conversions");

    // No session: one signal, and the server is gone after saying so.
    let (mut server, _) = Server::start(&args);
    server.signal("TERM");
    server.line_with("draining 0 running sessions; new sessions are refused");
    assert_eq!(server.exit_code(), Some(0));

    // A session that holds its slot (it sent its start and waits): the first signal drains.
    let (mut server, url) = Server::start(&args);
    let addr = url.trim_start_matches("http://").parse().unwrap();
    let mut held = raw_client(addr, Some(ADVERTISER_TOKEN)).await;
    let (_held_tx, mut held_in) = raw_open(&mut held, start()).await.unwrap();
    held_in
        .message()
        .await
        .unwrap()
        .expect("the session is accepted");
    server.signal("INT");
    server.line_with("draining 1 running session; new sessions are refused");
    // A health check now says so (exit 1, as a container health check reads it).
    let (code, stdout, _) = cleanroom(&["health", "--server", &url], &[]);
    assert_eq!((code, stdout.as_str()), (1, "NOT_SERVING\n"));
    // A member arriving now is told why, at once, and the server keeps serving the other.
    let mut late = raw_client(addr, Some(ADVERTISER_TOKEN)).await;
    let Err(refused) = raw_open(&mut late, start()).await else {
        panic!("a draining server admitted a new session");
    };
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert_eq!(
        refused.message(),
        cleanroom_service::server::DRAINING_MESSAGE
    );
    assert_eq!(
        server.child.try_wait().unwrap(),
        None,
        "the server waits for the session"
    );
    // The second signal stops it now; the held session is recorded as interrupted.
    server.signal("INT");
    server.line_with("second signal: stopping now; 1 running session recorded as interrupted");
    assert_eq!(server.exit_code(), Some(130));
    let entries = cleanroom_service::StateDb::open_read_only(&state)
        .unwrap()
        .entries(None, None)
        .unwrap();
    let decisions: Vec<_> = entries.iter().map(|e| e.decision).collect();
    assert!(
        decisions.contains(&cleanroom_service::Decision::Interrupted),
        "{decisions:?}"
    );
    assert!(
        !decisions.contains(&cleanroom_service::Decision::Running),
        "{decisions:?}"
    );
}

/// `serve`'s flags for the publisher of the fixture collaboration on 127.0.0.1, with its
/// impressions and the state database `state`.
fn publisher_args(state: &Path) -> Vec<String> {
    [
        "--config",
        data("collab.toml").to_str().unwrap(),
        "--member",
        "publisher",
        "--data",
        &format!("impressions={}", data("impressions.csv").display()),
        "--listen",
        "127.0.0.1:0",
        "--state",
        state.to_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// `GET /metrics` on `addr`: the status line and the body.
fn scrape(addr: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The value of the sample `name{labels}` in a Prometheus text body.
fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{body}"))
        .parse()
        .unwrap()
}

/// The advertiser's buyers per campaign, asked of the server at `url` with `token` and the
/// `extra` flags of `query`: exit code, stdout, stderr.
fn buyers_query(url: &str, token: &str, extra: &[&str]) -> (i32, String, String) {
    let collab = data("collab.toml");
    let conversions = format!("conversions={}", data("conversions.csv").display());
    let mut args = vec!["query", "--config", collab.to_str().unwrap(), "--member"];
    args.extend(["advertiser", "--data", &conversions, "--server", url]);
    args.extend(extra);
    args.push(
        "SELECT i.campaign, COUNT(DISTINCT c.email) AS buyers FROM impressions i \
         JOIN conversions c ON i.email = c.email GROUP BY i.campaign",
    );
    cleanroom(&args, &[("CLEANROOM_TOKEN", token)])
}

/// Data rows of a fixture CSV file (lines after the header).
fn data_rows(name: &str) -> f64 {
    (std::fs::read_to_string(data(name)).unwrap().lines().count() - 1) as f64
}

#[test]
fn the_log_the_metrics_and_the_audit_see_sessions_and_failed_authentications() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let publisher = publisher_args(&state);
    let mut args: Vec<&str> = publisher.iter().map(String::as_str).collect();
    args.extend(["--log-format", "json", "--metrics-listen", "127.0.0.1:0"]);
    let (mut server, url) = Server::start(&args);
    let metrics = server.line_with("metrics at http://");
    let metrics: serde_json::Value = serde_json::from_str(&metrics).unwrap();
    let metrics = metrics["message"]
        .as_str()
        .unwrap()
        .trim_start_matches("metrics at http://")
        .trim_end_matches("/metrics")
        .to_owned();

    // The advertiser's query at `url` with `token`.
    let query = |url: &str, token: &str| buyers_query(url, token, &[]);
    const WRONG: &str = "not-a-member-token-5f3a9c";
    let (code, _, stderr) = query(&url, WRONG);
    assert_ne!(code, 0, "{stderr}");
    let (code, _, stderr) = query(&url, "advertiser-token");
    assert_eq!(code, 0, "{stderr}");

    // The metrics, while the server runs: exact counts of what happened.
    let (status, body) = scrape(&metrics);
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let auth = "cleanroom_authentication_failures_total{reason=\"unknown_token\"}";
    assert_eq!(sample(&body, auth), 1.0);
    assert_eq!(
        sample(&body, "cleanroom_sessions_total{decision=\"released\"}"),
        1.0
    );
    let rows = |side: &str| {
        let series =
            format!("cleanroom_session_rows_total{{member=\"advertiser\",side=\"{side}\"}}");
        sample(&body, &series)
    };
    assert_eq!(rows("server"), data_rows("impressions.csv"));
    assert_eq!(rows("client"), data_rows("conversions.csv"));
    let duration = "cleanroom_session_duration_seconds_count{decision=\"released\"}";
    assert_eq!(sample(&body, duration), 1.0);
    assert_eq!(sample(&body, "cleanroom_sessions_in_flight"), 0.0);
    assert!(
        sample(
            &body,
            "cleanroom_session_bytes_total{direction=\"received\",member=\"advertiser\"}"
        ) > 0.0
    );
    let (status, _) = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&metrics).unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        (response.lines().next().unwrap().to_owned(), ())
    };
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    // Stopped, the failed authentication is in the state database.
    server.signal("TERM");
    assert_eq!(server.exit_code(), Some(0));
    let lines: Vec<String> = server.lines.try_iter().collect();
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for line in &lines {
        assert!(!line.contains(WRONG), "the token was logged: {line}");
        assert!(
            !line.contains("advertiser-token"),
            "a token was logged: {line}"
        );
        assert!(
            !line.contains("@example.com"),
            "an identifier was logged: {line}"
        );
    }
    let event = |name: &str| {
        events
            .iter()
            .find(|e| e["event"] == name)
            .unwrap_or_else(|| panic!("no {name} event in {lines:#?}"))
    };
    let failed = event("authentication_failed");
    assert_eq!(failed["reason"], "unknown_token");
    assert_eq!(failed["level"], "WARN");
    assert!(
        failed["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{failed}"
    );
    assert!(
        failed["timestamp"].as_str().unwrap().starts_with("20"),
        "{failed}"
    );
    let started = event("session_started");
    assert_eq!(started["member"], "advertiser");
    assert_eq!(started["protocol"], "cardinality");
    let ended = event("session_ended");
    assert_eq!(ended["session_id"], started["session_id"]);
    assert_eq!(ended["decision"], "released");
    assert_eq!(
        ended["server_rows"].as_f64(),
        Some(data_rows("impressions.csv"))
    );

    let (code, stdout, stderr) = cleanroom(
        &[
            "audit",
            "--state",
            state.to_str().unwrap(),
            "--auth-failures",
            "--format",
            "json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    let rows: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{stdout}");
    assert_eq!(rows[0]["reason"], "unknown_token");
    assert_eq!(rows[0]["peer"], "127.0.0.1");
    assert_eq!(rows[0]["member"], "");
    assert_eq!(rows[0]["count"], 1);
    assert!(!stdout.contains(WRONG));

    // RUST_LOG filters: the start line is kept, the sessions' INFO events are not, and a
    // failed authentication (WARN) still is.
    let text_args: Vec<&str> = publisher.iter().map(String::as_str).collect();
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(&text_args)
        .env("RUST_LOG", "warn,cleanroom::serve=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let start = lines.next().unwrap().unwrap();
    assert!(
        start.contains(" INFO cleanroom::serve: member \"publisher\""),
        "{start}"
    );
    let url = start
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    assert_ne!(query(&url, WRONG).0, 0);
    assert_eq!(query(&url, "advertiser-token").0, 0);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter()
            .any(|l| l.contains(" WARN cleanroom::auth:") && l.contains("unknown_token")),
        "{rest:#?}"
    );
    assert!(!rest.iter().any(|l| l.contains("session_")), "{rest:#?}");

    // A RUST_LOG that does not parse stops the start with a clear error.
    let (code, _, stderr) = {
        let out = Command::new(BIN)
            .arg("serve")
            .args(&text_args)
            .env("RUST_LOG", "cleanroom=loud")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("RUST_LOG=\"cleanroom=loud\" is not a valid filter"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_exits_0_only_for_a_serving_server() {
    use cleanroom_service::{Limits, StateDb, TlsIdentity};
    use cleanroom_testkit::{
        CertificateAuthority, Fixture, publisher_config, rand_suffix, serve_in_process,
    };

    let health = async |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let mut all = vec!["health".to_owned()];
            all.extend(args);
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            cleanroom(&all, &[])
        })
        .await
        .unwrap()
    };
    let args = |list: &[&str]| list.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();

    // Plaintext: the server as a whole and the cleanroom service serve; an unknown service is
    // not serving.
    let fx = Fixture::new(3);
    let state =
        || Arc::new(StateDb::open(fx.path(&format!("state-{}.db", rand_suffix()))).unwrap());
    let server = serve_in_process(publisher_config(&fx, Limits::default(), None, state())).await;
    let url = format!("http://{}", server.addr);
    assert_eq!(
        health(args(&["--server", &url])).await,
        (0, "SERVING\n".to_owned(), String::new())
    );
    let service = [
        "--server",
        &url,
        "--service",
        "cleanroom.v1.CleanRoomService",
    ];
    assert_eq!(health(args(&service)).await.0, 0);
    let (code, _, stderr) = health(args(&["--server", &url, "--service", "nope"])).await;
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    server.stop().await;
    // Stopped: nothing listens.
    let (code, stdout, stderr) = health(args(&["--server", &url])).await;
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    assert!(stderr.starts_with("error: cannot reach"), "{stderr}");

    // TLS with a client CA: the probe needs a certificate of that CA too.
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let server_tls = TlsIdentity::self_signed(&["localhost"]).unwrap();
    let partners = CertificateAuthority::new("partners");
    let probe = partners.issue_client("probe");
    let mut config = publisher_config(&fx, Limits::default(), Some(server_tls.clone()), state());
    config.client_ca = Some(partners.cert_pem());
    let server = serve_in_process(config).await;
    let url = format!("https://localhost:{}", server.addr.port());
    let ca = write("server.pem", &server_tls.cert_pem);
    let (code, _, stderr) = health(args(&["--server", &url, "--ca", &ca])).await;
    assert_eq!(code, 1, "{stderr}");
    let (cert, key) = (
        write("probe.pem", &probe.cert_pem),
        write("probe.key", &probe.key_pem),
    );
    let with_cert = [
        "--server",
        &url,
        "--ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ];
    assert_eq!(
        health(args(&with_cert)).await,
        (0, "SERVING\n".to_owned(), String::new())
    );
    server.stop().await;
}

/// A fresh token of `member` from `token new`, and its hash.
fn fresh_token(member: &str) -> (String, String) {
    let (code, stdout, stderr) = cleanroom(&["token", "new", "--member", member], &[]);
    assert_eq!(code, 0, "{stderr}");
    let token = stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("token (member {member:?}): ")))
        .expect("a token line")
        .to_owned();
    (token.clone(), hex::encode(Sha256::digest(token.as_bytes())))
}

#[test]
fn a_receiver_makes_a_key_and_fetches_the_result_of_a_query_it_did_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("retailer.key");
    let (code, stdout, stderr) = cleanroom(
        &[
            "key",
            "new",
            "--member",
            "retailer",
            "--out",
            key_file.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("result_key = \""))
        .expect("the result_key line")
        .to_owned();
    let secret = std::fs::read_to_string(&key_file).unwrap();
    assert!(
        !stdout.contains(secret.trim()),
        "the secret is never printed"
    );
    // A second `key new` never overwrites the file.
    let (code, _, _) = cleanroom(&["key", "new", "--out", key_file.to_str().unwrap()], &[]);
    assert_ne!(code, 0);

    // Fresh tokens for the advertiser (querier) and the retailer (receiver), and the
    // retailer's result key in its entry.
    let (advertiser, advertiser_hash) = fresh_token("advertiser");
    let (retailer, retailer_hash) = fresh_token("retailer");
    let collab = std::fs::read_to_string(data("collab.toml")).unwrap();
    let collab = collab
        .replace(
            "414eb4cbdada9c62b0fd994eacd4ae564ea18cfe142c15df6ff5331210e26955",
            &advertiser_hash,
        )
        .replace(
            "22F56E4AA3CE46F8961F8496EFE6A4E63E4E2F848DAC293D6C31E2B6EAE5A21C",
            &retailer_hash,
        )
        .replace(
            "name = \"retailer\"\n",
            &format!("name = \"retailer\"\n{line}\n"),
        );
    let collab_path = dir.path().join("collab.toml");
    std::fs::write(&collab_path, &collab).unwrap();
    let state = dir.path().join("state.db");
    let mut args = publisher_args(&state);
    args[1] = collab_path.to_str().unwrap().to_owned();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_server, url) = Server::start(&args);

    let sql = "SELECT i.campaign, COUNT(DISTINCT c.email) AS buyers FROM impressions i \
               JOIN conversions c ON i.email = c.email GROUP BY i.campaign";
    let conversions = format!("conversions={}", data("conversions.csv").display());
    let query = |receivers: &[&str]| {
        let mut args = vec![
            "query",
            "--config",
            collab_path.to_str().unwrap(),
            "--member",
            "advertiser",
            "--data",
            &conversions,
            "--server",
            &url,
            "--format",
            "json",
        ];
        for r in receivers {
            args.extend(["--receiver", r]);
        }
        args.push(sql);
        cleanroom(&args, &[("CLEANROOM_TOKEN", advertiser.as_str())])
    };
    // `check` says beforehand whether the receivers may receive.
    let check = |receiver: &str| {
        cleanroom(
            &[
                "check",
                "--config",
                collab_path.to_str().unwrap(),
                "--member",
                "advertiser",
                "--receiver",
                receiver,
                "--format",
                "json",
                sql,
            ],
            &[],
        )
    };
    let (code, stdout, stderr) = check("retailer");
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, stdout, _) = check("publisher");
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("missing_receive_results_ability"),
        "{stdout}"
    );

    let (code, own, stderr) = query(&[]);
    assert_eq!(code, 0, "{stderr}");
    // The result goes to the retailer only: the advertiser is told where, not what.
    let (code, stdout, stderr) = query(&["retailer"]);
    assert_eq!(code, 0, "{stderr}");
    let told: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(told["delivered_to"], serde_json::json!(["retailer"]));
    assert!(told.get("rows").is_none(), "{stdout}");
    let session = told["session_id"].as_str().unwrap().to_owned();

    let results = |token: &str| {
        cleanroom(
            &[
                "results",
                "--config",
                collab_path.to_str().unwrap(),
                "--member",
                "retailer",
                "--key-file",
                key_file.to_str().unwrap(),
                "--server",
                &url,
                "--format",
                "json",
                &session,
            ],
            &[("CLEANROOM_TOKEN", token)],
        )
    };
    let (code, fetched, stderr) = results(&retailer);
    assert_eq!(code, 0, "{stderr}");
    let fetched: serde_json::Value = serde_json::from_str(&fetched).unwrap();
    let own: serde_json::Value = serde_json::from_str(&own).unwrap();
    assert_eq!(fetched["rows"], own["rows"]);
    assert_eq!(fetched["suppressed_rows"], own["suppressed_rows"]);
    assert!(!own["rows"].as_array().unwrap().is_empty());
    // The querier cannot fetch it with its own token.
    let (code, _, stderr) = results(&advertiser);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("NotFound") || stderr.contains("no result"),
        "{stderr}"
    );
}

/// The value of `name` in the environment of the running process `pid`, as Linux shows it.
#[cfg(target_os = "linux")]
fn environment_of(pid: u32, name: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    environ.split(|&b| b == 0).find_map(|entry| {
        let entry = String::from_utf8_lossy(entry);
        let (key, value) = entry.split_once('=')?;
        (key == name).then(|| value.to_owned())
    })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn serve_limits_glibc_arenas_itself_and_keeps_a_limit_the_user_set() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let publisher = publisher_args(&state);
    let args: Vec<&str> = publisher.iter().map(String::as_str).collect();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));

    let (server, _) = Server::start_with_env(&args, &[]);
    let pid = server.child.id();
    assert_eq!(
        environment_of(pid, "MALLOC_ARENA_MAX"),
        Some(cores.to_string())
    );
    drop(server);

    let (server, _) = Server::start_with_env(&args, &[("MALLOC_ARENA_MAX", "7")]);
    assert_eq!(
        environment_of(server.child.id(), "MALLOC_ARENA_MAX").as_deref(),
        Some("7")
    );
}

#[test]
fn a_job_shows_its_buckets_with_rate_and_time_left_and_serve_logs_each() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let publisher = publisher_args(&state);
    let mut args: Vec<&str> = publisher.iter().map(String::as_str).collect();
    // 160 impressions in buckets of 40, 110 conversions in buckets of 30: a job of 4 buckets.
    args.extend(["--log-format", "json", "--bucket-rows", "40"]);
    args.extend(["--min-bucket-rows", "16"]);
    let (server, url) = Server::start(&args);
    // Without a terminal: a line per bucket.
    let (code, _, stderr) = buyers_query(&url, "advertiser-token", &["--bucket-rows", "30"]);
    assert_eq!(code, 0, "{stderr}");
    let rows = rows_with_identifier("conversions.csv");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("bucket "))
        .collect();
    assert_eq!(lines.len(), 5, "{stderr}");
    assert_eq!(lines[0], format!("bucket 1 of 4: {rows} rows to match"));
    for (done, line) in lines[1..].iter().enumerate() {
        let prefix = format!("bucket {} of 4 done: ", done + 1);
        assert!(line.starts_with(&prefix), "{line}");
        assert!(line.contains(&format!(" of {rows} rows, ")), "{line}");
        assert!(line.contains(" rows/s"), "{line}");
        assert_eq!(line.contains(" left"), done < 3, "{line}");
    }
    assert!(
        lines[4].contains(&format!("done: {rows} of {rows} rows")),
        "{line:?}",
        line = lines[4]
    );

    // One log event per bucket on the server's side, in order, with its own rows only.
    let mut server_rows = 0;
    for bucket in 1..=4 {
        let line = server.line_with("\"bucket_matched\"");
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        let fields = &event;
        assert_eq!(fields["bucket"], bucket, "{line}");
        assert_eq!(fields["buckets"], 4, "{line}");
        server_rows += fields["server_rows"].as_u64().unwrap();
    }
    assert_eq!(server_rows, rows_with_identifier("impressions.csv"));
    drop(server);

    // The job's one audit entry: all 4 buckets done.
    let (code, stdout, stderr) = cleanroom(
        &[
            "audit",
            "--state",
            state.to_str().unwrap(),
            "--format",
            "json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(entries.len(), 1, "{stdout}");
    let entry = &entries[0];
    assert_eq!(entry["decision"], "released", "{stdout}");
    assert_eq!(
        (&entry["buckets"], &entry["buckets_done"]),
        (&4.into(), &4.into())
    );
}

/// Data rows of a fixture CSV file whose first column (the email) is not blank: the rows a
/// job puts in its buckets.
fn rows_with_identifier(name: &str) -> u64 {
    let text = std::fs::read_to_string(data(name)).unwrap();
    let rows = text.lines().skip(1);
    rows.filter(|l| !l.split(',').next().unwrap().trim().is_empty())
        .count() as u64
}
