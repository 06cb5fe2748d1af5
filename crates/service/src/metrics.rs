//! What the server counts for its operator, as Prometheus metrics served by
//! `serve --metrics-listen ADDR` at `GET /metrics` (text format 0.0.4).
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `cleanroom_sessions_total` | counter | `decision` | sessions ended, by decision (`released`, `refused`, `failed`, `cancelled`, `interrupted`) |
//! | `cleanroom_refusals_total` | counter | `reason` | refusal reasons: the rules' stable codes (`budget_exhausted`, `disallowed_column`, …) and the service's (`draining`, `no_start`, `resource_exhausted`, …) |
//! | `cleanroom_session_rows_total` | counter | `member`, `side` | table rows of ended sessions: `server` (this server's table), `client` (the member's declared rows) |
//! | `cleanroom_session_bytes_total` | counter | `member`, `direction` | protocol bytes of ended sessions, `received` and `sent` |
//! | `cleanroom_session_duration_seconds` | histogram | `decision` | time from the session's start to its end |
//! | `cleanroom_privacy_epsilon_spent_total` | counter | `member` | `ε` charged at admission under differential privacy, since the server started |
//! | `cleanroom_sessions_in_flight` | gauge | | sessions running now |
//! | `cleanroom_authentication_failures_total` | counter | `reason` | calls refused `UNAUTHENTICATED`, by reason code |
//!
//! Every label value comes from a bounded set: decisions and reason codes are fixed, and a
//! `member` label is only ever the name of an authenticated member of the collaboration (a
//! failed authentication is counted by reason alone). The endpoint has no authentication and
//! shows every member's activity: it is for the operator's monitoring, never for partners (one
//! member must not see another's sessions, SECURITY.md §7.1), so bind it to loopback or a
//! private network.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;

use crate::state::{AuditEntry, Decision};

/// Upper bounds of the session duration buckets, in seconds.
const DURATION_BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0];

/// The server's metrics, registered in one registry.
pub struct Metrics {
    registry: Registry,
    sessions: IntCounterVec,
    refusals: IntCounterVec,
    rows: IntCounterVec,
    bytes: IntCounterVec,
    duration: HistogramVec,
    epsilon: prometheus::CounterVec,
    in_flight: IntGauge,
    authentication_failures: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric of the table above, at zero.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("registered once");
            metric
        };
        let sessions = counter(
            "cleanroom_sessions_total",
            "Sessions ended, by decision.",
            &["decision"],
        );
        let refusals = counter(
            "cleanroom_refusals_total",
            "Refusal reasons of refused sessions, by stable reason code.",
            &["reason"],
        );
        let rows = counter(
            "cleanroom_session_rows_total",
            "Table rows of ended sessions: server (this server's table) or client (declared).",
            &["member", "side"],
        );
        let bytes = counter(
            "cleanroom_session_bytes_total",
            "Protocol bytes of ended sessions, received and sent.",
            &["member", "direction"],
        );
        let authentication_failures = counter(
            "cleanroom_authentication_failures_total",
            "Calls refused UNAUTHENTICATED, by reason code.",
            &["reason"],
        );
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "cleanroom_session_duration_seconds",
                "Time from a session's start to its end.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["decision"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(duration.clone()))
            .expect("registered once");
        let epsilon = prometheus::CounterVec::new(
            Opts::new(
                "cleanroom_privacy_epsilon_spent_total",
                "Epsilon charged at admission under differential privacy, since the start.",
            ),
            &["member"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(epsilon.clone()))
            .expect("registered once");
        let in_flight = IntGauge::new("cleanroom_sessions_in_flight", "Sessions running now.")
            .expect("valid metric");
        registry
            .register(Box::new(in_flight.clone()))
            .expect("registered once");
        Metrics {
            registry,
            sessions,
            refusals,
            rows,
            bytes,
            duration,
            epsilon,
            in_flight,
            authentication_failures,
        }
    }

    /// Counts a session that ended as `entry` records it, with the reasons it ended for
    /// (counted as refusals when it was refused) and, when known, how long it ran.
    pub(crate) fn session_ended(
        &self,
        entry: &AuditEntry,
        reasons: &[&str],
        duration: Option<Duration>,
    ) {
        let decision = entry.decision.as_str();
        self.sessions.with_label_values(&[decision]).inc();
        if entry.decision == Decision::Refused {
            for reason in reasons {
                self.refusals.with_label_values(&[reason]).inc();
            }
        }
        let member = entry.member.as_str();
        self.rows
            .with_label_values(&[member, "server"])
            .inc_by(entry.matcher_rows);
        self.rows
            .with_label_values(&[member, "client"])
            .inc_by(entry.receiver_rows);
        self.bytes
            .with_label_values(&[member, "received"])
            .inc_by(entry.bytes_received);
        self.bytes
            .with_label_values(&[member, "sent"])
            .inc_by(entry.bytes_sent);
        if let Some(duration) = duration {
            self.duration
                .with_label_values(&[decision])
                .observe(duration.as_secs_f64());
        }
    }

    /// Counts a session refused before it was admitted or recorded (the server draining, no
    /// start message).
    pub(crate) fn refused_early(&self, reason: &str) {
        self.refusals.with_label_values(&[reason]).inc();
    }

    /// Counts `epsilon` charged to `member` at admission.
    pub(crate) fn charged(&self, member: &str, epsilon: f64) {
        self.epsilon.with_label_values(&[member]).inc_by(epsilon);
    }

    /// Counts one failed authentication.
    pub(crate) fn authentication_failed(&self, reason: &str) {
        self.authentication_failures
            .with_label_values(&[reason])
            .inc();
    }

    /// The metrics in the Prometheus text format, with `in_flight` sessions running now.
    pub fn render(&self, in_flight: u32) -> String {
        self.in_flight.set(i64::from(in_flight));
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// Serves `GET /metrics` on `listener` over HTTP/1.1 until the task is dropped; `in_flight`
/// says how many sessions run at the time of a scrape. Any other path is 404, any other method
/// 405. Each connection is served in its own task and closed after 30 s without a request.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    in_flight: Arc<dyn Fn() -> u32 + Send + Sync>,
) {
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            // Out of descriptors or a reset connection: try again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (metrics, in_flight) = (Arc::clone(&metrics), Arc::clone(&in_flight));
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = respond(&request, &metrics, in_flight());
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(300), connection).await;
        });
    }
}

