//! The audit log: one entry per query attempt, written when it starts and completed once.

use std::str::FromStr;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{NOW, StateDb, StateError, to_i64, to_u64};

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
    /// This server filtered the candidates of a join across three or more members and passed
    /// them on; the chain's matcher decides the release.
    Filtered,
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
            Decision::Filtered => "filtered",
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
            Decision::Filtered => P::Filtered,
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
            "filtered" => Decision::Filtered,
            other => return Err(StateError::Corrupt(format!("unknown decision {other:?}"))),
        })
    }
}

/// One query attempt, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// The session's identifier.
    pub session_id: String,
    /// The collaboration the session ran in ('' for an entry of a version 4 or older file that
    /// served several collaborations).
    pub collaboration_id: String,
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
    /// The member who pays for the session (the collaboration's `payer`, else the querier),
    /// recorded when the session is charged: empty for an attempt refused at admission.
    pub payer: String,
    /// Milliseconds of the server's compute for the session: the wall-clock time of its
    /// compute sections (reading its table, each protocol step, the release), measured on the
    /// thread that ran each; not CPU time (see the service README).
    pub compute_ms: u64,
    /// Buckets of work the session ran: 1 for every charged (admitted) session, `B` for a job
    /// of `B` buckets (PROTOCOL.md 3.6), 0 for an attempt refused at admission.
    pub buckets: u64,
    /// Buckets matched so far (a job's progress, recorded as each bucket ends); a released
    /// entry has all of its `buckets` done.
    pub buckets_done: u64,
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
            collaboration_id: self.collaboration_id.clone(),
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
    /// Milliseconds of the server's compute sections (see [`AuditEntry::compute_ms`]).
    pub compute_ms: u64,
}

impl StateDb {
    /// Records the start of a query attempt (`running`), its SQL bounded to the planner's
    /// limit.
    pub fn begin(&self, attempt: &Attempt<'_>) -> Result<(), StateError> {
        let result = self.conn().execute(
            &format!(
                "INSERT INTO audit (session_id, collaboration_id, started_at, member, sql,
                     decision, receiver_rows)
                 VALUES (?1, ?2, {NOW}, ?3, ?4, 'running', ?5)"
            ),
            params![
                attempt.session_id,
                attempt.collaboration_id,
                attempt.member,
                stored_sql(attempt.sql),
                to_i64(attempt.receiver_rows)
            ],
        );
        let session_id = attempt.session_id;
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

    /// Notes how many rows served `table` has and how many of them are never matched (its
    /// whole-table check at start-up), for the audit entries of the sessions that use it and
    /// the buckets of their jobs.
    pub fn set_table_checked(&self, table: &str, rows: u64, skipped: u64) {
        self.checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(table.to_owned(), (rows, skipped));
    }

    /// The rows and never-matched rows noted for served `table` by
    /// [`StateDb::set_table_checked`], if it was checked in this process.
    pub fn table_checked(&self, table: &str) -> Option<(u64, u64)> {
        self.checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(table)
            .copied()
    }

    /// Records that charged session `session_id` runs as a job of `buckets` buckets (its
    /// entry counted 1, a session, when it was charged; usage sums them per payer).
    pub fn record_buckets(&self, session_id: &str, buckets: u32) -> Result<(), StateError> {
        self.conn()
            .execute(
                "UPDATE audit SET buckets = ?2 WHERE session_id = ?1 AND buckets > 0",
                params![session_id, i64::from(buckets)],
            )
            .map_err(|e| self.sqlite(e))?;
        Ok(())
    }

