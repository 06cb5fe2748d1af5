//! The server's state database: a SQLite file (WAL journal, `synchronous=FULL`) holding the
//! audit log, one entry per query attempt, and the privacy ledger, one entry per released
//! query with the `ε` it spent.
//!
//! An entry is written when a session starts (`running`) and completed exactly once when it
//! ends. A release is committed, durably, *before* the release message leaves the server, so a
//! process killed at any moment leaves every released result in the log; entries of sessions
//! that were running when the process died are marked `interrupted` the next time the database
//! is opened for writing. Each change is a single SQLite transaction, so the log is always
//! consistent.
//!
//! A release is recorded by [`StateDb::release`], which in one `IMMEDIATE` transaction checks
//! the member's remaining budget and query limits, appends the ledger entry and marks the audit
//! entry released: two sessions of one member can never both spend the last of a budget, and a
//! budget spent survives any restart. The collaboration's [`Policy`] is recorded when a server
//! starts so that `cleanroom budget` can show what is left without the collaboration file.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use cleanroom_rules::{Ability, Collaboration, Epsilon};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

/// The schema version stored in `PRAGMA user_version` (2 added the ledger and the policy, 3
/// the skipped-row counts of the audit, 4 the bounded contributions; older files are upgraded
/// when opened for writing).
const SCHEMA_VERSION: i64 = 4;

/// Columns added after version 1, with their definitions (added to an older file on open).
const ADDED_AUDIT_COLUMNS: [(&str, &str); 4] = [
    ("matcher_skipped", "INTEGER NOT NULL DEFAULT 0"),
    ("receiver_skipped", "INTEGER NOT NULL DEFAULT 0"),
    ("bounded_identifiers", "INTEGER NOT NULL DEFAULT 0"),
    ("bounded_disclosed", "INTEGER NOT NULL DEFAULT 0"),
];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL UNIQUE,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    member TEXT NOT NULL,
    sql TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN
        ('running', 'refused', 'released', 'failed', 'cancelled', 'interrupted')),
    reason TEXT NOT NULL DEFAULT '',
    released_rows INTEGER NOT NULL DEFAULT 0,
    suppressed_rows INTEGER NOT NULL DEFAULT 0,
    matcher_rows INTEGER NOT NULL DEFAULT 0,
    receiver_rows INTEGER NOT NULL DEFAULT 0,
    messages_received INTEGER NOT NULL DEFAULT 0,
    messages_sent INTEGER NOT NULL DEFAULT 0,
    bytes_received INTEGER NOT NULL DEFAULT 0,
    bytes_sent INTEGER NOT NULL DEFAULT 0,
    matcher_skipped INTEGER NOT NULL DEFAULT 0,
    receiver_skipped INTEGER NOT NULL DEFAULT 0,
    bounded_identifiers INTEGER NOT NULL DEFAULT 0,
    bounded_disclosed INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX IF NOT EXISTS audit_member ON audit (member, id);
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL UNIQUE REFERENCES audit (session_id),
    collaboration_id TEXT NOT NULL,
    member TEXT NOT NULL,
    released_at TEXT NOT NULL,
    day TEXT NOT NULL,
    epsilon_micros INTEGER NOT NULL CHECK (epsilon_micros >= 0)
) STRICT;
CREATE INDEX IF NOT EXISTS ledger_member ON ledger (collaboration_id, member, day);
CREATE TABLE IF NOT EXISTS policy (
    collaboration_id TEXT PRIMARY KEY,
    epsilon_budget_micros INTEGER,
    epsilon_per_query_micros INTEGER,
    queries_per_member INTEGER,
    queries_per_member_per_day INTEGER,
    updated_at TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS policy_member (
    collaboration_id TEXT NOT NULL,
    member TEXT NOT NULL,
    PRIMARY KEY (collaboration_id, member)
) STRICT;
";

/// SQLite's current time as RFC 3339 UTC with milliseconds.
const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// What became of a query attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The session is still running (or the server died during it and the database has not
    /// been opened for writing since).
    Running,
    /// Refused before any protocol message was exchanged (authorization, rules or limits).
    Refused,
    /// A result was released to the querying member.
    Released,
    /// Failed before anything was released (protocol error, limit, timeout, server error).
    Failed,
    /// The client went away before anything was released.
    Cancelled,
    /// The server stopped during the session, before anything was released.
    Interrupted,
}

