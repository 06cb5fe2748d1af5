//! The server side: `cleanroom serve`, run by the member who provides the other table.
//!
//! For each session the server authenticates the member (bearer token), reads the session start
//! off the stream and hands it to the [session host](crate::session), which re-plans the SQL
//! from its own copy of the collaboration, checks the limits, records the attempt in the state
//! database, reads its own table with its own filters, plays the psi matcher, decides which
//! output rows are released, records that decision durably, and only then sends the release.
//! This module is the gRPC around it: framing, statuses, health, reflection, the listener.

use cleanroom_data::TableSpec;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cleanroom_rules::Collaboration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{AuthenticatedMember, CheckToken};
use crate::client_cert::ClientAuth;
use crate::data::{self, DataFileError};
use crate::events::FLUSH_INTERVAL;
use crate::exchange::ExchangeError;
use crate::limits::{
    FIRST_MESSAGE_TIMEOUT, Limits, LimitsError, MAX_GRPC_MESSAGE_BYTES, MAX_MESSAGE_BYTES,
};
use crate::listener::{ConnectionLimits, Connections, ConnectionsError, PeerInfo};
use crate::outcome::{SessionError, is_too_large, too_large};
use crate::proto::clean_room_service_server::{CleanRoomService, CleanRoomServiceServer};
use crate::proto::{
    self, DeliveredResult, FetchResultRequest, FetchResultResponse, GetServerInfoRequest,
    GetServerInfoResponse, ListAuditEntriesRequest, ListAuditEntriesResponse, PlanQueryRequest,
    PlanQueryResponse, PsiMessage, RunSessionRequest, RunSessionResponse, SessionAccepted,
    SessionSummary, fetch_result_response, run_session_request, run_session_response,
};
use crate::session::{Admitted, Host, Inbound, ServerFrames, SessionRequest, state_call};
use crate::state::{AuditCursor, AuditEntry, AuditQuery, Policy, StateDb, StateError};
use crate::tls::{TlsError, TlsIdentity, check_plaintext_listen};

/// The metadata key under which a refused query's reasons travel (a serialized
/// `cleanroom.v1.QueryRefusal`).
pub const REFUSAL_METADATA_KEY: &str = "cleanroom-refusal-bin";

/// Entries in an audit page when the member asks for none in particular.
const AUDIT_PAGE_DEFAULT_ENTRIES: u32 = 100;
/// The most entries in one audit page.
const AUDIT_PAGE_MAX_ENTRIES: u32 = 1_000;
/// The most bytes of SQL and reasons in one audit page (well under the gRPC message limit).
const AUDIT_PAGE_MAX_BYTES: usize = 1 << 20;

/// Called with the audit entry of every session that ended (for logging).
pub type SessionHook = Arc<dyn Fn(&AuditEntry) + Send + Sync>;

