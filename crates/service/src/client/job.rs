//! The client's side of a job of buckets ([`crate::job`]): one psi receiver per bucket (fresh
//! blinding keys, one value key for the whole job, no result), then the job's one release,
//! checked and opened by a [`ResultOpener`] against the client's group sizes summed over the
//! buckets.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cleanroom_data::TableSpec;
use cleanroom_data::bucket_files::WorkDir;
use cleanroom_psi::elgamal::ValueKey;
use cleanroom_psi::{AggregateMessage, Receiver, ResultKeys, ResultOpener, WireMessage};
use cleanroom_rules::{Plan, Role as PlanRole};

use super::{ClientError, Progress, psi_messages};
use crate::data::{self, DataFileError};
use crate::exchange::{Exchange, PeerError, Role};
use crate::job::{ClientBuckets, JobTerms, Partition, matched_rows, spill_error};
use crate::proto::{self, RunSessionRequest};
use crate::session::value_ranges;

/// The job's release as the client takes it: the opener, as a role that sends nothing and is
/// done once `MatcherDone` arrived.
struct Release(ResultOpener);

impl Role for Release {
    fn poll(&mut self) -> Option<Vec<u8>> {
        None
    }

    fn handle(&mut self, bytes: &[u8]) -> Result<(), PeerError> {
        let message = AggregateMessage::decode(bytes)?;
        self.0.handle_message(message)?;
        Ok(())
    }

    fn done(&self) -> bool {
        self.0.is_finished()
    }
}

/// Reads the client's table again, into the job's bucket files under a fresh directory
/// (inside `work_dir` when given; a named job's own, `key_file`'s, replacing what a killed
/// client left): the second pass of a table too large for memory.
pub(super) async fn partition(
    plan: &mut Plan,
    path: &TableSpec,
    job: &JobTerms,
    (work_dir, key_file): (Option<&std::path::Path>, Option<&KeyFile>),
) -> Result<(WorkDir, ClientBuckets), ClientError> {
    let work = match key_file {
        Some(file) => WorkDir::named(work_dir, &file.work_name()),
        None => WorkDir::new(work_dir),
    }
    .map_err(|e| ClientError::Internal(format!("the job's work directory: {e}")))?;
    let (dir, terms, mut table_plan, spec) = (
        work.path().to_owned(),
        job.clone(),
        plan.clone(),
        path.clone(),
    );
    let (rows, table_plan) = tokio::task::spawn_blocking(move || {
        let spill = spill_error(&dir, &table_plan.receiver().table);
        let side = (&table_plan.domain(), table_plan.receiver().normalization);
        let columns = table_plan.receiver().value_columns.len();
        let partitioned = Partition::create(&dir, "receiver", &terms, side, columns)
            .map_err(&spill)
            .and_then(|mut partition| {
                data::receiver_rows(&mut table_plan, &spec, &mut partition)?;
                partition.finish().map_err(spill)
            });
        (partitioned, table_plan)
    })
    .await
    .map_err(|e| ClientError::Internal(e.to_string()))?;
    *plan = table_plan;
    let empty = plan.empty_receiver_table().map_err(|source| {
        ClientError::Data(DataFileError::Rows {
            location: path.to_string(),
            source: Box::new(source),
        })
    })?;
    Ok((work, ClientBuckets::Files { rows: rows?, empty }))
}

/// Seals a job's result keys to each receiver other than the querier (the query's own).
pub(super) type Seal<'a> =
    dyn Fn(&Plan, &ResultKeys) -> Result<Vec<proto::SealedResultKeys>, String> + Sync + 'a;

