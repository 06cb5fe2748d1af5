//! The jobs a member names so that it can resume them (PROTOCOL.md 3.6, step 6): per named
//! session, who named it, under which terms, and the job's bucket terms. The totals of the
//! buckets done are in `job_totals` (written by [`StateDb::record_bucket`]).
//!
//! Invariants:
//! - a name is scoped to its collaboration and member: one member can neither find nor reopen
//!   another's job, whatever the name;
//! - a job is reopened only from `interrupted` (the server stopped, or the client's connection
//!   was lost), in one statement: two clients resuming at once cannot both run it;
//! - the entry reopened is the job's own audit entry: a job has one entry, however many
//!   connections it took.

use std::time::Duration;

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{Decision, NOW, StateDb, StateError};

/// A named job as recorded at its admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord<'a> {
    /// The job's first session (its audit entry).
    pub session_id: &'a str,
    /// The collaboration.
    pub collaboration_id: &'a str,
    /// The member that named it.
    pub member: &'a str,
    /// The member's name for it.
    pub job_id: &'a str,
    /// The digest of what the job was asked under (query, declared rows, terms): a resume
    /// must bring the same.
    pub terms_digest: [u8; 32],
    /// Its buckets (1: one session).
    pub buckets: u32,
    /// The bucket key of a job of 2 or more buckets.
    pub bucket_key: Option<[u8; 32]>,
}

/// A named job as found: its record, what became of its entry, and its totals so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredJob {
    /// The job's audit entry.
    pub session_id: String,
    /// What became of it so far (`interrupted`: it may resume).
    pub decision: Decision,
    /// Why it ended, if it did.
    pub reason: String,
    /// See [`JobRecord::terms_digest`].
    pub terms_digest: Vec<u8>,
    /// Its buckets.
    pub buckets: u32,
    /// Its bucket key.
    pub bucket_key: Option<[u8; 32]>,
    /// Buckets whose totals are stored, and the totals' checkpoint (none before the first).
    pub done: Option<(u32, Vec<u8>)>,
    /// The querier's release messages, kept with a released job of buckets.
    pub release: Option<Vec<Vec<u8>>>,
}

/// What [`StateDb::expire_jobs`] ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExpiredJobs {
    /// The interrupted jobs that waited longer than allowed: now `cancelled`, their totals
    /// deleted (a resume is refused as for any job that ended).
    pub cancelled: Vec<String>,
    /// Released jobs whose kept release was dropped (a resume then cannot be sent it again).
    pub releases_dropped: usize,
}

