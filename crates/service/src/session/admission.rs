//! Admission: who may run what. The authenticated member and its session request come in; a
//! session that passed every check, holds a concurrency slot and has been charged comes out, or
//! the error that refused it (recorded in the audit log).
//!
//! The order is part of the contract: the attempt is recorded first; then identity,
//! collaboration, rules (the server plans the SQL from its own copy of the collaboration),
//! tables and row quotas; then the member's own concurrency slot before the server's total (so
//! a refusal tells a member about its own sessions only); the charge comes last, once nothing
//! else can refuse the session.

use std::sync::Arc;
use std::time::Duration;

use cleanroom_data::TableSpec;
use cleanroom_rules::{Plan, Protocol};

use super::chain::ChainSession;
use super::delivery::{OtherReceivers, Recipients};
use crate::events::ServerEvents;
use crate::metrics::Metrics;
use crate::outcome::SessionError;
use crate::proto::{Agreement, SealedResultKeys, SessionStart};
use crate::server::ServerConfig;
use crate::slots::{SessionSlot, SessionSlots};
use crate::state::{
    Attempt, Completion, Decision, JobRecord, Policy, Standing, StateDb, StateError, StoredJob,
    TableUse,
};

/// The digest of what `request` asks, as a named job records it (see
/// [`crate::job::terms_digest`]).
fn request_digest(request: &SessionRequest<'_>) -> [u8; 32] {
    let table = request
        .table
        .map_or(("", 0, 0), |t| (t.name, t.rows, t.skipped_rows));
    crate::job::terms_digest(request.sql, request.receivers, table, request.agreement)
}

/// What a client asks for, as its session start says: transport-free.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionRequest<'a> {
    /// The member the client says it is (it must be the authenticated one).
    pub member: &'a str,
    /// The collaboration the client believes it is in.
    pub collaboration_id: &'a str,
    /// The query.
    pub sql: &'a str,
    /// The client's own table, if it names one.
    pub table: Option<DeclaredTable<'a>>,
    /// The terms the client computes under, if it sent them.
    pub agreement: Option<&'a Agreement>,
    /// The members the result goes to (empty: the querier).
    pub receivers: &'a [String],
    /// The querier's result keys sealed to each receiver other than itself.
    pub result_keys: &'a [SealedResultKeys],
    /// The buckets the client asks for (0 or 1: one session).
    pub buckets: u32,
    /// The client's name for the query, to resume it (empty: none).
    pub job_id: &'a str,
    /// A chain session's context (empty: two parties).
    pub chain_context: &'a [u8],
}

/// A table the client brings, as it describes it (never its rows).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeclaredTable<'a> {
    /// Its name in the collaboration.
    pub name: &'a str,
    /// Its rows after the client's own filters.
    pub rows: u64,
    /// Of those, rows whose identifier is NULL or empty.
    pub skipped_rows: u64,
}

