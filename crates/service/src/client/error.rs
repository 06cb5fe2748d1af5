//! What can go wrong for a client: the server's error statuses (with the reasons of a refused
//! query) and every other way a query ends without a result.

use cleanroom_psi::ProtocolError;
use cleanroom_rules::{Refusal, ResultError};
use prost::Message as _;
use tonic::Code;

use crate::data::DataFileError;
use crate::exchange::ExchangeError;
use crate::server::REFUSAL_METADATA_KEY;
use crate::tls::TlsError;
use crate::{proto, session};

/// An error status from the server, with the reasons of a refused query.
#[derive(Debug, Clone)]
pub struct RemoteError {
    /// The gRPC status code.
    pub code: Code,
    /// The server's message.
    pub message: String,
    /// The reasons of a refused query (empty for other errors).
    pub reasons: Vec<proto::RefusalReason>,
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the server answered {:?}: {}", self.code, self.message)
    }
}

impl From<tonic::Status> for RemoteError {
    fn from(status: tonic::Status) -> RemoteError {
        let reasons = status
            .metadata()
            .get_bin(REFUSAL_METADATA_KEY)
            .and_then(|v| v.to_bytes().ok())
            .and_then(|bytes| proto::QueryRefusal::decode(bytes.as_ref()).ok())
            .map(|r| r.reasons)
            .unwrap_or_default();
        RemoteError {
            code: status.code(),
            message: status.message().to_owned(),
            reasons,
        }
    }
}

/// A query that did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The transport security settings are refused.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The server cannot be reached, or the connection failed under a call.
    #[error("cannot reach {server}: {cause}{}", hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    Transport {
        /// The server URL.
        server: String,
        /// What failed, each cause said once.
        cause: String,
        /// The likely fix, when the failure looks like a scheme mismatch (TLS against
        /// plaintext or the reverse).
        hint: Option<String>,
    },
    /// The local check refused the query (nothing was sent).
    #[error("{0}")]
    Refused(Refusal),
    /// No data file for the querying member's table of the query.
    #[error("the query uses your table {table:?}: give --data {table}=PATH")]
    MissingData {
        /// The table.
        table: String,
    },
    /// A join across three or more members uses a provider's table no `--server` names.
    #[error(
        "the query joins table {table:?}, served by member {member:?}: give --server \
         {table}=URL"
    )]
    MissingServer {
        /// The table.
        table: String,
        /// The member that serves it.
        member: String,
    },
    /// The querying member's data file cannot be read.
    #[error(transparent)]
    Data(#[from] DataFileError),
    /// The member's table has more rows than the collaboration lets it bring to one session
    /// (nothing was sent).
    #[error(
        "your table has {rows} rows; member {member:?} may bring at most {quota} per session \
         (max_rows_per_session in the collaboration file)"
    )]
    OverRowQuota {
        /// The member.
        member: String,
        /// The table's rows.
        rows: u64,
        /// The member's quota.
        quota: u64,
    },
    /// The server answered with an error status.
    #[error("{0}")]
    Remote(RemoteError),
    /// The protocol exchange failed on this side.
    #[error("{0}")]
    Exchange(ExchangeError),
    /// The server broke the session's message order.
    #[error("unexpected message from the server: {0}")]
    Session(&'static str),
    /// The server's plan differs from the local one (different collaboration files?).
    #[error("the server's plan differs from ours: {0} (are both collaboration files identical?)")]
    PlanMismatch(String),
    /// The released sums do not decrypt (a lying server, or totals beyond the decryptable
    /// range). Found after the session ended, and reported here only.
    #[error("the server's released sums do not decrypt: {0}")]
    Opened(ProtocolError),
    /// The released outcome does not fit the plan.
    #[error("the server's result does not fit the plan: {0}")]
    Result(#[from] ResultError),
    /// A result fetched as a receiver does not open.
    #[error(transparent)]
    Delivery(#[from] session::DeliveryError),
    /// A local computation failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ExchangeError> for ClientError {
    fn from(e: ExchangeError) -> ClientError {
        match e {
            ExchangeError::Transport(status) => ClientError::Remote(status.into()),
            other => ClientError::Exchange(other),
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> ClientError {
        ClientError::Remote(status.into())
    }
}

impl ClientError {
    /// A transport failure talking to `server`, with the likely fix when the failure looks
    /// like a scheme mismatch.
    pub(super) fn transport(server: &str, cause: &str) -> ClientError {
        ClientError::Transport {
            server: server.to_owned(),
            cause: cause.to_owned(),
            hint: crate::transport::mismatch_hint(server, cause),
        }
    }

    /// Whether trying again later may succeed: the server could not be reached, the
    /// connection broke under the session (a server restarting), or the server says a named
    /// job still runs on a connection it has not closed yet. A refusal, bad data or a broken
    /// protocol is never retried.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Remote(remote) => {
                remote.reasons.is_empty()
                    && matches!(
                        remote.code,
                        Code::Unavailable | Code::Aborted | Code::Cancelled | Code::Unknown
                    )
            }
            ClientError::Exchange(error) => matches!(
                error,
                ExchangeError::PeerEnded
                    | ExchangeError::PeerGone
                    | ExchangeError::Idle(_)
                    | ExchangeError::Transport(_)
            ),
            _ => false,
        }
    }

    /// Whether the query itself was refused (locally or by the server), as opposed to failing.
    pub fn is_refusal(&self) -> bool {
        match self {
            ClientError::Refused(_) => true,
            ClientError::Remote(remote) => {
                !remote.reasons.is_empty()
                    || matches!(remote.code, Code::PermissionDenied | Code::Unauthenticated)
            }
            _ => false,
        }
    }
}
