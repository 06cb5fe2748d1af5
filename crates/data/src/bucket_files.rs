//! Bucket files: a table's kept rows written once, as they are read, to one file per bucket,
//! then read back one bucket at a time, so that a job holds one bucket's sets in memory
//! (docs/scale-out.md). Files live in a work directory: the one given (`--work-dir`), or a
//! fresh one under the system's temporary directory, removed at the end.
//!
//! A record is `u32 count || count × (u32 length || UTF-8 bytes) || u32 count || count × u64`,
//! big-endian: the row's texts (group key, identifier) and its values.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// An I/O error on `path`, saying what was being done.
fn at(path: &Path, doing: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{doing} {}: {e}", path.display()))
}

/// A bucket file that does not hold whole records (truncated or overwritten).
fn damaged(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: a damaged bucket file", path.display()),
    )
}

/// Where a job's bucket files go: a fresh directory, inside `--work-dir` when given, else under
/// the system's temporary directory; removed with its files when dropped.
pub struct WorkDir(tempfile::TempDir);

impl WorkDir {
    /// A fresh directory for one job, inside `dir` when given.
    pub fn new(dir: Option<&Path>) -> io::Result<WorkDir> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("cleanroom-job-");
        Ok(WorkDir(match dir {
            Some(dir) => builder
                .tempdir_in(dir)
                .map_err(|e| at(dir, "a job directory in the work directory", e))?,
            None => builder.tempdir().map_err(|e| {
                io::Error::new(e.kind(), format!("a temporary work directory: {e}"))
            })?,
        }))
    }

    /// The directory `name` of a job that may resume, inside `dir` when given (else the
    /// system's temporary directory): what a killed process of the same job left there is
    /// removed first, and the directory made afresh. Removed when dropped, as [`WorkDir::new`]'s.
    pub fn named(dir: Option<&Path>, name: &str) -> io::Result<WorkDir> {
        let parent = dir.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let path = parent.join(name);
        match std::fs::remove_dir_all(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(at(&path, "the job's earlier work directory", e));
            }
            _ => {}
        }
        let made = tempfile::Builder::new()
            .prefix(name)
            .rand_bytes(0)
            .tempdir_in(&parent)
            .map_err(|e| at(&parent, "a job directory in the work directory", e))?;
        Ok(WorkDir(made))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// One side's bucket files being written.
pub struct BucketWriter {
    paths: Vec<PathBuf>,
    files: Vec<BufWriter<File>>,
}

