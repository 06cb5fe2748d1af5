//! One benchmark session: matching throughput against the cost of the raw curve operations,
//! measured in the same run on the same machine, on generated identifiers or on two tables,
//! in memory or through the real gRPC service. Every answer is checked against the plain
//! computation before it is reported.

use anyhow::{Context, Result, bail, ensure};
use clap::ValueEnum;
use cleanroom_data::TableSpec;
use cleanroom_psi::{
    AggregateMessage, Domain, MatchReport, MatcherTable, Normalization, ReceiverTable, WireMessage,
    match_offline_observed,
};
use cleanroom_rules::{Collaboration, Value};
use curve25519_dalek::{RistrettoPoint, Scalar};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::fixture::{
    GrpcFixture, bench_collaboration, grpc_fixture, identifier, sql_identifier, value_of,
};
use crate::loopback::{self, Side};

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
    /// The list protocol (labeled PSI): the receiver learns which of its identifiers the
    /// matcher holds and the matcher's row of each (one list column); with --buckets, as a job
    /// whose evaluations are withheld on disk until its last bucket. Memory transport and
    /// generated identifiers only.
    List,
}

/// How the two parties exchange messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// In this process, every message encoded and decoded.
    Memory,
    /// Through the real gRPC service on a loopback port (plaintext), both members in this
    /// process; includes reading both tables (CSV, or Parquet with --left/--right) and
    /// checking the SQL.
    Grpc,
}

/// What one benchmark session runs, and whether it draws progress on the terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    /// The protocol.
    pub protocol: BenchProtocol,
    /// How the parties exchange messages.
    pub transport: Transport,
    /// Draw progress bars (the output is a terminal table).
    pub interactive: bool,
    /// In memory: run the session as a job of this many buckets (1: one session), released
    /// once ([`cleanroom_psi::JobTotals`]).
    pub buckets: u32,
}

impl Session {
    /// Value columns summed: 0 for cardinality, else 1.
    fn columns(&self) -> usize {
        usize::from(self.protocol != BenchProtocol::Cardinality)
    }
}

/// What one benchmark session reports: the JSON document and the rows of the terminal table
/// (metric, value).
#[derive(Debug)]
pub struct Report {
    /// The JSON report, fields in the documented order.
    pub json: BenchReport,
    /// The table's rows.
    pub rows: Vec<Vec<String>>,
}

