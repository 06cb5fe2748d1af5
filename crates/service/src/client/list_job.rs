//! The client's side of a list query as a job of buckets (docs/scale-out.md §1): its
//! identifiers split by the job's key, one psi list querier per bucket (fresh key `b_i`), the
//! provider's items of each bucket written to an items file as they arrive, each bucket parked
//! until the job's release, which brings every bucket's evaluations in bucket order; the
//! payloads are opened only once the session ended on the wire.
//!
//! Invariants:
//! - the provider's items are on disk, `16 + W` bytes per provider identifier; memory holds
//!   this member's own identifiers (it joins the list with its rows anyway) and, per parked
//!   bucket, `b_i⁻¹` and the lookups of its points;
//! - a bucket takes exactly the evaluations of the points it sent; a release that gives a
//!   bucket more, or ends before every bucket has its own, is an error, and nothing is opened.

use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use cleanroom_data::bucket_files::WorkDir;
use cleanroom_psi::{
    ListMessage, ListOutcome, ListQuerier, ListQuerierTable, ParkedListBucket, ProtocolError,
    WireMessage,
};
use cleanroom_rules::Plan;

use super::{ClientError, Progress, psi_messages};
use crate::exchange::{Exchange, PeerError, Role};
use crate::job::JobTerms;
use crate::proto::{self, RunSessionRequest};

/// Every bucket of a list job parked, with the files of the provider's items: what is opened
/// once the session ended.
pub(super) struct ParkedJob {
    _work: WorkDir,
    buckets: Vec<(ParkedListBucket, PathBuf)>,
}

impl ParkedJob {
    /// Every bucket's matches, each bucket's items read back from its file.
    pub(super) fn open(self) -> Result<ListOutcome, ClientError> {
        let outcomes = self
            .buckets
            .into_iter()
            .enumerate()
            .map(|(i, (bucket, path))| {
                let items = std::fs::File::open(&path).map_err(|e| {
                    ClientError::Internal(format!("the job's items of bucket {i}: {e}"))
                })?;
                bucket
                    .open(BufReader::with_capacity(1 << 16, items))
                    .map_err(|e| ClientError::Internal(format!("bucket {i} of the job: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ListOutcome::of_buckets(outcomes))
    }
}

/// The job's release as the client takes it: each bucket's evaluations, in bucket order.
struct Release {
    buckets: Vec<(ParkedListBucket, PathBuf)>,
    at: usize,
}

impl Role for Release {
    fn poll(&mut self) -> Option<Vec<u8>> {
        None
    }

    fn handle(&mut self, bytes: &[u8]) -> Result<(), PeerError> {
        let message = ListMessage::decode(bytes)?;
        while self
            .buckets
            .get(self.at)
            .is_some_and(|(b, _)| b.awaiting() == 0)
        {
            self.at += 1;
        }
        let Some((bucket, _)) = self.buckets.get_mut(self.at) else {
            return Err(ProtocolError::Unexpected {
                got: message.kind(),
                why: "every bucket of the job has its evaluations",
            }
            .into());
        };
        bucket.handle_message(message)?;
        Ok(())
    }

    fn done(&self) -> bool {
        self.buckets.iter().all(|(b, _)| b.awaiting() == 0)
    }
}

/// Plays the psi list querier of each bucket of `job` over this member's `table`, then takes
/// the job's release: returns the parked job, to open once the session ended.
pub(super) async fn run(
    exchange: &mut Exchange<'_, RunSessionRequest>,
    inbound: &mut tonic::Streaming<proto::RunSessionResponse>,
    plan: &Plan,
    job: &JobTerms,
    table: ListQuerierTable,
    work_dir: Option<&Path>,
    report: &(dyn Fn(Progress<'_>) + Sync),
) -> Result<ParkedJob, ClientError> {
    let work = WorkDir::new(work_dir)
        .map_err(|e| ClientError::Internal(format!("the job's work directory: {e}")))?;
    let (domain, columns) = (plan.domain(), plan.matcher().list_columns.len());
    let limits = cleanroom_psi::Limits::default();
    let (key, split_domain, count) = (job.key.clone(), domain.clone(), job.buckets);
    let (_, parts) = exchange
        .blocking(Some(table), move |table| {
            table
                .take()
                .map(|t| t.into_buckets(&key, &split_domain, count))
                .unwrap_or_default()
        })
        .await?;
    let rows: u64 = parts.iter().map(ListQuerierTable::distinct).sum();
    let mut rows_done = 0;
    let mut parked = Vec::with_capacity(parts.len());
    for (bucket, part) in (0..job.buckets).zip(parts) {
        report(Progress::Bucket {
            done: bucket,
            buckets: job.buckets,
            rows_done,
            rows,
        });
        let part_rows = part.distinct();
        let path = work.path().join(format!("items-{bucket}"));
        let (items_path, domain) = (path.clone(), domain.clone());
        let (_, querier) = exchange
            .blocking((), move |_| {
                let file = std::fs::File::create(&items_path)?;
                let sink = Box::new(BufWriter::with_capacity(1 << 16, file));
                Ok::<_, std::io::Error>(ListQuerier::for_bucket(
                    &domain, part, columns, limits, sink,
                ))
            })
            .await?;
        let querier = querier.map_err(|e| {
            ClientError::Internal(format!("the job's items file of bucket {bucket}: {e}"))
        })?;
        let querier = exchange.run(querier, &mut psi_messages(inbound)).await?;
        let bucket_parked = querier
            .park()
            .map_err(|e| ClientError::Internal(format!("bucket {bucket} of the job: {e}")))?;
        parked.push((bucket_parked, path));
        rows_done += part_rows;
    }
    report(Progress::Bucket {
        done: job.buckets,
        buckets: job.buckets,
        rows_done,
        rows,
    });
    let release = Release {
        buckets: parked,
        at: 0,
    };
    let release = exchange.run(release, &mut psi_messages(inbound)).await?;
    Ok(ParkedJob {
        _work: work,
        buckets: release.buckets,
    })
}
