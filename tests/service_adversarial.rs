//! Hostile peers over the real service on loopback: here, the lying servers against the
//! `cleanroom` binary's client; the rest is `crates/service/tests/service_adversarial.rs`.
//!
//! A client that sends garbage, breaks the protocol's order or sizes, goes quiet, crawls, holds
//! the wrong token or replays an old session gets the documented gRPC status, the attempt is in
//! the audit log with nothing released, and the server stays healthy: a good session right
//! after returns the exact result. A server that lies (wrong set sizes, malformed or
//! inconsistent results, oversized or misplaced messages) makes the client fail with a clear
//! error and print nothing. Sets are small and timeouts short, so the whole file runs in
//! seconds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cleanroom_psi::{AggregateMessage, Limits as PsiLimits, Matcher, WireMessage};
use cleanroom_rules::{Collaboration, Plan};
use cleanroom_service::Client;
use cleanroom_service::client::{ClientError, Query};
use cleanroom_service::exchange::{ExchangeError, PeerError};
use cleanroom_service::proto::clean_room_service_server::{
    CleanRoomService, CleanRoomServiceServer,
};
use cleanroom_service::proto::{
    GetServerInfoRequest, GetServerInfoResponse, ListAuditEntriesRequest, ListAuditEntriesResponse,
    PsiMessage, RunSessionRequest, RunSessionResponse, SessionAccepted, SessionSummary,
    run_session_request, run_session_response,
};
use cleanroom_testkit::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Status, Streaming};

/// Runs the `cleanroom` binary with `args` and, when given, `token`; returns (exit code,
/// stdout, stderr).
fn cleanroom(args: &[&str], token: Option<&str>) -> (i32, String, String) {
    cleanroom_testkit::run_cleanroom(env!("CARGO_BIN_EXE_cleanroom"), args, token)
}

// ------------------------------------------------------------------- malformed messages

// ---------------------------------------------------------- quiet, slow and vanishing clients

// -------------------------------------------------------------------- tokens and replays

// ------------------------------------------------------------------------- lying servers

/// How a fake server departs from the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lie {
    /// Its hello announces one identifier fewer than it sends.
    FewerAnnounced,
    /// Its hello announces one identifier more than it sends, then it ends the protocol.
    MoreAnnounced,
    /// Its hello announces 2^40 identifiers.
    HugeSet,
    /// Random bytes instead of its first chunk of points.
    RandomBytes,
    /// A released group larger than the client's own group.
    IntersectionTooLarge,
    /// Its closing message counts one more released group than it sent.
    WrongReleasedCount,
    /// Encrypted sums that are not points.
    GarbageSums,
    /// Ends the call after the protocol without a summary.
    NoSummary,
    /// Sends its summary in the middle of the protocol.
    EarlySummary,
    /// Accepts the session with a release threshold of 1.
    LowerThreshold,
    /// Sends a 5 MiB protocol message.
    Oversized,
    /// Sends its hello, then nothing more, keeping the call open.
    GoesSilent,
}

#[derive(Clone)]
struct LyingServer {
    collaboration: Arc<Collaboration>,
    impressions: std::path::PathBuf,
    lie: Lie,
}

fn psi_response(payload: Vec<u8>) -> Result<RunSessionResponse, Status> {
    Ok(RunSessionResponse {
        message: Some(run_session_response::Message::Psi(PsiMessage { payload })),
    })
}

fn summary_response() -> Result<RunSessionResponse, Status> {
    Ok(RunSessionResponse {
        message: Some(run_session_response::Message::Summary(SessionSummary {
            session_id: "lie".to_owned(),
            ..SessionSummary::default()
        })),
    })
}

impl LyingServer {
    /// The matcher's message as this server sends it.
    fn tamper(&self, message: AggregateMessage) -> Vec<u8> {
        let mut rng = Rng(0x1_1E5);
        match (self.lie, message) {
            (Lie::FewerAnnounced, AggregateMessage::MatcherHello { mut group_sizes }) => {
                group_sizes[0] -= 1;
                AggregateMessage::MatcherHello { group_sizes }.encode()
            }
            (Lie::MoreAnnounced, AggregateMessage::MatcherHello { mut group_sizes }) => {
                group_sizes[0] += 1;
                AggregateMessage::MatcherHello { group_sizes }.encode()
            }
            (Lie::HugeSet, AggregateMessage::MatcherHello { .. }) => {
                AggregateMessage::MatcherHello {
                    group_sizes: vec![1 << 40],
                }
                .encode()
            }
            (Lie::RandomBytes, AggregateMessage::MatcherPoints { .. }) => {
                (0..200).map(|_| rng.next_u64() as u8).collect()
            }
            (Lie::IntersectionTooLarge, AggregateMessage::MatcherResult { mut groups }) => {
                groups[0].intersection_size = 1_000_000;
                AggregateMessage::MatcherResult { groups }.encode()
            }
            (
                Lie::WrongReleasedCount,
                AggregateMessage::MatcherDone {
                    released,
                    suppressed,
                    bounded,
                },
            ) => AggregateMessage::MatcherDone {
                released: released + 1,
                suppressed,
                bounded,
            }
            .encode(),
            (Lie::GarbageSums, AggregateMessage::MatcherResult { mut groups }) => {
                for g in &mut groups {
                    g.sums = vec![0xFF; g.sums.len()];
                }
                AggregateMessage::MatcherResult { groups }.encode()
            }
            (Lie::Oversized, AggregateMessage::MatcherPoints { .. }) => vec![1; 5 << 20],
            (_, message) => message.encode(),
        }
    }

