//! How a session that ends without a release is told and recorded: the gRPC status the client
//! sees (with the rules' reasons in the `cleanroom-refusal-bin` trailer), the decision and the
//! reason the audit log keeps.
//!
//! The status a client sees is a function of its own session only: what it sent, its own
//! standing, its own quota. Reasons that name the server's data never reach it.

use cleanroom_rules::{Reason, ReasonCode, Refusal};
use prost::Message as _;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

use crate::data::DataFileError;
use crate::exchange::{ExchangeError, PeerError};
use crate::limits::MAX_GRPC_MESSAGE_BYTES;
use crate::proto;
use crate::server::REFUSAL_METADATA_KEY;
use crate::state::{Decision, Exhausted, StateError};

/// Why a session ended without a release.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Refused(Refusal),
    #[error("{0}")]
    ResourceExhausted(String),
    /// The client's terms (collaboration file, hash domain, normalizations, plan) are not the
    /// server's: the message names each that differs.
    #[error("the client and the server do not compute under the same terms: {0}")]
    AgreementDiffers(String),
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error("the server could not read its table {table:?}")]
    Data {
        table: String,
        #[source]
        source: Box<DataFileError>,
    },
    #[error("the server's state database failed")]
    State(#[from] StateError),
    #[error("protocol error on the server: {0}")]
    Internal(String),
    /// A named job cannot be resumed now: it is running on another connection (`ABORTED`: try
    /// again once that connection is closed).
    #[error("{0}")]
    JobRunning(String),
    /// A named job cannot be resumed: it ended (`FAILED_PRECONDITION`, reason `job_ended`):
    /// whatever the client keeps for it can go.
    #[error("{0}")]
    JobEnded(String),
    /// A named job cannot be resumed under the request's terms, which are not the job's
    /// (`FAILED_PRECONDITION`, reason `job_terms_differ`): the job keeps waiting for its own.
    #[error("{0}")]
    JobTermsDiffer(String),
    /// A named job's connection was lost (`source`): its entry is recorded `interrupted`, its
    /// totals kept, to resume under its name (PROTOCOL.md 3.6, step 6).
    #[error("{0}")]
    Resumable(Box<SessionError>),
}

/// Reason codes that mean the member may not do this at all, rather than that this query is
/// not allowed.
fn is_permission_code(code: ReasonCode) -> bool {
    matches!(
        code,
        ReasonCode::UnknownMember
            | ReasonCode::MissingQueryAbility
            | ReasonCode::MissingReceiveResultsAbility
    )
}

impl SessionError {
    pub(crate) fn status(&self) -> Status {
        match self {
            SessionError::Resumable(source) => source.status(),
            SessionError::JobRunning(m) => Status::aborted(m.clone()),
            SessionError::JobEnded(m) => job_status("job_ended", m),
            SessionError::JobTermsDiffer(m) => job_status("job_terms_differ", m),
            SessionError::PermissionDenied(m) => Status::permission_denied(m.clone()),
            SessionError::InvalidArgument(m) => Status::invalid_argument(m.clone()),
            SessionError::Refused(refusal) => {
                let code = if refusal.reasons.iter().any(|r| is_permission_code(r.code)) {
                    Code::PermissionDenied
                } else {
                    Code::InvalidArgument
                };
                refusal_status(code, refusal)
            }
            SessionError::ResourceExhausted(m) => Status::resource_exhausted(m.clone()),
            SessionError::AgreementDiffers(_) => Status::failed_precondition(self.to_string()),
            SessionError::Exchange(e) => exchange_status(e),
            SessionError::State(StateError::Exhausted(exhausted)) => {
                let code = match exhausted {
                    Exhausted::Budget { .. } => ReasonCode::BudgetExhausted,
                    Exhausted::Queries { .. } | Exhausted::QueriesToday { .. } => {
                        ReasonCode::QueryLimitReached
                    }
                };
                let refusal = Refusal::one(Reason::new(code, exhausted.to_string()));
                refusal_status(Code::ResourceExhausted, &refusal)
            }
            SessionError::Data { .. } | SessionError::State(_) | SessionError::Internal(_) => {
                Status::internal(self.to_string())
            }
        }
    }