impl Decision {
    /// The name stored in the database and printed by `cleanroom audit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Running => "running",
            Decision::Refused => "refused",
            Decision::Released => "released",
            Decision::Failed => "failed",
            Decision::Cancelled => "cancelled",
            Decision::Interrupted => "interrupted",
        }
    }

    /// The wire enum of `cleanroom.v1.Decision`.
    pub fn to_proto(self) -> crate::proto::Decision {
        use crate::proto::Decision as P;
        match self {
            Decision::Running => P::Running,
            Decision::Refused => P::Refused,
            Decision::Released => P::Released,
            Decision::Failed => P::Failed,
            Decision::Cancelled => P::Cancelled,
            Decision::Interrupted => P::Interrupted,
        }
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Decision {
    type Err = StateError;

    fn from_str(s: &str) -> Result<Decision, StateError> {
        Ok(match s {
            "running" => Decision::Running,
            "refused" => Decision::Refused,
            "released" => Decision::Released,
            "failed" => Decision::Failed,
            "cancelled" => Decision::Cancelled,
            "interrupted" => Decision::Interrupted,
            other => return Err(StateError::Corrupt(format!("unknown decision {other:?}"))),
        })
    }
}

/// One query attempt, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// The session's identifier.
    pub session_id: String,
    /// When the attempt started (RFC 3339, UTC).
    pub started_at: String,
    /// When it ended (RFC 3339, UTC); `None` while running.
    pub finished_at: Option<String>,
    /// The authenticated member.
    pub member: String,
    /// The SQL as sent.
    pub sql: String,
    /// What became of it.
    pub decision: Decision,
    /// Why it was refused or failed; empty otherwise.
    pub reason: String,
    /// Output rows released.
    pub released_rows: u64,
    /// Output rows suppressed under the threshold.
    pub suppressed_rows: u64,
    /// Rows of the server's (matcher's) table processed.
    pub matcher_rows: u64,
    /// Rows of the querier's table, as declared by the client.
    pub receiver_rows: u64,
    /// Protocol messages received from the client.
    pub messages_received: u64,
    /// Protocol messages sent to the client.
    pub messages_sent: u64,
    /// Protocol bytes received from the client.
    pub bytes_received: u64,
    /// Protocol bytes sent to the client.
    pub bytes_sent: u64,
    /// Rows of the server's table never matched (NULL or empty identifier), counted over the
    /// whole table when the server started.
    pub matcher_skipped: u64,
    /// Rows of the querier's table never matched (NULL or empty identifier), as declared by
    /// the client.
    pub receiver_skipped: u64,
    /// Under differential privacy, the exact number of identifiers whose contributions the
    /// provider bounded to `max_groups_per_identifier` output rows: the provider's data, kept
    /// in its own audit log.
    pub bounded_identifiers: u64,
    /// The noisy figure of `bounded_identifiers` the querier was told.
    pub bounded_disclosed: u64,
}

impl AuditEntry {
    /// The wire form of this entry, as the querying member may read it: everything but the
    /// provider's row counts (processed and skipped), which are the provider's data and stay in
    /// its own audit log (`cleanroom audit` on the state database).
    pub fn to_proto(&self) -> crate::proto::AuditEntry {
        crate::proto::AuditEntry {
            session_id: self.session_id.clone(),
            started_at: self.started_at.clone(),
            finished_at: self.finished_at.clone().unwrap_or_default(),
            member: self.member.clone(),
            sql: self.sql.clone(),
            decision: self.decision.to_proto() as i32,
            reason: self.reason.clone(),
            released_rows: self.released_rows,
            suppressed_rows: self.suppressed_rows,
            receiver_rows: self.receiver_rows,
            bytes_received: self.bytes_received,
            bytes_sent: self.bytes_sent,
            receiver_skipped: self.receiver_skipped,
            bounded_disclosed: self.bounded_disclosed,
        }
    }
}