/// Everything a server needs.
#[derive(Clone)]
pub struct ServerConfig {
    /// The collaboration, as this member's copy of the file says.
    pub collaboration: Arc<Collaboration>,
    /// The member running this server (it must own every table in `data`).
    pub member: String,
    /// Where each table this server serves is, and how to read it (CSV or Parquet, local or
    /// on object storage).
    pub data: BTreeMap<String, TableSpec>,
    /// Per-session and concurrency limits.
    pub limits: Limits,
    /// Connection caps and the TLS handshake and first-bytes timeouts (`listener.rs`).
    pub connections: ConnectionLimits,
    /// The audit log.
    pub state: Arc<StateDb>,
    /// The certificate and key to serve TLS with; `None` for plaintext.
    pub tls: Option<TlsIdentity>,
    /// The CA certificates (PEM) every client certificate must chain to (`serve --client-ca`):
    /// with them, the TLS handshake refuses a client that presents no such certificate, whatever
    /// its token. Needs `tls`. Pins in the collaboration still apply on top.
    pub client_ca: Option<Vec<u8>>,
    /// Allow plaintext on a non-loopback address.
    pub insecure: bool,
    /// Told about every session that ended.
    pub on_session_end: Option<SessionHook>,
    /// Where a job of buckets writes its bucket files (`serve --work-dir`): a fresh
    /// directory per job inside it, removed when the job ends; `None`: under the system's
    /// temporary directory.
    pub work_dir: Option<std::path::PathBuf>,
    /// The opening half of this member's relay key (`serve --relay-key`), whose public half
    /// is its `relay_key` in the collaboration file: what other providers of a join across
    /// three or more members seal their messages to. `None`: this server takes no part in such
    /// joins. Never printed.
    pub relay_key: Option<Arc<cleanroom_psi::sealed::OpeningKey>>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("collaboration", &self.collaboration.id())
            .field("member", &self.member)
            .field("data", &self.data)
            .field("limits", &self.limits)
            .field("connections", &self.connections)
            .field("state", &self.state.path())
            .field("tls", &self.tls.is_some())
            .field("client_ca", &self.client_ca.is_some())
            .field("insecure", &self.insecure)
            .field("relay_key", &self.relay_key.is_some())
            .finish_non_exhaustive()
    }
}

