//! The list-query fixture: a collaboration with a list rule (the publisher's `subscribers`, the
//! advertiser's `customers`), its data, an in-process server and the advertiser's query.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cleanroom_rules::{Collaboration, Value};
use cleanroom_service::client::Query;
use cleanroom_service::{
    BearerToken, Client, ClientConfig, Limits, QueryOutcome, ServerConfig, StateDb,
};

use crate::collaboration::{ADVERTISER_TOKEN, list_collaboration};
use crate::fixture::{Csv, Rng, normalize};
use crate::server::{Running, serve_in_process};

/// Every matched pair: the customer, its segment, and the subscriber's newsletter and region.
pub const OVERLAP: &str = "SELECT cu.customer_id, cu.segment, s.newsletter, s.region \
    FROM customers cu JOIN subscribers s ON cu.email = s.email";

/// One row per (region, segment) among weekly subscribers, in a fixed order.
pub const WEEKLY: &str = "SELECT DISTINCT s.region, cu.segment FROM customers cu \
    JOIN subscribers s ON cu.email = s.email WHERE s.newsletter = 'weekly-briefing' \
    ORDER BY 1, 2";

/// A member's email as a person might type it: random case changes and surrounding spaces.
pub fn noisy_member_email(rng: &mut Rng, n: u64) -> String {
    let base = format!("member{n}@example.org");
    match rng.below(4) {
        0 => base.to_uppercase(),
        1 => format!("  {base} "),
        2 => format!("Member{n}@Example.ORG"),
        _ => base,
    }
}

/// A cell as the released result shows it: blank is NULL, anything else text.
pub fn value(cell: &str) -> Value {
    if cell.trim().is_empty() {
        Value::Null
    } else {
        Value::Text(cell.to_owned())
    }
}

/// The publisher's subscribers (email, newsletter, region, signup_date) over members
/// 0..300, several rows per member, and the advertiser's customers (email, customer_id,
/// segment, lifetime_value) over members 150..450, some twice.
pub fn list_data(rng: &mut Rng) -> (Csv, Csv) {
    let newsletters = ["daily-digest", "weekly-briefing", "sports-extra"];
    let regions = ["EU", "US", "APAC", ""];
    let mut subscribers = Vec::new();
    for i in 0..500 {
        let n = rng.below(300);
        subscribers.push(vec![
            noisy_member_email(rng, n),
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
            noisy_member_email(rng, n),
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

/// The list collaboration's directory: `collab.toml`, `subscribers.csv` (the publisher's) and
/// `customers.csv` (the advertiser's).
pub struct ListFixture {
    /// The directory.
    pub dir: tempfile::TempDir,
    /// The collaboration, as loaded from `collab.toml`.
    pub collaboration: Arc<Collaboration>,
    /// The publisher's subscribers.
    pub subscribers: Csv,
    /// The advertiser's customers.
    pub customers: Csv,
}

impl Default for ListFixture {
    fn default() -> Self {
        Self::new()
    }
}

impl ListFixture {
    /// Writes the files (the same data every run).
    pub fn new() -> ListFixture {
        let dir = tempfile::tempdir().unwrap();
        let toml = list_collaboration("list-e2e", "List queries end to end").render();
        std::fs::write(dir.path().join("collab.toml"), toml).unwrap();
        let collaboration = Arc::new(Collaboration::load(dir.path().join("collab.toml")).unwrap());
        let (subscribers, customers) = list_data(&mut Rng(0x1157_5EED_0009));
        subscribers.write(&dir.path().join("subscribers.csv"));
        customers.write(&dir.path().join("customers.csv"));
        ListFixture {
            dir,
            collaboration,
            subscribers,
            customers,
        }
    }

    /// The path of `name` in the fixture's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The join in the clear: for every customer row and every subscriber row passing
    /// `keep` with the same normalized email, `output(customer, subscriber)`; sorted.
    pub fn plain(
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

    /// [`OVERLAP`] in the clear.
    pub fn plain_overlap(&self) -> Vec<Vec<Value>> {
        self.plain(
            |_| true,
            |c, s| vec![value(&c[1]), value(&c[2]), value(&s[1]), value(&s[2])],
        )
    }
}

/// `rows` in a fixed order.
pub fn sorted(mut rows: Vec<Vec<Value>>) -> Vec<Vec<Value>> {
    rows.sort_by_key(|r| format!("{r:?}"));
    rows
}

/// The publisher's server over `subscribers`, in this process.
pub async fn start_list_server(fx: &ListFixture) -> Running {
    start_list_server_with(fx, Limits::default(), None).await
}

/// [`start_list_server`] under `limits`, its job files under `work_dir`, recording in a state
/// database of its own.
pub async fn start_list_server_with(
    fx: &ListFixture,
    limits: Limits,
    work_dir: Option<&std::path::Path>,
) -> Running {
    let state = fx.path(&format!("state-{}.db", crate::rand_suffix()));
    serve_in_process(ServerConfig {
        collaboration: Arc::clone(&fx.collaboration),
        member: "publisher".to_owned(),
        data: BTreeMap::from([("subscribers".to_owned(), fx.path("subscribers.csv").into())]),
        limits,
        connections: cleanroom_service::ConnectionLimits::default(),
        state: Arc::new(StateDb::open(state).unwrap()),
        tls: None,
        client_ca: None,
        insecure: false,
        on_session_end: None,
        work_dir: work_dir.map(std::path::Path::to_path_buf),
        relay_key: None,
    })
    .await
}

/// The advertiser's `sql` over `customers` against the server at `addr`.
pub async fn list_query(fx: &ListFixture, addr: SocketAddr, sql: &str) -> QueryOutcome {
    list_query_with(fx, addr, sql, |_| {})
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// [`list_query`] with the client's configuration changed by `configure` first; the error
/// as the client returns it.
pub async fn list_query_with(
    fx: &ListFixture,
    addr: SocketAddr,
    sql: &str,
    configure: impl FnOnce(&mut ClientConfig),
) -> Result<QueryOutcome, cleanroom_service::client::ClientError> {
    let mut config = ClientConfig::new(
        format!("http://{addr}"),
        BearerToken::new(ADVERTISER_TOKEN).unwrap(),
    );
    config.timeout = Some(Duration::from_secs(60));
    configure(&mut config);
    let mut client = Client::connect(&config).await?;
    let data = BTreeMap::from([("customers".to_owned(), fx.path("customers.csv").into())]);
    client
        .run_query(
            Query {
                collaboration: &fx.collaboration,
                member: "advertiser",
                sql,
                data: &data,
                receivers: &[],
            },
            None,
        )
        .await
}
