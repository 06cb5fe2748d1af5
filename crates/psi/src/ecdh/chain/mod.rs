//! Joins across three to five members: the querier and a chain of providers, each holding a
//! table of identifiers, learn counts and sums over the identifiers **all** of them hold.
//!
//! ```text
//!   querier Q (receiver)       P_1 … P_{k-1} (filters)           P_k (matcher)
//!   a_0                        a_1 … a_{k-1}                     a_k
//! ```
//!
//! # Construction
//! Every party `i` draws a fresh [blinding key](crate::ecdh::key) `a_i`; write
//! `A_S = Π_{i∈S} a_i`. Blinding commutes, so an identifier `x` blinded by the same keys in any
//! order is the same point, and a party compares two sets only when both are blinded by the
//! same product. `Q` talks to every provider; providers never talk to each other: whatever one
//! provider sends the next is a [`ChainMessage::Hop`], [sealed](crate::sealed) to the next
//! provider's static **relay key** (published in the collaboration file, so `Q` cannot put its
//! own in its place) and bound to the session's context, the two positions and a sequence
//! number, so that `Q` relays it but can neither read, alter, reorder, replay nor drop it
//! unnoticed.
//!
//! 1. **Filter sets.** Filter `P_j` sends `a_j·H(Y_j)` to `Q` ([`ChainMessage::FilterPoints`]).
//!    `Q` applies `a_0`, shuffles, and sends it to `P_1` as [`ChainMessage::OwnerPoints`];
//!    `P_1 … P_{j-1}` each apply their key, shuffle, and seal it on; `P_j` receives
//!    `A_{0..j}·H(Y_j)`, shuffled by others, which it cannot link to its rows.
//! 2. **The matcher's set.** `P_k` sends its groups as the two-party matcher does; `Q`'s
//!    [`Receiver`](crate::Receiver) re-blinds them by `a_0` and sends the points on (never
//!    tags); each filter applies its key and shuffles within the group; the last filter sends
//!    the matcher the tags of `A_{0..k}·H(Y_k)` (or the points, in a noisy session with several
//!    matcher groups), exactly what a two-party receiver would.
//! 3. **Candidates.** `Q` sends its items `a_0·H(x)` with its ElGamal ciphertexts `E(v_x)` and
//!    its group, shuffled, to `P_1`.
//! 4. **Filter `i`.** Once its own set and a whole receiver group have arrived, `P_i` applies
//!    `a_i` to every candidate of the group and compares it with its set. A candidate that
//!    matches goes on as `A_{0..i}·H(x)`; one that does not is **replaced by a uniformly random
//!    point**, which never matches later and, under DDH, looks like a blinded one. Every
//!    ciphertext is re-randomized (`E(v) + E(0)` under `Q`'s public value keys) and the group
//!    is shuffled before it is sealed on, so the next provider cannot tell how many candidates
//!    survived, nor link them to the ones `P_i` received.
//! 5. **The matcher.** `P_k` is the two-party [`Matcher`](crate::Matcher) over the candidates
//!    that reach it: its comparison finds `A_{0..k}·H(x)` exactly for `x` in every set. It
//!    counts, sums, decides the release and sends it to `Q`, which opens it as a two-party
//!    receiver does.
//!
//! # What each party learns
//! - `Q`: the release, every provider's announced set sizes. It holds no provider's key and
//!   reads no hop.
//! - Filter `P_i`: `Q`'s group sizes and, for each of `Q`'s groups `g`, the prefix count
//!   `c_i(g) = |X_0^g ∩ X_1 ∩ … ∩ X_i|` (its comparison shows how many candidates match, not
//!   which identifiers they are). `P_1` thus learns its pairwise count with `Q`. Comparing
//!   sets blinded by a common product is what this construction is made of, and whoever
//!   compares first learns one intersection size: hiding it needs an oblivious PRF or a
//!   general MPC circuit, which no maintained crate we compose provides.
//! - The matcher `P_k`: what the two-party matcher learns over the surviving candidates, the
//!   N-way intersection size per pair of groups.
//! - Nobody learns which identifiers any subset of the members shares.
//!
//! # Invariants every role keeps
//! - Every message is checked on arrival: points on the curve, counts within what was
//!   announced, hops opened with the role's relay key, from its predecessor only, in sequence.
//! - A filter compares nothing before its whole set and a whole receiver group arrived, and
//!   refuses a group with a repeated point before comparing, so whether it refuses never
//!   depends on its data.
//! - The matcher accepts the receiver's side only through hops from the last filter: `Q`
//!   cannot hand it candidates that skipped a filter.
//!
//! # Layout
//! - this file: [`Chain`] (positions, relay keys, sealing of hops);
//! - `message.rs`: [`ChainMessage`]; `filter.rs`: [`ChainFilter`]; `querier.rs`:
//!   [`ChainQuerier`]; `matcher.rs`: [`ChainMatcher`]; `run.rs`: every party of a session in
//!   one process ([`chain_offline`](crate::chain_offline)).

mod filter;
mod matcher;
mod message;
mod querier;
pub(crate) mod run;
#[cfg(test)]
mod tests;