/// The final figures of a session, written when it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Completion {
    /// Output rows released.
    pub released_rows: u64,
    /// Output rows suppressed under the threshold.
    pub suppressed_rows: u64,
    /// Rows of the server's table processed.
    pub matcher_rows: u64,
    /// Protocol messages received.
    pub messages_received: u64,
    /// Protocol messages sent (counting the release message about to be sent).
    pub messages_sent: u64,
    /// Protocol bytes received.
    pub bytes_received: u64,
    /// Protocol bytes sent (counting the release message about to be sent).
    pub bytes_sent: u64,
    /// Identifiers whose contributions were bounded, exactly.
    pub bounded_identifiers: u64,
    /// The noisy figure of them the querier was told.
    pub bounded_disclosed: u64,
}

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

/// A state database that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// SQLite failed.
    #[error("state database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The file holds a newer schema than this program knows.
    #[error(
        "state database {path} has schema version {found}; this cleanroom knows {SCHEMA_VERSION}"
    )]
    SchemaVersion {
        /// The database file.
        path: PathBuf,
        /// The version found.
        found: i64,
    },
    /// A stored value is not what this program writes.
    #[error("state database holds an invalid value: {0}")]
    Corrupt(String),
    /// A session identifier was used twice.
    #[error("session {0} is already recorded")]
    DuplicateSession(String),
    /// The member's budget or query limits do not allow the release (nothing was recorded).
    #[error(transparent)]
    Exhausted(#[from] Exhausted),
}

