//! Offline runs: both parties of a session in one process, through the real messages.
//!
//! One generic driver moves the messages between any two [`Party`]s; every message is encoded
//! and decoded again on its way, exactly as it would cross a network, so these are the
//! reference runs for tests, benchmarks and `cleanroom match`. The figures of a report
//! (messages, bytes) count the encoded messages in both directions.

use crate::Domain;
use crate::bucket::BucketKey;
use crate::ecdh::aggregate::{
    AggregateMessage, GroupCount, JobTotals, Limits, Matcher, ProtocolError, Receiver,
    ReceiverOutcome, ResultKeys, ResultOpener,
};
use crate::ecdh::chain::run::ChainParties;
use crate::ecdh::elgamal::ValueKey;
use crate::ecdh::list::{ListMessage, ListOutcome, ListProvider, ListQuerier};
use crate::party::{Party, Stage};
use crate::table::{InputStats, ListProviderTable, ListQuerierTable, MatcherTable, ReceiverTable};
use crate::wire::WireMessage;

/// What an offline run produced and what it moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchReport {
    /// What the receiver learned.
    pub outcome: ReceiverOutcome,
    /// What the matcher learned (every pair of groups with a non-empty intersection).
    pub counts: Vec<GroupCount>,
    /// The matcher's input counts.
    pub matcher_input: InputStats,
    /// The receiver's input counts.
    pub receiver_input: InputStats,
    /// Messages exchanged, both directions.
    pub messages: u64,
    /// Encoded bytes exchanged, both directions.
    pub bytes: u64,
}

/// Run a whole session in-process; every group whose intersection has at least `min_release`
/// identifiers is released. `observe` sees each message, decoded and encoded, as it crosses
/// (for transcripts and progress displays).
pub fn match_offline_observed(
    domain: &Domain,
    matcher: MatcherTable,
    receiver: ReceiverTable,
    min_release: u64,
    mut observe: impl FnMut(&AggregateMessage, &[u8]),
) -> Result<MatchReport, ProtocolError> {
    let matcher_input = matcher.stats();
    let receiver_input = receiver.stats();
    let limits = Limits::unlimited();
    let mut m = Matcher::new(domain, matcher, limits);
    let mut r = Receiver::new(domain, receiver, limits);
    let release = |m: &mut Matcher| m.release(|c| c.intersection_size >= min_release).map(drop);
    let (messages, bytes) = drive(&mut m, &mut r, release, &mut observe)?;
    Ok(MatchReport {
        outcome: r.open()?,
        counts: m.counts().map(<[_]>::to_vec).unwrap_or_default(),
        matcher_input,
        receiver_input,
        messages,
        bytes,
    })
}

/// [`match_offline_observed`] without an observer.
pub fn match_offline(
    domain: &Domain,
    matcher: MatcherTable,
    receiver: ReceiverTable,
    min_release: u64,
) -> Result<MatchReport, ProtocolError> {
    match_offline_observed(domain, matcher, receiver, min_release, |_, _| {})
}
/// [`match_offline`] as a job of `buckets` buckets ([`JobTotals`]): both tables split in
/// memory by a fresh [`BucketKey`] ([`MatcherTable::into_buckets`]), then
/// [`match_offline_job`]. The outcome equals an unbucketed run's.
pub fn match_offline_bucketed(
    domain: &Domain,
    matcher: MatcherTable,
    receiver: ReceiverTable,
    min_release: u64,
    buckets: u32,
) -> Result<MatchReport, ProtocolError> {
    let (matcher_input, receiver_input) = (matcher.stats(), receiver.stats());
    let key = BucketKey::generate();
    let columns = receiver.value_columns();
    let mut parts = matcher
        .into_buckets(&key, domain, buckets)
        .into_iter()
        .zip(receiver.into_buckets(&key, domain, buckets));
    let mut report = match_offline_job(domain, buckets, columns, min_release, |_| {
        parts
            .next()
            .ok_or(ProtocolError::NotReady("a bucket is missing"))
    })?;
    report.matcher_input = matcher_input;
    report.receiver_input = receiver_input;
    Ok(report)
}

