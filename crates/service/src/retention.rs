//! How long a named job is kept for its client to resume it, and what the server removes
//! once the wait is over (PROTOCOL.md 3.6, step 6).
//!
//! A named job that stopped (its client went away, or this server stopped) keeps in the
//! state file its totals over the buckets done — exact counts per pair of groups, and sums
//! under the querier's key — until it resumes and ends; a released one keeps its release, to
//! send again to a client that lost it. Neither stays forever: [`tidy`] cancels every job
//! interrupted longer ago than [`Limits::job_retention`](crate::Limits::job_retention),
//! deletes its totals, and drops the kept releases of jobs released as long ago. A resume of
//! a cancelled job is refused as for any job that ended; the client then removes what it
//! kept for it.
//!
//! Bucket files: a job's own directory (`cleanroom-job-<session id>` in the work directory)
//! is removed when its session ends, whatever the end; only a killed server leaves one. The
//! server removes those of every interrupted job when it starts, before it accepts a
//! connection (no job runs then, and a resume reads the table into bucket files afresh), and
//! those of every job it cancels. A named list job's withheld evaluations
//! (`cleanroom-job-<session id>.evaluations`) stay while it waits, interrupted, and go when it
//! ends or is cancelled.

use std::path::Path;
use std::time::Duration;

use crate::server::ServerConfig;
use crate::state::{ExpiredJobs, StateError};

/// How often a running server looks for jobs past their retention.
pub(crate) const TIDY_INTERVAL: Duration = Duration::from_secs(3600);

/// The name of named job `session_id`'s directory of bucket files, in the server's work
/// directory.
pub(crate) fn job_dir_name(session_id: &str) -> String {
    format!("cleanroom-job-{session_id}")
}

/// The directory where named list job `session_id` keeps the evaluations it withholds, in the
/// server's work directory: not replaced by a resume (the buckets done are not run again),
/// removed when the job ends or is cancelled.
pub(crate) fn evaluations_dir_name(session_id: &str) -> String {
    format!("cleanroom-job-{session_id}.evaluations")
}

/// What one [`tidy`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tidied {
    /// The jobs cancelled and the releases dropped.
    pub expired: ExpiredJobs,
    /// Job directories of bucket files removed.
    pub directories_removed: usize,
}

impl Tidied {
    /// Whether anything was removed.
    pub fn is_empty(&self) -> bool {
        self.expired.cancelled.is_empty()
            && self.expired.releases_dropped == 0
            && self.directories_removed == 0
    }
}

/// Ends what named jobs keep past `config.limits.job_retention` ([`StateDb::expire_jobs`]
/// (crate::StateDb::expire_jobs)) and removes the bucket directories of the jobs cancelled;
/// `at_start` (no session runs yet): also those of every job still waiting, interrupted. A
/// directory that cannot be removed is logged and left.
pub fn tidy(config: &ServerConfig, at_start: bool) -> Result<Tidied, StateError> {
    let expired = config.state.expire_jobs(config.limits.job_retention)?;
    let mut stale = expired.cancelled.clone();
    if at_start {
        stale.extend(config.state.interrupted_jobs()?);
    }
    let parent = config.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let directories_removed = stale
        .iter()
        .filter(|id| remove_dir(&parent.join(job_dir_name(id))))
        .count();
    // A cancelled list job's withheld evaluations go too (an interrupted one keeps them: its
    // resume does not run its buckets done again).
    let directories_removed = directories_removed
        + expired
            .cancelled
            .iter()
            .filter(|id| remove_dir(&parent.join(evaluations_dir_name(id))))
            .count();
    Ok(Tidied {
        expired,
        directories_removed,
    })
}

/// Removes `dir` and what it holds: `true` when it was there and is gone.
fn remove_dir(dir: &Path) -> bool {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            tracing::warn!(
                target: "cleanroom::serve",
                "cannot remove a stopped job's bucket files {}: {e}",
                dir.display()
            );
            false
        }
    }
}

/// Runs [`tidy`] every [`TIDY_INTERVAL`], from one interval after the start (the start's own
/// runs before the server accepts a connection), logging what it removed.
pub(crate) async fn keep_tidy(
    config: ServerConfig,
    events: std::sync::Arc<crate::events::ServerEvents>,
) {
    let mut every =
        tokio::time::interval_at(tokio::time::Instant::now() + TIDY_INTERVAL, TIDY_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let config = config.clone();
        match tokio::task::spawn_blocking(move || tidy(&config, false)).await {
            Ok(Ok(tidied)) => events.jobs_tidied(&tidied),
            Ok(Err(e)) => tracing::warn!(
                target: "cleanroom::serve",
                "cannot look for named jobs past their retention: {e}"
            ),
            Err(_) => {}
        }
    }
}
