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
//!
//! The charge also records what the session will use and who pays for it: the payer (the
//! collaboration's `payer`, else the querier), the session's one bucket of work, and each table
//! it reads with the columns it reads ([`TableUse`]). The end of the session adds the rows read
//! on each side, the bytes on the wire and the server's compute time. [`StateDb::usage`] sums
//! these per day and payer (`cleanroom usage`); [`StateDb::contributions`] lists the entries
//! that used one member's tables (`cleanroom audit --contributor`).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

mod audit;
mod delivery;
mod failed_auth;
mod job;
mod ledger;
mod usage;

pub use audit::{Attempt, AuditCursor, AuditEntry, AuditPage, AuditQuery, Completion, Decision};
pub use delivery::{DeliveredResult, Delivery};
pub use failed_auth::{FailedAuthentication, FailedAuthenticationKey};
pub use job::{ExpiredJobs, JobRecord, StoredJob};
pub use ledger::{Exhausted, Policy, Standing};
pub use usage::{Contribution, TableUse, UsageLine};

/// The schema version stored in `PRAGMA user_version` (2 added the ledger and the policy, 3
/// the skipped-row counts of the audit, 4 the bounded contributions, 5 the collaboration of
/// each audit entry, 6 the failed authentications, 7 the payer, compute time and buckets of
/// each audit entry, the tables each session used, and the results kept for receivers other
/// than the querier, 8 the buckets done of each entry, 9 the totals of each job not released, 10 the
/// jobs named to be resumed, 11 the decision `filtered` of a chain's filter; older files are
/// upgraded when opened for writing).
const SCHEMA_VERSION: i64 = 11;

/// Lets a file of version 10 or older record the decision `filtered` (version 11): its audit
/// table's `CHECK` lists the decisions, and SQLite changes a constraint only by editing the
/// schema's text, as its documentation prescribes for loosening one (ALTER TABLE, section 7):
/// one more value allowed, no row to rewrite, the schema's version bumped in the same
/// transaction.
fn widen_decisions(conn: &Connection) -> Result<(), rusqlite::Error> {
    let sql: String = conn.query_row(
        "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'audit'",
        [],
        |row| row.get(0),
    )?;
    // Version 1 wrote no CHECK at all: nothing to widen.
    if sql.contains("'filtered'") || !sql.contains("CHECK (decision IN") {
        return Ok(());
    }
    let widened = sql.replace("'interrupted')", "'interrupted', 'filtered')");
    if widened == sql {
        return Err(rusqlite::Error::InvalidQuery);
    }
    let version: i64 = conn.query_row("PRAGMA schema_version", [], |row| row.get(0))?;
    conn.execute_batch("BEGIN IMMEDIATE; PRAGMA writable_schema = ON;")?;
    let edited = conn
        .execute(
            "UPDATE sqlite_schema SET sql = ?1 WHERE type = 'table' AND name = 'audit'",
            [&widened],
        )
        .and_then(|_| {
            conn.execute_batch(&format!(
                "PRAGMA schema_version = {}; PRAGMA writable_schema = OFF; COMMIT;",
                version + 1
            ))
        });
    if edited.is_err() {
        let _ = conn.execute_batch("PRAGMA writable_schema = OFF; ROLLBACK;");
    }
    edited
}

/// Columns added after version 1, with their definitions (added to an older file on open).
const ADDED_AUDIT_COLUMNS: [(&str, &str); 9] = [
    ("matcher_skipped", "INTEGER NOT NULL DEFAULT 0"),
    ("receiver_skipped", "INTEGER NOT NULL DEFAULT 0"),
    ("bounded_identifiers", "INTEGER NOT NULL DEFAULT 0"),
    ("bounded_disclosed", "INTEGER NOT NULL DEFAULT 0"),
    ("collaboration_id", "TEXT NOT NULL DEFAULT ''"),
    ("payer", "TEXT NOT NULL DEFAULT ''"),
    ("compute_ms", "INTEGER NOT NULL DEFAULT 0"),
    ("buckets", "INTEGER NOT NULL DEFAULT 0"),
    ("buckets_done", "INTEGER NOT NULL DEFAULT 0"),
];