/// The server's state database. Safe to share between threads; every call is one short
/// transaction (run it off the async runtime, e.g. in `spawn_blocking`).
#[derive(Debug)]
pub struct StateDb {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Per served table, its rows never matched (set when the server checked it).
    skipped: Mutex<std::collections::BTreeMap<String, u64>>,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> Result<u64, StateError> {
    u64::try_from(v).map_err(|_| StateError::Corrupt(format!("negative count {v}")))
}

impl StateDb {
    /// Opens (creating it if needed) the database at `path` for a server: WAL journal,
    /// `synchronous=FULL`, schema created, and entries left `running` by a previous process
    /// marked `interrupted`.
    pub fn open(path: impl AsRef<Path>) -> Result<StateDb, StateError> {
        let path = path.as_ref().to_path_buf();
        let err = |source| StateError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StateError::Corrupt(format!(
                "could not switch {} to WAL (journal mode {mode})",
                path.display()
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(err)?;
        if version > SCHEMA_VERSION {
            return Err(StateError::SchemaVersion {
                path,
                found: version,
            });
        }
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION};
             UPDATE audit SET decision = 'interrupted', finished_at = {NOW},
                 reason = 'the server stopped during the session'
             WHERE decision = 'running';
             COMMIT;"
        ))
        .map_err(err)?;
        for (column, definition) in ADDED_AUDIT_COLUMNS {
            let present: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM pragma_table_info('audit') WHERE name = ?1",
                    [column],
                    |row| row.get(0),
                )
                .map_err(err)?;
            if present == 0 {
                conn.execute_batch(&format!(
                    "ALTER TABLE audit ADD COLUMN {column} {definition};"
                ))
                .map_err(err)?;
            }
        }
        Ok(StateDb {
            path,
            conn: Mutex::new(conn),
            skipped: Mutex::default(),
        })
    }

    /// Opens an existing database read-only (for `cleanroom audit`, also while a server runs).
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<StateDb, StateError> {
        let path = path.as_ref().to_path_buf();
        let err = |source| StateError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(err)?;
        if !(1..=SCHEMA_VERSION).contains(&version) {
            return Err(StateError::SchemaVersion {
                path,
                found: version,
            });
        }
        Ok(StateDb {
            path,
            conn: Mutex::new(conn),
            skipped: Mutex::default(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (every change is one
        // transaction), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sqlite(&self, source: rusqlite::Error) -> StateError {
        StateError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Records the start of a query attempt (`running`).
    pub fn begin(
        &self,
        session_id: &str,
        member: &str,
        sql: &str,
        receiver_rows: u64,
    ) -> Result<(), StateError> {
        let result = self.conn().execute(
            &format!(
                "INSERT INTO audit (session_id, started_at, member, sql, decision, receiver_rows)
                 VALUES (?1, {NOW}, ?2, ?3, 'running', ?4)"
            ),
            params![session_id, member, stored_sql(sql), to_i64(receiver_rows)],
        );
        match result {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StateError::DuplicateSession(session_id.to_owned()))
            }
            Err(e) => Err(self.sqlite(e)),
        }
    }

    /// Notes how many rows of served `table` are never matched (its whole-table check at
    /// start-up), for the audit entries of the sessions that use it.
    pub fn set_table_skipped(&self, table: &str, skipped: u64) {
        self.skipped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(table.to_owned(), skipped);
    }

    /// The never-matched rows noted for served `table` by [`StateDb::set_table_skipped`], if
    /// it was checked in this process.
    pub fn table_skipped(&self, table: &str) -> Option<u64> {
        self.skipped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(table)
            .copied()
    }

    /// Records in `session_id`'s entry the querier's declared skipped rows.
    pub fn record_receiver_skipped(
        &self,
        session_id: &str,
        receiver_skipped: u64,
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "UPDATE audit SET receiver_skipped = ?2 WHERE session_id = ?1",
                params![session_id, to_i64(receiver_skipped)],
            )
            .map_err(|e| self.sqlite(e))?;
        Ok(())
    }

    /// Records in `session_id`'s entry the skipped rows of served `table` (see
    /// [`StateDb::set_table_skipped`]; 0 when it was not checked).
    pub fn record_matcher_skipped(&self, session_id: &str, table: &str) -> Result<(), StateError> {
        let skipped = self.table_skipped(table).unwrap_or(0);
        self.conn()
            .execute(
                "UPDATE audit SET matcher_skipped = ?2 WHERE session_id = ?1",
                params![session_id, to_i64(skipped)],
            )
            .map_err(|e| self.sqlite(e))?;
        Ok(())
    }

    /// Completes a running entry with its decision, reason and figures, durably. Returns
    /// `false` when the entry was already complete (for example released, then the connection
    /// broke): a completed entry is never changed again.
    pub fn finish(
        &self,
        session_id: &str,
        decision: Decision,
        reason: &str,
        completion: &Completion,
    ) -> Result<bool, StateError> {
        if decision == Decision::Running {
            return Err(StateError::Corrupt(
                "a session cannot finish as running".to_owned(),
            ));
        }
        self.complete_in(&self.conn(), session_id, decision, reason, completion)
    }

    /// Completes `session_id`'s running entry within `conn`'s current transaction: its
    /// decision, reason, end time and figures. `false` when it was no longer running.
    fn complete_in(
        &self,
        conn: &Connection,
        session_id: &str,
        decision: Decision,
        reason: &str,
        completion: &Completion,
    ) -> Result<bool, StateError> {
        let changed = conn
            .execute(
                &format!(
                    "UPDATE audit SET decision = ?2, reason = ?3, finished_at = {NOW},
                         released_rows = ?4, suppressed_rows = ?5, matcher_rows = ?6,
                         messages_received = ?7, messages_sent = ?8,
                         bytes_received = ?9, bytes_sent = ?10,
                         bounded_identifiers = ?11, bounded_disclosed = ?12
                     WHERE session_id = ?1 AND decision = 'running'"
                ),
                params![
                    session_id,
                    decision.as_str(),
                    reason,
                    to_i64(completion.released_rows),
                    to_i64(completion.suppressed_rows),
                    to_i64(completion.matcher_rows),
                    to_i64(completion.messages_received),
                    to_i64(completion.messages_sent),
                    to_i64(completion.bytes_received),
                    to_i64(completion.bytes_sent),
                    to_i64(completion.bounded_identifiers),
                    to_i64(completion.bounded_disclosed),
                ],
            )
            .map_err(|e| self.sqlite(e))?;
        Ok(changed == 1)
    }

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
    /// ledger entry of `session_id`, whose audit entry must be running. This happens at
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
        let after = self.standing_in(&tx, policy, member)?;
        tx.commit().map_err(|e| self.sqlite(e))?;
        Ok(after)
    }

    /// Records a release durably: completes the running entry of a charged session as
    /// released (the charge was made at admission, [`charge`](Self::charge)). Returns `false`
    /// when the entry was already complete or was never charged: nothing may be released then.
    pub fn release(&self, session_id: &str, completion: &Completion) -> Result<bool, StateError> {
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

    /// One entry by session identifier.
    pub fn entry(&self, session_id: &str) -> Result<Option<AuditEntry>, StateError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                &format!("{SELECT_ENTRY} WHERE session_id = ?1"),
                params![session_id],
                raw_entry,
            )
            .optional()
            .map_err(|e| self.sqlite(e))?;
        row.map(RawEntry::into_entry).transpose()
    }

    /// Entries in the order they started (oldest first), all members or only `member`'s; with
    /// `newest` the most recent `newest` entries only (still oldest first).
    pub fn entries(
        &self,
        member: Option<&str>,
        newest: Option<u32>,
    ) -> Result<Vec<AuditEntry>, StateError> {
        let conn = self.conn();
        let limit = newest.map_or(-1, i64::from);
        let mut stmt = conn
            .prepare(&format!(
                "SELECT * FROM ({SELECT_ENTRY} WHERE (?1 IS NULL OR member = ?1)
                     ORDER BY id DESC LIMIT ?2) ORDER BY id ASC"
            ))
            .map_err(|e| self.sqlite(e))?;
        let rows = stmt
            .query_map(params![member, limit], raw_entry)
            .map_err(|e| self.sqlite(e))?;
        let mut entries = Vec::new();
        for row in rows {
            entries.push(row.map_err(|e| self.sqlite(e))?.into_entry()?);
        }
        Ok(entries)
    }
}