    pub(crate) fn decision(&self) -> Decision {
        match self {
            SessionError::Resumable(_) => Decision::Interrupted,
            SessionError::PermissionDenied(_)
            | SessionError::JobRunning(_)
            | SessionError::JobEnded(_)
            | SessionError::JobTermsDiffer(_)
            | SessionError::InvalidArgument(_)
            | SessionError::Refused(_)
            | SessionError::ResourceExhausted(_)
            | SessionError::AgreementDiffers(_)
            | SessionError::State(StateError::Exhausted(_)) => Decision::Refused,
            SessionError::Exchange(ExchangeError::Transport(status)) if is_too_large(status) => {
                Decision::Failed
            }
            SessionError::Exchange(
                ExchangeError::PeerEnded | ExchangeError::PeerGone | ExchangeError::Transport(_),
            ) => Decision::Cancelled,
            _ => Decision::Failed,
        }
    }

    /// Whether the session ended because the connection to the client was lost or went
    /// quiet (it ended, vanished, stopped sending, or ran out of time), rather than because
    /// of what it sent or of this server: a named job ended so may resume.
    pub(crate) fn is_connection_lost(&self) -> bool {
        match self {
            SessionError::Exchange(ExchangeError::Transport(status)) => !is_too_large(status),
            SessionError::Exchange(
                ExchangeError::PeerEnded
                | ExchangeError::PeerGone
                | ExchangeError::Idle(_)
                | ExchangeError::TooSlow { .. }
                | ExchangeError::Deadline(_),
            ) => true,
            _ => false,
        }
    }

    /// Why the session ended, as stable codes for the log and the metrics: the rules' reason
    /// codes of a refusal, else one code of the service's (`permission_denied`,
    /// `invalid_argument`, `resource_exhausted`, `agreement_differs`, `malformed_message`, `protocol_violation`,
    /// `oversized_message`, `unexpected_message`, `peer_ended`, `peer_gone`, `transport`,
    /// `idle_timeout`, `too_slow`, `session_timeout`, `server_data`, `state_database`,
    /// `internal`, `job_running`, `job_ended`, `job_terms_differ`); an interrupted job's are
    /// its cause's.
    pub(crate) fn reason_codes(&self) -> Vec<&'static str> {
        let one = match self {
            SessionError::Resumable(source) => return source.reason_codes(),
            SessionError::JobRunning(_) => "job_running",
            SessionError::JobEnded(_) => "job_ended",
            SessionError::JobTermsDiffer(_) => "job_terms_differ",
            SessionError::Refused(refusal) => {
                return refusal.reasons.iter().map(|r| r.code.as_str()).collect();
            }
            SessionError::State(StateError::Exhausted(Exhausted::Budget { .. })) => {
                ReasonCode::BudgetExhausted.as_str()
            }
            SessionError::State(StateError::Exhausted(_)) => ReasonCode::QueryLimitReached.as_str(),
            SessionError::PermissionDenied(_) => "permission_denied",
            SessionError::InvalidArgument(_) => "invalid_argument",
            SessionError::ResourceExhausted(_) => "resource_exhausted",
            SessionError::AgreementDiffers(_) => "agreement_differs",
            SessionError::Exchange(e) => match e {
                ExchangeError::Peer(PeerError::Wire(_)) => "malformed_message",
                ExchangeError::Peer(PeerError::Protocol(_)) => "protocol_violation",
                ExchangeError::Oversized { .. } => "oversized_message",
                ExchangeError::Unexpected(_) => "unexpected_message",
                ExchangeError::PeerEnded => "peer_ended",
                ExchangeError::PeerGone => "peer_gone",
                ExchangeError::Transport(_) => "transport",
                ExchangeError::Idle(_) => "idle_timeout",
                ExchangeError::TooSlow { .. } => "too_slow",
                ExchangeError::Deadline(_) => "session_timeout",
                ExchangeError::Internal(_) => "internal",
            },
            SessionError::Data { .. } => "server_data",
            SessionError::State(_) => "state_database",
            SessionError::Internal(_) => "internal",
        };
        vec![one]
    }

    /// The reason recorded in the audit log (server-side detail included).
    pub(crate) fn audit_reason(&self) -> String {
        match self {
            SessionError::Resumable(source) => format!(
                "{}; the job keeps its buckets done and resumes under its name",
                source.audit_reason()
            ),
            SessionError::Data { source, .. } => format!("{self}: {source}"),
            SessionError::State(StateError::Exhausted(exhausted)) => exhausted.to_string(),
            SessionError::State(source) => format!("{self}: {source}"),
            _ => self.to_string(),
        }
    }
}

