//! `cleanroom bench`: matching throughput against the cost of the raw curve operations,
//! measured in the same run on the same machine.

use super::loopback::{self, Side};
use super::output::{Format, render_table};
use anyhow::{Context, Result, bail, ensure};
use clap::{Args, ValueEnum};
use cleanroom_psi::{
    Domain, MatcherTable, Message, Normalization, ReceiverTable, match_offline_observed,
};
use cleanroom_rules::{Collaboration, Value};
use curve25519_dalek::{RistrettoPoint, Scalar};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Which protocol to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchProtocol {
    /// Intersection size only.
    Cardinality,
    /// Intersection size and the sum of one value column.
    Sum,
    /// The sum as a differentially private session runs it (with zero noise, so the result
    /// can be checked): the receiver proves every value lies in `[0, 65535]`, the matcher
    /// verifies every chunk and adds every item's ciphertext. Memory transport only.
    ProvenSum,
}

/// How the two parties exchange messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// In this process, every message encoded and decoded.
    Memory,
    /// Through the real gRPC service on a loopback port (plaintext), both members in this
    /// process; includes reading both CSV files and checking the SQL.
    Grpc,
}

/// Arguments of `cleanroom bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Identifiers per party.
    #[arg(long)]
    size: u64,
    /// Fraction of identifiers common to both parties.
    #[arg(long, default_value_t = 0.5)]
    overlap: f64,
    /// Protocol to run.
    #[arg(long, value_enum, default_value_t = BenchProtocol::Cardinality)]
    protocol: BenchProtocol,
    /// Transport between the parties.
    #[arg(long, value_enum, default_value_t = Transport::Memory)]
    transport: Transport,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Load test: run this many sessions at once, again and again, against one `cleanroom
    /// serve` child process on 127.0.0.1 (implies the gRPC transport).
    #[arg(long, value_name = "K")]
    concurrency: Option<usize>,
    /// How long the load test runs, in seconds (with --concurrency).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 10.0,
        requires = "concurrency"
    )]
    duration: f64,
}

fn identifier(i: u64) -> String {
    format!("user{i:010}@example.com")
}

