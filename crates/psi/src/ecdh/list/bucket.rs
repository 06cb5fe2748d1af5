//! A list query as a job of buckets: each bucket runs the list protocol with fresh keys up to
//! the provider's evaluations, which are withheld until the job's last bucket; the querier's
//! side of each bucket waits, parked, for them.
//!
//! ```text
//!   bucket i (keys a_i, b_i):  ListProviderHello {n_i, columns, W}         ──►
//!                              ListProviderItems {T_i(x), Seal(rows(x))}*  ──►  → items file i
//!                         ◄──  ListQuerierHello {m_i}, ListQuerierPoints {b_i·H(y)}*
//!   after bucket B−1:          ListProviderEvaluations, bucket 0's m_0 points, then 1's, …
//!                              each bucket opened alone: b_i⁻¹, its tags, its items file
//! ```
//!
//! Invariants:
//! - one bucket's querier holds its identifiers (in the order sent), `b_i⁻¹` (zeroized on
//!   drop) and, once they arrive, its lookups; the provider's items are in the caller's items
//!   sink, fixed records of `16 + W` bytes, so reading them back needs no framing;
//! - every bucket of a job seals to one width `W` ([`ListProvider::with_job_width`]), so no
//!   bucket's hello tells its own longest payload;
//! - a bucket's querier sends its last message of the bucket (its last points, or its hello
//!   when it has none) only once every item arrived: the provider counts the bucket done when
//!   it has that message, and by then the querier can [save](ListQuerier::save_bucket) all
//!   that opens the bucket, so a job that resumes can open every bucket the provider holds;
//! - a parked bucket takes exactly the evaluations of the points it sent, and opens only
//!   once it has them all: the outcome of a job is the union of its buckets' outcomes, which
//!   is the outcome one session over the whole sets gives (each identifier is in one bucket
//!   on both sides).
//!
//! [`ListProvider::with_job_width`]: super::ListProvider::with_job_width

use std::io::Read;

use rayon::prelude::*;
use zeroize::Zeroizing;

use super::{
    ItemStore, ListMatch, ListMessage, ListOutcome, ListQuerier, ProviderSide, QuerierExpects,
    derive, open,
};
use crate::ecdh::aggregate::{ProtocolError, point_error};
use crate::ecdh::batch::reblind;
use crate::ecdh::key::BlindingKey;
use crate::wire::{Tag, WireMessage};

/// Records read back and opened at once.
const OPEN_BATCH: usize = 4096;

