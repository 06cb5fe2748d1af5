//! Joins across three to five members: a registry of patients (the querier) and two to four
//! hospitals, each serving its visits on its own in-process server with its relay key, and
//! the plain answers their queries must give.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cleanroom_psi::ecdh::chain::{Chain, ChainMessage, ChainQuerier};
use cleanroom_psi::sealed::OpeningKey;
use cleanroom_psi::{Receiver, Stage, WireMessage};
use cleanroom_rules::{Collaboration, Plan, QueryPlan, Role};
use cleanroom_service::proto::{
    PsiMessage, RunSessionRequest, SessionStart, TableDescriptor, run_session_request,
    run_session_response,
};
use cleanroom_service::{BearerToken, ClientConfig, Limits, ServerConfig, StateDb};
use tokio::sync::mpsc;

use crate::client::{raw_client, raw_open};
use crate::collaboration::{CollaborationToml, MemberToml, TableToml};
use crate::fixture::{Csv, Rng};
use crate::server::{Running, serve_in_process};

/// The registry's bearer token.
pub const REGISTRY_TOKEN: &str = "registry-secret-token";

/// The diagnoses of the hospitals' visits.
pub const DIAGNOSES: [&str; 3] = ["flu", "cold", "burn"];

/// The registry and its hospitals, their tables on disk, their relay keys.
pub struct Hospitals {
    /// The directory of the tables.
    pub dir: tempfile::TempDir,
    /// The collaboration.
    pub collaboration: Arc<Collaboration>,
    /// The registry's `patients` (`email, region, cost`).
    pub patients: Csv,
    /// Each hospital's `visits_<h>` (`email, diagnosis`), `hospital_a` first.
    pub visits: Vec<Csv>,
    /// Each hospital's relay key (secret bytes), in the same order.
    relay_keys: Vec<[u8; 32]>,
}

/// The name of hospital `h` (0: `a`) and of its table.
pub fn hospital(h: usize) -> (String, String) {
    let letter = char::from(b'a' + h as u8);
    (format!("hospital_{letter}"), format!("visits_{letter}"))
}

fn email(i: u64) -> String {
    format!("Patient{i}@Example.org")
}

impl Hospitals {
    /// A registry of 400 patients and `hospitals` (2 to 4) hospitals of about 300 visits each
    /// (a patient may visit twice), every table with `min_threshold = threshold`.
    pub fn new(hospitals: usize, threshold: u64) -> Hospitals {
        Hospitals::build(hospitals, threshold, None)
    }

    /// [`Hospitals::new`] under differential privacy: every release spends
    /// `epsilon_per_query` of the registry's budget of `epsilon_budget`, at every provider;
    /// costs are bounded to [0, 500] and trusted (`sum_ranges = "trusted"`: range proofs do
    /// not travel along a chain).
    pub fn private(
        hospitals: usize,
        threshold: u64,
        epsilon_budget: f64,
        epsilon_per_query: f64,
    ) -> Hospitals {
        Hospitals::build(
            hospitals,
            threshold,
            Some(format!(
                "[collaboration.privacy]\nepsilon_budget = {epsilon_budget:?}\n\
                 epsilon_per_query = {epsilon_per_query:?}\nsum_ranges = \"trusted\"\n"
            )),
        )
    }

