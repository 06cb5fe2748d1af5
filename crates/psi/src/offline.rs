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
/// [`match_offline`] as a job of `buckets` buckets ([`JobTotals`]): both tables split by a
/// fresh [`BucketKey`], one session per bucket (fresh blinding keys, the receiver's one value
/// key, no release), the matcher's totals added up and released once, and the release checked
/// and opened by the receiver's [`ResultOpener`]. The outcome equals an unbucketed run's; the
/// report's messages and bytes are every bucket's and the release's.
pub fn match_offline_bucketed(
    domain: &Domain,
    matcher: MatcherTable,
    receiver: ReceiverTable,
    min_release: u64,
    buckets: u32,
) -> Result<MatchReport, ProtocolError> {
    let matcher_input = matcher.stats();
    let receiver_input = receiver.stats();
    let limits = Limits::unlimited();
    let key = BucketKey::generate();
    let columns = receiver.value_columns();
    let value_key = (columns > 0).then(|| ValueKey::generate(columns));
    let keys = ResultKeys::for_job(value_key.as_ref(), receiver.group_sizes());
    let mut job = JobTotals::new(None);
    let (mut messages, mut bytes) = (0u64, 0u64);
    let parts = matcher
        .into_buckets(&key, domain, buckets)
        .into_iter()
        .zip(receiver.into_buckets(&key, domain, buckets));
    for (matcher, receiver) in parts {
        let mut m = Matcher::new(domain, matcher, limits);
        let mut r = Receiver::in_job(domain, receiver, limits, value_key.as_ref())?;
        let (n, b) = drive(&mut m, &mut r, |m| job.add_bucket(m), &mut |_, _| {})?;
        messages += n;
        bytes += b;
    }
    let counts = job.counts();
    let (release, _) = job.release(|c| c.intersection_size >= min_release)?;
    let mut opener = ResultOpener::new(keys, limits);
    for message in release {
        let encoded = message.encode();
        messages += 1;
        bytes += encoded.len() as u64;
        opener.handle_message(AggregateMessage::decode(&encoded)?)?;
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
