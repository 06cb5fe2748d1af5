//! Failed authentications in the state database: one row per minute, collaboration, peer
//! address, member (when the token was valid but its certificate missing) and reason, with how
//! many attempts it stands for.
//!
//! The rows are written by [`FailedAuthentications`](crate::events::FailedAuthentications),
//! which counts the attempts in memory and adds them here in batches, so an attacker repeating
//! bad tokens costs one small write per batch, not one per attempt, and at most a bounded
//! number of rows per minute (see there). Members never see these rows: `ListAuditEntries`
//! reads the audit table only; the operator reads them with `cleanroom audit --auth-failures`.

use rusqlite::params;

use super::{StateDb, StateError};

/// Attempts that failed the same way in one minute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedAuthentication {
    /// The minute, RFC 3339 UTC (`2026-12-02T05:01:00Z`).
    pub minute: String,
    /// When the last of them was recorded, RFC 3339 UTC with milliseconds.
    pub last_at: String,
    /// The collaboration the server served.
    pub collaboration_id: String,
    /// The peer's IP address, or `other` for the attempts past the per-minute cap.
    pub peer: String,
    /// The member whose valid token came without its pinned certificate; empty otherwise.
    pub member: String,
    /// The reason's stable code (`missing_token`, `malformed_authorization`,
    /// `unknown_token`, `client_certificate_required`).
    pub reason: String,
    /// How many attempts.
    pub count: u64,
}

impl StateDb {
    /// Adds `count` attempts to their minute's row (created if new), in one transaction for the
    /// whole batch. `unix_seconds` places each in its minute.
    pub fn add_failed_authentications(
        &self,
        collaboration_id: &str,
        batch: &[(i64, FailedAuthenticationKey, u64)],
    ) -> Result<(), StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.sqlite(e))?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO failed_auth
                         (minute, last_at, collaboration_id, peer, member, reason, count)
                     VALUES (strftime('%Y-%m-%dT%H:%M:00Z', ?1, 'unixepoch'),
                             strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (minute, collaboration_id, peer, member, reason)
                     DO UPDATE SET count = count + excluded.count, last_at = excluded.last_at",
                )
                .map_err(|e| self.sqlite(e))?;
            for (unix_seconds, key, count) in batch {
                insert
                    .execute(params![
                        unix_seconds,
                        collaboration_id,
                        key.peer,
                        key.member,
                        key.reason,
                        i64::try_from(*count).unwrap_or(i64::MAX),
                    ])
                    .map_err(|e| self.sqlite(e))?;
            }
        }
        tx.commit().map_err(|e| self.sqlite(e))
    }

    /// The rows, oldest minute first; with `newest`, only the most recent `newest` rows. A
    /// database from before failed authentications were recorded has none.
    pub fn failed_authentications(
        &self,
        newest: Option<u32>,
    ) -> Result<Vec<FailedAuthentication>, StateError> {
        let conn = self.conn();
        let exists: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'failed_auth'",
                [],
                |row| row.get(0),
            )
            .map_err(|e| self.sqlite(e))?;
        if exists == 0 {
            return Ok(Vec::new());
        }
        let mut select = conn
            .prepare(
                "SELECT minute, last_at, collaboration_id, peer, member, reason, count FROM (
                     SELECT rowid AS seq, * FROM failed_auth ORDER BY minute DESC, seq DESC
                     LIMIT ?1
                 ) ORDER BY minute, seq",
            )
            .map_err(|e| self.sqlite(e))?;
        let limit = newest.map_or(-1, i64::from);
        let rows = select
            .query_map(params![limit], |row| {
                Ok(FailedAuthentication {
                    minute: row.get(0)?,
                    last_at: row.get(1)?,
                    collaboration_id: row.get(2)?,
                    peer: row.get(3)?,
                    member: row.get(4)?,
                    reason: row.get(5)?,
                    count: u64::try_from(row.get::<_, i64>(6)?).unwrap_or(0),
                })
            })
            .map_err(|e| self.sqlite(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sqlite(e))
    }
}

/// What makes two failed attempts of one minute the same row.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FailedAuthenticationKey {
    /// The peer's IP address, or `other`.
    pub peer: String,
    /// The member, when known; empty otherwise.
    pub member: String,
    /// The reason's stable code.
    pub reason: &'static str,
}