    /// Records that `done` buckets of running job `session_id` are matched, with the job's
    /// totals after them (`checkpoint`, psi's `JobTotals::checkpoint`), in one transaction:
    /// the audit shows the job's progress and the totals survive a crash of the server. A
    /// bucket's intersection is never recorded on its own; nothing is stored for an entry that
    /// no longer runs or for more buckets than the job has.
    pub fn record_bucket(
        &self,
        session_id: &str,
        done: u32,
        checkpoint: &[u8],
    ) -> Result<(), StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.sqlite(e))?;
        let running = tx
            .execute(
                "UPDATE audit SET buckets_done = ?2
                 WHERE session_id = ?1 AND decision = 'running' AND ?2 <= buckets",
                params![session_id, i64::from(done)],
            )
            .map_err(|e| self.sqlite(e))?;
        if running == 1 {
            tx.execute(
                &format!(
                    "INSERT INTO job_totals (session_id, buckets_done, checkpoint, updated_at)
                     VALUES (?1, ?2, ?3, {NOW})
                     ON CONFLICT (session_id) DO UPDATE SET buckets_done = ?2,
                         checkpoint = ?3, updated_at = {NOW}"
                ),
                params![session_id, i64::from(done), checkpoint],
            )
            .map_err(|e| self.sqlite(e))?;
        }
        tx.commit().map_err(|e| self.sqlite(e))
    }

    /// The stored totals of job `session_id`: how many buckets they hold and their checkpoint
    /// bytes. `None` when nothing is stored: a session of one bucket, a job before its first
    /// bucket, or a job that ended (its totals are deleted when its entry is completed); a job
    /// that was running when the server stopped (`interrupted`) keeps them.
    pub fn job_checkpoint(&self, session_id: &str) -> Result<Option<(u32, Vec<u8>)>, StateError> {
        // A file older than version 9, opened to read, has no such table: say so plainly.
        self.require_current()?;
        let row = self
            .conn()
            .query_row(
                "SELECT buckets_done, checkpoint FROM job_totals WHERE session_id = ?1",
                params![session_id],
                |row| Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?)),
            )
            .optional()
            .map_err(|e| self.sqlite(e))?;
        row.map(|(done, bytes)| {
            let done = u32::try_from(done)
                .map_err(|_| StateError::Corrupt(format!("job {session_id}: {done} buckets")))?;
            Ok((done, bytes))
        })
        .transpose()
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
    /// [`StateDb::set_table_checked`]; 0 when it was not checked).
    pub fn record_matcher_skipped(&self, session_id: &str, table: &str) -> Result<(), StateError> {
        let skipped = self.table_checked(table).map_or(0, |(_, skipped)| skipped);
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
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.sqlite(e))?;
        let completed = self.complete_in(&tx, session_id, decision, reason, completion)?;
        tx.commit().map_err(|e| self.sqlite(e))?;
        Ok(completed)
    }

    /// Completes `session_id`'s running entry within `conn`'s current transaction: its
    /// decision, reason, end time and figures (the wire and compute figures added to those of
    /// the job's earlier connections, if it resumed). `false` when it was no longer running.
    pub(super) fn complete_in(
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
                         messages_received = messages_received + ?7,
                         messages_sent = messages_sent + ?8,
                         bytes_received = bytes_received + ?9, bytes_sent = bytes_sent + ?10,
                         bounded_identifiers = ?11, bounded_disclosed = ?12,
                         compute_ms = compute_ms + ?13,
                         buckets_done = CASE WHEN ?2 = 'released' THEN buckets
                                             ELSE buckets_done END
                     WHERE session_id = ?1 AND decision = 'running'"
                ),
                params![
                    session_id,
                    decision.as_str(),
                    bounded_text(reason, MAX_REASON_BYTES),
                    to_i64(completion.released_rows),
                    to_i64(completion.suppressed_rows),
                    to_i64(completion.matcher_rows),
                    to_i64(completion.messages_received),
                    to_i64(completion.messages_sent),
                    to_i64(completion.bytes_received),
                    to_i64(completion.bytes_sent),
                    to_i64(completion.bounded_identifiers),
                    to_i64(completion.bounded_disclosed),
                    to_i64(completion.compute_ms),
                ],
            )
            .map_err(|e| self.sqlite(e))?;
        if changed == 1 && decision != Decision::Interrupted {
            // A job's totals end with it: released once, or never (refused, failed,
            // cancelled). Only an interrupted job keeps them, to resume.
            conn.execute(
                "DELETE FROM job_totals WHERE session_id = ?1",
                params![session_id],
            )
            .map_err(|e| self.sqlite(e))?;
        }
        Ok(changed == 1)
    }

    /// One entry by session identifier.
    pub fn entry(&self, session_id: &str) -> Result<Option<AuditEntry>, StateError> {
        self.require_current()?;
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
        self.require_current()?;
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

    /// One page of `query.member`'s entries in `query.collaboration_id`, newest first: at most
    /// `max_entries`, and no more than `max_bytes` of SQL and reasons (at least one entry when
    /// any is left). Reads only that page from the database, under the lock only while it
    /// reads; `next` continues after the page's oldest entry.
    pub fn page(&self, query: &AuditQuery) -> Result<AuditPage, StateError> {
        self.require_current()?;
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "{SELECT_ENTRY} WHERE collaboration_id = ?1 AND member = ?2 AND id < ?3
                 ORDER BY id DESC LIMIT ?4"
            ))
            .map_err(|e| self.sqlite(e))?;
        let before = query.before.map_or(i64::MAX, AuditCursor::id);
        // One more than asked, to know whether a next page exists.
        let limit = i64::from(query.max_entries.max(1)) + 1;
        let rows = stmt
            .query_map(
                params![query.collaboration_id, query.member, before, limit],
                raw_entry,
            )
            .map_err(|e| self.sqlite(e))?;
        let mut page = AuditPage::default();
        let mut bytes = 0usize;
        for row in rows {
            let raw = row.map_err(|e| self.sqlite(e))?;
            let size = raw.text_bytes();
            let full = page.entries.len() >= query.max_entries.max(1) as usize
                || (!page.entries.is_empty() && bytes.saturating_add(size) > query.max_bytes);
            if full {
                page.next = page.last_id.map(AuditCursor);
                break;
            }
            bytes = bytes.saturating_add(size);
            page.last_id = Some(raw.id);
            page.entries.push(raw.into_entry()?);
        }
        Ok(page)
    }
}

