//! Helpers shared by the service's integration tests (`service_e2e`, `service_adversarial`,
//! `service_faults`, `service_privacy`, `list_e2e`, `service_load`): the fixture (a collaboration file and both members' CSV data, with the
//! plain answers to compare with), an in-process server on 127.0.0.1:0, high-level and raw
//! clients, a recording TCP proxy, and the `cleanroom` binary. Each test crate uses a part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cleanroom_rules::{Collaboration, ResultTable, Value};
use cleanroom_service::client::{ClientError, Query};
use cleanroom_service::proto::clean_room_service_client::CleanRoomServiceClient;
use cleanroom_service::proto::{
    QueryRefusal, RunSessionRequest, SessionStart, TableDescriptor, run_session_request,
};
use cleanroom_service::server::REFUSAL_METADATA_KEY;
use cleanroom_service::{
    BearerToken, Client, ClientConfig, Decision, Limits, ServerConfig, StateDb, TlsIdentity,
};
use prost::Message as _;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const PUBLISHER_TOKEN: &str = "publisher-secret-token";
pub const ADVERTISER_TOKEN: &str = "advertiser-secret-token";
pub const ANALYST_TOKEN: &str = "analyst-secret-token";
pub const RETAILER_TOKEN: &str = "retailer-secret-token";

/// The retailer's query ([`Fixture::with_second_querier`]): buyers per campaign among its sales.
pub const RETAILER_BY_CAMPAIGN: &str = "SELECT i.campaign, COUNT(DISTINCT s.email) AS buyers \
    FROM impressions i JOIN sales s ON i.email = s.email GROUP BY i.campaign";

/// Per campaign: buyers (distinct matched emails) and revenue (sum of matched amounts).
pub const BY_CAMPAIGN: &str = "SELECT i.campaign, COUNT(DISTINCT c.email) AS buyers, \
    SUM(c.amount) AS revenue FROM impressions i JOIN conversions c ON i.email = c.email \
    GROUP BY i.campaign";

/// Per channel of the advertiser, among people the publisher reached in the EU: buyers,
/// revenue and the average amount (server-side filter, receiver-side groups).
pub const EU_BY_CHANNEL: &str = "SELECT c.channel, COUNT(DISTINCT c.email) AS buyers, \
    SUM(c.amount) AS revenue, AVG(c.amount) AS avg_amount FROM impressions i \
    JOIN conversions c ON i.email = c.email WHERE i.region = 'EU' GROUP BY c.channel";

pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// A deterministic pseudo-random generator (xorshift64*), so every run sees the same data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// An email as a person might type it: random case changes and surrounding spaces.
pub fn noisy_email(rng: &mut Rng, n: u64) -> String {
    let base = format!("user{n}@example.com");
    match rng.below(4) {
        0 => base.to_uppercase(),
        1 => format!("  {base} "),
        2 => format!("User{n}@Example.COM"),
        _ => base,
    }
}

/// A CSV file as rows of strings.
pub struct Csv {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Csv {
    pub fn write(&self, path: &Path) {
        let mut writer = csv::Writer::from_path(path).unwrap();
        writer.write_record(&self.header).unwrap();
        for row in &self.rows {
            writer.write_record(row).unwrap();
        }
        writer.flush().unwrap();
    }

    pub fn column(&self, name: &str) -> usize {
        self.header.iter().position(|h| h == name).unwrap()
    }
}

/// The publisher's impressions: ~700 rows over users 0..400. Users with n % 50 == 7 saw the
/// small "rare" campaign (and nothing else), which stays under the threshold.
pub fn impressions(rng: &mut Rng) -> Csv {
    let campaigns = ["spring", "summer", "autumn", "winter"];
    let regions = ["EU", "US", "APAC"];
    let mut rows = Vec::new();
    for _ in 0..700 {
        let n = rng.below(400);
        let campaign = if n % 50 == 7 {
            "rare"
        } else {
            campaigns[rng.below(4) as usize]
        };
        let region = regions[rng.below(3) as usize];
        rows.push(vec![
            noisy_email(rng, n),
            campaign.to_owned(),
            region.to_owned(),
        ]);
    }
    // Rows whose identifier is empty after normalization are never matched.
    rows.push(vec!["   ".to_owned(), "spring".to_owned(), "EU".to_owned()]);
    Csv {
        header: vec!["email".into(), "campaign".into(), "region".into()],
        rows,
    }
}

/// The advertiser's conversions: ~600 rows over users 200..700 with amounts.
pub fn conversions(rng: &mut Rng) -> Csv {
    let channels = ["web", "store", "app"];
    let mut rows = Vec::new();
    for _ in 0..600 {
        let n = 200 + rng.below(500);
        rows.push(vec![
            noisy_email(rng, n),
            channels[rng.below(3) as usize].to_owned(),
            (1 + rng.below(500)).to_string(),
        ]);
    }
    rows.push(vec![String::new(), "web".to_owned(), "77".to_owned()]);
    Csv {
        header: vec!["email".into(), "channel".into(), "amount".into()],
        rows,
    }
}

pub fn normalize(email: &str) -> Option<String> {
    let e = email.trim().to_lowercase();
    (!e.is_empty()).then_some(e)
}

/// Everything a test needs on disk: the collaboration file and both members' data.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub collaboration: Arc<Collaboration>,
    pub impressions: Csv,
    pub conversions: Csv,
    pub threshold: u64,
}