impl<'a> SessionRequest<'a> {
    /// The request a gRPC session start makes.
    pub(crate) fn of(start: &'a SessionStart) -> SessionRequest<'a> {
        SessionRequest {
            member: &start.member,
            collaboration_id: &start.collaboration_id,
            sql: &start.sql,
            table: start.table.as_ref().map(|t| DeclaredTable {
                name: &t.name,
                rows: t.rows,
                skipped_rows: t.skipped_rows,
            }),
            agreement: start.agreement.as_ref(),
            receivers: &start.receivers,
            result_keys: &start.result_keys,
            buckets: start.buckets,
            job_id: &start.job_id,
            chain_context: &start.chain_context,
        }
    }

    /// The rows the client declared (0 without a table).
    fn rows(&self) -> u64 {
        self.table.map_or(0, |t| t.rows)
    }
}

/// A session that passed every check, holds its slot and was charged: it may run.
pub(crate) struct Admitted {
    /// The session's identifier (its audit entry is running).
    pub session_id: String,
    /// The server's own plan of the query.
    pub plan: Plan,
    /// Where the server's table of the plan is.
    pub matcher_path: TableSpec,
    /// The part this server plays in a join across three or more members; `None`: two
    /// parties. For a chain, `plan` is the two-party plan of the chain's ends (the querier's
    /// and the matcher's tables), which holds its threshold, privacy and outputs.
    pub chain: Option<ChainSession>,
    /// The rows the client declared.
    pub receiver_rows: u64,
    /// The concurrency slot, held until the session ends.
    pub permit: SessionSlot,
    /// The querier's standing after this session's charge.
    pub standing: Standing,
    /// Who the result goes to.
    pub recipients: Recipients,
    /// The job of buckets the session runs as; `None`: one protocol run.
    pub job: Option<crate::job::JobTerms>,
    /// Whether the client named the session (`job_id`): losing its connection then
    /// interrupts it, to resume, rather than ending it.
    pub named: bool,
    /// The totals of the buckets done before (`job.done` of them), for a resumed job.
    pub checkpoint: Option<Vec<u8>>,
    /// A released job's release, to send again (its client lost it): nothing runs.
    pub resend: Option<Vec<Vec<u8>>>,
}

/// The server's side of every session: its configuration, the concurrency slots and the
/// collaboration's budgets and query limits.
#[derive(Clone)]
pub(crate) struct Host {
    /// The server's configuration.
    pub config: Arc<ServerConfig>,
    sessions: SessionSlots,
    /// Budgets and query limits of the collaboration.
    policy: Arc<Policy>,
    /// What the server logs and counts.
    pub events: Arc<ServerEvents>,
}

fn new_session_id() -> Result<String, SessionError> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|e| SessionError::Internal(e.to_string()))?;
    Ok(hex::encode(bytes))
}

/// Runs a state database call on the blocking pool.
pub(crate) async fn state_call<T: Send + 'static>(
    state: &Arc<StateDb>,
    f: impl FnOnce(&StateDb) -> Result<T, StateError> + Send + 'static,
) -> Result<T, SessionError> {
    let state = Arc::clone(state);
    tokio::task::spawn_blocking(move || f(&state))
        .await
        .map_err(|e| SessionError::Internal(e.to_string()))?
        .map_err(SessionError::State)
}

impl Host {
    /// Sessions running now (admitted and not yet ended).
    pub(crate) fn running_sessions(&self) -> u32 {
        self.sessions.running()
    }

    /// The host of `config`'s sessions, with no session running and its metrics at zero.
    pub(crate) fn new(config: ServerConfig) -> Host {
        let sessions = SessionSlots::new(
            config.limits.max_concurrent_sessions,
            config.limits.sessions_per_member(),
        );
        let events = ServerEvents::new(
            Arc::new(Metrics::new()),
            Arc::clone(&config.state),
            config.collaboration.id(),
        );
        Host {
            policy: Arc::new(Policy::of(&config.collaboration)),
            config: Arc::new(config),
            sessions,
            events: Arc::new(events),
        }
    }

    /// The checks before any protocol message: identity, collaboration, rules (receivers
    /// included), terms, data, limits. Returns the server's plan, where its table is, and who
    /// the result goes to.
    pub(crate) fn admit(
        &self,
        member: &str,
        request: &SessionRequest<'_>,
    ) -> Result<(Plan, TableSpec, Recipients, Option<ChainSession>), SessionError> {
        let config = &self.config;
        if request.member != member {
            return Err(SessionError::PermissionDenied(format!(
                "the bearer token belongs to member {member:?}, not to {:?}",
                request.member
            )));
        }
        if request.collaboration_id != config.collaboration.id() {
            return Err(SessionError::InvalidArgument(format!(
                "this server is in collaboration {:?}, not {:?}",
                config.collaboration.id(),
                request.collaboration_id
            )));
        }
        if !request.chain_context.is_empty() {
            let (plan, path, recipients, chain) = self.admit_chain(member, request)?;
            return Ok((plan, path, recipients, Some(chain)));
        }
        let plan = config
            .collaboration
            .plan_for(member, request.sql, request.receivers)
            .map_err(SessionError::Refused)?;
        let recipients = Recipients::of(
            member,
            request.receivers,
            request.result_keys,
            request.buckets,
        )?;
        // Both sides must compute under the same terms, or the result is wrong without an
        // error: checked before anything about the data.
        super::check_agreement(
            &super::agreement(&config.collaboration, &plan),
            request.agreement,
            "the client",
        )
        .map_err(SessionError::AgreementDiffers)?;
        crate::job::check_requested(request.buckets).map_err(SessionError::InvalidArgument)?;
        crate::job::check_job_id(request.job_id).map_err(SessionError::InvalidArgument)?;
        let rows = self.check_querier_table(member, request, &plan)?;
        let path = self.served(&plan)?;
        // Fewer declared rows than the threshold cannot bring enough identifiers: refused here,
        // before anything is charged or any of this server's data moves.
        if plan.protocol() != Protocol::List {
            plan.check_querier_identifiers(rows)
                .map_err(SessionError::Refused)?;
        }
        Ok((plan, path, recipients, None))
    }

