//! `cleanroom serve`: run the matching service next to this member's data.

pub mod server_file;

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use cleanroom_data::TableSpec;
use cleanroom_rules::Collaboration;
use cleanroom_service::listener::{ConnectionLimits, OpenFilesLimit};
use cleanroom_service::server::ServerConfig;
use cleanroom_service::{Limits, StateDb, TlsIdentity};

/// Arguments of `cleanroom serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A server configuration file (TOML): any of these flags as `name = value` without the
    /// dashes (`max-sessions = 8`, `data = ["t=x.csv"]`, `insecure = true`); a flag on the
    /// command line overrides it (`--data` on the command line replaces the file's list).
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// The collaboration file (TOML), identical on every member's side.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// The member running this server; it must own every table served.
    #[arg(long, value_name = "NAME")]
    member: String,
    /// A table this server serves and where it is: a CSV or Parquet file or an `s3://` object,
    /// with options after commas (`,delimiter=semicolon`, `,format=parquet`,
    /// `,has_header=false`; the collaboration's table entry gives the defaults). Repeat for
    /// several tables. The whole table is checked before the server accepts sessions.
    #[arg(long = "data", value_name = "TABLE=LOCATION", required = true, value_parser = parse_data)]
    data: Vec<(String, String)>,
    /// The address to listen on, e.g. 127.0.0.1:50051 or 0.0.0.0:443.
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// The state database (SQLite): the audit log of every query attempt.
    #[arg(long, value_name = "PATH")]
    state: PathBuf,
    /// The TLS certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Partners' certificate authority (PEM, one or more CA certificates): every client must
    /// then present a client certificate that chains to it (--tls-cert/--tls-key of `query`),
    /// or the TLS handshake fails whatever its token; the token is still required, and a
    /// member's client_cert_sha256 pin still applies. Needs --tls-cert and --tls-key.
    #[arg(long, value_name = "FILE")]
    client_ca: Option<PathBuf>,
    /// Allow plaintext on a non-loopback address (only behind a trusted network).
    #[arg(long)]
    insecure: bool,
    /// Most rows a querying member may bring to one session.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_rows_per_session)]
    max_rows: u64,
    /// Most sessions running at once; more are refused (RESOURCE_EXHAUSTED, "the server is
    /// busy").
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_concurrent_sessions)]
    max_sessions: u32,
    /// Most sessions one member may run at once [default: half of --max-sessions, at least 1].
    #[arg(long, value_name = "N")]
    max_sessions_per_member: Option<u32>,
    /// The least a client must move, in bytes per second of the time the server waits for it
    /// (measured over 30 s windows); a client that trickles slower is cut off. 0: no minimum.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().min_bytes_per_second)]
    min_data_rate: u64,
    /// Seconds a session may go without any message before it is ended.
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().idle_timeout.as_secs())]
    idle_timeout: u64,
    /// Seconds a whole session may last.
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().session_timeout.as_secs())]
    session_timeout: u64,
    /// Rows of a served table held in memory at once: a session over a larger table runs as a
    /// job of buckets of about this many rows (PROTOCOL.md 3.6).
    #[arg(long, value_name = "N", default_value_t = Limits::default().bucket_rows)]
    bucket_rows: u64,
    /// The fewest rows either side's bucket may be expected to hold: a job is never split
    /// further (a smaller bucket tells more about the identifiers in it; SECURITY.md §2).
    #[arg(long, value_name = "N", default_value_t = Limits::default().min_bucket_rows)]
    min_bucket_rows: u64,
    /// Seconds a named job (`query --job-id`) that stopped waits for its client to resume it;
    /// then it is cancelled and its totals deleted (and a released job's kept release
    /// dropped). Checked when the server starts and every hour.
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().job_retention.as_secs())]
    job_retention: u64,
    /// Where jobs of buckets write their bucket files (a fresh directory per job inside it,
    /// removed when the job ends); default: the system's temporary directory.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// This member's secret relay key (from `cleanroom key new --relay`), whose public half is
    /// its `relay_key` in the collaboration file: needed to serve a table in joins across
    /// three or more members, where other providers' messages are sealed to it.
    #[arg(long, value_name = "FILE")]
    relay_key: Option<PathBuf>,
    /// Most connections open at once (lowered to the open-files limit less 64); one more is
    /// closed right after accept.
    #[arg(long, value_name = "N", default_value_t = ConnectionLimits::default().total)]
    max_connections: u32,
    /// Most connections open at once from one IP address; one more is closed right after
    /// accept.
    #[arg(long, value_name = "N", default_value_t = ConnectionLimits::default().per_address)]
    max_connections_per_address: u32,
    /// Seconds a connection may take to complete its TLS handshake, and then (or after accept,
    /// in plaintext) to send its first bytes; a slower one is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = ConnectionLimits::default().handshake_timeout.as_secs())]
    handshake_timeout: u64,
    /// Log no session events below WARN (RUST_LOG, when set, decides instead).
    #[arg(long, short)]
    quiet: bool,
    /// How log lines are written to stderr: `text` (a timestamp, the level, the target and the
    /// event's fields) or `json` (one object per line). RUST_LOG filters them (default `info`).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464). They show every
    /// member's activity: keep the address away from partners.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
}

