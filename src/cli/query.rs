//! `cleanroom query`: ask a partner's server a question over both members' data.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use cleanroom_rules::{Collaboration, Protocol, ResultTable, Value};
use cleanroom_service::client::{Progress, QueryOutcome};
use cleanroom_service::{BearerToken, Client, ClientConfig, ClientError, Query};
use indicatif::{HumanBytes, HumanDuration, ProgressBar, ProgressStyle};

use super::output::{CsvCells, Format, render_csv, render_table};
use super::serve::{data_map, parse_data};

/// The environment variable holding the member's bearer token.
pub const TOKEN_ENV: &str = "CLEANROOM_TOKEN";

/// Arguments of `cleanroom query`.
#[derive(Args, Debug)]
pub struct QueryArgs {
    /// The collaboration file (TOML), identical on every member's side.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// The querying member.
    #[arg(long, value_name = "NAME")]
    member: String,
    /// One of your tables and where it is: a CSV or Parquet file or an `s3://` object, with
    /// options after commas (`,delimiter=semicolon`, `,format=parquet`, `,has_header=false`;
    /// the collaboration's table entry gives the defaults). Repeat for several tables.
    #[arg(long = "data", value_name = "TABLE=LOCATION", required = true, value_parser = parse_data)]
    data: Vec<(String, String)>,
    /// A member the result goes to (repeat for several; default: you). Each needs the
    /// `receive_results` ability, and one other than you a `result_key`: it fetches the result
    /// with `cleanroom results`. When you are not named, you learn nothing of the result.
    #[arg(long = "receiver", value_name = "MEMBER")]
    receivers: Vec<String>,
    #[command(flatten)]
    connection: Connection,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Write the result rows as CSV to this file instead of printing them (atomically: a
    /// temporary file in the same directory, renamed into place once complete).
    #[arg(long, value_name = "FILE.csv")]
    output: Option<PathBuf>,
    /// Write CSV cells exactly as released. By default control characters are escaped and a
    /// cell starting with `=`, `+`, `-` or `@` that is not a number gets a leading `'`, so that
    /// a spreadsheet does not run a provider's value as a formula.
    #[arg(long)]
    csv_raw: bool,
    /// No progress and no session statistics on stderr.
    #[arg(long, short)]
    quiet: bool,
    /// The most rows of your table held in memory: a table with more is read into bucket
    /// files and the session runs as a job of buckets of about this many rows (PROTOCOL.md
    /// 3.6).
    #[arg(long, value_name = "N", default_value_t = 1 << 18, value_parser = clap::value_parser!(u64).range(1..))]
    bucket_rows: u64,
    /// Where a job of buckets writes its bucket files (a fresh directory inside it, removed at
    /// the end); default: the system's temporary directory.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// A name for this query (1 to 64 characters of A-Z a-z 0-9 . _ -), so that it can
    /// resume: when this process or the server stops in the middle of a job, running the same
    /// command again continues with the buckets not yet done, without a second charge, and
    /// prints the one released result. The job's value key waits in --work-dir (or the
    /// system's temporary directory) until then.
    #[arg(long, value_name = "NAME")]
    job_id: Option<String>,
    /// With --job-id: how many times to reconnect, waiting 1, 2, 4 … up to 30 seconds, when
    /// the server cannot be reached or the connection breaks.
    #[arg(long, value_name = "N", default_value_t = 10, requires = "job_id")]
    retries: u32,
    /// The query.
    sql: String,
}

/// How a member reaches a partner's server: its address, the trust, the member's token and
/// client certificate, and the time limits (shared by `query` and `results`).
#[derive(Args, Debug)]
pub struct Connection {
    /// The server: https://host:port (http:// only to loopback, or with --insecure). For a
    /// join across three or more members, one per provider table, named:
    /// `--server visits_a=https://a.example:8443 --server visits_b=https://b.example:8443`.
    #[arg(long = "server", value_name = "[TABLE=]URL", required = true)]
    servers: Vec<String>,
    /// The CA certificate (PEM) to trust for the server; default: the system's roots. For a
    /// join across three or more members, `TABLE=FILE` for one provider's server (a bare
    /// `FILE` applies to the others).
    #[arg(long = "ca", value_name = "[TABLE=]FILE")]
    cas: Vec<String>,
    /// Allow http:// to a non-loopback server (only on a trusted network).
    #[arg(long)]
    insecure: bool,
    /// Your client certificate (PEM), presented over TLS: required when the collaboration pins
    /// your certificate (`client_cert_sha256` in your member entry), or when the server requires
    /// one of its client CA (`serve --client-ca`).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Read the bearer token from this file instead of $CLEANROOM_TOKEN.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// Give up when the session goes this many seconds without a message either way (0: never).
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    idle_timeout: u64,
}

/// `TABLE=VALUE` as (table, value), or `None` for a bare value (a URL's `scheme://` or a path
/// is never read as a table name).
fn named(text: &str) -> Option<(&str, &str)> {
    let (table, value) = text.split_once('=')?;
    let plain = !table.is_empty()
        && table
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    plain.then_some((table, value))
}

impl Connection {
    /// The one server of a two-party query (or of `results`).
    pub fn server(&self) -> Result<&str> {
        match self.servers.as_slice() {
            [server] if named(server).is_none() => Ok(server),
            _ => anyhow::bail!(
                "give one --server URL (TABLE=URL names the servers of a join across three or \
                 more members)"
            ),
        }
    }