/// Why a bucket's querier cannot be parked or opened.
#[derive(Debug, thiserror::Error)]
pub enum ListBucketError {
    /// The bucket is not finished: items or points are still outstanding.
    #[error("the bucket is not finished: {0}")]
    NotFinished(&'static str),
    /// Fewer evaluations arrived than the bucket sent points.
    #[error("{got} evaluations for the bucket's {expected} points")]
    EvaluationsMissing {
        /// Points the bucket sent.
        expected: u64,
        /// Evaluations that arrived.
        got: u64,
    },
    /// The items could not be written or read back.
    #[error("the bucket's items: {0}")]
    Items(#[from] std::io::Error),
    /// Saved state that is not a bucket this querier saved.
    #[error("the bucket's saved state is damaged: {0}")]
    State(&'static str),
}

/// The first bytes of a parked bucket's saved state: a name and the format's version.
const STATE_MAGIC: &[u8; 5] = b"CRLB\x01";

impl ListQuerier {
    /// Whether every item of the provider's bucket arrived (and its tags passed their checks):
    /// from then on the bucket's state can be [saved](Self::save_bucket), before its last
    /// message goes (which [`poll_message`](Self::poll_message) holds back until then).
    pub fn items_complete(&self) -> bool {
        matches!(self.expects, QuerierExpects::EvaluationsLater(_))
    }

    /// The state that opens this bucket after the job's release, once its
    /// [items are complete](Self::items_complete): `b⁻¹`, the provider's announced shape and
    /// this bucket's identifiers in the order their points go. The items sink is flushed
    /// first (an earlier write error is returned here). The bytes are secret (they unblind
    /// the evaluations) and are zeroized when dropped; [`ParkedListBucket::restore`] reads
    /// them back.
    pub fn save_bucket(&mut self) -> Result<Zeroizing<Vec<u8>>, ListBucketError> {
        let QuerierExpects::EvaluationsLater(provider) = self.expects else {
            return Err(ListBucketError::NotFinished(
                "a bucket is saved once the provider's items all arrived",
            ));
        };
        let ItemStore::Spilled { sink, failed, .. } = &mut self.items else {
            return Err(ListBucketError::NotFinished("not a bucket of a job"));
        };
        if let Some(error) = failed.take() {
            return Err(error.into());
        }
        sink.flush()?;
        let mut state = Zeroizing::new(Vec::with_capacity(
            64 + self.identifiers.iter().map(|i| 4 + i.len()).sum::<usize>(),
        ));
        state.extend_from_slice(STATE_MAGIC);
        state.extend_from_slice(self.unblind.to_secret_bytes().as_slice());
        state.extend_from_slice(&provider.size.to_be_bytes());
        state.extend_from_slice(&provider.columns.to_be_bytes());
        state.extend_from_slice(&provider.width.to_be_bytes());
        state.extend_from_slice(&(self.identifiers.len() as u64).to_be_bytes());
        for identifier in &self.identifiers {
            state.extend_from_slice(&(identifier.len() as u32).to_be_bytes());
            state.extend_from_slice(identifier.as_bytes());
        }
        Ok(state)
    }

    /// The querier of a finished bucket ([`is_finished`](Self::is_finished) under
    /// [`for_bucket`](Self::for_bucket)), keeping only what opening needs: its identifiers in
    /// the order their points went, `b⁻¹`, and the provider's announced shape. The items sink
    /// is flushed and dropped; an error writing it is returned here.
    pub fn park(self) -> Result<ParkedListBucket, ListBucketError> {
        let QuerierExpects::EvaluationsLater(provider) = self.expects else {
            return Err(ListBucketError::NotFinished(
                "a bucket is parked once the provider's items all arrived",
            ));
        };
        if !self.is_finished() {
            return Err(ListBucketError::NotFinished("points are still to be sent"));
        }
        let ItemStore::Spilled {
            mut sink, failed, ..
        } = self.items
        else {
            return Err(ListBucketError::NotFinished("not a bucket of a job"));
        };
        if let Some(error) = failed {
            return Err(error.into());
        }
        sink.flush()?;
        Ok(ParkedListBucket {
            unblind: self.unblind,
            identifiers: self.identifiers,
            lookups: Vec::new(),
            provider,
        })
    }
}

/// One bucket of a list job on the querier's side, between its last message and the job's
/// release: it takes the evaluations of its points, then opens its items.
pub struct ParkedListBucket {
    unblind: BlindingKey,
    identifiers: Vec<String>,
    lookups: Vec<(Tag, Zeroizing<[u8; 32]>)>,
    provider: ProviderSide,
}

impl ParkedListBucket {
    /// The bucket [saved](ListQuerier::save_bucket) by a querier, waiting for its evaluations
    /// as if it had just been parked. Bytes that are not such a state are refused, never a
    /// panic.
    pub fn restore(mut bytes: &[u8]) -> Result<ParkedListBucket, ListBucketError> {
        let mut take = |n: usize, what: &'static str| -> Result<&[u8], ListBucketError> {
            if bytes.len() < n {
                return Err(ListBucketError::State(what));
            }
            let (head, rest) = bytes.split_at(n);
            bytes = rest;
            Ok(head)
        };
        if take(STATE_MAGIC.len(), "too short")? != STATE_MAGIC {
            return Err(ListBucketError::State("not a saved bucket"));
        }
        let key: [u8; 32] = take(32, "the key")?.try_into().expect("32 bytes");
        let key = Zeroizing::new(key);
        let unblind =
            BlindingKey::from_secret_bytes(&key).ok_or(ListBucketError::State("the key"))?;
        let be = |b: &[u8]| b.iter().fold(0u64, |n, &x| (n << 8) | u64::from(x));
        let size = be(take(8, "the provider's size")?);
        let columns = be(take(2, "the columns")?) as u16;
        let width = be(take(4, "the width")?) as u32;
        if usize::from(columns) > super::MAX_LIST_COLUMNS
            || !crate::format::is_payload_width(width as usize)
        {
            return Err(ListBucketError::State("the provider's shape"));
        }
        let count = be(take(8, "the identifiers")?);
        let mut identifiers = Vec::new();
        for _ in 0..count {
            let len = be(take(4, "an identifier")?) as usize;
            let identifier = std::str::from_utf8(take(len, "an identifier")?)
                .map_err(|_| ListBucketError::State("an identifier is not UTF-8"))?;
            identifiers.push(identifier.to_owned());
        }
        if !bytes.is_empty() {
            return Err(ListBucketError::State("bytes after the identifiers"));
        }
        Ok(ParkedListBucket {
            unblind,
            identifiers,
            lookups: Vec::new(),
            provider: ProviderSide {
                size,
                columns,
                width,
                received: size,
            },
        })
    }

    /// Evaluations this bucket still expects.
    pub fn awaiting(&self) -> usize {
        self.identifiers.len() - self.lookups.len()
    }

    /// The provider's number of distinct identifiers in this bucket.
    pub fn provider_set_size(&self) -> u64 {
        self.provider.size
    }

    /// Consume a message of the job's release: evaluations of this bucket's points, in the
    /// order they were sent, at most as many as [`awaiting`](Self::awaiting).
    pub fn handle_message(&mut self, msg: ListMessage) -> Result<(), ProtocolError> {
        let kind = msg.kind();
        let ListMessage::ListProviderEvaluations { points } = msg else {
            return Err(ProtocolError::Unexpected {
                got: kind,
                why: "a job's release holds evaluations only",
            });
        };
        let got = (self.lookups.len() + points.len()) as u64;
        if got > self.identifiers.len() as u64 {
            return Err(ProtocolError::UnrequestedEvaluations {
                sent: self.identifiers.len() as u64,
                got,
            });
        }
        let prfs = reblind(&self.unblind, &points).map_err(point_error(kind))?;
        let lookups: Vec<_> = prfs.par_iter().map(derive).collect();
        self.lookups.extend(lookups);
        Ok(())
    }

    /// Looks up this bucket's identifiers among the provider's items, read back from `items`
    /// (the records the bucket's sink received), and opens the matched payloads. As
    /// [`ListQuerier::open`]: call it only once the job ended on the wire.
    pub fn open(self, mut items: impl Read) -> Result<ListOutcome, ListBucketError> {
        if self.awaiting() > 0 {
            return Err(ListBucketError::EvaluationsMissing {
                expected: self.identifiers.len() as u64,
                got: self.lookups.len() as u64,
            });
        }
        let (columns, width) = (self.provider.columns, self.provider.width);
        let mut by_tag: std::collections::HashMap<u128, usize> = self
            .lookups
            .iter()
            .enumerate()
            .map(|(i, (tag, _))| (tag.as_u128(), i))
            .collect();
        let record = 16 + width as usize;
        let mut left = self.provider.size;
        let mut buffer = vec![0u8; record * OPEN_BATCH];
        let (mut matches, mut unopened) = (Vec::new(), 0u64);
        while left > 0 {
            let n = usize::try_from(left).map_or(OPEN_BATCH, |l| l.min(OPEN_BATCH));
            let batch = &mut buffer[..n * record];
            items.read_exact(batch)?;
            left -= n as u64;
            // Each identifier opens at most once: a tag found is taken out of the map.
            let found: Vec<(usize, &[u8])> = batch
                .chunks_exact(record)
                .filter_map(|r| {
                    let tag = u128::from_be_bytes(r[..16].try_into().expect("16 bytes"));
                    by_tag.remove(&tag).map(|i| (i, &r[16..]))
                })
                .collect();
            let opened: Vec<Result<ListMatch, ()>> = found
                .par_iter()
                .map(|&(i, payload)| {
                    open(&self.lookups[i].1, payload, columns, width)
                        .map(|rows| ListMatch {
                            identifier: self.identifiers[i].clone(),
                            rows,
                        })
                        .map_err(drop)
                })
                .collect();
            unopened += opened.iter().filter(|m| m.is_err()).count() as u64;
            matches.extend(opened.into_iter().filter_map(Result::ok));
        }
        matches.sort_unstable_by(|a, b| a.identifier.cmp(&b.identifier));
        Ok(ListOutcome {
            matches,
            provider_set_size: self.provider.size,
            unopened,
        })
    }
}

impl std::fmt::Debug for ParkedListBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParkedListBucket")
            .field("set_size", &self.identifiers.len())
            .field("awaiting", &self.awaiting())
            .finish_non_exhaustive()
    }
}

