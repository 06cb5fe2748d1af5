//! Hostile members against the real service on loopback: a member that hogs the session slots,
//! watches for another member's activity, trickles data, brings more rows than it may, or
//! reads the audit log of another collaboration served from the same state database; members
//! who must present a client certificate (pinned, or issued by the server's client CA).
//!
//! Each attack is played by a member with a valid token; the test asserts what it can and
//! cannot do, and that what it sees is the same whatever the other member does.

use std::sync::Arc;
use std::time::Duration;

use cleanroom_service::client::ClientError;
use cleanroom_service::client_cert::digest_of_pem;
use cleanroom_service::proto::{
    GetServerInfoRequest, ListAuditEntriesRequest, RunSessionResponse, run_session_response,
};
use cleanroom_service::{Decision, Limits, StateDb, TlsIdentity};
use cleanroom_testkit::*;
use tokio::sync::mpsc;
use tonic::{Code, Status, Streaming};

/// A session the server accepted and that the client keeps open without sending anything.
struct Held {
    _tx: mpsc::Sender<cleanroom_service::proto::RunSessionRequest>,
    _inbound: Streaming<RunSessionResponse>,
}

/// Opens a session of `member` and holds it; `Err` with the status when refused.
async fn hold(server: &Running, fx: &Fixture, member: &str) -> Result<Held, Status> {
    let (token, sql, table) = match member {
        "retailer" => (RETAILER_TOKEN, RETAILER_BY_CAMPAIGN, "sales"),
        _ => (ADVERTISER_TOKEN, BY_CAMPAIGN, "conversions"),
    };
    let mut client = raw_client(server.addr, Some(token)).await;
    let (tx, mut inbound) = raw_open(&mut client, start_message(fx, member, sql, table)).await?;
    match inbound.message().await?.and_then(|m| m.message) {
        Some(run_session_response::Message::Accepted(_)) => Ok(Held {
            _tx: tx,
            _inbound: inbound,
        }),
        other => panic!("expected an acceptance, got {other:?}"),
    }
}

/// The status of a refused attempt, as the member sees it: code and message.
async fn refusal(server: &Running, fx: &Fixture, member: &str) -> (Code, String) {
    match hold(server, fx, member).await {
        Ok(_) => panic!("{member}'s session was accepted; expected a refusal"),
        Err(status) => (status.code(), status.message().to_owned()),
    }
}