pub use filter::ChainFilter;
pub use matcher::ChainMatcher;
pub use message::{ChainMessage, MAX_FILTERS};
pub use querier::ChainQuerier;

use crate::ecdh::aggregate::ProtocolError;
use crate::sealed::{OpeningKey, SealingKey};
use crate::wire::WireMessage;

/// The shape of one chain session, identical on every side: its context (the session's
/// identity, bound into every hop) and the relay key of each provider, in chain order (the
/// filters, then the matcher last). Positions count from 1; the querier is position 0.
#[derive(Debug, Clone)]
pub struct Chain {
    context: Vec<u8>,
    relay_keys: Vec<SealingKey>,
}

impl Chain {
    /// A chain of `relay_keys.len()` providers (2 to [`MAX_FILTERS`]` + 1`). `context` must
    /// be unique to the session (its id), so that no hop of another session opens in this one.
    pub fn new(context: &[u8], relay_keys: Vec<SealingKey>) -> Result<Chain, ProtocolError> {
        if relay_keys.len() < 2 || relay_keys.len() > MAX_FILTERS + 1 {
            return Err(ProtocolError::LimitExceeded {
                what: "providers in a chain",
                value: relay_keys.len() as u64,
                limit: (MAX_FILTERS + 1) as u64,
            });
        }
        Ok(Chain {
            context: context.to_vec(),
            relay_keys,
        })
    }

    /// How many providers the chain has (the filters and the matcher).
    pub fn providers(&self) -> u8 {
        self.relay_keys.len() as u8
    }

    /// The matcher's position: the last.
    pub fn matcher(&self) -> u8 {
        self.providers()
    }

    /// `message` as hop `seq` from position `from` to its successor, sealed to the successor's
    /// relay key (PROTOCOL.md 7.9): what a provider sends on. The roles number their hops
    /// themselves; this is for a transport or a test that plays a provider whole.
    pub fn seal_hop(&self, from: u8, seq: u64, message: &ChainMessage) -> ChainMessage {
        let mut sender = HopSender { from, next: seq };
        sender.seal(self, message)
    }

    /// The message inside hop `seq` from `to − 1` to `to`, opened with `opening` (the relay key
    /// of `to`): what provider `to` receives, or why the hop does not open.
    pub fn open_hop(
        &self,
        opening: &OpeningKey,
        to: u8,
        seq: u64,
        sealed: &[u8],
    ) -> Result<ChainMessage, ProtocolError> {
        let copy = OpeningKey::from_bytes(*opening.to_bytes())
            .map_err(|_| ProtocolError::Hop("not a relay key"))?;
        let mut inbox = HopInbox {
            position: to,
            opening: copy,
            next: seq,
        };
        inbox.open(self, to, sealed)
    }

    /// The associated data of hop `seq` from `from` to `to`.
    fn hop_ad(&self, from: u8, to: u8, seq: u64) -> Vec<u8> {
        let mut ad = b"cleanroom/chain/hop/v1".to_vec();
        ad.extend_from_slice(&(self.context.len() as u32).to_be_bytes());
        ad.extend_from_slice(&self.context);
        ad.extend_from_slice(&[from, to]);
        ad.extend_from_slice(&seq.to_be_bytes());
        ad
    }
}

/// The hops one provider sends to its successor, numbered in order.
#[derive(Debug)]
struct HopSender {
    from: u8,
    next: u64,
}

impl HopSender {
    fn new(from: u8) -> HopSender {
        HopSender { from, next: 0 }
    }

    /// `message` sealed to the successor's relay key, as the next hop.
    fn seal(&mut self, chain: &Chain, message: &ChainMessage) -> ChainMessage {
        let to = self.from + 1;
        let key = &chain.relay_keys[usize::from(to) - 1];
        let sealed = key.seal(&message.encode(), &chain.hop_ad(self.from, to, self.next));
        self.next += 1;
        ChainMessage::Hop { to, sealed }
    }
}

/// Opens the hops sealed to one provider by its predecessor, in order.
struct HopInbox {
    position: u8,
    opening: OpeningKey,
    next: u64,
}

impl HopInbox {
    fn new(position: u8, opening: OpeningKey) -> HopInbox {
        HopInbox {
            position,
            opening,
            next: 0,
        }
    }

    /// The chain message inside `sealed`, addressed `to` this provider: the predecessor's next
    /// hop, or an error (another recipient, another session, out of order, altered, or a hop
    /// inside a hop).
    fn open(
        &mut self,
        chain: &Chain,
        to: u8,
        sealed: &[u8],
    ) -> Result<ChainMessage, ProtocolError> {
        if to != self.position {
            return Err(ProtocolError::Hop("sealed to another provider"));
        }
        let ad = chain.hop_ad(self.position - 1, self.position, self.next);
        let bytes = self
            .opening
            .open(sealed, &ad)
            .map_err(|_| ProtocolError::Hop("does not open as the predecessor's next hop"))?;
        self.next += 1;
        match ChainMessage::decode(&bytes)? {
            ChainMessage::Hop { .. } => Err(ProtocolError::Hop("a hop inside a hop")),
            message => Ok(message),
        }
    }
}