impl ListOutcome {
    /// The outcome of a job: its buckets' outcomes together (each identifier is in one bucket),
    /// matches sorted, sizes and unopened payloads summed.
    pub fn of_buckets(buckets: impl IntoIterator<Item = ListOutcome>) -> ListOutcome {
        let mut job = ListOutcome::default();
        for bucket in buckets {
            job.matches.extend(bucket.matches);
            job.provider_set_size += bucket.provider_set_size;
            job.unopened += bucket.unopened;
        }
        job.matches
            .sort_unstable_by(|a, b| a.identifier.cmp(&b.identifier));
        job
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::BucketKey;
    use crate::ecdh::aggregate::Limits;
    use crate::table::{ListProviderTable, ListQuerierTable};
    use crate::{Domain, ListProvider, Normalization, Party};
    use std::sync::{Arc, Mutex};

    /// An items sink whose bytes the test reads back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn tables(long_row_of: &str) -> (ListProviderTable, ListQuerierTable) {
        let mut provider = ListProviderTable::new(Normalization::Email, 1).unwrap();
        for i in 0..60 {
            let id = format!("p{i}@x.org");
            let value = match id == long_row_of {
                true => "x".repeat(300),
                false => format!("region-{}", i % 4),
            };
            provider.push(&id, &[value.as_str()]).unwrap();
            if i % 5 == 0 {
                provider.push(&id, &["second"]).unwrap();
            }
        }
        let mut querier = ListQuerierTable::new(Normalization::Email);
        for i in 30..90 {
            querier.push(&format!("P{i}@x.org"));
        }
        (provider, querier)
    }