/// Run `cleanroom bench`.
pub fn run(args: BenchArgs) -> Result<ExitCode> {
    ensure!(
        (0.0..=1.0).contains(&args.overlap),
        "--overlap must be between 0 and 1"
    );
    ensure!(args.size > 0, "--size must be at least 1");
    let n = args.size;
    let common = (args.overlap * n as f64).round() as u64;
    let columns = usize::from(args.protocol != BenchProtocol::Cardinality);
    ensure!(
        args.protocol != BenchProtocol::ProvenSum
            || (args.transport == Transport::Memory && args.concurrency.is_none()),
        "--protocol proven-sum runs in memory only"
    );
    if let Some(concurrency) = args.concurrency {
        ensure!(concurrency > 0, "--concurrency must be at least 1");
        ensure!(
            args.duration > 0.0 && args.duration.is_finite(),
            "--duration must be a positive number of seconds"
        );
        let load = super::load::Load {
            size: n,
            common,
            columns,
            concurrency,
            duration: Duration::from_secs_f64(args.duration),
        };
        return super::load::run(&load, args.format);
    }
    let interactive = args.format == Format::Table;

    let floor = curve_floor(2 * n);
    let expected_sum: u64 = ((n - common)..n).map(value_of).sum();
    let Measured {
        seconds,
        size,
        sum,
        bytes,
        serial,
    } = match args.transport {
        Transport::Memory if args.protocol == BenchProtocol::ProvenSum => {
            run_memory_proven(n, common, interactive)?
        }
        Transport::Memory => run_memory(n, common, columns, interactive)?,
        Transport::Grpc => run_grpc(n, common, columns)?,
    };
    ensure!(
        size == common,
        "wrong intersection size {size}, expected {common}"
    );
    if columns > 0 {
        ensure!(
            sum == expected_sum,
            "wrong sum {sum}, expected {expected_sum}"
        );
    }
    let protocol = match args.protocol {
        BenchProtocol::Cardinality => "cardinality",
        BenchProtocol::Sum => "sum",
        BenchProtocol::ProvenSum => "proven-sum",
    };
    let report = BenchReport {
        size: n,
        protocol,
        transport: match args.transport {
            Transport::Memory => "memory",
            Transport::Grpc => "grpc",
        },
        seconds,
        elements_per_second: 2.0 * n as f64 / seconds,
        intersection_size: size,
        bytes_on_wire: bytes,
        peak_rss_bytes: peak_rss_bytes(),
        curve_floor_seconds: floor.as_secs_f64(),
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string(&report)?),
        Format::Table | Format::Csv => {
            let columns: Vec<String> = ["metric", "value"].iter().map(|s| s.to_string()).collect();
            let rows = vec![
                vec!["size per party".into(), n.to_string()],
                vec!["protocol".into(), protocol.into()],
                vec!["intersection (checked)".into(), size.to_string()],
                vec!["seconds".into(), format!("{seconds:.3}")],
                vec![
                    "curve floor seconds".into(),
                    format!("{:.3}", floor.as_secs_f64()),
                ],
                vec![
                    "ratio to floor".into(),
                    format!("{:.3}", seconds / floor.as_secs_f64()),
                ],
                vec![
                    "elements per second".into(),
                    format!("{:.0}", 2.0 * n as f64 / seconds),
                ],
                vec![
                    "bytes per element".into(),
                    format!("{:.1}", bytes as f64 / (2 * n) as f64),
                ],
                vec![
                    "longest stretch under 1.5 cores".into(),
                    format!(
                        "{:.2} s ({:.1}% of the run)",
                        serial,
                        100.0 * serial / seconds
                    ),
                ],
                vec![
                    "peak RSS MiB".into(),
                    format!("{:.1}", peak_rss_bytes() as f64 / 1048576.0),
                ],
            ];
            print!("{}", render_table(&columns, &rows));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The JSON report of one bench run, fields in the documented order.
#[derive(serde::Serialize)]
struct BenchReport {
    size: u64,
    protocol: &'static str,
    transport: &'static str,
    seconds: f64,
    elements_per_second: f64,
    intersection_size: u64,
    bytes_on_wire: u64,
    peak_rss_bytes: u64,
    curve_floor_seconds: f64,
}

/// What one protocol run measured.
struct Measured {
    seconds: f64,
    size: u64,
    sum: u64,
    bytes: u64,
    /// The longest stretch, in seconds, during which the process used under 1.5 cores.
    serial: f64,
}

/// Samples this process's CPU time every 50 ms on a background thread, to find phases that
/// leave a core idle.
struct CpuTrace {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(f64, f64)>>,
}

impl CpuTrace {
    fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut samples = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(cpu) = process_cpu_seconds() {
                    samples.push((started.elapsed().as_secs_f64(), cpu));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            samples
        });
        Self { stop, thread }
    }

    /// The longest run of consecutive sampling intervals below 1.5 cores, in seconds.
    fn stop(self) -> f64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let samples = self.thread.join().unwrap_or_default();
        let (mut longest, mut current) = (0.0f64, 0.0f64);
        for w in samples.windows(2) {
            let (dt, dcpu) = (w[1].0 - w[0].0, w[1].1 - w[0].1);
            if dt > 0.0 && dcpu / dt < 1.5 {
                current += dt;
                longest = longest.max(current);
            } else {
                current = 0.0;
            }
        }
        longest
    }
}

/// User plus system CPU time of this process (Linux `/proc/self/stat`, 100 ticks/s).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn value_of(i: u64) -> u64 {
    i % 1000
}

/// Both roles in this process, every message encoded and decoded. Returns (seconds,
/// intersection size, sum, bytes).
fn run_memory(n: u64, common: u64, columns: usize, interactive: bool) -> Result<Measured> {
    let domain = Domain::new("cleanroom-bench", "email");
    let mut matcher_table = MatcherTable::new(Normalization::None);
    for i in 0..n {
        matcher_table.push("", &identifier(i))?;
    }
    let mut receiver_table = ReceiverTable::new(Normalization::None, columns)?;
    for i in (n - common)..(2 * n - common) {
        receiver_table.push("", &identifier(i), &vec![value_of(i); columns])?;
    }
    let progress = if interactive && n >= 50_000 {
        let bar = ProgressBar::new(4 * n);
        bar.set_style(ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {percent}% {msg}",
        )?);
        bar
    } else {
        ProgressBar::hidden()
    };
    let trace = CpuTrace::start();
    let started = Instant::now();
    let report = match_offline_observed(&domain, matcher_table, receiver_table, 1, |msg, _| {
        progress.inc(elements(msg))
    })?;
    let seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let (size, sum) = report.outcome.groups.first().map_or((0, 0), |g| {
        (g.intersection_size, g.sums.first().copied().unwrap_or(0))
    });
    Ok(Measured {
        seconds,
        size,
        sum,
        bytes: report.bytes,
        serial: trace.stop(),
    })
}