/// How a column added in version 7 or 8 is filled for the entries of an older file: before
/// version 7 the querier paid, and every charged session (one with a ledger entry) ran as one
/// bucket. Their compute time was not measured and stays 0.
const BACKFILL: [(&str, &str); 3] = [
    (
        "payer",
        "UPDATE audit SET payer = member WHERE session_id IN (SELECT session_id FROM ledger);",
    ),
    (
        "buckets",
        "UPDATE audit SET buckets = 1 WHERE session_id IN (SELECT session_id FROM ledger);",
    ),
    // Before version 8 a released entry had matched all its buckets; of the others it is not
    // known how many.
    (
        "buckets_done",
        "UPDATE audit SET buckets_done = buckets WHERE decision = 'released';",
    ),
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
        ('running', 'refused', 'released', 'failed', 'cancelled', 'interrupted', 'filtered')),
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
    bounded_disclosed INTEGER NOT NULL DEFAULT 0,
    collaboration_id TEXT NOT NULL DEFAULT '',
    payer TEXT NOT NULL DEFAULT '',
    compute_ms INTEGER NOT NULL DEFAULT 0,
    buckets INTEGER NOT NULL DEFAULT 0,
    buckets_done INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE IF NOT EXISTS job_totals (
    session_id TEXT PRIMARY KEY REFERENCES audit (session_id),
    buckets_done INTEGER NOT NULL CHECK (buckets_done > 0),
    checkpoint BLOB NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS job (
    session_id TEXT PRIMARY KEY REFERENCES audit (session_id),
    collaboration_id TEXT NOT NULL,
    member TEXT NOT NULL,
    job_id TEXT NOT NULL,
    terms_digest BLOB NOT NULL,
    buckets INTEGER NOT NULL CHECK (buckets > 0),
    bucket_key BLOB,
    release BLOB,
    UNIQUE (collaboration_id, member, job_id)
) STRICT;
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
CREATE TABLE IF NOT EXISTS failed_auth (
    minute TEXT NOT NULL,
    last_at TEXT NOT NULL,
    collaboration_id TEXT NOT NULL,
    peer TEXT NOT NULL,
    member TEXT NOT NULL,
    reason TEXT NOT NULL,
    count INTEGER NOT NULL CHECK (count > 0),
    PRIMARY KEY (minute, collaboration_id, peer, member, reason)
) STRICT;
CREATE TABLE IF NOT EXISTS delivery (
    session_id TEXT NOT NULL REFERENCES audit (session_id),
    receiver TEXT NOT NULL,
    sealed_keys BLOB NOT NULL,
    messages BLOB NOT NULL,
    PRIMARY KEY (session_id, receiver)
) STRICT;
CREATE TABLE IF NOT EXISTS policy_member (
    collaboration_id TEXT NOT NULL,
    member TEXT NOT NULL,
    PRIMARY KEY (collaboration_id, member)
) STRICT;
CREATE TABLE IF NOT EXISTS table_use (
    session_id TEXT NOT NULL REFERENCES audit (session_id),
    member TEXT NOT NULL,
    table_name TEXT NOT NULL,
    position INTEGER NOT NULL,
    column_name TEXT NOT NULL,
    PRIMARY KEY (session_id, table_name, position)
) STRICT;
CREATE INDEX IF NOT EXISTS table_use_member ON table_use (member, session_id);
";

/// SQLite's current time as RFC 3339 UTC with milliseconds.
const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

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
    /// A file of an older schema, opened read-only, lacks what is asked of it (a server
    /// opening it upgrades it).
    #[error(
        "state database {path} has schema version {found}, older than this cleanroom's \
         {SCHEMA_VERSION}: start `cleanroom serve --state` on it once to upgrade it"
    )]
    Outdated {
        /// The database file.
        path: PathBuf,
        /// The version found.
        found: i64,
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
    /// A database to read does not exist.
    #[error("no state database at {0} (`cleanroom serve --state` creates one)")]
    Missing(PathBuf),
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
    /// The schema version of the file (always [`SCHEMA_VERSION`] once opened for writing).
    version: i64,
    conn: Mutex<Connection>,
    /// Per served table, its rows and its rows never matched (set when the server checked it).
    checked: Mutex<std::collections::BTreeMap<String, (u64, u64)>>,
}

