//! `cleanroom bench --concurrency K --duration S`: a load test of the matching service.
//!
//! A real `cleanroom serve` runs as a child process on 127.0.0.1 (so its memory is its own),
//! serving the benchmark's provider table; K clients in this process, each on its own
//! connection, run the benchmark's query again and again until the time is up. Every result
//! is checked against the known answer, every session's latency recorded, and the server's
//! resident memory read from `/proc` when idle, after a first round of K sessions, and at the
//! end. Afterwards the server's audit log must hold exactly one `released` entry per result
//! the clients received.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cleanroom_rules::{Collaboration, Value};
use cleanroom_service::{BearerToken, Client, ClientConfig, Decision, Query, StateDb};
use serde_json::json;

use crate::fixture::{grpc_expected, grpc_fixture};

/// What to run.
#[derive(Debug, Clone)]
pub struct Load {
    /// The `cleanroom` binary whose `serve` runs the server.
    pub server: PathBuf,
    /// Identifiers per party.
    pub size: u64,
    /// Identifiers common to both.
    pub common: u64,
    /// Value columns summed (0 or 1).
    pub columns: usize,
    /// Sessions at once.
    pub concurrency: usize,
    /// How long to keep starting sessions.
    pub duration: Duration,
}

/// A `cleanroom serve` child process.
struct ServeChild {
    child: Child,
    url: String,
    /// Sessions the server logged as released.
    released: Arc<AtomicU64>,
    /// Sessions the server logged with another decision (their log lines).
    other: Arc<std::sync::Mutex<Vec<String>>>,
    /// The thread draining the server's log.
    log: Option<std::thread::JoinHandle<()>>,
}

