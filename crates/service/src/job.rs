//! Jobs of buckets through the service (PROTOCOL.md 3.6, docs/scale-out.md): a session whose
//! sets are too large for one protocol run splits both sides' kept rows into `B` buckets by a
//! keyed hash of the normalized identifier, runs the aggregate protocol once per bucket with
//! fresh blinding keys, and releases once, after the last bucket.
//!
//! ```text
//!   client: SessionStart { buckets: B_c }          (from its own kept rows)
//!   server: B = min(max(B_c, B_s), B_floor)        (B_s from its own rows; B_floor keeps
//!           key k: 32 bytes, fresh                  every bucket of both sides large)
//!           SessionAccepted { job: { B, k } }      (absent when B = 1)
//!   both:   kept rows → bucket files b(x) = HMAC(k, domain || x) mod B
//!   i = 0..B: MatcherHello/ReceiverHello … tags    (one protocol run; no release)
//!   server: MatcherHello (sizes summed), MatcherResult*, MatcherDone  (once)
//! ```
//!
//! Invariants:
//! - memory holds one bucket of each side's rows (plus the groups' keys): the kept rows are
//!   streamed from the table into the bucket files once and read back one bucket at a time;
//! - each side announces every group of its whole table in every bucket, so group numbers agree
//!   across buckets (`JobTotals` refuses a bucket whose groups differ);
//! - the server refuses a number of buckets that is not a power of two of at most
//!   [`MAX_BUCKETS`], and never splits either side's declared rows into buckets expected to
//!   hold fewer than `min_bucket_rows`: what a bucket's size tells about one identifier
//!   shrinks with the bucket (SECURITY.md §2).

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use cleanroom_data::bucket_files::{BucketWriter, read_bucket};
use cleanroom_psi::bucket::BucketKey;
use cleanroom_psi::wire::MAX_GROUP_KEY_BYTES;
use cleanroom_psi::{
    Domain, InputError, InputStats, ListProviderTable, MatcherTable, Normalization, ReceiverTable,
};
use cleanroom_rules::{DataError, ListProviderRows, MatcherRows, PlaceError, ReceiverRows};

use crate::data::DataFileError;

use crate::limits::Limits;
use crate::proto;

/// The most buckets a job may have.
pub const MAX_BUCKETS: u32 = 4096;

/// The terms of a job of buckets: how many, and the key that assigns identifiers to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobTerms {
    /// How many buckets: a power of two, 2 to [`MAX_BUCKETS`].
    pub buckets: u32,
    /// The bucket hash's key, fresh for this job.
    pub key: BucketKey,
    /// Buckets already matched, whose totals the server holds: both sides begin with bucket
    /// `done` (0 unless the job resumed).
    pub done: u32,
}

/// The buckets that hold `rows` at most `bucket_rows` each (rounded up to a power of two,
/// at most [`MAX_BUCKETS`]); 1 when one bucket holds them.
pub fn buckets_for(rows: u64, bucket_rows: u64) -> u32 {
    let needed = rows
        .div_ceil(bucket_rows.max(1))
        .clamp(1, u64::from(MAX_BUCKETS));
    u32::try_from(needed.next_power_of_two()).map_or(MAX_BUCKETS, |b| b.min(MAX_BUCKETS))
}

/// The number of buckets a client asked for, if it is one: 0 or a power of two of at most
/// [`MAX_BUCKETS`] (0 and 1 both mean one session).
pub(crate) fn check_requested(buckets: u32) -> Result<u32, String> {
    if buckets > MAX_BUCKETS || (buckets > 1 && !buckets.is_power_of_two()) {
        return Err(format!(
            "a session splits into a power of two of at most {MAX_BUCKETS} buckets, not \
             {buckets}"
        ));
    }
    Ok(buckets.max(1))
}

impl JobTerms {
    /// The server's terms for a session: at least the `requested` buckets (checked with
    /// [`check_requested`]) and those its own `server_rows` need at `limits.bucket_rows`
    /// each, but never so many that either side's rows (`querier_rows`, `server_rows`) would
    /// be expected to fill a bucket with fewer than `limits.min_bucket_rows`. `None`: one
    /// session.
    ///
    /// `server_rows` is `None` when the server's table was not checked at start-up: its
    /// buckets' sizes are then unknown, and the session is not split.
    pub(crate) fn decide(
        requested: u32,
        querier_rows: u64,
        server_rows: Option<u64>,
        limits: &Limits,
    ) -> Option<JobTerms> {
        let server_rows = server_rows?;
        let wanted = requested.max(buckets_for(server_rows, limits.bucket_rows));
        let smaller = querier_rows.min(server_rows) / limits.min_bucket_rows.max(1);
        let floor = if smaller < 2 {
            1
        } else {
            // The largest power of two not above `smaller`.
            let floor = 1u64 << (63 - smaller.leading_zeros());
            u32::try_from(floor).unwrap_or(MAX_BUCKETS).min(MAX_BUCKETS)
        };
        let buckets = wanted.min(floor);
        (buckets > 1).then(|| JobTerms {
            buckets,
            key: BucketKey::generate(),
            done: 0,
        })
    }