fn respond(
    request: &Request<Incoming>,
    metrics: &Metrics,
    in_flight: u32,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(in_flight),
        ),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "metrics are at /metrics\n".to_owned(),
        ),
    };
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

/// The address a metrics listener is on, for the start line.
pub fn describe(addr: SocketAddr) -> String {
    format!("http://{addr}/metrics")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(member: &str, decision: Decision, rows: (u64, u64)) -> AuditEntry {
        AuditEntry {
            session_id: "s".into(),
            collaboration_id: "c".into(),
            started_at: String::new(),
            finished_at: None,
            member: member.into(),
            sql: String::new(),
            decision,
            reason: String::new(),
            released_rows: 0,
            suppressed_rows: 0,
            matcher_rows: rows.0,
            receiver_rows: rows.1,
            messages_received: 0,
            messages_sent: 0,
            bytes_received: 10,
            bytes_sent: 20,
            matcher_skipped: 0,
            receiver_skipped: 0,
            bounded_identifiers: 0,
            bounded_disclosed: 0,
            payer: member.into(),
            compute_ms: 0,
            buckets: 1,
            buckets_done: 1,
        }
    }

    /// Each figure is the exact sum of what was told; reasons count as refusals only for
    /// refused sessions.
    #[test]
    fn the_text_has_the_exact_counts() {
        let metrics = Metrics::new();
        let released = entry("advertiser", Decision::Released, (160, 110));
        metrics.session_ended(&released, &[], Some(Duration::from_millis(700)));
        metrics.session_ended(&released, &[], Some(Duration::from_secs(40)));
        let refused = entry("retailer", Decision::Refused, (0, 5));
        metrics.session_ended(&refused, &["budget_exhausted"], Some(Duration::ZERO));
        let failed = entry("retailer", Decision::Failed, (160, 5));
        metrics.session_ended(&failed, &["too_slow"], None);
        metrics.refused_early("draining");
        metrics.charged("advertiser", 0.25);
        metrics.charged("advertiser", 0.5);
        let text = metrics.render(3);
        for line in [
            "cleanroom_sessions_total{decision=\"released\"} 2",
            "cleanroom_sessions_total{decision=\"refused\"} 1",
            "cleanroom_sessions_total{decision=\"failed\"} 1",
            "cleanroom_refusals_total{reason=\"budget_exhausted\"} 1",
            "cleanroom_refusals_total{reason=\"draining\"} 1",
            "cleanroom_session_rows_total{member=\"advertiser\",side=\"server\"} 320",
            "cleanroom_session_rows_total{member=\"advertiser\",side=\"client\"} 220",
            "cleanroom_session_rows_total{member=\"retailer\",side=\"server\"} 160",
            "cleanroom_session_bytes_total{direction=\"sent\",member=\"retailer\"} 40",
            "cleanroom_session_duration_seconds_bucket{decision=\"released\",le=\"1\"} 1",
            "cleanroom_session_duration_seconds_bucket{decision=\"released\",le=\"60\"} 2",
            "cleanroom_session_duration_seconds_count{decision=\"released\"} 2",
            "cleanroom_privacy_epsilon_spent_total{member=\"advertiser\"} 0.75",
            "cleanroom_sessions_in_flight 3",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(
            !text.contains("too_slow"),
            "a failure counted as a refusal:\n{text}"
        );
        assert!(!text.contains("cleanroom_session_duration_seconds_count{decision=\"failed\"}"));
    }
}