    async fn play(
        self,
        plan: Plan,
        mut inbound: Streaming<RunSessionRequest>,
        tx: mpsc::Sender<Result<RunSessionResponse, Status>>,
    ) -> Option<()> {
        let table =
            cleanroom_service::data::matcher_table(&plan, &self.impressions.as_path().into())
                .ok()?;
        let mut matcher = Matcher::new(&plan.domain(), table, PsiLimits::default());
        let accepted = SessionAccepted {
            session_id: "lie".to_owned(),
            matcher_member: plan.matcher().member.clone(),
            matcher_table: plan.matcher().table.clone(),
            min_release: if self.lie == Lie::LowerThreshold {
                1
            } else {
                plan.min_release()
            },
            value_columns: plan.receiver().value_columns.len() as u32,
            // The terms are honest; the lie is elsewhere.
            agreement: Some(cleanroom_service::agreement(&self.collaboration, &plan)),
            ..SessionAccepted::default()
        };
        tx.send(Ok(RunSessionResponse {
            message: Some(run_session_response::Message::Accepted(accepted)),
        }))
        .await
        .ok()?;
        while let Some(message) = matcher.poll_message() {
            tx.send(psi_response(self.tamper(message))).await.ok()?;
            if self.lie == Lie::EarlySummary {
                tx.send(summary_response()).await.ok()?;
            }
            if self.lie == Lie::GoesSilent {
                while inbound.message().await.ok()?.is_some() {}
                return Some(());
            }
        }
        if self.lie == Lie::MoreAnnounced {
            let done = AggregateMessage::MatcherDone {
                released: 0,
                suppressed: 0,
                bounded: 0,
            };
            tx.send(psi_response(done.encode())).await.ok()?;
            tx.send(summary_response()).await.ok()?;
            // Keep the call open: the client must notice the lie, not the end of the call.
            while inbound.message().await.ok()?.is_some() {}
            return Some(());
        }
        while matcher.counts().is_none() {
            let request = inbound.message().await.ok()??;
            let Some(run_session_request::Message::Psi(PsiMessage { payload })) = request.message
            else {
                return None;
            };
            matcher
                .handle_message(AggregateMessage::decode(&payload).ok()?)
                .ok()?;
            while let Some(message) = matcher.poll_message() {
                tx.send(psi_response(self.tamper(message))).await.ok()?;
            }
        }
        matcher.release(|group| plan.release(group)).ok()?;
        while let Some(message) = matcher.poll_message() {
            tx.send(psi_response(self.tamper(message))).await.ok()?;
        }
        if self.lie != Lie::NoSummary {
            tx.send(summary_response()).await.ok()?;
        }
        Some(())
    }
}

#[tonic::async_trait]
impl CleanRoomService for LyingServer {
    type RunSessionStream = ReceiverStream<Result<RunSessionResponse, Status>>;

    async fn run_session(
        &self,
        request: tonic::Request<Streaming<RunSessionRequest>>,
    ) -> Result<tonic::Response<Self::RunSessionStream>, Status> {
        let mut inbound = request.into_inner();
        let Some(run_session_request::Message::Start(start)) =
            inbound.message().await?.and_then(|m| m.message)
        else {
            return Err(Status::invalid_argument("expected a start"));
        };
        let plan = self
            .collaboration
            .plan(&start.member, &start.sql)
            .map_err(|refusal| Status::invalid_argument(refusal.to_string()))?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(self.clone().play(plan, inbound, tx));
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }

    async fn get_server_info(
        &self,
        _: tonic::Request<GetServerInfoRequest>,
    ) -> Result<tonic::Response<GetServerInfoResponse>, Status> {
        Err(Status::unimplemented("a liar"))
    }

    async fn list_audit_entries(
        &self,
        _: tonic::Request<ListAuditEntriesRequest>,
    ) -> Result<tonic::Response<ListAuditEntriesResponse>, Status> {
        Err(Status::unimplemented("a liar"))
    }

    async fn plan_query(
        &self,
        _: tonic::Request<cleanroom_service::proto::PlanQueryRequest>,
    ) -> Result<tonic::Response<cleanroom_service::proto::PlanQueryResponse>, Status> {
        Err(Status::unimplemented("a liar"))
    }

    type FetchResultStream =
        ReceiverStream<Result<cleanroom_service::proto::FetchResultResponse, Status>>;