/// The format of the server's log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-12-02T05:00:00.000000Z  INFO cleanroom::session: event="session_ended" ...`
    Text,
    /// One JSON object per line, the event's fields at the top level.
    Json,
}

/// Installs the log of `serve`: RUST_LOG's filter when it is set (refused when it does not
/// parse), else `info` (with `quiet`, the session events only from WARN up); lines on stderr.
fn init_log(format: LogFormat, quiet: bool) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(&directives)
            .with_context(|| format!("RUST_LOG={directives:?} is not a valid filter"))?,
        _ if quiet => EnvFilter::new("info,cleanroom::session=warn"),
        _ => EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|e| anyhow!("installing the log: {e}"))
}

/// Parses `TABLE=LOCATION[,key=value]...` (the options are checked with the collaboration).
pub fn parse_data(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((table, location)) if !table.is_empty() && !location.is_empty() => {
            Ok((table.to_owned(), location.to_owned()))
        }
        _ => Err(format!("expected TABLE=LOCATION, got {s:?}")),
    }
}

/// Collects `--data` pairs into table specs (the collaboration's table entry gives the
/// default format, CSV dialect and NULL spellings), refusing a table named twice.
pub fn data_map(
    pairs: Vec<(String, String)>,
    collaboration: &Collaboration,
) -> Result<BTreeMap<String, TableSpec>> {
    let mut map = BTreeMap::new();
    for (table, location) in pairs {
        let defaults = collaboration
            .table(&table)
            .map(|t| t.source_options().clone())
            .unwrap_or_default();
        let spec = TableSpec::parse_with(&location, defaults)
            .map_err(|e| anyhow!("--data {table}={location}: {e}"))?;
        if map.insert(table.clone(), spec).is_some() {
            bail!("--data names table {table:?} twice");
        }
    }
    Ok(map)
}

fn resolve(listen: &str) -> Result<SocketAddr> {
    listen
        .to_socket_addrs()
        .with_context(|| format!("--listen {listen}"))?
        .next()
        .with_context(|| format!("--listen {listen}: no address"))
}