/// The SQL as the audit stores it: whole up to the planner's limit
/// ([`MAX_QUERY_BYTES`](cleanroom_rules::MAX_QUERY_BYTES), which refuses anything longer), else
/// its first bytes and how long it was, so that a member cannot grow the database by sending
/// megabytes of SQL that is refused anyway.
fn stored_sql(sql: &str) -> std::borrow::Cow<'_, str> {
    let limit = cleanroom_rules::MAX_QUERY_BYTES;
    if sql.len() <= limit {
        return sql.into();
    }
    let mut end = limit;
    while !sql.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} bytes, cut at {limit}]", &sql[..end], sql.len()).into()
}

const SELECT_ENTRY: &str = "SELECT id, session_id, started_at, finished_at, member, sql, decision,
    reason, released_rows, suppressed_rows, matcher_rows, receiver_rows, messages_received,
    messages_sent, bytes_received, bytes_sent, matcher_skipped, receiver_skipped,
    bounded_identifiers, bounded_disclosed FROM audit";

/// A row as SQLite returns it, before its values are checked.
struct RawEntry {
    session_id: String,
    started_at: String,
    finished_at: Option<String>,
    member: String,
    sql: String,
    decision: String,
    reason: String,
    counts: [i64; 12],
}

fn raw_entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawEntry> {
    let mut counts = [0i64; 12];
    for (i, count) in counts.iter_mut().enumerate() {
        *count = row.get(8 + i)?;
    }
    Ok(RawEntry {
        session_id: row.get(1)?,
        started_at: row.get(2)?,
        finished_at: row.get(3)?,
        member: row.get(4)?,
        sql: row.get(5)?,
        decision: row.get(6)?,
        reason: row.get(7)?,
        counts,
    })
}

