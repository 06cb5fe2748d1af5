//! The privacy ledger and the collaboration's policy: what each member may spend, what it spent.

use cleanroom_rules::{Ability, Collaboration, Epsilon};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use super::{Completion, Decision, Delivery, NOW, StateDb, StateError, TableUse, to_i64, to_u64};

/// What a collaboration allows each querying member, as the server enforces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The collaboration.
    pub collaboration_id: String,
    /// The `ε` each member may spend in total; `None` without differential privacy.
    pub epsilon_budget: Option<Epsilon>,
    /// The `ε` one aggregation query spends; `None` without differential privacy.
    pub epsilon_per_query: Option<Epsilon>,
    /// Released queries per member over the collaboration; `None`: no limit.
    pub queries_per_member: Option<u64>,
    /// Released queries per member per UTC day; `None`: no limit.
    pub queries_per_member_per_day: Option<u64>,
    /// The members that may query.
    pub members: Vec<String>,
    /// The member who pays for every query (`payer`); `None`: each querier pays.
    pub payer: Option<String>,
}

impl Policy {
    /// The policy of `collaboration`'s file: its privacy section, its limits and the members
    /// with the `query` ability.
    pub fn of(collaboration: &Collaboration) -> Policy {
        let privacy = collaboration.privacy();
        let limits = collaboration.query_limits();
        Policy {
            collaboration_id: collaboration.id().to_owned(),
            epsilon_budget: privacy.map(|p| p.epsilon_budget()),
            epsilon_per_query: privacy.map(|p| p.epsilon_per_query()),
            queries_per_member: limits.per_member(),
            queries_per_member_per_day: limits.per_member_per_day(),
            members: collaboration
                .members()
                .iter()
                .filter(|m| m.can(Ability::Query))
                .map(|m| m.name().to_owned())
                .collect(),
            payer: collaboration.payer().map(str::to_owned),
        }
    }
}

/// A member's standing in a collaboration: what it spent and what is left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Standing {
    /// The collaboration.
    pub collaboration_id: String,
    /// The member.
    pub member: String,
    /// `ε` spent by released queries.
    pub epsilon_spent: Epsilon,
    /// The budget; `None` without differential privacy.
    pub epsilon_budget: Option<Epsilon>,
    /// `ε` left; `None` without differential privacy.
    pub epsilon_remaining: Option<Epsilon>,
    /// Queries released to the member.
    pub queries: u64,
    /// Of those, released today (UTC).
    pub queries_today: u64,
    /// The limit on released queries; `None`: no limit.
    pub queries_per_member: Option<u64>,
    /// The limit on released queries per UTC day; `None`: no limit.
    pub queries_per_member_per_day: Option<u64>,
}

impl Standing {
    fn new(
        collaboration_id: String,
        member: String,
        limits: (Option<Epsilon>, Option<u64>, Option<u64>),
        usage: (u64, u64, u64),
    ) -> Standing {
        let (epsilon_budget, queries_per_member, queries_per_member_per_day) = limits;
        let (spent, queries, queries_today) = usage;
        Standing {
            collaboration_id,
            member,
            epsilon_spent: Epsilon::from_micros(spent),
            epsilon_budget,
            epsilon_remaining: epsilon_budget
                .map(|b| Epsilon::from_micros(b.micros().saturating_sub(spent))),
            queries,
            queries_today,
            queries_per_member,
            queries_per_member_per_day,
        }
    }

    /// Whether one more query costing `cost` is allowed.
    pub fn admits(&self, cost: Option<Epsilon>) -> Result<(), Exhausted> {
        if let Some(limit) = self.queries_per_member
            && self.queries >= limit
        {
            return Err(Exhausted::Queries {
                member: self.member.clone(),
                used: self.queries,
                limit,
            });
        }
        if let Some(limit) = self.queries_per_member_per_day
            && self.queries_today >= limit
        {
            return Err(Exhausted::QueriesToday {
                member: self.member.clone(),
                used: self.queries_today,
                limit,
            });
        }
        if let (Some(cost), Some(budget), Some(remaining)) =
            (cost, self.epsilon_budget, self.epsilon_remaining)
            && cost > remaining
        {
            return Err(Exhausted::Budget {
                member: self.member.clone(),
                cost,
                spent: self.epsilon_spent,
                budget,
                remaining,
            });
        }
        Ok(())
    }
}

