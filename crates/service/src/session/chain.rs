//! A join across three to five members on a provider's side (PROTOCOL.md 7.9): which part of
//! the chain this server plays, the terms every member agrees on, and its two roles, the
//! filter (passes the querier's candidates on and releases nothing) and the matcher (releases
//! as in two parties, through the common path of `run.rs`).
//!
//! Invariants:
//! - a chain session is admitted by every provider on its own: its own copy of the
//!   collaboration plans the query, it finds its own place in the chain there (never in what
//!   the client says), checks the querier's table and rows as for two parties, and charges
//!   before its first message that depends on its data;
//! - the chain's terms (relay keys, order, every table's rule) are in the agreement's plan
//!   digest, so a member whose collaboration file differs refuses before anything moves;
//! - a filter's audit entry ends `filtered`, never `released`: only the matcher releases.

use std::ops::RangeInclusive;

use cleanroom_data::TableSpec;
use cleanroom_psi::ecdh::chain::{Chain, ChainFilter, ChainMatcher};
use cleanroom_psi::sealed::OpeningKey;
use cleanroom_psi::{ListQuerierTable, ProtocolError};
use cleanroom_rules::{ChainPart, ChainPlan, Collaboration, Plan, QueryPlan};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tokio_stream::Stream;

use super::admission::{Host, SessionRequest, state_call};
use super::delivery::Recipients;
use super::run::{Release, ServerFrames, build_role, matcher_for, release_of, session_summary};
use crate::data;
use crate::exchange::{Exchange, ExchangeError};
use crate::outcome::SessionError;
use crate::proto::Agreement;
use crate::state::{Completion, Decision, Standing, TableUse};

/// How many bytes a chain context has: enough that two sessions never share one.
pub const CHAIN_CONTEXT_BYTES: RangeInclusive<usize> = 16..=64;

/// The part this server plays in one chain session.
#[derive(Debug, Clone)]
pub(crate) struct ChainSession {
    /// The server's own plan of the whole chain.
    pub plan: ChainPlan,
    /// Its position (1 to the number of providers).
    pub position: u8,
    /// Filter or matcher.
    pub part: ChainPart,
    /// The session's chain context, as the client sent it to every provider.
    pub context: Vec<u8>,
}

impl ChainSession {
    /// The psi chain of this session: its context and every provider's relay key, in order.
    fn chain(&self) -> Result<Chain, SessionError> {
        Chain::new(
            &self.context,
            self.plan.links().map(|l| *l.relay_key()).collect(),
        )
        .map_err(internal)
    }

    /// This server's table in the chain.
    pub(crate) fn table(&self) -> &str {
        self.link().table()
    }

    fn link(&self) -> &cleanroom_rules::ChainLink {
        self.plan
            .links()
            .nth(usize::from(self.position) - 1)
            .expect("the position is one of the plan's links")
    }

    /// The tables this session reads, for the ledger: this server's, then the querier's.
    pub(crate) fn uses(&self) -> Vec<TableUse> {
        let own = match self.part {
            ChainPart::Matcher => self.plan.matcher(),
            ChainPart::Filter => self.plan.filters()[usize::from(self.position) - 1].side(),
        };
        vec![
            TableUse::of_side(own),
            TableUse::of_side(self.plan.receiver()),
        ]
    }
}

/// The terms of a chain session, as a two-party agreement over its ends (the querier's and
/// the matcher's tables), whose plan digest covers the whole chain: every provider, its
/// position and relay key, every table's rule.
pub fn chain_agreement(collaboration: &Collaboration, plan: &ChainPlan) -> Agreement {
    let mut agreement = super::agreement(collaboration, &Plan::Aggregate(plan.ends().clone()));
    let value = serde_json::to_value(plan).expect("a plan has only string keys and finite numbers");
    agreement.plan_sha256 = Sha256::digest(value.to_string().as_bytes()).to_vec();
    agreement
}

impl Host {
    /// Admission of a chain session: the checks of [`Host::admit`] for the querier and its
    /// table, on this server's own plan of the chain, and this server's place in it. Returns
    /// the two-party plan of the chain's ends (thresholds, privacy, outputs), where this
    /// server's table is, who the result goes to (the querier only) and the part it plays.
    pub(super) fn admit_chain(
        &self,
        member: &str,
        request: &SessionRequest<'_>,
    ) -> Result<(Plan, TableSpec, Recipients, ChainSession), SessionError> {
        let config = &self.config;
        if !CHAIN_CONTEXT_BYTES.contains(&request.chain_context.len()) {
            return Err(SessionError::InvalidArgument(format!(
                "a chain context of {} bytes; it has 16 to 64",
                request.chain_context.len()
            )));
        }
        if !request.receivers.iter().all(|r| r == member) || !request.result_keys.is_empty() {
            return Err(SessionError::InvalidArgument(
                "a join across three or more members releases to the querier only".to_owned(),
            ));
        }
        if request.buckets > 1 || !request.job_id.is_empty() {
            return Err(SessionError::InvalidArgument(
                "a join across three or more members runs as one session: no buckets, no job \
                 name"
                    .to_owned(),
            ));
        }
        let plan = match config
            .collaboration
            .plan_query(member, request.sql, request.receivers)
            .map_err(SessionError::Refused)?
        {
            QueryPlan::Chain(plan) => plan,
            QueryPlan::TwoParty(_) => {
                return Err(SessionError::InvalidArgument(
                    "a chain context for a query of two tables".to_owned(),
                ));
            }
        };
        super::check_agreement(
            &chain_agreement(&config.collaboration, &plan),
            request.agreement,
            "the client",
        )
        .map_err(SessionError::AgreementDiffers)?;
        let link = plan
            .links()
            .find(|l| l.member() == config.member && config.data.contains_key(l.table()))
            .ok_or_else(|| {
                SessionError::InvalidArgument(format!(
                    "member {:?} serves none of the chain's tables here",
                    config.member
                ))
            })?;
        let (position, part, table) = (link.position() as u8, link.part(), link.table());
        let path = config.data[table].clone();
        if config.relay_key.is_none() {
            return Err(SessionError::InvalidArgument(
                "this server has no relay key (serve --relay-key): it cannot take part in a \
                 join across three or more members"
                    .to_owned(),
            ));
        }
        let ends = Plan::Aggregate(plan.ends().clone());
        let recipients = Recipients::of(member, request.receivers, request.result_keys, 1)?;
        let rows = self.check_querier_table(member, request, &ends)?;
        ends.check_querier_identifiers(rows)
            .map_err(SessionError::Refused)?;
        let chain = ChainSession {
            plan,
            position,
            part,
            context: request.chain_context.to_vec(),
        };
        Ok((ends, path, recipients, chain))
    }

