//! The client side: `cleanroom query`, run by the querying member next to its own data.
//!
//! The client plans the SQL locally first (fast feedback; the server checks again), reads its
//! own table with the plan's filters, opens a session, plays the psi receiver (for a list
//! query, the list querier), and turns the released outcome into the result table. A table
//! too large for memory runs as a job of buckets ([`job`]).

mod chain;
mod connect;
mod error;
mod job;
mod list_job;

pub use chain::{ChainProvider, run_chain_query};
use connect::{CONNECTION_DROPPED, connect_channel, with_certificate_hint};
pub use connect::{ServingStatus, check_health};
pub use error::{ClientError, RemoteError};

use cleanroom_data::TableSpec;
use std::collections::BTreeMap;
use std::time::Duration;

use cleanroom_psi::elgamal::ValueKey;
use cleanroom_psi::sealed::OpeningKey;
use cleanroom_psi::{
    ListQuerier, ListQuerierTable, Receiver, ReceiverTable, ResultKeys, ResultOpener,
};
use cleanroom_rules::{Collaboration, Plan, Protocol, QuerierRows, ResultTable};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::auth::{AttachToken, BearerToken};
use crate::data::{self, DataFileError};
use crate::exchange::{Counters, Exchange, ExchangeError, Role};
use crate::limits::{MAX_GRPC_MESSAGE_BYTES, MAX_MESSAGE_BYTES};
use crate::proto::clean_room_service_client::CleanRoomServiceClient;
use crate::proto::{
    self, FetchResultRequest, FetchResultResponse, GetServerInfoRequest, GetServerInfoResponse,
    ListAuditEntriesRequest, PsiMessage, RunSessionRequest, SealedResultKeys, SessionAccepted,
    SessionStart, SessionSummary, TableDescriptor, fetch_result_response, run_session_request,
    run_session_response,
};
use crate::session::{self, ClientRole, check_accepted, receiver_for, role_for};

/// How to reach a server.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `https://host:port` (or `http://` on loopback, or with `insecure`).
    pub server: String,
    /// The CA certificate (PEM) to trust for `https://`; `None` trusts the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Allow `http://` to a non-loopback host.
    pub insecure: bool,
    /// The member's client certificate and key, presented over TLS (required by a server
    /// whose collaboration pins the member's certificate); `None` presents none.
    pub identity: Option<crate::tls::TlsIdentity>,
    /// The member's bearer token.
    pub token: BearerToken,
    /// How long to wait for the connection.
    pub connect_timeout: Duration,
    /// How long a whole query may take; `None` for no limit of the client's own (the server
    /// still applies its limits).
    pub timeout: Option<Duration>,
    /// How long a session may go without a message in either direction (not counting this
    /// client's own computation) before the client gives up: a server that accepts a session
    /// and then goes silent does not hold the client forever. `None` waits as long as `timeout`
    /// allows.
    pub idle_timeout: Option<Duration>,
    /// The most rows of this member's table held in memory at once: a table with more is
    /// read into bucket files and the session asks the server for a job of buckets of about
    /// this many rows each (PROTOCOL.md 3.6). Default: 2^18, as the server's.
    pub bucket_rows: u64,
    /// Where a job's bucket files go (a fresh directory inside it, removed at the end), and a
    /// named job's value key file; `None`: under the system's temporary directory.
    pub work_dir: Option<std::path::PathBuf>,
    /// A name for the query, so that running it again under the same name resumes it where
    /// it stopped (PROTOCOL.md 3.6, step 6): 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
    /// `None`: a query that ends with its connection.
    pub job_id: Option<String>,
}

impl ClientConfig {
    /// A configuration with a 10 s connect timeout, a 10 min idle timeout (the server's default)
    /// and no overall timeout.
    pub fn new(server: impl Into<String>, token: BearerToken) -> ClientConfig {
        ClientConfig {
            server: server.into(),
            ca_pem: None,
            insecure: false,
            identity: None,
            token,
            connect_timeout: Duration::from_secs(10),
            timeout: None,
            idle_timeout: Some(Duration::from_secs(600)),
            bucket_rows: 1 << 18,
            work_dir: None,
            job_id: None,
        }
    }
}

