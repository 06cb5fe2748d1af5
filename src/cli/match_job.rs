//! `cleanroom match --buckets B`: both tables read once into bucket files (a keyed hash of the
//! normalized identifier, `cleanroom_psi::bucket`), then matched one bucket at a time as a job
//! released once (`match_offline_job`), so that one bucket's sets are in memory at once
//! (docs/scale-out.md). Without buckets, the rows go straight into the two tables.

use std::path::{Path, PathBuf};

use anyhow::Result;
use cleanroom_psi::bucket::BucketKey;
use cleanroom_psi::{
    Domain, MatchReport, MatcherTable, Normalization, ReceiverTable, match_offline,
    match_offline_job,
};

use cleanroom_data::bucket_files::{BucketWriter, WorkDir, read_bucket};

/// How a job assigns identifiers to buckets, and where its files are.
pub struct Job {
    key: BucketKey,
    domain: Domain,
    buckets: u32,
    normalization: Normalization,
    work: WorkDir,
}

impl Job {
    /// A job of `buckets` buckets with a fresh key, its files in a fresh directory (inside
    /// `work_dir` when given).
    pub fn new(
        domain: &Domain,
        buckets: u32,
        normalization: Normalization,
        work_dir: Option<&Path>,
    ) -> Result<Job> {
        Ok(Job {
            key: BucketKey::generate(),
            domain: domain.clone(),
            buckets,
            normalization,
            work: WorkDir::new(work_dir)?,
        })
    }

    fn bucket(&self, raw_id: &str) -> u32 {
        let normalized = self.normalization.apply(raw_id).unwrap_or_default();
        self.key.bucket(&self.domain, &normalized, self.buckets)
    }
}

/// Where the two sides' kept rows go.
pub enum Sides<'a> {
    /// Straight into the tables, matched in one session.
    Tables(MatcherTable, ReceiverTable),
    /// Into each side's bucket files, matched bucket by bucket.
    Buckets {
        left: BucketWriter,
        right: BucketWriter,
        columns: usize,
        job: &'a Job,
    },
}

impl<'a> Sides<'a> {
    /// Tables normalized with `normalization`, the right one summing `columns` columns; or,
    /// for a `job`, its bucket files.
    pub fn new(
        job: Option<&'a Job>,
        normalization: Normalization,
        columns: usize,
    ) -> Result<Sides<'a>> {
        Ok(match job {
            None => Sides::Tables(
                MatcherTable::new(normalization),
                ReceiverTable::new(normalization, columns)?,
            ),
            Some(job) => Sides::Buckets {
                left: BucketWriter::create(job.work.path(), "left", job.buckets)?,
                right: BucketWriter::create(job.work.path(), "right", job.buckets)?,
                columns,
                job,
            },
        })
    }

    /// A left row: `id` in `group`.
    pub fn push_left(&mut self, group: &str, id: &str) -> Result<()> {
        match self {
            Sides::Tables(left, _) => Ok(left.push(group, id).map(drop)?),
            Sides::Buckets { left, job, .. } => {
                Ok(left.write(job.bucket(id), &[group, id], &[])?)
            }
        }
    }

    /// A right row: `id` with its `values`.
    pub fn push_right(&mut self, id: &str, values: &[u64]) -> Result<()> {
        match self {
            Sides::Tables(_, right) => Ok(right.push("", id, values).map(drop)?),
            Sides::Buckets { right, job, .. } => Ok(right.write(job.bucket(id), &[id], values)?),
        }
    }

    /// Matches what was pushed, every pair released (threshold 1); `groups` are the left
    /// side's group keys (every bucket announces each).
    pub fn run(self, domain: &Domain, groups: &[String]) -> Result<MatchReport> {
        match self {
            Sides::Tables(left, right) => Ok(match_offline(domain, left, right, 1)?),
            Sides::Buckets {
                left,
                right,
                columns,
                job,
            } => {
                let (left, right) = (left.finish()?, right.finish()?);
                match_offline_job(domain, job.buckets, columns, 1, |b| {
                    load_bucket(
                        job,
                        groups,
                        columns,
                        (&left[b as usize], &right[b as usize]),
                    )
                })
            }
        }
    }
}

/// One bucket's tables from its two files: every group of the left side, the one group of the
/// right, and the rows the files hold.
fn load_bucket(
    job: &Job,
    groups: &[String],
    columns: usize,
    (left, right): (&PathBuf, &PathBuf),
) -> Result<(MatcherTable, ReceiverTable)> {
    let mut matcher = MatcherTable::new(job.normalization);
    for group in groups {
        matcher.ensure_group(group)?;
    }
    read_bucket(left, |texts, _| match texts {
        [group, id] => Ok(matcher.push(group, id).map(drop)?),
        _ => anyhow::bail!("{}: a record of {} texts", left.display(), texts.len()),
    })?;
    let mut receiver = ReceiverTable::new(job.normalization, columns)?;
    receiver.ensure_group("")?;
    read_bucket(right, |texts, values| match texts {
        [id] => Ok(receiver.push("", id, values).map(drop)?),
        _ => anyhow::bail!("{}: a record of {} texts", right.display(), texts.len()),
    })?;
    Ok((matcher, receiver))
}
