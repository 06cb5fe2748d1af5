//! Running an admitted session on the server, over an abstract message channel, and how each
//! side configures its psi role from the plan.
//!
//! The channel is a stream of the client's protocol messages in and an [`mpsc`] sender of the
//! transport's items out ([`ServerFrames`] builds them); the psi role is driven by the
//! [exchange](crate::exchange). The release is decided once every message of the client
//! arrived, recorded durably, and only then sent; the summary follows it.

use cleanroom_data::TableSpec;
use cleanroom_psi::range_proof::ValueRange;
use cleanroom_psi::{
    AggregateMessage, GroupCount, GroupDecision, JobTotals, ListProvider, Matcher, MatcherTable,
    ProtocolError, Receiver, ReceiverTable, ReleaseSummary, WireMessage,
};
use cleanroom_rules::{ChainPart, Plan, Role};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::Stream;

use super::admission::{Admitted, Host, state_call};
use super::chain::ChainSession;
use super::delivery::{OtherReceivers, Recipients, boxes_for};
use super::{Inbound, Server, ServerRole, psi_only, role_for};
use crate::data::{self, DataFileError};
use crate::exchange::{Counters, Exchange, ExchangeError, MinRate, PeerError, within};
use crate::limits::MAX_MESSAGE_BYTES;
use crate::outcome::SessionError;
use crate::proto::{SessionAccepted, SessionStats, SessionSummary};
use crate::roles::ListProviderRole;
use crate::state::{Completion, Delivery, Standing};

/// How a transport frames what the server sends in a session: the acceptance, the protocol
/// messages, the summary, and the error that ends a session without a release.
pub(crate) trait ServerFrames: Send + 'static {
    /// The session is accepted under these terms.
    fn accepted(accepted: SessionAccepted) -> Self;
    /// One encoded protocol message.
    fn psi(payload: Vec<u8>) -> Self;
    /// The session's summary, its last message.
    fn summary(summary: SessionSummary) -> Self;
    /// The session ended with `error`.
    fn ended(error: &SessionError) -> Self;
}

/// What a release is decided over: a session's matcher, or a job's totals after its last
/// bucket. Both apply the plan's rules to each group and say how many bounded identifiers the
/// querier is told of.
pub(super) trait ReleaseDecision {
    /// What deciding returns besides the disclosed bounded count.
    type Decided;
    /// Decides with `decide` per group and `disclose_bounded` for the bounded identifiers.
    fn release_with(
        &mut self,
        decide: impl FnMut(&GroupCount) -> GroupDecision,
        disclose_bounded: impl FnOnce(u64) -> u64,
    ) -> Result<Self::Decided, ProtocolError>;
}

impl ReleaseDecision for Matcher {
    type Decided = ReleaseSummary;
    fn release_with(
        &mut self,
        decide: impl FnMut(&GroupCount) -> GroupDecision,
        disclose_bounded: impl FnOnce(u64) -> u64,
    ) -> Result<ReleaseSummary, ProtocolError> {
        Matcher::release_with(self, decide, disclose_bounded)
    }
}

impl ReleaseDecision for JobTotals {
    type Decided = (Vec<AggregateMessage>, ReleaseSummary);
    fn release_with(
        &mut self,
        decide: impl FnMut(&GroupCount) -> GroupDecision,
        disclose_bounded: impl FnOnce(u64) -> u64,
    ) -> Result<Self::Decided, ProtocolError> {
        JobTotals::release_with(self, decide, disclose_bounded)
    }
}

/// Decides `role`'s release under `plan` (thresholds, noise and limits per group; the bounded
/// identifiers as the plan discloses them): returns what psi decided and the disclosed count.
pub(super) fn decide_release<R: ReleaseDecision>(
    plan: &Plan,
    role: &mut R,
) -> Result<(R::Decided, u64), ProtocolError> {
    let mut disclosed = 0;
    let decided = role.release_with(
        |group| plan.decide(group),
        |bounded| {
            disclosed = plan.disclose_bounded(bounded);
            disclosed
        },
    )?;
    Ok((decided, disclosed))
}

/// What a session's protocol decided, before it is sent: pairs released and suppressed, the
/// bounded identifiers (exact, and as the querier is told), the encoded messages, and the
/// matcher's hello that receivers other than the querier get before them (`None` when the
/// messages begin with it, as a job's do, or for a list).
pub(crate) struct Release {
    pub released: u64,
    pub suppressed: u64,
    pub bounded: (u64, u64),
    pub messages: Vec<Vec<u8>>,
    pub hello: Option<Vec<u8>>,
    /// A list job's release, in files: sent after `messages`, to the querier only.
    pub withheld: Option<super::list_job::WithheldEvaluations>,
}