/// One query: who asks what, with which data.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// The querying member's copy of the collaboration.
    pub collaboration: &'a Collaboration,
    /// The querying member.
    pub member: &'a str,
    /// The SQL.
    pub sql: &'a str,
    /// The CSV file of each of the member's tables.
    pub data: &'a BTreeMap<String, TableSpec>,
    /// The members the result goes to, each once (empty: the querying member). A receiver
    /// other than the querier fetches it from the server (`FetchResult`); when the querier is
    /// not among them it learns nothing of the result.
    pub receivers: &'a [String],
}

/// What a query's progress looks like, for a progress display.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// Reading the member's own table.
    ReadingData {
        /// The table.
        table: &'a str,
    },
    /// The server accepted the session.
    Accepted {
        /// The server's session identifier.
        session_id: &'a str,
        /// Rows of the member's table taking part.
        rows: u64,
    },
    /// Buckets of a job done so far: reported before the first bucket (`done` = 0) and after
    /// each (`done` = `buckets` after the last).
    Bucket {
        /// Buckets matched.
        done: u32,
        /// How many the job has.
        buckets: u32,
        /// The member's rows in the buckets matched.
        rows_done: u64,
        /// The member's rows in all the buckets: its kept rows with an identifier.
        rows: u64,
    },
    /// Protocol messages moved.
    Moved(&'a Counters),
}