/// A job of `buckets` buckets in this process, one bucket in memory at a time: `load(i)` gives
/// bucket `i`'s two tables (each with every group of its side, as
/// [`MatcherTable::into_buckets`] makes them) only when its turn comes. Each bucket is one
/// session (fresh blinding keys, the receiver's one value key for `value_columns` columns, no
/// release), the matcher's totals are added up and released once with `min_release`, and the
/// receiver checks and opens the release with its [`ResultOpener`] over its whole groups (the
/// sums of the buckets' group sizes). The report's input counts are the loaded parts'; its
/// messages and bytes are every bucket's and the release's.
pub fn match_offline_job<E: From<ProtocolError>>(
    domain: &Domain,
    buckets: u32,
    value_columns: usize,
    min_release: u64,
    mut load: impl FnMut(u32) -> Result<(MatcherTable, ReceiverTable), E>,
) -> Result<MatchReport, E> {
    let limits = Limits::unlimited();
    let value_key = (value_columns > 0).then(|| ValueKey::generate(value_columns));
    let mut job = JobTotals::new(None);
    let mut groups: Vec<(String, u64)> = Vec::new();
    let (mut matcher_input, mut receiver_input) = (InputStats::default(), InputStats::default());
    let (mut messages, mut bytes) = (0u64, 0u64);
    for bucket in 0..buckets.max(1) {
        let (matcher, receiver) = load(bucket)?;
        add_stats(&mut matcher_input, matcher.stats());
        add_stats(&mut receiver_input, receiver.stats());
        let sizes = receiver.group_sizes();
        if groups.is_empty() {
            groups = sizes;
        } else if groups.len() != sizes.len() || groups.iter().zip(&sizes).any(|(a, b)| a.0 != b.0)
        {
            return Err(ProtocolError::BucketMismatch("the receiver's groups").into());
        } else {
            for (total, (_, n)) in groups.iter_mut().zip(sizes) {
                total.1 += n;
            }
        }
        let mut m = Matcher::new(domain, matcher, limits);
        let mut r = Receiver::in_job(domain, receiver, limits, value_key.as_ref())?;
        let (n, b) = drive(&mut m, &mut r, |m| job.add_bucket(m), &mut |_, _| {})?;
        messages += n;
        bytes += b;
    }
    let counts = job.counts();
    let (release, _) = job.release(|c| c.intersection_size >= min_release)?;
    let mut opener = ResultOpener::new(ResultKeys::for_job(value_key.as_ref(), groups), limits);
    for message in release {
        let encoded = message.encode();
        messages += 1;
        bytes += encoded.len() as u64;
        opener.handle_message(AggregateMessage::decode(&encoded).map_err(ProtocolError::from)?)?;
    }
    Ok(MatchReport {
        outcome: opener.open()?,
        counts,
        matcher_input,
        receiver_input,
        messages,
        bytes,
    })
}

fn add_stats(total: &mut InputStats, part: InputStats) {
    total.rows += part.rows;
    total.skipped_empty += part.skipped_empty;
}

/// What an offline list run produced and what it moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListReport {
    /// What the querier learned.
    pub outcome: ListOutcome,
    /// What the provider learned: the querier's number of distinct identifiers.
    pub querier_set_size: u64,
    /// The provider's input counts.
    pub provider_input: InputStats,
    /// The querier's input counts.
    pub querier_input: InputStats,
    /// Messages exchanged, both directions.
    pub messages: u64,
    /// Encoded bytes exchanged, both directions.
    pub bytes: u64,
}

/// Run a whole list session in-process, every message encoded and decoded on its way as it
/// would cross a network. `observe` sees each message, decoded and encoded, as it crosses (for
/// transcripts and progress displays).
pub fn list_offline_observed(
    domain: &Domain,
    provider: ListProviderTable,
    querier: ListQuerierTable,
    mut observe: impl FnMut(&ListMessage, &[u8]),
) -> Result<ListReport, ProtocolError> {
    let provider_input = provider.stats();
    let querier_input = querier.stats();
    let limits = Limits::unlimited();
    let columns = provider.columns();
    let mut p = ListProvider::new(domain, provider, limits);
    let mut q = ListQuerier::new(domain, querier, columns, limits);
    let (messages, bytes) = drive(&mut p, &mut q, |_: &mut ListProvider| Ok(()), &mut observe)?;
    Ok(ListReport {
        outcome: q.open().expect("driven to the end"),
        querier_set_size: p.querier_set_size().expect("done implies the hello"),
        provider_input,
        querier_input,
        messages,
        bytes,
    })
}