/// Runs the server until Ctrl-C (or SIGTERM).
pub fn run(args: ServeArgs) -> Result<ExitCode> {
    init_log(args.log_format, args.quiet)?;
    let collaboration = Collaboration::load(&args.config)
        .with_context(|| format!("collaboration file {}", args.config.display()))?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsIdentity {
            cert_pem: std::fs::read(cert)
                .with_context(|| format!("--tls-cert {}", cert.display()))?,
            key_pem: std::fs::read(key).with_context(|| format!("--tls-key {}", key.display()))?,
        }),
        _ => None,
    };
    let client_ca = match &args.client_ca {
        Some(path) => {
            // Before anything is created: without TLS there is no handshake to ask in.
            if tls.is_none() {
                return Err(cleanroom_service::TlsError::ClientCaWithoutTls.into());
            }
            Some(std::fs::read(path).with_context(|| format!("--client-ca {}", path.display()))?)
        }
        None => None,
    };
    let state = StateDb::open(&args.state)?;
    let limits = Limits {
        max_rows_per_session: args.max_rows,
        max_concurrent_sessions: args.max_sessions,
        max_sessions_per_member: args.max_sessions_per_member,
        min_bytes_per_second: args.min_data_rate,
        idle_timeout: Duration::from_secs(args.idle_timeout),
        session_timeout: Duration::from_secs(args.session_timeout),
        bucket_rows: args.bucket_rows,
        min_bucket_rows: args.min_bucket_rows,
        job_retention: Duration::from_secs(args.job_retention),
        ..Limits::default()
    };
    let connections = ConnectionLimits {
        total: args.max_connections,
        per_address: args.max_connections_per_address,
        handshake_timeout: Duration::from_secs(args.handshake_timeout),
        first_bytes_timeout: Duration::from_secs(args.handshake_timeout),
    };
    let addr = resolve(&args.listen)?;
    if tls.is_none() {
        cleanroom_service::tls::check_plaintext_listen(addr, args.insecure)?;
    }
    let metrics_addr = args.metrics_listen.as_deref().map(resolve).transpose()?;
    let data = data_map(args.data, &collaboration)?;
    let config = ServerConfig {
        collaboration: Arc::new(collaboration),
        member: args.member,
        data,
        limits,
        connections,
        state: Arc::new(state),
        tls,
        client_ca,
        insecure: args.insecure,
        // Every session's end is an event of the log (cleanroom_service::events).
        on_session_end: None,
        work_dir: args.work_dir,
        relay_key: args
            .relay_key
            .as_deref()
            .map(|path| super::key::read_opening_key(path, "--relay-key").map(Arc::new))
            .transpose()?,
    };
    config.validate()?;
    // The whole tables, before listening: a bad line stops the start with file, line, column.
    let checked = config.check_tables()?;
    // Raised here to print it; `serve` raises it again (no change then) and fits the caps.
    let open_files = cleanroom_service::listener::raise_open_files_limit();
    let fitted = config.connections.fitted(open_files.now);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        // Listened to before the server says it listens: a signal sent as soon as the start
        // line shows must find the handlers in place, not end the process outright.
        let mut signals = StopSignals::install()?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!(
            target: "cleanroom::serve",
            "member {:?} of collaboration {:?}, tables {}, on {}://{local} (state {})",
            config.member,
            config.collaboration.id(),
            config.data.keys().cloned().collect::<Vec<_>>().join(", "),
            if config.tls.is_some() { "https" } else { "http" },
            config.state.path().display(),
        );
        // Rows and skipped rows per table: also with --quiet.
        for line in &checked {
            tracing::info!(target: "cleanroom::serve", "{line}");
        }
        tracing::info!(target: "cleanroom::serve", "{}", connections_line(open_files, fitted));
        let metrics = match metrics_addr {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("--metrics-listen {addr}"))?;
                let at = listener.local_addr()?;
                tracing::info!(target: "cleanroom::serve", "metrics at http://{at}/metrics");
                if !at.ip().is_loopback() {
                    tracing::warn!(
                        target: "cleanroom::serve",
                        "the metrics on {at} show every member's activity and have no \
                         authentication: keep them away from partners"
                    );
                }
                Some(listener)
            }
            None => None,
        };
        // The first signal drains (running sessions go on, new ones are refused); a second
        // stops at once, recording the running sessions as interrupted.
        let state = Arc::clone(&config.state);
        let (first, drain) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            signals.next().await;
            let _ = first.send(());
            signals.next().await;
            let interrupted = state.interrupt_running().unwrap_or(0);
            tracing::warn!(
                target: "cleanroom::serve",
                event = "stopped_at_once",
                interrupted,
                "second signal: stopping now; {interrupted} running session{} recorded as \
                 interrupted",
                if interrupted == 1 { "" } else { "s" }
            );
            std::process::exit(130);
        });
        cleanroom_service::serve_with_metrics(config, listener, metrics, async {
            let _ = drain.await;
        })
        .await?;
        tracing::info!(target: "cleanroom::serve", "stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// `open files limit 1024 -> 524288; at most 1024 connections (64 per address)`.
fn connections_line(open_files: OpenFilesLimit, limits: ConnectionLimits) -> String {
    let show = |limit: Option<u64>| match limit {
        None => "unknown".to_owned(),
        Some(n) if n >= i64::MAX as u64 => "unlimited".to_owned(),
        Some(n) => n.to_string(),
    };
    let limit = if open_files.before == open_files.now {
        show(open_files.now)
    } else {
        format!("{} -> {}", show(open_files.before), show(open_files.now))
    };
    format!(
        "open files limit {limit}; at most {} connections ({} per address)",
        limits.total, limits.per_address
    )
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM.
/// SIGINT and SIGTERM, each registered when this is made; a signal that arrives before
/// [`next`](Self::next) is polled is kept for it.
struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Registers the handlers (inside the runtime).
    fn install() -> Result<StopSignals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(StopSignals {
                interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
                terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        Ok(StopSignals {})
    }

    /// The next SIGINT or SIGTERM.
    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_line_says_the_open_files_limit_and_the_caps() {
        let raised = OpenFilesLimit {
            before: Some(1024),
            now: Some(524_288),
        };
        let fitted = ConnectionLimits::default().fitted(raised.now);
        assert_eq!(
            connections_line(raised, fitted),
            "open files limit 1024 -> 524288; at most 1024 connections (64 per address)"
        );
        let stuck = OpenFilesLimit {
            before: Some(1024),
            now: Some(1024),
        };
        let fitted = ConnectionLimits::default().fitted(stuck.now);
        assert_eq!(
            connections_line(stuck, fitted),
            "open files limit 1024; at most 960 connections (64 per address)"
        );
        let unknown = OpenFilesLimit {
            before: None,
            now: None,
        };
        assert_eq!(
            connections_line(unknown, ConnectionLimits::default().fitted(None)),
            "open files limit unknown; at most 1024 connections (64 per address)"
        );
    }
}