/// [`run_memory`] for `--protocol proven-sum`: one value column whose values the receiver
/// proves lie in `[0, 65535]`; the matcher, made with noise bounds, verifies every chunk on
/// arrival and releases its one pair with zero noise.
fn run_memory_proven(n: u64, common: u64, interactive: bool) -> Result<Measured> {
    use cleanroom_psi::range_proof::ValueRange;
    use cleanroom_psi::{GroupDecision, Limits, Matcher, NoiseBounds, Receiver};
    let domain = Domain::new("cleanroom-bench", "email");
    let mut matcher_table = MatcherTable::new(Normalization::None);
    for i in 0..n {
        matcher_table.push("", &identifier(i))?;
    }
    let mut receiver_table = ReceiverTable::new(Normalization::None, 1)?;
    for i in (n - common)..(2 * n - common) {
        receiver_table.push("", &identifier(i), &[value_of(i)])?;
    }
    let ranges = vec![ValueRange::new(0, 65_535)?];
    let bounds = NoiseBounds::new(vec![65_535])?;
    let mut m = Matcher::new(&domain, matcher_table, Limits::unlimited())
        .with_noise(bounds.clone())
        .require_range_proofs(ranges.clone());
    let mut r = Receiver::new(&domain, receiver_table, Limits::unlimited())
        .with_noise(bounds)?
        .with_range_proofs(ranges)?;
    let progress = if interactive && n >= 10_000 {
        let bar = ProgressBar::new(4 * n);
        bar.set_style(ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {percent}% {msg}",
        )?);
        bar
    } else {
        ProgressBar::hidden()
    };
    let trace = CpuTrace::start();
    let started = Instant::now();
    let mut bytes = 0u64;
    let mut transfer = |msg: Message| -> Result<Message> {
        let encoded = msg.encode();
        bytes += encoded.len() as u64;
        let decoded = Message::decode(&encoded)?;
        progress.inc(elements(&decoded));
        Ok(decoded)
    };
    let mut released = false;
    while !r.is_finished() {
        let mut progressed = false;
        while let Some(msg) = m.poll_message() {
            r.handle_message(transfer(msg)?)?;
            progressed = true;
        }
        while let Some(msg) = r.poll_message() {
            m.handle_message(transfer(msg)?)?;
            progressed = true;
        }
        if !released && m.counts().is_some() {
            m.release_with(
                |_| GroupDecision::Release {
                    count_noise: 0,
                    sum_noise: vec![0],
                },
                |bounded| bounded,
            )?;
            released = true;
            progressed = true;
        }
        ensure!(progressed, "the session stalled");
    }
    let outcome = r.open()?;
    let seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let (size, sum) = outcome.groups.first().map_or((0, 0), |g| {
        (g.intersection_size, g.sums.first().copied().unwrap_or(0))
    });
    Ok(Measured {
        seconds,
        size,
        sum,
        bytes,
        serial: trace.stop(),
    })
}

/// The gRPC benchmark's collaboration on disk: the provider's and the querier's CSV files of
/// `n` identifiers each (`common` shared, each with a value), the collaboration (TOML) and the
/// querier's bearer token. Also used by the load test.
pub struct GrpcFixture {
    /// The collaboration file's text.
    pub collaboration: String,
    /// The provider's table `left_ids`.
    pub left: std::path::PathBuf,
    /// The querier's table `right_ids`.
    pub right: std::path::PathBuf,
    /// The querier's bearer token.
    pub token: String,
    /// The query: the intersection size, and the sum of the values with `columns` = 1.
    pub sql: &'static str,
}