    /// Plays a filter of the chain: its set goes to the querier, the querier's candidates
    /// that its set holds go on to the next provider, nothing is released. Records the session
    /// as `filtered` and sends the summary.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn filter_chain<T, S>(
        &self,
        session_id: &str,
        plan: &Plan,
        chain: &ChainSession,
        path: TableSpec,
        limits: cleanroom_psi::Limits,
        inbound: &mut S,
        exchange: &mut Exchange<'_, T>,
        (started, standing, receiver_rows): (Instant, &Standing, u64),
    ) -> Result<(), SessionError>
    where
        T: ServerFrames,
        S: Stream<Item = Result<Vec<u8>, ExchangeError>> + Unpin,
    {
        let filter_plan = chain.plan.filters()[usize::from(chain.position) - 1].clone();
        let (psi_chain, position, relay) = (chain.chain()?, chain.position, self.relay_key()?);
        let domain = plan.domain();
        // Under privacy the set size this filter announces carries noise, as a two-party
        // provider's group sizes do: its share of the query's epsilon is in the plan.
        let dummies = plan.privacy().map(|p| p.dummies());
        let (rows, role) =
            build_role(exchange, plan, move |_| {
                let table: ListQuerierTable = data::filter_table(&filter_plan, &path)?;
                let rows = table.stats().rows;
                let role = ChainFilter::new(&domain, table, psi_chain, position, relay, limits)
                    .map(|role| match dummies {
                        Some(dummies) => role.noisy().pad(dummies),
                        None => role,
                    });
                Ok((rows, role))
            })
            .await?;
        let role = role.map_err(internal)?;
        let role = exchange.run(role, inbound).await?;
        drop(role);
        let counters = exchange.counters;
        let completion = Completion {
            matcher_rows: rows,
            messages_received: counters.messages_received,
            messages_sent: counters.messages_sent,
            bytes_received: counters.bytes_received,
            bytes_sent: counters.bytes_sent,
            compute_ms: u64::try_from(counters.compute.as_millis()).unwrap_or(u64::MAX),
            ..Completion::default()
        };
        let id = session_id.to_owned();
        let reason = format!(
            "filtered at position {position} of {}: the chain's matcher releases",
            chain.plan.links().count()
        );
        let recorded = state_call(&self.config.state, move |s| {
            s.finish(&id, Decision::Filtered, &reason, &completion)
        })
        .await?;
        if !recorded {
            return Err(SessionError::Internal(
                "the session's audit entry was already complete".to_owned(),
            ));
        }
        let summary = session_summary(
            session_id,
            (0, 0),
            Vec::new(),
            (receiver_rows, &counters, started),
            standing,
        );
        exchange.send_item(T::summary(summary)).await?;
        Ok(())
    }

    /// Plays the matcher of the chain until every message of the last filter arrived, then
    /// decides the release as for two parties: returns it, not sent yet.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn match_chain<T, S>(
        &self,
        plan: &Plan,
        chain: &ChainSession,
        path: TableSpec,
        limits: cleanroom_psi::Limits,
        inbound: &mut S,
        exchange: &mut Exchange<'_, T>,
        matcher_rows: &mut u64,
    ) -> Result<Release, SessionError>
    where
        T: ServerFrames,
        S: Stream<Item = Result<Vec<u8>, ExchangeError>> + Unpin,
    {
        let (psi_chain, relay) = (chain.chain()?, self.relay_key()?);
        let (rows, role) = build_role(exchange, plan, move |plan| {
            let table = data::matcher_table(plan, &path)?;
            let rows = table.stats().rows;
            let matcher = matcher_for(plan, table, limits);
            Ok((rows, ChainMatcher::new(matcher, psi_chain, relay)))
        })
        .await?;
        let role = role.map_err(internal)?;
        *matcher_rows = rows;
        let role = exchange.run(role, inbound).await?;
        let release_plan = plan.clone();
        let (_, released) = exchange
            .blocking(role, move |role| {
                release_of(&release_plan, role.matcher_mut())
            })
            .await?;
        released.map_err(|e| SessionError::Internal(e.to_string()))
    }

    /// A copy of this server's relay key, for one session's role.
    fn relay_key(&self) -> Result<OpeningKey, SessionError> {
        let key = self.config.relay_key.as_ref().ok_or_else(|| {
            SessionError::InvalidArgument("this server has no relay key".to_owned())
        })?;
        OpeningKey::from_bytes(*key.to_bytes()).map_err(|e| SessionError::Internal(e.to_string()))
    }
}

/// A chain whose psi roles cannot be made from the plan and this server's relay key: the
/// server's configuration, never the client's doing.
fn internal(error: ProtocolError) -> SessionError {
    SessionError::Internal(format!("the chain's roles: {error}"))
}