    async fn fetch_result(
        &self,
        _: tonic::Request<cleanroom_service::proto::FetchResultRequest>,
    ) -> Result<tonic::Response<Self::FetchResultStream>, Status> {
        Err(Status::unimplemented("a liar"))
    }
}

/// Serves `lie` on a loopback port until the returned sender is dropped.
async fn start_liar(fx: &Fixture, lie: Lie) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let liar = LyingServer {
        collaboration: Arc::clone(&fx.collaboration),
        impressions: fx.path("impressions.csv"),
        lie,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CleanRoomServiceServer::new(liar))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_servers_make_the_client_fail_and_print_nothing() {
    let fx = Fixture::new(5);
    let cases: [(Lie, &str); 11] = [
        (Lie::FewerAnnounced, "more elements than the"),
        (Lie::MoreAnnounced, "unexpected MatcherDone message"),
        (Lie::HugeSet, "set size: 1099511627776 exceeds the limit"),
        (Lie::RandomBytes, "malformed protocol message"),
        (
            Lie::IntersectionTooLarge,
            "intersection larger than the receiver's group",
        ),
        (
            Lie::WrongReleasedCount,
            "released count differs from the groups received",
        ),
        (Lie::GarbageSums, "invalid point in MatcherResult sums"),
        (Lie::NoSummary, "the session did not end with a summary"),
        (
            Lie::EarlySummary,
            "unexpected message in the protocol stream",
        ),
        (
            Lie::LowerThreshold,
            "release threshold 5 here, 1 on the server",
        ),
        (Lie::Oversized, "too large"),
    ];
    let config = fx.path("collab.toml");
    let conversions = format!("conversions={}", fx.path("conversions.csv").display());
    for (lie, fragment) in cases {
        let (addr, stop) = start_liar(&fx, lie).await;
        let url = format!("http://{addr}");
        let error = run_query(&fx, url.clone(), BY_CAMPAIGN)
            .await
            .err()
            .unwrap_or_else(|| panic!("{lie:?}: the client accepted the session"));
        assert!(
            error.to_string().contains(fragment),
            "{lie:?}: {error:?} lacks {fragment:?}"
        );
        assert!(!error.is_refusal(), "{lie:?}: {error}");
        if let ClientError::Exchange(e) = &error {
            assert!(
                matches!(
                    e,
                    ExchangeError::Peer(PeerError::Wire(_) | PeerError::Protocol(_))
                        | ExchangeError::Unexpected(_)
                ),
                "{lie:?}: {e:?}"
            );
        }

        // The command line: exit 2, nothing on stdout, the reason on stderr.
        let args: Vec<String> = [
            "query",
            "--config",
            config.to_str().unwrap(),
            "--member",
            "advertiser",
            "--data",
            &conversions,
            "--server",
            &url,
            "--format",
            "json",
            "--quiet",
            "--timeout",
            "30",
            BY_CAMPAIGN,
        ]
        .map(str::to_owned)
        .to_vec();
        let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cleanroom(&args, Some(ADVERTISER_TOKEN))
        })
        .await
        .unwrap();
        assert_eq!((code, stdout.as_str()), (2, ""), "{lie:?}: {stderr}");
        assert!(stderr.contains(fragment), "{lie:?}: {stderr}");
        drop(stop);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_times_the_client_out() {
    let fx = Fixture::new(5);
    let (addr, stop) = start_liar(&fx, Lie::GoesSilent).await;
    let url = format!("http://{addr}");
    let mut config = advertiser_client_config(url.clone());
    config.idle_timeout = Some(Duration::from_millis(800));
    let mut client = Client::connect(&config).await.unwrap();
    let data = fx.advertiser_data();
    let query = Query {
        collaboration: &fx.collaboration,
        member: "advertiser",
        sql: BY_CAMPAIGN,
        data: &data,
        receivers: &[],
    };
    match client.run_query(query, None).await {
        Err(ClientError::Exchange(ExchangeError::Idle(idle))) => {
            assert_eq!(idle, Duration::from_millis(800))
        }
        other => panic!("expected the idle timeout, got {other:?}"),
    }

    // The command line, with --idle-timeout: exit 2 and nothing on stdout.
    let args = [
        "query".to_owned(),
        "--config".to_owned(),
        fx.path("collab.toml").display().to_string(),
        "--member".to_owned(),
        "advertiser".to_owned(),
        "--data".to_owned(),
        format!("conversions={}", fx.path("conversions.csv").display()),
        "--server".to_owned(),
        url,
        "--quiet".to_owned(),
        "--idle-timeout".to_owned(),
        "1".to_owned(),
        BY_CAMPAIGN.to_owned(),
    ];
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cleanroom(&args, Some(ADVERTISER_TOKEN))
    })
    .await
    .unwrap();
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert!(
        stderr.contains("no message in either direction for 1s"),
        "{stderr}"
    );
    drop(stop);
}