    /// The client configuration of the one server these flags describe (the token read from
    /// its file or $CLEANROOM_TOKEN, the CA and client certificate from theirs).
    pub fn client_config(&self) -> Result<ClientConfig> {
        let server = self.server()?.to_owned();
        if self.cas.iter().any(|ca| named(ca).is_some()) || self.cas.len() > 1 {
            anyhow::bail!("give at most one --ca FILE for one server");
        }
        self.config_for(server, self.cas.first().map(String::as_str))
    }

    /// For a join across three or more members: each provider table's server (`--server
    /// TABLE=URL`), with its `--ca TABLE=FILE` or the bare `--ca FILE`.
    pub fn chain_configs(&self) -> Result<BTreeMap<String, ClientConfig>> {
        let default_ca = self.cas.iter().find(|ca| named(ca).is_none());
        let mut configs = BTreeMap::new();
        for server in &self.servers {
            let (table, url) = named(server).with_context(|| {
                format!(
                    "--server {server}: a join across three or more members names each \
                     provider's server as TABLE=URL"
                )
            })?;
            let ca = self
                .cas
                .iter()
                .filter_map(|ca| named(ca))
                .find(|(t, _)| *t == table)
                .map(|(_, file)| file)
                .or(default_ca.map(String::as_str));
            let config = self.config_for(url.to_owned(), ca)?;
            if configs.insert(table.to_owned(), config).is_some() {
                anyhow::bail!("--server {table}=… is given twice");
            }
        }
        for ca in &self.cas {
            if let Some((table, _)) = named(ca)
                && !configs.contains_key(table)
            {
                anyhow::bail!("--ca {ca}: no --server {table}=URL");
            }
        }
        Ok(configs)
    }

    fn config_for(&self, server: String, ca: Option<&str>) -> Result<ClientConfig> {
        let token = read_token(self.token_file.as_ref())?;
        let mut config = ClientConfig::new(server, token);
        config.insecure = self.insecure;
        config.timeout = self.timeout.map(Duration::from_secs);
        config.idle_timeout =
            (self.idle_timeout > 0).then(|| Duration::from_secs(self.idle_timeout));
        if let Some(ca) = ca {
            config.ca_pem = Some(std::fs::read(ca).with_context(|| format!("--ca {ca}"))?);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config.identity = Some(cleanroom_service::TlsIdentity {
                cert_pem: std::fs::read(cert)
                    .with_context(|| format!("--tls-cert {}", cert.display()))?,
                key_pem: std::fs::read(key)
                    .with_context(|| format!("--tls-key {}", key.display()))?,
            });
        }
        Ok(config)
    }
}

fn read_token(token_file: Option<&PathBuf>) -> Result<BearerToken> {
    let raw = match token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("--token-file {}", path.display()))?,
        None => std::env::var(TOKEN_ENV)
            .with_context(|| format!("no bearer token: set {TOKEN_ENV} or give --token-file"))?,
    };
    Ok(BearerToken::new(raw)?)
}