/// What a member may read of the audit log: its own entries in one collaboration, a page at a
/// time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    /// The collaboration (entries of any other are never read).
    pub collaboration_id: String,
    /// The member (entries of any other are never read).
    pub member: String,
    /// Continue after this cursor (from a previous page's `next`); `None`: the newest.
    pub before: Option<AuditCursor>,
    /// The most entries in the page (at least 1).
    pub max_entries: u32,
    /// The most bytes of SQL and reasons in the page (the first entry always fits).
    pub max_bytes: usize,
}

/// Where a page of the audit log ends: the next page starts with the entry before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditCursor(i64);

impl AuditCursor {
    fn id(self) -> i64 {
        self.0
    }

    /// The cursor as a page token (opaque to the member).
    pub fn token(self) -> String {
        self.0.to_string()
    }

    /// A page token back as a cursor; `None` when it is not one this server gave.
    pub fn from_token(token: &str) -> Option<AuditCursor> {
        token
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .map(AuditCursor)
    }
}

/// One page of a member's audit entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditPage {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
    /// Where the next page starts; `None` when this page holds the oldest entry.
    pub next: Option<AuditCursor>,
    last_id: Option<i64>,
}

/// A query attempt as it starts: who, in which collaboration, with what SQL.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// The new session's identifier.
    pub session_id: &'a str,
    /// The collaboration the server serves.
    pub collaboration_id: &'a str,
    /// The authenticated member.
    pub member: &'a str,
    /// The SQL as sent (stored up to the planner's limit).
    pub sql: &'a str,
    /// The querier's declared table rows.
    pub receiver_rows: u64,
}

/// The SQL as the audit stores it: whole up to the planner's limit
/// ([`MAX_QUERY_BYTES`](cleanroom_rules::MAX_QUERY_BYTES), which refuses anything longer), else
/// its first bytes and how long it was, so that a member cannot grow the database by sending
/// megabytes of SQL that is refused anyway.
fn stored_sql(sql: &str) -> std::borrow::Cow<'_, str> {
    bounded_text(sql, cleanroom_rules::MAX_QUERY_BYTES)
}

/// The most bytes of a reason the audit stores: a reason may quote what the client sent (a
/// table or member name), which the wire allows up to megabytes.
pub(crate) const MAX_REASON_BYTES: usize = 4096;

/// `text` whole when it has at most `limit` bytes, else its first bytes (on a character
/// boundary) and how long it was.
fn bounded_text(text: &str, limit: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= limit {
        return text.into();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} bytes, cut at {limit}]", &text[..end], text.len()).into()
}

pub(super) const SELECT_ENTRY: &str = "SELECT id, session_id, started_at, finished_at, member,
    sql, decision, reason, released_rows, suppressed_rows, matcher_rows, receiver_rows,
    messages_received, messages_sent, bytes_received, bytes_sent, matcher_skipped,
    receiver_skipped, bounded_identifiers, bounded_disclosed, collaboration_id, payer,
    compute_ms, buckets, buckets_done FROM audit";

/// A row as SQLite returns it, before its values are checked.
pub(super) struct RawEntry {
    id: i64,
    session_id: String,
    collaboration_id: String,
    started_at: String,
    finished_at: Option<String>,
    member: String,
    sql: String,
    decision: String,
    reason: String,
    payer: String,
    counts: [i64; 15],
}

pub(super) fn raw_entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawEntry> {
    let mut counts = [0i64; 15];
    for (i, count) in counts.iter_mut().enumerate() {
        // The counts of version 7 follow the collaboration and the payer.
        let column = if i < 12 { 8 + i } else { 10 + i };
        *count = row.get(column)?;
    }
    Ok(RawEntry {
        id: row.get(0)?,
        session_id: row.get(1)?,
        collaboration_id: row.get(20)?,
        started_at: row.get(2)?,
        finished_at: row.get(3)?,
        member: row.get(4)?,
        sql: row.get(5)?,
        decision: row.get(6)?,
        reason: row.get(7)?,
        payer: row.get(21)?,
        counts,
    })
}

