//! The server side: `cleanroom serve`, run by the member who provides the other table.
//!
//! For each session the server authenticates the member (bearer token), re-plans the SQL from
//! its own copy of the collaboration, checks the limits, records the attempt in the state
//! database, reads its own table with its own filters, plays the psi matcher, decides which
//! output rows are released, records that decision durably, and only then sends the release.

use cleanroom_data::TableSpec;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use cleanroom_psi::range_proof::ValueRange;
use cleanroom_psi::{ListProvider, Matcher, ProtocolError};
use cleanroom_rules::{Collaboration, Plan, Protocol, Role};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{AuthenticatedMember, CheckToken};
use crate::data::{self, DataFileError};
use crate::exchange::{Counters, Exchange, ExchangeError, MinRate, PeerError, within};
use crate::limits::{
    FIRST_MESSAGE_TIMEOUT, Limits, LimitsError, MAX_GRPC_MESSAGE_BYTES, MAX_MESSAGE_BYTES,
};
use crate::listener::{ConnectionLimits, Connections, ConnectionsError};
use crate::outcome::{SessionError, is_too_large, too_large};
use crate::proto::clean_room_service_server::{CleanRoomService, CleanRoomServiceServer};
use crate::proto::{
    self, GetServerInfoRequest, GetServerInfoResponse, ListAuditEntriesRequest,
    ListAuditEntriesResponse, PsiMessage, RunSessionRequest, RunSessionResponse, SessionAccepted,
    SessionStart, SessionStats, SessionSummary, run_session_request, run_session_response,
};
use crate::roles::ListProviderRole;
use crate::slots::{SessionSlot, SessionSlots};
use crate::state::{
    Attempt, AuditCursor, AuditEntry, AuditQuery, Completion, Policy, Standing, StateDb, StateError,
};
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
    /// Allow plaintext on a non-loopback address.
    pub insecure: bool,
    /// Told about every session that ended.
    pub on_session_end: Option<SessionHook>,
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
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

