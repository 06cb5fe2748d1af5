//! Hostile peers over the real service on loopback (the lying servers against the `cleanroom`
//! binary are the root `tests/service_adversarial.rs`).
//!
//! A client that sends garbage, breaks the protocol's order or sizes, goes quiet, crawls, holds
//! the wrong token or replays an old session gets the documented gRPC status, the attempt is in
//! the audit log with nothing released, and the server stays healthy: a good session right
//! after returns the exact result. A server that lies (wrong set sizes, malformed or
//! inconsistent results, oversized or misplaced messages) makes the client fail with a clear
//! error and print nothing. Sets are small and timeouts short, so the whole file runs in
//! seconds.

use std::collections::BTreeMap;
use std::time::Duration;

use cleanroom_psi::wire::{MAX_MESSAGE_BYTES, PointBytes};
use cleanroom_psi::{
    AggregateMessage, Limits as PsiLimits, Receiver, ReceiverOutcome, WireMessage,
};
use cleanroom_rules::{Collaboration, Plan, Value};
use cleanroom_service::client::{ClientError, Query};
use cleanroom_service::proto::{
    PsiMessage, RunSessionRequest, RunSessionResponse, SessionSummary, run_session_request,
    run_session_response,
};
use cleanroom_service::{BearerToken, Client, Decision, Limits};
use cleanroom_testkit::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

type Outbound = mpsc::Sender<RunSessionRequest>;
type Inbound = Streaming<RunSessionResponse>;

fn psi(payload: Vec<u8>) -> RunSessionRequest {
    RunSessionRequest {
        message: Some(run_session_request::Message::Psi(PsiMessage { payload })),
    }
}

/// Sends one protocol payload; the server may already have ended the call, which is fine.
async fn send(tx: &Outbound, payload: Vec<u8>) {
    let _ = tx.send(psi(payload)).await;
}

/// The advertiser's plan and a fresh psi receiver over the fixture's conversions.
fn receiver(fx: &Fixture, sql: &str) -> (Plan, Receiver) {
    let mut plan = fx.collaboration.plan("advertiser", sql).unwrap();
    let table =
        cleanroom_service::data::receiver_table(&mut plan, &fx.path("conversions.csv").into())
            .unwrap();
    let receiver = Receiver::new(&plan.domain(), table, PsiLimits::default());
    (plan, receiver)
}

/// Opens a session of the advertiser for `sql` that the server accepts.
async fn open_accepted(
    client: &mut RawClient,
    fx: &Fixture,
    sql: &str,
) -> (Outbound, Inbound, String) {
    let (tx, mut inbound) = raw_open(client, start_message(fx, "advertiser", sql, "conversions"))
        .await
        .expect("the session is accepted");
    match inbound.message().await.unwrap().and_then(|m| m.message) {
        Some(run_session_response::Message::Accepted(a)) => (tx, inbound, a.session_id),
        other => panic!("expected an acceptance, got {other:?}"),
    }
}

/// The receiver's own messages in order: its hello, then its item chunks.
fn hello_and_items(receiver: &mut Receiver) -> (AggregateMessage, Vec<AggregateMessage>) {
    let hello = receiver.poll_message().unwrap();
    let mut items = Vec::new();
    while let Some(m) = receiver.poll_message() {
        items.push(m);
    }
    (hello, items)
}

/// The session's audit entry: ended with `decision`, nothing released.
async fn assert_audited(server: &Running, session_id: &str, decision: Decision) {
    let entry = server.settled_entry(session_id).await;
    assert_eq!(entry.decision, decision, "{entry:?}");
    assert_eq!(
        (entry.released_rows, entry.suppressed_rows),
        (0, 0),
        "{entry:?}"
    );
    if decision != Decision::Cancelled {
        assert!(!entry.reason.is_empty(), "{entry:?}");
    }
}

