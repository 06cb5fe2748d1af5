//! The querier of a join across three to five members (PROTOCOL.md 7.9): one session with
//! each provider's server, over which it plays the psi [`ChainQuerier`] and relays the sealed
//! hops between providers. Providers never reach each other's network.
//!
//! Invariants:
//! - every provider accepts the same terms before any protocol message goes (each answers
//!   with its acceptance, checked against this side's plan of the chain's ends and the chain
//!   digest);
//! - the querier reads every connection all the time: what one provider sends for the next is
//!   queued here, never waited on, so two providers cannot block each other through it;
//! - the result is opened only once every provider's session ended on the wire.

use std::collections::BTreeMap;

use cleanroom_psi::ecdh::chain::{Chain, ChainMessage, ChainQuerier};
use cleanroom_psi::{Stage, WireMessage};
use cleanroom_rules::{Plan, QueryPlan};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::{Client, ClientConfig, ClientError, Progress, ProgressHook, Query, QueryOutcome};
use super::{psi_request, whole_table, within_idle};
use crate::exchange::{Counters, ExchangeError};
use crate::proto::{
    RunSessionRequest, SessionAccepted, SessionStart, SessionSummary, TableDescriptor,
    run_session_request, run_session_response,
};
use crate::session::{self, CHAIN_CONTEXT_BYTES, check_accepted, receiver_for};

/// One provider's session of a chain, as the querier saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainProvider {
    /// The provider's table.
    pub table: String,
    /// The member serving it.
    pub member: String,
    /// Its place: 1 … k, the matcher last.
    pub position: usize,
    /// The provider's session identifier (its audit entry).
    pub session_id: String,
}

/// One open session with a provider.
struct Connection {
    outbound: mpsc::UnboundedSender<RunSessionRequest>,
    accepted: SessionAccepted,
    summary: Option<SessionSummary>,
}

/// What arrives from the provider at a position.
type Arrival = (u8, Result<run_session_response::Message, tonic::Status>);

/// Runs a join across three to five members: `servers` names, per provider table, how to
/// reach the server of the member that serves it.
pub async fn run_chain_query(
    query: Query<'_>,
    servers: &BTreeMap<String, ClientConfig>,
    progress: Option<ProgressHook<'_>>,
) -> Result<QueryOutcome, ClientError> {
    let report = |p: Progress<'_>| {
        if let Some(hook) = progress {
            hook(p);
        }
    };
    let plan = match query
        .collaboration
        .plan_query(query.member, query.sql, query.receivers)
        .map_err(ClientError::Refused)?
    {
        QueryPlan::Chain(plan) => plan,
        QueryPlan::TwoParty(_) => {
            return Err(ClientError::Session(
                "a query of two tables runs with one --server",
            ));
        }
    };
    let agreement = session::chain_agreement(query.collaboration, &plan);
    let mut ends = Plan::Aggregate(plan.ends().clone());
    let own = ends.receiver().table.clone();
    let path = query
        .data
        .get(&own)
        .cloned()
        .ok_or_else(|| ClientError::MissingData { table: own.clone() })?;
    let mut configs = Vec::new();
    for link in plan.links() {
        let config = servers
            .get(link.table())
            .ok_or_else(|| ClientError::MissingServer {
                table: link.table().to_owned(),
                member: link.member().to_owned(),
            })?;
        configs.push((link, config));
    }

    report(Progress::ReadingData { table: &own });
    let columns = crate::data::header(&path)?;
    let (table, own_over_bound) = whole_table(&mut ends, &path).await?;
    let stats = table.stats();
    ends.check_querier_identifiers(table.distinct_identifiers())
        .map_err(ClientError::Refused)?;
    let limits = cleanroom_psi::Limits::default();
    let receiver = receiver_for(&ends, table, limits).map_err(ClientError::Internal)?;
    let mut context = vec![0u8; *CHAIN_CONTEXT_BYTES.start() * 2];
    getrandom::fill(&mut context).map_err(|e| ClientError::Internal(e.to_string()))?;
    let chain = Chain::new(&context, plan.links().map(|l| *l.relay_key()).collect())
        .map_err(|e| ClientError::Internal(e.to_string()))?;
    let start = SessionStart {
        collaboration_id: query.collaboration.id().to_owned(),
        member: query.member.to_owned(),
        sql: query.sql.to_owned(),
        table: Some(TableDescriptor {
            name: own.clone(),
            columns,
            rows: stats.rows,
            skipped_rows: stats.skipped_empty,
        }),
        agreement: Some(agreement.clone()),
        receivers: query.receivers.to_vec(),
        result_keys: Vec::new(),
        buckets: 0,
        job_id: String::new(),
        chain_context: context,
    };

    // Open every provider's session; each reader forwards what its server sends.
    let first = configs
        .first()
        .map(|(_, c)| *c)
        .expect("a chain has providers");
    let deadline = first.timeout.map(|t| (Instant::now() + t, t));
    let idle = first.idle_timeout;
    let (arrivals, mut arrived) = mpsc::channel::<Arrival>(64);
    let mut connections = Vec::new();
    let mut providers = Vec::new();
    for (link, config) in &configs {
        let client = Client::connect(config).await?;
        let position = link.position() as u8;
        let connection = open(client, &start, (deadline, idle), position, arrivals.clone()).await?;
        check_accepted(&ends, &agreement, &connection.accepted)
            .map_err(ClientError::PlanMismatch)?;
        providers.push(ChainProvider {
            table: link.table().to_owned(),
            member: link.member().to_owned(),
            position: link.position(),
            session_id: connection.accepted.session_id.clone(),
        });
        connections.push(connection);
    }
    drop(arrivals);
    let matcher = connections.len();
    report(Progress::Accepted {
        session_id: &connections[matcher - 1].accepted.session_id,
        rows: stats.rows,
    });

    // Play the querier until it has the release, reading every connection all along.
    let mut role = Some(ChainQuerier::new(receiver, chain, limits));
    let mut counters = Counters::default();
    loop {
        let (back, out) = blocking(role.take().expect("the role is back"), |q| {
            let mut out = Vec::new();
            while let Some(message) = q.poll_message() {
                out.push(message);
            }
            out
        })
        .await?;
        role = Some(back);
        for (to, message) in out {
            let payload = message.encode();
            counters.sent(payload.len());
            connections[usize::from(to) - 1]
                .outbound
                .send(psi_request(payload))
                .map_err(|_| ClientError::Session("a provider's session closed early"))?;
        }
        report(Progress::Moved(&counters));
        if role.as_ref().is_some_and(|q| q.stage() == Stage::Finished) {
            break;
        }
        let (from, message) = next(&mut arrived, deadline, idle).await?;
        match message {
            run_session_response::Message::Psi(psi) => {
                counters.received(psi.payload.len());
                let message = ChainMessage::decode(&psi.payload)
                    .map_err(|e| ClientError::Exchange(ExchangeError::Peer(e.into())))?;
                let (back, handled) = blocking(role.take().expect("the role is back"), move |q| {
                    q.handle_message(from, message)
                })
                .await?;
                role = Some(back);
                handled.map_err(|e| ClientError::Exchange(ExchangeError::Peer(e.into())))?;
            }
            run_session_response::Message::Summary(summary) => {
                connections[usize::from(from) - 1].summary = Some(summary);
            }
            run_session_response::Message::Accepted(_) => {
                return Err(ClientError::Session("a second acceptance"));
            }
        }
    }
    // Every provider ends its session with its summary; then the result is opened.
    for connection in &mut connections {
        connection.outbound = mpsc::unbounded_channel().0;
    }
    while connections.iter().any(|c| c.summary.is_none()) {
        let (from, message) = next(&mut arrived, deadline, idle).await?;
        match message {
            run_session_response::Message::Summary(summary) => {
                connections[usize::from(from) - 1].summary = Some(summary);
            }
            _ => return Err(ClientError::Session("messages after the protocol ended")),
        }
    }
    let outcome = role
        .as_ref()
        .expect("the role is back")
        .open()
        .map_err(ClientError::Opened)?;
    let result = ends.result(&outcome)?;
    let matcher = connections.pop().expect("the matcher's connection");
    Ok(QueryOutcome {
        result,
        received: true,
        protocol: ends.protocol(),
        accepted: matcher.accepted,
        summary: matcher.summary.expect("every summary arrived"),
        counters,
        rows: stats.rows,
        unopened: 0,
        skipped_rows: stats.skipped_empty,
        own_over_bound,
        chain: providers,
    })
}

