//! The server's side of a list query as a job of buckets (PROTOCOL.md 3.6, docs/scale-out.md
//! §1): its table split into bucket files once, one list provider per bucket (fresh key, one
//! payload width for the whole job), each bucket's evaluations withheld in a file of the job's
//! directory, and the release, every bucket's evaluations in bucket order, streamed from those
//! files once the job is recorded.
//!
//! Invariants:
//! - memory holds one bucket of the server's rows and of the querier's points: the
//!   evaluations of buckets done are on disk (fsynced before the next bucket begins), 32 bytes
//!   and a little framing per querier point;
//! - every bucket's hello announces the job's one width (the widest bucket's), so no bucket
//!   tells its own longest payload;
//! - the querier's points over all buckets are bounded by the rows it declared: each bucket's
//!   provider admits at most what the earlier buckets left;
//! - nothing of a bucket is released on its own: a querier that stops before the last bucket
//!   gets no evaluation at all.
//! - a named job keeps its evaluations in `cleanroom-job-<session>.evaluations` (a resume
//!   replaces its bucket files, not these) and the points of its buckets done as its
//!   checkpoint: a resume goes on from `buckets_done`, within the same declared bound; the
//!   directory goes when the job ends, or with the job when retention cancels it.

use std::path::PathBuf;
use std::sync::Arc;

use cleanroom_data::TableSpec;
use cleanroom_data::bucket_files::{WorkDir, read_messages, write_messages};
use cleanroom_psi::{ListProvider, ListProviderTable};
use cleanroom_rules::Plan;
use tokio_stream::Stream;

use super::admission::{Host, state_call};
use super::run::{Release, ServerFrames, matcher_data_error};
use crate::data::{self, DataFileError};
use crate::exchange::{Exchange, ExchangeError};
use crate::job::{JobTerms, ListPartition, PartitionedRows, spill_error};
use crate::outcome::SessionError;
use crate::roles::ListProviderRole;

/// A list job's release, withheld in one file per bucket of its work directory until the job
/// is recorded; the directory goes when this does.
pub(super) struct WithheldEvaluations {
    _work: WorkDir,
    files: Vec<PathBuf>,
    /// Messages over all files.
    pub messages: u64,
    /// Bytes of those messages.
    pub bytes: u64,
}

impl WithheldEvaluations {
    /// Sends every file's messages, bucket by bucket, each file read off the runtime (one
    /// bucket's evaluations in memory at a time).
    pub(super) async fn send<T: ServerFrames>(
        self,
        exchange: &mut Exchange<'_, T>,
    ) -> Result<(), SessionError> {
        for path in &self.files {
            let path = path.clone();
            let (_, messages) = exchange.blocking((), move |_| read_messages(&path)).await?;
            let messages = messages.map_err(|e| {
                SessionError::Internal(format!("the job's withheld evaluations: {e}"))
            })?;
            for message in messages {
                exchange.send_message(message).await?;
            }
        }
        Ok(())
    }
}

