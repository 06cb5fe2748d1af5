//! What the server tells its operator: one structured `tracing` event per thing that happens
//! to a session or a call, counted in the [`Metrics`] at the same place.
//!
//! Every event has an `event` field naming it, and a target by subject: `cleanroom::session`
//! for sessions, `cleanroom::auth` for authentication (so `RUST_LOG=info,cleanroom::session=warn`
//! keeps everything but the sessions' INFO events, as `serve --quiet` does); the server's own
//! start, drain and stop lines have the target `cleanroom::serve`.
//!
//! | `event` | level | fields |
//! |---|---|---|
//! | `session_started` | INFO | `session_id`, `member`, `peer`, `protocol` |
//! | `session_ended` | INFO, WARN when failed | `session_id`, `member`, `decision`, `reasons`, `released`, `suppressed`, `server_rows`, `client_rows`, `server_skipped`, `client_skipped`, `bounded`, `bounded_told`, `bytes_received`, `bytes_sent`, `duration_ms` |
//! | `session_refused` | INFO | `member`, `peer`, `reason` (before the attempt is recorded: `draining`, `no_start`, `bad_start`) |
//! | `authentication_failed` | WARN | `peer`, `member` (when known), `reason` |
//! | `authentication_failures` | WARN | `peer`, `member`, `reason`, `count`, `minute`: the attempts of one minute past the first |
//!
//! What no event carries: a token (or its hash), an identifier, a value, a query's SQL (the
//! audit log keeps that), or anything of the peer's data. A refusal's reasons are the stable
//! codes of `cleanroom-rules`' `ReasonCode` and the service's own (`SessionError`'s).
//!
//! Failed authentications are bounded: [`FailedAuthentications`] logs the first attempt of
//! each (peer, member, reason) in a minute, counts the rest in memory, and adds the counts to
//! the state database ([`StateDb::add_failed_authentications`]) every
//! [`FLUSH_INTERVAL`], logging one `authentication_failures` event per row with more than one
//! attempt. At most [`MAX_PEERS_PER_MINUTE`] peers are told apart in a minute; the attempts of
//! any further peer count under peer `other`. A flood of bad tokens therefore costs one batch
//! write per interval and at most `MAX_PEERS_PER_MINUTE + 1` rows per reason and minute.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::metrics::Metrics;
use crate::state::{AuditEntry, Decision, FailedAuthenticationKey, StateDb};

/// How often counted failed authentications are written to the state database.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(10);

/// Most peers told apart among the failed authentications of one minute.
pub const MAX_PEERS_PER_MINUTE: usize = 100;

/// Why a call was refused `UNAUTHENTICATED`; the stable codes of the log, the metrics and the
/// state database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `authorization` header.
    MissingToken,
    /// An `authorization` header that is not `Bearer <token>`.
    MalformedAuthorization,
    /// A token no member has.
    UnknownToken,
    /// A member's valid token without the client certificate its entry pins.
    ClientCertificateRequired,
}

impl AuthFailure {
    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            AuthFailure::MissingToken => "missing_token",
            AuthFailure::MalformedAuthorization => "malformed_authorization",
            AuthFailure::UnknownToken => "unknown_token",
            AuthFailure::ClientCertificateRequired => "client_certificate_required",
        }
    }
}

/// The events and counts of one server: its metrics, and the failed authentications not yet
/// written.
#[derive(Debug)]
pub struct ServerEvents {
    metrics: Arc<Metrics>,
    failed: FailedAuthentications,
}

impl ServerEvents {
    /// Events of a server of `collaboration_id` that records failed authentications in `state`.
    pub fn new(metrics: Arc<Metrics>, state: Arc<StateDb>, collaboration_id: &str) -> Self {
        ServerEvents {
            metrics,
            failed: FailedAuthentications {
                state,
                collaboration_id: collaboration_id.to_owned(),
                pending: Mutex::default(),
            },
        }
    }

    /// The metrics counted.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A session was admitted.
    pub(crate) fn session_started(
        &self,
        session_id: &str,
        member: &str,
        peer: Option<SocketAddr>,
        protocol: &str,
    ) {
        tracing::info!(
            target: "cleanroom::session",
            event = "session_started",
            session_id,
            member,
            peer = %Peer(peer),
            protocol,
        );
    }