    fn build(hospitals: usize, threshold: u64, privacy: Option<String>) -> Hospitals {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng(0xC0FFEE);
        let regions = ["north", "south", "east"];
        let patients = Csv {
            header: vec!["email".into(), "region".into(), "cost".into()],
            rows: (0..400u64)
                .map(|i| {
                    vec![
                        email(i),
                        regions[(i % 3) as usize].to_owned(),
                        (1 + rng.below(500)).to_string(),
                    ]
                })
                .collect(),
        };
        let visits: Vec<Csv> = (0..hospitals)
            .map(|h| {
                let mut rows = Vec::new();
                for i in 0..500u64 {
                    // Each hospital sees most patients, not the same ones.
                    if rng.below(100) < 75 || i % (h as u64 + 5) == 0 {
                        let diagnosis = DIAGNOSES[rng.below(3) as usize];
                        rows.push(vec![email(i).to_lowercase(), diagnosis.to_owned()]);
                        if rng.below(10) == 0 {
                            rows.push(vec![format!(" {} ", email(i)), diagnosis.to_owned()]);
                        }
                    }
                }
                Csv {
                    header: vec!["email".into(), "diagnosis".into()],
                    rows,
                }
            })
            .collect();
        let relay_keys: Vec<[u8; 32]> = (0..hospitals)
            .map(|_| *OpeningKey::generate().to_bytes())
            .collect();
        let mut patients_table =
            TableToml::aggregation("patients", "registry", &["email", "region", "cost"])
                .dimensions(&["region"])
                .aggregates(r#"email = ["COUNT_DISTINCT"], cost = ["SUM", "AVG"]"#)
                .min_threshold(threshold);
        let mut toml = CollaborationToml::new("hospitals");
        if let Some(privacy) = &privacy {
            toml = toml.header(privacy);
            patients_table = patients_table.rule_line("sum_bounds = { cost = [0, 500] }");
        }
        let mut toml = toml
            .member(MemberToml::querier("registry", REGISTRY_TOKEN))
            .table(patients_table);
        for (h, key) in relay_keys.iter().enumerate() {
            let (member, table) = hospital(h);
            let public = OpeningKey::from_bytes(*key).unwrap().sealing_key();
            toml = toml
                .member(
                    MemberToml::new(&member, &format!("{member}-token")).line(&format!(
                        "relay_key = \"{}\"",
                        hex::encode(public.to_bytes())
                    )),
                )
                .table(
                    TableToml::aggregation(&table, &member, &["email", "diagnosis"])
                        .dimensions(&["diagnosis"])
                        .min_threshold(threshold),
                );
        }
        std::fs::write(dir.path().join("hospitals.toml"), toml.render()).unwrap();
        for (h, key) in relay_keys.iter().enumerate() {
            let path = dir.path().join(format!("relay-{}.key", hospital(h).0));
            std::fs::write(path, hex::encode(key)).unwrap();
        }
        patients.write(&dir.path().join("patients.csv"));
        for (h, csv) in visits.iter().enumerate() {
            csv.write(&dir.path().join(format!("{}.csv", hospital(h).1)));
        }
        let collaboration =
            Arc::new(Collaboration::from_toml_str(&toml.render(), "hospitals.toml").unwrap());
        Hospitals {
            dir,
            collaboration,
            patients,
            visits,
            relay_keys,
        }
    }

    /// The collaboration file on disk (what `serve` and `query` read).
    pub fn collaboration_file(&self) -> std::path::PathBuf {
        self.dir.path().join("hospitals.toml")
    }

    /// Hospital `h`'s secret relay key on disk, as `cleanroom key new --relay` writes it.
    pub fn relay_key_file(&self, h: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("relay-{}.key", hospital(h).0))
    }

    /// The registry's data: `patients` and where it is.
    pub fn registry_data(&self) -> BTreeMap<String, cleanroom_data::TableSpec> {
        BTreeMap::from([(
            "patients".to_owned(),
            self.dir.path().join("patients.csv").into(),
        )])
    }

    /// Hospital `h`'s server configuration, with its relay key, recording in a fresh state.
    pub fn config(&self, h: usize) -> ServerConfig {
        let (member, table) = hospital(h);
        let state = self.dir.path().join(format!("state-{member}.db"));
        ServerConfig {
            collaboration: Arc::clone(&self.collaboration),
            member,
            data: BTreeMap::from([(
                table.clone(),
                self.dir.path().join(format!("{table}.csv")).into(),
            )]),
            limits: Limits::default(),
            connections: cleanroom_service::ConnectionLimits::default(),
            state: Arc::new(StateDb::open(state).unwrap()),
            tls: None,
            client_ca: None,
            insecure: false,
            on_session_end: None,
            work_dir: None,
            relay_key: Some(Arc::new(
                OpeningKey::from_bytes(self.relay_keys[h]).unwrap(),
            )),
        }
    }