/// A cell as printed in a table: NULL spelled out, averages with two decimals.
fn table_cell(value: &Value) -> String {
    match value {
        Value::Float(x) => format!("{x:.2}"),
        other => other.to_string(),
    }
}

/// A cell as printed in CSV: NULL empty, numbers in full.
fn csv_cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Renders a result in `format`, with the 95% half-width of each output column's noise (0:
/// exact) printed next to its values in a table, and CSV cells written as `cells` says.
pub(crate) fn render_with(
    result: &ResultTable,
    format: Format,
    interval95: &[u64],
    cells: CsvCells,
) -> Result<String> {
    Ok(match format {
        Format::Json => {
            let mut json = serde_json::to_string(result)?;
            json.push('\n');
            json
        }
        Format::Csv => {
            let rows: Vec<Vec<String>> = result
                .rows
                .iter()
                .map(|row| row.iter().map(csv_cell).collect())
                .collect();
            render_csv(&result.columns, &rows, cells)?
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = result
                .rows
                .iter()
                .map(|row| {
                    row.iter()
                        .enumerate()
                        .map(|(i, v)| match interval95.get(i) {
                            Some(&k) if k > 0 && *v != Value::Null => {
                                format!("{} ±{k}", table_cell(v))
                            }
                            _ => table_cell(v),
                        })
                        .collect()
                })
                .collect();
            format!(
                "{}suppressed rows (under the threshold): {}\n",
                render_table(&result.columns, &rows),
                result.suppressed_rows
            )
        }
    })
}

/// The privacy metadata of a noisy result, as JSON: the mechanism, the query's epsilon, the
/// noise of each output column, and the member's budget after the query.
fn privacy_json(outcome: &QueryOutcome) -> Option<serde_json::Value> {
    let privacy = outcome.accepted.privacy.as_ref()?;
    let standing = outcome.summary.standing.as_ref();
    let outputs: Vec<serde_json::Value> = privacy
        .outputs
        .iter()
        .map(|o| {
            let mut noise = serde_json::json!({
                "column": o.column,
                "kind": o.kind,
                "scale": o.scale,
                "interval95": o.interval95,
            });
            if o.kind == "avg" {
                noise["count_scale"] = o.count_scale.into();
                noise["count_interval95"] = o.count_interval95.into();
            }
            noise
        })
        .collect();
    let bounded = outcome.result.bounded_identifiers.map(|n| {
        serde_json::json!({
            "value": n,
            "scale": privacy.bounded_scale,
            "interval95": privacy.bounded_interval95,
        })
    });
    Some(serde_json::json!({
        "mechanism": privacy.mechanism,
        "epsilon": privacy.epsilon,
        "sum_ranges": privacy.sum_ranges,
        "max_groups_per_identifier": privacy.max_groups_per_identifier,
        "bounded_identifiers": bounded,
        "own_identifiers_over_bound": outcome.own_over_bound,
        "outputs": outputs,
        "epsilon_spent": standing.map(|s| s.epsilon_spent),
        "epsilon_budget": standing.and_then(|s| s.epsilon_budget),
        "epsilon_remaining": standing.and_then(|s| s.epsilon_remaining),
    }))
}