/// A session played to its end: released, with exactly the plain answer `want` (rows and
/// suppressed count).
async fn assert_released_exactly(
    server: &Running,
    session_id: &str,
    plan: &Plan,
    (outcome, summary): (&ReceiverOutcome, &SessionSummary),
    (want, want_suppressed): (Vec<Vec<Value>>, u64),
) {
    let result = plan.result(outcome).unwrap();
    assert_exact(&result, &want, want_suppressed);
    assert_eq!(summary.session_id, session_id);
    assert_eq!(
        server.settled_entry(session_id).await.decision,
        Decision::Released
    );
}

/// The server still serves: health is SERVING, no session holds a slot, and an honest query
/// returns the exact answer.
async fn assert_healthy(fx: &Fixture, server: &Running) {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "cleanroom.v1.CleanRoomService".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
    let (want, want_suppressed) = fx.plain_by_campaign();
    let outcome = run_query(fx, format!("http://{}", server.addr), BY_CAMPAIGN)
        .await
        .expect("an honest session after the hostile ones");
    assert_exact(&outcome.result, &want, want_suppressed);
    assert!(
        server
            .state
            .entries(None, None)
            .unwrap()
            .iter()
            .all(|e| e.decision != Decision::Running),
        "a session was left running"
    );
}

/// A hostile session: opens, lets `attack` send what it likes, and checks the status code, a
/// fragment of its message and the audit entry.
async fn expect_rejection(
    fx: &Fixture,
    server: &Running,
    what: &str,
    want: (Code, &str),
    attack: impl AsyncFnOnce(&Outbound, &mut Receiver),
) {
    let mut client = raw_client(server.addr, Some(ADVERTISER_TOKEN)).await;
    let (tx, mut inbound, session_id) = open_accepted(&mut client, fx, BY_CAMPAIGN).await;
    let (_, mut receiver) = receiver(fx, BY_CAMPAIGN);
    attack(&tx, &mut receiver).await;
    let status = final_status(&mut inbound).await;
    assert_eq!(status.code(), want.0, "{what}: {status:?}");
    assert!(
        status.message().contains(want.1),
        "{what}: {:?} lacks {:?}",
        status.message(),
        want.1
    );
    drop(tx);
    let decision = if want.0 == Code::DeadlineExceeded
        || want.0 == Code::InvalidArgument
        || want.0 == Code::ResourceExhausted
    {
        Decision::Failed
    } else {
        Decision::Cancelled
    };
    assert_audited(server, &session_id, decision).await;
}

/// The receiver's own hello, announcing `group_sizes` instead of its true sizes.
fn hello_announcing(receiver: &mut Receiver, group_sizes: Vec<u64>) -> AggregateMessage {
    let (hello, _) = hello_and_items(receiver);
    let AggregateMessage::ReceiverHello { value_keys, .. } = hello else {
        panic!("a hello")
    };
    AggregateMessage::ReceiverHello {
        value_keys,
        group_sizes,
    }
}

fn with_points(
    message: AggregateMessage,
    f: impl FnOnce(&mut Vec<PointBytes>),
) -> AggregateMessage {
    match message {
        AggregateMessage::ReceiverItems {
            group,
            value_columns,
            mut points,
            ciphertexts,
        } => {
            f(&mut points);
            AggregateMessage::ReceiverItems {
                group,
                value_columns,
                points,
                ciphertexts,
            }
        }
        other => panic!("expected items, got {}", other.kind()),
    }
}