    /// Every hospital's server, in hospital order.
    pub async fn start(&self) -> Vec<Running> {
        let mut running = Vec::new();
        for h in 0..self.visits.len() {
            running.push(serve_in_process(self.config(h)).await);
        }
        running
    }

    /// The registry's client configuration of each hospital's table, on `servers`.
    pub fn servers(&self, servers: &[Running]) -> BTreeMap<String, ClientConfig> {
        servers
            .iter()
            .enumerate()
            .map(|(h, running)| {
                let mut config = ClientConfig::new(
                    format!("http://{}", running.addr),
                    BearerToken::new(REGISTRY_TOKEN).unwrap(),
                );
                config.timeout = Some(Duration::from_secs(120));
                (hospital(h).1, config)
            })
            .collect()
    }

    /// `FROM patients p JOIN visits_a a ON … JOIN visits_b b ON …` over the first `n`
    /// hospitals (aliases `a`, `b`, …).
    pub fn from(&self, n: usize) -> String {
        let mut sql = String::from("FROM patients p");
        for h in 0..n {
            let (_, table) = hospital(h);
            let alias = char::from(b'a' + h as u8);
            sql.push_str(&format!(" JOIN {table} {alias} ON p.email = {alias}.email"));
        }
        sql
    }

    /// The plain answer over the first `n` hospitals: for each group (the registry's region,
    /// or with `by_diagnosis_of = Some(h)` hospital `h`'s diagnosis), the patients every
    /// table holds and the sum of their costs.
    pub fn plain(&self, n: usize, by_diagnosis_of: Option<usize>) -> BTreeMap<String, (u64, u64)> {
        let key = |e: &str| e.trim().to_lowercase();
        let held: Vec<BTreeMap<String, Vec<String>>> = self.visits[..n]
            .iter()
            .map(|csv| {
                let mut by_id: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for row in &csv.rows {
                    by_id.entry(key(&row[0])).or_default().push(row[1].clone());
                }
                by_id
            })
            .collect();
        let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for row in &self.patients.rows {
            let id = key(&row[0]);
            if !held.iter().all(|h| h.contains_key(&id)) {
                continue;
            }
            let cost: u64 = row[2].parse().unwrap();
            let groups: Vec<String> = match by_diagnosis_of {
                None => vec![row[1].clone()],
                Some(h) => {
                    let mut d = held[h][&id].clone();
                    d.sort();
                    d.dedup();
                    d
                }
            };
            for group in groups {
                let e = out.entry(group).or_default();
                e.0 += 1;
                e.1 += cost;
            }
        }
        out
    }
}

/// How a querier's session with a chain ended: at which provider (its table) the first error
/// status came, and that status; `None` when every provider ended with its summary. With
/// every byte the querier sent and received, and each provider's session identifier.
pub struct Bent {
    /// The first provider to end the call with an error, and its status.
    pub refused: Option<(String, tonic::Status)>,
    /// Each provider's table and session identifier, in chain order.
    pub sessions: Vec<(String, String)>,
    /// Every protocol message the querier sent or received, encoded.
    pub wire: Vec<Vec<u8>>,
}

impl Hospitals {
    /// Replaces hospital `h`'s table (before its server starts).
    pub fn set_visits(&mut self, h: usize, visits: Csv) {
        visits.write(&self.dir.path().join(format!("{}.csv", hospital(h).1)));
        self.visits[h] = visits;
    }