    /// A session ended as `entry` records it, refused for `reasons` (empty unless refused).
    pub(crate) fn session_ended(
        &self,
        entry: &AuditEntry,
        reasons: &[&str],
        duration: Option<Duration>,
    ) {
        self.metrics.session_ended(entry, reasons, duration);
        let reasons = reasons.join(",");
        let duration_ms = duration.map_or(0, |d| d.as_millis() as u64);
        macro_rules! ended {
            ($level:ident) => {
                tracing::$level!(
                    target: "cleanroom::session",
                    event = "session_ended",
                    session_id = entry.session_id.as_str(),
                    member = entry.member.as_str(),
                    decision = entry.decision.as_str(),
                    reasons = reasons.as_str(),
                    released = entry.released_rows,
                    suppressed = entry.suppressed_rows,
                    server_rows = entry.matcher_rows,
                    client_rows = entry.receiver_rows,
                    server_skipped = entry.matcher_skipped,
                    client_skipped = entry.receiver_skipped,
                    bounded = entry.bounded_identifiers,
                    bounded_told = entry.bounded_disclosed,
                    bytes_received = entry.bytes_received,
                    bytes_sent = entry.bytes_sent,
                    duration_ms,
                )
            };
        }
        if entry.decision == Decision::Failed {
            ended!(warn);
        } else {
            ended!(info);
        }
    }

    /// Bucket `done` of `buckets` of a job's session was matched (from 1), over `rows` of the
    /// server's rows, in `duration`; `bytes_received` so far in the session. Nothing of the
    /// bucket's intersection: that is added to the job's totals, released once.
    pub(crate) fn bucket_matched(
        &self,
        session_id: &str,
        (done, buckets): (u32, u32),
        rows: u64,
        duration: Duration,
        bytes_received: u64,
    ) {
        tracing::info!(
            target: "cleanroom::session",
            event = "bucket_matched",
            session_id,
            bucket = done,
            buckets,
            server_rows = rows,
            duration_ms = duration.as_millis() as u64,
            bytes_received,
        );
    }

    /// Released job `session_id`'s kept release (`messages`) was sent again to its querier
    /// `member`, who resumed the job after losing it: nothing ran, nothing was charged.
    pub(crate) fn release_sent_again(&self, session_id: &str, member: &str, messages: u64) {
        tracing::info!(
            target: "cleanroom::session",
            event = "release_sent_again",
            session_id,
            member,
            messages,
        );
    }

    /// Named jobs past their retention were ended, or bucket files of stopped jobs removed
    /// (nothing is logged when nothing was).
    pub(crate) fn jobs_tidied(&self, tidied: &crate::retention::Tidied) {
        if tidied.is_empty() {
            return;
        }
        tracing::info!(
            target: "cleanroom::serve",
            event = "jobs_tidied",
            cancelled = tidied.expired.cancelled.len(),
            releases_dropped = tidied.expired.releases_dropped,
            directories_removed = tidied.directories_removed,
        );
    }

    /// A session was refused before its attempt was recorded.
    pub(crate) fn session_refused(&self, member: &str, peer: Option<SocketAddr>, reason: &str) {
        self.metrics.refused_early(reason);
        tracing::info!(
            target: "cleanroom::session",
            event = "session_refused",
            member,
            peer = %Peer(peer),
            reason,
        );
    }

    /// `epsilon` was charged to `member` at admission.
    pub(crate) fn charged(&self, member: &str, epsilon: f64) {
        self.metrics.charged(member, epsilon);
    }

    /// A call was refused `UNAUTHENTICATED`: counted, logged if it is the first of its kind in
    /// this minute, and kept for the next [`flush`](Self::flush).
    pub fn authentication_failed(
        &self,
        peer: Option<SocketAddr>,
        member: Option<&str>,
        reason: AuthFailure,
    ) {
        self.metrics.authentication_failed(reason.code());
        let minute = unix_minute(SystemTime::now());
        let first = self.failed.count(minute, peer, member, reason);
        if first {
            tracing::warn!(
                target: "cleanroom::auth",
                event = "authentication_failed",
                peer = %Peer(peer),
                member = member.unwrap_or(""),
                reason = reason.code(),
            );
        }
    }

    /// Writes the failed authentications counted since the last flush to the state database
    /// (blocking: call it off the async runtime). A write that fails is logged and its counts
    /// kept for the next flush.
    pub fn flush(&self) {
        self.failed.flush();
    }
}

/// The failed authentications counted in memory, per minute, until they are written.
#[derive(Debug)]
struct FailedAuthentications {
    state: Arc<StateDb>,
    collaboration_id: String,
    pending: Mutex<Pending>,
}

/// Counts per (minute, key), and which were already logged.
#[derive(Debug, Default)]
struct Pending {
    counts: BTreeMap<(i64, FailedAuthenticationKey), u64>,
    /// Peers told apart per minute (for the cap), kept until the minute is past.
    peers: BTreeMap<i64, std::collections::BTreeSet<String>>,
}