impl Fixture {
    /// A fixture whose impressions table has `min_threshold = publisher_threshold`
    /// (conversions: 3; the release threshold is the larger of the two).
    pub fn new(publisher_threshold: u64) -> Fixture {
        Fixture::build(publisher_threshold, "", "")
    }

    /// [`Fixture::new`] under differential privacy: every release spends `epsilon_per_query`
    /// of each querying member's `epsilon_budget`; sums of `amount` are clamped to [0, 500].
    pub fn private(
        publisher_threshold: u64,
        epsilon_budget: f64,
        epsilon_per_query: f64,
    ) -> Fixture {
        Fixture::private_bounded(publisher_threshold, epsilon_budget, epsilon_per_query, None)
    }

    /// [`Fixture::private`] with `max_groups_per_identifier = k` (`None`: the default).
    pub fn private_bounded(
        publisher_threshold: u64,
        epsilon_budget: f64,
        epsilon_per_query: f64,
        k: Option<u32>,
    ) -> Fixture {
        let mut privacy = format!(
            "[collaboration.privacy]\nepsilon_budget = {epsilon_budget:?}\n\
             epsilon_per_query = {epsilon_per_query:?}\n"
        );
        if let Some(k) = k {
            privacy.push_str(&format!("max_groups_per_identifier = {k}\n"));
        }
        Fixture::build(
            publisher_threshold,
            &privacy,
            "sum_bounds = { amount = [0, 500] }",
        )
    }