impl RawEntry {
    /// The entry's variable-length text, which bounds its size on the wire.
    fn text_bytes(&self) -> usize {
        self.sql.len() + self.reason.len() + self.member.len() + 256
    }

    pub(super) fn into_entry(self) -> Result<AuditEntry, StateError> {
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
            compute_ms,
            buckets,
            buckets_done,
        ] = self.counts;
        Ok(AuditEntry {
            session_id: self.session_id,
            collaboration_id: self.collaboration_id,
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
            payer: self.payer,
            compute_ms: to_u64(compute_ms)?,
            buckets: to_u64(buckets)?,
            buckets_done: to_u64(buckets_done)?,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::state::*;

    pub(crate) fn completion(released: u64, suppressed: u64) -> Completion {
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
        db.begin(&attempt("big", "advertiser", &huge, 1)).unwrap();
        db.begin(&attempt("small", "advertiser", "SELECT 1", 1))
            .unwrap();
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
        db.begin(&attempt("s1", "advertiser", "SELECT 1", 42))
            .unwrap();
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
            db.begin(&attempt("s1", "advertiser", "SELECT 2", 0)),
            Err(StateError::DuplicateSession(_))
        ));
    }

    #[test]
    fn running_entries_become_interrupted_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let db = StateDb::open(&path).unwrap();
            db.begin(&attempt("a", "m1", "q1", 1)).unwrap();
            db.begin(&attempt("b", "m2", "q2", 2)).unwrap();
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
    fn a_page_holds_one_members_entries_of_one_collaboration_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path().join("state.db")).unwrap();
        let ids: Vec<String> = (0..7).map(|i| format!("s{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            // Alternate collaborations and members: only x/adv's entries may come back.
            let (collaboration_id, member) = match i % 3 {
                0 | 1 => ("x", "adv"),
                _ => ("y", "adv"),
            };
            db.begin(&Attempt {
                collaboration_id,
                ..attempt(id, member, "q", 1)
            })
            .unwrap();
        }
        db.begin(&Attempt {
            collaboration_id: "x",
            ..attempt("other", "pub", "q", 1)
        })
        .unwrap();
        let query = |before| AuditQuery {
            collaboration_id: "x".into(),
            member: "adv".into(),
            before,
            max_entries: 2,
            max_bytes: 1 << 20,
        };
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = db.page(&query(before)).unwrap();
            assert!(page.entries.len() <= 2);
            for e in &page.entries {
                assert_eq!(
                    (e.collaboration_id.as_str(), e.member.as_str()),
                    ("x", "adv")
                );
            }
            seen.extend(page.entries.iter().map(|e| e.session_id.clone()));
            match page.next {
                Some(next) => before = AuditCursor::from_token(&next.token()),
                None => break,
            }
        }
        assert_eq!(seen, ["s6", "s4", "s3", "s1", "s0"]);
    }

    #[test]
    fn a_page_stops_at_its_byte_budget_but_holds_at_least_one_entry() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path().join("state.db")).unwrap();
        let sql = "x".repeat(10_000);
        for id in ["a", "b", "c"] {
            db.begin(&attempt(id, "adv", &sql, 1)).unwrap();
        }
        let page = |max_bytes| {
            db.page(&AuditQuery {
                collaboration_id: "c".into(),
                member: "adv".into(),
                before: None,
                max_entries: 100,
                max_bytes,
            })
            .unwrap()
        };
        let two = page(25_000);
        assert_eq!(two.entries.len(), 2);
        assert!(two.next.is_some());
        let one = page(10);
        assert_eq!(one.entries.len(), 1, "the first entry always fits");
        assert_eq!(page(1 << 20).entries.len(), 3);
        assert!(page(1 << 20).next.is_none());
        assert!(AuditCursor::from_token("not a cursor").is_none());
        assert!(AuditCursor::from_token("-4").is_none());
    }

    #[test]
    fn a_reason_quoting_the_client_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path().join("state.db")).unwrap();
        db.begin(&attempt("s", "adv", "q", 1)).unwrap();
        let reason = format!(
            "table {:?} is not in the collaboration",
            "t".repeat(1 << 20)
        );
        db.finish("s", Decision::Refused, &reason, &Completion::default())
            .unwrap();
        let stored = db.entry("s").unwrap().unwrap().reason;
        assert!(stored.len() < MAX_REASON_BYTES + 64, "{}", stored.len());
    }
}