impl ServeChild {
    fn spawn(
        exe: &Path,
        config: &Path,
        left: &Path,
        state: &Path,
        max_sessions: usize,
    ) -> Result<ServeChild> {
        let mut child = Command::new(exe)
            .args(["serve", "--config"])
            .arg(config)
            .args(["--member", "provider", "--data"])
            .arg(format!("left_ids={}", left.display()))
            .args(["--listen", "127.0.0.1:0", "--state"])
            .arg(state)
            .args(["--max-sessions", &max_sessions.to_string()])
            // Every load client is the same member: let it use every slot.
            .args(["--max-sessions-per-member", &max_sessions.to_string()])
            // JSON lines: the `session_ended` events are counted below.
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting cleanroom serve")?;
        let stderr = child.stderr.take().context("the server's stderr")?;
        let mut lines = std::io::BufReader::new(stderr).lines();
        let banner = match lines.next() {
            Some(line) => line?,
            None => {
                let status = child.wait()?;
                bail!("cleanroom serve exited ({status}) before listening");
            }
        };
        let url = banner
            .split(|c: char| c.is_whitespace() || c == '"')
            .find(|w| w.starts_with("http://"))
            .with_context(|| format!("no address in the server's banner {banner:?}"))?
            .to_owned();
        let released = Arc::new(AtomicU64::new(0));
        let other = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (count, log) = (Arc::clone(&released), Arc::clone(&other));
        // Drain the log so the server never blocks on a full pipe.
        let log = std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if event["event"] != "session_ended" {
                    continue;
                }
                if event["decision"] == "released" {
                    count.fetch_add(1, Ordering::Relaxed);
                } else {
                    log.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            }
        });
        Ok(ServeChild {
            child,
            url,
            released,
            other,
            log: Some(log),
        })
    }

    /// The child's resident and peak resident memory, in bytes.
    fn memory(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .context("reading the server's /proc status")?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
                .map(|kb| kb * 1024)
                .with_context(|| format!("no {name} in the server's /proc status"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Stops the server with SIGTERM (it lets running sessions finish), waits for it and for
    /// the last lines of its log.
    fn stop(mut self) -> Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if self.child.try_wait()?.is_some() {
                if let Some(log) = self.log.take() {
                    let _ = log.join();
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        self.child.wait()?;
        bail!("the server did not stop within 20 s of SIGTERM")
    }
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Observed {
    latencies: Vec<Duration>,
    errors: Vec<String>,
}

/// One client: its own connection, sessions back to back until `until`.
async fn client_loop(
    config: ClientConfig,
    collaboration: Arc<Collaboration>,
    data: Arc<BTreeMap<String, cleanroom_data::TableSpec>>,
    sql: &'static str,
    expected: Vec<Value>,
    until: Instant,
) -> Observed {
    let mut observed = Observed::default();
    let mut client = match Client::connect(&config).await {
        Ok(client) => client,
        Err(e) => {
            observed.errors.push(e.to_string());
            return observed;
        }
    };
    loop {
        let started = Instant::now();
        let query = Query {
            collaboration: &collaboration,
            member: "querier",
            sql,
            data: &data,
            receivers: &[],
        };
        match client.run_query(query, None).await {
            Ok(outcome) if outcome.result.rows == [expected.clone()] => {
                observed.latencies.push(started.elapsed());
            }
            Ok(outcome) => observed.errors.push(format!(
                "wrong result {:?}, expected {expected:?}",
                outcome.result.rows
            )),
            Err(e) => observed.errors.push(e.to_string()),
        }
        if Instant::now() >= until {
            return observed;
        }
    }
}

/// Runs `concurrency` client loops until `until` and merges what they saw.
async fn round(
    load: &Load,
    config: &ClientConfig,
    collaboration: &Arc<Collaboration>,
    data: &Arc<BTreeMap<String, cleanroom_data::TableSpec>>,
    sql: &'static str,
    expected: &[Value],
    until: Instant,
) -> Observed {
    let tasks: Vec<_> = (0..load.concurrency)
        .map(|_| {
            tokio::spawn(client_loop(
                config.clone(),
                Arc::clone(collaboration),
                Arc::clone(data),
                sql,
                expected.to_vec(),
                until,
            ))
        })
        .collect();
    let mut all = Observed::default();
    for task in tasks {
        match task.await {
            Ok(observed) => {
                all.latencies.extend(observed.latencies);
                all.errors.extend(observed.errors);
            }
            Err(e) => all.errors.push(format!("client task: {e}")),
        }
    }
    all
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// The figures of a load test, and whether it passed.
#[derive(Debug)]
pub struct LoadReport {
    /// The JSON report.
    pub json: serde_json::Value,
    /// The rows of the terminal table (metric, value).
    pub rows: Vec<Vec<String>>,
    /// Why the test failed, if it did: sessions that failed, or an audit log that disagrees
    /// with what the clients received. Reported after the figures.
    pub failure: Option<String>,
}

impl LoadReport {
    /// `Err` with the failure, if the test failed.
    pub fn verdict(&self) -> Result<()> {
        match &self.failure {
            Some(failure) => bail!("{failure}"),
            None => Ok(()),
        }
    }
}

/// Runs the load test and measures it; the report says whether any session failed or the
/// audit log disagrees with what the clients received.
pub fn run(load: &Load) -> Result<LoadReport> {
    let dir = tempfile::tempdir()?;
    let fixture = grpc_fixture(dir.path(), load.size, load.common, load.columns)?;
    let config_path = dir.path().join("collab.toml");
    std::fs::write(&config_path, &fixture.collaboration)?;
    let state = dir.path().join("state.db");
    let collaboration = Arc::new(Collaboration::from_toml_str(
        &fixture.collaboration,
        "bench collaboration",
    )?);
    let data = Arc::new(BTreeMap::from([(
        "right_ids".to_owned(),
        fixture.right.clone().into(),
    )]));
    let (size, sum) = grpc_expected(load.size, load.common);
    let mut expected = vec![Value::Integer(size)];
    if load.columns > 0 {
        expected.push(Value::Integer(sum));
    }

    let server = ServeChild::spawn(
        &load.server,
        &config_path,
        &fixture.left,
        &state,
        load.concurrency,
    )?;
    let mut client_config =
        ClientConfig::new(server.url.clone(), BearerToken::new(&fixture.token)?);
    client_config.timeout = Some(Duration::from_secs(300));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;

    let (rss_idle, _) = server.memory()?;
    // A first round of one session per client (threads and allocator arenas warm up).
    let warmup = runtime.block_on(round(
        load,
        &client_config,
        &collaboration,
        &data,
        fixture.sql,
        &expected,
        Instant::now(),
    ));
    ensure!(
        warmup.errors.is_empty(),
        "warm-up sessions failed: {:?}",
        warmup.errors
    );
    let (rss_warm, _) = server.memory()?;
    let started = Instant::now();
    let measured = runtime.block_on(round(
        load,
        &client_config,
        &collaboration,
        &data,
        fixture.sql,
        &expected,
        started + load.duration,
    ));
    let elapsed = started.elapsed().as_secs_f64();
    let (rss_end, rss_peak) = server.memory()?;
    let server_released = Arc::clone(&server.released);
    let server_other = Arc::clone(&server.other);
    server.stop()?;

    let audit = StateDb::open_read_only(&state)?.entries(None, None)?;
    let audited_released = audit
        .iter()
        .filter(|e| e.decision == Decision::Released)
        .count() as u64;
    let sessions = measured.latencies.len() as u64;
    let received = sessions + warmup.latencies.len() as u64;
    let mut latencies = measured.latencies.clone();
    latencies.sort();
    let (p50, p99, max) = (
        percentile(&latencies, 50),
        percentile(&latencies, 99),
        latencies.last().copied().unwrap_or_default(),
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let report = json!({
        "size": load.size,
        "concurrency": load.concurrency,
        "seconds": elapsed,
        "sessions": sessions,
        "sessions_per_second": sessions as f64 / elapsed,
        "latency_p50_ms": ms(p50),
        "latency_p99_ms": ms(p99),
        "latency_max_ms": ms(max),
        "errors": measured.errors.len(),
        "server_rss_idle_bytes": rss_idle,
        "server_rss_after_warmup_bytes": rss_warm,
        "server_rss_end_bytes": rss_end,
        "server_peak_rss_bytes": rss_peak,
        "audit_released": audited_released,
        "audit_entries": audit.len(),
        "results_received": received,
    });
    let rows = vec![
        vec!["size per party".into(), load.size.to_string()],
        vec!["concurrent sessions".into(), load.concurrency.to_string()],
        vec!["seconds".into(), format!("{elapsed:.1}")],
        vec!["sessions".into(), sessions.to_string()],
        vec![
            "sessions per second".into(),
            format!("{:.2}", sessions as f64 / elapsed),
        ],
        vec!["latency p50 ms".into(), format!("{:.1}", ms(p50))],
        vec!["latency p99 ms".into(), format!("{:.1}", ms(p99))],
        vec!["latency max ms".into(), format!("{:.1}", ms(max))],
        vec!["errors".into(), measured.errors.len().to_string()],
        vec![
            "server RSS MiB idle / warm / end / peak".into(),
            format!(
                "{:.1} / {:.1} / {:.1} / {:.1}",
                mib(rss_idle),
                mib(rss_warm),
                mib(rss_end),
                mib(rss_peak)
            ),
        ],
        vec![
            "audit: released / results received".into(),
            format!("{audited_released} / {received}"),
        ],
    ];
    let failure = if !measured.errors.is_empty() {
        let mut distinct: Vec<&String> = measured.errors.iter().collect();
        distinct.sort();
        distinct.dedup();
        Some(format!(
            "{} sessions failed: {distinct:?}; server log: {:?}",
            measured.errors.len(),
            server_other.lock().unwrap_or_else(|p| p.into_inner())
        ))
    } else if !(audited_released == received
        && server_released.load(Ordering::Relaxed) == received
        && audit.len() as u64 == received)
    {
        Some(format!(
            "the audit log holds {audited_released} released entries of {} for the {received} \
             results the clients received",
            audit.len()
        ))
    } else {
        None
    };
    Ok(LoadReport {
        json: report,
        rows,
        failure,
    })
}