    /// The registry's `sql` against `servers`, played by a querier that passes every message
    /// it would send to provider `to` through `bend(to, message)` and sends what that returns
    /// instead, each to the position it names: the attacker's hook (`vec![(to, message)]`:
    /// an honest querier). Runs until every provider ended, or the first one ends with an
    /// error.
    pub async fn bent_query(
        &self,
        servers: &[Running],
        sql: &str,
        mut bend: impl FnMut(u8, ChainMessage) -> Vec<(u8, ChainMessage)>,
    ) -> Bent {
        let Ok(QueryPlan::Chain(plan)) = self.collaboration.plan_query("registry", sql, &[]) else {
            panic!("{sql}: not a chain")
        };
        let mut ends = Plan::Aggregate(plan.ends().clone());
        let spec = self.registry_data()["patients"].clone();
        let table = cleanroom_service::data::receiver_table(&mut ends, &spec).unwrap();
        let mut receiver = Receiver::new(&ends.domain(), table, cleanroom_psi::Limits::default());
        if ends.grouped_by() != Some(Role::Matcher) {
            receiver = receiver.expect_matcher_groups(1);
        }
        let mut context = [0u8; 32];
        context[..8].copy_from_slice(&crate::server::rand_suffix().to_be_bytes());
        context[8..16].copy_from_slice(&std::process::id().to_be_bytes().repeat(2));
        let chain = Chain::new(&context, plan.links().map(|l| *l.relay_key()).collect()).unwrap();
        let start = SessionStart {
            collaboration_id: "hospitals".to_owned(),
            member: "registry".to_owned(),
            sql: sql.to_owned(),
            table: Some(TableDescriptor {
                name: "patients".to_owned(),
                columns: self.patients.header.clone(),
                rows: self.patients.rows.len() as u64,
                skipped_rows: 0,
            }),
            agreement: Some(cleanroom_service::chain_agreement(
                &self.collaboration,
                &plan,
            )),
            receivers: Vec::new(),
            result_keys: Vec::new(),
            buckets: 0,
            job_id: String::new(),
            chain_context: context.to_vec(),
        };
        let (arrivals, mut arrived) = mpsc::channel(256);
        let (mut senders, mut sessions) = (Vec::new(), Vec::new());
        for (link, position) in plan.links().zip(1u8..) {
            let h = usize::from(link.table().as_bytes()["visits_".len()] - b'a');
            let mut client = raw_client(servers[h].addr, Some(REGISTRY_TOKEN)).await;
            let request = RunSessionRequest {
                message: Some(run_session_request::Message::Start(start.clone())),
            };
            let (sender, mut inbound) = raw_open(&mut client, request).await.unwrap();
            let accepted = match inbound.message().await.unwrap().and_then(|m| m.message) {
                Some(run_session_response::Message::Accepted(accepted)) => accepted,
                other => panic!("{}: no acceptance: {other:?}", link.table()),
            };
            sessions.push((link.table().to_owned(), accepted.session_id));
            senders.push(sender);
            let arrivals = arrivals.clone();
            tokio::spawn(async move {
                loop {
                    let item = inbound.message().await;
                    let end = !matches!(item, Ok(Some(_)));
                    if arrivals.send((position, item)).await.is_err() || end {
                        break;
                    }
                }
            });
        }
        let mut querier = ChainQuerier::new(receiver, chain, cleanroom_psi::Limits::default());
        let (mut wire, mut summaries) = (Vec::new(), 0);
        loop {
            while let Some((to, message)) = querier.poll_message() {
                for (to, message) in bend(to, message) {
                    let payload = message.encode();
                    wire.push(payload.clone());
                    let request = RunSessionRequest {
                        message: Some(run_session_request::Message::Psi(PsiMessage { payload })),
                    };
                    // A provider that ended already reads no more.
                    let _ = senders[usize::from(to) - 1].send(request).await;
                }
            }
            if querier.stage() == Stage::Finished && summaries == senders.len() {
                break;
            }
            let (from, item) = tokio::time::timeout(Duration::from_secs(30), arrived.recv())
                .await
                .expect("a provider answers within 30 s")
                .expect("the readers run");
            let table = sessions[usize::from(from) - 1].0.clone();
            match item {
                Ok(Some(response)) => match response.message {
                    Some(run_session_response::Message::Psi(psi)) => {
                        wire.push(psi.payload.clone());
                        let message = ChainMessage::decode(&psi.payload).unwrap();
                        querier.handle_message(from, message).unwrap_or_else(|e| {
                            panic!("{table} sent what the querier refuses: {e}")
                        });
                    }
                    Some(run_session_response::Message::Summary(_)) => summaries += 1,
                    other => panic!("{table}: unexpected {other:?}"),
                },
                Ok(None) => {}
                Err(status) => {
                    return Bent {
                        refused: Some((table, status)),
                        sessions,
                        wire,
                    };
                }
            }
        }
        Bent {
            refused: None,
            sessions,
            wire,
        }
    }
}