    /// Runs one bucket up to its parking: the hellos each side sent, the provider's
    /// evaluations (withheld) and the parked querier.
    fn run_bucket(
        domain: &Domain,
        provider: ListProviderTable,
        querier: ListQuerierTable,
        width: usize,
    ) -> (u32, Vec<ListMessage>, ParkedListBucket, Shared) {
        let sink = Shared::default();
        let mut p = ListProvider::new(domain, provider, Limits::default()).with_job_width(width);
        let mut q = ListQuerier::for_bucket(
            domain,
            querier,
            1,
            Limits::default(),
            Box::new(sink.clone()),
        );
        let (mut hello_width, mut withheld) = (0, Vec::new());
        loop {
            let mut moved = false;
            while let Some(m) = p.poll() {
                moved = true;
                match m {
                    m @ ListMessage::ListProviderEvaluations { .. } => withheld.push(m),
                    m => {
                        if let ListMessage::ListProviderHello { payload_bytes, .. } = &m {
                            hello_width = *payload_bytes;
                        }
                        q.handle(m).unwrap();
                    }
                }
            }
            while let Some(m) = q.poll() {
                moved = true;
                p.handle(m).unwrap();
            }
            if !moved {
                break;
            }
        }
        assert!(p.is_done() && q.is_finished());
        (hello_width, withheld, q.park().unwrap(), sink)
    }