/// A progress callback.
pub type ProgressHook<'a> = &'a (dyn Fn(Progress<'_>) + Send + Sync);

/// A released result and what its session moved. For a differentially private query,
/// `accepted.privacy` describes the noise of each output column and `summary.standing` what is
/// left of the member's budget.
#[derive(Debug, Clone)]
pub struct QueryOutcome {
    /// The released result, in the `SELECT`'s column order; without rows when this member is
    /// not a receiver of its query.
    pub result: ResultTable,
    /// Whether this member received the result; `false`: it went only to the other receivers
    /// (`summary.delivered_to`).
    pub received: bool,
    /// The protocol that ran (for a list, the server's summary counts no rows: it cannot
    /// know how many rows the querier listed).
    pub protocol: Protocol,
    /// The server's acceptance.
    pub accepted: SessionAccepted,
    /// The server's summary (its counts of the session).
    pub summary: SessionSummary,
    /// What this client sent and received.
    pub counters: Counters,
    /// Rows of the member's table that took part.
    pub rows: u64,
    /// For a list: the provider's payloads for this member's identifiers that did not open
    /// (altered or forged), counted as not matched.
    pub unopened: u64,
    /// Of those, rows never matched: NULL (in any declared spelling) or empty identifier.
    pub skipped_rows: u64,
    /// For a private query grouped by this member's columns: how many of its identifiers were
    /// in more groups than `max_groups_per_identifier` and were kept in that many, chosen at
    /// random by this client (exact, this member's own data).
    pub own_over_bound: Option<u64>,
    /// For a join across three or more members, every provider's session, in chain order;
    /// `accepted` and `summary` are then the matcher's. Empty for two parties.
    pub chain: Vec<ChainProvider>,
}

/// A result fetched as a receiver of a query this member did not run.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchedResult {
    /// The session it came from.
    pub session_id: String,
    /// The member that ran the query.
    pub querier: String,
    /// The query.
    pub sql: String,
    /// When the server recorded the release (RFC 3339, UTC).
    pub released_at: String,
    /// The released rows, in the `SELECT`'s column order.
    pub result: ResultTable,
}

/// A connection to one server.
#[derive(Debug, Clone)]
pub struct Client {
    inner: CleanRoomServiceClient<InterceptedService<Channel, AttachToken>>,
    /// The server URL, for messages.
    server: String,
    /// Whether this client presents a certificate (for the hint when a TLS server ends it).
    presents_certificate: bool,
    timeout: Option<Duration>,
    idle: Option<Duration>,
    bucket_rows: u64,
    work_dir: Option<std::path::PathBuf>,
    job_id: Option<String>,
}

impl Client {
    /// Connects to the server (TLS unless plaintext is allowed for the URL).
    pub async fn connect(config: &ClientConfig) -> Result<Client, ClientError> {
        let channel = connect_channel(
            &config.server,
            config.ca_pem.as_deref(),
            config.insecure,
            config.identity.as_ref(),
            config.connect_timeout,
        )
        .await
        .map_err(|e| with_certificate_hint(e, &config.server, config.identity.is_some()))?;
        let inner =
            CleanRoomServiceClient::with_interceptor(channel, AttachToken::new(&config.token))
                .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
        Ok(Client {
            inner,
            server: config.server.clone(),
            presents_certificate: config.identity.is_some(),
            timeout: config.timeout,
            idle: config.idle_timeout,
            bucket_rows: config.bucket_rows.max(1),
            work_dir: config.work_dir.clone(),
            job_id: config.job_id.clone(),
        })
    }

    /// The result of released session `session_id` kept for `member` as a receiver of a query
    /// it did not run: fetched with this client's token (`FetchResult`), its keys opened with
    /// `key` (the member's opening key, whose public half is its `result_key`), checked as the
    /// querier's receiver would, and made into rows under this member's own `collaboration`.
    pub async fn fetch_result(
        &mut self,
        collaboration: &Collaboration,
        member: &str,
        session_id: &str,
        key: &OpeningKey,
    ) -> Result<FetchedResult, ClientError> {
        let request = FetchResultRequest {
            session_id: session_id.to_owned(),
        };
        let mut stream = match self.inner.fetch_result(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(self.explained(status.into())),
        };
        let header = match stream.message().await? {
            Some(FetchResultResponse {
                message: Some(fetch_result_response::Message::Header(header)),
            }) => header,
            _ => {
                return Err(ClientError::Session(
                    "a fetched result must start with its header",
                ));
            }
        };
        if header.collaboration_id != collaboration.id() || header.session_id != session_id {
            return Err(ClientError::Session(
                "the fetched result is of another collaboration or session",
            ));
        }
        let mut messages = Vec::new();
        while let Some(response) = stream.message().await? {
            match response.message {
                Some(fetch_result_response::Message::Psi(PsiMessage { payload }))
                    if messages.len() < header.messages as usize =>
                {
                    messages.push(payload)
                }
                _ => return Err(ClientError::Session("a fetched result has extra messages")),
            }
        }
        if messages.len() != header.messages as usize {
            return Err(ClientError::Session("a fetched result ended early"));
        }
        let result = session::open_delivered(
            collaboration,
            member,
            &header.querier,
            &header.sql,
            &header.sealed_keys,
            &messages,
            key,
        )?;
        Ok(FetchedResult {
            session_id: header.session_id,
            querier: header.querier,
            sql: header.sql,
            released_at: header.released_at,
            result,
        })
    }

    /// The server's description.
    pub async fn server_info(&mut self) -> Result<GetServerInfoResponse, ClientError> {
        match self.inner.get_server_info(GetServerInfoRequest {}).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(self.explained(status.into())),
        }
    }

    /// `error`, or, when it is the connection failing under a call rather than an answer of
    /// the server, a [`ClientError::Transport`] that says so (with the likely fix: a scheme
    /// mismatch, or a client certificate the server wants).
    fn explained(&self, error: ClientError) -> ClientError {
        let error = match error {
            ClientError::Remote(remote)
                if remote.reasons.is_empty()
                    && matches!(remote.code, Code::Unknown | Code::Unavailable)
                    && crate::transport::is_transport_failure(&remote.message) =>
            {
                ClientError::transport(&self.server, &remote.message)
            }
            // What tonic reports when the connection is dropped under a call (no status from
            // the server), e.g. a TLS server that closed a plaintext connection, or one that
            // refused this client's certificate.
            ClientError::Remote(remote)
                if remote.reasons.is_empty()
                    && remote.code == Code::Cancelled
                    && remote.message == CONNECTION_DROPPED =>
            {
                ClientError::transport(
                    &self.server,
                    &format!("connection closed under the call ({CONNECTION_DROPPED})"),
                )
            }
            other => other,
        };
        with_certificate_hint(error, &self.server, self.presents_certificate)
    }

    /// The calling member's newest `limit` audit entries on the server, newest first, read a
    /// page at a time.
    pub async fn audit_entries(
        &mut self,
        limit: u32,
    ) -> Result<Vec<proto::AuditEntry>, ClientError> {
        let mut entries = Vec::new();
        let mut page_token = String::new();
        while entries.len() < limit as usize {
            let page = self
                .inner
                .list_audit_entries(ListAuditEntriesRequest {
                    limit: limit - entries.len() as u32,
                    page_token,
                })
                .await
                .map_err(|status| self.explained(status.into()))?
                .into_inner();
            entries.extend(page.entries);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        entries.truncate(limit as usize);
        Ok(entries)
    }

    /// Runs one query to its released result.
    pub async fn run_query(
        &mut self,
        query: Query<'_>,
        progress: Option<ProgressHook<'_>>,
    ) -> Result<QueryOutcome, ClientError> {
        let job = self.key_file(&query);
        let outcome = self.run_query_unexplained(query, progress).await;
        outcome.map_err(|error| match (error, job) {
            // The job ended on the server (released, cancelled past its retention, failed): it
            // will never resume, so its key and bucket files here open and serve nothing.
            (ClientError::Remote(mut remote), Some(job))
                if remote.reasons.iter().any(|r| r.code == "job_ended") =>
            {
                if job.forget(self.work_dir.as_deref()) {
                    remote
                        .message
                        .push_str(" (this client removed what it kept for the job)");
                }
                ClientError::Remote(remote)
            }
            (error, _) => self.explained(error),
        })
    }

    /// Where `query`'s value key is kept when it is a named job.
    fn key_file(&self, query: &Query<'_>) -> Option<job::KeyFile> {
        self.job_id.as_deref().map(|id| {
            job::KeyFile::new(
                self.work_dir.as_deref(),
                (query.collaboration.id(), query.member, &self.server),
                id,
            )
        })
    }

    async fn run_query_unexplained(
        &mut self,
        query: Query<'_>,
        progress: Option<ProgressHook<'_>>,
    ) -> Result<QueryOutcome, ClientError> {
        let report = |p: Progress<'_>| {
            if let Some(hook) = progress {
                hook(p);
            }
        };
        let plan = query
            .collaboration
            .plan_for(query.member, query.sql, query.receivers)
            .map_err(ClientError::Refused)?;
        let receives =
            query.receivers.is_empty() || query.receivers.iter().any(|r| r == query.member);
        let sealing = (
            query.collaboration,
            query.member,
            query.sql,
            query.receivers,
        );
        // The terms as planned, before the data refines the plan (a Parquet column's scale).
        let agreement = session::agreement(query.collaboration, &plan);
        let own = plan.receiver().table.clone();
        let path = query
            .data
            .get(&own)
            .cloned()
            .ok_or_else(|| ClientError::MissingData { table: own.clone() })?;

        report(Progress::ReadingData { table: &own });
        let deadline = self.timeout.map(|t| (Instant::now() + t, t));
        // Reading the table and shuffling it into a role are heavy: off the runtime.
        let others = query.receivers.iter().any(|r| r != query.member);
        let memory_rows = self.bucket_rows;
        let (columns, rows, own_over_bound, prepared, plan, result_keys) = {
            let mut plan = plan;
            let (collaboration, member, sql, receivers) = (
                sealing.0.clone(),
                sealing.1.to_owned(),
                sealing.2.to_owned(),
                sealing.3.to_vec(),
            );
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                let mut result_keys = Vec::new();
                let columns = data::header(&path)?;
                let limits = cleanroom_psi::Limits::default();
                let (rows, over, prepared) = match role_for(&plan, session::Client) {
                    ClientRole::ListQuerier => {
                        let (table, kept) = data::list_querier_table(&plan, &path)?;
                        (table.stats(), None, Prepared::List(table, kept))
                    }
                    ClientRole::Receiver => {
                        let empty =
                            plan.empty_receiver_table()
                                .map_err(|source| DataFileError::Rows {
                                    location: path.to_string(),
                                    source: Box::new(source),
                                })?;
                        let mut first = crate::job::FirstPass::new(
                            empty,
                            plan.receiver().normalization,
                            memory_rows,
                        );
                        data::receiver_rows(&mut plan, &path, &mut first)?;
                        let (table, rows) = first.finish();
                        match table {
                            // More rows than memory holds: a job, its files written once the
                            // server's terms arrive.
                            None => (rows, None, Prepared::Large),
                            Some(mut table) => {
                                // The server refuses a querier set under the threshold; say
                                // so before connecting.
                                plan.check_querier_identifiers(table.distinct_identifiers())
                                    .map_err(ClientError::Refused)?;
                                // Under privacy each identifier counts in at most K of this
                                // member's groups: keep it in K of them, chosen at random here
                                // (the server enforces the same bound whatever it is sent),
                                // and say how many were cut.
                                let over = plan
                                    .privacy()
                                    .filter(|_| {
                                        plan.grouped_by() == Some(cleanroom_rules::Role::Receiver)
                                    })
                                    .map(|p| table.bound_groups(p.max_groups));
                                if !others {
                                    (rows, over, Prepared::Table(table))
                                } else {
                                    let mut receiver = receiver_for(&plan, table, limits)
                                        .map_err(ClientError::Internal)?;
                                    // Receivers other than this member get the keys to the
                                    // result, sealed to each; when this member is not a
                                    // receiver it sees no result.
                                    result_keys = session::seal_result_keys(
                                        &collaboration,
                                        &member,
                                        &sql,
                                        &plan,
                                        &receivers,
                                        &receiver.result_keys(),
                                    )
                                    .map_err(ClientError::Internal)?;
                                    if !receives {
                                        receiver = receiver.results_elsewhere();
                                    }
                                    (rows, over, Prepared::Receiver(receiver))
                                }
                            }
                        }
                    }
                };
                Ok::<_, ClientError>((columns, rows, over, prepared, plan, result_keys))
            })
            .await
            .map_err(|e| ClientError::Internal(e.to_string()))??
        };
        let (rows, skipped_rows) = (rows.rows, rows.skipped_empty);
        let quota = query
            .collaboration
            .member(query.member)
            .map_or(u64::MAX, cleanroom_rules::Member::max_rows_per_session);
        if rows > quota {
            return Err(ClientError::OverRowQuota {
                member: query.member.to_owned(),
                rows,
                quota,
            });
        }

        let (outbound, requests) = mpsc::channel(4);
        let start = RunSessionRequest {
            message: Some(run_session_request::Message::Start(SessionStart {
                collaboration_id: query.collaboration.id().to_owned(),
                member: query.member.to_owned(),
                sql: query.sql.to_owned(),
                table: Some(TableDescriptor {
                    name: own.clone(),
                    columns,
                    rows,
                    skipped_rows,
                }),
                agreement: Some(agreement.clone()),
                receivers: query.receivers.to_vec(),
                result_keys,
                buckets: match prepared {
                    Prepared::Large | Prepared::List(..) => {
                        crate::job::buckets_for(rows, self.bucket_rows)
                    }
                    _ => 1,
                },
                job_id: self.job_id.clone().unwrap_or_default(),
                chain_context: Vec::new(),
            })),
        };
        outbound
            .send(start)
            .await
            .map_err(|_| ClientError::Internal("request stream closed".to_owned()))?;
        let call = self.inner.run_session(ReceiverStream::new(requests));
        let idle = self.idle;
        let mut inbound = within_idle(deadline, idle, call).await??.into_inner();
        let first = within_idle(deadline, idle, inbound.message()).await??;
        let accepted = match first.and_then(|m| m.message) {
            Some(run_session_response::Message::Accepted(accepted)) => accepted,
            Some(_) => {
                return Err(ClientError::Session(
                    "the session did not open with an acceptance",
                ));
            }
            None => {
                return Err(ClientError::Session(
                    "the server ended the session before accepting it",
                ));
            }
        };
        check_accepted(&plan, &agreement, &accepted).map_err(ClientError::PlanMismatch)?;
        report(Progress::Accepted {
            session_id: &accepted.session_id,
            rows,
        });

        let moved = |counters: &Counters| report(Progress::Moved(counters));
        let mut exchange = Exchange {
            outbound: &outbound,
            wrap: psi_request,
            deadline,
            idle,
            max_message: MAX_MESSAGE_BYTES,
            counters: Counters::default(),
            progress: Some(&moved),
            // The server is the one that must not be held by a trickling peer; the client has
            // the session timeout and can always hang up.
            min_rate: None,
            abort_when_peer_gone: false,
        };
        let job = crate::job::JobTerms::from_proto(accepted.job.as_ref())
            .map_err(ClientError::PlanMismatch)?;
        // A named job's value key outlives this process, until the job's release arrives.
        let key_file = self.key_file(&query);
        // The other receivers' keys, when the start left them out (a job's group sizes are
        // known once its table is split).
        let seal = |plan: &Plan, keys: &ResultKeys| {
            session::seal_result_keys(
                query.collaboration,
                query.member,
                query.sql,
                plan,
                query.receivers,
                keys,
            )
        };
        let mut plan = plan;
        let mut own_over_bound = own_over_bound;
        let limits = cleanroom_psi::Limits::default();
        let finished = match (prepared, job) {
            (Prepared::List(table, kept), None) => {
                let (domain, columns) = (plan.domain(), plan.matcher().list_columns.len());
                let (_, role) = exchange
                    .blocking(Some(table), move |table| {
                        let table = table.take().expect("the table is taken once");
                        ListQuerier::new(&domain, table, columns, limits)
                    })
                    .await?;
                Side::List(run_role(&mut exchange, &mut inbound, role).await?, kept)
            }
            (Prepared::List(table, kept), Some(job)) => {
                let dirs = (self.work_dir.as_deref(), key_file.as_ref());
                let parked = list_job::run(
                    &mut exchange,
                    &mut inbound,
                    &plan,
                    &job,
                    table,
                    dirs,
                    &report,
                )
                .await?;
                Side::ListJob(parked, kept)
            }
            (Prepared::Receiver(role), None) => {
                Side::Aggregate(run_role(&mut exchange, &mut inbound, role).await?)
            }
            (Prepared::Receiver(_), Some(_)) => {
                return Err(ClientError::PlanMismatch(
                    "the server made a job of buckets of a session that runs as one (a result \
                     whose keys for other receivers came with the start)"
                        .to_owned(),
                ));
            }
            (Prepared::Table(table), None) => {
                let role = receiver_for(&plan, table, limits).map_err(ClientError::Internal)?;
                Side::Aggregate(run_role(&mut exchange, &mut inbound, role).await?)
            }
            (Prepared::Large, None) => {
                // The server would not split (its own table is small): the whole table, in
                // memory after all.
                let (table, over) = whole_table(&mut plan, &path).await?;
                own_over_bound = over;
                let mut role = receiver_for(&plan, table, limits).map_err(ClientError::Internal)?;
                // The other receivers' keys, left out of the start, go first.
                if others {
                    let sealed = seal(&plan, &role.result_keys()).map_err(ClientError::Internal)?;
                    exchange.send_item(later_keys(sealed)).await?;
                    if !receives {
                        role = role.results_elsewhere();
                    }
                }
                Side::Aggregate(run_role(&mut exchange, &mut inbound, role).await?)
            }
            (prepared, Some(job)) => {
                let (work, buckets) = match prepared {
                    Prepared::Table(table) => {
                        let parts = table.into_buckets(&job.key, &plan.domain(), job.buckets);
                        (None, crate::job::ClientBuckets::InMemory(parts.into_iter()))
                    }
                    _ => {
                        let (work, buckets) = job::partition(
                            &mut plan,
                            &path,
                            &job,
                            (self.work_dir.as_deref(), key_file.as_ref()),
                        )
                        .await?;
                        (Some(work), buckets)
                    }
                };
                let columns = plan.receiver().value_columns.len();
                let value_key = match (&key_file, columns) {
                    (_, 0) => None,
                    (Some(file), columns) => Some(file.value_key(columns, job.done)?),
                    (None, columns) => Some(ValueKey::generate(columns)),
                };
                let (opener, over) = job::run(
                    &mut exchange,
                    &mut inbound,
                    &plan,
                    (&job, value_key),
                    buckets,
                    (others.then_some(&seal), receives),
                    &report,
                )
                .await?;
                drop(work);
                // A table split in memory was bounded whole, before the session (its parts
                // have nothing left to cut); one read into bucket files, bucket by bucket.
                own_over_bound = own_over_bound.or(over);
                match opener {
                    Some(opener) => Side::Job(opener),
                    None => Side::Elsewhere,
                }
            }
        };
        let counters = exchange.counters;
        drop(outbound);

        let last = within_idle(deadline, idle, inbound.message()).await??;
        let summary = match last.and_then(|m| m.message) {
            Some(run_session_response::Message::Summary(summary)) => summary,
            _ => {
                return Err(ClientError::Session(
                    "the session did not end with a summary",
                ));
            }
        };
        // The job is released: it will never resume, and its key opens nothing more.
        if let Some(file) = &key_file {
            file.remove();
        }
        // The call must end cleanly after the summary.
        if within_idle(deadline, idle, inbound.message())
            .await??
            .is_some()
        {
            return Err(ClientError::Session("messages after the summary"));
        }
        // The session is over on the wire: only now are sums decrypted and payloads opened, so
        // whether they decrypt or open (which depends on this member's data) never shows to
        // the server.
        let mut named: Vec<&String> = query
            .receivers
            .iter()
            .filter(|r| *r != query.member)
            .collect();
        named.sort();
        if summary.delivered_to.iter().collect::<Vec<_>>() != named {
            return Err(ClientError::Session(
                "the server kept the result for other receivers than this query named",
            ));
        }
        let (result, unopened) = match finished {
            // The result went to the other receivers only: nothing to open here.
            Side::Elsewhere => (plan.result(&cleanroom_psi::ReceiverOutcome::default())?, 0),
            Side::Aggregate(_) if !receives => {
                (plan.result(&cleanroom_psi::ReceiverOutcome::default())?, 0)
            }
            Side::Aggregate(role) => {
                let outcome = role.open().map_err(ClientError::Opened)?;
                (plan.result(&outcome)?, 0)
            }
            Side::Job(opener) => {
                let outcome = opener.open().map_err(ClientError::Opened)?;
                (plan.result(&outcome)?, 0)
            }
            Side::List(role, kept) => {
                let outcome = role.open().ok_or(ClientError::Session(
                    "the protocol ended without the provider's list",
                ))?;
                (plan.list_result(&kept, &outcome)?, outcome.unopened)
            }
            Side::ListJob(parked, kept) => {
                let outcome = parked.open()?;
                (plan.list_result(&kept, &outcome)?, outcome.unopened)
            }
        };
        Ok(QueryOutcome {
            result,
            received: receives,
            protocol: plan.protocol(),
            accepted,
            summary,
            counters,
            rows,
            unopened,
            skipped_rows,
            own_over_bound,
            chain: Vec::new(),
        })
    }
}