/// A test attempt in collaboration "c".
#[cfg(test)]
pub(crate) fn attempt<'a>(
    session_id: &'a str,
    member: &'a str,
    sql: &'a str,
    receiver_rows: u64,
) -> Attempt<'a> {
    Attempt {
        session_id,
        collaboration_id: "c",
        member,
        sql,
        receiver_rows,
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> Result<u64, StateError> {
    u64::try_from(v).map_err(|_| StateError::Corrupt(format!("negative count {v}")))
}

/// The statement that marks every session still `running` as `interrupted`.
fn interrupt_running() -> String {
    format!(
        "UPDATE audit SET decision = 'interrupted', finished_at = {NOW},
             reason = 'the server stopped during the session'
         WHERE decision = 'running'"
    )
}

impl StateDb {
    /// Records every session still running as interrupted (the server is stopping at once);
    /// returns how many there were.
    pub fn interrupt_running(&self) -> Result<usize, StateError> {
        self.conn()
            .execute(&interrupt_running(), [])
            .map_err(|e| self.sqlite(e))
    }

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
             {};
             COMMIT;",
            interrupt_running()
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
                if let Some((_, backfill)) = BACKFILL.iter().find(|(c, _)| *c == column) {
                    conn.execute_batch(backfill).map_err(err)?;
                }
                if column == "collaboration_id" {
                    // Entries written before version 5 belong to the one collaboration this
                    // file recorded a policy for; with several (or none) they stay unattributed
                    // (''): the operator's `cleanroom audit` shows them, no member's listing does.
                    conn.execute_batch(
                        "UPDATE audit SET collaboration_id = (SELECT collaboration_id FROM policy)
                         WHERE collaboration_id = '' AND (SELECT COUNT(*) FROM policy) = 1;",
                    )
                    .map_err(err)?;
                }
            }
        }
        widen_decisions(&conn).map_err(err)?;
        // Every member's listing reads one collaboration's entries of one member, newest first.
        conn.execute_batch(
            "DROP INDEX IF EXISTS audit_member;
             CREATE INDEX IF NOT EXISTS audit_listing ON audit (collaboration_id, member, id);",
        )
        .map_err(err)?;
        Ok(StateDb {
            path,
            version: SCHEMA_VERSION,
            conn: Mutex::new(conn),
            checked: Mutex::default(),
        })
    }

    /// Opens an existing database read-only (for `cleanroom audit`, also while a server runs).
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<StateDb, StateError> {
        let path = path.as_ref().to_path_buf();
        if !path.exists() {
            return Err(StateError::Missing(path));
        }
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
            version,
            conn: Mutex::new(conn),
            checked: Mutex::default(),
        })
    }

    /// Refuses with [`StateError::Outdated`] when the file is older than this program's schema
    /// (read-only, so not upgraded): the audit entries and usage are read from version 7 on.
    fn require_current(&self) -> Result<(), StateError> {
        if self.version < SCHEMA_VERSION {
            return Err(StateError::Outdated {
                path: self.path.clone(),
                found: self.version,
            });
        }
        Ok(())
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ledger::tests::policy;

    /// The audit table as version 1 wrote it.
    const VERSION_1_AUDIT: &str = "CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT,
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
        bytes_sent INTEGER NOT NULL DEFAULT 0) STRICT;";

    #[test]
    fn a_version_1_file_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&format!("{VERSION_1_AUDIT} PRAGMA user_version = 1;"))
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

    #[test]
    fn entries_of_an_older_file_belong_to_its_one_collaboration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&format!(
                "{VERSION_1_AUDIT}
                 CREATE TABLE policy (collaboration_id TEXT PRIMARY KEY,
                     epsilon_budget_micros INTEGER, epsilon_per_query_micros INTEGER,
                     queries_per_member INTEGER, queries_per_member_per_day INTEGER,
                     updated_at TEXT NOT NULL) STRICT;
                 INSERT INTO policy (collaboration_id, updated_at) VALUES ('x', 'then');
                 INSERT INTO audit (session_id, started_at, member, sql, decision)
                     VALUES ('old', 'then', 'adv', 'q', 'released');
                 PRAGMA user_version = 4;"
            ))
            .unwrap();
        }
        let db = StateDb::open(&path).unwrap();
        assert_eq!(db.entry("old").unwrap().unwrap().collaboration_id, "x");
    }

    #[test]
    fn a_version_10_file_learns_the_decision_filtered_and_keeps_its_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let db = StateDb::open(&path).unwrap();
            db.begin(&attempt("old", "adv", "q", 1)).unwrap();
            // Back to version 10: the audit's CHECK without 'filtered'.
            let conn = db.conn();
            let sql: String = conn
                .query_row(
                    "SELECT sql FROM sqlite_schema WHERE name = 'audit'",
                    [],
                    |row| row.get(0),
                )
                .unwrap();
            let version: i64 = conn
                .query_row("PRAGMA schema_version", [], |row| row.get(0))
                .unwrap();
            conn.execute_batch("PRAGMA writable_schema = ON;").unwrap();
            conn.execute(
                "UPDATE sqlite_schema SET sql = ?1 WHERE name = 'audit'",
                [sql.replace(", 'filtered'", "")],
            )
            .unwrap();
            conn.execute_batch(&format!(
                "PRAGMA schema_version = {}; PRAGMA writable_schema = OFF; PRAGMA user_version = 10;",
                version + 1
            ))
            .unwrap();
            drop(conn);
            db.begin(&attempt("refused", "adv", "q", 1)).unwrap();
            assert!(
                db.finish("refused", Decision::Filtered, "", &Completion::default())
                    .is_err()
            );
        }
        let db = StateDb::open(&path).unwrap();
        assert_eq!(
            db.entry("old").unwrap().unwrap().decision,
            Decision::Interrupted
        );
        db.begin(&attempt("new", "adv", "q", 1)).unwrap();
        assert!(
            db.finish(
                "new",
                Decision::Filtered,
                "filtered",
                &Completion::default()
            )
            .unwrap()
        );
        assert_eq!(
            db.entry("new").unwrap().unwrap().decision,
            Decision::Filtered
        );
        let ok: String = db
            .conn()
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
    }

    #[test]
    fn a_version_6_file_gets_payers_and_buckets_for_its_charged_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let db = StateDb::open(&path).unwrap();
            db.begin(&attempt("charged", "adv", "q", 1)).unwrap();
            db.charge("charged", &policy(None, None, None), "adv", None, &[])
                .unwrap();
            db.begin(&attempt("refused", "adv", "q", 1)).unwrap();
            // Back to version 6: without the columns and the table of version 7.
            let conn = db.conn();
            conn.execute_batch(
                "ALTER TABLE audit DROP COLUMN payer; ALTER TABLE audit DROP COLUMN compute_ms;
                 ALTER TABLE audit DROP COLUMN buckets; DROP TABLE table_use;
                 ALTER TABLE audit DROP COLUMN buckets_done; PRAGMA user_version = 6;",
            )
            .unwrap();
        }
        let read_only = StateDb::open_read_only(&path).unwrap();
        assert!(matches!(
            read_only.entries(None, None),
            Err(StateError::Outdated { found: 6, .. })
        ));
        assert!(matches!(
            read_only.usage(None, None),
            Err(StateError::Outdated { found: 6, .. })
        ));
        let db = StateDb::open(&path).unwrap();
        let charged = db.entry("charged").unwrap().unwrap();
        assert_eq!((charged.payer.as_str(), charged.buckets), ("adv", 1));
        let refused = db.entry("refused").unwrap().unwrap();
        assert_eq!((refused.payer.as_str(), refused.buckets), ("", 0));
        assert!(db.contributions("adv", None).unwrap().is_empty());
        let version: i64 = db
            .conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn a_version_7_file_has_all_buckets_done_for_its_released_entries_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let db = StateDb::open(&path).unwrap();
            for id in ["released", "failed"] {
                db.begin(&attempt(id, "adv", "q", 1)).unwrap();
                db.charge(id, &policy(None, None, None), "adv", None, &[])
                    .unwrap();
                db.record_buckets(id, 4).unwrap();
                db.record_bucket(id, 3, b"totals").unwrap();
            }
            let done = Completion::default();
            db.finish("failed", Decision::Failed, "peer gone", &done)
                .unwrap();
            db.conn()
                .execute_batch(
                    "UPDATE audit SET decision = 'released' WHERE session_id = 'released';
                     ALTER TABLE audit DROP COLUMN buckets_done; PRAGMA user_version = 7;",
                )
                .unwrap();
        }
        let db = StateDb::open(&path).unwrap();
        let released = db.entry("released").unwrap().unwrap();
        assert_eq!((released.buckets, released.buckets_done), (4, 4));
        let failed = db.entry("failed").unwrap().unwrap();
        assert_eq!((failed.buckets, failed.buckets_done), (4, 0));
    }

    #[test]
    fn a_job_records_its_buckets_done_and_a_release_completes_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path().join("state.db")).unwrap();
        db.begin(&attempt("job", "adv", "q", 1)).unwrap();
        db.charge("job", &policy(None, None, None), "adv", None, &[])
            .unwrap();
        db.record_buckets("job", 8).unwrap();
        assert_eq!(db.job_checkpoint("job").unwrap(), None);
        db.record_bucket("job", 4, b"after 4").unwrap();
        db.record_bucket("job", 5, b"after 5").unwrap();
        // Never more than the job has.
        db.record_bucket("job", 9, b"after 9").unwrap();
        assert_eq!(db.entry("job").unwrap().unwrap().buckets_done, 5);
        assert_eq!(
            db.job_checkpoint("job").unwrap(),
            Some((5, b"after 5".to_vec()))
        );
        // Durable: the file opened again holds the last bucket's totals.
        drop(db);
        let db = StateDb::open(dir.path().join("state.db")).unwrap();
        assert_eq!(
            db.job_checkpoint("job").unwrap(),
            Some((5, b"after 5".to_vec()))
        );
        // The restart marked the entry interrupted: nothing more is recorded for it.
        db.record_bucket("job", 6, b"after 6").unwrap();
        assert_eq!(db.job_checkpoint("job").unwrap().unwrap().0, 5);

        db.begin(&attempt("job2", "adv", "q", 1)).unwrap();
        db.charge("job2", &policy(None, None, None), "adv", None, &[])
            .unwrap();
        db.record_buckets("job2", 8).unwrap();
        db.record_bucket("job2", 3, b"after 3").unwrap();
        db.release("job2", &Completion::default()).unwrap();
        assert_eq!(db.entry("job2").unwrap().unwrap().buckets_done, 8);
        assert_eq!(
            db.job_checkpoint("job2").unwrap(),
            None,
            "spent with the release"
        );
    }
}