/// Runs a session on `n` generated identifiers per party, `common` of them shared, and checks
/// its answer.
pub fn run_generated(session: Session, n: u64, common: u64) -> Result<Report> {
    let columns = session.columns();
    let interactive = session.interactive;

    let floor = curve_floor(2 * n);
    let expected_sum: u64 = ((n - common)..n).map(value_of).sum();
    let Measured {
        seconds,
        size,
        sum,
        bytes,
        serial,
    } = match session.transport {
        Transport::Memory if session.protocol == BenchProtocol::ProvenSum => {
            let (m, r) = generated_tables(n, common, 1)?;
            run_memory_proven(m, r, n, interactive)?
        }
        Transport::Memory if session.protocol == BenchProtocol::List => crate::list::run_generated(
            n,
            common,
            generated_buckets(n, session.buckets),
            interactive,
        )?,
        Transport::Grpc if session.protocol == BenchProtocol::List => {
            bail!("--protocol list runs in memory only")
        }
        Transport::Memory => match generated_buckets(n, session.buckets) {
            1 => {
                let (m, r) = generated_tables(n, common, columns)?;
                run_memory(m, r, n, interactive, 1)?
            }
            buckets => run_generated_job(n, common, columns, buckets, interactive)?,
        },
        Transport::Grpc => run_grpc(n, common, columns)?,
    };
    let session = Session {
        buckets: match session.transport {
            Transport::Memory => generated_buckets(n, session.buckets),
            Transport::Grpc => session.buckets,
        },
        ..session
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
    Ok(report(
        session,
        Measured {
            seconds,
            size,
            sum,
            bytes,
            serial,
        },
        (n, n),
        floor,
        None,
    ))
}

/// The report of what one run measured: `sizes` is the number of identifiers (rows) of each
/// party; `tables`, the two tables when the run was on tables.
fn report(
    session: Session,
    measured: Measured,
    sizes: (u64, u64),
    floor: Duration,
    tables: Option<(&TableSpec, &TableSpec)>,
) -> Report {
    let Measured {
        seconds,
        size,
        bytes,
        serial,
        ..
    } = measured;
    let n = sizes.0;
    let elements = sizes.0 + sizes.1;
    let protocol = match session.protocol {
        BenchProtocol::Cardinality => "cardinality",
        BenchProtocol::Sum => "sum",
        BenchProtocol::ProvenSum => "proven-sum",
        BenchProtocol::List => "list",
    };
    let report = BenchReport {
        size: n,
        right_size: tables.is_some().then_some(sizes.1),
        protocol,
        transport: match session.transport {
            Transport::Memory => "memory",
            Transport::Grpc => "grpc",
        },
        buckets: (session.buckets > 1).then_some(session.buckets),
        seconds,
        elements_per_second: elements as f64 / seconds,
        intersection_size: size,
        sum: tables
            .is_some()
            .then_some(measured.sum)
            .filter(|_| session.protocol != BenchProtocol::Cardinality),
        bytes_on_wire: bytes,
        peak_rss_bytes: peak_rss_bytes(),
        curve_floor_seconds: floor.as_secs_f64(),
        curve_floor_measured_elements: elements.min(FLOOR_SAMPLE),
    };
    let mut rows = vec![
        vec!["size per party".into(), n.to_string()],
        vec!["protocol".into(), protocol.into()],
        vec!["buckets".into(), session.buckets.max(1).to_string()],
        vec!["intersection (checked)".into(), size.to_string()],
        vec!["seconds".into(), format!("{seconds:.3}")],
        vec![
            "curve floor seconds".into(),
            match elements > FLOOR_SAMPLE {
                true => format!(
                    "{:.3} (measured on {FLOOR_SAMPLE} elements, scaled)",
                    floor.as_secs_f64()
                ),
                false => format!("{:.3}", floor.as_secs_f64()),
            },
        ],
        vec![
            "ratio to floor".into(),
            format!("{:.3}", seconds / floor.as_secs_f64()),
        ],
        vec![
            "elements per second".into(),
            format!("{:.0}", elements as f64 / seconds),
        ],
        vec![
            "bytes per element".into(),
            format!("{:.1}", bytes as f64 / elements.max(1) as f64),
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
    if let Some((left, right)) = tables {
        rows[0] = vec![
            "rows".into(),
            format!("{n} in {left}, {} in {right}", sizes.1),
        ];
        if let Some(sum) = report.sum {
            rows.insert(3, vec!["sum (checked, in units)".into(), sum.to_string()]);
        }
    }
    Report { json: report, rows }
}

/// The JSON report of one bench run, fields in the documented order.
#[derive(Debug, serde::Serialize)]
pub struct BenchReport {
    /// Identifiers per party; with tables, the rows of --left.
    size: u64,
    /// With tables: the rows of --right.
    #[serde(skip_serializing_if = "Option::is_none")]
    right_size: Option<u64>,
    protocol: &'static str,
    transport: &'static str,
    /// Buckets of the job (in memory); absent for one session.
    #[serde(skip_serializing_if = "Option::is_none")]
    buckets: Option<u32>,
    seconds: f64,
    elements_per_second: f64,
    intersection_size: u64,
    /// With tables and a sum protocol: the checked sum, in units of the column's scale.
    #[serde(skip_serializing_if = "Option::is_none")]
    sum: Option<u64>,
    bytes_on_wire: u64,
    peak_rss_bytes: u64,
    curve_floor_seconds: f64,
    /// The elements the floor was measured on (fewer than both sides' when it was scaled).
    curve_floor_measured_elements: u64,
}

/// What one protocol run measured.
pub(crate) struct Measured {
    pub(crate) seconds: f64,
    pub(crate) size: u64,
    pub(crate) sum: u64,
    pub(crate) bytes: u64,
    /// The longest stretch, in seconds, during which the process used under 1.5 cores.
    pub(crate) serial: f64,
}

/// Samples this process's CPU time every 50 ms on a background thread, to find phases that
/// leave a core idle.
pub(crate) struct CpuTrace {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(f64, f64)>>,
}

impl CpuTrace {
    pub(crate) fn start() -> Self {
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
    pub(crate) fn stop(self) -> f64 {
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

/// The most identifiers per party the in-memory benchmark holds as one session (about 230
/// bytes each per party: some 8 GB at this size); above it, unless `--buckets` says otherwise,
/// it runs as a job of buckets of about [`GENERATED_BUCKET`] identifiers.
pub const MEMORY_SESSION_MAX: u64 = 1 << 24;

/// The identifiers per party of one generated bucket when the benchmark splits by itself.
pub const GENERATED_BUCKET: u64 = 1 << 20;

/// The buckets the in-memory benchmark of `n` identifiers per party runs with: `asked` when
/// given (above 1), else one session up to [`MEMORY_SESSION_MAX`] and the smallest power of
/// two of buckets of at most [`GENERATED_BUCKET`] above it.
pub fn generated_buckets(n: u64, asked: u32) -> u32 {
    if asked > 1 || n <= MEMORY_SESSION_MAX {
        return asked.max(1);
    }
    let buckets = n.div_ceil(GENERATED_BUCKET).next_power_of_two();
    u32::try_from(buckets).unwrap_or(u32::MAX)
}

/// The generated identifiers as a job of `buckets` buckets, each generated when its turn
/// comes, so that memory holds one: bucket `b` is the `b`-th of `buckets` equal ranges of the
/// identifiers' indices `0 .. 2n - common`, on both sides (the matcher's `0 .. n`, the
/// receiver's `n - common .. 2n - common`). A range stands for the keyed hash of a job through
/// the service: a shared identifier is in one bucket on both sides, and each bucket is one
/// session with fresh keys, the totals released once ([`cleanroom_psi::match_offline_job`]).
fn run_generated_job(
    n: u64,
    common: u64,
    columns: usize,
    buckets: u32,
    interactive: bool,
) -> Result<Measured> {
    let domain = Domain::new("cleanroom-bench", "email");
    let (all, first_receiver) = (2 * n - common, n - common);
    let span = all.div_ceil(u64::from(buckets));
    let progress = session_progress(2 * n, interactive)?;
    let trace = CpuTrace::start();
    let started = Instant::now();
    let report =
        cleanroom_psi::match_offline_job(&domain, buckets, columns, 1, |bucket| -> Result<_> {
            let low = (u64::from(bucket) * span).min(all);
            let high = (low + span).min(all);
            let mut matcher = MatcherTable::new(Normalization::None);
            matcher.ensure_group("")?;
            for i in low..high.min(n) {
                matcher.push("", &identifier(i))?;
            }
            let mut receiver = ReceiverTable::new(Normalization::None, columns)?;
            receiver.ensure_group("")?;
            for i in low.max(first_receiver)..high {
                receiver.push("", &identifier(i), &vec![value_of(i); columns])?;
            }
            progress.inc(matcher.stats().rows + receiver.stats().rows);
            Ok((matcher, receiver))
        })?;
    progress.finish_and_clear();
    Ok(memory_measured(&report, started, trace))
}

/// The most elements the curve floor is measured on: a larger count's floor is the time of
/// this many, scaled linearly (the loop costs the same per element; at 10^8 per party the
/// whole loop would take as long as the protocol).
pub const FLOOR_SAMPLE: u64 = 1 << 22;

/// The generated tables: `n` identifiers each, `common` of them shared, the receiver's with
/// `columns` value columns.
fn generated_tables(n: u64, common: u64, columns: usize) -> Result<(MatcherTable, ReceiverTable)> {
    let mut matcher_table = MatcherTable::new(Normalization::None);
    for i in 0..n {
        matcher_table.push("", &identifier(i))?;
    }
    let mut receiver_table = ReceiverTable::new(Normalization::None, columns)?;
    for i in (n - common)..(2 * n - common) {
        receiver_table.push("", &identifier(i), &vec![value_of(i); columns])?;
    }
    Ok((matcher_table, receiver_table))
}

/// `--left`/`--right`: the two tables to run on instead of generated identifiers.
#[derive(Debug, Clone)]
pub struct Tables {
    /// The matcher's (provider's) table.
    pub left: TableSpec,
    /// The receiver's (querier's) table.
    pub right: TableSpec,
    /// The identifier column of both.
    pub id_column: String,
    /// The summed column of `right` (sum protocols only).
    pub value_column: Option<String>,
}

/// The identifiers read of one table (see [`run_tables`]).
#[derive(Debug, Clone, Default)]
pub struct Identifiers {
    /// Each row's identifier (NULL or empty ones left out) and amount (0 without a value
    /// column).
    pub items: Vec<(String, u64)>,
    /// The table's rows, skipped ones included.
    pub rows: u64,
    /// The value column's scale: its amounts are in units of `10^-scale`.
    pub scale: u8,
}

/// `cleanroom bench --left L --right R`: the protocol on two tables, through memory or the
/// gRPC service, checked against the intersection and sum computed in the clear over
/// `left` and `right`, the identifiers read of them.
pub fn run_tables(
    session: Session,
    tables: &Tables,
    left: Identifiers,
    right: Identifiers,
) -> Result<Report> {
    ensure!(
        session.protocol != BenchProtocol::List,
        "--protocol list runs on generated identifiers only"
    );
    let interactive = session.interactive;
    let value = tables.value_column.as_deref();
    let Identifiers {
        items: left,
        rows: left_rows,
        ..
    } = left;
    let Identifiers {
        items: right,
        rows: right_rows,
        scale,
    } = right;
    // The plain computation: distinct shared identifiers, and the receiver's amounts of them.
    let provider: std::collections::HashSet<&str> = left.iter().map(|(i, _)| i.as_str()).collect();
    let mut shared: BTreeMap<&str, u64> = BTreeMap::new();
    for (id, units) in &right {
        if provider.contains(id.as_str()) {
            *shared.entry(id).or_default() += units;
        }
    }
    let expected_size = shared.len() as u64;
    let expected_sum: u64 = shared.values().sum();
    let columns = usize::from(value.is_some());
    let build = || -> Result<(MatcherTable, ReceiverTable)> {
        let mut m = MatcherTable::new(Normalization::None);
        for (id, _) in &left {
            m.push("", id)?;
        }
        let mut r = ReceiverTable::new(Normalization::None, columns)?;
        for (id, units) in &right {
            r.push("", id, &vec![*units; columns])?;
        }
        Ok((m, r))
    };
    let elements = left.len() as u64 + right.len() as u64;
    let floor = curve_floor(elements);
    let n = elements.div_ceil(2);
    let measured = match session.transport {
        Transport::Memory if session.protocol == BenchProtocol::ProvenSum => {
            let (m, r) = build()?;
            run_memory_proven(m, r, n, interactive)?
        }
        Transport::Memory => {
            let (m, r) = build()?;
            run_memory(m, r, n, interactive, session.buckets)?
        }
        Transport::Grpc => {
            drop((left, right));
            run_grpc_tables(tables, scale)?
        }
    };
    ensure!(
        measured.size == expected_size,
        "wrong intersection size {}, expected {expected_size}",
        measured.size
    );
    if columns > 0 {
        ensure!(
            measured.sum == expected_sum,
            "wrong sum {}, expected {expected_sum}",
            measured.sum
        );
    }
    Ok(report(
        session,
        measured,
        (left_rows, right_rows),
        floor,
        Some((&tables.left, &tables.right)),
    ))
}

/// A progress bar over the `4·n` elements of an in-memory session, or a hidden one when
/// `shown` is false.
pub(crate) fn session_progress(n: u64, shown: bool) -> Result<ProgressBar> {
    if !shown {
        return Ok(ProgressBar::hidden());
    }
    let bar = ProgressBar::new(4 * n);
    bar.set_style(ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {percent}% {msg}",
    )?);
    Ok(bar)
}

/// Both roles in this process, every message encoded and decoded. Returns (seconds,
/// intersection size, sum, bytes).
fn run_memory(
    matcher_table: MatcherTable,
    receiver_table: ReceiverTable,
    n: u64,
    interactive: bool,
    buckets: u32,
) -> Result<Measured> {
    let domain = Domain::new("cleanroom-bench", "email");
    let progress = session_progress(n, interactive && n >= 50_000 && buckets <= 1)?;
    let trace = CpuTrace::start();
    let started = Instant::now();
    let report = if buckets > 1 {
        cleanroom_psi::match_offline_bucketed(&domain, matcher_table, receiver_table, 1, buckets)?
    } else {
        match_offline_observed(&domain, matcher_table, receiver_table, 1, |msg, _| {
            progress.inc(elements(msg))
        })?
    };
    progress.finish_and_clear();
    Ok(memory_measured(&report, started, trace))
}

/// What an in-memory run measured: its time since `started`, its one group's intersection
/// size and first sum, its bytes, and the CPU trace's longest serial stretch.
fn memory_measured(report: &MatchReport, started: Instant, trace: CpuTrace) -> Measured {
    let seconds = started.elapsed().as_secs_f64();
    let (size, sum) = report.outcome.groups.first().map_or((0, 0), |g| {
        (g.intersection_size, g.sums.first().copied().unwrap_or(0))
    });
    Measured {
        seconds,
        size,
        sum,
        bytes: report.bytes,
        serial: trace.stop(),
    }
}

/// [`run_memory`] for `--protocol proven-sum`: one value column whose values the receiver
/// proves lie in `[0, 65535]`; the matcher, made with noise bounds, verifies every chunk on
/// arrival and releases its one pair with zero noise.
fn run_memory_proven(
    matcher_table: MatcherTable,
    receiver_table: ReceiverTable,
    n: u64,
    interactive: bool,
) -> Result<Measured> {
    use cleanroom_psi::range_proof::ValueRange;
    use cleanroom_psi::{GroupDecision, Limits, Matcher, NoiseBounds, Receiver};
    let domain = Domain::new("cleanroom-bench", "email");
    let ranges = vec![ValueRange::new(0, 65_535)?];
    let bounds = NoiseBounds::new(vec![65_535])?;
    let mut m = Matcher::new(&domain, matcher_table, Limits::unlimited())
        .with_noise(bounds.clone())
        .require_range_proofs(ranges.clone());
    let mut r = Receiver::new(&domain, receiver_table, Limits::unlimited())
        .with_noise(bounds)?
        .with_range_proofs(ranges)?;
    let progress = session_progress(n, interactive && n >= 10_000)?;
    let trace = CpuTrace::start();
    let started = Instant::now();
    let mut bytes = 0u64;
    let mut transfer = |msg: AggregateMessage| -> Result<AggregateMessage> {
        let encoded = msg.encode();
        bytes += encoded.len() as u64;
        let decoded = AggregateMessage::decode(&encoded)?;
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

/// The query's answer as (intersection size, sum in units): the first row's integers, or
/// the units of a decimal sum.
fn answer(outcome: &cleanroom_service::QueryOutcome, columns: usize) -> Result<(u64, u64)> {
    let row = outcome.result.rows.first().context("no row released")?;
    let int = |v: &Value| match v {
        Value::Integer(n) => Ok(*n),
        Value::Decimal(d) => u64::try_from(d.units).context("a negative sum"),
        other => bail!("expected an integer result, got {other:?}"),
    };
    let size = int(&row[0])?;
    let sum = if columns > 0 { int(&row[1])? } else { 0 };
    Ok((size, sum))
}

/// [`run_grpc`] on the tables of `--left`/`--right`.
fn run_grpc_tables(tables: &Tables, scale: u8) -> Result<Measured> {
    let dir = tempfile::tempdir()?;
    let value = tables.value_column.as_deref();
    let (token, text) = bench_collaboration(&tables.id_column, None, value);
    let collaboration = Collaboration::from_toml_str(&text, "bench collaboration")?;
    let id = sql_identifier(&tables.id_column);
    let sql = match value {
        Some(v) => format!(
            "SELECT COUNT(DISTINCT r.{id}), SUM(r.{}) FROM left_ids l JOIN right_ids r \
             ON l.{id} = r.{id}",
            sql_identifier(v)
        ),
        None => format!(
            "SELECT COUNT(DISTINCT r.{id}) FROM left_ids l JOIN right_ids r ON l.{id} = r.{id}"
        ),
    };
    let trace = CpuTrace::start();
    let started = Instant::now();
    let outcome = loopback::run(
        collaboration,
        Side {
            member: "provider",
            data: BTreeMap::from([("left_ids".to_owned(), tables.left.clone())]),
        },
        Side {
            member: "querier",
            data: BTreeMap::from([("right_ids".to_owned(), tables.right.clone())]),
        },
        &token,
        &sql,
        false,
        dir.path(),
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let columns = usize::from(value.is_some());
    if let (Some(Value::Decimal(d)), true) = (
        outcome.result.rows.first().and_then(|r| r.get(1)),
        columns > 0,
    ) {
        ensure!(
            d.scale == scale,
            "the service summed at scale {}, the table's is {scale}",
            d.scale
        );
    }
    measured(&outcome, columns, seconds, trace)
}

/// What one gRPC session measured: its answer, bytes on the wire and CPU time.
fn measured(
    outcome: &cleanroom_service::QueryOutcome,
    columns: usize,
    seconds: f64,
    trace: CpuTrace,
) -> Result<Measured> {
    let (size, sum) = answer(outcome, columns)?;
    let c = &outcome.counters;
    Ok(Measured {
        seconds,
        size,
        sum,
        bytes: c.bytes_sent + c.bytes_received,
        serial: trace.stop(),
    })
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
    measured(&outcome, columns, seconds, trace)
}

/// Elements a message carries, for the progress bar.
fn elements(msg: &AggregateMessage) -> u64 {
    match msg {
        AggregateMessage::MatcherPoints { points, .. }
        | AggregateMessage::ReceiverItems { points, .. }
        | AggregateMessage::ReceiverProvenItems { points, .. } => points.len() as u64,
        AggregateMessage::ReceiverTags { tags, .. } => tags.len() as u64,
        _ => 0,
    }
}

/// The time for `count` elements to go through hash-to-group, blind, compress, decompress,
/// re-blind and compress in a plain parallel loop: the curve work PSI cannot avoid (measured on
/// at most [`FLOOR_SAMPLE`] of them, scaled to `count`).
fn curve_floor(count: u64) -> Duration {
    let sample = count.min(FLOOR_SAMPLE);
    let domain = Domain::new("cleanroom-bench-floor", "email");
    let a = Scalar::from(0x1234_5678_9abc_def1u64) * Scalar::from(0x0fed_cba9_8765_4321u64);
    let b = a * a;
    let started = Instant::now();
    let acc: u64 = (0..sample)
        .into_par_iter()
        .map(|i| {
            let p: RistrettoPoint = a * domain.hash_to_group(&identifier(i));
            let wire = p.compress();
            let q = wire.decompress().expect("valid point");
            u64::from((b * q).compress().as_bytes()[0])
        })
        .sum();
    std::hint::black_box(acc);
    started
        .elapsed()
        .mul_f64(count as f64 / sample.max(1) as f64)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_in_memory_benchmark_splits_itself_only_past_what_memory_holds() {
        assert_eq!(generated_buckets(1_000_000, 1), 1);
        assert_eq!(generated_buckets(MEMORY_SESSION_MAX, 1), 1);
        assert_eq!(generated_buckets(MEMORY_SESSION_MAX + 1, 1), 32);
        assert_eq!(generated_buckets(100_000_000, 1), 128);
        assert_eq!(generated_buckets(1_000, 8), 8);
    }

    /// A generated job, bucket by bucket: the answer is checked inside (`run_generated` fails
    /// on a wrong intersection size or sum), whatever the split of the ranges.
    #[test]
    fn a_generated_job_of_buckets_gives_the_exact_answer() {
        for (protocol, buckets, n, common) in [
            (BenchProtocol::Cardinality, 4, 2_000, 700),
            (BenchProtocol::Sum, 8, 1_999, 1_999),
            (BenchProtocol::Sum, 16, 500, 0),
            (BenchProtocol::List, 1, 1_000, 300),
            (BenchProtocol::List, 4, 1_000, 300),
            (BenchProtocol::List, 8, 999, 999),
        ] {
            let session = Session {
                protocol,
                transport: Transport::Memory,
                interactive: false,
                buckets,
            };
            let report = run_generated(session, n, common).unwrap();
            let buckets_row = report.rows.iter().find(|r| r[0] == "buckets").unwrap();
            assert_eq!(buckets_row[1], buckets.to_string());
        }
    }
}