/// The client's own side, prepared before the session starts. One per query, moved once: the
/// size difference of the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Prepared {
    /// A list query's identifiers (one querier, or one per bucket once the server's terms
    /// arrive), and the member's rows the list is joined with.
    List(ListQuerierTable, QuerierRows),
    /// An aggregation whose result also goes to other receivers (their keys are sealed before
    /// the start): one protocol run.
    Receiver(Receiver),
    /// An aggregation's whole table, in memory: one protocol run, or split in memory when the
    /// server makes a job of buckets (its own table is large).
    Table(ReceiverTable),
    /// An aggregation over more rows than memory holds: read again, into bucket files, once
    /// the server's job terms arrive.
    Large,
}

/// The client's finished role, whose outcome is opened once the session ended. One per
/// query, moved once: the size difference of the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Side {
    /// The psi receiver of an aggregation.
    Aggregate(Receiver),
    /// The psi list querier of a list, and the member's rows the list is joined with.
    List(ListQuerier, QuerierRows),
    /// A list's job of buckets, every bucket with its evaluations, and the member's rows.
    ListJob(list_job::ParkedJob, QuerierRows),
    /// The opener of a job's release.
    Job(ResultOpener),
    /// A job whose result went to the other receivers only.
    Elsewhere,
}

/// The request that carries the other receivers' keys `sealed` after the start.
fn later_keys(sealed: Vec<SealedResultKeys>) -> RunSessionRequest {
    RunSessionRequest {
        message: Some(run_session_request::Message::ResultKeys(
            proto::LaterResultKeys {
                result_keys: sealed,
            },
        )),
    }
}