    /// The terms as `SessionAccepted.job` carries them.
    pub(crate) fn to_proto(&self) -> proto::JobTerms {
        proto::JobTerms {
            buckets: self.buckets,
            bucket_key: self.key.to_bytes().to_vec(),
            buckets_done: self.done,
        }
    }

    /// The terms of `SessionAccepted.job` as the client checks them: absent is one session;
    /// present, a power of two from 2 to [`MAX_BUCKETS`] buckets, a key of 32 bytes and at
    /// most all of them done.
    pub(crate) fn from_proto(job: Option<&proto::JobTerms>) -> Result<Option<JobTerms>, String> {
        let Some(job) = job else {
            return Ok(None);
        };
        if job.buckets < 2 || job.buckets > MAX_BUCKETS || !job.buckets.is_power_of_two() {
            return Err(format!(
                "the server's job of {} buckets is not a power of two from 2 to {MAX_BUCKETS}",
                job.buckets
            ));
        }
        let key: [u8; 32] = job.bucket_key.as_slice().try_into().map_err(|_| {
            format!(
                "the server's bucket key has {} bytes, not 32",
                job.bucket_key.len()
            )
        })?;
        if job.buckets_done > job.buckets {
            return Err(format!(
                "the server says {} of the job's {} buckets are done",
                job.buckets_done, job.buckets
            ));
        }
        Ok(Some(JobTerms {
            buckets: job.buckets,
            key: BucketKey::from_bytes(key),
            done: job.buckets_done,
        }))
    }
}

/// The longest name of a job.
pub const MAX_JOB_ID_BYTES: usize = 64;