    /// The querier's table as the request declares it: the member's own, the one `plan` uses,
    /// with no more rows than this server and the member's quota accept. Returns its rows.
    pub(super) fn check_querier_table(
        &self,
        member: &str,
        request: &SessionRequest<'_>,
        plan: &Plan,
    ) -> Result<u64, SessionError> {
        let config = &self.config;
        let table = request.table.ok_or_else(|| {
            SessionError::InvalidArgument("the session start names no table".to_owned())
        })?;
        match config.collaboration.table(table.name) {
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
        Ok(table.rows)
    }

    /// The plan of `member`'s `sql` that this server would agree to in a session: the rules'
    /// plan from the server's own copy of the collaboration, whose other table is this server's
    /// and served by it. Reads no data, takes no slot, charges and records nothing.
    pub(crate) fn plan(&self, member: &str, sql: &str) -> Result<Plan, SessionError> {
        let plan = self
            .config
            .collaboration
            .plan(member, sql)
            .map_err(SessionError::Refused)?;
        self.served(&plan)?;
        Ok(plan)
    }

    /// Where this server's table of `plan` is: refused when the plan's other table belongs to
    /// another member, or is not one this server serves.
    fn served(&self, plan: &Plan) -> Result<TableSpec, SessionError> {
        let config = &self.config;
        let matcher = plan.matcher();
        if matcher.member != config.member {
            return Err(SessionError::InvalidArgument(format!(
                "table {:?} belongs to member {:?}; this server is member {:?}",
                matcher.table, matcher.member, config.member
            )));
        }
        config.data.get(&matcher.table).cloned().ok_or_else(|| {
            SessionError::InvalidArgument(format!(
                "this server does not serve table {:?}",
                matcher.table
            ))
        })
    }

    /// The rows `member` may bring to one session: its quota in the collaboration file, within
    /// the server's own limit.
    pub(crate) fn member_rows(&self, member: &str) -> u64 {
        self.config
            .collaboration
            .member(member)
            .map_or(0, |m| m.max_rows_per_session())
            .min(self.config.limits.max_rows_per_session)
    }

    /// Records the attempt of authenticated `member` and admits or refuses it. A refusal after
    /// the attempt was recorded is recorded too, and told to the session hook.
    pub(crate) async fn open(
        &self,
        member: &str,
        request: &SessionRequest<'_>,
    ) -> Result<Admitted, SessionError> {
        // A job this member named before is resumed rather than begun (its own entry, no
        // second charge); a name of another member's is not seen here at all.
        if let Ok(Some(name)) = crate::job::check_job_id(request.job_id) {
            let (collaboration_id, owner, name) = (
                self.config.collaboration.id().to_owned(),
                member.to_owned(),
                name.to_owned(),
            );
            let stored = state_call(&self.config.state, move |s| {
                s.find_job(&collaboration_id, &owner, &name)
            })
            .await?;
            if let Some(stored) = stored {
                return self.resume(member, request, stored).await;
            }
        }
        let session_id = new_session_id()?;
        let receiver_rows = request.rows();
        self.begin_attempt(&session_id, member, request).await?;
        // The member's own quota is checked before the server's total, so that a refusal tells
        // a member about its own sessions only (see `slots`).
        let admitted = match self.admit(member, request) {
            Ok((plan, path, recipients, chain)) => self
                .sessions
                .acquire(member)
                .map_err(|refusal| SessionError::ResourceExhausted(refusal.to_string()))
                .map(|permit| (plan, path, recipients, chain, permit)),
            Err(error) => Err(error),
        };
        // The charge comes last, once nothing else can refuse the session, and before the first
        // message that depends on this server's data: whatever becomes of the session, it
        // stays.
        let admitted = match admitted {
            Ok((plan, path, recipients, chain, permit)) => {
                let uses = chain
                    .as_ref()
                    .map_or_else(|| TableUse::of_plan(&plan), ChainSession::uses);
                self.charge(&session_id, &plan, &uses)
                    .await
                    .map(|standing| (plan, path, recipients, chain, permit, standing))
            }
            Err(error) => Err(error),
        };
        if let Ok((plan, ..)) = &admitted
            && let Some(privacy) = plan.privacy()
        {
            self.events
                .charged(plan.querier(), privacy.epsilon.as_f64());
        }
        match admitted {
            Ok((plan, matcher_path, recipients, chain, permit, standing)) => {
                let table = chain
                    .as_ref()
                    .map_or(plan.matcher().table.as_str(), ChainSession::table)
                    .to_owned();
                let id = session_id.clone();
                // The figure is informative: a failure to write it does not end the session.
                let _ = state_call(&self.config.state, move |s| {
                    s.record_matcher_skipped(&id, &table)
                })
                .await;
                // A result whose keys for other receivers came with the start (sealed over the
                // whole table's group sizes), and a list for other receivers (its release is
                // kept for them in one piece), run as one session.
                let job = match (plan.protocol(), &recipients.others) {
                    // A chain runs as one session (admission refused buckets and job names).
                    _ if chain.is_some() => None,
                    (_, OtherReceivers::Sealed(sealed)) if !sealed.is_empty() => None,
                    (cleanroom_rules::Protocol::List, OtherReceivers::KeysToFollow(names))
                        if !names.is_empty() =>
                    {
                        None
                    }
                    _ => crate::job::JobTerms::decide(
                        request.buckets,
                        receiver_rows,
                        self.config
                            .state
                            .table_checked(&plan.matcher().table)
                            .map(|(rows, _)| rows),
                        &self.config.limits,
                    ),
                };
                if let Some(job) = &job {
                    let (id, buckets) = (session_id.clone(), job.buckets);
                    // Informative, as the skipped rows above.
                    let _ = state_call(&self.config.state, move |s| s.record_buckets(&id, buckets))
                        .await;
                }
                let named = !request.job_id.is_empty();
                if named && let Err(error) = self.name_job(&session_id, request, job.as_ref()).await
                {
                    self.finish(&session_id, &error, Completion::default(), None)
                        .await;
                    return Err(error);
                }
                Ok(Admitted {
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
                    checkpoint: None,
                    resend: None,
                })
            }
            Err(error) => {
                self.finish(&session_id, &error, Completion::default(), None)
                    .await;
                Err(error)
            }
        }
    }

    /// Records admitted session `session_id` as the job the client named, with its terms.
    async fn name_job(
        &self,
        session_id: &str,
        request: &SessionRequest<'_>,
        job: Option<&crate::job::JobTerms>,
    ) -> Result<(), SessionError> {
        let (id, collaboration_id, member, name) = (
            session_id.to_owned(),
            self.config.collaboration.id().to_owned(),
            request.member.to_owned(),
            request.job_id.to_owned(),
        );
        let digest = request_digest(request);
        let (buckets, key) = job.map_or((1, None), |j| (j.buckets, Some(j.key.to_bytes())));
        state_call(&self.config.state, move |s| {
            s.record_job(&JobRecord {
                session_id: &id,
                collaboration_id: &collaboration_id,
                member: &member,
                job_id: &name,
                terms_digest: digest,
                buckets,
                bucket_key: key,
            })
        })
        .await
    }

    /// Resumes `member`'s named job `stored`: the request passes every check of admission,
    /// brings the job's terms, and finds it interrupted; then its entry runs again, with no
    /// charge, from the buckets done. A refusal is recorded as an attempt of its own.
    async fn resume(
        &self,
        member: &str,
        request: &SessionRequest<'_>,
        stored: StoredJob,
    ) -> Result<Admitted, SessionError> {
        let resumed = self.reopen(member, request, stored).await;
        if let Err(error) = &resumed {
            let session_id = new_session_id()?;
            self.begin_attempt(&session_id, member, request).await?;
            self.finish(&session_id, error, Completion::default(), None)
                .await;
        }
        resumed
    }

    /// Records the attempt `session_id` of authenticated `member` (`running`), with the rows
    /// its client declared.
    async fn begin_attempt(
        &self,
        session_id: &str,
        member: &str,
        request: &SessionRequest<'_>,
    ) -> Result<(), SessionError> {
        let (id, member, sql) = (
            session_id.to_owned(),
            member.to_owned(),
            request.sql.to_owned(),
        );
        let collaboration_id = self.config.collaboration.id().to_owned();
        let (receiver_rows, receiver_skipped) =
            (request.rows(), request.table.map_or(0, |t| t.skipped_rows));
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
    }

    async fn reopen(
        &self,
        member: &str,
        request: &SessionRequest<'_>,
        stored: StoredJob,
    ) -> Result<Admitted, SessionError> {
        let (plan, matcher_path, recipients, _) = self.admit(member, request)?;
        let (name, id) = (request.job_id, stored.session_id.clone());
        if request_digest(request)[..] != stored.terms_digest[..] {
            return Err(SessionError::JobTermsDiffer(format!(
                "job {name:?} (session {id}) was asked with other terms: another query, other \
                 receivers, another table or row count, or other collaboration terms; resume it \
                 with the same, or name a new job"
            )));
        }
        let resend = match stored.decision {
            Decision::Interrupted => None,
            Decision::Running => {
                return Err(SessionError::JobRunning(format!(
                    "job {name:?} (session {id}) is running on another connection; try again \
                     once that one is closed"
                )));
            }
            // The same release again: it tells nothing the first did not, and costs nothing.
            Decision::Released if stored.release.is_some() => stored.release,
            Decision::Released => {
                return Err(SessionError::JobEnded(format!(
                    "job {name:?} (session {id}) was released: its result was sent then, and \
                     is not kept to be sent again (a job of one bucket, or a list)"
                )));
            }
            // The stored reason stays in the audit log: it may hold this server's detail.
            ended => {
                return Err(SessionError::JobEnded(format!(
                    "job {name:?} (session {id}) ended {ended}: it cannot resume; name a new job"
                )));
            }
        };
        let job = match (stored.buckets, stored.bucket_key) {
            (1, _) => None,
            (buckets, Some(key)) => Some(crate::job::JobTerms {
                buckets,
                key: cleanroom_psi::bucket::BucketKey::from_bytes(key),
                done: match resend {
                    Some(_) => buckets,
                    None => stored.done.as_ref().map_or(0, |(done, _)| *done),
                },
            }),
            (_, None) => {
                return Err(SessionError::Internal(format!(
                    "job {name:?} has no bucket key"
                )));
            }
        };
        let permit = self
            .sessions
            .acquire(member)
            .map_err(|refusal| SessionError::ResourceExhausted(refusal.to_string()))?;
        let (policy, querier) = (Arc::clone(&self.policy), plan.querier().to_owned());
        let standing =
            state_call(&self.config.state, move |s| s.standing(&policy, &querier)).await?;
        let reopen_id = id.clone();
        if resend.is_none()
            && !state_call(&self.config.state, move |s| s.reopen_job(&reopen_id)).await?
        {
            return Err(SessionError::JobRunning(format!(
                "job {name:?} (session {id}) was resumed by another connection first"
            )));
        }
        Ok(Admitted {
            session_id: id,
            plan,
            matcher_path,
            chain: None,
            receiver_rows: request.rows(),
            permit,
            standing,
            recipients,
            job,
            named: true,
            checkpoint: match resend {
                Some(_) => None,
                None => stored.done.map(|(_, checkpoint)| checkpoint),
            },
            resend,
        })
    }

    /// Charges the querier for `plan` (its budget and query limits), in the same transaction
    /// that checks them: refused with [`StateError::Exhausted`] when they do not allow it.
    async fn charge(
        &self,
        session_id: &str,
        plan: &Plan,
        uses: &[TableUse],
    ) -> Result<Standing, SessionError> {
        let (id, policy, member, cost) = (
            session_id.to_owned(),
            Arc::clone(&self.policy),
            plan.querier().to_owned(),
            plan.privacy().map(|p| p.epsilon),
        );
        let uses = uses.to_vec();
        state_call(&self.config.state, move |s| {
            s.charge(&id, &policy, &member, cost, &uses)
        })
        .await
    }

    /// Records how a session ended without a release (after `duration`, when it was
    /// admitted) and tells the log, the metrics and the hook.
    pub(crate) async fn finish(
        &self,
        session_id: &str,
        error: &SessionError,
        completion: Completion,
        duration: Option<Duration>,
    ) {
        let (id, decision, reason) = (
            session_id.to_owned(),
            error.decision(),
            error.audit_reason(),
        );
        let recorded = state_call(&self.config.state, move |s| {
            s.finish(&id, decision, &reason, &completion)
        })
        .await;
        if let Err(error) = recorded {
            tracing::error!(
                target: "cleanroom::serve",
                event = "state_error",
                session_id,
                %error,
                "could not record the end of the session",
            );
        }
        self.tell(session_id, &error.reason_codes(), duration).await;
    }

    /// Tells the log, the metrics and the session hook, if there is one, how the session
    /// ended (refused for `reasons`, empty unless refused).
    pub(crate) async fn tell(
        &self,
        session_id: &str,
        reasons: &[&str],
        duration: Option<Duration>,
    ) {
        let id = session_id.to_owned();
        if let Ok(Some(entry)) = state_call(&self.config.state, move |s| s.entry(&id)).await {
            self.events.session_ended(&entry, reasons, duration);
            if let Some(hook) = &self.config.on_session_end {
                hook(&entry);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;
    use crate::listener::ConnectionLimits;
    use crate::state::Exhausted;
    use cleanroom_data::SourceOptions;
    use cleanroom_rules::{Collaboration, ReasonCode};
    use cleanroom_testkit::{
        ADVERTISER_TOKEN, ANALYST_TOKEN, CollaborationToml, MemberToml, PUBLISHER_TOKEN, TableToml,
    };
    use std::collections::BTreeMap;
    use tonic::Code;

    /// Per campaign, the advertiser's buyers among the publisher's impressions.
    const BY_CAMPAIGN: &str = "SELECT i.campaign, COUNT(DISTINCT c.email) AS buyers \
        FROM impressions i JOIN conversions c ON i.email = c.email GROUP BY i.campaign";

    /// A collaboration of a publisher (the server, no abilities), an advertiser who may query
    /// and bring 10 rows, and an analyst who may only receive results; `privacy` goes into the
    /// `[collaboration]` section.
    fn collaboration(privacy: &str) -> Collaboration {
        let toml = CollaborationToml::new("admission")
            .header(privacy)
            .member(MemberToml::new("publisher", PUBLISHER_TOKEN))
            .member(
                MemberToml::querier("advertiser", ADVERTISER_TOKEN)
                    .line("max_rows_per_session = 10"),
            )
            .member(MemberToml::new("analyst", ANALYST_TOKEN).abilities(&["receive_results"]))
            .table(
                TableToml::aggregation("impressions", "publisher", &["email", "campaign"])
                    .dimensions(&["campaign"]),
            )
            .table(TableToml::aggregation(
                "conversions",
                "advertiser",
                &["email", "amount"],
            ))
            .table(TableToml::aggregation("panel", "analyst", &["email"]))
            .render();
        Collaboration::from_toml_str(&toml, "admission.toml").unwrap()
    }

    /// The publisher's host of `collaboration`, with `limits` and a fresh state database in
    /// `dir`. Its table's file is never read: admission only looks it up.
    fn host(dir: &tempfile::TempDir, collaboration: Collaboration, limits: Limits) -> Host {
        let data = BTreeMap::from([(
            "impressions".to_owned(),
            TableSpec::new("impressions.csv", SourceOptions::default()),
        )]);
        Host::new(ServerConfig {
            collaboration: Arc::new(collaboration),
            member: "publisher".to_owned(),
            data,
            limits,
            connections: ConnectionLimits::default(),
            state: Arc::new(StateDb::open(dir.path().join("state.db")).unwrap()),
            tls: None,
            client_ca: None,
            insecure: false,
            on_session_end: None,
            work_dir: None,
            relay_key: None,
        })
    }

    /// `member`'s request for [`BY_CAMPAIGN`] to `host`, bringing `rows` rows of `table`,
    /// under the terms of `host`'s own collaboration (when the rules allow the query).
    fn request<'a>(host: &Host, member: &'a str, table: &'a str, rows: u64) -> SessionRequest<'a> {
        let collaboration = &host.config.collaboration;
        let agreement = collaboration
            .plan(member, BY_CAMPAIGN)
            .ok()
            .map(|plan| &*Box::leak(Box::new(super::super::agreement(collaboration, &plan))));
        SessionRequest {
            member,
            collaboration_id: "admission",
            sql: BY_CAMPAIGN,
            table: Some(DeclaredTable {
                name: table,
                rows,
                skipped_rows: 0,
            }),
            agreement,
            receivers: &[],
            result_keys: &[],
            buckets: 0,
            job_id: "",
            chain_context: &[],
        }
    }

    fn refusal(host: &Host, member: &str, request: &SessionRequest<'_>) -> SessionError {
        let Err(error) = host.admit(member, request) else {
            panic!("admission admits the session")
        };
        error
    }

    #[test]
    fn a_query_within_the_rules_is_admitted_with_the_servers_plan() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(&dir, collaboration(""), Limits::default());
        let (plan, path, recipients, _) = host
            .admit(
                "advertiser",
                &request(&host, "advertiser", "conversions", 10),
            )
            .unwrap();
        assert!(recipients.querier_receives);
        assert_eq!(recipients.others, OtherReceivers::Sealed(Vec::new()));
        assert_eq!(plan.matcher().table, "impressions");
        assert_eq!(plan.receiver().table, "conversions");
        assert_eq!(path, host.config.data["impressions"]);
    }

    #[test]
    fn an_unknown_table_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(&dir, collaboration(""), Limits::default());
        let error = refusal(
            &host,
            "advertiser",
            &request(&host, "advertiser", "orders", 10),
        );
        assert!(
            matches!(&error, SessionError::InvalidArgument(m) if m.contains("not in the collaboration")),
            "{error}"
        );
        assert_eq!(error.status().code(), Code::InvalidArgument);
        assert_eq!(error.decision(), Decision::Refused);
    }

    #[test]
    fn a_table_of_another_member_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(&dir, collaboration(""), Limits::default());
        let error = refusal(
            &host,
            "advertiser",
            &request(&host, "advertiser", "panel", 10),
        );
        assert_eq!(error.status().code(), Code::PermissionDenied, "{error}");
    }

    #[test]
    fn a_request_in_another_members_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(&dir, collaboration(""), Limits::default());
        let error = refusal(
            &host,
            "analyst",
            &request(&host, "advertiser", "conversions", 10),
        );
        assert!(
            matches!(error, SessionError::PermissionDenied(_)),
            "{error}"
        );
    }