impl BucketWriter {
    /// `buckets` new files named `<side>-<i>.bucket` in `dir`.
    pub fn create(dir: &Path, side: &str, buckets: u32) -> io::Result<BucketWriter> {
        let paths: Vec<PathBuf> = (0..buckets)
            .map(|i| dir.join(format!("{side}-{i}.bucket")))
            .collect();
        let files = paths
            .iter()
            .map(|p| {
                File::create_new(p)
                    .map(|f| BufWriter::with_capacity(1 << 16, f))
                    .map_err(|e| at(p, "creating", e))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(BucketWriter { paths, files })
    }

    /// Appends a record to bucket `bucket`.
    pub fn write(&mut self, bucket: u32, texts: &[&str], values: &[u64]) -> io::Result<()> {
        let file = &mut self.files[bucket as usize];
        let mut record = Vec::with_capacity(16 + texts.iter().map(|t| 4 + t.len()).sum::<usize>());
        record.extend_from_slice(&(texts.len() as u32).to_be_bytes());
        for text in texts {
            record.extend_from_slice(&(text.len() as u32).to_be_bytes());
            record.extend_from_slice(text.as_bytes());
        }
        record.extend_from_slice(&(values.len() as u32).to_be_bytes());
        for v in values {
            record.extend_from_slice(&v.to_be_bytes());
        }
        file.write_all(&record)
            .map_err(|e| at(&self.paths[bucket as usize], "writing", e))
    }

    /// Flushes and closes every file; returns their paths, by bucket.
    pub fn finish(self) -> io::Result<Vec<PathBuf>> {
        for (file, path) in self.files.into_iter().zip(&self.paths) {
            file.into_inner()
                .map_err(|e| e.into_error())
                .and_then(|f| f.sync_all())
                .map_err(|e| at(path, "writing", e))?;
        }
        Ok(self.paths)
    }
}

/// Reads every record of the bucket file at `path`, in order, into `each(texts, values)`; a
/// file that ends inside a record is an error, never a short read taken for the end.
pub fn read_bucket<E: From<io::Error>>(
    path: &Path,
    mut each: impl FnMut(&[String], &[u64]) -> Result<(), E>,
) -> Result<(), E> {
    let mut file = BufReader::with_capacity(
        1 << 16,
        File::open(path).map_err(|e| at(path, "reading", e))?,
    );
    let u32_of = |file: &mut BufReader<File>, at_start: bool| -> io::Result<Option<u32>> {
        let mut buf = [0u8; 4];
        match file.read_exact(&mut buf) {
            Ok(()) => Ok(Some(u32::from_be_bytes(buf))),
            Err(e) if at_start && e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(_) => Err(damaged(path)),
        }
    };
    let (mut texts, mut values) = (Vec::new(), Vec::new());
    while let Some(count) = u32_of(&mut file, true)? {
        texts.clear();
        values.clear();
        for _ in 0..count {
            let len = u32_of(&mut file, false)?.ok_or_else(|| damaged(path))? as usize;
            if len > 1 << 20 {
                return Err(damaged(path).into());
            }
            let mut bytes = vec![0u8; len];
            file.read_exact(&mut bytes).map_err(|_| damaged(path))?;
            texts.push(String::from_utf8(bytes).map_err(|_| damaged(path))?);
        }
        let count = u32_of(&mut file, false)?.ok_or_else(|| damaged(path))?;
        for _ in 0..count {
            let mut buf = [0u8; 8];
            file.read_exact(&mut buf).map_err(|_| damaged(path))?;
            values.push(u64::from_be_bytes(buf));
        }
        each(&texts, &values)?;
    }
    Ok(())
}

/// Writes `messages` to a new file at `path`, each as `u32 length || bytes` (big-endian),
/// flushed and synced: a job's withheld protocol messages of one bucket, kept until its release.
pub fn write_messages(path: &Path, messages: &[Vec<u8>]) -> io::Result<()> {
    let write = || -> io::Result<()> {
        let mut file = BufWriter::new(File::create(path)?);
        for message in messages {
            let len = u32::try_from(message.len()).map_err(io::Error::other)?;
            file.write_all(&len.to_be_bytes())?;
            file.write_all(message)?;
        }
        file.into_inner().map_err(|e| e.into_error())?.sync_all()
    };
    write().map_err(|e| at(path, "writing", e))
}

/// The messages [`write_messages`] wrote at `path`; a file that ends within a message is
/// damaged.
pub fn read_messages(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let mut file = BufReader::new(File::open(path).map_err(|e| at(path, "reading", e))?);
    let (mut messages, mut len) = (Vec::new(), [0u8; 4]);
    loop {
        match file.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(messages),
            Err(e) => return Err(at(path, "reading", e)),
        }
        let mut message = vec![0u8; u32::from_be_bytes(len) as usize];
        file.read_exact(&mut message).map_err(|_| damaged(path))?;
        messages.push(message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_in_order_per_bucket_and_the_directory_goes_away() {
        let work = WorkDir::new(None).unwrap();
        let dir = work.path().to_path_buf();
        let mut w = BucketWriter::create(&dir, "left", 3).unwrap();
        w.write(2, &["g", "a@b.c"], &[]).unwrap();
        w.write(0, &["x"], &[7, u64::MAX]).unwrap();
        w.write(2, &["", "é"], &[1]).unwrap();
        let paths = w.finish().unwrap();
        let read = |i: usize| {
            let mut got = Vec::new();
            read_bucket(&paths[i], |t, v| {
                got.push((t.to_vec(), v.to_vec()));
                Ok::<_, io::Error>(())
            })
            .unwrap();
            got
        };
        assert_eq!(read(0), [(vec!["x".to_owned()], vec![7, u64::MAX])]);
        assert!(read(1).is_empty());
        assert_eq!(
            read(2),
            [
                (vec!["g".to_owned(), "a@b.c".to_owned()], vec![]),
                (vec!["".to_owned(), "é".to_owned()], vec![1]),
            ]
        );
        // A truncated file is an error, never a short read taken for the end.
        let bytes = std::fs::read(&paths[2]).unwrap();
        std::fs::write(&paths[2], &bytes[..bytes.len() - 3]).unwrap();
        assert!(read_bucket(&paths[2], |_, _| Ok::<_, io::Error>(())).is_err());
        drop(work);
        assert!(!dir.exists());

        // A named directory: what an earlier process left is replaced.
        let parent = tempfile::tempdir().unwrap();
        let left = parent.path().join("job-7");
        std::fs::create_dir(&left).unwrap();
        std::fs::write(left.join("receiver-0.bucket"), b"old").unwrap();
        let work = WorkDir::named(Some(parent.path()), "job-7").unwrap();
        assert_eq!(work.path(), left);
        assert_eq!(std::fs::read_dir(&left).unwrap().count(), 0);
        drop(work);
        assert!(!left.exists());
    }

    #[test]
    fn message_files_give_back_what_was_written_and_refuse_a_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("evaluations-0");
        let messages = vec![vec![1u8, 2, 3], Vec::new(), vec![9; 70_000]];
        write_messages(&path, &messages).unwrap();
        assert_eq!(read_messages(&path).unwrap(), messages);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(read_messages(&path).is_err());
    }
}