// ------------------------------------------------------------------- malformed messages

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_out_of_order_messages_are_invalid_argument() {
    let fx = Fixture::new(5);
    let server = start_server(&fx, Limits::default(), None).await;

    // Random bytes of random lengths, as the first protocol message.
    let mut rng = Rng(0xBAD_C0FFEE);
    let mut tried = 0;
    while tried < 24 {
        let len = rng.below(300) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if AggregateMessage::decode(&bytes).is_ok() {
            continue;
        }
        tried += 1;
        expect_rejection(
            &fx,
            &server,
            "random bytes",
            (Code::InvalidArgument, "malformed protocol message"),
            async |tx, _| send(tx, bytes).await,
        )
        .await;
    }

    // A chunk cut short, anywhere.
    for cut in [1usize, 7, 33, 500] {
        expect_rejection(
            &fx,
            &server,
            "truncated chunk",
            (Code::InvalidArgument, "truncated"),
            async |tx, receiver| {
                let (hello, items) = hello_and_items(receiver);
                send(tx, hello.encode()).await;
                let mut bytes = items[0].encode();
                bytes.truncate(bytes.len() - cut);
                send(tx, bytes).await;
            },
        )
        .await;
    }

    // A point that is not a canonical encoding, and the identity.
    for (what, point, fragment) in [
        (
            "non-canonical point",
            [0xFF; 32],
            "not a canonical Ristretto255 encoding",
        ),
        ("identity", [0; 32], "identity"),
    ] {
        expect_rejection(
            &fx,
            &server,
            what,
            (Code::InvalidArgument, fragment),
            async |tx, receiver| {
                let (hello, mut items) = hello_and_items(receiver);
                send(tx, hello.encode()).await;
                let bad = with_points(items.remove(0), |points| points[3] = PointBytes(point));
                send(tx, bad.encode()).await;
            },
        )
        .await;
    }

    // The same chunk twice.
    expect_rejection(
        &fx,
        &server,
        "duplicated chunk",
        (Code::InvalidArgument, "more elements than the"),
        async |tx, receiver| {
            let (hello, items) = hello_and_items(receiver);
            send(tx, hello.encode()).await;
            send(tx, items[0].encode()).await;
            send(tx, items[0].encode()).await;
        },
    )
    .await;

    // Items before the hello; tags before the items; a second hello.
    expect_rejection(
        &fx,
        &server,
        "items before the hello",
        (Code::InvalidArgument, "items before the receiver's hello"),
        async |tx, receiver| {
            let (_, items) = hello_and_items(receiver);
            send(tx, items[0].encode()).await;
        },
    )
    .await;
    expect_rejection(
        &fx,
        &server,
        "tags before the items",
        (
            Code::InvalidArgument,
            "tags before all of the receiver's items",
        ),
        async |tx, receiver| {
            let (hello, _) = hello_and_items(receiver);
            send(tx, hello.encode()).await;
            let tags = AggregateMessage::ReceiverTags {
                group: 0,
                tags: vec![cleanroom_psi::wire::Tag([7; 16])],
            };
            send(tx, tags.encode()).await;
        },
    )
    .await;
    expect_rejection(
        &fx,
        &server,
        "two hellos",
        (Code::InvalidArgument, "hello already received"),
        async |tx, receiver| {
            let (hello, _) = hello_and_items(receiver);
            send(tx, hello.encode()).await;
            send(tx, hello.encode()).await;
        },
    )
    .await;
    // A matcher's message from the client.
    expect_rejection(
        &fx,
        &server,
        "a matcher message",
        (
            Code::InvalidArgument,
            "the matcher only accepts receiver messages",
        ),
        async |tx, _| {
            let done = AggregateMessage::MatcherDone {
                released: 0,
                suppressed: 0,
                bounded: 0,
            };
            send(tx, done.encode()).await;
        },
    )
    .await;
    // A second session start in the protocol stream.
    expect_rejection(
        &fx,
        &server,
        "a second start",
        (
            Code::InvalidArgument,
            "only protocol messages and result keys may follow the session start",
        ),
        async |tx, _| {
            let _ = tx
                .send(start_message(&fx, "advertiser", BY_CAMPAIGN, "conversions"))
                .await;
        },
    )
    .await;
    // Result keys in a session whose start did not leave any to follow.
    expect_rejection(
        &fx,
        &server,
        "result keys nobody asked for",
        (Code::InvalidArgument, "result keys within the protocol"),
        async |tx, _| {
            let keys = cleanroom_service::proto::LaterResultKeys {
                result_keys: vec![cleanroom_service::proto::SealedResultKeys {
                    receiver: "analyst".to_owned(),
                    sealed: vec![7; 100],
                }],
            };
            let _ = tx
                .send(RunSessionRequest {
                    message: Some(run_session_request::Message::ResultKeys(keys)),
                })
                .await;
        },
    )
    .await;

    assert_healthy(&fx, &server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_announced_and_over_the_limits() {
    let fx = Fixture::new(5);
    let limits = Limits {
        max_rows_per_session: 1000,
        ..Limits::default()
    };
    let server = start_server(&fx, limits, None).await;

    // More items than the hello announced.
    expect_rejection(
        &fx,
        &server,
        "more rows than announced",
        (Code::InvalidArgument, "more elements than the"),
        async |tx, receiver| {
            let (hello, items) = hello_and_items(receiver);
            let AggregateMessage::ReceiverHello {
                value_keys,
                mut group_sizes,
            } = hello
            else {
                panic!("a hello")
            };
            group_sizes[0] -= 1;
            send(
                tx,
                AggregateMessage::ReceiverHello {
                    value_keys,
                    group_sizes,
                }
                .encode(),
            )
            .await;
            send(tx, items[0].encode()).await;
        },
    )
    .await;

    // A set over the server's limit of rows per session.
    expect_rejection(
        &fx,
        &server,
        "set over the limit",
        (Code::ResourceExhausted, "exceeds the limit of"),
        async |tx, receiver| {
            send(tx, hello_announcing(receiver, vec![1001]).encode()).await;
        },
    )
    .await;

    // A set larger than the table the client declared in its start: every identifier comes
    // from one of its rows, so this is a lie, not a limit.
    let declared = fx.conversions.rows.len() as u64;
    assert!(
        declared < 1000,
        "under the row limit, so only the declaration refuses it"
    );
    expect_rejection(
        &fx,
        &server,
        "more identifiers than declared rows",
        (Code::InvalidArgument, "declared only"),
        async |tx, receiver| {
            send(tx, hello_announcing(receiver, vec![declared + 1]).encode()).await;
        },
    )
    .await;

    // More groups than any session may have.
    expect_rejection(
        &fx,
        &server,
        "too many groups",
        (Code::ResourceExhausted, "groups"),
        async |tx, receiver| {
            send(tx, hello_announcing(receiver, vec![0; 100_001]).encode()).await;
        },
    )
    .await;

    assert_healthy(&fx, &server).await;
    server.stop().await;
}

/// A set is a set: the receiver's item chunks re-cut into small pieces and sent shuffled
/// across its groups (group 2 before group 0, a group's pieces in any order) give the exact
/// result; the same pieces with one sent twice are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_chunks_in_any_order_give_the_exact_result() {
    let fx = Fixture::new(3);
    let server = start_server(&fx, Limits::default(), None).await;
    let mut client = raw_client(server.addr, Some(ADVERTISER_TOKEN)).await;
    let mut rng = Rng(0x0DD0_C4C5);
    let mut shuffled_pieces = |receiver: &mut Receiver| {
        let (hello, items) = hello_and_items(receiver);
        let mut pieces: Vec<AggregateMessage> =
            items.into_iter().flat_map(|m| rechunk(m, 7)).collect();
        for i in (1..pieces.len()).rev() {
            pieces.swap(i, rng.below(i as u64 + 1) as usize);
        }
        (hello, pieces)
    };

    let (plan, mut receiver) = receiver(&fx, EU_BY_CHANNEL);
    let (tx, mut inbound, session_id) = open_accepted(&mut client, &fx, EU_BY_CHANNEL).await;
    let (hello, pieces) = shuffled_pieces(&mut receiver);
    let group_of = |m: &AggregateMessage| match m {
        AggregateMessage::ReceiverItems { group, .. } => *group,
        _ => unreachable!(),
    };
    let groups: std::collections::BTreeSet<u32> = pieces.iter().map(group_of).collect();
    assert!(groups.len() >= 3, "the receiver's channels are its groups");
    assert!(
        pieces.windows(2).any(|w| group_of(&w[0]) > group_of(&w[1])),
        "some group's pieces come before an earlier group's"
    );
    send(&tx, hello.encode()).await;
    for piece in &pieces {
        send(&tx, piece.encode()).await;
    }
    let (_, outcome, summary) = play_receiver(&tx, &mut inbound, receiver, Duration::ZERO)
        .await
        .expect("shuffled pieces make a complete session");
    let want = fx.plain_eu_by_channel();
    assert_released_exactly(&server, &session_id, &plan, (&outcome, &summary), want).await;

    // The same, with one piece sent twice in place of another piece of its group and size:
    // every announced count adds up, but the repeated identifiers are caught (they would
    // otherwise match twice and count twice toward the threshold).
    expect_rejection(
        &fx,
        &server,
        "a repeated piece in place of another",
        (Code::InvalidArgument, "the same identifier was sent twice"),
        async |tx, receiver| {
            let (hello, mut pieces) = shuffled_pieces(receiver);
            let size = |m: &AggregateMessage| match m {
                AggregateMessage::ReceiverItems { points, .. } => points.len(),
                _ => unreachable!(),
            };
            let (i, j) = (0..pieces.len())
                .flat_map(|i| (0..pieces.len()).map(move |j| (i, j)))
                .find(|&(i, j)| {
                    i != j
                        && group_of(&pieces[i]) == group_of(&pieces[j])
                        && size(&pieces[i]) == size(&pieces[j])
                })
                .expect("a group with two pieces of 7");
            pieces[j] = pieces[i].clone();
            send(tx, hello.encode()).await;
            for piece in &pieces {
                send(tx, piece.encode()).await;
            }
        },
    )
    .await;

    assert_healthy(&fx, &server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused() {
    let fx = Fixture::new(5);
    let server = start_server(&fx, Limits::default(), None).await;

    // Over the protocol's largest message but within gRPC's limit.
    expect_rejection(
        &fx,
        &server,
        "over the protocol's limit",
        (Code::InvalidArgument, "exceeds the maximum"),
        async |tx, _| send(tx, vec![1; MAX_MESSAGE_BYTES + 1]).await,
    )
    .await;
    // Over 4 MiB: gRPC itself refuses to decode it.
    expect_rejection(
        &fx,
        &server,
        "over 4 MiB",
        (Code::ResourceExhausted, "too large"),
        async |tx, _| send(tx, vec![1; 5 << 20]).await,
    )
    .await;

    // A session start over 4 MiB (a huge SQL text): refused before anything is recorded.
    let mut client = raw_client(server.addr, Some(ADVERTISER_TOKEN)).await;
    let huge = format!("{BY_CAMPAIGN} -- {}", "x".repeat(5 << 20));
    let status = raw_open(
        &mut client,
        start_message(&fx, "advertiser", &huge, "conversions"),
    )
    .await
    .expect_err("refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(server.state.entries(None, None).unwrap().len(), 2);

    assert_healthy(&fx, &server).await;
    server.stop().await;
}

// ---------------------------------------------------------- quiet, slow and vanishing clients

/// Plays an honest receiver over an accepted raw session, waiting `delay` before each message
/// it sends; returns every payload it sent, the outcome and the summary, or the final status.
async fn play_receiver(
    tx: &Outbound,
    inbound: &mut Inbound,
    mut receiver: Receiver,
    delay: Duration,
) -> Result<(Vec<Vec<u8>>, ReceiverOutcome, SessionSummary), Status> {
    let mut sent = Vec::new();
    loop {
        while let Some(message) = receiver.poll_message() {
            tokio::time::sleep(delay).await;
            let payload = message.encode();
            sent.push(payload.clone());
            send(tx, payload).await;
        }
        match inbound.message().await?.and_then(|m| m.message) {
            Some(run_session_response::Message::Psi(PsiMessage { payload })) => {
                let message =
                    AggregateMessage::decode(&payload).expect("the server's message decodes");
                receiver
                    .handle_message(message)
                    .expect("the server's message is valid");
            }
            Some(run_session_response::Message::Summary(summary)) => {
                assert!(receiver.is_finished(), "an outcome before the summary");
                let outcome = receiver.open().expect("the outcome decrypts");
                return Ok((sent, outcome, summary));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_slow_and_vanishing_clients() {
    let fx = Fixture::new(5);
    let idle = Duration::from_millis(2000);
    let limits = Limits {
        idle_timeout: idle,
        max_concurrent_sessions: 2,
        ..Limits::default()
    };
    let server = start_server(&fx, limits, None).await;

    // A client that opens the call and never sends its start: DEADLINE_EXCEEDED, no entry.
    let mut client = raw_client(server.addr, Some(ADVERTISER_TOKEN)).await;
    let (tx, rx) = mpsc::channel::<RunSessionRequest>(1);
    let started = tokio::time::Instant::now();
    let status = client
        .run_session(ReceiverStream::new(rx))
        .await
        .expect_err("the call fails");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("no session start"), "{status:?}");
    // Not before the idle timeout (the status says which timeout ended it).
    assert!(started.elapsed() >= idle);
    drop(tx);
    assert!(server.state.entries(None, None).unwrap().is_empty());

    // A client that sends slowly, but each message within the idle timeout: exact result.
    let (plan, receiver) = receiver(&fx, BY_CAMPAIGN);
    let (tx, mut inbound, session_id) = open_accepted(&mut client, &fx, BY_CAMPAIGN).await;
    let (_, outcome, summary) = play_receiver(&tx, &mut inbound, receiver, idle * 3 / 10)
        .await
        .expect("a slow but steady client finishes");
    let want = fx.plain_by_campaign();
    assert_released_exactly(&server, &session_id, &plan, (&outcome, &summary), want).await;

    // A client that pauses longer than the idle timeout between two messages.
    let (_, receiver) = self::receiver(&fx, BY_CAMPAIGN);
    let (tx, mut inbound, session_id) = open_accepted(&mut client, &fx, BY_CAMPAIGN).await;
    let status = play_receiver(&tx, &mut inbound, receiver, idle * 3 / 2)
        .await
        .expect_err("the server gives up");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_audited(&server, &session_id, Decision::Failed).await;

    // A client that closes its side mid-session (half-close), still listening: CANCELLED.
    let (_, mut receiver) = self::receiver(&fx, BY_CAMPAIGN);
    let (tx, mut inbound, session_id) = open_accepted(&mut client, &fx, BY_CAMPAIGN).await;
    let (hello, _) = hello_and_items(&mut receiver);
    send(&tx, hello.encode()).await;
    drop(tx);
    let status = final_status(&mut inbound).await;
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert_audited(&server, &session_id, Decision::Cancelled).await;

    // A client whose connection drops mid-session, every stream abandoned.
    let (_, mut receiver) = self::receiver(&fx, BY_CAMPAIGN);
    let mut lost = raw_client(server.addr, Some(ADVERTISER_TOKEN)).await;
    let (tx, inbound, session_id) = open_accepted(&mut lost, &fx, BY_CAMPAIGN).await;
    let (hello, items) = hello_and_items(&mut receiver);
    send(&tx, hello.encode()).await;
    send(&tx, items[0].encode()).await;
    drop((tx, inbound, lost));
    assert_audited(&server, &session_id, Decision::Cancelled).await;

    assert_healthy(&fx, &server).await;
    server.stop().await;
}

// -------------------------------------------------------------------- tokens and replays

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curious_members_and_foreign_tokens() {
    let fx = Fixture::new(5);
    let server = start_server(&fx, Limits::default(), None).await;
    let url = format!("http://{}", server.addr);
    let panel_sql = "SELECT i.campaign, COUNT(DISTINCT p.email) AS n FROM impressions i \
                     JOIN panel p ON i.email = p.email GROUP BY i.campaign";
    let rows: String = (0..10)
        .map(|n| format!("user{n}@example.com,a\n"))
        .collect();
    std::fs::write(fx.path("panel.csv"), format!("email,segment\n{rows}")).unwrap();
    let panel = BTreeMap::from([("panel".to_owned(), fx.path("panel.csv").into())]);

    // The analyst (no `query` ability) grants itself `query` in its own copy of the file: its
    // client's local check passes, the server's does not.
    let text = std::fs::read_to_string(fx.path("collab.toml")).unwrap();
    let edited = text.replacen(
        "abilities = [\"receive_results\"]",
        "abilities = [\"query\", \"receive_results\"]",
        1,
    );
    assert_ne!(edited, text);
    let forged = Collaboration::from_toml_str(&edited, "edited copy").unwrap();
    forged
        .plan("analyst", panel_sql)
        .expect("the edited copy allows it");
    let mut config =
        cleanroom_service::ClientConfig::new(url.clone(), BearerToken::new(ANALYST_TOKEN).unwrap());
    config.timeout = Some(Duration::from_secs(30));
    let mut analyst = Client::connect(&config).await.unwrap();
    let query = Query {
        collaboration: &forged,
        member: "analyst",
        sql: panel_sql,
        data: &panel,
        receivers: &[],
    };
    match analyst.run_query(query, None).await {
        Err(ClientError::Remote(remote)) => {
            assert_eq!(remote.code, Code::PermissionDenied, "{remote}");
            let codes: Vec<&str> = remote.reasons.iter().map(|r| r.code.as_str()).collect();
            assert_eq!(codes, ["missing_query_ability"]);
        }
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }

    // A member of another collaboration (same names, another id and other tokens).
    let other_token = "token-of-another-collaboration";
    let other_text = text
        .replacen(
            "id = \"e2e-collaboration\"",
            "id = \"another-collaboration\"",
            1,
        )
        .replace(&sha256_hex(ADVERTISER_TOKEN), &sha256_hex(other_token));
    let other = Collaboration::from_toml_str(&other_text, "another collaboration").unwrap();
    let mut config =
        cleanroom_service::ClientConfig::new(url.clone(), BearerToken::new(other_token).unwrap());
    config.timeout = Some(Duration::from_secs(30));
    let mut stranger = Client::connect(&config).await.unwrap();
    let data = fx.advertiser_data();
    let query = Query {
        collaboration: &other,
        member: "advertiser",
        sql: BY_CAMPAIGN,
        data: &data,
        receivers: &[],
    };
    match stranger.run_query(query, None).await {
        Err(ClientError::Remote(remote)) => assert_eq!(remote.code, Code::Unauthenticated),
        other => panic!("expected UNAUTHENTICATED, got {other:?}"),
    }
    // This collaboration's valid token, naming the other collaboration's id.
    let mut advertiser = Client::connect(&advertiser_client_config(url.clone()))
        .await
        .unwrap();
    let other_ids = Collaboration::from_toml_str(
        &text.replacen(
            "id = \"e2e-collaboration\"",
            "id = \"another-collaboration\"",
            1,
        ),
        "another id",
    )
    .unwrap();
    let query = Query {
        collaboration: &other_ids,
        member: "advertiser",
        sql: BY_CAMPAIGN,
        data: &data,
        receivers: &[],
    };
    match advertiser.run_query(query, None).await {
        Err(ClientError::Remote(remote)) => {
            assert_eq!(remote.code, Code::InvalidArgument, "{remote}");
            assert!(remote.message.contains("another-collaboration"), "{remote}");
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }

    // Nothing was released to anyone.
    let entries = server.state.entries(None, None).unwrap();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(
        entries
            .iter()
            .all(|e| e.decision == Decision::Refused && e.released_rows == 0)
    );
    assert_healthy(&fx, &server).await;
    server.stop().await;
}

/// The server's whole release when nothing matched.
/// A release of nothing: every one of the `pairs` announced pairs of groups suppressed.
fn nothing_released(pairs: u64) -> AggregateMessage {
    AggregateMessage::MatcherDone {
        released: 0,
        suppressed: pairs,
        bounded: 0,
    }
}

/// Reads the server's messages to the summary; returns its release messages (results and
/// end, not its hello and points) with the summary, or the final status.
async fn read_to_end(
    inbound: &mut Inbound,
) -> Result<(Vec<AggregateMessage>, SessionSummary), Status> {
    let mut messages = Vec::new();
    loop {
        match inbound.message().await?.and_then(|m| m.message) {
            Some(run_session_response::Message::Psi(PsiMessage { payload })) => {
                match AggregateMessage::decode(&payload).unwrap() {
                    AggregateMessage::MatcherHello { .. }
                    | AggregateMessage::MatcherPoints { .. } => {}
                    release => messages.push(release),
                }
            }
            Some(run_session_response::Message::Summary(summary)) => {
                return Ok((messages, summary));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_session_learns_nothing() {
    let fx = Fixture::new(5);
    let server = start_server(&fx, Limits::default(), None).await;
    let mut client = raw_client(server.addr, Some(ADVERTISER_TOKEN)).await;

    // An honest session, every message it sent recorded.
    let (plan, receiver) = receiver(&fx, BY_CAMPAIGN);
    let (tx, mut inbound, first_id) = open_accepted(&mut client, &fx, BY_CAMPAIGN).await;
    let (recorded, outcome, _) = play_receiver(&tx, &mut inbound, receiver, Duration::ZERO)
        .await
        .unwrap();
    let (want, want_suppressed) = fx.plain_by_campaign();
    assert_rows_equal(&plan.result(&outcome).unwrap(), &want);
    assert!(recorded.len() >= 3);
    let pairs = want.len() as u64 + want_suppressed;

    // The same messages, replayed into a new session as soon as it opens: the tags may be
    // refused as sent before the server's points, or, when the server sent its points first,
    // taken and matched against nothing; either way nothing is released.
    let (tx, mut inbound, replay_id) = open_accepted(&mut client, &fx, BY_CAMPAIGN).await;
    for payload in &recorded {
        send(&tx, payload.clone()).await;
    }
    match read_to_end(&mut inbound).await {
        Err(status) => {
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(
                status
                    .message()
                    .contains("tags of a group before its points were sent"),
                "{status:?}"
            );
            assert_audited(&server, &replay_id, Decision::Failed).await;
        }
        Ok((released, summary)) => {
            assert_eq!(released, [nothing_released(pairs)]);
            assert_eq!((summary.released_rows, summary.suppressed_rows), (0, pairs));
        }
    }
    let entry = server.settled_entry(&replay_id).await;
    assert_eq!(entry.released_rows, 0);
    drop(tx);

    // Replayed patiently, after the server's points arrived: the old tags were made with the
    // old session's keys, so nothing matches and nothing is released.
    let (tx, mut inbound, patient_id) = open_accepted(&mut client, &fx, BY_CAMPAIGN).await;
    let matcher_groups = {
        let mut points = 0;
        let mut announced = None;
        while announced != Some(points) {
            match inbound.message().await.unwrap().and_then(|m| m.message) {
                Some(run_session_response::Message::Psi(PsiMessage { payload })) => {
                    match AggregateMessage::decode(&payload).unwrap() {
                        AggregateMessage::MatcherHello { group_sizes } => {
                            announced = Some(group_sizes.iter().sum::<u64>())
                        }
                        AggregateMessage::MatcherPoints { points: p, .. } => {
                            points += p.len() as u64
                        }
                        other => panic!("unexpected {}", other.kind()),
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        points
    };
    assert!(matcher_groups > 0);
    for payload in &recorded {
        send(&tx, payload.clone()).await;
    }
    let (released, summary) = read_to_end(&mut inbound).await.unwrap();
    assert_eq!(released, [nothing_released(pairs)]);
    assert_eq!((summary.released_rows, summary.suppressed_rows), (0, pairs));
    let entry = server.settled_entry(&patient_id).await;
    assert_eq!((entry.released_rows, entry.suppressed_rows), (0, pairs));
    // The honest session's figures, for contrast.
    let first = server.settled_entry(&first_id).await;
    assert_eq!(
        (first.released_rows, first.suppressed_rows),
        (want.len() as u64, want_suppressed)
    );
    drop(tx);
    assert_healthy(&fx, &server).await;
    server.stop().await;
}