/// A server that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// `--member` is not a member of the collaboration.
    #[error("{0:?} is not a member of the collaboration")]
    UnknownMember(String),
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
    /// has the table's columns, and the limits work.
    pub fn validate(&self) -> Result<(), ServerError> {
        self.limits.validate()?;
        self.connections
            .validate()
            .map_err(ConnectionsError::Limits)?;
        if self.collaboration.member(&self.member).is_none() {
            return Err(ServerError::UnknownMember(self.member.clone()));
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
/// on `listener` until `shutdown` resolves (then lets running sessions finish).
pub async fn serve(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    config.validate()?;
    for line in config.check_tables()? {
        eprintln!("cleanroom serve: {line}");
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

    let check = CheckToken::new(Arc::clone(&config.collaboration));
    let service = CleanRoomServiceServer::new(CleanRoom::new(config.clone()))
        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
    let service = InterceptedService::new(service, check);

    // Our own accept loop (listener.rs): connection caps fitted to the open-files limit, TLS
    // handshakes under a timeout, silent connections closed. It sets TCP_NODELAY itself.
    let open_files = crate::listener::raise_open_files_limit();
    let connection_limits = config.connections.fitted(open_files.now);
    let (_connections, incoming) = Connections::accept(
        listener,
        connection_limits,
        config.tls.as_ref(),
        &config.collaboration.client_cert_pins(),
    )?;
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// The gRPC service implementation.
#[derive(Clone)]
struct CleanRoom {
    config: Arc<ServerConfig>,
    sessions: SessionSlots,
    /// Budgets and query limits of the collaboration.
    policy: Arc<Policy>,
}

impl CleanRoom {
    fn new(config: ServerConfig) -> CleanRoom {
        let sessions = SessionSlots::new(
            config.limits.max_concurrent_sessions,
            config.limits.sessions_per_member(),
        );
        CleanRoom {
            policy: Arc::new(Policy::of(&config.collaboration)),
            config: Arc::new(config),
            sessions,
        }
    }
}

fn new_session_id() -> Result<String, SessionError> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|e| SessionError::Internal(e.to_string()))?;
    Ok(hex::encode(bytes))
}

/// Runs a state database call on the blocking pool.
async fn state_call<T: Send + 'static>(
    state: &Arc<StateDb>,
    f: impl FnOnce(&StateDb) -> Result<T, StateError> + Send + 'static,
) -> Result<T, SessionError> {
    let state = Arc::clone(state);
    tokio::task::spawn_blocking(move || f(&state))
        .await
        .map_err(|e| SessionError::Internal(e.to_string()))?
        .map_err(SessionError::State)
}

/// What a session's protocol decided, before it is sent: pairs released and suppressed, the
/// bounded identifiers (exact, and as the querier is told), and the encoded messages.
struct Release {
    released: u64,
    suppressed: u64,
    bounded: (u64, u64),
    messages: Vec<Vec<u8>>,
}

/// A session that passed every check and may run.
struct Admitted {
    session_id: String,
    plan: Plan,
    matcher_path: TableSpec,
    receiver_rows: u64,
    permit: SessionSlot,
    /// The querier's standing after this session's charge.
    standing: Standing,
}

impl CleanRoom {
    /// The checks before any protocol message: identity, collaboration, rules, data, limits.
    fn admit(&self, member: &str, start: &SessionStart) -> Result<(Plan, TableSpec), SessionError> {
        let config = &self.config;
        if start.member != member {
            return Err(SessionError::PermissionDenied(format!(
                "the bearer token belongs to member {member:?}, not to {:?}",
                start.member
            )));
        }
        if start.collaboration_id != config.collaboration.id() {
            return Err(SessionError::InvalidArgument(format!(
                "this server is in collaboration {:?}, not {:?}",
                config.collaboration.id(),
                start.collaboration_id
            )));
        }
        let plan = config
            .collaboration
            .plan(member, &start.sql)
            .map_err(SessionError::Refused)?;
        let table = start.table.as_ref().ok_or_else(|| {
            SessionError::InvalidArgument("the session start names no table".to_owned())
        })?;
        match config.collaboration.table(&table.name) {
            Some(t) if t.owner() == member => {}
            Some(t) => {
                return Err(SessionError::PermissionDenied(format!(
                    "table {:?} belongs to {:?}: member {member:?} cannot bring it",
                    table.name,
                    t.owner()
                )));
            }
            None => {
                return Err(SessionError::InvalidArgument(format!(
                    "table {:?} is not in the collaboration",
                    table.name
                )));
            }
        }
        if table.name != plan.receiver().table {
            return Err(SessionError::InvalidArgument(format!(
                "the query uses table {:?} of member {member:?}, but the client brings {:?}",
                plan.receiver().table,
                table.name
            )));
        }
        let matcher = plan.matcher();
        if matcher.member != config.member {
            return Err(SessionError::InvalidArgument(format!(
                "table {:?} belongs to member {:?}; this server is member {:?}",
                matcher.table, matcher.member, config.member
            )));
        }
        let path = config.data.get(&matcher.table).cloned().ok_or_else(|| {
            SessionError::InvalidArgument(format!(
                "this server does not serve table {:?}",
                matcher.table
            ))
        })?;
        // Fewer declared rows than the threshold cannot bring enough identifiers: refused here,
        // before anything is charged or any of this server's data moves.
        if plan.protocol() != Protocol::List {
            plan.check_querier_identifiers(table.rows)
                .map_err(SessionError::Refused)?;
        }
        if table.rows > config.limits.max_rows_per_session {
            return Err(SessionError::ResourceExhausted(format!(
                "the client's table has {} rows; this server accepts at most {} per session",
                table.rows, config.limits.max_rows_per_session
            )));
        }
        let quota = self.member_rows(member);
        if table.rows > quota {
            return Err(SessionError::ResourceExhausted(format!(
                "the client's table has {} rows; member {member:?} may bring at most {quota} per \
                 session (max_rows_per_session in the collaboration file)",
                table.rows
            )));
        }
        Ok((plan, path))
    }

    /// The rows `member` may bring to one session: its quota in the collaboration file, within
    /// the server's own limit.
    fn member_rows(&self, member: &str) -> u64 {
        self.config
            .collaboration
            .member(member)
            .map_or(0, |m| m.max_rows_per_session())
            .min(self.config.limits.max_rows_per_session)
    }

    /// Reads the start, records the attempt and admits or refuses it.
    async fn open(
        &self,
        member: &str,
        inbound: &mut Streaming<RunSessionRequest>,
    ) -> Result<Admitted, Status> {
        let wait = self.config.limits.idle_timeout.min(FIRST_MESSAGE_TIMEOUT);
        let first = tokio::time::timeout(wait, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no session start within {}s",
                    wait.as_secs_f32()
                ))
            })?
            .map_err(|status| {
                if is_too_large(&status) {
                    too_large(&status)
                } else {
                    status
                }
            })?;
        let start = match first.and_then(|m| m.message) {
            Some(run_session_request::Message::Start(start)) => start,
            Some(run_session_request::Message::Psi(_)) => {
                return Err(Status::invalid_argument(
                    "a session must open with a start message",
                ));
            }
            None => {
                return Err(Status::cancelled(
                    "the client closed the session before starting",
                ));
            }
        };
        let session_id = new_session_id().map_err(|e| e.status())?;
        let receiver_rows = start.table.as_ref().map_or(0, |t| t.rows);
        let receiver_skipped = start.table.as_ref().map_or(0, |t| t.skipped_rows);
        {
            let (id, member, sql) = (session_id.clone(), member.to_owned(), start.sql.clone());
            let collaboration_id = self.config.collaboration.id().to_owned();
            state_call(&self.config.state, move |s| {
                s.begin(&Attempt {
                    session_id: &id,
                    collaboration_id: &collaboration_id,
                    member: &member,
                    sql: &sql,
                    receiver_rows,
                })?;
                s.record_receiver_skipped(&id, receiver_skipped)
            })
            .await
            .map_err(|e| e.status())?;
        }
        // The member's own quota is checked before the server's total, so that a refusal tells
        // a member about its own sessions only (see `slots`).
        let admitted = match self.admit(member, &start) {
            Ok((plan, path)) => self
                .sessions
                .acquire(member)
                .map_err(|refusal| SessionError::ResourceExhausted(refusal.to_string()))
                .map(|permit| (plan, path, permit)),
            Err(error) => Err(error),
        };
        // The charge comes last, once nothing else can refuse the session, and before the first
        // message that depends on this server's data: whatever becomes of the session, it
        // stays.
        let admitted = match admitted {
            Ok((plan, path, permit)) => self
                .charge(&session_id, &plan)
                .await
                .map(|standing| (plan, path, permit, standing)),
            Err(error) => Err(error),
        };
        match admitted {
            Ok((plan, matcher_path, permit, standing)) => {
                let (id, table) = (session_id.clone(), plan.matcher().table.clone());
                // The figure is informative: a failure to write it does not end the session.
                let _ = state_call(&self.config.state, move |s| {
                    s.record_matcher_skipped(&id, &table)
                })
                .await;
                Ok(Admitted {
                    session_id,
                    plan,
                    matcher_path,
                    receiver_rows,
                    permit,
                    standing,
                })
            }
            Err(error) => {
                self.finish(&session_id, &error, Completion::default())
                    .await;
                Err(error.status())
            }
        }
    }

    /// Charges the querier for `plan` (its budget and query limits), in the same transaction
    /// that checks them: refused with [`StateError::Exhausted`] when they do not allow it.
    async fn charge(&self, session_id: &str, plan: &Plan) -> Result<Standing, SessionError> {
        let (id, policy, member, cost) = (
            session_id.to_owned(),
            Arc::clone(&self.policy),
            plan.querier().to_owned(),
            plan.privacy().map(|p| p.epsilon),
        );
        state_call(&self.config.state, move |s| {
            s.charge(&id, &policy, &member, cost)
        })
        .await
    }

    /// Records how a session ended without a release and tells the hook.
    async fn finish(&self, session_id: &str, error: &SessionError, completion: Completion) {
        let (id, decision, reason) = (
            session_id.to_owned(),
            error.decision(),
            error.audit_reason(),
        );
        let recorded = state_call(&self.config.state, move |s| {
            s.finish(&id, decision, &reason, &completion)
        })
        .await;
        if let Err(e) = recorded {
            eprintln!("cleanroom serve: could not record the end of session {session_id}: {e}");
        }
        self.tell(session_id).await;
    }

    async fn tell(&self, session_id: &str) {
        let Some(hook) = self.config.on_session_end.clone() else {
            return;
        };
        let id = session_id.to_owned();
        if let Ok(Some(entry)) = state_call(&self.config.state, move |s| s.entry(&id)).await {
            hook(&entry);
        }
    }

    /// Runs an admitted session to its end, recording its outcome.
    async fn drive(
        self,
        admitted: Admitted,
        mut inbound: Streaming<RunSessionRequest>,
        outbound: mpsc::Sender<Result<RunSessionResponse, Status>>,
        started: Instant,
        deadline: (Instant, std::time::Duration),
    ) {
        let Admitted {
            session_id,
            plan,
            matcher_path,
            receiver_rows,
            permit,
            standing,
        } = admitted;
        let mut exchange = Exchange {
            outbound: &outbound,
            wrap: psi_response,
            deadline: Some(deadline),
            idle: Some(self.config.limits.idle_timeout),
            max_message: MAX_MESSAGE_BYTES,
            counters: Counters::default(),
            progress: None,
            min_rate: (self.config.limits.min_bytes_per_second > 0).then_some(MinRate {
                per_second: self.config.limits.min_bytes_per_second,
                window: self.config.limits.rate_window,
            }),
            abort_when_peer_gone: true,
        };
        let mut matcher_rows = 0;
        let result = self
            .run(
                &session_id,
                &plan,
                matcher_path,
                receiver_rows,
                &mut inbound,
                &mut exchange,
                &mut matcher_rows,
                (started, &standing),
            )
            .await;
        let counters = exchange.counters;
        drop(permit);
        match result {
            Ok(()) => self.tell(&session_id).await,
            Err(error) => {
                let completion = Completion {
                    matcher_rows,
                    messages_received: counters.messages_received,
                    messages_sent: counters.messages_sent,
                    bytes_received: counters.bytes_received,
                    bytes_sent: counters.bytes_sent,
                    ..Completion::default()
                };
                self.finish(&session_id, &error, completion).await;
                // End the call with the error's status (a stream that just ends would read as
                // OK). The client may be gone or not reading; then there is nobody to tell.
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    outbound.send(Err(error.status())),
                )
                .await;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        session_id: &str,
        plan: &Plan,
        matcher_path: TableSpec,
        receiver_rows: u64,
        inbound: &mut Streaming<RunSessionRequest>,
        exchange: &mut Exchange<'_, Result<RunSessionResponse, Status>>,
        matcher_rows: &mut u64,
        (started, standing): (Instant, &Standing),
    ) -> Result<(), SessionError> {
        let accepted = SessionAccepted {
            session_id: session_id.to_owned(),
            matcher_member: plan.matcher().member.clone(),
            matcher_table: plan.matcher().table.clone(),
            min_release: plan.min_release(),
            value_columns: plan.receiver().value_columns.len() as u32,
            privacy: crate::privacy::privacy_info(plan),
        };
        exchange
            .send_item(Ok(RunSessionResponse {
                message: Some(run_session_response::Message::Accepted(accepted)),
            }))
            .await?;

        let limits = self.psi_limits(receiver_rows);
        let Release {
            released,
            suppressed,
            bounded,
            messages,
        } = if plan.protocol() == Protocol::List {
            self.list_protocol(plan, matcher_path, limits, inbound, exchange, matcher_rows)
                .await?
        } else {
            self.aggregate_protocol(plan, matcher_path, limits, inbound, exchange, matcher_rows)
                .await?
        };
        let counters = exchange.counters;
        let completion = Completion {
            released_rows: released,
            suppressed_rows: suppressed,
            matcher_rows: *matcher_rows,
            messages_received: counters.messages_received,
            messages_sent: counters.messages_sent + messages.len() as u64,
            bytes_received: counters.bytes_received,
            bytes_sent: counters.bytes_sent + messages.iter().map(|m| m.len() as u64).sum::<u64>(),
            bounded_identifiers: bounded.0,
            bounded_disclosed: bounded.1,
        };
        // Record the release durably (the charge was made at admission), then send it.
        let id = session_id.to_owned();
        let recorded = within(
            exchange.deadline,
            state_call(&self.config.state, move |s| s.release(&id, &completion)),
        )
        .await??;
        if !recorded {
            return Err(SessionError::Internal(
                "the session's audit entry was already complete".to_owned(),
            ));
        }
        for message in messages {
            exchange.send_message(message).await?;
        }
        let counters = exchange.counters;
        let summary = SessionSummary {
            session_id: session_id.to_owned(),
            released_rows: released,
            suppressed_rows: suppressed,
            stats: Some(SessionStats {
                receiver_rows,
                messages_sent: counters.messages_sent,
                bytes_sent: counters.bytes_sent,
                messages_received: counters.messages_received,
                bytes_received: counters.bytes_received,
                elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            }),
            standing: Some(crate::privacy::standing_proto(standing)),
        };
        exchange
            .send_item(Ok(RunSessionResponse {
                message: Some(run_session_response::Message::Summary(summary)),
            }))
            .await?;
        Ok(())
    }

    /// The bounds the psi role enforces on the client's announcements: at most
    /// `max_rows_per_session` identifiers, and no more than the `receiver_rows` the client
    /// declared in its start (each identifier it sends comes from one of those rows).
    fn psi_limits(&self, receiver_rows: u64) -> cleanroom_psi::Limits {
        cleanroom_psi::Limits {
            max_set_size: self.config.limits.max_rows_per_session,
            declared_set_size: Some(receiver_rows),
            ..cleanroom_psi::Limits::default()
        }
    }

    /// Plays the psi matcher until every message of the receiver arrived, then decides the
    /// release: returns the released and suppressed group counts and the encoded release
    /// messages (not sent yet).
    async fn aggregate_protocol(
        &self,
        plan: &Plan,
        matcher_path: TableSpec,
        limits: cleanroom_psi::Limits,
        inbound: &mut Streaming<RunSessionRequest>,
        exchange: &mut Exchange<'_, Result<RunSessionResponse, Status>>,
        matcher_rows: &mut u64,
    ) -> Result<Release, SessionError> {
        // Reading the table and shuffling it into a matcher are heavy: off the runtime.
        let table_plan = plan.clone();
        let table_name = plan.matcher().table.clone();
        let (_, built) = exchange
            .blocking((), move |_| {
                let table = data::matcher_table(&table_plan, &matcher_path)?;
                let rows = table.stats().rows;
                let mut matcher = Matcher::new(&table_plan.domain(), table, limits)
                    .require_receiver_identifiers(table_plan.min_release());
                if table_plan.grouped_by() != Some(Role::Receiver) {
                    matcher = matcher.expect_receiver_groups(1);
                }
                if let (Some(bounds), Some(privacy)) =
                    (table_plan.noise_bounds(), table_plan.privacy())
                {
                    matcher = matcher.with_noise(bounds).pad_groups(|| privacy.dummies());
                    if let Some(ranges) = privacy.proven_ranges() {
                        matcher = matcher.require_range_proofs(value_ranges(&ranges));
                    }
                }
                Ok::<_, DataFileError>((rows, matcher))
            })
            .await?;
        let (rows, matcher) = built.map_err(|source| SessionError::Data {
            table: table_name,
            source: Box::new(source),
        })?;
        *matcher_rows = rows;
        let role = matcher;

        let mut psi_in = psi_stream(inbound);
        let role = exchange
            .run(role, &mut psi_in)
            .await
            .map_err(|e| refuse_tiny_querier_set(plan, e))?;

        // Decide (with noise, for a private plan), then record the decision durably, then
        // release.
        let release_plan = plan.clone();
        let (_, released) = exchange
            .blocking(role, move |role| {
                let mut disclosed = 0;
                let summary = role.release_with(
                    |group| release_plan.decide(group),
                    |bounded| {
                        disclosed = release_plan.disclose_bounded(bounded);
                        disclosed
                    },
                )?;
                let mut messages = Vec::new();
                while let Some(message) = role.poll_message() {
                    messages.push(message.encode());
                }
                Ok::<_, cleanroom_psi::ProtocolError>(Release {
                    released: summary.released,
                    suppressed: summary.suppressed,
                    bounded: (summary.bounded, disclosed),
                    messages,
                })
            })
            .await?;
        released.map_err(|e| SessionError::Internal(e.to_string()))
    }

    /// Plays the psi list provider until every point of the querier arrived; returns the
    /// withheld evaluations (the release, not sent yet). The server cannot know how many rows
    /// the querier lists: both counts are 0.
    async fn list_protocol(
        &self,
        plan: &Plan,
        matcher_path: TableSpec,
        limits: cleanroom_psi::Limits,
        inbound: &mut Streaming<RunSessionRequest>,
        exchange: &mut Exchange<'_, Result<RunSessionResponse, Status>>,
        matcher_rows: &mut u64,
    ) -> Result<Release, SessionError> {
        // Reading the table and sealing it into a provider are heavy: off the runtime.
        let table_plan = plan.clone();
        let table_name = plan.matcher().table.clone();
        let (_, built) = exchange
            .blocking((), move |_| {
                let table = data::list_provider_table(&table_plan, &matcher_path)?;
                let rows = table.stats().rows;
                let provider = ListProvider::new(&table_plan.domain(), table, limits);
                Ok::<_, DataFileError>((rows, provider))
            })
            .await?;
        let (rows, provider) = built.map_err(|source| SessionError::Data {
            table: table_name,
            source: Box::new(source),
        })?;
        *matcher_rows = rows;
        let mut psi_in = psi_stream(inbound);
        let mut role = exchange
            .run(ListProviderRole::new(provider), &mut psi_in)
            .await?;
        Ok(Release {
            released: 0,
            suppressed: 0,
            bounded: (0, 0),
            messages: role.release(),
        })
    }
}