/// Opens a session with the provider at `position`: sends `start`, waits for its acceptance,
/// and forwards everything it sends afterwards to `arrivals`.
async fn open(
    mut client: Client,
    start: &SessionStart,
    (deadline, idle): (
        Option<(Instant, std::time::Duration)>,
        Option<std::time::Duration>,
    ),
    position: u8,
    arrivals: mpsc::Sender<Arrival>,
) -> Result<Connection, ClientError> {
    let (requests, to_server) = mpsc::channel(4);
    requests
        .send(RunSessionRequest {
            message: Some(run_session_request::Message::Start(start.clone())),
        })
        .await
        .map_err(|_| ClientError::Internal("request stream closed".to_owned()))?;
    let call = client.inner.run_session(ReceiverStream::new(to_server));
    let mut inbound = within_idle(deadline, idle, call)
        .await?
        .map_err(|status| client.explained(status.into()))?
        .into_inner();
    let first = within_idle(deadline, idle, inbound.message()).await??;
    let accepted = match first.and_then(|m| m.message) {
        Some(run_session_response::Message::Accepted(accepted)) => accepted,
        _ => {
            return Err(ClientError::Session(
                "a provider's session did not open with an acceptance",
            ));
        }
    };
    // What this side sends waits here, never in the way of what it reads.
    let (outbound, mut queued) = mpsc::unbounded_channel::<RunSessionRequest>();
    tokio::spawn(async move {
        while let Some(request) = queued.recv().await {
            if requests.send(request).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(item) = inbound.next().await {
            let message = match item {
                Ok(response) => match response.message {
                    Some(message) => Ok(message),
                    None => continue,
                },
                Err(status) => Err(status),
            };
            let failed = message.is_err();
            if arrivals.send((position, message)).await.is_err() || failed {
                break;
            }
        }
    });
    Ok(Connection {
        outbound,
        accepted,
        summary: None,
    })
}

/// The next thing any provider sent, within the time limits; a provider's error ends the
/// query with it.
async fn next(
    arrived: &mut mpsc::Receiver<Arrival>,
    deadline: Option<(Instant, std::time::Duration)>,
    idle: Option<std::time::Duration>,
) -> Result<(u8, run_session_response::Message), ClientError> {
    match within_idle(deadline, idle, arrived.recv()).await? {
        Some((from, Ok(message))) => Ok((from, message)),
        Some((_, Err(status))) => Err(status.into()),
        None => Err(ClientError::Exchange(ExchangeError::PeerEnded)),
    }
}

/// Runs `f` on the querier off the runtime (its curve work is heavy), handing it back.
async fn blocking<T: Send + 'static>(
    mut role: ChainQuerier,
    f: impl FnOnce(&mut ChainQuerier) -> T + Send + 'static,
) -> Result<(ChainQuerier, T), ClientError> {
    tokio::task::spawn_blocking(move || {
        let out = f(&mut role);
        (role, out)
    })
    .await
    .map_err(|e| ClientError::Internal(e.to_string()))
}