    /// A bucket's querier whose provider is slow: its last message waits for every item.
    #[test]
    fn a_buckets_last_message_waits_for_the_providers_items() {
        let domain = Domain::new("c", "email");
        for querier_ids in [0, 3] {
            let (provider, _) = tables("p3@x.org");
            let mut querier = ListQuerierTable::new(Normalization::Email);
            for i in 0..querier_ids {
                querier.push(&format!("p{i}@x.org"));
            }
            let mut p = ListProvider::new(&domain, provider, Limits::default());
            let mut q = ListQuerier::for_bucket(
                &domain,
                querier,
                1,
                Limits::default(),
                Box::new(Shared::default()),
            );
            // Nothing from the provider yet: the hello goes only when points follow it, the
            // last points not at all.
            let early: Vec<&str> = std::iter::from_fn(|| q.poll()).map(|m| m.kind()).collect();
            match querier_ids {
                0 => assert!(early.is_empty()),
                _ => assert_eq!(early, ["ListQuerierHello"]),
            }
            while let Some(m) = p.poll() {
                q.handle(m).unwrap();
            }
            assert!(q.items_complete() && !q.is_finished());
            let late: Vec<&str> = std::iter::from_fn(|| q.poll()).map(|m| m.kind()).collect();
            match querier_ids {
                0 => assert_eq!(late, ["ListQuerierHello"]),
                _ => assert_eq!(late, ["ListQuerierPoints"]),
            }
            assert!(q.is_finished());
        }
    }

    /// A provider that sends evaluations within a bucket (before the job's release) is refused,
    /// before and after the bucket's items are in.
    #[test]
    fn evaluations_within_a_bucket_are_refused() {
        let domain = Domain::new("c", "email");
        for early in [true, false] {
            let (provider, querier) = tables("p3@x.org");
            let mut p = ListProvider::new(&domain, provider, Limits::default());
            let mut q = ListQuerier::for_bucket(
                &domain,
                querier,
                1,
                Limits::default(),
                Box::new(Shared::default()),
            );
            let from_provider: Vec<ListMessage> = std::iter::from_fn(|| p.poll()).collect();
            let (hello, items) = from_provider.split_at(1);
            q.handle(hello[0].clone()).unwrap();
            if !early {
                for m in items {
                    q.handle(m.clone()).unwrap();
                }
            }
            for m in std::iter::from_fn(|| q.poll()) {
                p.handle(m).unwrap();
            }
            let evaluation = std::iter::from_fn(|| p.poll())
                .find(|m| matches!(m, ListMessage::ListProviderEvaluations { .. }));
            let evaluation =
                evaluation.unwrap_or(ListMessage::ListProviderEvaluations { points: Vec::new() });
            assert!(
                matches!(q.handle(evaluation), Err(ProtocolError::Unexpected { .. })),
                "early: {early}"
            );
        }
    }

    #[test]
    fn a_saved_bucket_opens_as_the_parked_one() {
        let domain = Domain::new("c", "email");
        let (provider, querier) = tables("p3@x.org");
        let sink = Shared::default();
        let mut p = ListProvider::new(&domain, provider, Limits::default());
        let mut q = ListQuerier::for_bucket(
            &domain,
            querier,
            1,
            Limits::default(),
            Box::new(sink.clone()),
        );
        let mut withheld = Vec::new();
        while let Some(m) = p.poll() {
            q.handle(m).unwrap();
        }
        let saved = q.save_bucket().unwrap();
        for m in std::iter::from_fn(|| q.poll()) {
            p.handle(m).unwrap();
        }
        withheld.extend(std::iter::from_fn(|| p.poll()));
        let items = sink.0.lock().unwrap().clone();
        let mut parked = q.park().unwrap();
        let mut restored = ParkedListBucket::restore(&saved).unwrap();
        for m in withheld {
            parked.handle_message(m.clone()).unwrap();
            restored.handle_message(m).unwrap();
        }
        let outcome = parked.open(items.as_slice()).unwrap();
        assert_eq!(outcome.matches.len(), 30);
        assert_eq!(restored.open(items.as_slice()).unwrap(), outcome);
        // Damaged state is refused, whatever the damage.
        for cut in [0, 4, 20, 40, 60, saved.len() - 1] {
            assert!(ParkedListBucket::restore(&saved[..cut]).is_err(), "{cut}");
        }
        let mut longer = saved.to_vec();
        longer.push(0);
        assert!(ParkedListBucket::restore(&longer).is_err());
        let mut zero_key = saved.to_vec();
        zero_key[5..37].fill(0);
        assert!(ParkedListBucket::restore(&zero_key).is_err());
    }