/// `total` slots, `per_member` for one member, and no minimum data rate (held sessions stay
/// until the test lets go).
fn holding_limits(total: u32, per_member: u32) -> Limits {
    Limits {
        max_concurrent_sessions: total,
        max_sessions_per_member: Some(per_member),
        min_bytes_per_second: 0,
        ..Limits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_at_its_quota_neither_locks_out_nor_sees_another() {
    let fx = Fixture::new(5).with_second_querier();
    let server = start_server(&fx, holding_limits(4, 2), None).await;

    // The retailer takes every slot it can: half of them.
    let r1 = hold(&server, &fx, "retailer").await.unwrap();
    let r2 = hold(&server, &fx, "retailer").await.unwrap();
    let (code, quiet) = refusal(&server, &fx, "retailer").await;
    assert_eq!(code, Code::ResourceExhausted);
    assert!(
        quiet.contains("\"retailer\"") && quiet.contains("maximum of 2"),
        "{quiet}"
    );
    assert!(!quiet.contains("advertiser"), "{quiet}");

    // The advertiser is not locked out: its honest query runs to the exact answer.
    let (want, want_suppressed) = fx.plain_by_campaign();
    let outcome = run_query(&fx, format!("http://{}", server.addr), BY_CAMPAIGN)
        .await
        .expect("the advertiser still has its own slots");
    assert_exact(&outcome.result, &want, want_suppressed);

    // The retailer probes while the advertiser holds both of its slots: the same answer, word
    // for word, as when the advertiser ran nothing.
    let a1 = hold(&server, &fx, "advertiser").await.unwrap();
    let a2 = hold(&server, &fx, "advertiser").await.unwrap();
    let busy = refusal(&server, &fx, "retailer").await;
    assert_eq!(busy, (code, quiet.clone()));
    drop((r1, r2, a1, a2));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_says_only_that_it_is_busy() {
    let fx = Fixture::new(5).with_second_querier();
    // Three slots, two per member: the quotas add up to more than the slots.
    let server = start_server(&fx, holding_limits(3, 2), None).await;
    let r1 = hold(&server, &fx, "retailer").await.unwrap();
    let r2 = hold(&server, &fx, "retailer").await.unwrap();
    let a1 = hold(&server, &fx, "advertiser").await.unwrap();

    // The advertiser is under its quota and finds the server full: "busy", and nothing about
    // how many sessions run or whose.
    let (code, message) = refusal(&server, &fx, "advertiser").await;
    assert_eq!(code, Code::ResourceExhausted);
    assert_eq!(message, "the server is busy; try again later");
    // The retailer at its quota is told about its own sessions first.
    let (_, own) = refusal(&server, &fx, "retailer").await;
    assert!(own.contains("maximum of 2"), "{own}");

    // Every refusal is in the refused member's own audit entries.
    let refused: Vec<_> = server
        .state
        .entries(None, None)
        .unwrap()
        .into_iter()
        .filter(|e| e.decision == Decision::Refused)
        .map(|e| (e.member, e.reason))
        .collect();
    assert_eq!(
        refused,
        [
            ("advertiser".to_owned(), message),
            ("retailer".to_owned(), own)
        ]
    );

    let mut client = raw_client(server.addr, Some(ADVERTISER_TOKEN)).await;
    let info = client
        .get_server_info(GetServerInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let limits = info.limits.unwrap();
    assert_eq!(
        (
            limits.max_concurrent_sessions,
            limits.max_sessions_per_member
        ),
        (3, 2)
    );
    drop((r1, r2, a1));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_client_is_cut_off_and_an_honest_one_is_not() {
    let fx = Fixture::new(5);
    let limits = Limits {
        min_bytes_per_second: 2_000,
        rate_window: Duration::from_millis(1500),
        idle_timeout: Duration::from_secs(20),
        ..Limits::default()
    };
    let server = start_server(&fx, limits, None).await;

    // Accepted, then silent: each message would beat the 20 s idle timeout, the rate does not.
    let started = std::time::Instant::now();
    let mut client = raw_client(server.addr, Some(ADVERTISER_TOKEN)).await;
    let (_tx, mut inbound) = raw_open(
        &mut client,
        start_message(&fx, "advertiser", BY_CAMPAIGN, "conversions"),
    )
    .await
    .unwrap();
    let status = final_status(&mut inbound).await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status
            .message()
            .contains("minimum of 2000 bytes per second"),
        "{status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "cut by the rate, not the idle timeout"
    );
    let entry = server.state.entries(None, None).unwrap().pop().unwrap();
    let entry = server.settled_entry(&entry.session_id).await;
    assert_eq!(entry.decision, Decision::Failed);
    assert!(entry.reason.contains("bytes per second"), "{entry:?}");

    // An honest client under the same limits moves its data far faster: exact answer.
    let (want, _) = fx.plain_by_campaign();
    let outcome = run_query(&fx, format!("http://{}", server.addr), BY_CAMPAIGN)
        .await
        .expect("an honest client is not cut off");
    assert_rows_equal(&outcome.result, &want);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_row_quota_is_enforced_before_any_data_moves() {
    let fx = Fixture::new(5).edited(|toml| {
        let token = format!("token_sha256 = \"{}\"", sha256_hex(ADVERTISER_TOKEN));
        toml.replace(&token, &format!("{token}\nmax_rows_per_session = 10"))
    });
    assert!(fx.conversions.rows.len() > 10);
    let server = start_server(&fx, Limits::default(), None).await;

    // The honest client knows its quota: it stops before connecting a session.
    match run_query(&fx, format!("http://{}", server.addr), BY_CAMPAIGN).await {
        Err(ClientError::OverRowQuota {
            rows, quota: 10, ..
        }) => {
            assert_eq!(rows, fx.conversions.rows.len() as u64)
        }
        other => panic!("expected the row quota, got {other:?}"),
    }
    assert!(server.state.entries(None, None).unwrap().is_empty());

    // A client that ignores it is refused at admission, before any data of the server moves.
    let (code, message) = refusal(&server, &fx, "advertiser").await;
    assert_eq!(code, Code::ResourceExhausted);
    assert!(message.contains("max_rows_per_session"), "{message}");
    let entries = server.state.entries(None, None).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].decision, Decision::Refused);
    assert_eq!(entries[0].matcher_rows, 0);

    let mut client = raw_client(server.addr, Some(ADVERTISER_TOKEN)).await;
    let info = client
        .get_server_info(GetServerInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.limits.unwrap().max_rows_per_session, 10);
    server.stop().await;
}

/// Lists the advertiser's audit entries on `server` a page of `limit` at a time: every page's
/// size, and the entries' collaboration ids and session ids, newest first.
async fn list_pages(server: &Running, limit: u32) -> (Vec<usize>, Vec<(String, String)>) {
    let mut client = raw_client(server.addr, Some(ADVERTISER_TOKEN)).await;
    let (mut sizes, mut entries) = (Vec::new(), Vec::new());
    let mut page_token = String::new();
    loop {
        let page = client
            .list_audit_entries(ListAuditEntriesRequest { limit, page_token })
            .await
            .unwrap()
            .into_inner();
        sizes.push(page.entries.len());
        entries.extend(
            page.entries
                .into_iter()
                .map(|e| (e.collaboration_id, e.session_id)),
        );
        if page.next_page_token.is_empty() {
            return (sizes, entries);
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collaborations_in_one_state_database_see_only_their_own() {
    // Two collaborations with the same member names and tokens, each allowing one private
    // query per member, served by two servers over one state database.
    let x = Fixture::private(5, 1.0, 1.0);
    let y = Fixture::private(5, 1.0, 1.0).with_id("other-collaboration");
    let state = Arc::new(StateDb::open(x.path("shared-state.db")).unwrap());
    let limits = Limits::default;
    let server_x = start_server_with_state(&x, limits(), None, Arc::clone(&state)).await;
    let server_y = start_server_with_state(&y, limits(), None, Arc::clone(&state)).await;
    let url = |server: &Running| format!("http://{}", server.addr);

    // X's advertiser spends its budget; Y's advertiser still has its own.
    run_query(&x, url(&server_x), BY_CAMPAIGN)
        .await
        .expect("X's first query");
    run_query(&y, url(&server_y), BY_CAMPAIGN)
        .await
        .expect("Y's budget is its own");
    match run_query(&x, url(&server_x), BY_CAMPAIGN).await {
        Err(ClientError::Remote(remote)) => assert_eq!(remote.code, Code::ResourceExhausted),
        other => panic!("X's budget is spent, got {other:?}"),
    }
    // A few refused attempts in X, to page through.
    for _ in 0..3 {
        let (code, _) = refusal(&server_x, &x, "advertiser").await;
        assert_eq!(code, Code::ResourceExhausted);
    }

    // Each collaboration's advertiser lists its own entries only, a page at a time.
    let (sizes, x_entries) = list_pages(&server_x, 2).await;
    assert_eq!(sizes, [2, 2, 1]);
    assert!(x_entries.iter().all(|(c, _)| c == "e2e-collaboration"));
    let (sizes, y_entries) = list_pages(&server_y, 0).await;
    assert_eq!(sizes, [1]);
    assert_eq!(y_entries[0].0, "other-collaboration");
    // Newest first, and nothing of one in the other.
    let all = state.entries(None, None).unwrap();
    let newest_first: Vec<_> = all
        .iter()
        .rev()
        .filter(|e| e.collaboration_id == "e2e-collaboration")
        .map(|e| e.session_id.clone())
        .collect();
    assert_eq!(
        x_entries.iter().map(|(_, s)| s.clone()).collect::<Vec<_>>(),
        newest_first
    );
    assert!(!x_entries.iter().any(|x| y_entries.contains(x)));

    // Budgets are per collaboration too.
    let standings = state.standings().unwrap();
    let spent: Vec<_> = standings
        .iter()
        .filter(|s| s.member == "advertiser")
        .map(|s| (s.collaboration_id.as_str(), s.queries))
        .collect();
    assert_eq!(
        spent,
        [("e2e-collaboration", 1), ("other-collaboration", 1)]
    );

    // A page token the server did not give is refused.
    let mut client = raw_client(server_x.addr, Some(ADVERTISER_TOKEN)).await;
    let status = client
        .list_audit_entries(ListAuditEntriesRequest {
            limit: 1,
            page_token: "not-a-token".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    server_x.stop().await;
    server_y.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_member_needs_its_certificate_as_well_as_its_token() {
    let own = TlsIdentity::self_signed(&["advertiser"]).unwrap();
    let stranger = TlsIdentity::self_signed(&["advertiser"]).unwrap();
    let pin = hex::encode(digest_of_pem(&own.cert_pem).unwrap());
    let fx = Fixture::new(5).edited(|toml| {
        let token = format!("token_sha256 = \"{}\"", sha256_hex(ADVERTISER_TOKEN));
        toml.replace(&token, &format!("{token}\nclient_cert_sha256 = \"{pin}\""))
    });
    let server_tls = TlsIdentity::self_signed(&["localhost", "127.0.0.1"]).unwrap();
    let server = start_server(&fx, Limits::default(), Some(server_tls.clone())).await;
    let query = async |identity: Option<&TlsIdentity>| {
        run_query_tls(&fx, &server, &server_tls, identity, BY_CAMPAIGN).await
    };

    // The token alone: refused, and the message says what is missing.
    match query(None).await {
        Err(ClientError::Remote(remote)) => {
            assert_eq!(remote.code, Code::Unauthenticated, "{remote}");
            assert!(
                remote.to_string().contains("client certificate"),
                "{remote}"
            );
        }
        other => panic!("expected UNAUTHENTICATED, got {other:?}"),
    }
    // The token with a certificate the collaboration does not pin: the handshake refuses it.
    assert!(query(Some(&stranger)).await.is_err());
    // Nothing of either attempt reached a session.
    assert!(server.state.entries(None, None).unwrap().is_empty());

    // The token with the pinned certificate: the exact answer.
    let (want, want_suppressed) = fx.plain_by_campaign();
    let outcome = query(Some(&own)).await.expect("token and certificate");
    assert_exact(&outcome.result, &want, want_suppressed);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ca_server_needs_a_certificate_of_that_ca_as_well_as_the_token() {
    let partners = CertificateAuthority::new("partners");
    // Same name, another key: its certificates do not chain to `partners`.
    let impostor = CertificateAuthority::new("partners");
    let server_tls = TlsIdentity::self_signed(&["localhost", "127.0.0.1"]).unwrap();
    let serve = async |fx: &Fixture| {
        let state = Arc::new(StateDb::open(fx.path("state.db")).unwrap());
        let mut config = publisher_config(fx, Limits::default(), Some(server_tls.clone()), state);
        config.client_ca = Some(partners.cert_pem());
        serve_in_process(config).await
    };
    let fx = Fixture::new(5);
    let server = serve(&fx).await;
    let query = async |identity: Option<&TlsIdentity>| {
        run_query_tls(&fx, &server, &server_tls, identity, BY_CAMPAIGN).await
    };

    // The token alone, or with a certificate of another CA (or a self-signed one): the handshake
    // fails, and the server never sees a call.
    // The client says what the server most likely wants.
    let self_signed = TlsIdentity::self_signed(&["advertiser"]).unwrap();
    for (identity, hint) in [
        (None, "give --tls-cert and --tls-key"),
        (
            Some(&impostor.issue_client("advertiser")),
            "it may not accept your client certificate",
        ),
        (
            Some(&self_signed),
            "it may not accept your client certificate",
        ),
    ] {
        match query(identity).await {
            Err(error @ ClientError::Transport { .. }) => {
                assert!(error.to_string().contains(hint), "{error}")
            }
            Err(error) => panic!("expected a failed connection, got {error:?}"),
            Ok(outcome) => panic!("a query without a certificate of the CA ran: {outcome:?}"),
        }
    }
    assert!(server.state.entries(None, None).unwrap().is_empty());

    // A certificate of the CA does not replace the token.
    let own = partners.issue_client("advertiser");
    let mut config = advertiser_client_config(format!("https://localhost:{}", server.addr.port()));
    config.ca_pem = Some(server_tls.cert_pem.clone());
    config.identity = Some(own.clone());
    config.token = cleanroom_service::BearerToken::new("not-a-member-token").unwrap();
    let mut client = cleanroom_service::Client::connect(&config).await.unwrap();
    match client.server_info().await {
        Err(ClientError::Remote(remote)) => assert_eq!(remote.code, Code::Unauthenticated),
        other => panic!("expected UNAUTHENTICATED, got {other:?}"),
    }

    // The token with a certificate of the CA: the exact answer.
    let (want, want_suppressed) = fx.plain_by_campaign();
    let outcome = query(Some(&own)).await.expect("token and certificate");
    assert_exact(&outcome.result, &want, want_suppressed);
    server.stop().await;

    // A pin still applies on top of the CA: another certificate of the CA is refused for the
    // pinned member, its pinned one (issued by the CA) admits it.
    let pinned = partners.issue_client("advertiser");
    let pin = hex::encode(digest_of_pem(&pinned.cert_pem).unwrap());
    let fx = Fixture::new(5).edited(|toml| {
        let token = format!("token_sha256 = \"{}\"", sha256_hex(ADVERTISER_TOKEN));
        toml.replace(&token, &format!("{token}\nclient_cert_sha256 = \"{pin}\""))
    });
    let server = serve(&fx).await;
    let (want, want_suppressed) = fx.plain_by_campaign();
    match run_query_tls(&fx, &server, &server_tls, Some(&own), BY_CAMPAIGN).await {
        Err(ClientError::Remote(remote)) => assert_eq!(remote.code, Code::Unauthenticated),
        other => panic!("expected UNAUTHENTICATED, got {other:?}"),
    }
    let outcome = run_query_tls(&fx, &server, &server_tls, Some(&pinned), BY_CAMPAIGN)
        .await
        .expect("the pinned certificate");
    assert_exact(&outcome.result, &want, want_suppressed);
    server.stop().await;
}