/// The client's whole table for `plan`, in memory (off the runtime), its identifiers bounded
/// to their groups under privacy as before a session: the table and how many were cut.
async fn whole_table(
    plan: &mut Plan,
    path: &TableSpec,
) -> Result<(ReceiverTable, Option<u64>), ClientError> {
    let (mut table_plan, spec) = (plan.clone(), path.clone());
    let (built, table_plan) = tokio::task::spawn_blocking(move || {
        let built = data::receiver_table(&mut table_plan, &spec).map(|mut table| {
            let over = table_plan
                .privacy()
                .filter(|_| table_plan.grouped_by() == Some(cleanroom_rules::Role::Receiver))
                .map(|p| table.bound_groups(p.max_groups));
            (table, over)
        });
        (built, table_plan)
    })
    .await
    .map_err(|e| ClientError::Internal(e.to_string()))?;
    *plan = table_plan;
    Ok(built?)
}

/// Runs `role` against the server's protocol messages until it is done.
async fn run_role<R: Role>(
    exchange: &mut Exchange<'_, RunSessionRequest>,
    inbound: &mut tonic::Streaming<proto::RunSessionResponse>,
    role: R,
) -> Result<R, ClientError> {
    Ok(exchange.run(role, &mut psi_messages(inbound)).await?)
}

