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
//!   bucket more, or ends before every bucket has its own, is an error, and nothing is opened;
//! - a named job saves each bucket (its unblinding key `b_i⁻¹`, the provider's shape, its
//!   identifiers in the order their points went; owner-only) and syncs its items before the
//!   bucket's last message goes: the provider counts a bucket done only once it has that
//!   message, so every bucket the server holds can be opened by a client that resumes.

use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use cleanroom_data::bucket_files::WorkDir;
use cleanroom_psi::{
    ListMessage, ListOutcome, ListQuerier, ListQuerierTable, ParkedListBucket, ProtocolError,
    WireMessage,
};
use cleanroom_rules::Plan;

use super::job::KeyFile;
use super::{ClientError, Progress, psi_messages};
use crate::exchange::{Exchange, PeerError, Role};
use crate::job::JobTerms;
use crate::proto::{self, RunSessionRequest};

/// Every bucket of a list job parked, with the files of the provider's items: what is opened
/// once the session ended. Its directory goes with it.
pub(super) struct ParkedJob {
    _dir: JobDir,
    buckets: Vec<(ParkedListBucket, PathBuf)>,
}

/// Where a list job's items (and a named job's saved buckets) are: a fresh work directory, or
/// a named job's own directory, removed once the job's release is in (never before: a resume
/// opens the buckets done from it).
enum JobDir {
    Fresh { _work: WorkDir },
    Named(PathBuf),
}

impl Drop for JobDir {
    fn drop(&mut self) {
        if let JobDir::Named(path) = self {
            let _ = std::fs::remove_dir_all(path);
        }
    }
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

/// A bucket's items file: buffered, and synced to disk whenever it is flushed (the querier
/// flushes it when it saves or parks the bucket).
struct ItemsFile(BufWriter<std::fs::File>);

impl Write for ItemsFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()?;
        self.0.get_ref().sync_data()
    }
}

/// A named job's bucket querier up to the moment its items are all in: then it stops, so that
/// the bucket is saved before its last message goes.
struct UntilItems(ListQuerier);

impl Role for UntilItems {
    fn poll(&mut self) -> Option<Vec<u8>> {
        match self.0.items_complete() {
            true => None,
            false => Role::poll(&mut self.0),
        }
    }

    fn handle(&mut self, bytes: &[u8]) -> Result<(), PeerError> {
        Role::handle(&mut self.0, bytes)
    }

    fn done(&self) -> bool {
        self.0.items_complete()
    }
}

/// Writes a bucket's saved `state` to `path`, owner-only, synced and renamed into place.
fn save_state(path: &Path, state: &[u8]) -> std::io::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&partial)?;
    file.write_all(state)?;
    file.sync_all()?;
    std::fs::rename(&partial, path)
}

/// A named job's directory of parked buckets, owner-only, kept as it is when it exists.
fn named_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)
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
/// the job's release: returns the parked job, to open once the session ended. A named job
/// (`key_file`) keeps its buckets beside the key file and opens those the server holds done
/// (a resume) from there.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run(
    exchange: &mut Exchange<'_, RunSessionRequest>,
    inbound: &mut tonic::Streaming<proto::RunSessionResponse>,
    plan: &Plan,
    job: &JobTerms,
    table: ListQuerierTable,
    (work_dir, key_file): (Option<&Path>, Option<&KeyFile>),
    report: &(dyn Fn(Progress<'_>) + Sync),
) -> Result<ParkedJob, ClientError> {
    let internal = |what: String| ClientError::Internal(what);
    // A fresh directory goes whatever happens; a named job's stays until its release is in.
    let (fresh, dir) = match key_file {
        Some(file) => {
            let path = work_dir
                .map_or_else(std::env::temp_dir, Path::to_path_buf)
                .join(file.list_dir_name());
            named_dir(&path)
                .map_err(|e| internal(format!("the job's directory {}: {e}", path.display())))?;
            (None, path)
        }
        None => {
            let work = WorkDir::new(work_dir)
                .map_err(|e| internal(format!("the job's work directory: {e}")))?;
            let path = work.path().to_owned();
            (Some(work), path)
        }
    };
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
        let part_rows = part.distinct();
        let items = dir.join(format!("items-{bucket}"));
        let state = dir.join(format!("bucket-{bucket}.state"));
        if bucket < job.done {
            // Held by the server: opened from what this client saved when it ran.
            let saved = zeroize::Zeroizing::new(std::fs::read(&state).map_err(|e| {
                internal(format!(
                    "the server holds {} buckets of this job, whose evaluations only the state \
                     saved in {} opens, and bucket {bucket}'s cannot be read ({e}); name a new \
                     job",
                    job.done,
                    dir.display()
                ))
            })?);
            let restored = ParkedListBucket::restore(&saved)
                .map_err(|e| internal(format!("bucket {bucket} of the job: {e}")))?;
            parked.push((restored, items));
            rows_done += part_rows;
            continue;
        }
        report(Progress::Bucket {
            done: bucket,
            buckets: job.buckets,
            rows_done,
            rows,
        });
        let _ = std::fs::remove_file(&state);
        let (items_path, domain) = (items.clone(), domain.clone());
        let (_, querier) = exchange
            .blocking((), move |_| {
                let file = std::fs::File::create(&items_path)?;
                let sink = Box::new(ItemsFile(BufWriter::with_capacity(1 << 16, file)));
                Ok::<_, std::io::Error>(ListQuerier::for_bucket(
                    &domain, part, columns, limits, sink,
                ))
            })
            .await?;
        let mut querier = querier
            .map_err(|e| internal(format!("the job's items file of bucket {bucket}: {e}")))?;
        if key_file.is_some() {
            // Saved before the bucket's last message goes: once the server has that message,
            // it counts the bucket done.
            let UntilItems(q) = exchange
                .run(UntilItems(querier), &mut psi_messages(inbound))
                .await?;
            querier = q;
            let (back, saved) = exchange
                .blocking((querier, state), |(querier, state)| {
                    let saved = querier.save_bucket().map_err(|e| e.to_string())?;
                    save_state(state, &saved).map_err(|e| e.to_string())
                })
                .await?;
            querier = back.0;
            saved.map_err(|e| internal(format!("saving bucket {bucket} of the job: {e}")))?;
        }
        let querier = exchange.run(querier, &mut psi_messages(inbound)).await?;
        let bucket_parked = querier
            .park()
            .map_err(|e| internal(format!("bucket {bucket} of the job: {e}")))?;
        parked.push((bucket_parked, items));
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
        _dir: match fresh {
            Some(work) => JobDir::Fresh { _work: work },
            None => JobDir::Named(dir),
        },
        buckets: release.buckets,
    })
}
