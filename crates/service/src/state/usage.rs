//! Usage and the contributors' log: what each session used and who pays for it.
//!
//! A session is counted in usage once it was charged (admitted) and has ended: a session
//! refused at admission read nothing of the server's table and costs nothing, so it has no
//! payer, no bucket and no tables used, and is left out of [`StateDb::usage`] and of
//! [`StateDb::contributions`] (its audit entry still shows the rows the client declared). A
//! session that ran and then failed, was cancelled or interrupted is counted with what it read
//! and moved before it ended.

use cleanroom_rules::Plan;
use rusqlite::{Connection, params};
use serde::Serialize;

use super::audit::{SELECT_ENTRY, raw_entry};
use super::{AuditEntry, StateDb, StateError, to_u64};

/// A table a session used: its owner, its name, and the columns the session read of it (its
/// identifier, filter, group, value and list columns, in the plan's order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableUse {
    /// The member who owns the table.
    pub member: String,
    /// The table's name in the collaboration.
    pub table: String,
    /// The columns read, each once.
    pub columns: Vec<String>,
}

impl TableUse {
    /// The two tables `plan` uses: the server's (matcher or list provider) first, then the
    /// querier's.
    pub fn of_plan(plan: &Plan) -> Vec<TableUse> {
        vec![
            TableUse::of_side(plan.matcher()),
            TableUse::of_side(plan.receiver()),
        ]
    }

    /// The use of one side's table: its owner, its name and the columns the side reads.
    pub fn of_side(side: &cleanroom_rules::SidePlan) -> TableUse {
        TableUse {
            member: side.member.clone(),
            table: side.table.clone(),
            columns: side.reads.clone(),
        }
    }
}

/// The usage of one payer on one UTC day in one collaboration: the sum over its sessions that
/// were charged and have ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UsageLine {
    /// The UTC day the sessions started (`YYYY-MM-DD`).
    pub day: String,
    /// The collaboration.
    pub collaboration_id: String,
    /// The member who pays.
    pub payer: String,
    /// Sessions.
    pub sessions: u64,
    /// Rows of the server's table read.
    pub matcher_rows: u64,
    /// Rows of the queriers' tables, as their clients declared them.
    pub receiver_rows: u64,
    /// Protocol bytes received from the clients.
    pub bytes_received: u64,
    /// Protocol bytes sent to the clients.
    pub bytes_sent: u64,
    /// Milliseconds of the server's compute sections (see [`AuditEntry::compute_ms`]).
    pub compute_ms: u64,
    /// Buckets of work (one per session today).
    pub buckets: u64,
}

impl UsageLine {
    /// Rows read on both sides together.
    pub fn rows_read(&self) -> u64 {
        self.matcher_rows.saturating_add(self.receiver_rows)
    }

    /// Bytes on the wire in both directions together.
    pub fn bytes(&self) -> u64 {
        self.bytes_received.saturating_add(self.bytes_sent)
    }

    /// Adds `other`'s figures to this line's (its day, collaboration and payer stay).
    pub fn add(&mut self, other: &UsageLine) {
        self.sessions += other.sessions;
        self.matcher_rows += other.matcher_rows;
        self.receiver_rows += other.receiver_rows;
        self.bytes_received += other.bytes_received;
        self.bytes_sent += other.bytes_sent;
        self.compute_ms += other.compute_ms;
        self.buckets += other.buckets;
    }
}

/// An audit entry as a contributing member sees it: the entry, and which of the member's
/// tables (and columns) the session used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Contribution {
    /// The audit entry.
    #[serde(flatten)]
    pub entry: AuditEntry,
    /// The member's tables the session read, with the columns it read of each.
    pub used: Vec<TableUse>,
}