/// The privacy metadata of a noisy result, for people: what the noise is per column.
fn privacy_text(outcome: &QueryOutcome) -> Option<String> {
    let privacy = outcome.accepted.privacy.as_ref()?;
    let mut text = format!(
        "differentially private result ({}): this query spent epsilon {}",
        privacy.mechanism, privacy.epsilon
    );
    if let Some(standing) = &outcome.summary.standing
        && let (Some(left), Some(budget)) = (standing.epsilon_remaining, standing.epsilon_budget)
    {
        text.push_str(&format!("; {left} of the budget of {budget} left"));
    }
    text.push('\n');
    if privacy.sum_ranges == "trusted" {
        text.push_str(
            "  sums: sum_ranges = \"trusted\": values were not proven to lie in their \
             sum_bounds, so sums are differentially private only against an honest querier\n",
        );
    }
    let k = privacy.max_groups_per_identifier;
    if let Some(n) = outcome.result.bounded_identifiers {
        let whose = if outcome.own_over_bound.is_some() {
            format!(
                "the provider bounded about {n} more (it bounds what a client sends beyond {k}; \
                 none from this client)"
            )
        } else {
            format!(
                "about {n} identifiers were in more and count in {k} of them, chosen at random \
                 by the provider: their other rows are not counted"
            )
        };
        text.push_str(&format!(
            "  each identifier counts in at most {k} output rows (max_groups_per_identifier); \
             {whose} (noisy, ±{} with 95% probability)\n",
            privacy.bounded_interval95
        ));
    }
    if let Some(n) = outcome.own_over_bound.filter(|&n| n > 0) {
        text.push_str(&format!(
            "  {n} of your identifiers were in more than {k} of your groups: each was kept in {k} \
             of them, chosen at random before anything was sent\n"
        ));
    }
    for o in privacy.outputs.iter().filter(|o| o.kind != "none") {
        let line = match o.kind.as_str() {
            "avg" => format!(
                "  {}: noisy sum / noisy count of per-identifier totals (each identifier's rows \
                 summed and clamped into sum_bounds, not an average of rows); sum noise scale \
                 {}, within ±{} with 95% probability; count noise scale {}, within ±{}\n",
                o.column, o.scale, o.interval95, o.count_scale, o.count_interval95
            ),
            "sum" => format!(
                "  {}: sum of per-identifier totals clamped into sum_bounds + noise of scale {}, \
                 within ±{} with 95% probability\n",
                o.column, o.scale, o.interval95
            ),
            kind => format!(
                "  {}: {kind} + noise of scale {}, within ±{} with 95% probability\n",
                o.column, o.scale, o.interval95
            ),
        };
        text.push_str(&line);
    }
    Some(text)
}

/// Renders a query's outcome in `format`: the result, and for a differentially private
/// result its noise (a `privacy` object in JSON, lines under the table).
pub fn render_outcome(outcome: &QueryOutcome, format: Format, cells: CsvCells) -> Result<String> {
    match (format, privacy_json(outcome)) {
        (Format::Json, Some(privacy)) => {
            let mut json = serde_json::to_value(&outcome.result)?;
            json["privacy"] = privacy;
            let mut text = serde_json::to_string(&json)?;
            text.push('\n');
            Ok(text)
        }
        (Format::Table, Some(_)) => {
            let interval95: Vec<u64> = outcome
                .accepted
                .privacy
                .iter()
                .flat_map(|p| &p.outputs)
                .map(|o| if o.kind == "avg" { 0 } else { o.interval95 })
                .collect();
            Ok(render_with(&outcome.result, format, &interval95, cells)?
                + &privacy_text(outcome).unwrap_or_default())
        }
        _ => render_with(&outcome.result, format, &[], cells),
    }
}

fn progress_bar(quiet: bool) -> Option<ProgressBar> {
    if quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    Some(bar)
}

/// What the progress display remembers between reports: when the job's first bucket began,
/// for rows per second and the time left; the last bucket line, kept beside the bytes moved on
/// a terminal.
#[derive(Default)]
struct ProgressView {
    /// When the first bucket reported began, and the rows done before it (a resumed job's).
    job_start: Option<(std::time::Instant, u64)>,
    bucket_line: Option<String>,
}

impl ProgressView {
    /// The line that shows `progress`, remembering what later lines need.
    fn describe(&mut self, progress: Progress<'_>) -> String {
        match progress {
            Progress::ReadingData { table } => format!("reading table {table}"),
            Progress::Accepted { session_id, rows } => {
                format!("session {session_id}: matching {rows} rows")
            }
            Progress::Bucket {
                done,
                buckets,
                rows_done,
                rows,
            } => {
                let (start, before) = *self
                    .job_start
                    .get_or_insert_with(|| (std::time::Instant::now(), rows_done));
                let line = bucket_line(done, buckets, (rows_done, rows, before), start.elapsed());
                self.bucket_line = Some(line.clone());
                line
            }
            Progress::Moved(c) => {
                let moved = format!(
                    "sent {} in {} messages, received {} in {} messages",
                    HumanBytes(c.bytes_sent),
                    c.messages_sent,
                    HumanBytes(c.bytes_received),
                    c.messages_received
                );
                match &self.bucket_line {
                    Some(line) => format!("{line}; {moved}"),
                    None => moved,
                }
            }
        }
    }
}