/// Writes the gRPC benchmark's data into `dir`.
pub fn grpc_fixture(
    dir: &std::path::Path,
    n: u64,
    common: u64,
    columns: usize,
) -> Result<GrpcFixture> {
    let write = |name: &str, range: std::ops::Range<u64>| -> Result<std::path::PathBuf> {
        let path = dir.join(name);
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
        writeln!(w, "id,value")?;
        for i in range {
            writeln!(w, "{},{}", identifier(i), value_of(i))?;
        }
        w.flush()?;
        Ok(path)
    };
    let left = write("left.csv", 0..n)?;
    let right = write("right.csv", (n - common)..(2 * n - common))?;
    let (_, server_hash) = loopback::fresh_token();
    let (token, client_hash) = loopback::fresh_token();
    let collaboration = format!(
        r#"
[collaboration]
id = "cleanroom-bench"
[[member]]
name = "provider"
abilities = []
token_sha256 = "{server_hash}"
[[member]]
name = "querier"
abilities = ["query", "receive_results"]
token_sha256 = "{client_hash}"
[[table]]
name = "left_ids"
owner = "provider"
columns = ["id", "value"]
identifier = {{ column = "id", normalize = "none" }}
[table.rule]
type = "aggregation"
join_columns = ["id"]
dimension_columns = []
aggregate_columns = {{ id = ["COUNT_DISTINCT"] }}
min_threshold = 2
[[table]]
name = "right_ids"
owner = "querier"
columns = ["id", "value"]
identifier = {{ column = "id", normalize = "none" }}
[table.rule]
type = "aggregation"
join_columns = ["id"]
dimension_columns = []
aggregate_columns = {{ id = ["COUNT_DISTINCT"], value = ["SUM"] }}
min_threshold = 2
"#
    );
    let sql = if columns > 0 {
        "SELECT COUNT(DISTINCT r.id), SUM(r.value) FROM left_ids l JOIN right_ids r ON l.id = r.id"
    } else {
        "SELECT COUNT(DISTINCT r.id) FROM left_ids l JOIN right_ids r ON l.id = r.id"
    };
    Ok(GrpcFixture {
        collaboration,
        left,
        right,
        token,
        sql,
    })
}

/// The expected answer of the fixture's query: the intersection size and the sum of values.
pub fn grpc_expected(n: u64, common: u64) -> (u64, u64) {
    (common, ((n - common)..n).map(value_of).sum())
}

/// The real service on a loopback port, both members in this process.
fn run_grpc(n: u64, common: u64, columns: usize) -> Result<Measured> {
    let dir = tempfile::tempdir()?;
    let GrpcFixture {
        collaboration: text,
        left,
        right,
        token,
        sql,
    } = grpc_fixture(dir.path(), n, common, columns)?;
    let collaboration = Collaboration::from_toml_str(&text, "bench collaboration")?;
    let trace = CpuTrace::start();
    let started = Instant::now();
    let outcome = loopback::run(
        collaboration,
        Side {
            member: "provider",
            data: BTreeMap::from([("left_ids".to_owned(), left.into())]),
        },
        Side {
            member: "querier",
            data: BTreeMap::from([("right_ids".to_owned(), right.into())]),
        },
        &token,
        sql,
        false,
        dir.path(),
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let row = outcome.result.rows.first().context("no row released")?;
    let int = |v: &Value| match v {
        Value::Integer(n) => Ok(*n),
        other => bail!("expected an integer result, got {other:?}"),
    };
    let size = int(&row[0])?;
    let sum = if columns > 0 { int(&row[1])? } else { 0 };
    let c = &outcome.counters;
    Ok(Measured {
        seconds,
        size,
        sum,
        bytes: c.bytes_sent + c.bytes_received,
        serial: trace.stop(),
    })
}

/// Elements a message carries, for the progress bar.
fn elements(msg: &Message) -> u64 {
    match msg {
        Message::MatcherPoints { points, .. }
        | Message::ReceiverItems { points, .. }
        | Message::ReceiverProvenItems { points, .. } => points.len() as u64,
        Message::ReceiverTags { tags, .. } => tags.len() as u64,
        _ => 0,
    }
}

/// The time for `count` elements to go through hash-to-group, blind, compress, decompress,
/// re-blind and compress in a plain parallel loop: the curve work PSI cannot avoid.
fn curve_floor(count: u64) -> Duration {
    let domain = Domain::new("cleanroom-bench-floor", "email");
    let a = Scalar::from(0x1234_5678_9abc_def1u64) * Scalar::from(0x0fed_cba9_8765_4321u64);
    let b = a * a;
    let started = Instant::now();
    let acc: u64 = (0..count)
        .into_par_iter()
        .map(|i| {
            let p: RistrettoPoint = a * domain.hash_to_group(&identifier(i));
            let wire = p.compress();
            let q = wire.decompress().expect("valid point");
            u64::from((b * q).compress().as_bytes()[0])
        })
        .sum();
    std::hint::black_box(acc);
    started.elapsed()
}

/// Peak resident set size of this process (Linux `VmHWM`), 0 where unknown.
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
