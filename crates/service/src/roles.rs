//! What is role-specific in running the psi parties over the service: the list provider's
//! withheld evaluations. Every other party runs as it is ([`Party`] is a
//! [`Role`](crate::exchange::Role) of the exchange through its one generic adapter).

use cleanroom_psi::{ListMessage, ListProvider, Party, ProtocolError, Stage, WireMessage};

/// The server's side of a list session: the psi list provider. Its evaluations of the
/// querier's points are what makes the matched payloads readable, so they are the release:
/// the role holds them back, and the server sends them with [`ListProviderRole::release`] only
/// once the session's decision is recorded (as it does with the aggregate results).
pub(crate) struct ListProviderRole {
    provider: ListProvider,
    withheld: Vec<ListMessage>,
}

impl ListProviderRole {
    pub(crate) fn new(provider: ListProvider) -> Self {
        Self {
            provider,
            withheld: Vec::new(),
        }
    }

    /// The querier's number of distinct identifiers, once its hello arrived.
    pub(crate) fn querier_set_size(&self) -> Option<u64> {
        self.provider.querier_set_size()
    }

    /// Every message held back, in order, encoded; the role has nothing left to send after.
    pub(crate) fn release(&mut self) -> Vec<Vec<u8>> {
        let mut messages: Vec<Vec<u8>> = self.withheld.drain(..).map(|m| m.encode()).collect();
        messages.extend(std::iter::from_fn(|| self.provider.poll_message()).map(|m| m.encode()));
        messages
    }
}

impl Party for ListProviderRole {
    type Message = ListMessage;

    /// The provider's messages, except its evaluations, which wait for [`release`](Self::release).
    fn poll(&mut self) -> Option<ListMessage> {
        loop {
            match self.provider.poll_message()? {
                m @ ListMessage::ListProviderEvaluations { .. } => self.withheld.push(m),
                other => return Some(other),
            }
        }
    }

    fn handle(&mut self, message: ListMessage) -> Result<(), ProtocolError> {
        self.provider.handle_message(message)
    }

    /// Finished once every point the querier announced arrived (and was evaluated).
    fn stage(&self) -> Stage {
        self.provider.stage()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::Role;
    use cleanroom_psi::{
        Domain, Limits, ListProviderTable, ListQuerier, ListQuerierTable, Normalization,
    };

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
        let mut querier = ListQuerier::new(&domain, ids, 1, Limits::default());

        let kinds = |messages: &[Vec<u8>]| -> Vec<&'static str> {
            messages
                .iter()
                .map(|m| ListMessage::decode(m).unwrap().kind())
                .collect()
        };
        let from_provider: Vec<Vec<u8>> =
            std::iter::from_fn(|| Role::poll(&mut provider)).collect();
        assert_eq!(
            kinds(&from_provider),
            ["ListProviderHello", "ListProviderItems"]
        );
        for m in &from_provider {
            Role::handle(&mut querier, m).unwrap();
        }
        assert!(!provider.done());
        for m in std::iter::from_fn(|| Role::poll(&mut querier)) {
            Role::handle(&mut provider, &m).unwrap();
        }
        // Everything arrived, nothing more to poll: the evaluations wait for the release.
        assert_eq!(Role::poll(&mut provider), None);
        assert!(provider.done());
        assert!(!querier.done());
        let released = provider.release();
        assert_eq!(kinds(&released), ["ListProviderEvaluations"]);
        assert!(provider.release().is_empty());
        for m in &released {
            Role::handle(&mut querier, m).unwrap();
        }
        assert!(querier.done());
        let outcome = querier.open().unwrap();
        assert_eq!(outcome.matches.len(), 1);
        assert_eq!(outcome.matches[0].identifier, "b@x.org");
        assert_eq!(outcome.matches[0].rows, [["south"]]);
    }
}