/// A refusal's status: `code`, the reasons as the message, and the serialized
/// `QueryRefusal` in the [`REFUSAL_METADATA_KEY`] trailer.
pub(crate) fn refusal_status(code: Code, refusal: &Refusal) -> Status {
    let reasons = refusal
        .reasons
        .iter()
        .map(|r| proto::RefusalReason {
            code: r.code.as_str().to_owned(),
            table: r.table.clone().unwrap_or_default(),
            column: r.column.clone().unwrap_or_default(),
            message: r.message.clone(),
        })
        .collect();
    status_with_reasons(code, refusal.to_string(), reasons)
}

/// A refused resume of a named job: `FAILED_PRECONDITION` with one reason of the service's,
/// `code`, so that the client can tell a job that ended from one asked under other terms.
fn job_status(code: &str, message: &str) -> Status {
    let reason = proto::RefusalReason {
        code: code.to_owned(),
        message: message.to_owned(),
        ..proto::RefusalReason::default()
    };
    status_with_reasons(Code::FailedPrecondition, message.to_owned(), vec![reason])
}

/// A status of `code` carrying `reasons` in `cleanroom-refusal-bin`.
fn status_with_reasons(code: Code, message: String, reasons: Vec<proto::RefusalReason>) -> Status {
    let details = proto::QueryRefusal { reasons };
    let mut metadata = MetadataMap::new();
    metadata.insert_bin(
        REFUSAL_METADATA_KEY,
        MetadataValue::from_bytes(&details.encode_to_vec()),
    );
    Status::with_metadata(code, message, metadata)
}

/// The status a peer sees for an exchange that went wrong.
pub(crate) fn exchange_status(e: &ExchangeError) -> Status {
    match e {
        ExchangeError::Peer(PeerError::Protocol(cleanroom_psi::ProtocolError::LimitExceeded {
            ..
        })) => Status::resource_exhausted(e.to_string()),
        ExchangeError::Peer(_) | ExchangeError::Oversized { .. } | ExchangeError::Unexpected(_) => {
            Status::invalid_argument(e.to_string())
        }
        ExchangeError::PeerEnded | ExchangeError::PeerGone => Status::cancelled(e.to_string()),
        ExchangeError::Transport(status) if status.code() == Code::Cancelled => status.clone(),
        ExchangeError::Transport(status) if is_too_large(status) => too_large(status),
        ExchangeError::Transport(status) => Status::cancelled(status.message().to_owned()),
        ExchangeError::Idle(_) | ExchangeError::Deadline(_) | ExchangeError::TooSlow { .. } => {
            Status::deadline_exceeded(e.to_string())
        }
        ExchangeError::Internal(_) => Status::internal(e.to_string()),
    }
}

/// Whether the transport refused an incoming message over the size limit (tonic reports it as
/// `OUT_OF_RANGE`).
pub(crate) fn is_too_large(status: &Status) -> bool {
    status.code() == Code::OutOfRange
}

/// The status a peer sees for a message over the size limit: `RESOURCE_EXHAUSTED`, as gRPC's
/// reference implementations answer.
pub(crate) fn too_large(status: &Status) -> Status {
    Status::resource_exhausted(format!(
        "a message over the limit of {MAX_GRPC_MESSAGE_BYTES} bytes: {}",
        status.message()
    ))
}
