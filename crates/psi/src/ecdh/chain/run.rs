//! Every party of one chain session in this process, through the real (encoded) messages:
//! the reference run for tests, benchmarks and [`chain_offline`](crate::chain_offline).

use super::{Chain, ChainFilter, ChainMatcher, ChainMessage, ChainQuerier};
use crate::Domain;
use crate::ecdh::aggregate::{Limits, Matcher, ProtocolError, Receiver};
use crate::party::{Party, Stage};
use crate::sealed::OpeningKey;
use crate::table::{ListQuerierTable, MatcherTable, ReceiverTable};
use crate::wire::WireMessage;

/// Which way a message crosses, and the provider at the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// From the querier to the provider at this position.
    ToProvider(u8),
    /// From the provider at this position to the querier.
    FromProvider(u8),
}

/// The querier, the filters and the matcher of one chain session.
pub(crate) struct ChainParties {
    pub(crate) querier: ChainQuerier,
    pub(crate) filters: Vec<ChainFilter>,
    pub(crate) matcher: ChainMatcher,
    /// The session's shape and every provider's secret relay key, for tests that play a
    /// provider bending what it seals.
    #[cfg(test)]
    pub(crate) keys: (Chain, Vec<[u8; 32]>),
}

impl ChainParties {
    /// A session over the tables given, with fresh relay keys, each two-party role configured
    /// by the closures (noise, thresholds) before it is wrapped; `noisy` tells the filters the
    /// session is noisy.
    pub(crate) fn new(
        domain: &Domain,
        receiver: ReceiverTable,
        filters: Vec<ListQuerierTable>,
        matcher: MatcherTable,
        configure: (
            impl FnOnce(Receiver) -> Receiver,
            impl FnOnce(Matcher) -> Matcher,
        ),
        noisy: bool,
    ) -> Result<ChainParties, ProtocolError> {
        let limits = Limits::unlimited();
        let relays: Vec<OpeningKey> = (0..=filters.len())
            .map(|_| OpeningKey::generate())
            .collect();
        let context: [u8; 16] = rand::random();
        let chain = Chain::new(
            &context,
            relays.iter().map(OpeningKey::sealing_key).collect(),
        )?;
        #[cfg(test)]
        let keys = (
            chain.clone(),
            relays.iter().map(|k| *k.to_bytes()).collect::<Vec<_>>(),
        );
        let mut relays = relays.into_iter();
        let filters = filters
            .into_iter()
            .zip(1u8..)
            .zip(relays.by_ref())
            .map(|((table, position), relay)| {
                let filter =
                    ChainFilter::new(domain, table, chain.clone(), position, relay, limits)?;
                Ok(if noisy { filter.noisy() } else { filter })
            })
            .collect::<Result<Vec<_>, ProtocolError>>()?;
        let matcher = (configure.1)(Matcher::new(domain, matcher, limits));
        let matcher = ChainMatcher::new(
            matcher,
            chain.clone(),
            relays.next().expect("one relay key per provider"),
        )?;
        let receiver = (configure.0)(Receiver::new(domain, receiver, limits));
        Ok(ChainParties {
            querier: ChainQuerier::new(receiver, chain, limits),
            filters,
            matcher,
            #[cfg(test)]
            keys,
        })
    }

    /// Runs the session to its end; `release` decides the matcher's release once it awaits
    /// one, and `wire` sees every message (decoded from its encoding) on its way and returns
    /// what is delivered instead (an attacker's hook: nothing, the message, or more). Returns
    /// the messages and bytes that crossed.
    pub(crate) fn run(
        &mut self,
        mut release: impl FnMut(&mut ChainMatcher) -> Result<(), ProtocolError>,
        mut wire: impl FnMut(Direction, ChainMessage) -> Vec<ChainMessage>,
    ) -> Result<(u64, u64), ProtocolError> {
        let (mut messages, mut bytes) = (0u64, 0u64);
        let mut cross = |direction, message: ChainMessage| {
            let encoded = message.encode();
            messages += 1;
            bytes += encoded.len() as u64;
            ChainMessage::decode(&encoded).map(|decoded| wire(direction, decoded))
        };
        loop {
            let mut progressed = false;
            while let Some((to, message)) = self.querier.poll_message() {
                progressed = true;
                for message in cross(Direction::ToProvider(to), message)? {
                    match self.filters.get_mut(usize::from(to) - 1) {
                        Some(filter) => filter.handle(message)?,
                        None => self.matcher.handle(message)?,
                    }
                }
            }
            for (filter, position) in self.filters.iter_mut().zip(1u8..) {
                while let Some(message) = filter.poll() {
                    progressed = true;
                    for message in cross(Direction::FromProvider(position), message)? {
                        self.querier.handle_message(position, message)?;
                    }
                }
            }
            let last = self.filters.len() as u8 + 1;
            while let Some(message) = self.matcher.poll() {
                progressed = true;
                for message in cross(Direction::FromProvider(last), message)? {
                    self.querier.handle_message(last, message)?;
                }
            }
            if self.matcher.stage() == Stage::AwaitingRelease {
                release(&mut self.matcher)?;
                progressed = true;
            }
            let filters_done = self.filters.iter().all(|f| f.stage() == Stage::Finished);
            if filters_done
                && self.matcher.stage() == Stage::Finished
                && self.querier.stage() == Stage::Finished
            {
                return Ok((messages, bytes));
            }
            if !progressed {
                return Err(ProtocolError::NotReady("the chain stalled"));
            }
        }
    }
}
