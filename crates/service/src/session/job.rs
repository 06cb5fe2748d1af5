//! The server's side of a job of buckets ([`crate::job`]): its table split into bucket files
//! once, one matcher per bucket (fresh keys, every group announced), the totals added up in
//! psi's `JobTotals`, and one release after the last bucket, decided as a session's is.

use std::sync::Arc;

use cleanroom_data::TableSpec;
use cleanroom_data::bucket_files::WorkDir;
use cleanroom_psi::{JobTotals, WireMessage};
use cleanroom_rules::Plan;
use tokio_stream::Stream;

use super::admission::{Host, state_call};
use super::run::{
    Release, ServerFrames, bucket_matcher, decide_release, matcher_data_error,
    refuse_tiny_querier_set,
};
use crate::data;
use crate::exchange::{Exchange, ExchangeError, PeerError};
use crate::job::{JobTerms, Partition, spill_error};
use crate::outcome::SessionError;

impl Host {
    /// The directory of job `session_id`'s bucket files: a fresh one, or, for a job that may
    /// resume (`named`), its own, so that a resume replaces what a killed server left.
    pub(super) fn job_work_dir(
        &self,
        session_id: &str,
        named: bool,
    ) -> Result<WorkDir, SessionError> {
        let work_dir = self.config.work_dir.as_deref();
        match named {
            true => WorkDir::named(work_dir, &crate::retention::job_dir_name(session_id)),
            false => WorkDir::new(work_dir),
        }
        .map_err(|e| SessionError::Internal(format!("the job's work directory: {e}")))
    }