impl RawEntry {
    fn into_entry(self) -> Result<AuditEntry, StateError> {
        let [
            released_rows,
            suppressed_rows,
            matcher_rows,
            receiver_rows,
            messages_received,
            messages_sent,
            bytes_received,
            bytes_sent,
            matcher_skipped,
            receiver_skipped,
            bounded_identifiers,
            bounded_disclosed,
        ] = self.counts;
        Ok(AuditEntry {
            session_id: self.session_id,
            started_at: self.started_at,
            finished_at: self.finished_at,
            member: self.member,
            sql: self.sql,
            decision: self.decision.parse()?,
            reason: self.reason,
            released_rows: to_u64(released_rows)?,
            suppressed_rows: to_u64(suppressed_rows)?,
            matcher_rows: to_u64(matcher_rows)?,
            receiver_rows: to_u64(receiver_rows)?,
            messages_received: to_u64(messages_received)?,
            messages_sent: to_u64(messages_sent)?,
            bytes_received: to_u64(bytes_received)?,
            bytes_sent: to_u64(bytes_sent)?,
            matcher_skipped: to_u64(matcher_skipped)?,
            receiver_skipped: to_u64(receiver_skipped)?,
            bounded_identifiers: to_u64(bounded_identifiers)?,
            bounded_disclosed: to_u64(bounded_disclosed)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(released: u64, suppressed: u64) -> Completion {
        Completion {
            released_rows: released,
            suppressed_rows: suppressed,
            matcher_rows: 500,
            messages_received: 3,
            messages_sent: 4,
            bytes_received: 1000,
            bytes_sent: 2000,
            ..Completion::default()
        }
    }

    #[test]
    fn stored_sql_is_bounded_by_the_planners_limit() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path().join("state.db")).unwrap();
        let huge = format!("SELECT {}", "é".repeat(2 << 20));
        db.begin("big", "advertiser", &huge, 1).unwrap();
        db.begin("small", "advertiser", "SELECT 1", 1).unwrap();
        let big = db.entry("big").unwrap().unwrap().sql;
        assert!(
            big.len() < cleanroom_rules::MAX_QUERY_BYTES + 64,
            "{}",
            big.len()
        );
        assert!(big.ends_with(&format!("[{} bytes, cut at 16384]", huge.len())));
        assert_eq!(db.entry("small").unwrap().unwrap().sql, "SELECT 1");
    }

    #[test]
    fn lifecycle_and_no_overwrite_after_completion() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path().join("state.db")).unwrap();
        db.begin("s1", "advertiser", "SELECT 1", 42).unwrap();
        let running = db.entry("s1").unwrap().unwrap();
        assert_eq!(running.decision, Decision::Running);
        assert_eq!(running.receiver_rows, 42);
        assert_eq!(running.finished_at, None);

