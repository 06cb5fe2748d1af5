//! The psi roles as [`Role`]s of the exchange: encoding, decoding and "done" for each.

use cleanroom_psi::{ListProvider, ListQuerier, Matcher, Message, Receiver};

use crate::exchange::{PeerError, Role};

/// The server's side: the psi matcher, done with the exchange once every message of the
/// receiver arrived (its per-group counts are known and nothing is left to send).
pub(crate) struct MatcherRole(pub Matcher);

impl Role for MatcherRole {
    fn poll(&mut self) -> Option<Vec<u8>> {
        self.0.poll_message().map(|m| m.encode())
    }

    fn handle(&mut self, bytes: &[u8]) -> Result<(), PeerError> {
        let message = Message::decode(bytes)?;
        self.0.handle_message(message)?;
        Ok(())
    }

    fn done(&self) -> bool {
        self.0.counts().is_some()
    }
}

/// The client's side: the psi receiver, done once the matcher's closing message arrived. Its
/// sums are decrypted only after the session ended ([`Receiver::open`]).
pub(crate) struct ReceiverRole(pub Receiver);

impl Role for ReceiverRole {
    fn poll(&mut self) -> Option<Vec<u8>> {
        self.0.poll_message().map(|m| m.encode())
    }

    fn handle(&mut self, bytes: &[u8]) -> Result<(), PeerError> {
        let message = Message::decode(bytes)?;
        self.0.handle_message(message)?;
        Ok(())
    }

    fn done(&self) -> bool {
        self.0.is_finished()
    }
}

/// The server's side of a list session: the psi list provider. Its evaluations of the
/// querier's points are what makes the matched payloads readable, so they are the release:
/// the role holds them back, and the server sends them with [`ListProviderRole::release`] only
/// once the session's decision is recorded (as it does with the aggregate results).
pub(crate) struct ListProviderRole {
    provider: ListProvider,
    withheld: Vec<Message>,
}

impl ListProviderRole {
    pub(crate) fn new(provider: ListProvider) -> Self {
        Self {
            provider,
            withheld: Vec::new(),
        }
    }

    /// Every message held back, in order, encoded; the role has nothing left to send after.
    pub(crate) fn release(&mut self) -> Vec<Vec<u8>> {
        let mut messages: Vec<Vec<u8>> = self.withheld.drain(..).map(|m| m.encode()).collect();
        messages.extend(std::iter::from_fn(|| self.provider.poll_message()).map(|m| m.encode()));
        messages
    }
}

impl Role for ListProviderRole {
    fn poll(&mut self) -> Option<Vec<u8>> {
        loop {
            match self.provider.poll_message()? {
                m @ Message::ListProviderEvaluations { .. } => self.withheld.push(m),
                other => return Some(other.encode()),
            }
        }
    }

    fn handle(&mut self, bytes: &[u8]) -> Result<(), PeerError> {
        let message = Message::decode(bytes)?;
        self.provider.handle_message(message)?;
        Ok(())
    }

    /// Done once every point the querier announced arrived (and was evaluated).
    fn done(&self) -> bool {
        self.provider.is_done()
    }
}

/// The client's side of a list session: the psi list querier, done once every payload and
/// evaluation arrived; the list is opened only after the session ended
/// ([`ListQuerier::open`]).
pub(crate) struct ListQuerierRole(pub ListQuerier);

impl Role for ListQuerierRole {
    fn poll(&mut self) -> Option<Vec<u8>> {
        self.0.poll_message().map(|m| m.encode())
    }

    fn handle(&mut self, bytes: &[u8]) -> Result<(), PeerError> {
        let message = Message::decode(bytes)?;
        self.0.handle_message(message)?;
        Ok(())
    }

    fn done(&self) -> bool {
        self.0.is_finished()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cleanroom_psi::{Domain, Limits, ListProviderTable, ListQuerierTable, Normalization};

    /// The provider's evaluations, which make the matched payloads readable, leave only
    /// through `release`, after every point of the querier arrived.
    #[test]
    fn the_list_provider_withholds_its_evaluations_until_released() {
        let domain = Domain::new("c", "email");
        let mut table = ListProviderTable::new(Normalization::Email, 1).unwrap();
        table.push("a@x.org", &["north"]).unwrap();
        table.push("b@x.org", &["south"]).unwrap();
        let mut provider =
            ListProviderRole::new(ListProvider::new(&domain, table, Limits::default()));
        let mut ids = ListQuerierTable::new(Normalization::Email);
        ids.push("B@x.org");
        ids.push("c@x.org");
        let mut querier = ListQuerierRole(ListQuerier::new(&domain, ids, 1, Limits::default()));

        let kinds = |messages: &[Vec<u8>]| -> Vec<&'static str> {
            messages
                .iter()
                .map(|m| Message::decode(m).unwrap().kind())
                .collect()
        };
        let from_provider: Vec<Vec<u8>> = std::iter::from_fn(|| provider.poll()).collect();
        assert_eq!(
            kinds(&from_provider),
            ["ListProviderHello", "ListProviderItems"]
        );
        for m in &from_provider {
            querier.handle(m).unwrap();
        }
        assert!(!provider.done());
        for m in std::iter::from_fn(|| querier.poll()) {
            provider.handle(&m).unwrap();
        }
        // Everything arrived, nothing more to poll: the evaluations wait for the release.
        assert_eq!(provider.poll(), None);
        assert!(provider.done());
        assert!(!querier.done());
        let released = provider.release();
        assert_eq!(kinds(&released), ["ListProviderEvaluations"]);
        assert!(provider.release().is_empty());
        for m in &released {
            querier.handle(m).unwrap();
        }
        assert!(querier.done());
        let outcome = querier.0.open().unwrap();
        assert_eq!(outcome.matches.len(), 1);
        assert_eq!(outcome.matches[0].identifier, "b@x.org");
        assert_eq!(outcome.matches[0].rows, [["south"]]);
    }
}
