//! Offline matching: both roles in one process, through the real messages.
//!
//! Every message is encoded and decoded again on its way, exactly as it would cross a network,
//! so this is the reference run for tests, benchmarks and `cleanroom match`.

use crate::Domain;
use crate::protocol::{GroupCount, Limits, Matcher, ProtocolError, Receiver, ReceiverOutcome};
use crate::table::{InputStats, MatcherTable, ReceiverTable};
use crate::wire::Message;

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
    mut observe: impl FnMut(&Message, &[u8]),
) -> Result<MatchReport, ProtocolError> {
    let matcher_input = matcher.stats();
    let receiver_input = receiver.stats();
    let limits = Limits::unlimited();
    let mut m = Matcher::new(domain, matcher, limits);
    let mut r = Receiver::new(domain, receiver, limits);
    let (mut messages, mut bytes) = (0u64, 0u64);
    let mut transfer = |msg: Message| -> Result<Message, ProtocolError> {
        let encoded = msg.encode();
        messages += 1;
        bytes += encoded.len() as u64;
        let decoded = Message::decode(&encoded)?;
        observe(&decoded, &encoded);
        Ok(decoded)
    };
    let mut released = false;
    while !r.is_finished() {
        let mut progressed = false;
        while let Some(msg) = m.poll_message() {
            r.handle_message(transfer(msg)?)?;
            progressed = true;
        }
        while let Some(msg) = r.poll_message() {
            m.handle_message(transfer(msg)?)?;
            progressed = true;
        }
        if !released && m.counts().is_some() {
            m.release(|c| c.intersection_size >= min_release)?;
            released = true;
            progressed = true;
        }
        if !progressed {
            return Err(ProtocolError::NotReady("the session stalled"));
        }
    }
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