/// The psi ranges of a plan's proven `sum_bounds` (validated when the collaboration loaded).
pub(crate) fn value_ranges(bounds: &[(u64, u64)]) -> Vec<ValueRange> {
    bounds
        .iter()
        .map(|&(lo, hi)| ValueRange { lo, hi })
        .collect()
}

/// The querier's set is smaller than the threshold: a refusal with the rules' reason, rather
/// than a protocol failure.
fn refuse_tiny_querier_set(plan: &Plan, error: ExchangeError) -> SessionError {
    if let ExchangeError::Peer(PeerError::Protocol(ProtocolError::ReceiverSetTooSmall {
        identifiers,
        ..
    })) = &error
        && let Err(refusal) = plan.check_querier_identifiers(*identifiers)
    {
        return SessionError::Refused(refusal);
    }
    error.into()
}

/// The protocol messages of a client's stream; anything else after the start is an error.
fn psi_stream(
    inbound: &mut Streaming<RunSessionRequest>,
) -> impl tokio_stream::Stream<Item = Result<Vec<u8>, ExchangeError>> + Unpin + '_ {
    inbound.map(|item| match item {
        Ok(RunSessionRequest {
            message: Some(run_session_request::Message::Psi(PsiMessage { payload })),
        }) => Ok(payload),
        Ok(_) => Err(ExchangeError::Unexpected(
            "only protocol messages may follow the session start",
        )),
        Err(status) => Err(ExchangeError::Transport(status)),
    })
}

