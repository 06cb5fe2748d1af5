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

use std::path::PathBuf;
use std::sync::Arc;

use cleanroom_data::TableSpec;
use cleanroom_data::bucket_files::{WorkDir, read_messages, write_messages};
use cleanroom_psi::{ListProvider, ListProviderTable};
use cleanroom_rules::Plan;
use tokio_stream::Stream;

use super::admission::{Host, state_call};
use super::run::{Release, ServerFrames};
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
        job: &JobTerms,
        inbound: &mut S,
        exchange: &mut Exchange<'_, T>,
        matcher_rows: &mut u64,
    ) -> Result<Release, SessionError>
    where
        T: ServerFrames,
        S: Stream<Item = Result<Vec<u8>, ExchangeError>> + Unpin,
    {
        let data_error = |source: DataFileError| SessionError::Data {
            table: plan.matcher().table.clone(),
            source: Box::new(source),
        };
        let work = WorkDir::new(self.config.work_dir.as_deref())
            .map_err(|e| SessionError::Internal(format!("the job's work directory: {e}")))?;
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
        let (mut files, mut messages, mut bytes, mut points) = (Vec::new(), 0, 0, 0u64);
        // As for an aggregate job: the minimum rate holds from the second bucket on.
        let min_rate = exchange.min_rate.take();
        for bucket in 0..job.buckets {
            if bucket == 1 {
                exchange.min_rate = min_rate;
            }
            let started = std::time::Instant::now();
            // The querier's points over all buckets stay within the rows it declared.
            let limits = cleanroom_psi::Limits {
                declared_set_size: declared.map(|d| d.saturating_sub(points)),
                ..limits.clone()
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
            let path = work.path().join(format!("evaluations-{bucket}"));
            let target = path.clone();
            let (_, written) = exchange
                .blocking((), move |_| write_messages(&target, &withheld))
                .await?;
            written.map_err(|e| {
                SessionError::Internal(format!("the job's evaluations of bucket {bucket}: {e}"))
            })?;
            files.push(path);
            // The job's progress in its audit entry. A list job keeps no totals (its
            // evaluations are in the files, and it cannot be resumed): the checkpoint is empty.
            let (id, done) = (session_id.to_owned(), bucket + 1);
            state_call(&self.config.state, move |s| s.record_bucket(&id, done, &[])).await?;
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