/// Runs the job's buckets in order over the session's streams, then takes its release:
/// returns the opener holding it (`None` when the result goes to other receivers only) and,
/// for a private query grouped by this member's columns, how many of its identifiers were
/// kept in fewer groups (summed over the buckets). The buckets the server already holds
/// (`job.done`, a resumed job) are only read again, for this side's group sizes; `value_key`
/// is the job's (the stored one when it resumes). With `seal`, the job's result keys are
/// sealed to the other receivers and sent after the last bucket (PROTOCOL.md 3.6, step 7);
/// `receives`: whether this member gets the release.
pub(super) async fn run(
    exchange: &mut Exchange<'_, RunSessionRequest>,
    inbound: &mut tonic::Streaming<proto::RunSessionResponse>,
    plan: &Plan,
    (job, value_key): (&JobTerms, Option<ValueKey>),
    mut buckets: ClientBuckets,
    (seal, receives): (Option<&Seal<'_>>, bool),
    report: &(dyn Fn(Progress<'_>) + Sync),
) -> Result<(Option<ResultOpener>, Option<u64>), ClientError> {
    let value_key = Arc::new(value_key);
    let limits = cleanroom_psi::Limits::default();
    let bound = plan
        .privacy()
        .filter(|_| plan.grouped_by() == Some(PlanRole::Receiver))
        .map(|p| p.max_groups);
    let ranges = plan.privacy().and_then(|p| p.proven_ranges());
    let one_matcher_group = plan.grouped_by() != Some(PlanRole::Matcher);
    let mut over = bound.map(|_| 0u64);
    let mut sizes: Vec<(String, u64)> = Vec::new();
    let (mut rows_done, rows) = (0, buckets.rows_to_match());
    for bucket in 0..job.buckets {
        let matched = bucket < job.done;
        if !matched {
            report(Progress::Bucket {
                done: bucket,
                buckets: job.buckets,
                rows_done,
                rows,
            });
        }
        let (domain, key, ranges) = (plan.domain(), Arc::clone(&value_key), ranges.clone());
        let noise = plan.noise_bounds();
        let (back, built) = exchange
            .blocking(buckets, move |buckets| {
                let mut table = buckets
                    .bucket(bucket)
                    .map_err(|e| ClientError::Internal(format!("the job's {e}")))?;
                let cut = bound.map(|k| table.bound_groups(k));
                let part = (table.group_sizes(), matched_rows(&table));
                if matched {
                    return Ok::<_, ClientError>((None, part, cut));
                }
                let mut receiver = Receiver::in_job(&domain, table, limits, (*key).as_ref())
                    .map_err(|e| ClientError::Internal(e.to_string()))?;
                if one_matcher_group {
                    receiver = receiver.expect_matcher_groups(1);
                }
                // Under privacy the matcher's groups come with keys of their own: the bucket's
                // replies are re-blinded points, not tags.
                if let Some(bounds) = noise {
                    receiver = receiver
                        .with_noise(bounds)
                        .map_err(|e| ClientError::Internal(e.to_string()))?;
                }
                if let Some(ranges) = ranges {
                    receiver = receiver
                        .with_range_proofs(value_ranges(&ranges))
                        .map_err(|e| ClientError::Internal(e.to_string()))?;
                }
                Ok((Some(receiver), part, cut))
            })
            .await?;
        buckets = back;
        let (receiver, (part, bucket_rows), cut) = built?;
        if let (Some(over), Some(cut)) = (over.as_mut(), cut) {
            *over += cut;
        }
        if sizes.is_empty() {
            sizes = part;
        } else if sizes.len() != part.len() || sizes.iter().zip(&part).any(|(a, b)| a.0 != b.0) {
            return Err(ClientError::Internal(format!(
                "bucket {bucket} of this job has other groups than the first"
            )));
        } else {
            for (total, (_, n)) in sizes.iter_mut().zip(part) {
                total.1 += n;
            }
        }
        if let Some(receiver) = receiver {
            let mut psi_in = psi_messages(inbound);
            exchange.run(receiver, &mut psi_in).await?;
        }
        rows_done += bucket_rows;
    }
    report(Progress::Bucket {
        done: job.buckets,
        buckets: job.buckets,
        rows_done,
        rows,
    });
    let keys = ResultKeys::for_job((*value_key).as_ref(), sizes);
    if let Some(seal) = seal {
        let sealed = seal(plan, &keys).map_err(ClientError::Internal)?;
        match exchange.send_item(super::later_keys(sealed)).await {
            // A server that sends a released job's kept release again reads nothing more and
            // may have closed the call: what it sent is read below; a server gone otherwise
            // shows there too.
            Err(crate::exchange::ExchangeError::PeerGone) | Ok(()) => {}
            Err(error) => return Err(error.into()),
        }
    }
    if !receives {
        return Ok((None, over));
    }
    let mut opener = ResultOpener::new(keys, limits);
    if let Some(bounds) = plan.noise_bounds() {
        opener = opener.with_noise(bounds).map_err(ClientError::Opened)?;
    }
    if one_matcher_group {
        opener = opener.expect_matcher_groups(1);
    }
    let mut psi_in = psi_messages(inbound);
    let Release(opener) = exchange.run(Release(opener), &mut psi_in).await?;
    Ok((Some(opener), over))
}

/// Where a named job keeps its value key between runs of the client (PROTOCOL.md 3.6, step
/// 6): the sums of the buckets done are encrypted under it, so a resumed job needs the same.
/// One file per collaboration, member, server and job name, under the work directory (or the
/// system's temporary directory), readable by its owner only, removed once the job's release
/// arrived.
pub(crate) struct KeyFile {
    path: PathBuf,
    job_id: String,
    tag: String,
}

/// The first bytes of a key file: a name and the format's version.
const KEY_FILE_MAGIC: &[u8; 5] = b"CRVK\x01";

impl KeyFile {
    /// The key file of job `job_id` of `member` in `collaboration_id` on `server`.
    pub(crate) fn new(
        work_dir: Option<&Path>,
        (collaboration_id, member, server): (&str, &str, &str),
        job_id: &str,
    ) -> KeyFile {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for part in [collaboration_id, member, server, job_id] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        let tag = hex::encode(&hash.finalize()[..8]);
        let dir = work_dir.map_or_else(std::env::temp_dir, Path::to_path_buf);
        KeyFile {
            path: dir.join(format!("cleanroom-job-{job_id}-{tag}.key")),
            job_id: job_id.to_owned(),
            tag,
        }
    }

    /// The name of the job's own work directory, beside the key file.
    pub(crate) fn work_name(&self) -> String {
        format!("cleanroom-job-{}-{}.d", self.job_id, self.tag)
    }

    /// The name of a list job's directory of parked buckets, beside the key file: each
    /// bucket's saved state (its unblinding key among it) and the provider's items, kept across
    /// runs of the client until the job's release is opened.
    pub(crate) fn list_dir_name(&self) -> String {
        format!("cleanroom-job-{}-{}.list", self.job_id, self.tag)
    }

    /// The job's value key for `columns` value columns: the stored one when there is one;
    /// otherwise, unless the server holds buckets of the job already (`done` > 0: their sums
    /// are under the lost key), a fresh key, stored (synced, renamed into place) before it
    /// encrypts anything.
    pub(crate) fn value_key(&self, columns: usize, done: u32) -> Result<ValueKey, ClientError> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            ClientError::Internal(format!(
                "job {:?}: {what} {}: {e}",
                self.job_id,
                self.path.display()
            ))
        };
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                let bytes = zeroize::Zeroizing::new(bytes);
                let key = bytes
                    .strip_prefix(KEY_FILE_MAGIC.as_slice())
                    .and_then(ValueKey::from_stored_secret)
                    .ok_or_else(|| {
                        failed("the value key file", &"is not a key this client wrote")
                    })?;
                if key.value_columns() != columns {
                    return Err(failed(
                        "the value key file",
                        &format!(
                            "holds keys of {} value columns, not {columns}",
                            key.value_columns()
                        ),
                    ));
                }
                Ok(key)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && done == 0 => {
                let key = ValueKey::generate(columns);
                self.store(&key)
                    .map_err(|e| failed("cannot store the value key in", &e))?;
                Ok(key)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(failed(
                &format!("the server holds {done} buckets done, whose sums only the value key in"),
                &"can open, and it is gone; name a new job",
            )),
            Err(e) => Err(failed("cannot read", &e)),
        }
    }

    fn store(&self, key: &ValueKey) -> io::Result<()> {
        let mut partial = self.path.clone().into_os_string();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&partial)?;
        let mut bytes = zeroize::Zeroizing::new(KEY_FILE_MAGIC.to_vec());
        bytes.extend_from_slice(&key.to_secret_bytes());
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&partial, &self.path)
    }

    /// Removes the file (the job ended); a file already gone is no error.
    pub(crate) fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }

    /// Removes the file, the job's work directory and a list job's parked buckets in
    /// `work_dir` (the server says the job ended): `true` when any was there.
    pub(crate) fn forget(&self, work_dir: Option<&Path>) -> bool {
        let parent = work_dir.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let key = std::fs::remove_file(&self.path).is_ok();
        let dir = std::fs::remove_dir_all(parent.join(self.work_name())).is_ok();
        let list = std::fs::remove_dir_all(parent.join(self.list_dir_name())).is_ok();
        key || dir || list
    }
}