impl FailedAuthentications {
    /// Counts one attempt; true when it is the first of its (minute, key) since the last flush.
    fn count(
        &self,
        minute: i64,
        peer: Option<SocketAddr>,
        member: Option<&str>,
        reason: AuthFailure,
    ) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let ip = peer.map_or_else(|| "unknown".to_owned(), |p| p.ip().to_string());
        let seen = pending.peers.entry(minute).or_default();
        let peer = if seen.contains(&ip) || seen.len() < MAX_PEERS_PER_MINUTE {
            seen.insert(ip.clone());
            ip
        } else {
            "other".to_owned()
        };
        let key = FailedAuthenticationKey {
            peer,
            member: member.unwrap_or("").to_owned(),
            reason: reason.code(),
        };
        let count = pending.counts.entry((minute, key)).or_insert(0);
        *count += 1;
        *count == 1
    }

    fn flush(&self) {
        let batch = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let now = unix_minute(SystemTime::now());
            pending.peers.retain(|minute, _| *minute >= now);
            std::mem::take(&mut pending.counts)
        };
        if batch.is_empty() {
            return;
        }
        let rows: Vec<(i64, FailedAuthenticationKey, u64)> = batch
            .iter()
            .map(|((minute, key), count)| (minute * 60, key.clone(), *count))
            .collect();
        match self
            .state
            .add_failed_authentications(&self.collaboration_id, &rows)
        {
            Ok(()) => {
                for (unix_seconds, key, count) in rows.iter().filter(|(_, _, c)| *c > 1) {
                    tracing::warn!(
                        target: "cleanroom::auth",
                        event = "authentication_failures",
                        peer = key.peer.as_str(),
                        member = key.member.as_str(),
                        reason = key.reason,
                        count,
                        minute = unix_seconds,
                    );
                }
            }
            Err(error) => {
                tracing::error!(
                    target: "cleanroom::serve",
                    event = "state_error",
                    %error,
                    "could not record failed authentications; kept for the next attempt",
                );
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                for (key, count) in batch {
                    // Counts of a minute already past are merged back; the next flush retries.
                    *pending.counts.entry(key).or_insert(0) += count;
                }
            }
        }
    }
}

/// Minutes since the Unix epoch.
fn unix_minute(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| (d.as_secs() / 60) as i64)
}

/// A peer address as logged: `ip:port`, or `unknown`.
struct Peer(Option<SocketAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => write!(f, "{addr}"),
            None => f.write_str("unknown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events() -> (ServerEvents, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(StateDb::open(dir.path().join("state.db")).unwrap());
        (
            ServerEvents::new(Arc::new(Metrics::new()), state, "collab"),
            dir,
        )
    }

    /// A flood of bad tokens from many peers becomes a bounded number of rows with exact
    /// counts, and every attempt is counted in the metrics.
    #[test]
    fn failed_authentications_are_coalesced_and_bounded() {
        let (events, _dir) = events();
        let peer = |i: u32| Some(SocketAddr::from(([10, 0, (i / 256) as u8, i as u8], 4000)));
        for i in 0..(MAX_PEERS_PER_MINUTE as u32 + 50) {
            for _ in 0..3 {
                events.authentication_failed(peer(i), None, AuthFailure::UnknownToken);
            }
        }
        events.authentication_failed(
            peer(0),
            Some("advertiser"),
            AuthFailure::ClientCertificateRequired,
        );
        events.flush();
        let rows = events.failed.state.failed_authentications(None).unwrap();
        // The rows may straddle a minute boundary; the totals may not.
        let total = |reason: &str, peer: Option<&str>| -> u64 {
            rows.iter()
                .filter(|r| r.reason == reason && peer.is_none_or(|p| r.peer == p))
                .map(|r| r.count)
                .sum()
        };
        assert_eq!(
            total("unknown_token", None),
            3 * (MAX_PEERS_PER_MINUTE as u64 + 50)
        );
        assert_eq!(total("unknown_token", Some("10.0.0.0")), 3);
        assert_eq!(total("client_certificate_required", Some("10.0.0.0")), 1);
        let certificate = rows
            .iter()
            .find(|r| r.reason == "client_certificate_required")
            .unwrap();
        assert_eq!(certificate.member, "advertiser");
        assert_eq!(certificate.collaboration_id, "collab");
        assert!(
            rows.len() <= 2 * (MAX_PEERS_PER_MINUTE + 2),
            "{}",
            rows.len()
        );
        assert!(rows.iter().any(|r| r.peer == "other"));
        let text = events.metrics().render(0);
        assert!(
            text.contains(&format!(
                "cleanroom_authentication_failures_total{{reason=\"unknown_token\"}} {}",
                3 * (MAX_PEERS_PER_MINUTE + 50)
            )),
            "{text}"
        );
        // A second flush adds to the same rows, and an empty one writes nothing.
        events.authentication_failed(peer(0), None, AuthFailure::UnknownToken);
        events.flush();
        events.flush();
        let rows = events.failed.state.failed_authentications(None).unwrap();
        let again: u64 = rows
            .iter()
            .filter(|r| r.reason == "unknown_token")
            .map(|r| r.count)
            .sum();
        assert_eq!(again, 3 * (MAX_PEERS_PER_MINUTE as u64 + 50) + 1);
    }
}