/// The protocol messages of the server's stream; anything else before the protocol is over
/// is an error.
fn psi_messages(
    inbound: &mut tonic::Streaming<proto::RunSessionResponse>,
) -> impl tokio_stream::Stream<Item = Result<Vec<u8>, ExchangeError>> + Unpin + '_ {
    inbound.map(|item| match item {
        Ok(proto::RunSessionResponse {
            message: Some(run_session_response::Message::Psi(PsiMessage { payload })),
        }) => Ok(payload),
        Ok(_) => Err(ExchangeError::Unexpected(
            "a session message before the protocol finished",
        )),
        Err(status) => Err(ExchangeError::Transport(status)),
    })
}

/// Runs `fut` within the session's deadline and, when there is one, the idle timeout.
async fn within_idle<F: std::future::Future>(
    deadline: Option<(Instant, Duration)>,
    idle: Option<Duration>,
    fut: F,
) -> Result<F::Output, ExchangeError> {
    match idle {
        Some(idle) => crate::exchange::within(deadline, tokio::time::timeout(idle, fut))
            .await?
            .map_err(|_| ExchangeError::Idle(idle)),
        None => crate::exchange::within(deadline, fut).await,
    }
}

fn psi_request(payload: Vec<u8>) -> RunSessionRequest {
    RunSessionRequest {
        message: Some(run_session_request::Message::Psi(PsiMessage { payload })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint_of(error: ClientError) -> Option<String> {
        match error {
            ClientError::Transport { hint, .. } => hint,
            _ => None,
        }
    }

    #[test]
    fn a_tls_connection_the_server_ended_hints_at_client_certificates() {
        let ended = |server: &str, cause: &str| ClientError::Transport {
            server: server.to_owned(),
            cause: cause.to_owned(),
            hint: None,
        };
        let tls = "https://publisher.example:8443";
        let hint = |cause: &str, presented: bool| {
            hint_of(with_certificate_hint(ended(tls, cause), tls, presented))
        };
        assert!(
            hint("transport error", false)
                .unwrap()
                .ends_with("give --tls-cert and --tls-key")
        );
        assert!(
            hint("transport error", true)
                .unwrap()
                .contains("it may not accept your client certificate")
        );
        let dropped = ClientError::Remote(RemoteError {
            code: Code::Cancelled,
            message: CONNECTION_DROPPED.to_owned(),
            reasons: Vec::new(),
        });
        assert!(hint_of(with_certificate_hint(dropped, tls, false)).is_some());
        // A server that is not there, or plaintext: no word about certificates.
        assert_eq!(hint("tcp connect error: Connection refused", false), None);
        let plain = "http://127.0.0.1:8443";
        assert_eq!(
            hint_of(with_certificate_hint(
                ended(plain, "transport error"),
                plain,
                false
            )),
            None
        );
    }
}