/// What a provider bends in each message it seals to the next provider.
pub type Bend = Box<dyn FnMut(ChainMessage) -> ChainMessage + Send>;

/// A bending provider's view: the kinds of the messages it received, and how its call ended
/// (`None` while it runs; `Some(None)`: OK; `Some(Some(code))`: that status).
pub type ProviderView = Arc<std::sync::Mutex<(Vec<&'static str>, Option<Option<tonic::Code>>)>>;

/// A provider that bends what it seals: a relay in front of a hospital's real server, which
/// passes the querier's messages through and opens every hop the server seals to the next
/// provider, bends it, and seals it again. A real provider knows what it seals; the relay
/// holds the next provider's relay key to stand for that knowledge. It also keeps the kinds of
/// the messages the provider received, and the end of its call: the provider's view.
pub struct BendingProvider {
    /// Where the relay listens (give it to the querier instead of the server's address).
    pub addr: std::net::SocketAddr,
    /// The kinds of the messages the provider received, and how its call ended (`None`: OK).
    pub seen: ProviderView,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl BendingProvider {
    /// Stops the relay.
    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[derive(Clone)]
struct Relay {
    collaboration: Arc<Collaboration>,
    table: String,
    upstream: std::net::SocketAddr,
    next_key: [u8; 32],
    bend: Arc<std::sync::Mutex<Bend>>,
    seen: ProviderView,
}

impl Hospitals {
    /// Hospital `h`'s server `behind`, reached through a [`BendingProvider`] that applies
    /// `bend` to every message it seals to the provider after it (`next`, a hospital index).
    pub async fn bending(
        &self,
        h: usize,
        behind: &Running,
        next: usize,
        bend: Bend,
    ) -> BendingProvider {
        use cleanroom_service::proto::clean_room_service_server::CleanRoomServiceServer;
        let seen = Arc::new(std::sync::Mutex::new((Vec::new(), None)));
        let relay = Relay {
            collaboration: Arc::clone(&self.collaboration),
            table: hospital(h).1,
            upstream: behind.addr,
            next_key: self.relay_keys[next],
            bend: Arc::new(std::sync::Mutex::new(bend)),
            seen: Arc::clone(&seen),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(CleanRoomServiceServer::new(relay))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
                .unwrap();
        });
        BendingProvider {
            addr,
            seen,
            stop: Some(stop),
        }
    }
}

type Unary<T> = Result<tonic::Response<T>, tonic::Status>;

#[tonic::async_trait]
impl cleanroom_service::proto::clean_room_service_server::CleanRoomService for Relay {
    type RunSessionStream = tokio_stream::wrappers::ReceiverStream<
        Result<cleanroom_service::proto::RunSessionResponse, tonic::Status>,
    >;
    type FetchResultStream = tokio_stream::wrappers::ReceiverStream<
        Result<cleanroom_service::proto::FetchResultResponse, tonic::Status>,
    >;

    async fn run_session(
        &self,
        request: tonic::Request<tonic::Streaming<RunSessionRequest>>,
    ) -> Unary<Self::RunSessionStream> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| tonic::Status::invalid_argument("no start"))?;
        let Some(run_session_request::Message::Start(start)) = &first.message else {
            return Err(tonic::Status::invalid_argument("no start"));
        };
        let Ok(QueryPlan::Chain(plan)) =
            self.collaboration
                .plan_query(&start.member, &start.sql, &start.receivers)
        else {
            return Err(tonic::Status::invalid_argument("not a chain"));
        };
        let position = plan
            .links()
            .find(|l| l.table() == self.table)
            .map(|l| l.position() as u8)
            .expect("the relay's table is in the chain");
        let chain = Chain::new(
            &start.chain_context,
            plan.links().map(|l| *l.relay_key()).collect(),
        )
        .unwrap();
        let mut client = raw_client(self.upstream, Some(REGISTRY_TOKEN)).await;
        let (to_server, mut from_server) = raw_open(&mut client, first.clone()).await?;
        let seen = Arc::clone(&self.seen);
        tokio::spawn(async move {
            while let Some(Ok(request)) = tokio_stream::StreamExt::next(&mut inbound).await {
                if let Some(run_session_request::Message::Psi(psi)) = &request.message
                    && let Ok(message) = ChainMessage::decode(&psi.payload)
                {
                    seen.lock().unwrap().0.push(message.kind());
                }
                if to_server.send(request).await.is_err() {
                    break;
                }
            }
        });
        let (out, responses) = mpsc::channel(8);
        let (bend, seen) = (Arc::clone(&self.bend), Arc::clone(&self.seen));
        let next_key = OpeningKey::from_bytes(self.next_key).unwrap();
        tokio::spawn(async move {
            let (mut opened, mut sealed_out) = (0u64, 0u64);
            loop {
                match from_server.message().await {
                    Ok(Some(mut response)) => {
                        if let Some(run_session_response::Message::Psi(psi)) = &mut response.message
                            && let Ok(ChainMessage::Hop { to, sealed }) =
                                ChainMessage::decode(&psi.payload)
                            && to == position + 1
                        {
                            let inner = chain.open_hop(&next_key, to, opened, &sealed).unwrap();
                            opened += 1;
                            let bent = (bend.lock().unwrap())(inner);
                            psi.payload = chain.seal_hop(position, sealed_out, &bent).encode();
                            sealed_out += 1;
                        }
                        if out.send(Ok(response)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => {
                        seen.lock().unwrap().1 = Some(None);
                        break;
                    }
                    Err(status) => {
                        seen.lock().unwrap().1 = Some(Some(status.code()));
                        let _ = out.send(Err(status)).await;
                        break;
                    }
                }
            }
        });
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(responses),
        ))
    }

    async fn get_server_info(
        &self,
        _: tonic::Request<cleanroom_service::proto::GetServerInfoRequest>,
    ) -> Unary<cleanroom_service::proto::GetServerInfoResponse> {
        Err(tonic::Status::unimplemented("a relay"))
    }

    async fn list_audit_entries(
        &self,
        _: tonic::Request<cleanroom_service::proto::ListAuditEntriesRequest>,
    ) -> Unary<cleanroom_service::proto::ListAuditEntriesResponse> {
        Err(tonic::Status::unimplemented("a relay"))
    }

    async fn plan_query(
        &self,
        _: tonic::Request<cleanroom_service::proto::PlanQueryRequest>,
    ) -> Unary<cleanroom_service::proto::PlanQueryResponse> {
        Err(tonic::Status::unimplemented("a relay"))
    }

    async fn fetch_result(
        &self,
        _: tonic::Request<cleanroom_service::proto::FetchResultRequest>,
    ) -> Unary<Self::FetchResultStream> {
        Err(tonic::Status::unimplemented("a relay"))
    }
}