/// "bucket 3 of 32 done: 937500 of 10000000 rows, 8700 rows/s, about 17 minutes left": the
/// rate over the buckets matched since the first reported began (`before` rows were done
/// then: a resumed job's), the time left at that rate.
fn bucket_line(
    done: u32,
    buckets: u32,
    (rows_done, rows, before): (u64, u64, u64),
    elapsed: Duration,
) -> String {
    if done == 0 {
        return format!("bucket 1 of {buckets}: {rows} rows to match");
    }
    let seconds = elapsed.as_secs_f64();
    let rate = if seconds > 0.0 {
        rows_done.saturating_sub(before) as f64 / seconds
    } else {
        0.0
    };
    let mut line = format!("bucket {done} of {buckets} done: {rows_done} of {rows} rows");
    if rate > 0.0 {
        line.push_str(&format!(", {rate:.0} rows/s"));
        if done < buckets {
            let left = rows.saturating_sub(rows_done) as f64 / rate;
            line.push_str(&format!(
                ", about {} left",
                HumanDuration(Duration::from_secs_f64(left))
            ));
        }
    }
    line
}

/// The wait before retry `attempt` (from 1): 1, 2, 4 … seconds, at most 30.
fn retry_wait(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

fn print_stats(outcome: &QueryOutcome) {
    let c = &outcome.counters;
    let elapsed = outcome.summary.stats.as_ref().map_or(0, |s| s.elapsed_ms);
    let released = if outcome.protocol == Protocol::List {
        format!("{} rows listed", outcome.result.rows.len())
    } else {
        format!(
            "{} rows released, {} suppressed",
            outcome.summary.released_rows, outcome.summary.suppressed_rows
        )
    };
    eprintln!(
        "session {}: your {} rows ({} skipped: NULL or empty identifier, never matched) matched \
         against {}'s table {}; sent {} messages ({}), received {} messages ({}); {released}; \
         {:.2} s",
        outcome.summary.session_id,
        outcome.rows,
        outcome.skipped_rows,
        outcome.accepted.matcher_member,
        outcome.accepted.matcher_table,
        c.messages_sent,
        HumanBytes(c.bytes_sent),
        c.messages_received,
        HumanBytes(c.bytes_received),
        elapsed as f64 / 1000.0,
    );
}

/// Writes `result` as CSV to `path` atomically: into a temporary file in the same directory,
/// flushed to disk, then renamed over `path`, so a reader never sees a partial file and a
/// failed query leaves an existing file untouched.
pub fn write_csv_atomically(result: &ResultTable, path: &Path, cells: CsvCells) -> Result<()> {
    let csv = render_with(result, Format::Csv, &[], cells)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    file.write_all(csv.as_bytes())
        .and_then(|()| file.as_file().sync_all())
        .with_context(|| format!("writing {}", file.path().display()))?;
    file.persist(path)
        .with_context(|| format!("--output {}", path.display()))?;
    Ok(())
}

/// Says where the result of a query this member does not receive went, and how its receivers
/// fetch it; nothing of the result itself (this member learned nothing of it).
fn print_delivered(outcome: &QueryOutcome, server: &str, format: Format) -> Result<()> {
    let session = &outcome.summary.session_id;
    let receivers = &outcome.summary.delivered_to;
    if format == Format::Json {
        let doc = serde_json::json!({"session_id": session, "delivered_to": receivers});
        println!("{doc}");
    } else {
        println!(
            "the result of session {session} went to {}: not to you.",
            receivers.join(", ")
        );
        println!(
            "each receiver fetches it with: cleanroom results --config FILE --member NAME \\
               --server {server} --key-file KEY {session}"
        );
    }
    Ok(())
}

/// Prints why a query was refused.
fn print_refusal(error: &ClientError) {
    match error {
        ClientError::Refused(refusal) => {
            eprintln!("query refused (checked locally, nothing was sent):");
            for reason in &refusal.reasons {
                eprintln!("  [{}] {}", reason.code, reason.message);
            }
        }
        ClientError::Remote(remote) if !remote.reasons.is_empty() => {
            eprintln!("query refused by the server ({:?}):", remote.code);
            for reason in &remote.reasons {
                eprintln!("  [{}] {}", reason.code, reason.message);
            }
        }
        other => eprintln!("query refused: {other}"),
    }
}

/// Runs the query and prints the released result. Exit 0 with a result, 1 when the query
/// was refused (locally or by the server), 2 for any other failure.
pub fn run(mut args: QueryArgs) -> Result<ExitCode> {
    let collaboration = Collaboration::load(&args.config)
        .with_context(|| format!("collaboration file {}", args.config.display()))?;
    let data = data_map(std::mem::take(&mut args.data), &collaboration)?;
    let chain = matches!(
        collaboration.plan_query(&args.member, &args.sql, &args.receivers),
        Ok(cleanroom_rules::QueryPlan::Chain(_))
    );
    if chain {
        anyhow::ensure!(
            args.job_id.is_none(),
            "--job-id: a join across three or more members runs as one session"
        );
        return run_chain(&args, &collaboration, &data);
    }
    let mut config = args.connection.client_config()?;
    config.bucket_rows = args.bucket_rows;
    config.work_dir = args.work_dir.clone();
    if let Some(name) = &args.job_id {
        cleanroom_service::job::check_job_id(name).map_err(|e| anyhow::anyhow!("--job-id: {e}"))?;
    }
    config.job_id = args.job_id.clone();
    let retries = if args.job_id.is_some() {
        args.retries
    } else {
        0
    };
    let bar = progress_bar(args.quiet);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let query = Query {
        collaboration: &collaboration,
        member: &args.member,
        sql: &args.sql,
        data: &data,
        receivers: &args.receivers,
    };
    let view = std::sync::Mutex::new(ProgressView::default());
    let hook = |p: Progress<'_>| {
        let line = || {
            view.lock()
                .map(|mut view| view.describe(p))
                .unwrap_or_default()
        };
        match &bar {
            Some(bar) => bar.set_message(line()),
            // Without a terminal, a line per bucket of a job (and nothing else: the
            // statistics follow the result).
            None if !args.quiet && matches!(p, Progress::Bucket { .. }) => {
                eprintln!("{}", line());
            }
            None => {}
        }
    };
    let mut attempt = 0;
    let outcome = loop {
        let outcome = runtime.block_on(async {
            let mut client = Client::connect(&config).await?;
            client.run_query(query, Some(&hook)).await
        });
        match outcome {
            // A named job: the server keeps its buckets done, so trying again costs only
            // the bucket under way.
            Err(error) if attempt < retries && error.is_retryable() => {
                attempt += 1;
                let wait = retry_wait(attempt);
                let line = format!(
                    "{error}; job {} resumes: trying again in {} s (retry {attempt} of \
                     {retries})",
                    args.job_id.as_deref().unwrap_or_default(),
                    wait.as_secs()
                );
                match &bar {
                    Some(bar) => bar.println(line),
                    None if !args.quiet => eprintln!("{line}"),
                    None => {}
                }
                if let Ok(mut view) = view.lock() {
                    *view = ProgressView::default();
                }
                std::thread::sleep(wait);
            }
            outcome => break outcome,
        }
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    match outcome {
        Ok(outcome) if !outcome.received => {
            print_delivered(&outcome, args.connection.server()?, args.format)?;
            Ok(ExitCode::SUCCESS)
        }
        Ok(outcome) => {
            if !outcome.summary.delivered_to.is_empty() && !args.quiet {
                eprintln!(
                    "the result is also kept for {} (session {}): `cleanroom results`",
                    outcome.summary.delivered_to.join(", "),
                    outcome.summary.session_id
                );
            }
            print_released(&args, &outcome)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(error) if error.is_refusal() => {
            print_refusal(&error);
            Ok(ExitCode::from(1))
        }
        Err(error) => Err(error.into()),
    }
}

/// Prints a released result as `args` ask (to `--output` or stdout, in `--format`, cells as
/// `--csv-raw` says), its noise, and the session statistics unless `--quiet`.
fn print_released(args: &QueryArgs, outcome: &QueryOutcome) -> Result<()> {
    let cells = if args.csv_raw {
        CsvCells::Raw
    } else {
        CsvCells::Safe
    };
    match &args.output {
        Some(path) => {
            write_csv_atomically(&outcome.result, path, cells)?;
            if !args.quiet {
                eprintln!(
                    "wrote {} rows to {}",
                    outcome.result.rows.len(),
                    path.display()
                );
                eprint!("{}", privacy_text(outcome).unwrap_or_default());
            }
        }
        None => {
            print!("{}", render_outcome(outcome, args.format, cells)?);
            if args.format == Format::Csv && !args.quiet {
                eprint!("{}", privacy_text(outcome).unwrap_or_default());
            }
        }
    }
    if !args.quiet {
        print_stats(outcome);
    }
    Ok(())
}

/// `query` of a join across three or more members: one session with each provider's server
/// (`--server TABLE=URL`), the result printed as for two parties, and each provider's session.
fn run_chain(
    args: &QueryArgs,
    collaboration: &Collaboration,
    data: &BTreeMap<String, cleanroom_data::TableSpec>,
) -> Result<ExitCode> {
    let mut configs = args.connection.chain_configs()?;
    for config in configs.values_mut() {
        config.work_dir = args.work_dir.clone();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let bar = progress_bar(args.quiet);
    let view = std::sync::Mutex::new(ProgressView::default());
    let hook = |p: Progress<'_>| {
        if let (Some(bar), Ok(mut view)) = (&bar, view.lock()) {
            bar.set_message(view.describe(p));
        }
    };
    let query = Query {
        collaboration,
        member: &args.member,
        sql: &args.sql,
        data,
        receivers: &args.receivers,
    };
    let outcome = runtime.block_on(cleanroom_service::client::run_chain_query(
        query,
        &configs,
        Some(&hook),
    ));
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    match outcome {
        Ok(outcome) => {
            if !args.quiet {
                for p in &outcome.chain {
                    let part = if p.position == outcome.chain.len() {
                        "matched and released"
                    } else {
                        "filtered"
                    };
                    eprintln!(
                        "{} ({}) {part} at position {}: session {}",
                        p.table, p.member, p.position, p.session_id
                    );
                }
            }
            print_released(args, &outcome)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(error) if error.is_refusal() => {
            print_refusal(&error);
            Ok(ExitCode::from(1))
        }
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_longer_each_time_up_to_half_a_minute() {
        let waits: Vec<u64> = (1..=8).map(|a| retry_wait(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn a_bucket_line_shows_the_rate_and_the_time_left() {
        let line = bucket_line(4, 32, (1_000_000, 8_000_000, 0), Duration::from_secs(100));
        assert_eq!(
            line,
            "bucket 4 of 32 done: 1000000 of 8000000 rows, 10000 rows/s, about 12 minutes left"
        );
        let last = bucket_line(32, 32, (8_000_000, 8_000_000, 0), Duration::from_secs(800));
        assert_eq!(
            last,
            "bucket 32 of 32 done: 8000000 of 8000000 rows, 10000 rows/s"
        );
        assert_eq!(
            bucket_line(0, 32, (0, 8_000_000, 0), Duration::ZERO),
            "bucket 1 of 32: 8000000 rows to match"
        );
        // A resumed job: the rate counts the rows matched since it resumed, not those before.
        let resumed = bucket_line(6, 8, (6_000, 8_000, 4_000), Duration::from_secs(10));
        assert_eq!(
            resumed,
            "bucket 6 of 8 done: 6000 of 8000 rows, 200 rows/s, about 10 seconds left"
        );
    }

    fn result() -> ResultTable {
        ResultTable {
            columns: vec!["id".into(), "region".into()],
            rows: vec![
                vec![Value::Text("C-1".into()), Value::Null],
                vec![Value::Text("C-2".into()), Value::Text("EU, north".into())],
            ],
            suppressed_rows: 0,
            bounded_identifiers: None,
        }
    }

    #[test]
    fn output_files_are_replaced_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.csv");
        std::fs::write(&path, "old\n").unwrap();
        write_csv_atomically(&result(), &path, CsvCells::Safe).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "id,region\nC-1,\nC-2,\"EU, north\"\n"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A directory that does not exist: an error, and nothing written anywhere.
        let missing = dir.path().join("missing").join("rows.csv");
        assert!(write_csv_atomically(&result(), &missing, CsvCells::Safe).is_err());
        assert!(!missing.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