impl Host {
    /// Plays the psi list provider of each bucket of `job` in turn until every bucket's points
    /// arrived, withholding the evaluations in files: returns the release, not sent yet.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn list_job<T, S>(
        &self,
        session_id: &str,
        plan: &Plan,
        matcher_path: TableSpec,
        limits: cleanroom_psi::Limits,
        (job, checkpoint, named): (&JobTerms, Option<Vec<u8>>, bool),
        inbound: &mut S,
        exchange: &mut Exchange<'_, T>,
        matcher_rows: &mut u64,
    ) -> Result<Release, SessionError>
    where
        T: ServerFrames,
        S: Stream<Item = Result<Vec<u8>, ExchangeError>> + Unpin,
    {
        let data_error = |source| matcher_data_error(plan, source);
        // A job that may resume keeps its withheld evaluations beside its bucket files, in a
        // directory that a resume does not replace.
        let work = self.job_work_dir(session_id, named)?;
        let kept = match named {
            true => evaluations_dir(self.config.work_dir.as_deref(), session_id),
            false => work.path().to_owned(),
        };
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(&kept)
            .map_err(|e| SessionError::Internal(format!("the job's evaluations directory: {e}")))?;
        let empty = {
            let side = plan.matcher();
            ListProviderTable::new(side.normalization, side.list_columns.len())
                .map_err(|e| SessionError::Internal(format!("the job's list table: {e}")))?
        };
        // The table, read once into the bucket files, then each bucket once more for the job's
        // width (off the runtime: it is the whole table).
        let (dir, terms, table_plan, first) = (
            work.path().to_owned(),
            job.clone(),
            plan.clone(),
            empty.clone(),
        );
        let (_, partitioned) = exchange
            .blocking((), move |_| {
                let spill = spill_error(&dir, &table_plan.matcher().table);
                let side = (&table_plan.domain(), table_plan.matcher().normalization);
                let mut partition =
                    ListPartition::create(&dir, "provider", &terms, side).map_err(&spill)?;
                data::list_provider_rows(&table_plan, &matcher_path, &mut partition)?;
                let rows = partition.finish().map_err(spill)?;
                let width = job_width(&rows, &first, terms.buckets);
                Ok::<_, DataFileError>((rows, width))
            })
            .await?;
        let (rows, width) = partitioned.map_err(data_error)?;
        let width = width.map_err(|e| SessionError::Internal(format!("the job's {e}")))?;
        let rows = Arc::new(rows);
        *matcher_rows = rows.stats.rows;

        let declared = limits.declared_set_size;
        // A resumed job goes on from its buckets done: their evaluations are on disk, and the
        // points they took are in its checkpoint.
        let mut points = match checkpoint.as_deref() {
            None => 0,
            Some(bytes) => <[u8; 8]>::try_from(bytes)
                .map(u64::from_be_bytes)
                .map_err(|_| {
                    SessionError::Internal("the list job's stored progress does not restore".into())
                })?,
        };
        let (mut files, mut messages, mut bytes) = (Vec::new(), 0, 0);
        for bucket in 0..job.done {
            let path = kept.join(format!("evaluations-{bucket}"));
            let (_, done) = exchange
                .blocking(path.clone(), |path| read_messages(path))
                .await?;
            let done = done.map_err(|e| {
                SessionError::Internal(format!("the job's evaluations of bucket {bucket}: {e}"))
            })?;
            messages += done.len() as u64;
            bytes += done.iter().map(|m| m.len() as u64).sum::<u64>();
            files.push(path);
        }
        // As for an aggregate job: the minimum rate holds from the second bucket on.
        let min_rate = exchange.min_rate.take();
        for bucket in job.done..job.buckets {
            if bucket == job.done + 1 {
                exchange.min_rate = min_rate;
            }
            let started = std::time::Instant::now();
            // The querier's points over all buckets stay within the rows it declared.
            let limits = cleanroom_psi::Limits {
                declared_set_size: declared.map(|d| d.saturating_sub(points)),
                ..limits
            };
            let (bucket_rows, table, domain) = (Arc::clone(&rows), empty.clone(), plan.domain());
            let (_, provider) = exchange
                .blocking((), move |_| {
                    let table = bucket_rows.list_provider_bucket(bucket, table)?;
                    let rows = table.stats().rows;
                    let provider = ListProvider::new(&domain, table, limits).with_job_width(width);
                    Ok::<_, crate::job::BucketLoadError>((ListProviderRole::new(provider), rows))
                })
                .await?;
            let (role, rows) =
                provider.map_err(|e| SessionError::Internal(format!("the job's {e}")))?;
            let mut role = exchange.run(role, inbound).await?;
            points += role.querier_set_size().unwrap_or(0);
            // Withheld: durable before the next bucket begins, sent only after the job's
            // record.
            let withheld = role.release();
            messages += withheld.len() as u64;
            bytes += withheld.iter().map(|m| m.len() as u64).sum::<u64>();
            let path = kept.join(format!("evaluations-{bucket}"));
            let target = path.clone();
            let (_, written) = exchange
                .blocking((), move |_| write_messages(&target, &withheld))
                .await?;
            written.map_err(|e| {
                SessionError::Internal(format!("the job's evaluations of bucket {bucket}: {e}"))
            })?;
            files.push(path);
            // The job's progress in its audit entry, with the points its buckets took (its
            // evaluations are in the files): what a resume goes on from.
            let (id, done) = (session_id.to_owned(), bucket + 1);
            state_call(&self.config.state, move |s| {
                s.record_bucket(&id, done, &points.to_be_bytes())
            })
            .await?;
            self.events.bucket_matched(
                session_id,
                (bucket + 1, job.buckets),
                rows,
                started.elapsed(),
                exchange.counters.bytes_received,
            );
        }
        Ok(Release {
            released: 0,
            suppressed: 0,
            bounded: (0, 0),
            messages: Vec::new(),
            hello: None,
            withheld: Some(WithheldEvaluations {
                _work: work,
                files,
                messages,
                bytes,
            }),
        })
    }
}

/// Where named list job `session_id` keeps its withheld evaluations: beside its bucket files
/// directory in `work_dir` (or the system's temporary directory).
fn evaluations_dir(work_dir: Option<&std::path::Path>, session_id: &str) -> PathBuf {
    work_dir
        .map_or_else(std::env::temp_dir, std::path::Path::to_path_buf)
        .join(crate::retention::evaluations_dir_name(session_id))
}

/// Removes named job `session_id`'s withheld evaluations, if it has any: it ended. A
/// directory that cannot be removed is logged and left (retention does not come back to it).
pub(super) fn forget_evaluations(work_dir: Option<&std::path::Path>, session_id: &str) {
    let dir = evaluations_dir(work_dir, session_id);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(
            target: "cleanroom::serve",
            "cannot remove an ended job's withheld evaluations {}: {e}",
            dir.display()
        ),
    }
}

/// The job's one payload width: the widest of its buckets', each bucket loaded from its file.
fn job_width(
    rows: &PartitionedRows,
    empty: &ListProviderTable,
    buckets: u32,
) -> Result<usize, crate::job::BucketLoadError> {
    (0..buckets).try_fold(0, |width, bucket| {
        let table = rows.list_provider_bucket(bucket, empty.clone())?;
        Ok(width.max(table.payload_bytes()))
    })
}