    /// Plays the psi matcher of each bucket of `job` in turn until every bucket's receiver
    /// data arrived: returns the job's totals, for [`release_job`](Self::release_job).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn match_job<T, S>(
        &self,
        session_id: &str,
        plan: &Plan,
        matcher_path: TableSpec,
        limits: cleanroom_psi::Limits,
        (job, checkpoint, named): (&JobTerms, Option<Vec<u8>>, bool),
        inbound: &mut S,
        exchange: &mut Exchange<'_, T>,
        matcher_rows: &mut u64,
    ) -> Result<JobTotals, SessionError>
    where
        T: ServerFrames,
        S: Stream<Item = Result<Vec<u8>, ExchangeError>> + Unpin,
    {
        let data_error = |source| matcher_data_error(plan, source);
        let work = self.job_work_dir(session_id, named)?;
        // The table, read once into the bucket files (off the runtime: it is the whole table).
        let (dir, terms, table_plan) = (work.path().to_owned(), job.clone(), plan.clone());
        let (_, partitioned) = exchange
            .blocking((), move |_| {
                let spill = spill_error(&dir, &table_plan.matcher().table);
                let side = (&table_plan.domain(), table_plan.matcher().normalization);
                let mut partition =
                    Partition::create(&dir, "matcher", &terms, side, 0).map_err(&spill)?;
                data::matcher_rows(&table_plan, &matcher_path, &mut partition)?;
                partition.finish().map_err(spill)
            })
            .await?;
        let rows = Arc::new(partitioned.map_err(data_error)?);
        *matcher_rows = rows.stats.rows;

        // A resumed job goes on from the totals of its buckets done.
        let totals = match checkpoint {
            Some(bytes) => JobTotals::restore(&bytes, plan.noise_bounds()).map_err(|e| {
                SessionError::Internal(format!("the job's stored totals do not restore: {e}"))
            })?,
            None => JobTotals::new(plan.noise_bounds()),
        };
        if totals.buckets() != job.done {
            return Err(SessionError::Internal(format!(
                "the job's stored totals hold {} buckets, its entry {}",
                totals.buckets(),
                job.done
            )));
        }
        let mut totals = totals.require_receiver_identifiers(plan.min_release());
        let normalization = plan.matcher().normalization;
        // The client reads its table into its bucket files once it has the key, as this server
        // did: waiting for its first bucket is not trickling. The minimum rate holds from the
        // second bucket on; the idle and session timeouts throughout.
        let min_rate = exchange.min_rate.take();
        for bucket in job.done..job.buckets {
            if bucket == job.done + 1 {
                exchange.min_rate = min_rate;
            }
            let started = std::time::Instant::now();
            let (bucket_plan, bucket_rows) = (plan.clone(), Arc::clone(&rows));
            let (_, matcher) = exchange
                .blocking((), move |_| {
                    bucket_rows
                        .matcher_bucket(bucket, normalization)
                        .map(|table| {
                            let rows = table.stats().rows;
                            (bucket_matcher(&bucket_plan, table, limits), rows)
                        })
                })
                .await?;
            let (matcher, rows) =
                matcher.map_err(|e| SessionError::Internal(format!("the job's {e}")))?;
            let mut matcher = exchange.run(matcher, inbound).await?;
            // Added to the totals, never released on its own.
            totals
                .add_bucket(&mut matcher)
                .map_err(|e| ExchangeError::Peer(PeerError::Protocol(e)))?;
            // The job's progress in its audit entry and its totals, durable before the next
            // bucket begins (encoded off the runtime: a point per pair and value limb).
            let (back, checkpoint) = exchange.blocking(totals, |t| t.checkpoint()).await?;
            totals = back;
            let (id, done) = (session_id.to_owned(), bucket + 1);
            state_call(&self.config.state, move |s| {
                s.record_bucket(&id, done, &checkpoint)
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
        drop(work);
        Ok(totals)
    }

    /// Decides the job's release once, on its `totals`: returns it (not sent yet), its
    /// messages beginning with the job's hello (the group sizes summed over the buckets).
    pub(super) async fn release_job<T: ServerFrames>(
        &self,
        plan: &Plan,
        totals: JobTotals,
        exchange: &mut Exchange<'_, T>,
    ) -> Result<Release, SessionError> {
        let release_plan = plan.clone();
        let (_, released) = exchange
            .blocking(totals, move |totals| {
                let ((messages, summary), disclosed) = decide_release(&release_plan, totals)?;
                Ok::<_, cleanroom_psi::ProtocolError>(Release {
                    released: summary.released,
                    suppressed: summary.suppressed,
                    bounded: (summary.bounded, disclosed),
                    messages: messages.iter().map(WireMessage::encode).collect(),
                    hello: None,
                    withheld: None,
                })
            })
            .await?;
        released
            .map_err(|e| refuse_tiny_querier_set(plan, ExchangeError::Peer(PeerError::Protocol(e))))
    }
}

impl Host {
    /// Sends released job `session_id`'s kept release again, to a client that resumed it
    /// after losing it: the acceptance (every bucket done), the same messages, and a summary
    /// from its audit entry. Nothing is run, charged or recorded; the log says it.
    pub(super) async fn resend<T: ServerFrames>(
        &self,
        session_id: &str,
        plan: &Plan,
        job: &JobTerms,
        messages: Vec<Vec<u8>>,
        outbound: &tokio::sync::mpsc::Sender<T>,
        standing: &crate::state::Standing,
    ) -> Result<(), SessionError> {
        let id = session_id.to_owned();
        let entry = state_call(&self.config.state, move |s| s.entry(&id))
            .await?
            .ok_or_else(|| SessionError::Internal(format!("no audit entry {session_id}")))?;
        let gone = |_| SessionError::Exchange(ExchangeError::PeerGone);
        let agreement = super::agreement(&self.config.collaboration, plan);
        let accepted = super::accepted(plan, agreement, session_id, Some(job));
        outbound.send(T::accepted(accepted)).await.map_err(gone)?;
        let (count, bytes) = (
            messages.len() as u64,
            messages.iter().map(Vec::len).sum::<usize>(),
        );
        for message in messages {
            outbound.send(T::psi(message)).await.map_err(gone)?;
        }
        let summary = crate::proto::SessionSummary {
            session_id: session_id.to_owned(),
            released_rows: entry.released_rows,
            suppressed_rows: entry.suppressed_rows,
            delivered_to: Vec::new(),
            stats: Some(crate::proto::SessionStats {
                receiver_rows: entry.receiver_rows,
                messages_sent: count,
                bytes_sent: bytes as u64,
                ..Default::default()
            }),
            standing: Some(crate::privacy::standing_proto(standing)),
        };
        outbound.send(T::summary(summary)).await.map_err(gone)?;
        self.events
            .release_sent_again(session_id, &entry.member, count);
        Ok(())
    }
}
