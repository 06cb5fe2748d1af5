//! Differential privacy, budgets and query limits over the real gRPC service on loopback: a
//! budget charged with each release, refused with RESOURCE_EXHAUSTED once spent and still spent
//! after a restart; a scripted differencing attempt that gets noisy answers and then refusals;
//! a querier set under the threshold refused by the server; query limits. (`cleanroom budget`,
//! `cleanroom query` and a restart through the binary: the root `tests/service_privacy.rs`; the
//! fixture: `cleanroom_testkit::privacy`.)

use std::collections::BTreeSet;
use std::time::Duration;

use cleanroom_psi::{Limits as PsiLimits, Receiver, WireMessage};
use cleanroom_service::Decision;
use cleanroom_service::client::ClientError;
use cleanroom_service::proto::{PsiMessage, RunSessionRequest, run_session_request};
use cleanroom_testkit::{raw_client, raw_open, refusal_codes};
use tonic::Code;

use cleanroom_testkit::privacy::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_differencing_attempt_gets_noisy_answers_then_refusals() {
    let setup = Setup::new(PRIVATE, BOUNDS);
    let server = Server::start(&setup, &setup.path("state.db")).await;
    Setup::write_conversions(setup.dir.path(), "with_alice.csv", 30..90, true);

    // The advertiser asks for its buyers, then for the same set plus Alice. The exact answers
    // would differ by 1 exactly when Alice is in the publisher's list (she is); the released
    // ones carry noise of scale 2/0.4 = 5 each (ε is shared with the publisher's set size), and
    // say so.
    let without = query(&setup, &server, COUNT, "conversions.csv")
        .await
        .unwrap();
    let with = query(&setup, &server, COUNT, "with_alice.csv")
        .await
        .unwrap();
    for outcome in [&without, &with] {
        let privacy = outcome.accepted.privacy.as_ref().unwrap();
        assert_eq!(privacy.outputs[0].kind, "count");
        assert_eq!(privacy.outputs[0].scale, 5.0);
        assert!(privacy.outputs[0].interval95 >= 10);
    }
    // Averaging the noise away takes more queries: the budget refuses them.
    let (code, message) = remote(
        query(&setup, &server, COUNT, "with_alice.csv")
            .await
            .unwrap_err(),
    );
    assert_eq!(code, Code::ResourceExhausted, "{message}");

    // A set too small to hide anyone ({Alice, one other}) is refused locally by the client...
    let dir = setup.dir.path();
    std::fs::write(
        dir.join("tiny.csv"),
        "email,amount\nalice@example.com,1\nuser31@example.com,1\n",
    )
    .unwrap();
    match query(&setup, &server, COUNT, "tiny.csv").await {
        Err(ClientError::Refused(refusal)) => {
            assert_eq!(refusal.codes()[0].as_str(), "querier_set_too_small")
        }
        other => panic!("expected a local refusal, got {other:?}"),
    }
    // ...and by the server, for a client that skips the check: from the rows it declares, or
    // from the sizes its psi receiver announces (a fresh server state, so that the budget
    // check does not come first).
    server.stop().await;
    let server = Server::start(&setup, &setup.path("fresh.db")).await;
    let plan = setup.collaboration.plan("advertiser", COUNT).unwrap();
    let header = vec!["email".to_owned(), "amount".to_owned()];
    let rows = vec![
        vec!["alice@example.com".to_owned(), "1".to_owned()],
        vec!["user31@example.com".to_owned(), "1".to_owned()],
    ];
    let table = plan
        .receiver_table(&header, cleanroom_rules::text_rows(rows))
        .unwrap();
    let start = |rows: u64| RunSessionRequest {
        message: Some(run_session_request::Message::Start(
            cleanroom_service::proto::SessionStart {
                collaboration_id: setup.collaboration.id().to_owned(),
                member: "advertiser".to_owned(),
                sql: COUNT.to_owned(),
                table: Some(cleanroom_service::proto::TableDescriptor {
                    name: "conversions".to_owned(),
                    columns: header.clone(),
                    rows,
                    skipped_rows: 0,
                }),
                agreement: cleanroom_testkit::client::honest_agreement(
                    &setup.collaboration,
                    "advertiser",
                    COUNT,
                ),
                receivers: Vec::new(),
                result_keys: Vec::new(),
                buckets: 0,
                job_id: String::new(),
                chain_context: Vec::new(),
            },
        )),
    };
    let policy = cleanroom_service::Policy::of(&setup.collaboration);
    let charged = || {
        server
            .state
            .standing(&policy, "advertiser")
            .unwrap()
            .queries
    };
    let mut client = raw_client(server.addr(), Some(ADVERTISER_TOKEN)).await;
    // Declaring fewer rows than the threshold is refused at admission: nothing of the
    // provider's data moved, nothing is charged.
    let status = match raw_open(&mut client, start(2)).await {
        Err(status) => status,
        Ok(_) => panic!("a declared set under the threshold must be refused at admission"),
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(refusal_codes(&status), ["querier_set_too_small"]);
    assert_eq!(charged(), 0);
    // Declaring enough rows but announcing two identifiers is refused by the psi matcher, after
    // admission: the noisy hello was sent, so the session is charged like a release.
    let mut receiver = Receiver::new(&plan.domain(), table, PsiLimits::default())
        .with_noise(plan.noise_bounds().unwrap())
        .unwrap();
    let (tx, mut inbound) = raw_open(&mut client, start(100)).await.unwrap();
    while let Some(message) = receiver.poll_message() {
        let payload = message.encode();
        let _ = tx
            .send(RunSessionRequest {
                message: Some(run_session_request::Message::Psi(PsiMessage { payload })),
            })
            .await;
    }
    let status = loop {
        match inbound.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the session ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(refusal_codes(&status), ["querier_set_too_small"]);
    for _ in 0..100 {
        if server.state.entries(None, None).unwrap()[0].decision != Decision::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let entries = server.state.entries(None, None).unwrap();
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|e| e.decision == Decision::Refused));
    assert_eq!(charged(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_limits_hold_without_privacy_and_results_stay_exact() {
    // One query per member in total.
    let setup = Setup::new("[collaboration.limits]\nqueries_per_member = 1", "");
    let server = Server::start(&setup, &setup.path("state.db")).await;
    let outcome = query(&setup, &server, BY_CAMPAIGN, "conversions.csv")
        .await
        .unwrap();
    assert!(outcome.accepted.privacy.is_none());
    // Exact: buyers are users 30..60 of each campaign's parity, revenue their 10 + n.
    let exact: BTreeSet<(String, u64, u64)> = ["a", "b"]
        .iter()
        .enumerate()
        .map(|(parity, c)| {
            let users: Vec<u64> = (30..60).filter(|n| n % 2 == parity as u64).collect();
            (
                c.to_string(),
                users.len() as u64,
                users.iter().map(|n| 10 + n).sum(),
            )
        })
        .collect();
    let got: BTreeSet<(String, u64, u64)> = outcome
        .result
        .rows
        .iter()
        .map(|r| {
            (
                r[0].to_string(),
                integer(&r[1]) as u64,
                integer(&r[2]) as u64,
            )
        })
        .collect();
    assert_eq!(got, exact);
    let standing = outcome.summary.standing.unwrap();
    assert_eq!(
        (standing.queries, standing.queries_per_member),
        (1, Some(1))
    );
    let (code, message) = remote(
        query(&setup, &server, BY_CAMPAIGN, "conversions.csv")
            .await
            .unwrap_err(),
    );
    assert_eq!(code, Code::ResourceExhausted);
    assert!(message.contains("queries_per_member = 1"), "{message}");
    server.stop().await;

    // One query per member per day.
    let setup = Setup::new("[collaboration.limits]\nqueries_per_member_per_day = 1", "");
    let server = Server::start(&setup, &setup.path("state.db")).await;
    query(&setup, &server, COUNT, "conversions.csv")
        .await
        .unwrap();
    let (code, message) = remote(
        query(&setup, &server, COUNT, "conversions.csv")
            .await
            .unwrap_err(),
    );
    assert_eq!(code, Code::ResourceExhausted);
    assert!(message.contains("today"), "{message}");
    server.stop().await;
}