/// Why a member may not have one more query released.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Exhausted {
    /// The query's `ε` exceeds what is left of the member's budget.
    #[error(
        "privacy budget exhausted: this query costs epsilon {cost}, and member {member:?} has \
         {remaining} left of its budget of {budget} (spent {spent})"
    )]
    Budget {
        /// The member.
        member: String,
        /// The query's cost.
        cost: Epsilon,
        /// Spent so far.
        spent: Epsilon,
        /// The budget.
        budget: Epsilon,
        /// What is left.
        remaining: Epsilon,
    },
    /// The member reached `queries_per_member`.
    #[error(
        "query limit reached: member {member:?} has had {used} queries released, the \
         collaboration's limit (queries_per_member = {limit})"
    )]
    Queries {
        /// The member.
        member: String,
        /// Queries released.
        used: u64,
        /// The limit.
        limit: u64,
    },
    /// The member reached `queries_per_member_per_day` today (UTC).
    #[error(
        "daily query limit reached: member {member:?} has had {used} queries released today \
         (UTC), the collaboration's limit (queries_per_member_per_day = {limit})"
    )]
    QueriesToday {
        /// The member.
        member: String,
        /// Queries released today.
        used: u64,
        /// The limit.
        limit: u64,
    },
}

impl StateDb {
    /// Records `policy` as the one in force for its collaboration (for `cleanroom budget`).
    pub fn record_policy(&self, policy: &Policy) -> Result<(), StateError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.sqlite(e))?;
        let id = &policy.collaboration_id;
        let micros = |e: Option<Epsilon>| e.map(|e| to_i64(e.micros()));
        tx.execute(
            &format!(
                "INSERT INTO policy (collaboration_id, epsilon_budget_micros,
                     epsilon_per_query_micros, queries_per_member, queries_per_member_per_day,
                     updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, {NOW})
                 ON CONFLICT (collaboration_id) DO UPDATE SET
                     epsilon_budget_micros = ?2, epsilon_per_query_micros = ?3,
                     queries_per_member = ?4, queries_per_member_per_day = ?5,
                     updated_at = {NOW}"
            ),
            params![
                id,
                micros(policy.epsilon_budget),
                micros(policy.epsilon_per_query),
                policy.queries_per_member.map(to_i64),
                policy.queries_per_member_per_day.map(to_i64),
            ],
        )
        .map_err(|e| self.sqlite(e))?;
        tx.execute(
            "DELETE FROM policy_member WHERE collaboration_id = ?1",
            params![id],
        )
        .map_err(|e| self.sqlite(e))?;
        for member in &policy.members {
            tx.execute(
                "INSERT INTO policy_member (collaboration_id, member) VALUES (?1, ?2)",
                params![id, member],
            )
            .map_err(|e| self.sqlite(e))?;
        }
        tx.commit().map_err(|e| self.sqlite(e))
    }

    /// `member`'s standing under `policy`: what its released queries spent.
    pub fn standing(&self, policy: &Policy, member: &str) -> Result<Standing, StateError> {
        self.standing_in(&self.conn(), policy, member)
    }

    /// [`standing`](Self::standing), read within `conn`'s current transaction.
    fn standing_in(
        &self,
        conn: &Connection,
        policy: &Policy,
        member: &str,
    ) -> Result<Standing, StateError> {
        let (spent, queries, today): (i64, i64, i64) = conn
            .query_row(
                "SELECT COALESCE(SUM(epsilon_micros), 0), COUNT(*),
                     COALESCE(SUM(day = date('now')), 0)
                 FROM ledger WHERE collaboration_id = ?1 AND member = ?2",
                params![policy.collaboration_id, member],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .map_err(|e| self.sqlite(e))?;
        Ok(Standing::new(
            policy.collaboration_id.clone(),
            member.to_owned(),
            (
                policy.epsilon_budget,
                policy.queries_per_member,
                policy.queries_per_member_per_day,
            ),
            (to_u64(spent)?, to_u64(queries)?, to_u64(today)?),
        ))
    }

    /// Charges an admitted session, in one transaction: checks that `policy` allows `member`
    /// one more query costing `cost` (`None` for an exact or list query) and appends the
    /// ledger entry of `session_id`, whose audit entry must be running; the audit entry gets
    /// its payer (`policy.payer`, else `member`), its one bucket, and the tables it `uses`
    /// (for the contributors' log). This happens at
    /// admission, before the first message that depends on the provider's data: whatever
    /// becomes of the session afterwards (released, failed, cancelled, interrupted), the charge
    /// stays. Returns the member's standing after the charge. When the budget or a limit does
    /// not allow it, nothing is recorded and the error is [`StateError::Exhausted`].
    pub fn charge(
        &self,
        session_id: &str,
        policy: &Policy,
        member: &str,
        cost: Option<Epsilon>,
        uses: &[TableUse],
    ) -> Result<Standing, StateError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.sqlite(e))?;
        let running = tx
            .query_row(
                "SELECT 1 FROM audit WHERE session_id = ?1 AND decision = 'running'",
                params![session_id],
                |_| Ok(()),
            )
            .optional()
            .map_err(|e| self.sqlite(e))?
            .is_some();
        if !running {
            return Err(StateError::Corrupt(format!(
                "session {session_id} is not running: it cannot be charged"
            )));
        }
        self.standing_in(&tx, policy, member)?.admits(cost)?;
        let micros = cost.map_or(0, Epsilon::micros);
        tx.execute(
            &format!(
                "INSERT INTO ledger (session_id, collaboration_id, member, released_at, day,
                     epsilon_micros)
                 VALUES (?1, ?2, ?3, {NOW}, date('now'), ?4)"
            ),
            params![session_id, policy.collaboration_id, member, to_i64(micros)],
        )
        .map_err(|e| self.sqlite(e))?;
        let payer = policy.payer.as_deref().unwrap_or(member);
        tx.execute(
            "UPDATE audit SET payer = ?2, buckets = 1 WHERE session_id = ?1",
            params![session_id, payer],
        )
        .map_err(|e| self.sqlite(e))?;
        self.record_uses_in(&tx, session_id, uses)?;
        let after = self.standing_in(&tx, policy, member)?;
        tx.commit().map_err(|e| self.sqlite(e))?;
        Ok(after)
    }

    /// Records a release durably: completes the running entry of a charged session as
    /// released (the charge was made at admission, [`charge`](Self::charge)). Returns `false`
    /// when the entry was already complete or was never charged: nothing may be released then.
    pub fn release(&self, session_id: &str, completion: &Completion) -> Result<bool, StateError> {
        self.release_delivering(session_id, completion, &[], None)
    }

    /// [`release`](Self::release), keeping in the same transaction the result of each receiver
    /// other than the querier ([`Delivery`]) and, for a named job, the querier's own
    /// (`job_release`, to send again to a resume that lost it): a kept result exists exactly
    /// when the release is recorded.
    pub fn release_delivering(
        &self,
        session_id: &str,
        completion: &Completion,
        deliveries: &[Delivery],
        job_release: Option<&[Vec<u8>]>,
    ) -> Result<bool, StateError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.sqlite(e))?;
        let charged = tx
            .query_row(
                "SELECT 1 FROM ledger WHERE session_id = ?1",
                params![session_id],
                |_| Ok(()),
            )
            .optional()
            .map_err(|e| self.sqlite(e))?
            .is_some();
        if !charged || !self.complete_in(&tx, session_id, Decision::Released, "", completion)? {
            return Ok(false);
        }
        self.insert_deliveries(&tx, session_id, deliveries)?;
        if let Some(messages) = job_release {
            tx.execute(
                "UPDATE job SET release = ?2 WHERE session_id = ?1",
                rusqlite::params![session_id, super::delivery::pack(messages)],
            )
            .map_err(|e| self.sqlite(e))?;
        }
        tx.commit().map_err(|e| self.sqlite(e))?;
        Ok(true)
    }

    /// Every member's standing in every collaboration this database served: the members that
    /// may query under the last recorded policy, and every member with a released query.
    pub fn standings(&self) -> Result<Vec<Standing>, StateError> {
        let conn = self.conn();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|e| self.sqlite(e))?;
        if version < 2 {
            return Ok(Vec::new());
        }
        let mut stmt = conn
            .prepare(
                "SELECT m.collaboration_id, m.member, p.epsilon_budget_micros,
                     p.queries_per_member, p.queries_per_member_per_day,
                     (SELECT COALESCE(SUM(epsilon_micros), 0) FROM ledger l
                         WHERE l.collaboration_id = m.collaboration_id AND l.member = m.member),
                     (SELECT COUNT(*) FROM ledger l
                         WHERE l.collaboration_id = m.collaboration_id AND l.member = m.member),
                     (SELECT COUNT(*) FROM ledger l
                         WHERE l.collaboration_id = m.collaboration_id AND l.member = m.member
                         AND l.day = date('now'))
                 FROM (SELECT collaboration_id, member FROM policy_member
                       UNION SELECT collaboration_id, member FROM ledger) m
                 LEFT JOIN policy p ON p.collaboration_id = m.collaboration_id
                 ORDER BY m.collaboration_id, m.member",
            )
            .map_err(|e| self.sqlite(e))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    [row.get::<_, Option<i64>>(2)?, row.get(3)?, row.get(4)?],
                    [row.get::<_, i64>(5)?, row.get(6)?, row.get(7)?],
                ))
            })
            .map_err(|e| self.sqlite(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (collaboration_id, member, [budget, total, daily], [spent, queries, today]) =
                row.map_err(|e| self.sqlite(e))?;
            let opt = |v: Option<i64>| v.map(to_u64).transpose();
            out.push(Standing::new(
                collaboration_id,
                member,
                (
                    opt(budget)?.map(Epsilon::from_micros),
                    opt(total)?,
                    opt(daily)?,
                ),
                (to_u64(spent)?, to_u64(queries)?, to_u64(today)?),
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::state::audit::tests::completion;
    use crate::state::*;

    pub(crate) fn policy(budget: Option<u64>, total: Option<u64>, daily: Option<u64>) -> Policy {
        Policy {
            collaboration_id: "c".into(),
            epsilon_budget: budget.map(Epsilon::from_micros),
            epsilon_per_query: budget.map(|_| Epsilon::from_micros(400_000)),
            queries_per_member: total,
            queries_per_member_per_day: daily,
            members: vec!["adv".into(), "other".into()],
            payer: None,
        }
    }

    #[test]
    fn admissions_charge_the_budget_atomically_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let p = policy(Some(1_000_000), None, None);
        let cost = Some(Epsilon::from_micros(400_000));
        {
            let db = StateDb::open(&path).unwrap();
            db.record_policy(&p).unwrap();
            for id in ["s1", "s2"] {
                db.begin(&attempt(id, "adv", "q", 10)).unwrap();
                let after = db.charge(id, &p, "adv", cost, &[]).unwrap();
                assert_eq!(after.member, "adv");
            }
            // s1 is released; s2 fails after admission and keeps its charge.
            assert!(db.release("s1", &completion(1, 0)).unwrap());
            assert!(
                db.finish("s2", Decision::Cancelled, "gone", &completion(0, 0))
                    .unwrap()
            );
            // A completed entry is never released (or charged) again.
            assert!(!db.release("s1", &completion(1, 0)).unwrap());
            assert!(!db.release("s2", &completion(1, 0)).unwrap());
            assert!(db.charge("s2", &p, "adv", cost, &[]).is_err());
            // An entry that was never charged cannot be released.
            db.begin(&attempt("free", "adv", "q", 10)).unwrap();
            assert!(!db.release("free", &completion(1, 0)).unwrap());
            assert!(
                db.finish("free", Decision::Failed, "x", &completion(0, 0))
                    .unwrap()
            );
        }
        let db = StateDb::open(&path).unwrap();
        let standing = db.standing(&p, "adv").unwrap();
        assert_eq!(standing.epsilon_spent, Epsilon::from_micros(800_000));
        assert_eq!(
            standing.epsilon_remaining,
            Some(Epsilon::from_micros(200_000))
        );
        assert_eq!(standing.queries, 2);
        // The third query would exceed the budget: refused, nothing recorded.
        db.begin(&attempt("s3", "adv", "q", 10)).unwrap();
        let err = db.charge("s3", &p, "adv", cost, &[]).unwrap_err();
        let StateError::Exhausted(exhausted) = err else {
            panic!("{err}")
        };
        assert_eq!(
            exhausted.to_string(),
            "privacy budget exhausted: this query costs epsilon 0.4, and member \"adv\" has \
             0.2 left of its budget of 1 (spent 0.8)"
        );
        assert_eq!(db.entry("s3").unwrap().unwrap().decision, Decision::Running);
        assert_eq!(db.standing(&p, "adv").unwrap().queries, 2);
        // Every member that may query is listed, spent or not.
        let all = StateDb::open_read_only(&path).unwrap().standings().unwrap();
        let summary: Vec<(&str, u64, Option<Epsilon>)> = all
            .iter()
            .map(|s| (s.member.as_str(), s.queries, s.epsilon_remaining))
            .collect();
        assert_eq!(
            summary,
            [
                ("adv", 2, Some(Epsilon::from_micros(200_000))),
                ("other", 0, Some(Epsilon::from_micros(1_000_000)))
            ]
        );
    }

    #[test]
    fn query_limits_count_admitted_queries() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path().join("state.db")).unwrap();
        let daily = policy(None, Some(5), Some(1));
        db.begin(&attempt("a", "adv", "q", 1)).unwrap();
        db.charge("a", &daily, "adv", None, &[]).unwrap();
        db.begin(&attempt("b", "adv", "q", 1)).unwrap();
        assert!(matches!(
            db.charge("b", &daily, "adv", None, &[]),
            Err(StateError::Exhausted(Exhausted::QueriesToday {
                used: 1,
                limit: 1,
                ..
            }))
        ));
        // Another member is not affected.
        db.begin(&attempt("c", "other", "q", 1)).unwrap();
        assert!(db.charge("c", &daily, "other", None, &[]).is_ok());
        let total = policy(None, Some(1), None);
        assert!(matches!(
            db.standing(&total, "adv").unwrap().admits(None),
            Err(Exhausted::Queries {
                used: 1,
                limit: 1,
                ..
            })
        ));
    }
}
