//! The agreement check at the session start, against the real service: a client whose terms
//! differ from the server's (another normalization, another collaboration file whose id it
//! would hash into its points) is refused before any protocol message, with what differs
//! named, and the refusal does not depend on the server's data.

use cleanroom_service::client::ClientError;
use cleanroom_service::proto::run_session_response;
use cleanroom_service::{Decision, Limits};
use cleanroom_testkit::*;
use tonic::Code;

/// The fixture with every identifier normalized with `none` instead of `email`.
fn without_normalization() -> Fixture {
    Fixture::new(3).edited(|toml| {
        let edited = toml.replace(r#"normalize = "email""#, r#"normalize = "none""#);
        assert_ne!(edited, toml, "the fixture normalizes emails");
        edited
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_another_normalization_is_refused_before_any_protocol_message() {
    let server_fx = Fixture::new(3);
    let server = start_server(&server_fx, Limits::default(), None).await;
    let url = format!("http://{}", server.addr);
    // The honest answer first, so the refusal below is about the terms alone.
    run_query(&server_fx, url.clone(), BY_CAMPAIGN)
        .await
        .expect("the same terms run");

    let client_fx = without_normalization();
    let error = run_query(&client_fx, url, BY_CAMPAIGN)
        .await
        .expect_err("different normalizations must not run");
    let ClientError::Remote(remote) = &error else {
        panic!("expected the server's refusal, got {error:?}");
    };
    assert_eq!(remote.code, Code::FailedPrecondition, "{remote}");
    for named in [
        "normalization of the matcher's identifier: \"email\" here, \"none\" at the client",
        "normalization of the receiver's identifier: \"email\" here, \"none\" at the client",
        "collaboration file: sha256",
        "plan of the query: sha256",
    ] {
        assert!(remote.message.contains(named), "{named:?} not in {remote}");
    }
    let entries = server.state.entries(None, None).unwrap();
    let refused = entries
        .iter()
        .find(|e| e.decision == Decision::Refused)
        .expect("the refusal is audited");
    assert!(refused.reason.contains("normalization"), "{refused:?}");
    assert_eq!(refused.matcher_rows, 0, "no data of the server was read");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_names_the_collaboration_but_hashes_another_is_refused_alike_whatever_the_data()
 {
    // Two servers with the same collaboration and different tables: what a client with another
    // collaboration file (id "elsewhere") sees must not depend on which one it talks to.
    let fx = Fixture::new(3);
    let other_data = Fixture::new(3);
    let mut rng = Rng(7);
    let fewer = impressions(&mut rng);
    fewer.write(&other_data.path("impressions.csv"));
    let servers = [
        start_server(&fx, Limits::default(), None).await,
        start_server(&other_data, Limits::default(), None).await,
    ];
    let elsewhere = Fixture::new(3).with_id("elsewhere");
    let mut seen = Vec::new();
    for server in &servers {
        let mut client = raw_client(server.addr, Some(ADVERTISER_TOKEN)).await;
        // The start names the server's collaboration, as a client written from PROTOCOL.md
        // did, but its terms are those of its own file.
        let mut start = start_message(&fx, "advertiser", BY_CAMPAIGN, "conversions");
        if let Some(cleanroom_service::proto::run_session_request::Message::Start(s)) =
            &mut start.message
        {
            s.agreement = cleanroom_testkit::client::honest_agreement(
                &elsewhere.collaboration,
                "advertiser",
                BY_CAMPAIGN,
            );
        }
        match raw_open(&mut client, start).await {
            Err(status) => seen.push((status.code(), status.message().to_owned())),
            Ok((_tx, mut inbound)) => match inbound.message().await {
                Err(status) => seen.push((status.code(), status.message().to_owned())),
                Ok(Some(m)) => panic!(
                    "the server answered {:?}",
                    m.message
                        .map(|m| matches!(m, run_session_response::Message::Accepted(_)))
                ),
                Ok(None) => panic!("the server ended the call without a status"),
            },
        }
    }
    assert_eq!(seen[0], seen[1], "the refusal depends on the server's data");
    let (code, message) = &seen[0];
    assert_eq!(*code, Code::FailedPrecondition, "{message}");
    assert!(message.contains("collaboration file: sha256"), "{message}");
    assert!(message.contains("plan of the query: sha256"), "{message}");
    for server in servers {
        let entries = server.state.entries(None, None).unwrap();
        assert!(entries.iter().all(|e| e.decision == Decision::Refused));
        assert!(entries.iter().all(|e| e.matcher_rows == 0));
        server.stop().await;
    }
}