    #[test]
    fn a_job_of_buckets_gives_the_outcome_of_one_session() {
        let domain = Domain::new("c", "email");
        let (provider, querier) = tables("p3@x.org");
        let whole = crate::offline::list_offline(&domain, provider.clone(), querier.clone())
            .unwrap()
            .outcome;
        assert_eq!(whole.matches.len(), 30);

        let key = BucketKey::from_bytes([7; 32]);
        let providers = provider.into_buckets(&key, &domain, 2);
        let width = providers.iter().map(|t| t.payload_bytes()).max().unwrap();
        let queriers = querier.into_buckets(&key, &domain, 2);
        let mut runs: Vec<_> = providers
            .into_iter()
            .zip(queriers)
            .map(|(p, q)| run_bucket(&domain, p, q, width))
            .collect();
        // Every bucket's hello gives the job's width, whichever bucket holds the long row.
        assert!(runs.iter().all(|(w, ..)| *w as usize == width));
        // Nothing opens before the evaluations arrive.
        let (_, _, parked, sink) = runs.remove(0);
        let items = sink.0.lock().unwrap().clone();
        assert!(matches!(
            parked.open(items.as_slice()),
            Err(ListBucketError::EvaluationsMissing { .. })
        ));
        let (provider, querier) = tables("p3@x.org");
        let (p, q) = (
            provider.into_buckets(&key, &domain, 2),
            querier.into_buckets(&key, &domain, 2),
        );
        let runs: Vec<_> = p
            .into_iter()
            .zip(q)
            .map(|(p, q)| run_bucket(&domain, p, q, width))
            .collect();
        let outcomes = runs.into_iter().map(|(_, withheld, mut parked, sink)| {
            for m in withheld {
                parked.handle_message(m).unwrap();
            }
            let items = sink.0.lock().unwrap().clone();
            parked.open(items.as_slice()).unwrap()
        });
        assert_eq!(ListOutcome::of_buckets(outcomes), whole);
    }

    #[test]
    fn the_job_width_hides_which_bucket_holds_the_longest_payload() {
        let domain = Domain::new("c", "email");
        let key = BucketKey::from_bytes([7; 32]);
        // Two tables whose long row sits in different buckets.
        let in_bucket = |id: &str| key.bucket(&domain, id, 2);
        let (a, b) = (0..60)
            .map(|i| format!("p{i}@x.org"))
            .fold((None, None), |(a, b), id| match in_bucket(&id) {
                0 => (a.or(Some(id)), b),
                _ => (a, b.or(Some(id))),
            });
        let mut hellos = Vec::new();
        for long in [a.unwrap(), b.unwrap()] {
            let (provider, querier) = tables(&long);
            let providers = provider.into_buckets(&key, &domain, 2);
            let width = providers.iter().map(|t| t.payload_bytes()).max().unwrap();
            for (p, q) in providers
                .into_iter()
                .zip(querier.into_buckets(&key, &domain, 2))
            {
                hellos.push(run_bucket(&domain, p, q, width).0);
            }
        }
        assert!(hellos.windows(2).all(|w| w[0] == w[1]), "{hellos:?}");
        // Without the job width, the bucket without the long row would say so.
        let (provider, _) = tables("p3@x.org");
        let widths: Vec<usize> = provider
            .into_buckets(&key, &domain, 2)
            .iter()
            .map(|t| t.payload_bytes())
            .collect();
        assert_ne!(widths[0], widths[1]);
    }

    #[test]
    fn a_parked_bucket_takes_only_its_own_evaluations() {
        let domain = Domain::new("c", "email");
        let (provider, querier) = tables("p3@x.org");
        let width = provider.payload_bytes();
        let (_, withheld, mut parked, _) = run_bucket(&domain, provider, querier, width);
        let mut doubled = withheld.clone();
        doubled.extend(withheld);
        let mut result = Ok(());
        for m in doubled {
            result = result.and(parked.handle_message(m));
        }
        assert!(matches!(
            result,
            Err(ProtocolError::UnrequestedEvaluations { .. })
        ));
    }
}
