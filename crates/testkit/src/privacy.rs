//! The privacy fixture: a collaboration under differential privacy (the publisher's
//! `impressions`, the advertiser's `conversions` with an `amount`), its data, an in-process
//! server and the advertiser's query.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cleanroom_rules::{Collaboration, Value};
use cleanroom_service::client::{ClientError, Query, QueryOutcome};
use cleanroom_service::{BearerToken, Client, ClientConfig, Limits, ServerConfig, StateDb};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::Code;

use crate::collaboration::{CollaborationToml, MemberToml, TableToml};

/// The publisher's token in this collaboration.
pub const PUBLISHER_TOKEN: &str = "publisher-private-token";
/// The advertiser's token in this collaboration.
pub const ADVERTISER_TOKEN: &str = "advertiser-private-token";

/// Buyers and revenue per campaign.
pub const BY_CAMPAIGN: &str = "SELECT i.campaign, COUNT(DISTINCT c.email) AS buyers, \
    SUM(c.amount) AS revenue FROM impressions i JOIN conversions c ON i.email = c.email \
    GROUP BY i.campaign";
/// Buyers in all.
pub const COUNT: &str = "SELECT COUNT(DISTINCT c.email) AS buyers FROM impressions i \
    JOIN conversions c ON i.email = c.email";

/// A collaboration file with `header` (privacy and limits sections) appended to `[collaboration]`.
pub fn collaboration_toml(header: &str, sum_bounds: &str) -> String {
    let mut conversions = TableToml::aggregation("conversions", "advertiser", &["email", "amount"])
        .aggregates(r#"email = ["COUNT_DISTINCT"], amount = ["SUM", "AVG"]"#);
    if !sum_bounds.is_empty() {
        conversions = conversions.rule_line(sum_bounds);
    }
    CollaborationToml::new("private-e2e")
        .header(header)
        .member(MemberToml::new("publisher", PUBLISHER_TOKEN))
        .member(MemberToml::querier("advertiser", ADVERTISER_TOKEN))
        .table(
            TableToml::aggregation("impressions", "publisher", &["email", "campaign"])
                .dimensions(&["campaign"]),
        )
        .table(conversions)
        .render()
}

/// A privacy section: a budget of 1.0, 0.4 per query.
pub const PRIVATE: &str = "[collaboration.privacy]\nepsilon_budget = 1.0\nepsilon_per_query = 0.4";
/// The rule line bounding `amount` for noisy sums.
pub const BOUNDS: &str = "sum_bounds = { amount = [0, 500] }";

/// Both members' files and the collaboration, in a temporary directory.
pub struct Setup {
    /// The directory.
    pub dir: tempfile::TempDir,
    /// The collaboration.
    pub collaboration: Arc<Collaboration>,
}

impl Setup {
    /// Publisher: users 0..60 (campaign a or b) and alice. Advertiser: users 30..90.
    pub fn new(header: &str, sum_bounds: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let toml = collaboration_toml(header, sum_bounds);
        std::fs::write(dir.path().join("collab.toml"), &toml).unwrap();
        let mut impressions = String::from("email,campaign\n");
        for n in 0..60 {
            impressions.push_str(&format!("user{n}@example.com,{}\n", ["a", "b"][n % 2]));
        }
        impressions.push_str("alice@example.com,a\n");
        std::fs::write(dir.path().join("impressions.csv"), impressions).unwrap();
        Self::write_conversions(dir.path(), "conversions.csv", 30..90, false);
        let collaboration = Arc::new(Collaboration::from_toml_str(&toml, "collab.toml").unwrap());
        Setup { dir, collaboration }
    }

    /// Writes the advertiser's `name`: `users`, and alice when asked.
    pub fn write_conversions(dir: &Path, name: &str, users: std::ops::Range<u32>, alice: bool) {
        let mut rows = String::from("email,amount\n");
        for n in users {
            rows.push_str(&format!("user{n}@example.com,{}\n", 10 + n));
        }
        if alice {
            rows.push_str("alice@example.com,100\n");
        }
        std::fs::write(dir.join(name), rows).unwrap();
    }

    /// The path of `name` in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The publisher's server in this process.
pub struct Server {
    /// Its `http://` URL.
    pub url: String,
    /// Its audit log and ledger.
    pub state: Arc<StateDb>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serves `setup`'s impressions on 127.0.0.1, recording in `state`.
    pub async fn start(setup: &Setup, state: &Path) -> Server {
        let state = Arc::new(StateDb::open(state).unwrap());
        let config = ServerConfig {
            collaboration: Arc::clone(&setup.collaboration),
            member: "publisher".to_owned(),
            data: BTreeMap::from([(
                "impressions".to_owned(),
                setup.path("impressions.csv").into(),
            )]),
            limits: Limits::default(),
            connections: cleanroom_service::ConnectionLimits::default(),
            state: Arc::clone(&state),
            tls: None,
            client_ca: None,
            insecure: false,
            on_session_end: None,
            work_dir: None,
            relay_key: None,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            cleanroom_service::serve(config, listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Server {
            url,
            state,
            stop,
            task,
        }
    }

    /// Stops the server and waits for it (up to 10 s).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .unwrap();
    }

    /// Its address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.url.trim_start_matches("http://").parse().unwrap()
    }
}

/// The advertiser's `sql` with its file `conversions` against `server`.
pub async fn query(
    setup: &Setup,
    server: &Server,
    sql: &str,
    conversions: &str,
) -> Result<QueryOutcome, ClientError> {
    let mut config = ClientConfig::new(
        server.url.clone(),
        BearerToken::new(ADVERTISER_TOKEN).unwrap(),
    );
    config.timeout = Some(Duration::from_secs(60));
    let mut client = Client::connect(&config).await?;
    let data = BTreeMap::from([("conversions".to_owned(), setup.path(conversions).into())]);
    client
        .run_query(
            Query {
                collaboration: &setup.collaboration,
                member: "advertiser",
                sql,
                data: &data,
                receivers: &[],
            },
            None,
        )
        .await
}

/// The code and message of a status from the server; a budget or limit refusal also carries
/// its reason code.
pub fn remote(error: ClientError) -> (Code, String) {
    match error {
        ClientError::Remote(remote) => {
            if remote.code == Code::ResourceExhausted {
                let codes: Vec<&str> = remote.reasons.iter().map(|r| r.code.as_str()).collect();
                assert!(
                    codes == ["budget_exhausted"] || codes == ["query_limit_reached"],
                    "{codes:?}"
                );
            }
            (remote.code, remote.message)
        }
        other => panic!("expected a status from the server, got {other}"),
    }
}

/// The integer in `value`.
pub fn integer(value: &Value) -> i64 {
    match value {
        Value::Integer(n) => *n as i64,
        other => panic!("not an integer: {other:?}"),
    }
}