/// A job's name as a client gives it: `None` for none (empty); refused unless 1 to
/// [`MAX_JOB_ID_BYTES`] characters of `A-Z a-z 0-9 . _ -`.
pub fn check_job_id(job_id: &str) -> Result<Option<&str>, String> {
    if job_id.is_empty() {
        return Ok(None);
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if job_id.len() > MAX_JOB_ID_BYTES || !job_id.chars().all(allowed) {
        return Err(format!(
            "a job id is 1 to {MAX_JOB_ID_BYTES} characters of A-Z a-z 0-9 . _ -, not {:?}",
            job_id
                .chars()
                .take(MAX_JOB_ID_BYTES + 1)
                .collect::<String>()
        ));
    }
    Ok(Some(job_id))
}

/// What a named job was asked under, as a digest: the query, the receivers, the table the
/// client brings with its declared rows, and the terms it computes under. A resume must bring
/// the same: the same query over the same data.
pub(crate) fn terms_digest(
    sql: &str,
    receivers: &[String],
    table: (&str, u64, u64),
    agreement: Option<&proto::Agreement>,
) -> [u8; 32] {
    use prost::Message as _;
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    let mut put = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    put(b"cleanroom job terms v1");
    put(sql.as_bytes());
    for receiver in receivers {
        put(receiver.as_bytes());
    }
    put(table.0.as_bytes());
    put(&table.1.to_be_bytes());
    put(&table.2.to_be_bytes());
    put(&agreement.map(|a| a.encode_to_vec()).unwrap_or_default());
    hash.finalize().into()
}

/// The error of writing `table`'s kept rows to the bucket files under `dir`.
pub(crate) fn spill_error(dir: &Path, table: &str) -> impl Fn(io::Error) -> DataFileError + use<> {
    let (location, table) = (dir.display().to_string(), table.to_owned());
    move |source| DataFileError::Rows {
        location: location.clone(),
        source: Box::new(DataError::Spill {
            table: table.clone(),
            source,
        }),
    }
}

/// One side's kept rows being split into bucket files: each row's identifier is normalized to
/// find its bucket (a row whose identifier normalizes to nothing is counted as skipped and
/// written nowhere, as a table skips it), and its raw identifier, group key and values are
/// written there. Every group seen (or ensured) is kept, to be announced in every bucket.
pub(crate) struct Partition {
    terms: JobTerms,
    domain: Domain,
    normalization: Normalization,
    value_columns: usize,
    writer: BucketWriter,
    groups: BTreeSet<String>,
    stats: InputStats,
}

/// A side's kept rows in bucket files, with what every bucket needs besides its own rows.
#[derive(Debug)]
pub(crate) struct PartitionedRows {
    /// The bucket files, by bucket.
    pub files: Vec<PathBuf>,
    /// Every group of the side, in key order.
    pub groups: Vec<String>,
    /// Rows kept and rows skipped over the whole table.
    pub stats: InputStats,
}

impl Partition {
    /// A partition into new files `<side>-<i>.bucket` under `dir`, for identifiers of
    /// `domain` normalized with `normalization`, each row carrying `value_columns` values.
    pub(crate) fn create(
        dir: &Path,
        side: &str,
        terms: &JobTerms,
        (domain, normalization): (&Domain, Normalization),
        value_columns: usize,
    ) -> io::Result<Partition> {
        Ok(Partition {
            terms: terms.clone(),
            domain: domain.clone(),
            normalization,
            value_columns,
            writer: BucketWriter::create(dir, side, terms.buckets)?,
            groups: BTreeSet::new(),
            stats: InputStats::default(),
        })
    }

    fn place(&mut self, group: &str, raw: &str, values: &[u64]) -> Result<(), PlaceError> {
        if values.len() != self.value_columns {
            return Err(InputError::WrongValueCount {
                expected: self.value_columns,
                got: values.len(),
            }
            .into());
        }
        if group.len() > MAX_GROUP_KEY_BYTES {
            return Err(InputError::GroupKeyTooLong.into());
        }
        self.stats.rows += 1;
        let Some(normalized) = self.normalization.apply(raw) else {
            self.stats.skipped_empty += 1;
            return Ok(());
        };
        if !self.groups.contains(group) {
            self.groups.insert(group.to_owned());
        }
        let bucket = self
            .terms
            .key
            .bucket(&self.domain, &normalized, self.terms.buckets);
        Ok(self.writer.write(bucket, &[group, raw], values)?)
    }

    /// Closes the files (flushed and synced).
    pub(crate) fn finish(self) -> io::Result<PartitionedRows> {
        Ok(PartitionedRows {
            files: self.writer.finish()?,
            groups: self.groups.into_iter().collect(),
            stats: self.stats,
        })
    }
}

impl MatcherRows for Partition {
    fn ensure_group(&mut self, key: &str) -> Result<(), InputError> {
        if key.len() > MAX_GROUP_KEY_BYTES {
            return Err(InputError::GroupKeyTooLong);
        }
        self.groups.insert(key.to_owned());
        Ok(())
    }

    fn push(&mut self, group: &str, raw_identifier: &str) -> Result<(), PlaceError> {
        self.place(group, raw_identifier, &[])
    }
}

impl ReceiverRows for Partition {
    fn push(
        &mut self,
        group: &str,
        raw_identifier: &str,
        values: &[u64],
    ) -> Result<(), PlaceError> {
        self.place(group, raw_identifier, values)
    }
}

/// A list provider's kept rows being split into bucket files: each row's identifier is
/// normalized to find its bucket (a row whose identifier normalizes to nothing is counted as
/// skipped and written nowhere), and its raw identifier and list values are written there.
pub(crate) struct ListPartition {
    terms: JobTerms,
    domain: Domain,
    normalization: Normalization,
    writer: BucketWriter,
    stats: InputStats,
}

impl ListPartition {
    /// A partition into new files `<side>-<i>.bucket` under `dir`.
    pub(crate) fn create(
        dir: &Path,
        side: &str,
        terms: &JobTerms,
        (domain, normalization): (&Domain, Normalization),
    ) -> io::Result<ListPartition> {
        Ok(ListPartition {
            terms: terms.clone(),
            domain: domain.clone(),
            normalization,
            writer: BucketWriter::create(dir, side, terms.buckets)?,
            stats: InputStats::default(),
        })
    }

    /// Closes the files (flushed and synced); a list has no groups.
    pub(crate) fn finish(self) -> io::Result<PartitionedRows> {
        Ok(PartitionedRows {
            files: self.writer.finish()?,
            groups: Vec::new(),
            stats: self.stats,
        })
    }
}

impl ListProviderRows for ListPartition {
    fn push(&mut self, raw_identifier: &str, values: &[&str]) -> Result<(), PlaceError> {
        self.stats.rows += 1;
        let Some(normalized) = self.normalization.apply(raw_identifier) else {
            self.stats.skipped_empty += 1;
            return Ok(());
        };
        let bucket = self
            .terms
            .key
            .bucket(&self.domain, &normalized, self.terms.buckets);
        let mut texts = Vec::with_capacity(1 + values.len());
        texts.push(raw_identifier);
        texts.extend_from_slice(values);
        Ok(self.writer.write(bucket, &texts, &[])?)
    }
}

/// Why a bucket could not be loaded back.
#[derive(Debug, thiserror::Error)]
pub enum BucketLoadError {
    /// The bucket file cannot be read.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The rows of one identifier do not make a table (its values add up past the maximum).
    #[error("bucket {bucket}: {source}")]
    Input {
        /// The bucket.
        bucket: u32,
        /// The table's error.
        #[source]
        source: InputError,
    },
    /// A record of the bucket file is not a row this job wrote.
    #[error("bucket {0}: a record that is not a row of this job")]
    Record(u32),
}

impl PartitionedRows {
    /// Bucket `bucket` of the matcher's side: every group, and the rows of the bucket.
    pub(crate) fn matcher_bucket(
        &self,
        bucket: u32,
        normalization: Normalization,
    ) -> Result<MatcherTable, BucketLoadError> {
        let input = |source| BucketLoadError::Input { bucket, source };
        let mut table = MatcherTable::new(normalization);
        for group in &self.groups {
            table.ensure_group(group).map_err(input)?;
        }
        read_bucket(&self.files[bucket as usize], |texts, _| match texts {
            [group, id] => table.push(group, id).map(drop).map_err(input),
            _ => Err(BucketLoadError::Record(bucket)),
        })?;
        Ok(table)
    }

    /// Bucket `bucket` of a list provider's side, into `table` (empty, as the plan makes it:
    /// normalization, list columns): the rows of the bucket.
    pub(crate) fn list_provider_bucket(
        &self,
        bucket: u32,
        mut table: ListProviderTable,
    ) -> Result<ListProviderTable, BucketLoadError> {
        let input = |source| BucketLoadError::Input { bucket, source };
        let columns = table.columns();
        read_bucket(&self.files[bucket as usize], |texts, _| match texts {
            [id, values @ ..] if values.len() == columns => {
                table.push(id, values).map(drop).map_err(input)
            }
            _ => Err(BucketLoadError::Record(bucket)),
        })?;
        Ok(table)
    }

    /// Bucket `bucket` of the receiver's side, into `table` (empty, as the plan makes it:
    /// normalization, value columns, bounds): every group, and the rows of the bucket.
    pub(crate) fn receiver_bucket(
        &self,
        bucket: u32,
        mut table: ReceiverTable,
    ) -> Result<ReceiverTable, BucketLoadError> {
        let input = |source| BucketLoadError::Input { bucket, source };
        for group in &self.groups {
            table.ensure_group(group).map_err(input)?;
        }
        read_bucket(&self.files[bucket as usize], |texts, values| match texts {
            [group, id] => table.push(group, id, values).map(drop).map_err(input),
            _ => Err(BucketLoadError::Record(bucket)),
        })?;
        Ok(table)
    }
}

/// The rows of `table` that take part in matching: those with an identifier.
pub(crate) fn matched_rows(table: &ReceiverTable) -> u64 {
    rows_with_identifier(table.stats())
}

/// The rows counted in `stats` that have an identifier (the others are never matched).
fn rows_with_identifier(stats: InputStats) -> u64 {
    stats.rows - stats.skipped_empty
}

/// The client's first pass over its table: the rows go into its table as long as they number
/// at most `limit`; past that the table is dropped and the rows only counted, and the job's
/// bucket files are written after the server's acceptance (a second pass).
pub(crate) struct FirstPass {
    table: Option<ReceiverTable>,
    normalization: Normalization,
    limit: u64,
    stats: InputStats,
}

impl FirstPass {
    /// A first pass into `table` (empty, as the plan makes it), kept while the rows number at
    /// most `limit`.
    pub(crate) fn new(table: ReceiverTable, normalization: Normalization, limit: u64) -> Self {
        FirstPass {
            table: Some(table),
            normalization,
            limit,
            stats: InputStats::default(),
        }
    }

    /// The table, when the rows fit in it; and the rows kept and skipped either way.
    pub(crate) fn finish(self) -> (Option<ReceiverTable>, InputStats) {
        (self.table, self.stats)
    }
}

impl ReceiverRows for FirstPass {
    fn push(
        &mut self,
        group: &str,
        raw_identifier: &str,
        values: &[u64],
    ) -> Result<(), PlaceError> {
        self.stats.rows += 1;
        if self.normalization.apply(raw_identifier).is_none() {
            self.stats.skipped_empty += 1;
        }
        if let Some(table) = &mut self.table {
            table.push(group, raw_identifier, values)?;
            if self.stats.rows > self.limit {
                self.table = None;
            }
        }
        Ok(())
    }
}

/// Where the client's buckets come from: its table split in memory (it was small, the
/// server's was not), or its bucket files.
pub(crate) enum ClientBuckets {
    /// The parts of the in-memory table, taken in order.
    InMemory(std::vec::IntoIter<ReceiverTable>),
    /// The bucket files, each loaded into a copy of the empty table.
    Files {
        /// The files and the groups.
        rows: PartitionedRows,
        /// The plan's empty table (normalization, value columns, bounds).
        empty: ReceiverTable,
    },
}

impl ClientBuckets {
    /// The rows the buckets hold together: the kept rows with an identifier.
    pub(crate) fn rows_to_match(&self) -> u64 {
        match self {
            ClientBuckets::InMemory(parts) => parts.as_slice().iter().map(matched_rows).sum(),
            ClientBuckets::Files { rows, .. } => rows_with_identifier(rows.stats),
        }
    }

    /// Bucket `bucket`'s table; buckets are taken in order, each once.
    pub(crate) fn bucket(&mut self, bucket: u32) -> Result<ReceiverTable, BucketLoadError> {
        match self {
            ClientBuckets::InMemory(parts) => parts.next().ok_or(BucketLoadError::Record(bucket)),
            ClientBuckets::Files { rows, empty } => rows.receiver_bucket(bucket, empty.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_short_plain_names() {
        assert_eq!(check_job_id(""), Ok(None));
        assert_eq!(check_job_id("q3-2026_run.1"), Ok(Some("q3-2026_run.1")));
        for bad in ["a b", "../x", "é", &"x".repeat(MAX_JOB_ID_BYTES + 1)] {
            assert!(check_job_id(bad).is_err(), "{bad}");
        }
    }

    fn limits(bucket_rows: u64, min_bucket_rows: u64) -> Limits {
        Limits {
            bucket_rows,
            min_bucket_rows,
            ..Limits::default()
        }
    }

    #[test]
    fn the_server_splits_what_either_side_needs_but_keeps_every_bucket_large() {
        let l = limits(100, 10);
        let b = |requested, q, s| JobTerms::decide(requested, q, Some(s), &l).map(|t| t.buckets);
        // Small on both sides: one session.
        assert_eq!(b(1, 100, 100), None);
        // The client's request, or the server's own need, whichever is larger.
        assert_eq!(b(4, 1000, 100), Some(4));
        assert_eq!(b(1, 1000, 1000), Some(16));
        assert_eq!(b(2, 1000, 300), Some(4));
        // Never below 10 expected rows per bucket on either side: 35 rows allow 2 buckets.
        assert_eq!(b(64, 10_000, 35), Some(2));
        assert_eq!(b(64, 15, 10_000), None);
        // A table not checked at start-up: one session, whatever the request.
        assert_eq!(JobTerms::decide(8, 1000, None, &l), None);
        assert_eq!(buckets_for(u64::MAX, 1), MAX_BUCKETS);
        assert_eq!(buckets_for(0, 100), 1);
    }

    #[test]
    fn requests_and_terms_that_are_not_a_job_are_refused() {
        assert_eq!(check_requested(0), Ok(1));
        assert_eq!(check_requested(64), Ok(64));
        assert!(check_requested(3).is_err());
        assert!(check_requested(MAX_BUCKETS * 2).is_err());
        let job = |buckets, key: Vec<u8>| proto::JobTerms {
            buckets,
            bucket_key: key,
            buckets_done: 0,
        };
        assert_eq!(JobTerms::from_proto(None), Ok(None));
        assert!(JobTerms::from_proto(Some(&job(4, vec![1; 32]))).is_ok());
        let resumed = proto::JobTerms {
            buckets_done: 4,
            ..job(4, vec![1; 32])
        };
        assert_eq!(
            JobTerms::from_proto(Some(&resumed)).unwrap().unwrap().done,
            4
        );
        for bad in [
            job(1, vec![1; 32]),
            job(6, vec![1; 32]),
            job(MAX_BUCKETS * 2, vec![1; 32]),
            job(4, vec![1; 31]),
            proto::JobTerms {
                buckets_done: 5,
                ..job(4, vec![1; 32])
            },
        ] {
            assert!(JobTerms::from_proto(Some(&bad)).is_err(), "{bad:?}");
        }
    }
}
