//! End-to-end tests of the gRPC matching service on loopback: a server started in-process on
//! 127.0.0.1:0 (the publisher, serving `impressions`) and clients of the advertiser (bringing
//! `conversions`). Results are compared exactly with a plain computation over the same CSV
//! files; refusals, authentication, limits, disconnects, concurrency, TLS and what crosses
//! the wire are checked against the exact status codes and audit entries. (The same through
//! the `cleanroom` binary: the root `tests/service_e2e.rs`.)

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use cleanroom_psi::{Limits as PsiLimits, Receiver, WireMessage};
use cleanroom_service::client::{ClientError, Query};
use cleanroom_service::proto::{
    PsiMessage, RunSessionRequest, run_session_request, run_session_response,
};
use cleanroom_service::{
    BearerToken, Client, Decision, Limits, ServerConfig, StateDb, TlsIdentity,
};
use cleanroom_testkit::*;
use prost::Message as _;
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::Channel;

// ------------------------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_counts_and_sums_equal_a_plain_computation() {
    let fx = Fixture::new(5);
    let server = start_server(&fx, Limits::default(), None).await;
    let url = format!("http://{}", server.addr);

    let (want, want_suppressed) = fx.plain_by_campaign();
    assert!(
        want.len() >= 3 && want_suppressed >= 1,
        "fixture: {want:?} {want_suppressed}"
    );
    let outcome = run_query(&fx, url.clone(), BY_CAMPAIGN).await.unwrap();
    assert_eq!(outcome.result.columns, ["campaign", "buyers", "revenue"]);
    assert_exact(&outcome.result, &want, want_suppressed);
    assert_eq!(outcome.summary.released_rows, want.len() as u64);
    assert_eq!(outcome.summary.suppressed_rows, want_suppressed);
    assert_eq!(outcome.rows, fx.conversions.rows.len() as u64);

    let entry = server.settled_entry(&outcome.summary.session_id).await;
    assert_eq!(entry.decision, Decision::Released);
    assert_eq!(entry.member, "advertiser");
    assert_eq!(entry.sql, BY_CAMPAIGN);
    assert_eq!(entry.released_rows, want.len() as u64);
    assert_eq!(entry.suppressed_rows, want_suppressed);
    assert_eq!(entry.matcher_rows, fx.impressions.rows.len() as u64);
    assert_eq!(entry.receiver_rows, fx.conversions.rows.len() as u64);
    // What the server counted is what the client moved, byte for byte.
    assert_eq!(entry.bytes_received, outcome.counters.bytes_sent);
    assert_eq!(entry.bytes_sent, outcome.counters.bytes_received);
    assert_eq!(entry.messages_received, outcome.counters.messages_sent);
    assert_eq!(entry.messages_sent, outcome.counters.messages_received);

    // The server's filter and the receiver's groups, with averages.
    let (want, want_suppressed) = fx.plain_eu_by_channel();
    assert_eq!(want.len(), 3, "fixture: {want:?}");
    let outcome = run_query(&fx, url, EU_BY_CHANNEL).await.unwrap();
    assert_eq!(
        outcome.result.columns,
        ["channel", "buyers", "revenue", "avg_amount"]
    );
    assert_exact(&outcome.result, &want, want_suppressed);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_under_the_threshold_are_suppressed() {
    // A threshold above any group's size (but not above the querier's 354 identifiers, which
    // would be refused as too small a set): nothing is released, every non-empty group counted.
    let fx = Fixture::new(300);
    let server = start_server(&fx, Limits::default(), None).await;
    let (want, want_suppressed) = fx.plain_by_campaign();
    assert!(want.is_empty());
    assert_eq!(
        want_suppressed, 5,
        "spring, summer, autumn, winter and rare all match"
    );
    let outcome = run_query(&fx, format!("http://{}", server.addr), BY_CAMPAIGN)
        .await
        .unwrap();
    assert!(outcome.result.rows.is_empty(), "{:?}", outcome.result.rows);
    assert_eq!(outcome.result.suppressed_rows, 5);
    let entry = server.settled_entry(&outcome.summary.session_id).await;
    assert_eq!(entry.decision, Decision::Released);
    assert_eq!((entry.released_rows, entry.suppressed_rows), (0, 5));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_query_returns_the_plan_a_session_would_run_and_touches_nothing() {
    use cleanroom_service::proto::PlanQueryRequest;
    let fx = Fixture::new(5);
    let server = start_server(&fx, Limits::default(), None).await;
    let plan_query = async |token: Option<&str>, sql: &str| {
        let mut client = raw_client(server.addr, token).await;
        client
            .plan_query(PlanQueryRequest {
                sql: sql.to_owned(),
            })
            .await
            .map(|r| r.into_inner().plan_json)
    };

    // An allowed query: exactly the document `cleanroom check --format json` prints.
    let plan_json = plan_query(Some(ADVERTISER_TOKEN), BY_CAMPAIGN)
        .await
        .unwrap();
    let local = fx.collaboration.plan("advertiser", BY_CAMPAIGN).unwrap();
    assert_eq!(
        plan_json,
        cleanroom_rules::AllowedPlan::new(&local).to_json()
    );
    let document: serde_json::Value = serde_json::from_str(&plan_json).unwrap();
    assert_eq!(document["allowed"], true);
    assert_eq!(document["plan"]["sql"], BY_CAMPAIGN);
    assert_eq!(document["plan"]["querier"], "advertiser");
    assert_eq!(document["plan"]["protocol"], "intersection_sum");
    assert_eq!(document["plan"]["matcher"]["table"], "impressions");
    assert_eq!(document["plan"]["receiver"]["table"], "conversions");
    assert!(document.get("noise").is_none(), "no privacy, no noise");

    // Refused by the rules: the session's status and reason codes.
    let status = plan_query(
        Some(ADVERTISER_TOKEN),
        "SELECT c.email FROM impressions i JOIN conversions c ON i.email = c.email",
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(refusal_codes(&status), ["output_not_dimension"]);
    // A member without the query ability.
    let sql = "SELECT i.campaign, COUNT(DISTINCT p.email) AS n FROM impressions i \
               JOIN panel p ON i.email = p.email GROUP BY i.campaign";
    let status = plan_query(Some(ANALYST_TOKEN), sql).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(refusal_codes(&status), ["missing_query_ability"]);

    // Without a token, or with a wrong one: UNAUTHENTICATED.
    for token in [None, Some("not-a-member-token")] {
        let status = plan_query(token, BY_CAMPAIGN).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }

    // Nothing was recorded or charged.
    assert!(server.state.entries(None, None).unwrap().is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_abilities_are_enforced() {
    let fx = Fixture::new(5);
    let server = start_server(&fx, Limits::default(), None).await;
    let start = || start_message(&fx, "advertiser", BY_CAMPAIGN, "conversions");

    // No token.
    let mut client = raw_client(server.addr, None).await;
    let status = raw_open(&mut client, start()).await.err().unwrap();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = client
        .get_server_info(cleanroom_service::proto::GetServerInfoRequest {})
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::Unauthenticated);

    // A wrong token.
    let mut client = raw_client(server.addr, Some("not-a-member-token")).await;
    let status = raw_open(&mut client, start()).await.err().unwrap();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let mut config = advertiser_client_config(format!("http://{}", server.addr));
    config.token = BearerToken::new("advertiser-secret-tokeN").unwrap();
    let mut wrong = Client::connect(&config).await.unwrap();
    let data = fx.advertiser_data();
    let query = Query {
        collaboration: &fx.collaboration,
        member: "advertiser",
        sql: BY_CAMPAIGN,
        data: &data,
        receivers: &[],
    };
    match wrong.run_query(query, None).await {
        Err(ClientError::Remote(remote)) => assert_eq!(remote.code, Code::Unauthenticated),
        other => panic!("expected UNAUTHENTICATED, got {other:?}"),
    }

    // The publisher's valid token, claiming to be the advertiser.
    let mut client = raw_client(server.addr, Some(PUBLISHER_TOKEN)).await;
    let status = raw_open(&mut client, start()).await.err().unwrap();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // A member without the `query` ability, asking the server directly.
    let mut client = raw_client(server.addr, Some(ANALYST_TOKEN)).await;
    let sql = "SELECT i.campaign, COUNT(DISTINCT p.email) AS n FROM impressions i \
               JOIN panel p ON i.email = p.email GROUP BY i.campaign";
    let status = raw_open(&mut client, start_message(&fx, "analyst", sql, "panel"))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(refusal_codes(&status), ["missing_query_ability"]);
    let audit = server.state.entries(Some("analyst"), None).unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].decision, Decision::Refused);
    assert!(
        audit[0].reason.contains("missing_query_ability"),
        "{}",
        audit[0].reason
    );

    // The advertiser bringing a table that is not its own.
    let mut client = raw_client(server.addr, Some(ADVERTISER_TOKEN)).await;
    let status = raw_open(
        &mut client,
        start_message(&fx, "advertiser", BY_CAMPAIGN, "panel"),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // Nothing was released to anyone.
    assert!(
        server
            .state
            .entries(None, None)
            .unwrap()
            .iter()
            .all(|e| e.decision == Decision::Refused && e.released_rows == 0)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_queries_are_invalid_argument_with_the_reason() {
    let fx = Fixture::new(5);
    let server = start_server(&fx, Limits::default(), None).await;
    let count_star = "SELECT i.campaign, COUNT(*) AS n FROM impressions i \
                      JOIN conversions c ON i.email = c.email GROUP BY i.campaign";

    // The server checks by itself, whatever the client checked.
    let mut client = raw_client(server.addr, Some(ADVERTISER_TOKEN)).await;
    let status = raw_open(
        &mut client,
        start_message(&fx, "advertiser", count_star, "conversions"),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(refusal_codes(&status), ["count_star"]);
    assert!(
        status.message().contains("count_star"),
        "{}",
        status.message()
    );

    let region_sum = "SELECT i.region, SUM(i.campaign) AS s FROM impressions i \
                      JOIN conversions c ON i.email = c.email GROUP BY i.region";
    let status = raw_open(
        &mut client,
        start_message(&fx, "advertiser", region_sum, "conversions"),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(!refusal_codes(&status).is_empty());

    let entries = server.state.entries(Some("advertiser"), None).unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].sql, count_star);
    assert_eq!(entries[0].decision, Decision::Refused);
    assert!(entries[0].reason.contains("count_star"));

    // The high-level client refuses it locally with the same reason, sending nothing.
    match run_query(&fx, format!("http://{}", server.addr), count_star).await {
        Err(ClientError::Refused(refusal)) => {
            assert_eq!(refusal.reasons[0].code.as_str(), "count_star")
        }
        other => panic!("expected a local refusal, got {other:?}"),
    }
    assert_eq!(server.state.entries(None, None).unwrap().len(), 2);

    // A malformed protocol message is INVALID_ARGUMENT too.
    let (tx, mut inbound) = raw_open(
        &mut client,
        start_message(&fx, "advertiser", BY_CAMPAIGN, "conversions"),
    )
    .await
    .unwrap();
    tx.send(RunSessionRequest {
        message: Some(run_session_request::Message::Psi(PsiMessage {
            payload: vec![0xFF; 40],
        })),
    })
    .await
    .unwrap();
    let status = final_status(&mut inbound).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_stream_leaves_nothing_behind() {
    let fx = Fixture::new(5);
    // One session at a time: a session left behind would refuse the next one.
    let limits = Limits {
        max_concurrent_sessions: 1,
        ..Limits::default()
    };
    let server = start_server(&fx, limits, None).await;

    let mut plan = fx.collaboration.plan("advertiser", BY_CAMPAIGN).unwrap();
    let table =
        cleanroom_service::data::receiver_table(&mut plan, &fx.path("conversions.csv").into())
            .unwrap();
    let mut receiver = Receiver::new(&plan.domain(), table, PsiLimits::default());
    let mut client = raw_client(server.addr, Some(ADVERTISER_TOKEN)).await;
    let (tx, mut inbound) = raw_open(
        &mut client,
        start_message(&fx, "advertiser", BY_CAMPAIGN, "conversions"),
    )
    .await
    .unwrap();
    let first = inbound.message().await.unwrap().unwrap();
    let session_id = match first.message {
        Some(run_session_response::Message::Accepted(a)) => a.session_id,
        other => panic!("expected acceptance, got {other:?}"),
    };
    // Send the receiver's hello and first chunk, read one protocol message, then vanish.
    for _ in 0..2 {
        let payload = receiver.poll_message().unwrap().encode();
        tx.send(RunSessionRequest {
            message: Some(run_session_request::Message::Psi(PsiMessage { payload })),
        })
        .await
        .unwrap();
    }
    let second = inbound.message().await.unwrap().unwrap();
    assert!(matches!(
        second.message,
        Some(run_session_response::Message::Psi(_))
    ));
    drop(inbound);
    drop(tx);
    drop(client);

    let entry = server.settled_entry(&session_id).await;
    assert_eq!(entry.decision, Decision::Cancelled, "{entry:?}");
    assert_eq!(entry.released_rows, 0);

    // The next session runs (its permit was returned) and is exact.
    let (want, want_suppressed) = fx.plain_by_campaign();
    let outcome = run_query(&fx, format!("http://{}", server.addr), BY_CAMPAIGN)
        .await
        .unwrap();
    assert_exact(&outcome.result, &want, want_suppressed);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_run_at_once() {
    let fx = Fixture::new(5);
    let server = start_server(&fx, Limits::default(), None).await;
    let url = format!("http://{}", server.addr);
    let (a, b) = tokio::join!(
        run_query(&fx, url.clone(), BY_CAMPAIGN),
        run_query(&fx, url.clone(), EU_BY_CHANNEL)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let (want_a, suppressed_a) = fx.plain_by_campaign();
    let (want_b, suppressed_b) = fx.plain_eu_by_channel();
    assert_exact(&a.result, &want_a, suppressed_a);
    assert_exact(&b.result, &want_b, suppressed_b);
    assert_ne!(a.summary.session_id, b.summary.session_id);
    let entries = server.state.entries(None, None).unwrap();
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|e| e.decision == Decision::Released));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_with_resource_exhausted_and_idle_sessions_time_out() {
    let fx = Fixture::new(5);
    let limits = Limits {
        max_concurrent_sessions: 1,
        idle_timeout: Duration::from_millis(800),
        ..Limits::default()
    };
    let server = start_server(&fx, limits, None).await;
    let url = format!("http://{}", server.addr);

    // A session that opens and then says nothing holds the only slot...
    let mut client = raw_client(server.addr, Some(ADVERTISER_TOKEN)).await;
    let (tx, mut inbound) = raw_open(
        &mut client,
        start_message(&fx, "advertiser", BY_CAMPAIGN, "conversions"),
    )
    .await
    .unwrap();
    // ...so a second one is refused.
    match run_query(&fx, url.clone(), BY_CAMPAIGN).await {
        Err(ClientError::Remote(remote)) => {
            assert_eq!(remote.code, Code::ResourceExhausted, "{remote}")
        }
        other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
    }
    // The silent session ends with DEADLINE_EXCEEDED after the idle timeout.
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(20), inbound.message())
            .await
            .expect("the idle timeout fires")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the session ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    drop(tx);

    // Too many rows for one session.
    server.stop().await;
    let server = start_server(
        &fx,
        Limits {
            max_rows_per_session: 100,
            ..Limits::default()
        },
        None,
    )
    .await;
    match run_query(&fx, format!("http://{}", server.addr), BY_CAMPAIGN).await {
        Err(ClientError::Remote(remote)) => {
            assert_eq!(remote.code, Code::ResourceExhausted, "{remote}")
        }
        other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
    }
    server.stop().await;
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_identifier_crosses_the_wire() {
    let fx = Fixture::new(5);
    let server = start_server(&fx, Limits::default(), None).await;
    let (proxy, to_server, to_client) = recording_proxy(server.addr).await;
    let outcome = run_query(&fx, format!("http://{proxy}"), EU_BY_CHANNEL)
        .await
        .unwrap();
    let (want, _) = fx.plain_eu_by_channel();
    assert_rows_equal(&outcome.result, &want);

    let up = to_server.lock().unwrap().clone();
    let down = to_client.lock().unwrap().clone();
    // The capture is the real traffic: it holds every protocol byte and the SQL in clear.
    assert!(
        up.len() as u64 >= outcome.counters.bytes_sent,
        "{} bytes up",
        up.len()
    );
    assert!(down.len() as u64 >= outcome.counters.bytes_received);
    assert!(contains(&up, EU_BY_CHANNEL.as_bytes()));

    let mut identifiers: HashMap<String, ()> = HashMap::new();
    for (csv, column) in [(&fx.impressions, "email"), (&fx.conversions, "email")] {
        let c = csv.column(column);
        for row in &csv.rows {
            let raw = row[c].trim();
            if raw.is_empty() {
                continue;
            }
            identifiers.insert(raw.to_owned(), ());
            identifiers.insert(normalize(raw).unwrap(), ());
            // The local part alone (user123) would be just as identifying.
            identifiers.insert(
                normalize(raw)
                    .unwrap()
                    .split('@')
                    .next()
                    .unwrap()
                    .to_owned(),
                (),
            );
        }
    }
    assert!(identifiers.len() > 500);
    for id in identifiers.keys() {
        assert!(
            !contains(&up, id.as_bytes()),
            "{id:?} was sent to the server"
        );
        assert!(
            !contains(&down, id.as_bytes()),
            "{id:?} was sent to the client"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_self_signed_certificate() {
    let fx = Fixture::new(5);
    let identity = TlsIdentity::self_signed(&["localhost", "127.0.0.1"]).unwrap();
    let server = start_server(&fx, Limits::default(), Some(identity.clone())).await;
    let port = server.addr.port();

    let mut config = advertiser_client_config(format!("https://localhost:{port}"));
    config.ca_pem = Some(identity.cert_pem.clone());
    let mut client = Client::connect(&config).await.unwrap();
    let data = fx.advertiser_data();
    let outcome = client
        .run_query(
            Query {
                collaboration: &fx.collaboration,
                member: "advertiser",
                sql: BY_CAMPAIGN,
                data: &data,
                receivers: &[],
            },
            None,
        )
        .await
        .unwrap();
    let (want, want_suppressed) = fx.plain_by_campaign();
    assert_exact(&outcome.result, &want, want_suppressed);
    let info = client.server_info().await.unwrap();
    assert_eq!(info.member, "publisher");
    assert_eq!(info.tables, ["impressions"]);

    // Another certificate as CA: the server is not trusted.
    let other = TlsIdentity::self_signed(&["localhost"]).unwrap();
    let mut config = advertiser_client_config(format!("https://localhost:{port}"));
    config.ca_pem = Some(other.cert_pem);
    let untrusted = async {
        let mut client = Client::connect(&config).await?;
        client.server_info().await
    }
    .await;
    assert!(untrusted.is_err(), "an untrusted certificate was accepted");

    // Plaintext to the TLS port does not get an answer.
    let plain = async {
        let mut client = Client::connect(&advertiser_client_config(format!(
            "http://127.0.0.1:{port}"
        )))
        .await?;
        client.server_info().await
    }
    .await;
    // ... and the error names the likely mistake and its fix.
    let message = plain.unwrap_err().to_string();
    assert!(
        message.contains(&format!("use https://127.0.0.1:{port}")),
        "{message}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_against_a_plaintext_server_names_the_mismatch() {
    let fx = Fixture::new(5);
    let server = start_server(&fx, Limits::default(), None).await;
    let port = server.addr.port();
    let config = advertiser_client_config(format!("https://127.0.0.1:{port}"));
    let failed = async {
        let mut client = Client::connect(&config).await?;
        client.server_info().await
    }
    .await;
    let message = failed.unwrap_err().to_string();
    assert!(message.contains("does not speak TLS"), "{message}");
    assert!(
        message.contains(&format!("use http://127.0.0.1:{port}")),
        "{message}"
    );
    // Each cause once.
    assert_eq!(
        message.matches("InvalidContentType").count(),
        1,
        "{message}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_refused_off_loopback() {
    let fx = Fixture::new(5);
    let state = Arc::new(StateDb::open(fx.path("state-plain.db")).unwrap());
    let config = ServerConfig {
        collaboration: Arc::clone(&fx.collaboration),
        member: "publisher".to_owned(),
        data: BTreeMap::from([("impressions".to_owned(), fx.path("impressions.csv").into())]),
        limits: Limits::default(),
        connections: cleanroom_service::ConnectionLimits::default(),
        state,
        tls: None,
        client_ca: None,
        insecure: false,
        on_session_end: None,
        work_dir: None,
        relay_key: None,
    };
    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let err = cleanroom_service::serve(config, listener, async {})
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, cleanroom_service::ServerError::Tls(_)),
        "{err}"
    );
    let err = Client::connect(&advertiser_client_config("http://192.0.2.1:443".to_owned()))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ClientError::Tls(_)), "{err}");
}

// ------------------------------------------------------------------------- the binary

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_the_audit_rpc() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let fx = Fixture::new(5);
    let server = start_server(&fx, Limits::default(), None).await;
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();

    // Health and reflection need no token: stock tools can discover the service.
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "cleanroom.v1.CleanRoomService".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    let requests = tokio_stream::iter([
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "cleanroom.v1.CleanRoomService".to_owned(),
            )),
        },
    ]);
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    match responses.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let names: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
            assert!(names.contains("cleanroom.v1.CleanRoomService"), "{names:?}");
            assert!(names.contains("grpc.health.v1.Health"), "{names:?}");
        }
        other => panic!("expected a service list, got {other:?}"),
    }
    match responses.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::FileDescriptorResponse(files)) => {
            let file = prost_types_name(&files.file_descriptor_proto[0]);
            assert_eq!(file, "cleanroom/v1/cleanroom.proto");
        }
        other => panic!("expected a file descriptor, got {other:?}"),
    }

    // Each member sees only its own audit entries.
    let outcome = run_query(&fx, format!("http://{}", server.addr), BY_CAMPAIGN)
        .await
        .unwrap();
    let mut analyst = raw_client(server.addr, Some(ANALYST_TOKEN)).await;
    let sql = "SELECT i.campaign, COUNT(DISTINCT p.email) AS n FROM impressions i \
               JOIN panel p ON i.email = p.email GROUP BY i.campaign";
    raw_open(&mut analyst, start_message(&fx, "analyst", sql, "panel"))
        .await
        .err()
        .unwrap();
    server.settled_entry(&outcome.summary.session_id).await;
    let mut client = Client::connect(&advertiser_client_config(format!("http://{}", server.addr)))
        .await
        .unwrap();
    let mine = client.audit_entries(10).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].session_id, outcome.summary.session_id);
    assert_eq!(
        mine[0].decision(),
        cleanroom_service::proto::Decision::Released
    );
    assert_eq!(mine[0].released_rows, outcome.summary.released_rows);
    let theirs = analyst
        .list_audit_entries(cleanroom_service::proto::ListAuditEntriesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].member, "analyst");
    assert_eq!(
        theirs[0].decision(),
        cleanroom_service::proto::Decision::Refused
    );
    server.stop().await;
}

/// The `name` field (1) of an encoded `FileDescriptorProto`.
fn prost_types_name(encoded: &[u8]) -> String {
    #[derive(Clone, PartialEq, prost::Message)]
    struct NameOnly {
        #[prost(string, tag = "1")]
        name: String,
    }
    NameOnly::decode(encoded).unwrap().name
}