    fn build(publisher_threshold: u64, privacy: &str, sum_bounds: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            r#"
[collaboration]
id = "e2e-collaboration"
name = "End-to-end tests"
{privacy}

[[member]]
name = "publisher"
abilities = []
token_sha256 = "{publisher}"

[[member]]
name = "advertiser"
abilities = ["query", "receive_results"]
token_sha256 = "{advertiser}"

[[member]]
name = "analyst"
abilities = ["receive_results"]
token_sha256 = "{analyst}"

[[table]]
name = "impressions"
owner = "publisher"
columns = ["email", "campaign", "region"]
identifier = {{ column = "email", normalize = "email" }}

[table.rule]
type = "aggregation"
join_columns = ["email"]
dimension_columns = ["campaign", "region"]
aggregate_columns = {{ email = ["COUNT_DISTINCT"] }}
min_threshold = {publisher_threshold}

[[table]]
name = "conversions"
owner = "advertiser"
columns = ["email", "channel", "amount"]
identifier = {{ column = "email", normalize = "email" }}

[table.rule]
type = "aggregation"
join_columns = ["email"]
dimension_columns = ["channel"]
aggregate_columns = {{ email = ["COUNT_DISTINCT"], amount = ["SUM", "AVG"] }}
{sum_bounds}
min_threshold = 3

[[table]]
name = "panel"
owner = "analyst"
columns = ["email", "segment"]
identifier = {{ column = "email", normalize = "email" }}

[table.rule]
type = "aggregation"
join_columns = ["email"]
dimension_columns = ["segment"]
aggregate_columns = {{ email = ["COUNT_DISTINCT"] }}
min_threshold = 3
"#,
            publisher = sha256_hex(PUBLISHER_TOKEN),
            advertiser = sha256_hex(ADVERTISER_TOKEN),
            analyst = sha256_hex(ANALYST_TOKEN),
        );
        std::fs::write(dir.path().join("collab.toml"), toml).unwrap();
        let collaboration = Arc::new(Collaboration::load(dir.path().join("collab.toml")).unwrap());
        let mut rng = Rng(0x5EED_1234_ABCD_0001);
        let impressions = impressions(&mut rng);
        let conversions = conversions(&mut rng);
        impressions.write(&dir.path().join("impressions.csv"));
        conversions.write(&dir.path().join("conversions.csv"));
        Fixture {
            dir,
            collaboration,
            impressions,
            conversions,
            threshold: publisher_threshold.max(3),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The fixture with its collaboration file rewritten by `edit` (and reloaded); the data
    /// files stay.
    pub fn edited(mut self, edit: impl FnOnce(String) -> String) -> Fixture {
        let path = self.path("collab.toml");
        let toml = edit(std::fs::read_to_string(&path).unwrap());
        std::fs::write(&path, toml).unwrap();
        self.collaboration = Arc::new(Collaboration::load(&path).unwrap());
        self
    }

    /// The fixture as collaboration `id` (another collaboration with the same members, tables
    /// and data).
    pub fn with_id(self, id: &str) -> Fixture {
        self.edited(|toml| toml.replace(r#"id = "e2e-collaboration""#, &format!("id = {id:?}")))
    }

    /// The fixture with a second querying member, `retailer` (token [`RETAILER_TOKEN`]), whose
    /// table `sales` holds the same rows as `conversions`.
    pub fn with_second_querier(self) -> Fixture {
        std::fs::copy(self.path("conversions.csv"), self.path("sales.csv")).unwrap();
        self.edited(|toml| {
            toml + &format!(
                r#"
[[member]]
name = "retailer"
abilities = ["query", "receive_results"]
token_sha256 = "{}"

[[table]]
name = "sales"
owner = "retailer"
columns = ["email", "channel", "amount"]
identifier = {{ column = "email", normalize = "email" }}

[table.rule]
type = "aggregation"
join_columns = ["email"]
dimension_columns = ["channel"]
aggregate_columns = {{ email = ["COUNT_DISTINCT"] }}
min_threshold = 3
"#,
                sha256_hex(RETAILER_TOKEN)
            )
        })
    }

    pub fn advertiser_data(&self) -> BTreeMap<String, cleanroom_data::TableSpec> {
        BTreeMap::from([(
            "conversions".to_owned(),
            self.path("conversions.csv").into(),
        )])
    }

    /// Distinct normalized emails of impressions rows that pass `keep`, per `key`.
    pub fn publisher_sets(
        &self,
        keep: impl Fn(&[String]) -> bool,
        key: impl Fn(&[String]) -> String,
    ) -> BTreeMap<String, BTreeSet<String>> {
        let email = self.impressions.column("email");
        let mut sets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for row in self.impressions.rows.iter().filter(|r| keep(r)) {
            if let Some(e) = normalize(&row[email]) {
                sets.entry(key(row)).or_default().insert(e);
            }
        }
        sets
    }

    /// The plain answer to [`BY_CAMPAIGN`]: released rows (campaign order) and suppressed
    /// count.
    pub fn plain_by_campaign(&self) -> (Vec<Vec<Value>>, u64) {
        let campaign = self.impressions.column("campaign");
        let sets = self.publisher_sets(|_| true, |r| r[campaign].clone());
        let (email, amount) = (
            self.conversions.column("email"),
            self.conversions.column("amount"),
        );
        let mut rows = Vec::new();
        let mut suppressed = 0;
        for (campaign, set) in &sets {
            let mut buyers = BTreeSet::new();
            let mut revenue = 0u64;
            for row in &self.conversions.rows {
                if let Some(e) = normalize(&row[email])
                    && set.contains(&e)
                {
                    revenue += row[amount].parse::<u64>().unwrap();
                    buyers.insert(e);
                }
            }
            // Every announced pair that is not released counts as suppressed, matched or not.
            let buyers = buyers.len() as u64;
            if buyers >= self.threshold {
                rows.push(vec![
                    Value::Text(campaign.clone()),
                    Value::Integer(buyers),
                    Value::Integer(revenue),
                ]);
            } else {
                suppressed += 1;
            }
        }
        (rows, suppressed)
    }

    /// The plain answer to [`EU_BY_CHANNEL`] (rows, and pairs not released).
    pub fn plain_eu_by_channel(&self) -> (Vec<Vec<Value>>, u64) {
        let region = self.impressions.column("region");
        let eu = self
            .publisher_sets(|r| r[region] == "EU", |_| String::new())
            .remove("")
            .unwrap_or_default();
        let (email, channel, amount) = (
            self.conversions.column("email"),
            self.conversions.column("channel"),
            self.conversions.column("amount"),
        );
        // Every channel of the advertiser's rows is an announced group, matched or not.
        let mut per_channel: BTreeMap<String, (BTreeSet<String>, u64, u64)> = BTreeMap::new();
        for row in &self.conversions.rows {
            if normalize(&row[email]).is_some() {
                per_channel.entry(row[channel].clone()).or_default();
            }
        }
        for row in &self.conversions.rows {
            if let Some(e) = normalize(&row[email])
                && eu.contains(&e)
            {
                let entry = per_channel.entry(row[channel].clone()).or_default();
                entry.0.insert(e);
                entry.1 += row[amount].parse::<u64>().unwrap();
                entry.2 += 1;
            }
        }
        let mut rows = Vec::new();
        let mut suppressed = 0;
        for (channel, (buyers, revenue, matched_rows)) in per_channel {
            let buyers = buyers.len() as u64;
            if buyers >= self.threshold {
                rows.push(vec![
                    Value::Text(channel),
                    Value::Integer(buyers),
                    Value::Integer(revenue),
                    Value::Float(revenue as f64 / matched_rows as f64),
                ]);
            } else {
                suppressed += 1;
            }
        }
        (rows, suppressed)
    }
}

/// A server running in this process.
pub struct Running {
    pub addr: SocketAddr,
    pub state: Arc<StateDb>,
    pub stop: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("server stops")
                .unwrap();
        }
    }

    /// The audit entry of a session, waiting (briefly) for it to be complete.
    pub async fn settled_entry(&self, session_id: &str) -> cleanroom_service::AuditEntry {
        for _ in 0..200 {
            if let Some(entry) = self.state.entry(session_id).unwrap()
                && entry.decision != Decision::Running
            {
                return entry;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("session {session_id} never completed");
    }
}

/// The publisher's server over the fixture's impressions, with a fresh state database.
pub async fn start_server(fx: &Fixture, limits: Limits, tls: Option<TlsIdentity>) -> Running {
    let state = Arc::new(StateDb::open(fx.path(&format!("state-{}.db", rand_suffix()))).unwrap());
    start_server_with_state(fx, limits, tls, state).await
}

/// The publisher's server over the fixture's impressions, recording in `state` (which may be
/// shared with other servers).
pub async fn start_server_with_state(
    fx: &Fixture,
    limits: Limits,
    tls: Option<TlsIdentity>,
    state: Arc<StateDb>,
) -> Running {
    serve_in_process(ServerConfig {
        collaboration: Arc::clone(&fx.collaboration),
        member: "publisher".to_owned(),
        data: BTreeMap::from([("impressions".to_owned(), fx.path("impressions.csv").into())]),
        limits,
        connections: cleanroom_service::ConnectionLimits::default(),
        state,
        tls,
        insecure: false,
        on_session_end: None,
    })
    .await
}

/// Serves `config` on 127.0.0.1 (a free port) in this process until [`Running::stop`].
pub async fn serve_in_process(config: ServerConfig) -> Running {
    let state = Arc::clone(&config.state);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        cleanroom_service::serve(config, listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Running {
        addr,
        state,
        stop: Some(stop),
        task: Some(task),
    }
}

pub fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

pub fn advertiser_client_config(url: String) -> ClientConfig {
    let mut config = ClientConfig::new(url, BearerToken::new(ADVERTISER_TOKEN).unwrap());
    config.timeout = Some(Duration::from_secs(60));
    config
}

pub async fn run_query(
    fx: &Fixture,
    url: String,
    sql: &str,
) -> Result<cleanroom_service::QueryOutcome, ClientError> {
    let mut client = Client::connect(&advertiser_client_config(url)).await?;
    let data = fx.advertiser_data();
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
}

/// The advertiser's `sql` over TLS to `server` (whose certificate, for `localhost`, is
/// `server_tls`), presenting the client certificate `identity` when given.
pub async fn run_query_tls(
    fx: &Fixture,
    server: &Running,
    server_tls: &TlsIdentity,
    identity: Option<&TlsIdentity>,
    sql: &str,
) -> Result<cleanroom_service::QueryOutcome, ClientError> {
    let mut config = advertiser_client_config(format!("https://localhost:{}", server.addr.port()));
    config.ca_pem = Some(server_tls.cert_pem.clone());
    config.identity = identity.cloned();
    let mut client = Client::connect(&config).await?;
    let data = fx.advertiser_data();
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
}

pub fn assert_rows_equal(got: &ResultTable, want: &[Vec<Value>]) {
    assert_eq!(got.rows.len(), want.len(), "rows: {:?}", got.rows);
    for (g, w) in got.rows.iter().zip(want) {
        assert_eq!(g.len(), w.len());
        for (a, b) in g.iter().zip(w) {
            match (a, b) {
                (Value::Float(x), Value::Float(y)) => {
                    assert!((x - y).abs() < 1e-9, "{x} != {y} in row {g:?}")
                }
                _ => assert_eq!(a, b, "row {g:?}"),
            }
        }
    }
}

/// Adds an optional bearer token: a raw client of the generated API, for what the
/// high-level client would refuse to send.
#[derive(Clone)]
pub struct MaybeToken(pub Option<String>);

impl Interceptor for MaybeToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        Ok(request)
    }
}

pub type RawClient = CleanRoomServiceClient<InterceptedService<Channel, MaybeToken>>;

pub async fn raw_client(addr: SocketAddr, token: Option<&str>) -> RawClient {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    CleanRoomServiceClient::with_interceptor(channel, MaybeToken(token.map(str::to_owned)))
}

pub fn start_message(fx: &Fixture, member: &str, sql: &str, table: &str) -> RunSessionRequest {
    RunSessionRequest {
        message: Some(run_session_request::Message::Start(SessionStart {
            collaboration_id: fx.collaboration.id().to_owned(),
            member: member.to_owned(),
            sql: sql.to_owned(),
            table: Some(TableDescriptor {
                name: table.to_owned(),
                columns: fx.conversions.header.clone(),
                rows: fx.conversions.rows.len() as u64,
                skipped_rows: 0,
            }),
        })),
    }
}

/// Opens a raw session with `start`; returns the status of a refusal, or the open streams.
pub async fn raw_open(
    client: &mut RawClient,
    start: RunSessionRequest,
) -> Result<
    (
        mpsc::Sender<RunSessionRequest>,
        tonic::Streaming<cleanroom_service::proto::RunSessionResponse>,
    ),
    tonic::Status,
> {
    let (tx, rx) = mpsc::channel(8);
    tx.send(start).await.unwrap();
    let response = client.run_session(ReceiverStream::new(rx)).await?;
    Ok((tx, response.into_inner()))
}

pub fn refusal_codes(status: &tonic::Status) -> Vec<String> {
    let bytes = status
        .metadata()
        .get_bin(REFUSAL_METADATA_KEY)
        .expect("refusal details")
        .to_bytes()
        .unwrap();
    QueryRefusal::decode(bytes.as_ref())
        .unwrap()
        .reasons
        .into_iter()
        .map(|r| r.code)
        .collect()
}

/// Runs `cleanroom` with `args` and the advertiser's token; returns (exit code, stdout, stderr).
pub fn cleanroom(args: &[&str], token: Option<&str>) -> (i32, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cleanroom"));
    command.args(args).env_remove("CLEANROOM_TOKEN");
    if let Some(token) = token {
        command.env("CLEANROOM_TOKEN", token);
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// A TCP proxy to `target` that records every byte each way: (its address, client to
/// server, server to client).
pub async fn recording_proxy(
    target: SocketAddr,
) -> (
    SocketAddr,
    Arc<std::sync::Mutex<Vec<u8>>>,
    Arc<std::sync::Mutex<Vec<u8>>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let to_server = Arc::new(std::sync::Mutex::new(Vec::new()));
    let to_client = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (up, down) = (Arc::clone(&to_server), Arc::clone(&to_client));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(target).await.unwrap();
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pump(client_read, server_write, Arc::clone(&up)));
            tokio::spawn(pump(server_read, client_write, Arc::clone(&down)));
        }
    });
    (addr, to_server, to_client)
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    record: Arc<std::sync::Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        record.lock().unwrap().extend_from_slice(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// `message`'s items cut into chunks of at most `size` items, points and ciphertexts kept
/// together.
pub fn rechunk(message: cleanroom_psi::Message, size: usize) -> Vec<cleanroom_psi::Message> {
    let cleanroom_psi::Message::ReceiverItems {
        group,
        value_columns,
        points,
        ciphertexts,
    } = message
    else {
        panic!("expected items, got {}", message.kind())
    };
    let width = ciphertexts.len() / points.len();
    points
        .chunks(size)
        .zip(ciphertexts.chunks(size * width.max(1)))
        .map(
            |(points, ciphertexts)| cleanroom_psi::Message::ReceiverItems {
                group,
                value_columns,
                points: points.to_vec(),
                ciphertexts: if width == 0 {
                    Vec::new()
                } else {
                    ciphertexts.to_vec()
                },
            },
        )
        .collect()
}

/// Reads the call to its end, which must be an error status (within 20 s).
pub async fn final_status(
    inbound: &mut tonic::Streaming<cleanroom_service::proto::RunSessionResponse>,
) -> tonic::Status {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match inbound.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the call ended OK; expected an error status"),
                Err(status) => break status,
            }
        }
    })
    .await
    .expect("the server ends the call")
}