    #[test]
    fn a_request_for_another_collaboration_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(&dir, collaboration(""), Limits::default());
        let mut other = request(&host, "advertiser", "conversions", 10);
        other.collaboration_id = "elsewhere";
        let error = refusal(&host, "advertiser", &other);
        assert!(matches!(error, SessionError::InvalidArgument(_)), "{error}");
    }

    #[test]
    fn a_request_without_a_table_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(&dir, collaboration(""), Limits::default());
        let mut bare = request(&host, "advertiser", "conversions", 10);
        bare.table = None;
        let error = refusal(&host, "advertiser", &bare);
        assert!(matches!(error, SessionError::InvalidArgument(_)), "{error}");
    }

    #[test]
    fn a_member_not_allowed_to_query_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(&dir, collaboration(""), Limits::default());
        let sql = BY_CAMPAIGN.replace("conversions c", "panel c");
        let mut asked = request(&host, "analyst", "panel", 10);
        asked.sql = &sql;
        let error = refusal(&host, "analyst", &asked);
        let SessionError::Refused(refusal) = &error else {
            panic!("not a refusal of the rules: {error}");
        };
        assert!(
            refusal
                .reasons
                .iter()
                .any(|r| r.code == ReasonCode::MissingQueryAbility),
            "{refusal}"
        );
        assert_eq!(error.status().code(), Code::PermissionDenied);
    }

    #[test]
    fn fewer_declared_rows_than_the_threshold_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(&dir, collaboration(""), Limits::default());
        let error = refusal(
            &host,
            "advertiser",
            &request(&host, "advertiser", "conversions", 2),
        );
        assert!(matches!(error, SessionError::Refused(_)), "{error}");
        assert_eq!(error.status().code(), Code::InvalidArgument);
    }

    #[test]
    fn more_rows_than_the_members_quota_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(&dir, collaboration(""), Limits::default());
        assert_eq!(host.member_rows("advertiser"), 10);
        let error = refusal(
            &host,
            "advertiser",
            &request(&host, "advertiser", "conversions", 11),
        );
        assert!(
            matches!(&error, SessionError::ResourceExhausted(m) if m.contains("max_rows_per_session")),
            "{error}"
        );
        assert_eq!(error.status().code(), Code::ResourceExhausted);
    }

    #[test]
    fn more_rows_than_the_server_accepts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_rows_per_session: 5,
            ..Limits::default()
        };
        let host = host(&dir, collaboration(""), limits);
        assert_eq!(host.member_rows("advertiser"), 5);
        let error = refusal(
            &host,
            "advertiser",
            &request(&host, "advertiser", "conversions", 6),
        );
        assert!(
            matches!(&error, SessionError::ResourceExhausted(m) if m.contains("this server accepts")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_query_over_the_budget_is_refused_at_admission_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let privacy = "[collaboration.privacy]\nepsilon_budget = 1.0\nepsilon_per_query = 1.0\n";
        let host = host(&dir, collaboration(privacy), Limits::default());
        let asked = request(&host, "advertiser", "conversions", 10);
        let first = host.open("advertiser", &asked).await.unwrap();
        assert_eq!(first.receiver_rows, 10);
        drop(first);
        let error = host
            .open("advertiser", &asked)
            .await
            .err()
            .expect("the budget is spent");
        assert!(
            matches!(
                error,
                SessionError::State(StateError::Exhausted(Exhausted::Budget { .. }))
            ),
            "{error}"
        );
        assert_eq!(error.status().code(), Code::ResourceExhausted);
        assert_eq!(error.decision(), Decision::Refused);
    }

    #[tokio::test]
    async fn a_refusal_after_the_attempt_is_recorded_in_the_audit_log() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(&dir, collaboration(""), Limits::default());
        let error = host
            .open("advertiser", &request(&host, "advertiser", "orders", 10))
            .await
            .err()
            .expect("refused");
        assert_eq!(error.decision(), Decision::Refused);
        let page = host
            .config
            .state
            .page(&crate::state::AuditQuery {
                collaboration_id: "admission".to_owned(),
                member: "advertiser".to_owned(),
                before: None,
                max_entries: 10,
                max_bytes: 1 << 20,
            })
            .unwrap();
        assert_eq!(page.entries.len(), 1);
        assert_eq!(page.entries[0].decision, Decision::Refused);
    }
}
