//! The limits a server enforces on every session, with safe defaults.

use std::time::Duration;

/// The largest encoded protocol message a side accepts, in bytes: the psi wire format keeps every
/// message at or under [`cleanroom_psi::wire::MAX_MESSAGE_BYTES`].
pub const MAX_MESSAGE_BYTES: usize = cleanroom_psi::wire::MAX_MESSAGE_BYTES;

/// The largest gRPC message either side decodes: one protocol message plus its protobuf framing.
pub const MAX_GRPC_MESSAGE_BYTES: usize = MAX_MESSAGE_BYTES + 64 * 1024;

/// The longest a server waits for a session's start message after the call opened (or the idle
/// timeout, when shorter): an honest client reads its table before it opens the call.
pub const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// What one server allows per session and at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Rows a querying member may bring to one session (its declared table size, and the size of
    /// the set the protocol accepts from it). Default: 20 million.
    pub max_rows_per_session: u64,
    /// Sessions running at the same time; one more is refused with `RESOURCE_EXHAUSTED`.
    /// Default: 4.
    pub max_concurrent_sessions: u32,
    /// Sessions one member may run at the same time; `None`: half of
    /// `max_concurrent_sessions` (at least 1), so that one member cannot hold every slot.
    pub max_sessions_per_member: Option<u32>,
    /// The least a session's peer must move, in bytes per second, averaged over each
    /// `rate_window` of time spent waiting for it (not counting this side's own computation);
    /// a peer that trickles slower is cut off with `DEADLINE_EXCEEDED`. 0: no minimum.
    /// Default: 4 KiB/s.
    pub min_bytes_per_second: u64,
    /// The waiting time over which `min_bytes_per_second` is measured. Default: 30 s.
    pub rate_window: Duration,
    /// How long a session may go without a message in either direction (not counting the
    /// server's own computation) before it ends with `DEADLINE_EXCEEDED`. Default: 10 minutes.
    pub idle_timeout: Duration,
    /// How long a whole session may last before it ends with `DEADLINE_EXCEEDED`.
    /// Default: 2 hours.
    pub session_timeout: Duration,
    /// Rows a job of buckets puts in one bucket (`job`): a session whose server table has
    /// more is split into buckets of about this many rows, so that memory holds one bucket.
    /// Default: 2^18: the server holds a bucket of each side, and at 10^7 rows per side with
    /// 2^19 it peaked at 256 MiB (BENCHMARKS.md).
    pub bucket_rows: u64,
    /// The fewest rows either side's bucket may be expected to hold: the server never splits
    /// a session into more buckets than this allows (what one bucket's size tells about an
    /// identifier in it shrinks as the bucket grows; SECURITY.md §2). Default: 2^16.
    pub min_bucket_rows: u64,
    /// How long a named job that stopped may wait for its client to resume it: after that,
    /// the server cancels it and deletes its totals, and drops the release it kept of a
    /// released job ([`retention`](crate::retention)). Default: 7 days.
    pub job_retention: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_rows_per_session: 20_000_000,
            max_concurrent_sessions: 4,
            max_sessions_per_member: None,
            min_bytes_per_second: 4096,
            rate_window: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            session_timeout: Duration::from_secs(2 * 3600),
            bucket_rows: 1 << 18,
            min_bucket_rows: 1 << 16,
            job_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// A limit that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// A limit is zero, which would refuse every session.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// A member's quota exceeds the server's total.
    #[error(
        "max sessions per member ({per_member}) must not exceed max concurrent sessions ({total})"
    )]
    MemberAboveTotal {
        /// The per-member quota given.
        per_member: u32,
        /// The total given.
        total: u32,
    },
    /// The idle timeout is longer than the whole session may last.
    #[error("the idle timeout ({idle:?}) must not exceed the session timeout ({session:?})")]
    IdleAboveSession {
        /// The idle timeout given.
        idle: Duration,
        /// The session timeout given.
        session: Duration,
    },
}

impl Limits {
    /// The sessions one member may run at once: `max_sessions_per_member`, or half the slots
    /// (at least 1).
    pub fn sessions_per_member(&self) -> u32 {
        self.max_sessions_per_member
            .unwrap_or((self.max_concurrent_sessions / 2).max(1))
    }

    /// Checks that every limit lets at least some session run.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.max_rows_per_session == 0 {
            return Err(LimitsError::Zero("max rows per session"));
        }
        if self.max_concurrent_sessions == 0 {
            return Err(LimitsError::Zero("max concurrent sessions"));
        }
        if self.max_sessions_per_member == Some(0) {
            return Err(LimitsError::Zero("max sessions per member"));
        }
        if let Some(per_member) = self.max_sessions_per_member
            && per_member > self.max_concurrent_sessions
        {
            return Err(LimitsError::MemberAboveTotal {
                per_member,
                total: self.max_concurrent_sessions,
            });
        }
        if self.rate_window.is_zero() {
            return Err(LimitsError::Zero("rate window"));
        }
        if self.idle_timeout.is_zero() {
            return Err(LimitsError::Zero("idle timeout"));
        }
        if self.session_timeout.is_zero() {
            return Err(LimitsError::Zero("session timeout"));
        }
        if self.bucket_rows == 0 {
            return Err(LimitsError::Zero("bucket rows"));
        }
        if self.min_bucket_rows == 0 {
            return Err(LimitsError::Zero("min bucket rows"));
        }
        if self.job_retention.is_zero() {
            return Err(LimitsError::Zero("job retention"));
        }
        if self.idle_timeout > self.session_timeout {
            return Err(LimitsError::IdleAboveSession {
                idle: self.idle_timeout,
                session: self.session_timeout,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_safe() {
        let limits = Limits::default();
        assert_eq!(limits.validate(), Ok(()));
        assert!(limits.max_rows_per_session >= 10_000_000);
        assert!(limits.max_concurrent_sessions >= 1);
        assert_eq!(limits.sessions_per_member(), 2, "half of 4");
        let one = Limits {
            max_concurrent_sessions: 1,
            ..Limits::default()
        };
        assert_eq!(one.sessions_per_member(), 1);
        let over = Limits {
            max_sessions_per_member: Some(5),
            ..Limits::default()
        };
        assert!(matches!(
            over.validate(),
            Err(LimitsError::MemberAboveTotal { .. })
        ));
    }

    #[test]
    fn zero_and_inverted_limits_are_rejected() {
        let zero_rows = Limits {
            max_rows_per_session: 0,
            ..Limits::default()
        };
        assert_eq!(
            zero_rows.validate(),
            Err(LimitsError::Zero("max rows per session"))
        );
        let inverted = Limits {
            idle_timeout: Duration::from_secs(10),
            session_timeout: Duration::from_secs(5),
            ..Limits::default()
        };
        assert!(matches!(
            inverted.validate(),
            Err(LimitsError::IdleAboveSession { .. })
        ));
    }
}