impl Host {
    /// Runs an admitted session to its end over `inbound` (the client's protocol messages) and
    /// `outbound`, recording its outcome.
    pub(crate) async fn drive<T, S>(
        self,
        admitted: Admitted,
        mut inbound: S,
        outbound: mpsc::Sender<T>,
        started: Instant,
        deadline: (Instant, std::time::Duration),
    ) where
        T: ServerFrames,
        S: Stream<Item = Result<Inbound, ExchangeError>> + Unpin,
    {
        let Admitted {
            session_id,
            plan,
            matcher_path,
            chain,
            receiver_rows,
            permit,
            standing,
            recipients,
            job,
            named,
            checkpoint,
            resend,
        } = admitted;
        let limits = &self.config.limits;
        if let (Some(messages), Some(job)) = (resend, &job) {
            let sent = self
                .resend(&session_id, &plan, job, messages, &outbound, &standing)
                .await;
            drop(permit);
            if let Err(error) = sent {
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    outbound.send(T::ended(&error)),
                )
                .await;
            }
            return;
        }
        let mut exchange = Exchange {
            outbound: &outbound,
            wrap: T::psi,
            deadline: Some(deadline),
            idle: Some(limits.idle_timeout),
            max_message: MAX_MESSAGE_BYTES,
            counters: Counters::default(),
            progress: None,
            min_rate: (limits.min_bytes_per_second > 0).then_some(MinRate {
                per_second: limits.min_bytes_per_second,
                window: limits.rate_window,
            }),
            // A named job's bucket whose receiver data all arrived is worth finishing: it is
            // recorded, and the resume goes on after it. A bucket costs one bucket's compute.
            abort_when_peer_gone: !named,
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
                (started, &standing, &recipients),
                job.as_ref().map(|job| (job, checkpoint, named)),
                chain.as_ref(),
            )
            .await;
        let counters = exchange.counters;
        drop(permit);
        // A named job whose client went away waits, interrupted, for the client to resume it.
        let result = result.map_err(|error| match error {
            error if named && error.is_connection_lost() => {
                SessionError::Resumable(Box::new(error))
            }
            error => error,
        });
        // Otherwise a named list job's withheld evaluations go: sent, or never to be.
        if named && !matches!(result, Err(SessionError::Resumable(_))) {
            super::list_job::forget_evaluations(self.config.work_dir.as_deref(), &session_id);
        }
        match result {
            Ok(()) => self.tell(&session_id, &[], Some(started.elapsed())).await,
            Err(error) => {
                let completion = Completion {
                    matcher_rows,
                    messages_received: counters.messages_received,
                    messages_sent: counters.messages_sent,
                    bytes_received: counters.bytes_received,
                    bytes_sent: counters.bytes_sent,
                    compute_ms: millis(counters.compute),
                    ..Completion::default()
                };
                self.finish(&session_id, &error, completion, Some(started.elapsed()))
                    .await;
                // End the call with the error (a stream that just ends would read as a
                // success). The client may be gone or not reading; then there is nobody to tell.
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    outbound.send(T::ended(&error)),
                )
                .await;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run<T, S>(
        &self,
        session_id: &str,
        plan: &Plan,
        matcher_path: TableSpec,
        receiver_rows: u64,
        inbound: &mut S,
        exchange: &mut Exchange<'_, T>,
        matcher_rows: &mut u64,
        (started, standing, recipients): (Instant, &Standing, &Recipients),
        job: Option<(&crate::job::JobTerms, Option<Vec<u8>>, bool)>,
        chain: Option<&ChainSession>,
    ) -> Result<(), SessionError>
    where
        T: ServerFrames,
        S: Stream<Item = Result<Inbound, ExchangeError>> + Unpin,
    {
        // A named job's own release is kept with it, to send again to a client that lost it;
        // a list job's is not (it is on disk, in the size of the querier's set).
        let keep_release = job.as_ref().is_some_and(|(_, _, named)| *named)
            && plan.protocol() != cleanroom_rules::Protocol::List;
        exchange
            .send_item(T::accepted(super::accepted(
                plan,
                match chain {
                    Some(chain) => super::chain_agreement(&self.config.collaboration, &chain.plan),
                    None => super::agreement(&self.config.collaboration, plan),
                },
                session_id,
                job.as_ref().map(|(terms, ..)| *terms),
            )))
            .await?;

        let limits = self.psi_limits(receiver_rows);
        // The other receivers' keys that follow the start come before anything of this
        // server's data is computed on: after the acceptance for one session, after the last
        // bucket's data for a job.
        let (release, sealed) = match (role_for(plan, Server), job) {
            // A filter of a chain releases nothing: it ends here, recorded as filtered.
            _ if let Some(chain) = chain.filter(|c| c.part == ChainPart::Filter) => {
                let mut psi = psi_only(inbound);
                return self
                    .filter_chain(
                        session_id,
                        plan,
                        chain,
                        matcher_path,
                        limits,
                        &mut psi,
                        exchange,
                        (started, standing, receiver_rows),
                    )
                    .await;
            }
            _ if let Some(chain) = chain => {
                let mut psi = psi_only(inbound);
                let release = self
                    .match_chain(
                        plan,
                        chain,
                        matcher_path,
                        limits,
                        &mut psi,
                        exchange,
                        matcher_rows,
                    )
                    .await?;
                (release, Vec::new())
            }
            (ServerRole::Matcher, None) => {
                let sealed = sealed_keys(plan, recipients, inbound, exchange).await?;
                let mut psi = psi_only(inbound);
                let release = self
                    .aggregate_protocol(
                        plan,
                        matcher_path,
                        limits,
                        &mut psi,
                        exchange,
                        matcher_rows,
                    )
                    .await?;
                (release, sealed)
            }
            (ServerRole::Matcher, Some(job)) => {
                let totals = self
                    .match_job(
                        session_id,
                        plan,
                        matcher_path,
                        limits,
                        job,
                        &mut psi_only(inbound),
                        exchange,
                        matcher_rows,
                    )
                    .await?;
                let sealed = sealed_keys(plan, recipients, inbound, exchange).await?;
                (self.release_job(plan, totals, exchange).await?, sealed)
            }
            (ServerRole::ListProvider, Some(job)) => {
                let sealed = sealed_keys(plan, recipients, inbound, exchange).await?;
                let release = self
                    .list_job(
                        session_id,
                        plan,
                        matcher_path,
                        limits,
                        job,
                        &mut psi_only(inbound),
                        exchange,
                        matcher_rows,
                    )
                    .await?;
                (release, sealed)
            }
            (ServerRole::ListProvider, None) => {
                let sealed = sealed_keys(plan, recipients, inbound, exchange).await?;
                let mut psi = psi_only(inbound);
                let release = self
                    .list_protocol(plan, matcher_path, limits, &mut psi, exchange, matcher_rows)
                    .await?;
                (release, sealed)
            }
        };
        let Release {
            released,
            suppressed,
            bounded,
            messages,
            hello,
            withheld,
        } = release;
        // The querier is sent the release only when it is a receiver; each other receiver's is
        // kept, with the querier's keys sealed to it, in the release's own transaction.
        let to_querier: &[Vec<u8>] = if recipients.querier_receives {
            &messages
        } else {
            &[]
        };
        let deliveries: Vec<Delivery> = sealed
            .iter()
            .map(|(receiver, sealed_keys)| Delivery {
                receiver: receiver.clone(),
                sealed_keys: sealed_keys.clone(),
                messages: hello.iter().chain(&messages).cloned().collect(),
            })
            .collect();
        let counters = exchange.counters;
        let (withheld_messages, withheld_bytes) =
            withheld.as_ref().map_or((0, 0), |w| (w.messages, w.bytes));
        let completion = Completion {
            released_rows: released,
            suppressed_rows: suppressed,
            matcher_rows: *matcher_rows,
            messages_received: counters.messages_received,
            messages_sent: counters.messages_sent + to_querier.len() as u64 + withheld_messages,
            bytes_received: counters.bytes_received,
            bytes_sent: counters.bytes_sent
                + to_querier.iter().map(|m| m.len() as u64).sum::<u64>()
                + withheld_bytes,
            bounded_identifiers: bounded.0,
            bounded_disclosed: bounded.1,
            compute_ms: millis(counters.compute),
        };
        // Record the release durably (the charge was made at admission), then send it.
        let id = session_id.to_owned();
        let kept = keep_release.then(|| to_querier.to_vec());
        let recorded = within(
            exchange.deadline,
            state_call(&self.config.state, move |s| {
                s.release_delivering(&id, &completion, &deliveries, kept.as_deref())
            }),
        )
        .await??;
        if !recorded {
            return Err(SessionError::Internal(
                "the session's audit entry was already complete".to_owned(),
            ));
        }
        for message in to_querier {
            exchange.send_message(message.clone()).await?;
        }
        if let Some(withheld) = withheld {
            withheld.send(exchange).await?;
        }
        let counters = exchange.counters;
        // A querier that is not a receiver learns nothing of the result, its counts included.
        let (released, suppressed) = if recipients.querier_receives {
            (released, suppressed)
        } else {
            (0, 0)
        };
        let summary = session_summary(
            session_id,
            (released, suppressed),
            recipients.other_names(),
            (receiver_rows, &counters, started),
            standing,
        );
        exchange.send_item(T::summary(summary)).await?;
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
    async fn aggregate_protocol<T, S>(
        &self,
        plan: &Plan,
        matcher_path: TableSpec,
        limits: cleanroom_psi::Limits,
        inbound: &mut S,
        exchange: &mut Exchange<'_, T>,
        matcher_rows: &mut u64,
    ) -> Result<Release, SessionError>
    where
        T: ServerFrames,
        S: Stream<Item = Result<Vec<u8>, ExchangeError>> + Unpin,
    {
        let (rows, role) = build_role(exchange, plan, move |plan| {
            let table = data::matcher_table(plan, &matcher_path)?;
            Ok((table.stats().rows, matcher_for(plan, table, limits)))
        })
        .await?;
        *matcher_rows = rows;
        let role = exchange
            .run(role, inbound)
            .await
            .map_err(|e| refuse_tiny_querier_set(plan, e))?;

        // Decide (with noise, for a private plan), then record the decision durably, then
        // release.
        let release_plan = plan.clone();
        let (_, released) = exchange
            .blocking(role, move |role| release_of(&release_plan, role))
            .await?;
        released.map_err(|e| SessionError::Internal(e.to_string()))
    }

    /// Plays the psi list provider until every point of the querier arrived; returns the
    /// withheld evaluations (the release, not sent yet). The server cannot know how many rows
    /// the querier lists: both counts are 0.
    async fn list_protocol<T, S>(
        &self,
        plan: &Plan,
        matcher_path: TableSpec,
        limits: cleanroom_psi::Limits,
        inbound: &mut S,
        exchange: &mut Exchange<'_, T>,
        matcher_rows: &mut u64,
    ) -> Result<Release, SessionError>
    where
        T: ServerFrames,
        S: Stream<Item = Result<Vec<u8>, ExchangeError>> + Unpin,
    {
        let (rows, provider) = build_role(exchange, plan, move |plan| {
            let table = data::list_provider_table(plan, &matcher_path)?;
            let rows = table.stats().rows;
            Ok((rows, ListProvider::new(&plan.domain(), table, limits)))
        })
        .await?;
        *matcher_rows = rows;
        let mut role = exchange
            .run(ListProviderRole::new(provider), inbound)
            .await?;
        Ok(Release {
            released: 0,
            suppressed: 0,
            bounded: (0, 0),
            messages: role.release(),
            hello: None,
            withheld: None,
        })
    }
}

/// The other receivers' sealed keys: those of the start, or those that follow it, read now
/// off `inbound` (one `LaterResultKeys`, checked as the start's boxes are) when the start
/// left them out. Anything else there ends the session.
async fn sealed_keys<T, S>(
    plan: &Plan,
    recipients: &Recipients,
    inbound: &mut S,
    exchange: &mut Exchange<'_, T>,
) -> Result<Vec<(String, Vec<u8>)>, SessionError>
where
    T: Send + 'static,
    S: Stream<Item = Result<Inbound, ExchangeError>> + Unpin,
{
    let names = match &recipients.others {
        OtherReceivers::Sealed(sealed) => return Ok(sealed.clone()),
        OtherReceivers::KeysToFollow(names) => names,
    };
    match exchange.receive(inbound).await? {
        Inbound::ResultKeys(boxes) => {
            exchange.counters.received(
                boxes
                    .iter()
                    .map(|b| b.receiver.len() + b.sealed.len())
                    .sum(),
            );
            boxes_for(plan.querier(), names, &boxes, "result keys message")
        }
        Inbound::Psi(_) => Err(ExchangeError::Unexpected(
            "a protocol message where the result keys for the other receivers were due",
        )
        .into()),
    }
}

/// Whole milliseconds of `time` (saturating).
fn millis(time: std::time::Duration) -> u64 {
    u64::try_from(time.as_millis()).unwrap_or(u64::MAX)
}

/// Decides `matcher`'s release under `plan` (with noise, for a private plan) and encodes its
/// messages, and its hello for receivers other than the querier: the release, not sent yet.
pub(super) fn release_of(plan: &Plan, matcher: &mut Matcher) -> Result<Release, ProtocolError> {
    let (summary, disclosed) = decide_release(plan, matcher)?;
    let mut messages = Vec::new();
    while let Some(message) = matcher.poll_message() {
        messages.push(message.encode());
    }
    Ok(Release {
        released: summary.released,
        suppressed: summary.suppressed,
        bounded: (summary.bounded, disclosed),
        messages,
        hello: Some(matcher.hello().encode()),
        withheld: None,
    })
}

/// The summary that ends a session: the rows released and suppressed as the querier may see
/// them, the receivers the result is kept for, what moved (as the server counted it) and the
/// querier's standing after the charge.
pub(super) fn session_summary(
    session_id: &str,
    (released, suppressed): (u64, u64),
    delivered_to: Vec<String>,
    (receiver_rows, counters, started): (u64, &Counters, Instant),
    standing: &Standing,
) -> SessionSummary {
    SessionSummary {
        session_id: session_id.to_owned(),
        released_rows: released,
        suppressed_rows: suppressed,
        delivered_to,
        stats: Some(SessionStats {
            receiver_rows,
            messages_sent: counters.messages_sent,
            bytes_sent: counters.bytes_sent,
            messages_received: counters.messages_received,
            bytes_received: counters.bytes_received,
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }),
        standing: Some(crate::privacy::standing_proto(standing)),
    }
}

/// Reads the server's table for `plan` and builds its role from it with `build`, off the
/// runtime (both are heavy); returns the table's row count and the role. A table that cannot
/// be read is [`SessionError::Data`], naming it.
pub(super) async fn build_role<T, R>(
    exchange: &mut Exchange<'_, T>,
    plan: &Plan,
    build: impl FnOnce(&Plan) -> Result<(u64, R), DataFileError> + Send + 'static,
) -> Result<(u64, R), SessionError>
where
    T: ServerFrames,
    R: Send + 'static,
{
    let table_plan = plan.clone();
    let (_, built) = exchange.blocking((), move |_| build(&table_plan)).await?;
    built.map_err(|source| matcher_data_error(plan, source))
}

/// The server's table of `plan` could not be read: [`SessionError::Data`], naming it.
pub(super) fn matcher_data_error(plan: &Plan, source: DataFileError) -> SessionError {
    SessionError::Data {
        table: plan.matcher().table.clone(),
        source: Box::new(source),
    }
}

/// The server's psi matcher for `plan` over its `table`: the identifiers it requires of the
/// receiver, the groups it expects, and, under privacy, its noise, padding and range proofs.
pub(crate) fn matcher_for(
    plan: &Plan,
    table: MatcherTable,
    limits: cleanroom_psi::Limits,
) -> Matcher {
    bucket_matcher(plan, table, limits).require_receiver_identifiers(plan.min_release())
}

/// [`matcher_for`] for one bucket of a job: the same, but the querier's set is checked over
/// the whole job (`JobTotals::require_receiver_identifiers`), not per bucket.
pub(super) fn bucket_matcher(
    plan: &Plan,
    table: MatcherTable,
    limits: cleanroom_psi::Limits,
) -> Matcher {
    let mut matcher = Matcher::new(&plan.domain(), table, limits);
    if plan.grouped_by() != Some(Role::Receiver) {
        matcher = matcher.expect_receiver_groups(1);
    }
    if let (Some(bounds), Some(privacy)) = (plan.noise_bounds(), plan.privacy()) {
        matcher = matcher.with_noise(bounds).pad_groups(|| privacy.dummies());
        if let Some(ranges) = privacy.proven_ranges() {
            matcher = matcher.require_range_proofs(value_ranges(&ranges));
        }
    }
    matcher
}

/// The client's psi receiver for `plan` over its `table`: the groups it expects and, under
/// privacy, its noise and range proofs. The error says why the plan's noise or ranges do not
/// make a receiver.
pub(crate) fn receiver_for(
    plan: &Plan,
    table: ReceiverTable,
    limits: cleanroom_psi::Limits,
) -> Result<Receiver, String> {
    let mut receiver = Receiver::new(&plan.domain(), table, limits);
    if plan.grouped_by() != Some(Role::Matcher) {
        receiver = receiver.expect_matcher_groups(1);
    }
    if let Some(bounds) = plan.noise_bounds() {
        receiver = receiver.with_noise(bounds).map_err(|e| e.to_string())?;
    }
    if let Some(ranges) = plan.privacy().and_then(|p| p.proven_ranges()) {
        receiver = receiver
            .with_range_proofs(value_ranges(&ranges))
            .map_err(|e| e.to_string())?;
    }
    Ok(receiver)
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
pub(super) fn refuse_tiny_querier_set(plan: &Plan, error: ExchangeError) -> SessionError {
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