/// A server that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// `--member` is not a member of the collaboration.
    #[error("{0:?} is not a member of the collaboration")]
    UnknownMember(String),
    /// `--relay-key` is not the key whose public half the member's entry publishes.
    #[error(
        "--relay-key does not open what is sealed to member {0:?}: its public half is not the \
         relay_key of that member in the collaboration file (or the member has none)"
    )]
    RelayKeyMismatch(String),
    /// A `--data` table is not in the collaboration.
    #[error("table {0:?} is not in the collaboration")]
    UnknownTable(String),
    /// A `--data` table belongs to another member.
    #[error("table {table:?} belongs to {owner:?}, not to {member:?}: serve only your own tables")]
    NotOwner {
        /// The table.
        table: String,
        /// Its owner.
        owner: String,
        /// The member running the server.
        member: String,
    },
    /// No table to serve.
    #[error("no data: give at least one --data TABLE=PATH")]
    NoData,
    /// A data file cannot be read.
    #[error("table {table:?}: {source}")]
    Data {
        /// The table.
        table: String,
        /// What is wrong with its file.
        #[source]
        source: Box<DataFileError>,
    },
    /// A data file lacks a column of its table.
    #[error("table {table:?}: {path} has no column {column:?}")]
    MissingColumn {
        /// The table.
        table: String,
        /// The file.
        path: TableSpec,
        /// The missing column.
        column: String,
    },
    /// Unusable limits.
    #[error(transparent)]
    Limits(#[from] LimitsError),
    /// Plaintext where it is not allowed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Unusable connection limits, or a TLS identity that does not make a configuration.
    #[error(transparent)]
    Connections(#[from] ConnectionsError),
    /// The listener's address cannot be read.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// Reflection could not load the descriptors.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The state database cannot record the collaboration's policy.
    #[error(transparent)]
    State(#[from] StateError),
    /// The transport failed (TLS configuration, serving).
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl ServerConfig {
    /// Checks the configuration: the member exists and owns every table served, each data file
    /// has the table's columns, the limits work, and a client CA comes with TLS and holds a
    /// usable certificate.
    pub fn validate(&self) -> Result<(), ServerError> {
        self.limits.validate()?;
        if let Some(ca) = &self.client_ca {
            if self.tls.is_none() {
                return Err(TlsError::ClientCaWithoutTls.into());
            }
            crate::client_cert::client_ca_roots(ca)?;
        }
        self.connections
            .validate()
            .map_err(ConnectionsError::Limits)?;
        let Some(member) = self.collaboration.member(&self.member) else {
            return Err(ServerError::UnknownMember(self.member.clone()));
        };
        if let Some(key) = &self.relay_key
            && member.relay_key() != Some(&key.sealing_key())
        {
            return Err(ServerError::RelayKeyMismatch(self.member.clone()));
        }
        if self.data.is_empty() {
            return Err(ServerError::NoData);
        }
        for (name, path) in &self.data {
            let table = self
                .collaboration
                .table(name)
                .ok_or_else(|| ServerError::UnknownTable(name.clone()))?;
            if table.owner() != self.member {
                return Err(ServerError::NotOwner {
                    table: name.clone(),
                    owner: table.owner().to_owned(),
                    member: self.member.clone(),
                });
            }
            let header = data::header(path).map_err(|source| ServerError::Data {
                table: name.clone(),
                source: Box::new(source),
            })?;
            if let Some(column) = table.columns().iter().find(|c| !header.contains(c)) {
                return Err(ServerError::MissingColumn {
                    table: name.clone(),
                    path: path.clone(),
                    column: column.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Serves the cleanroom service, `grpc.health.v1` and server reflection (`v1` and `v1alpha`)
/// on `listener` until `shutdown` resolves and the sessions running then have ended; new
/// sessions are refused meanwhile (see [`DRAINING_MESSAGE`]).
pub async fn serve(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    serve_with_metrics(config, listener, None, shutdown).await
}

/// [`serve`], and with `metrics` the Prometheus metrics at `GET /metrics` on that listener
/// ([`metrics`](crate::metrics)). Failed authentications counted in memory are written to the
/// state database every [`FLUSH_INTERVAL`](crate::events::FLUSH_INTERVAL) and once more when
/// the server stops.
pub async fn serve_with_metrics(
    config: ServerConfig,
    listener: TcpListener,
    metrics: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    config.validate()?;
    // What the check notes (rows, skipped rows per table): `cleanroom serve` logs it at INFO
    // when it starts, before listening; here it is only repeated for the curious.
    for line in config.check_tables()? {
        tracing::debug!(target: "cleanroom::serve", "{line}");
    }
    config
        .state
        .record_policy(&Policy::of(&config.collaboration))?;
    let local = listener.local_addr()?;
    if config.tls.is_none() {
        check_plaintext_listen(local, config.insecure)?;
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(proto::SERVICE_NAME, tonic_health::ServingStatus::Serving)
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    // Reflection in both versions: `grpc.reflection.v1`, and `v1alpha`, which the stock Python
    // `grpcio-reflection` client and older tools (grpcurl before 1.9) still speak.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let reflection = reflection().build_v1()?;

    let clean_room = CleanRoom::new(config.clone());
    let events = Arc::clone(&clean_room.host.events);
    // Before any connection: no job runs yet, so every stopped job's bucket files can go.
    let tidied = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || crate::retention::tidy(&config, true))
            .await
            .map_err(|e| ServerError::Io(std::io::Error::other(e)))??
    };
    events.jobs_tidied(&tidied);
    let _retention = AbortOnDrop(tokio::spawn(crate::retention::keep_tidy(
        config.clone(),
        Arc::clone(&events),
    )));
    let check = CheckToken::new(Arc::clone(&config.collaboration)).with_events(Arc::clone(&events));
    let _metrics = metrics.map(|listener| {
        let host = clean_room.host.clone();
        AbortOnDrop(tokio::spawn(crate::metrics::serve_metrics(
            listener,
            Arc::clone(events.metrics()),
            Arc::new(move || host.running_sessions()),
        )))
    });
    let _flush = AbortOnDrop(tokio::spawn({
        let events = Arc::clone(&events);
        async move {
            let mut every = tokio::time::interval(FLUSH_INTERVAL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let events = Arc::clone(&events);
                let _ = tokio::task::spawn_blocking(move || events.flush()).await;
            }
        }
    }));
    let drain = drain(clean_room.clone(), health, shutdown);
    let service = CleanRoomServiceServer::new(clean_room)
        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
    let service = InterceptedService::new(service, check);

    // Our own accept loop (listener.rs): connection caps fitted to the open-files limit, TLS
    // handshakes under a timeout, silent connections closed. It sets TCP_NODELAY itself.
    let open_files = crate::listener::raise_open_files_limit();
    let connection_limits = config.connections.fitted(open_files.now);
    let clients = ClientAuth {
        pins: config.collaboration.client_cert_pins(),
        ca_pem: config.client_ca.clone(),
    };
    let (_connections, incoming) =
        Connections::accept(listener, connection_limits, config.tls.as_ref(), &clients)?;
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, drain)
        .await?;
    let _ = tokio::task::spawn_blocking(move || events.flush()).await;
    Ok(())
}

/// A background task that ends with the server.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a draining server tells a new session.
pub const DRAINING_MESSAGE: &str =
    "the server is shutting down and takes no new sessions; try again later";

/// Resolves once `shutdown` has resolved and every running session has ended. In between, the
/// server drains: new sessions are refused (`UNAVAILABLE`, [`DRAINING_MESSAGE`]), health
/// reports `NOT_SERVING`, and running sessions go on to their end.
async fn drain(
    clean_room: CleanRoom,
    health: tonic_health::server::HealthReporter,
    shutdown: impl Future<Output = ()>,
) {
    shutdown.await;
    clean_room.draining.store(true, Ordering::SeqCst);
    for service in [proto::SERVICE_NAME, ""] {
        health
            .set_service_status(service, tonic_health::ServingStatus::NotServing)
            .await;
    }
    let running = clean_room.host.running_sessions();
    tracing::info!(
        target: "cleanroom::serve",
        event = "draining",
        running,
        "draining {running} running session{}; new sessions are refused",
        if running == 1 { "" } else { "s" }
    );
    while clean_room.host.running_sessions() > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The gRPC service implementation: the transport around the [session host](Host).
#[derive(Clone)]
struct CleanRoom {
    host: Host,
    /// Set once the server was told to stop: new sessions are refused.
    draining: Arc<AtomicBool>,
}

impl CleanRoom {
    fn new(config: ServerConfig) -> CleanRoom {
        CleanRoom {
            host: Host::new(config),
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Reads the start, records the attempt and admits or refuses it. A refusal before the
    /// attempt is recorded (no start, or not a start) is logged here; any later one is
    /// recorded, logged and counted by the host.
    async fn open(
        &self,
        member: &str,
        peer: Option<SocketAddr>,
        inbound: &mut Streaming<RunSessionRequest>,
    ) -> Result<Admitted, Status> {
        let early = |reason: &str, status: Status| {
            self.host.events.session_refused(member, peer, reason);
            status
        };
        let wait = self
            .host
            .config
            .limits
            .idle_timeout
            .min(FIRST_MESSAGE_TIMEOUT);
        let first = tokio::time::timeout(wait, inbound.message())
            .await
            .map_err(|_| {
                early(
                    "no_start",
                    Status::deadline_exceeded(format!(
                        "no session start within {}s",
                        wait.as_secs_f32()
                    )),
                )
            })?
            .map_err(|status| {
                if is_too_large(&status) {
                    early("bad_start", too_large(&status))
                } else {
                    early("no_start", status)
                }
            })?;
        let start = match first.and_then(|m| m.message) {
            Some(run_session_request::Message::Start(start)) => start,
            Some(
                run_session_request::Message::Psi(_) | run_session_request::Message::ResultKeys(_),
            ) => {
                return Err(early(
                    "bad_start",
                    Status::invalid_argument("a session must open with a start message"),
                ));
            }
            None => {
                return Err(early(
                    "no_start",
                    Status::cancelled("the client closed the session before starting"),
                ));
            }
        };
        self.host
            .open(member, &SessionRequest::of(&start))
            .await
            .map_err(|e| e.status())
    }
}

impl ServerFrames for Result<RunSessionResponse, Status> {
    fn accepted(accepted: SessionAccepted) -> Self {
        Ok(RunSessionResponse {
            message: Some(run_session_response::Message::Accepted(accepted)),
        })
    }

    fn psi(payload: Vec<u8>) -> Self {
        Ok(RunSessionResponse {
            message: Some(run_session_response::Message::Psi(PsiMessage { payload })),
        })
    }

    fn summary(summary: SessionSummary) -> Self {
        Ok(RunSessionResponse {
            message: Some(run_session_response::Message::Summary(summary)),
        })
    }

    fn ended(error: &SessionError) -> Self {
        Err(error.status())
    }
}

/// What a client's stream carries after its start: protocol messages and result keys;
/// anything else (a second start, an empty request) is an error.
fn psi_stream(
    inbound: Streaming<RunSessionRequest>,
) -> impl tokio_stream::Stream<Item = Result<Inbound, ExchangeError>> + Unpin {
    inbound.map(|item| match item {
        Ok(RunSessionRequest {
            message: Some(run_session_request::Message::Psi(PsiMessage { payload })),
        }) => Ok(Inbound::Psi(payload)),
        Ok(RunSessionRequest {
            message: Some(run_session_request::Message::ResultKeys(keys)),
        }) => Ok(Inbound::ResultKeys(keys.result_keys)),
        Ok(_) => Err(ExchangeError::Unexpected(
            "only protocol messages and result keys may follow the session start",
        )),
        Err(status) => Err(ExchangeError::Transport(status)),
    })
}

/// The client's address, as the listener saw it.
fn peer_of<T>(request: &Request<T>) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|peer| peer.tcp.remote_addr())
}

fn authenticated<T>(request: &Request<T>) -> Result<String, Status> {
    request
        .extensions()
        .get::<AuthenticatedMember>()
        .map(|m| m.0.clone())
        .ok_or_else(|| Status::unauthenticated("missing bearer token"))
}

#[tonic::async_trait]
impl CleanRoomService for CleanRoom {
    type RunSessionStream = ReceiverStream<Result<RunSessionResponse, Status>>;

    async fn run_session(
        &self,
        request: Request<Streaming<RunSessionRequest>>,
    ) -> Result<Response<Self::RunSessionStream>, Status> {
        let member = authenticated(&request)?;
        let peer = peer_of(&request);
        if self.draining.load(Ordering::SeqCst) {
            self.host.events.session_refused(&member, peer, "draining");
            return Err(Status::unavailable(DRAINING_MESSAGE));
        }
        let started = Instant::now();
        let timeout = self.host.config.limits.session_timeout;
        let deadline = (started + timeout, timeout);
        let mut inbound = request.into_inner();
        let admitted = self.open(&member, peer, &mut inbound).await?;
        self.host.events.session_started(
            &admitted.session_id,
            &member,
            peer,
            admitted.plan.protocol().as_str(),
        );
        let (outbound, responses) = mpsc::channel(4);
        tokio::spawn(self.host.clone().drive(
            admitted,
            psi_stream(inbound),
            outbound,
            started,
            deadline,
        ));
        Ok(Response::new(ReceiverStream::new(responses)))
    }

    async fn get_server_info(
        &self,
        request: Request<GetServerInfoRequest>,
    ) -> Result<Response<GetServerInfoResponse>, Status> {
        let member = authenticated(&request)?;
        let config = &self.host.config;
        let limits = &config.limits;
        Ok(Response::new(GetServerInfoResponse {
            collaboration_id: config.collaboration.id().to_owned(),
            collaboration_name: config.collaboration.name().to_owned(),
            member: config.member.clone(),
            tables: config.data.keys().cloned().collect(),
            limits: Some(proto::ServerLimits {
                max_rows_per_session: self.host.member_rows(&member),
                max_concurrent_sessions: limits.max_concurrent_sessions,
                max_sessions_per_member: limits.sessions_per_member(),
                min_bytes_per_second: limits.min_bytes_per_second,
                idle_timeout_seconds: limits.idle_timeout.as_secs(),
                session_timeout_seconds: limits.session_timeout.as_secs(),
                max_message_bytes: MAX_MESSAGE_BYTES as u64,
            }),
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
        }))
    }

    async fn list_audit_entries(
        &self,
        request: Request<ListAuditEntriesRequest>,
    ) -> Result<Response<ListAuditEntriesResponse>, Status> {
        let member = authenticated(&request)?;
        let request = request.into_inner();
        let before = match request.page_token.as_str() {
            "" => None,
            token => Some(AuditCursor::from_token(token).ok_or_else(|| {
                Status::invalid_argument("page_token is not one this server gave")
            })?),
        };
        let query = AuditQuery {
            collaboration_id: self.host.config.collaboration.id().to_owned(),
            member,
            before,
            max_entries: match request.limit {
                0 => AUDIT_PAGE_DEFAULT_ENTRIES,
                n => n.min(AUDIT_PAGE_MAX_ENTRIES),
            },
            max_bytes: AUDIT_PAGE_MAX_BYTES,
        };
        // The database lock is held only while this one page is read, never while it is sent.
        let page = state_call(&self.host.config.state, move |s| s.page(&query))
            .await
            .map_err(|e| e.status())?;
        Ok(Response::new(ListAuditEntriesResponse {
            entries: page.entries.iter().map(AuditEntry::to_proto).collect(),
            next_page_token: page.next.map(AuditCursor::token).unwrap_or_default(),
        }))
    }

    /// The plan a session with this SQL would run under, from the server's own copy of the
    /// collaboration (which the member holds too): nothing about the server's data, no slot, no
    /// charge, no audit entry. A refusal is the status a session start would get, reasons in
    /// the `cleanroom-refusal-bin` trailer.
    async fn plan_query(
        &self,
        request: Request<PlanQueryRequest>,
    ) -> Result<Response<PlanQueryResponse>, Status> {
        let member = authenticated(&request)?;
        let sql = request.into_inner().sql;
        let plan = self.host.plan(&member, &sql).map_err(|e| e.status())?;
        Ok(Response::new(PlanQueryResponse {
            plan_json: cleanroom_rules::AllowedPlan::new(&plan).to_json(),
        }))
    }

    type FetchResultStream =
        tokio_stream::Iter<std::vec::IntoIter<Result<FetchResultResponse, Status>>>;

    /// The result kept for the calling member as a receiver of a released session: the header
    /// with the sealed keys, then the matcher's closing messages. Any other case, an unknown
    /// session included, is the same NOT_FOUND: a member learns nothing of sessions whose
    /// result is not its own.
    async fn fetch_result(
        &self,
        request: Request<FetchResultRequest>,
    ) -> Result<Response<Self::FetchResultStream>, Status> {
        let member = authenticated(&request)?;
        let session_id = request.into_inner().session_id;
        let collaboration_id = self.host.config.collaboration.id().to_owned();
        let (id, receiver) = (session_id.clone(), member.clone());
        let delivered = state_call(&self.host.config.state, move |s| {
            s.delivery(&collaboration_id, &id, &receiver)
        })
        .await
        .map_err(|e| e.status())?
        .ok_or_else(|| {
            Status::not_found(format!(
                "no result of that session is kept for member {member:?}"
            ))
        })?;
        let mut responses = Vec::with_capacity(1 + delivered.delivery.messages.len());
        responses.push(Ok(FetchResultResponse {
            message: Some(fetch_result_response::Message::Header(DeliveredResult {
                session_id,
                collaboration_id: delivered.collaboration_id,
                querier: delivered.querier,
                sql: delivered.sql,
                released_at: delivered.released_at,
                sealed_keys: delivered.delivery.sealed_keys,
                messages: delivered.delivery.messages.len() as u32,
            })),
        }));
        for payload in delivered.delivery.messages {
            responses.push(Ok(FetchResultResponse {
                message: Some(fetch_result_response::Message::Psi(PsiMessage { payload })),
            }));
        }
        Ok(Response::new(tokio_stream::iter(responses)))
    }
}