        assert!(
            db.finish("s1", Decision::Released, "", &completion(3, 2))
                .unwrap()
        );
        // A later failure (say, the connection broke after the release) changes nothing.
        assert!(
            !db.finish("s1", Decision::Failed, "broken pipe", &completion(0, 0))
                .unwrap()
        );
        let done = db.entry("s1").unwrap().unwrap();
        assert_eq!(done.decision, Decision::Released);
        assert_eq!(done.released_rows, 3);
        assert_eq!(done.suppressed_rows, 2);
        assert_eq!(done.matcher_rows, 500);
        assert_eq!(done.bytes_sent, 2000);
        assert_eq!(done.reason, "");
        assert!(done.finished_at.is_some());
        assert!(matches!(
            db.begin("s1", "advertiser", "SELECT 2", 0),
            Err(StateError::DuplicateSession(_))
        ));
    }

    #[test]
    fn running_entries_become_interrupted_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let db = StateDb::open(&path).unwrap();
            db.begin("a", "m1", "q1", 1).unwrap();
            db.begin("b", "m2", "q2", 2).unwrap();
            db.finish("b", Decision::Refused, "no", &Completion::default())
                .unwrap();
        }
        let db = StateDb::open(&path).unwrap();
        let all = db.entries(None, None).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].session_id, "a");
        assert_eq!(all[0].decision, Decision::Interrupted);
        assert_eq!(all[1].decision, Decision::Refused);
        assert_eq!(all[1].reason, "no");

        let ro = StateDb::open_read_only(&path).unwrap();
        let m2 = ro.entries(Some("m2"), None).unwrap();
        assert_eq!(m2.len(), 1);
        assert_eq!(m2[0].sql, "q2");
        let newest = ro.entries(None, Some(1)).unwrap();
        assert_eq!(newest.len(), 1);
        assert_eq!(newest[0].session_id, "b");
    }

    fn policy(budget: Option<u64>, total: Option<u64>, daily: Option<u64>) -> Policy {
        Policy {
            collaboration_id: "c".into(),
            epsilon_budget: budget.map(Epsilon::from_micros),
            epsilon_per_query: budget.map(|_| Epsilon::from_micros(400_000)),
            queries_per_member: total,
            queries_per_member_per_day: daily,
            members: vec!["adv".into(), "other".into()],
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
                db.begin(id, "adv", "q", 10).unwrap();
                let after = db.charge(id, &p, "adv", cost).unwrap();
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
            assert!(db.charge("s2", &p, "adv", cost).is_err());
            // An entry that was never charged cannot be released.
            db.begin("free", "adv", "q", 10).unwrap();
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
        db.begin("s3", "adv", "q", 10).unwrap();
        let err = db.charge("s3", &p, "adv", cost).unwrap_err();
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
        db.begin("a", "adv", "q", 1).unwrap();
        db.charge("a", &daily, "adv", None).unwrap();
        db.begin("b", "adv", "q", 1).unwrap();
        assert!(matches!(
            db.charge("b", &daily, "adv", None),
            Err(StateError::Exhausted(Exhausted::QueriesToday {
                used: 1,
                limit: 1,
                ..
            }))
        ));
        // Another member is not affected.
        db.begin("c", "other", "q", 1).unwrap();
        assert!(db.charge("c", &daily, "other", None).is_ok());
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

    #[test]
    fn a_version_1_file_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT,
                     session_id TEXT NOT NULL UNIQUE, started_at TEXT NOT NULL,
                     finished_at TEXT, member TEXT NOT NULL, sql TEXT NOT NULL,
                     decision TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
                     released_rows INTEGER NOT NULL DEFAULT 0,
                     suppressed_rows INTEGER NOT NULL DEFAULT 0,
                     matcher_rows INTEGER NOT NULL DEFAULT 0,
                     receiver_rows INTEGER NOT NULL DEFAULT 0,
                     messages_received INTEGER NOT NULL DEFAULT 0,
                     messages_sent INTEGER NOT NULL DEFAULT 0,
                     bytes_received INTEGER NOT NULL DEFAULT 0,
                     bytes_sent INTEGER NOT NULL DEFAULT 0) STRICT;
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        assert!(
            StateDb::open_read_only(&path)
                .unwrap()
                .standings()
                .unwrap()
                .is_empty()
        );
        let db = StateDb::open(&path).unwrap();
        db.record_policy(&policy(None, None, None)).unwrap();
        assert_eq!(db.standings().unwrap().len(), 2);
    }

    #[test]
    fn wal_mode_is_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let _db = StateDb::open(&path).unwrap();
        let conn = Connection::open(&path).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn read_only_open_of_missing_file_fails() {
        let dir = tempfile::tempdir().unwrap();
        assert!(StateDb::open_read_only(dir.path().join("missing.db")).is_err());
    }
}