/// [`list_offline_observed`] without an observer.
pub fn list_offline(
    domain: &Domain,
    provider: ListProviderTable,
    querier: ListQuerierTable,
) -> Result<ListReport, ProtocolError> {
    list_offline_observed(domain, provider, querier, |_, _| {})
}

/// The one driver of every offline run: moves messages between `a` and `b`, each encoded,
/// counted and decoded again on its way (as it would cross a network) and shown to `observe`,
/// until both are [`Stage::Finished`] and have nothing left to send. `release` is called once
/// when `a` awaits its owner's release decision. Returns the messages and bytes moved.
pub(crate) fn drive<A: Party, B: Party<Message = A::Message>>(
    a: &mut A,
    b: &mut B,
    mut release: impl FnMut(&mut A) -> Result<(), ProtocolError>,
    observe: &mut impl FnMut(&A::Message, &[u8]),
) -> Result<(u64, u64), ProtocolError> {
    let (mut messages, mut bytes) = (0u64, 0u64);
    let mut transfer = |msg: A::Message| -> Result<A::Message, ProtocolError> {
        let encoded = msg.encode();
        messages += 1;
        bytes += encoded.len() as u64;
        let decoded = A::Message::decode(&encoded)?;
        observe(&decoded, &encoded);
        Ok(decoded)
    };
    loop {
        let mut progressed = false;
        while let Some(msg) = a.poll() {
            b.handle(transfer(msg)?)?;
            progressed = true;
        }
        while let Some(msg) = b.poll() {
            a.handle(transfer(msg)?)?;
            progressed = true;
        }
        if a.stage() == Stage::Finished && b.stage() == Stage::Finished {
            return Ok((messages, bytes));
        }
        if a.stage() == Stage::AwaitingRelease {
            release(a)?;
            progressed = true;
        }
        if !progressed {
            return Err(ProtocolError::NotReady("the session stalled"));
        }
    }
}

/// What an offline chain run produced and what it moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// What the querier learned.
    pub outcome: ReceiverOutcome,
    /// What the matcher learned (every pair of groups with a non-empty N-way intersection).
    pub counts: Vec<GroupCount>,
    /// What each filter learned, in chain order: how many of the querier's candidates, per
    /// querier group, matched it and every set before it.
    pub filter_counts: Vec<Vec<u64>>,
    /// Messages exchanged, every connection, both directions (a relayed hop counts twice).
    pub messages: u64,
    /// Encoded bytes exchanged, likewise.
    pub bytes: u64,
}

/// A join across `2 + filters.len()` members in-process ([`chain`](crate::ecdh::chain)): the
/// querier's `receiver` table, the `filters` in chain order, and the `matcher` last; every
/// group whose N-way intersection has at least `min_release` identifiers is released.
pub fn chain_offline(
    domain: &Domain,
    receiver: ReceiverTable,
    filters: Vec<ListQuerierTable>,
    matcher: MatcherTable,
    min_release: u64,
) -> Result<ChainReport, ProtocolError> {
    let mut parties = ChainParties::new(domain, receiver, filters, matcher, (|r| r, |m| m), false)?;
    let (messages, bytes) = parties.run(
        |m| {
            m.matcher_mut()
                .release(|c| c.intersection_size >= min_release)
                .map(drop)
        },
        |_, message| vec![message],
    )?;
    Ok(ChainReport {
        outcome: parties.querier.open()?,
        counts: parties
            .matcher
            .matcher()
            .counts()
            .map(<[_]>::to_vec)
            .unwrap_or_default(),
        filter_counts: parties
            .filters
            .iter()
            .map(|f| f.counts().to_vec())
            .collect(),
        messages,
        bytes,
    })
}
