//! One session, without the transport: who may run what (admission), which psi role the plan
//! gives each side, what both sides must agree on before the protocol starts, and running the
//! server's side over an abstract message channel.
//!
//! The gRPC [server](crate::server) and [client](crate::client) call this module and add only
//! what belongs to the transport: reading the session start off the stream, framing messages,
//! turning a [`SessionError`](crate::outcome::SessionError) into a status.
//!
//! Invariants:
//! - admission checks everything that can refuse a session (identity, collaboration, rules,
//!   tables, row quotas, concurrency) before the charge, and the charge comes before the first
//!   message that depends on the server's data: whatever becomes of an admitted session, its
//!   charge stays;
//! - every session that was begun in the audit log ends there, with a release or a decision and
//!   a reason;
//! - the server records its release durably before the first message of it is sent.

mod admission;
mod agreement;
mod chain;
mod delivery;
mod job;
mod list_job;
mod run;

pub(crate) use admission::{Admitted, Host, SessionRequest, state_call};
pub use agreement::agreement;
pub(crate) use agreement::{accepted, check_accepted, check_agreement};
pub use chain::{CHAIN_CONTEXT_BYTES, chain_agreement};
pub(crate) use delivery::seal_result_keys;
pub use delivery::{DeliveryError, MAX_SEALED_KEYS, keys_ad, open_delivered};
pub(crate) use run::{ServerFrames, receiver_for, value_ranges};

use cleanroom_rules::{Plan, Protocol};

use crate::exchange::ExchangeError;
use crate::proto::SealedResultKeys;

/// What a client sends after its session start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Inbound {
    /// One protocol message.
    Psi(Vec<u8>),
    /// The result keys for the other receivers, when the start left them to follow.
    ResultKeys(Vec<SealedResultKeys>),
}

/// The protocol messages of `inbound`, for a psi role: result keys there are out of order.
pub(crate) fn psi_only<S>(
    inbound: &mut S,
) -> impl tokio_stream::Stream<Item = Result<Vec<u8>, ExchangeError>> + Unpin + '_
where
    S: tokio_stream::Stream<Item = Result<Inbound, ExchangeError>> + Unpin,
{
    tokio_stream::StreamExt::map(inbound, |item| match item? {
        Inbound::Psi(payload) => Ok(payload),
        Inbound::ResultKeys(_) => Err(ExchangeError::Unexpected(
            "result keys within the protocol: they follow a job's last bucket, or the \
             acceptance of one session, and only when the start left them out",
        )),
    })
}

/// A side of a session; [`role_for`] says which psi role a plan gives it.
pub(crate) trait Side {
    /// The roles this side may play.
    type Role;
    /// The role `plan` gives this side.
    fn role(plan: &Plan) -> Self::Role;
}

/// The server: the member who provides the other table.
pub(crate) struct Server;

/// The client: the querying member, who brings its own table.
pub(crate) struct Client;

/// The psi role the server plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServerRole {
    /// The matcher of an aggregation (cardinality or intersection-sum).
    Matcher,
    /// The list provider of a list query.
    ListProvider,
}

/// The psi role the client plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientRole {
    /// The receiver of an aggregation.
    Receiver,
    /// The list querier of a list query.
    ListQuerier,
}

impl Side for Server {
    type Role = ServerRole;
    fn role(plan: &Plan) -> ServerRole {
        match plan.protocol() {
            Protocol::Cardinality | Protocol::IntersectionSum => ServerRole::Matcher,
            Protocol::List => ServerRole::ListProvider,
        }
    }
}

impl Side for Client {
    type Role = ClientRole;
    fn role(plan: &Plan) -> ClientRole {
        match plan.protocol() {
            Protocol::Cardinality | Protocol::IntersectionSum => ClientRole::Receiver,
            Protocol::List => ClientRole::ListQuerier,
        }
    }
}

/// The psi role `plan` gives `side`: each side's roles are their own type, so a server can
/// never be asked to play the receiver.
pub(crate) fn role_for<S: Side>(plan: &Plan, _side: S) -> S::Role {
    S::role(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cleanroom_rules::Collaboration;
    use cleanroom_testkit::{BY_CAMPAIGN, Fixture, list_collaboration};

    #[test]
    fn an_aggregation_makes_the_server_the_matcher_and_the_client_the_receiver() {
        let fx = Fixture::new(3);
        let plan = fx.collaboration.plan("advertiser", BY_CAMPAIGN).unwrap();
        assert_eq!(role_for(&plan, Server), ServerRole::Matcher);
        assert_eq!(role_for(&plan, Client), ClientRole::Receiver);
    }

    #[test]
    fn a_list_query_makes_the_server_the_list_provider_and_the_client_the_list_querier() {
        let toml = list_collaboration("roles", "Roles").render();
        let collaboration = Collaboration::from_toml_str(&toml, "roles.toml").unwrap();
        let plan = collaboration
            .plan(
                "advertiser",
                "SELECT cu.customer_id, s.region FROM customers cu \
                 JOIN subscribers s ON cu.email = s.email",
            )
            .unwrap();
        assert_eq!(role_for(&plan, Server), ServerRole::ListProvider);
        assert_eq!(role_for(&plan, Client), ClientRole::ListQuerier);
    }
}
