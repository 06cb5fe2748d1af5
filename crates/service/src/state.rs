//! The server's state database: a SQLite file (WAL journal, `synchronous=FULL`) holding the
//! audit log, one entry per query attempt.
//!
//! An entry is written when a session starts (`running`) and completed exactly once when it
//! ends. A release is committed, durably, *before* the release message leaves the server, so a
//! process killed at any moment leaves every released result in the log; entries of sessions
//! that were running when the process died are marked `interrupted` the next time the database
//! is opened for writing. Each change is a single SQLite transaction, so the log is always
//! consistent.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;

/// The schema version stored in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

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
    bytes_sent INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX IF NOT EXISTS audit_member ON audit (member, id);
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
}

impl AuditEntry {
    /// The wire form of this entry.
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
            matcher_rows: self.matcher_rows,
            receiver_rows: self.receiver_rows,
            bytes_received: self.bytes_received,
            bytes_sent: self.bytes_sent,
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
}

/// The server's state database. Safe to share between threads; every call is one short
/// transaction (run it off the async runtime, e.g. in `spawn_blocking`).
#[derive(Debug)]
pub struct StateDb {
    path: PathBuf,
    conn: Mutex<Connection>,
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
        Ok(StateDb {
            path,
            conn: Mutex::new(conn),
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
        if version != SCHEMA_VERSION {
            return Err(StateError::SchemaVersion {
                path,
                found: version,
            });
        }
        Ok(StateDb {
            path,
            conn: Mutex::new(conn),
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
            params![session_id, member, sql, to_i64(receiver_rows)],
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
        let changed = self
            .conn()
            .execute(
                &format!(
                    "UPDATE audit SET decision = ?2, reason = ?3, finished_at = {NOW},
                         released_rows = ?4, suppressed_rows = ?5, matcher_rows = ?6,
                         messages_received = ?7, messages_sent = ?8,
                         bytes_received = ?9, bytes_sent = ?10
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
                ],
            )
            .map_err(|e| self.sqlite(e))?;
        Ok(changed == 1)
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

const SELECT_ENTRY: &str = "SELECT id, session_id, started_at, finished_at, member, sql, decision,
    reason, released_rows, suppressed_rows, matcher_rows, receiver_rows, messages_received,
    messages_sent, bytes_received, bytes_sent FROM audit";

/// A row as SQLite returns it, before its values are checked.
struct RawEntry {
    session_id: String,
    started_at: String,
    finished_at: Option<String>,
    member: String,
    sql: String,
    decision: String,
    reason: String,
    counts: [i64; 8],
}

fn raw_entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawEntry> {
    let mut counts = [0i64; 8];
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
        }
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