impl StateDb {
    /// Records, within `conn`'s transaction, the tables `session_id` uses.
    pub(super) fn record_uses_in(
        &self,
        conn: &Connection,
        session_id: &str,
        uses: &[TableUse],
    ) -> Result<(), StateError> {
        let mut insert = conn
            .prepare(
                "INSERT INTO table_use (session_id, member, table_name, position, column_name)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(|e| self.sqlite(e))?;
        for used in uses {
            for (position, column) in (0i64..).zip(&used.columns) {
                insert
                    .execute(params![
                        session_id,
                        used.member,
                        used.table,
                        position,
                        column
                    ])
                    .map_err(|e| self.sqlite(e))?;
            }
        }
        Ok(())
    }

    /// Usage per UTC day, collaboration and payer, in that order: the sessions that were
    /// charged and have ended, started on `since` (`YYYY-MM-DD`) or later, of
    /// `collaboration_id` only when given.
    pub fn usage(
        &self,
        since: Option<&str>,
        collaboration_id: Option<&str>,
    ) -> Result<Vec<UsageLine>, StateError> {
        self.require_current()?;
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT substr(started_at, 1, 10) AS day, collaboration_id, payer, COUNT(*),
                     SUM(matcher_rows), SUM(receiver_rows), SUM(bytes_received),
                     SUM(bytes_sent), SUM(compute_ms), SUM(buckets)
                 FROM audit
                 WHERE buckets > 0 AND decision != 'running'
                     AND (?1 IS NULL OR substr(started_at, 1, 10) >= ?1)
                     AND (?2 IS NULL OR collaboration_id = ?2)
                 GROUP BY day, collaboration_id, payer
                 ORDER BY day, collaboration_id, payer",
            )
            .map_err(|e| self.sqlite(e))?;
        let rows = stmt
            .query_map(params![since, collaboration_id], |row| {
                let mut counts = [0i64; 7];
                for (i, count) in counts.iter_mut().enumerate() {
                    *count = row.get(3 + i)?;
                }
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, counts))
            })
            .map_err(|e| self.sqlite(e))?;
        let mut lines = Vec::new();
        for row in rows {
            let (day, collaboration_id, payer, counts) = row.map_err(|e| self.sqlite(e))?;
            let [
                sessions,
                matcher_rows,
                receiver_rows,
                received,
                sent,
                compute_ms,
                buckets,
            ] = counts;
            lines.push(UsageLine {
                day,
                collaboration_id,
                payer,
                sessions: to_u64(sessions)?,
                matcher_rows: to_u64(matcher_rows)?,
                receiver_rows: to_u64(receiver_rows)?,
                bytes_received: to_u64(received)?,
                bytes_sent: to_u64(sent)?,
                compute_ms: to_u64(compute_ms)?,
                buckets: to_u64(buckets)?,
            });
        }
        Ok(lines)
    }

    /// The entries whose session used a table owned by `member` (oldest first; with `newest`
    /// the most recent `newest` only), each with the member's tables and columns it used. The
    /// server's own member's table is in every charged session, and so is the querier's.
    pub fn contributions(
        &self,
        member: &str,
        newest: Option<u32>,
    ) -> Result<Vec<Contribution>, StateError> {
        self.require_current()?;
        let conn = self.conn();
        let limit = newest.map_or(-1, i64::from);
        let mut stmt = conn
            .prepare(&format!(
                "SELECT * FROM ({SELECT_ENTRY} WHERE session_id IN
                     (SELECT session_id FROM table_use WHERE member = ?1)
                     ORDER BY id DESC LIMIT ?2) ORDER BY id ASC"
            ))
            .map_err(|e| self.sqlite(e))?;
        let mut entries = Vec::new();
        for row in stmt
            .query_map(params![member, limit], raw_entry)
            .map_err(|e| self.sqlite(e))?
        {
            entries.push(row.map_err(|e| self.sqlite(e))?.into_entry()?);
        }
        let mut used = conn
            .prepare(
                "SELECT table_name, column_name FROM table_use
                 WHERE session_id = ?1 AND member = ?2 ORDER BY table_name, position",
            )
            .map_err(|e| self.sqlite(e))?;
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let mut tables: Vec<TableUse> = Vec::new();
            let rows = used
                .query_map(params![entry.session_id, member], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })
                .map_err(|e| self.sqlite(e))?;
            for row in rows {
                let (table, column) = row.map_err(|e| self.sqlite(e))?;
                match tables.last_mut() {
                    Some(last) if last.table == table => last.columns.push(column),
                    _ => tables.push(TableUse {
                        member: member.to_owned(),
                        table,
                        columns: vec![column],
                    }),
                }
            }
            out.push(Contribution {
                entry,
                used: tables,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ledger::tests::policy;
    use crate::state::{Completion, Decision, attempt};

    fn uses(querier: &str) -> Vec<TableUse> {
        vec![
            TableUse {
                member: "pub".into(),
                table: "impressions".into(),
                columns: vec!["email".into(), "campaign".into()],
            },
            TableUse {
                member: querier.into(),
                table: format!("{querier}_sales"),
                columns: vec!["email".into()],
            },
        ]
    }

    fn completion(matcher_rows: u64, bytes: (u64, u64), compute_ms: u64) -> Completion {
        Completion {
            matcher_rows,
            bytes_received: bytes.0,
            bytes_sent: bytes.1,
            compute_ms,
            ..Completion::default()
        }
    }

    /// Four sessions: two of `adv` released and failed, one of `other` released, one of `adv`
    /// refused at admission (never charged); and one still running.
    fn db_with_sessions(payer: Option<&str>) -> (tempfile::TempDir, StateDb) {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path().join("state.db")).unwrap();
        let policy = crate::state::Policy {
            payer: payer.map(str::to_owned),
            ..policy(None, None, None)
        };
        let run = |id: &str, member: &str, rows: u64, end: Option<(Decision, Completion)>| {
            db.begin(&attempt(id, member, "q", rows)).unwrap();
            db.charge(id, &policy, member, None, &uses(member)).unwrap();
            if let Some((decision, completion)) = end {
                if decision == Decision::Released {
                    assert!(db.release(id, &completion).unwrap());
                } else {
                    db.finish(id, decision, "x", &completion).unwrap();
                }
            }
        };
        run(
            "a",
            "adv",
            10,
            Some((Decision::Released, completion(100, (1000, 2000), 30))),
        );
        run(
            "b",
            "adv",
            20,
            Some((Decision::Failed, completion(100, (500, 0), 7))),
        );
        run(
            "c",
            "other",
            5,
            Some((Decision::Released, completion(100, (1, 2), 1))),
        );
        run("d", "adv", 40, None);
        db.begin(&attempt("e", "adv", "q", 80)).unwrap();
        db.finish("e", Decision::Refused, "no", &Completion::default())
            .unwrap();
        (dir, db)
    }

    #[test]
    fn usage_sums_the_charged_sessions_that_ended_per_payer() {
        let (_dir, db) = db_with_sessions(None);
        let lines = db.usage(None, None).unwrap();
        assert_eq!(lines.len(), 2, "{lines:?}");
        let day = lines[0].day.clone();
        assert_eq!(day.len(), 10);
        assert_eq!(
            lines[0],
            UsageLine {
                day: day.clone(),
                collaboration_id: "c".into(),
                payer: "adv".into(),
                sessions: 2,
                matcher_rows: 200,
                receiver_rows: 30,
                bytes_received: 1500,
                bytes_sent: 2000,
                compute_ms: 37,
                buckets: 2,
            }
        );
        assert_eq!(lines[0].rows_read(), 230);
        assert_eq!(lines[0].bytes(), 3500);
        assert_eq!((lines[1].payer.as_str(), lines[1].sessions), ("other", 1));
        assert!(db.usage(Some("9999-01-01"), None).unwrap().is_empty());
        assert_eq!(db.usage(Some(&day), Some("c")).unwrap(), lines);
        assert!(db.usage(None, Some("elsewhere")).unwrap().is_empty());
        // The refused attempt has no payer and no bucket.
        let refused = db.entry("e").unwrap().unwrap();
        assert_eq!((refused.payer.as_str(), refused.buckets), ("", 0));
        assert_eq!(db.entry("a").unwrap().unwrap().compute_ms, 30);
    }

    #[test]
    fn the_collaborations_payer_pays_for_every_querier() {
        let (_dir, db) = db_with_sessions(Some("agency"));
        let lines = db.usage(None, None).unwrap();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!((lines[0].payer.as_str(), lines[0].sessions), ("agency", 3));
        assert_eq!(lines[0].rows_read(), 300 + 35);
        assert_eq!(db.entry("a").unwrap().unwrap().payer, "agency");
    }

    #[test]
    fn a_contributor_sees_the_entries_that_used_its_tables_with_the_columns() {
        let (_dir, db) = db_with_sessions(None);
        let server = db.contributions("pub", None).unwrap();
        let ids: Vec<&str> = server.iter().map(|c| c.entry.session_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c", "d"]);
        assert_eq!(
            server[0].used,
            [TableUse {
                member: "pub".into(),
                table: "impressions".into(),
                columns: vec!["email".into(), "campaign".into()],
            }]
        );
        let other = db.contributions("other", None).unwrap();
        assert_eq!(other.len(), 1);
        assert_eq!(other[0].entry.session_id, "c");
        assert_eq!(other[0].used[0].table, "other_sales");
        assert_eq!(other[0].used[0].columns, ["email"]);
        let newest = db.contributions("adv", Some(1)).unwrap();
        assert_eq!(newest.len(), 1);
        assert_eq!(newest[0].entry.session_id, "d");
        assert!(db.contributions("nobody", None).unwrap().is_empty());
    }
}