impl StateDb {
    /// Ends what named jobs keep longer than `retention` after they stopped: each job
    /// interrupted before then is cancelled (reason: not resumed in time) and its totals
    /// deleted; each job released before then has its kept release dropped. One
    /// transaction: a job being resumed at that moment is either reopened first (and runs)
    /// or cancelled first (and its resume refused).
    pub fn expire_jobs(&self, retention: Duration) -> Result<ExpiredJobs, StateError> {
        self.require_current()?;
        let cutoff = format!("-{} seconds", retention.as_secs());
        let before = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1)";
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.sqlite(e))?;
        let run = |tx: &rusqlite::Transaction<'_>| -> rusqlite::Result<ExpiredJobs> {
            let cancelled: Vec<String> = tx
                .prepare(&format!(
                    "SELECT audit.session_id FROM audit JOIN job ON job.session_id = audit.session_id
                     WHERE audit.decision = 'interrupted' AND audit.finished_at < {before}
                     ORDER BY audit.id"
                ))?
                .query_map(params![cutoff], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let reason = format!(
                "not resumed within {} s of its interruption: its totals were deleted",
                retention.as_secs()
            );
            for id in &cancelled {
                tx.execute(
                    &format!(
                        "UPDATE audit SET decision = 'cancelled', finished_at = {NOW}, reason = ?2
                         WHERE session_id = ?1 AND decision = 'interrupted'"
                    ),
                    params![id, reason],
                )?;
                tx.execute("DELETE FROM job_totals WHERE session_id = ?1", params![id])?;
            }
            let releases_dropped = tx.execute(
                &format!(
                    "UPDATE job SET release = NULL WHERE release IS NOT NULL AND session_id IN
                         (SELECT session_id FROM audit
                          WHERE decision = 'released' AND finished_at < {before})"
                ),
                params![cutoff],
            )?;
            Ok(ExpiredJobs {
                cancelled,
                releases_dropped,
            })
        };
        let expired = run(&tx).map_err(|e| self.sqlite(e))?;
        tx.commit().map_err(|e| self.sqlite(e))?;
        Ok(expired)
    }

    /// The named jobs waiting, interrupted, for their client to resume them.
    pub fn interrupted_jobs(&self) -> Result<Vec<String>, StateError> {
        self.require_current()?;
        let conn = self.conn();
        let mut statement = conn
            .prepare(
                "SELECT audit.session_id FROM audit JOIN job ON job.session_id = audit.session_id
                 WHERE audit.decision = 'interrupted' ORDER BY audit.id",
            )
            .map_err(|e| self.sqlite(e))?;
        let ids = statement
            .query_map([], |row| row.get(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<String>>>())
            .map_err(|e| self.sqlite(e))?;
        Ok(ids)
    }

    /// Records that admitted session `job.session_id` is `job.member`'s job `job.job_id`.
    /// Refused with [`StateError::DuplicateSession`] when the member already has a job of
    /// that name.
    pub fn record_job(&self, job: &JobRecord<'_>) -> Result<(), StateError> {
        let result = self.conn().execute(
            "INSERT INTO job (session_id, collaboration_id, member, job_id, terms_digest,
                 buckets, bucket_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                job.session_id,
                job.collaboration_id,
                job.member,
                job.job_id,
                &job.terms_digest[..],
                i64::from(job.buckets),
                job.bucket_key.as_ref().map(|k| &k[..]),
            ],
        );
        match result {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StateError::DuplicateSession(format!("job {}", job.job_id)))
            }
            Err(e) => Err(self.sqlite(e)),
        }
    }

    /// `member`'s job `job_id` in `collaboration_id`, if it named one so.
    pub fn find_job(
        &self,
        collaboration_id: &str,
        member: &str,
        job_id: &str,
    ) -> Result<Option<StoredJob>, StateError> {
        self.require_current()?;
        type Row = (
            String,
            String,
            String,
            Vec<u8>,
            i64,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
        );
        let row: Option<Row> = self
            .conn()
            .query_row(
                "SELECT job.session_id, audit.decision, audit.reason, job.terms_digest,
                     job.buckets, job.bucket_key, job.release
                 FROM job JOIN audit ON audit.session_id = job.session_id
                 WHERE job.collaboration_id = ?1 AND job.member = ?2 AND job.job_id = ?3",
                params![collaboration_id, member, job_id],
                |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                        row.get(6)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.sqlite(e))?;
        let Some((session_id, decision, reason, terms_digest, buckets, key, release)) = row else {
            return Ok(None);
        };
        let corrupt = |what: &str| StateError::Corrupt(format!("job {job_id}: {what}"));
        let buckets = u32::try_from(buckets).map_err(|_| corrupt("its buckets"))?;
        let bucket_key = key
            .map(|k| <[u8; 32]>::try_from(k.as_slice()).map_err(|_| corrupt("its bucket key")))
            .transpose()?;
        let done = self.job_checkpoint(&session_id)?;
        let release = release
            .map(|blob| super::delivery::unpack(&blob).ok_or_else(|| corrupt("its release")))
            .transpose()?;
        Ok(Some(StoredJob {
            decision: decision.parse()?,
            session_id,
            reason,
            terms_digest,
            buckets,
            bucket_key,
            done,
            release,
        }))
    }

    /// Reopens interrupted job `session_id` (its entry `running` again, its end cleared):
    /// `false` when it is not interrupted (another client reopened it first, or it ended).
    pub fn reopen_job(&self, session_id: &str) -> Result<bool, StateError> {
        let changed = self
            .conn()
            .execute(
                "UPDATE audit SET decision = 'running', finished_at = NULL, reason = ''
                 WHERE session_id = ?1 AND decision = 'interrupted'
                     AND session_id IN (SELECT session_id FROM job)",
                params![session_id],
            )
            .map_err(|e| self.sqlite(e))?;
        Ok(changed == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::super::ledger::tests::policy;
    use super::super::{Completion, attempt};
    use super::*;

    fn record<'a>(session_id: &'a str, member: &'a str, job_id: &'a str) -> JobRecord<'a> {
        JobRecord {
            session_id,
            collaboration_id: "c",
            member,
            job_id,
            terms_digest: [7; 32],
            buckets: 8,
            bucket_key: Some([9; 32]),
        }
    }

    #[test]
    fn a_named_job_is_found_by_its_member_only_and_reopened_only_when_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path().join("state.db")).unwrap();
        db.begin(&attempt("s1", "adv", "q", 1)).unwrap();
        db.charge("s1", &policy(None, None, None), "adv", None, &[])
            .unwrap();
        db.record_buckets("s1", 8).unwrap();
        db.record_job(&record("s1", "adv", "nightly")).unwrap();
        // One name per member: a second job of that name is refused.
        db.begin(&attempt("s2", "adv", "q", 1)).unwrap();
        assert!(matches!(
            db.record_job(&record("s2", "adv", "nightly")),
            Err(StateError::DuplicateSession(_))
        ));
        // Another member's name space is its own: the name is not found for it.
        assert_eq!(db.find_job("c", "ret", "nightly").unwrap(), None);
        assert_eq!(db.find_job("other", "adv", "nightly").unwrap(), None);

        db.record_bucket("s1", 3, b"after 3").unwrap();
        let found = db.find_job("c", "adv", "nightly").unwrap().unwrap();
        assert_eq!(found.decision, Decision::Running);
        assert_eq!((found.buckets, found.bucket_key), (8, Some([9; 32])));
        assert_eq!(found.terms_digest, vec![7; 32]);
        assert_eq!(found.done, Some((3, b"after 3".to_vec())));
        // A running job is not reopened.
        assert!(!db.reopen_job("s1").unwrap());

        // The client went away: interrupted, its totals and figures kept.
        let first = Completion {
            bytes_received: 100,
            messages_received: 4,
            compute_ms: 10,
            ..Completion::default()
        };
        db.finish("s1", Decision::Interrupted, "peer gone", &first)
            .unwrap();
        let found = db.find_job("c", "adv", "nightly").unwrap().unwrap();
        assert_eq!(found.decision, Decision::Interrupted);
        assert_eq!(found.done, Some((3, b"after 3".to_vec())));
        // Reopened once: the second resumer finds it running.
        assert!(db.reopen_job("s1").unwrap());
        assert!(!db.reopen_job("s1").unwrap());
        let entry = db.entry("s1").unwrap().unwrap();
        assert_eq!(
            (entry.decision, entry.finished_at),
            (Decision::Running, None)
        );
        db.record_bucket("s1", 8, b"after 8").unwrap();
        // The release adds the second connection's figures to the first's and spends the
        // totals.
        let second = Completion {
            bytes_received: 50,
            messages_received: 2,
            compute_ms: 5,
            released_rows: 3,
            ..Completion::default()
        };
        let kept = vec![b"hello".to_vec(), b"done".to_vec()];
        assert!(
            db.release_delivering("s1", &second, &[], Some(&kept))
                .unwrap()
        );
        let found = db.find_job("c", "adv", "nightly").unwrap().unwrap();
        assert_eq!(found.release, Some(kept));
        let entry = db.entry("s1").unwrap().unwrap();
        assert_eq!(entry.decision, Decision::Released);
        assert_eq!(
            (
                entry.bytes_received,
                entry.messages_received,
                entry.compute_ms
            ),
            (150, 6, 15)
        );
        assert_eq!(entry.released_rows, 3);
        assert_eq!(db.job_checkpoint("s1").unwrap(), None);
        // A released job is never reopened.
        assert!(!db.reopen_job("s1").unwrap());
        // An entry that is not a named job is never reopened, interrupted or not.
        db.finish(
            "s2",
            Decision::Interrupted,
            "stopped",
            &Completion::default(),
        )
        .unwrap();
        assert!(!db.reopen_job("s2").unwrap());
    }

    #[test]
    fn jobs_not_resumed_in_time_are_cancelled_and_kept_releases_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path().join("state.db")).unwrap();
        let named = |id: &str, job: &str| {
            db.begin(&attempt(id, "adv", "q", 1)).unwrap();
            db.charge(id, &policy(None, None, None), "adv", None, &[])
                .unwrap();
            db.record_buckets(id, 8).unwrap();
            db.record_job(&record(id, "adv", job)).unwrap();
            db.record_bucket(id, 2, b"after 2").unwrap();
        };
        // One job interrupted, one released with its release kept, one still running, and an
        // interrupted entry that is not a named job.
        named("waits", "a");
        db.finish(
            "waits",
            Decision::Interrupted,
            "peer gone",
            &Completion::default(),
        )
        .unwrap();
        named("released", "b");
        db.release_delivering(
            "released",
            &Completion::default(),
            &[],
            Some(&[b"r".to_vec()]),
        )
        .unwrap();
        named("runs", "c");
        db.begin(&attempt("plain", "adv", "q", 1)).unwrap();
        db.finish(
            "plain",
            Decision::Interrupted,
            "stopped",
            &Completion::default(),
        )
        .unwrap();
        assert_eq!(db.interrupted_jobs().unwrap(), ["waits"]);

        // Within the retention nothing changes.
        assert_eq!(
            db.expire_jobs(Duration::from_secs(3600)).unwrap(),
            ExpiredJobs::default()
        );
        assert_eq!(
            db.job_checkpoint("waits").unwrap(),
            Some((2, b"after 2".to_vec()))
        );
        std::thread::sleep(Duration::from_millis(5));
        let expired = db.expire_jobs(Duration::ZERO).unwrap();
        assert_eq!(
            expired,
            ExpiredJobs {
                cancelled: vec!["waits".to_owned()],
                releases_dropped: 1
            }
        );
        let waits = db.find_job("c", "adv", "a").unwrap().unwrap();
        assert_eq!(waits.decision, Decision::Cancelled);
        assert!(
            waits.reason.starts_with("not resumed within 0 s"),
            "{}",
            waits.reason
        );
        assert_eq!(waits.done, None);
        assert!(!db.reopen_job("waits").unwrap());
        let released = db.find_job("c", "adv", "b").unwrap().unwrap();
        assert_eq!(
            (released.decision, released.release),
            (Decision::Released, None)
        );
        // The running job and the unnamed entry are left as they were.
        assert_eq!(
            db.entry("runs").unwrap().unwrap().decision,
            Decision::Running
        );
        assert_eq!(
            db.job_checkpoint("runs").unwrap(),
            Some((2, b"after 2".to_vec()))
        );
        assert_eq!(
            db.entry("plain").unwrap().unwrap().decision,
            Decision::Interrupted
        );
        assert!(db.interrupted_jobs().unwrap().is_empty());
        // Nothing is expired twice.
        assert_eq!(
            db.expire_jobs(Duration::ZERO).unwrap(),
            ExpiredJobs::default()
        );
    }
}