fn psi_response(payload: Vec<u8>) -> Result<RunSessionResponse, Status> {
    Ok(RunSessionResponse {
        message: Some(run_session_response::Message::Psi(PsiMessage { payload })),
    })
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
        let started = Instant::now();
        let timeout = self.config.limits.session_timeout;
        let deadline = (started + timeout, timeout);
        let mut inbound = request.into_inner();
        let admitted = self.open(&member, &mut inbound).await?;
        let (outbound, responses) = mpsc::channel(4);
        tokio::spawn(
            self.clone()
                .drive(admitted, inbound, outbound, started, deadline),
        );
        Ok(Response::new(ReceiverStream::new(responses)))
    }

    async fn get_server_info(
        &self,
        request: Request<GetServerInfoRequest>,
    ) -> Result<Response<GetServerInfoResponse>, Status> {
        let member = authenticated(&request)?;
        let config = &self.config;
        let limits = &config.limits;
        Ok(Response::new(GetServerInfoResponse {
            collaboration_id: config.collaboration.id().to_owned(),
            collaboration_name: config.collaboration.name().to_owned(),
            member: config.member.clone(),
            tables: config.data.keys().cloned().collect(),
            limits: Some(proto::ServerLimits {
                max_rows_per_session: self.member_rows(&member),
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
            collaboration_id: self.config.collaboration.id().to_owned(),
            member,
            before,
            max_entries: match request.limit {
                0 => AUDIT_PAGE_DEFAULT_ENTRIES,
                n => n.min(AUDIT_PAGE_MAX_ENTRIES),
            },
            max_bytes: AUDIT_PAGE_MAX_BYTES,
        };
        // The database lock is held only while this one page is read, never while it is sent.
        let page = state_call(&self.config.state, move |s| s.page(&query))
            .await
            .map_err(|e| e.status())?;
        Ok(Response::new(ListAuditEntriesResponse {
            entries: page.entries.iter().map(AuditEntry::to_proto).collect(),
            next_page_token: page.next.map(AuditCursor::token).unwrap_or_default(),
        }))
    }
}
