//! Result receivers against the real service: a query's result goes to the members it names
//! (by default its querier), a receiver other than the querier fetches it with its own token
//! and opens it with its own key, and nobody else learns anything of it — the querier that is
//! not a receiver included.

use cleanroom_psi::sealed::OpeningKey;
use cleanroom_service::client::ClientError;
use cleanroom_service::proto::run_session_request;
use cleanroom_service::{BearerToken, Client, ClientConfig, Decision, DeliveryError, Limits};
use cleanroom_testkit::*;
use tonic::Code;

/// The fixture where the analyst receives results with a result key (whose secret half is
/// returned), and the advertiser may receive them too or not.
fn fixture(advertiser_receives: bool) -> (Fixture, OpeningKey) {
    Fixture::new(3).with_analyst_key(advertiser_receives)
}

fn analyst_config(url: String) -> ClientConfig {
    ClientConfig::new(url, BearerToken::new(ANALYST_TOKEN).unwrap())
}

fn analyst() -> Vec<String> {
    vec!["analyst".to_owned()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_result_goes_only_to_the_named_receiver_exactly() {
    let (fx, key) = fixture(false);
    let server = start_server(&fx, Limits::default(), None).await;
    let url = format!("http://{}", server.addr);

    let outcome = run_query_for(&fx, url.clone(), BY_CAMPAIGN, &analyst())
        .await
        .unwrap();
    // The querier learns nothing of the result: no row, no count.
    assert!(!outcome.received);
    assert!(outcome.result.rows.is_empty());
    assert_eq!(outcome.result.suppressed_rows, 0);
    assert_eq!(
        (
            outcome.summary.released_rows,
            outcome.summary.suppressed_rows
        ),
        (0, 0)
    );
    assert_eq!(outcome.summary.delivered_to, analyst());

    // The analyst fetches it with its own token and opens it with its own key: exact.
    let (want, want_suppressed) = fx.plain_by_campaign();
    let session = outcome.summary.session_id.clone();
    let mut client = Client::connect(&analyst_config(url.clone())).await.unwrap();
    let fetched = client
        .fetch_result(&fx.collaboration, "analyst", &session, &key)
        .await
        .unwrap();
    assert_exact(&fetched.result, &want, want_suppressed);
    assert_eq!(fetched.querier, "advertiser");
    assert_eq!(fetched.sql, BY_CAMPAIGN);

    // The audit has the real release, charged to the querier once.
    let entry = server.settled_entry(&session).await;
    assert_eq!(entry.decision, Decision::Released);
    assert_eq!(entry.released_rows, want.len() as u64);
    assert_eq!(entry.suppressed_rows, want_suppressed);

    // Another key does not open it.
    let error = client
        .fetch_result(
            &fx.collaboration,
            "analyst",
            &session,
            &OpeningKey::generate(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, ClientError::Delivery(DeliveryError::Sealed(_))),
        "{error:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_querier_that_receives_too_and_the_other_receiver_get_the_same_rows() {
    let (fx, key) = fixture(true);
    let server = start_server(&fx, Limits::default(), None).await;
    let url = format!("http://{}", server.addr);
    let both = vec!["advertiser".to_owned(), "analyst".to_owned()];
    let outcome = run_query_for(&fx, url.clone(), EU_BY_CHANNEL, &both)
        .await
        .unwrap();
    assert!(outcome.received);
    assert!(!outcome.result.rows.is_empty());
    assert_eq!(outcome.summary.delivered_to, analyst());
    let mut client = Client::connect(&analyst_config(url)).await.unwrap();
    let fetched = client
        .fetch_result(
            &fx.collaboration,
            "analyst",
            &outcome.summary.session_id,
            &key,
        )
        .await
        .unwrap();
    assert_eq!(fetched.result, outcome.result);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_else_can_tell_a_kept_result_from_no_result() {
    let (fx, _key) = fixture(false);
    let server = start_server(&fx, Limits::default(), None).await;
    let url = format!("http://{}", server.addr);
    let outcome = run_query_for(&fx, url.clone(), BY_CAMPAIGN, &analyst())
        .await
        .unwrap();
    let session = outcome.summary.session_id;
    // The querier (not a receiver) and the publisher (the server's own member) ask for the
    // result that exists and for one that does not: each sees the same answer both times.
    for token in [ADVERTISER_TOKEN, PUBLISHER_TOKEN] {
        let mut seen = Vec::new();
        for id in [session.as_str(), "0123456789abcdef01234567"] {
            let mut client = raw_client(server.addr, Some(token)).await;
            let status = client
                .fetch_result(cleanroom_service::proto::FetchResultRequest {
                    session_id: id.to_owned(),
                })
                .await
                .expect_err("no result for this member");
            seen.push((status.code(), status.message().to_owned()));
        }
        assert_eq!(
            seen[0], seen[1],
            "{token}: a kept result is distinguishable"
        );
        assert_eq!(seen[0].0, Code::NotFound);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_are_checked_before_any_data_moves() {
    let (fx, _key) = fixture(false);
    let server = start_server(&fx, Limits::default(), None).await;
    let url = format!("http://{}", server.addr);
    // A querier without receive_results that names no receiver: refused locally...
    let refused = run_query_for(&fx, url.clone(), BY_CAMPAIGN, &[])
        .await
        .unwrap_err();
    let ClientError::Refused(refusal) = &refused else {
        panic!("expected a local refusal, got {refused:?}");
    };
    assert!(
        refusal
            .codes()
            .iter()
            .any(|c| c.as_str() == "missing_receive_results_ability")
    );
    // ...and a receiver without a result key, or unknown.
    for (receiver, code) in [
        ("publisher", "missing_receive_results_ability"),
        ("nobody", "unknown_receiver"),
    ] {
        let error = run_query_for(&fx, url.clone(), BY_CAMPAIGN, &[receiver.to_owned()])
            .await
            .unwrap_err();
        let ClientError::Refused(refusal) = &error else {
            panic!("expected a local refusal, got {error:?}");
        };
        assert!(
            refusal.codes().iter().any(|c| c.as_str() == code),
            "{receiver}: {refusal}"
        );
    }
    // A client that names a receiver without sealing it its keys is refused by the server.
    let mut client = raw_client(server.addr, Some(ADVERTISER_TOKEN)).await;
    let mut start = start_message(&fx, "advertiser", BY_CAMPAIGN, "conversions");
    if let Some(run_session_request::Message::Start(s)) = &mut start.message {
        s.receivers = analyst();
    }
    let status = match raw_open(&mut client, start).await {
        Err(status) => status,
        Ok((_tx, mut inbound)) => inbound
            .message()
            .await
            .expect_err("the server accepted a start without sealed keys"),
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("sealed box"), "{status:?}");
    for entry in server.state.entries(None, None).unwrap() {
        assert_eq!(entry.decision, Decision::Refused);
        assert_eq!(entry.matcher_rows, 0);
    }
    server.stop().await;
}

/// A querier whose table is larger than it holds in memory asks for buckets and leaves its
/// keys for the other receivers out of the start: it sends them once its group sizes are
/// known, after the job's last bucket, or right after the acceptance when the server makes
/// one session of it. Either way the analyst fetches exactly the plain result, and the
/// advertiser gets it too only when it is a receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_querier_split_into_buckets_delivers_to_other_receivers_exactly() {
    let job = Limits {
        bucket_rows: 100,
        min_bucket_rows: 20,
        ..Limits::default()
    };
    // No bucket may be expected to hold fewer rows than either table has: one session.
    let one_session = Limits {
        min_bucket_rows: 1 << 30,
        ..job
    };
    for advertiser_receives in [false, true] {
        let (fx, key) = fixture(advertiser_receives);
        let (want, want_suppressed) = fx.plain_by_campaign();
        for (limits, is_job) in [(job, true), (one_session, false)] {
            let server = start_server(&fx, limits, None).await;
            let url = format!("http://{}", server.addr);
            let work = tempfile::tempdir().unwrap();
            let mut config = advertiser_client_config(url.clone());
            config.bucket_rows = 100;
            config.work_dir = Some(work.path().to_owned());
            let receivers = match advertiser_receives {
                true => vec!["advertiser".to_owned(), "analyst".to_owned()],
                false => analyst(),
            };
            let data = fx.advertiser_data();
            let query = cleanroom_service::Query {
                collaboration: &fx.collaboration,
                member: "advertiser",
                sql: BY_CAMPAIGN,
                data: &data,
                receivers: &receivers,
            };
            let mut client = Client::connect(&config).await.unwrap();
            let outcome = client.run_query(query, None).await.unwrap();
            let case = format!("receives {advertiser_receives}, job {is_job}");
            assert_eq!(outcome.accepted.job.is_some(), is_job, "{case}");
            assert_eq!(outcome.summary.delivered_to, analyst(), "{case}");
            assert_eq!(outcome.received, advertiser_receives, "{case}");

            let mut analyst_client = Client::connect(&analyst_config(url)).await.unwrap();
            let session = outcome.summary.session_id.clone();
            let fetched = analyst_client
                .fetch_result(&fx.collaboration, "analyst", &session, &key)
                .await
                .unwrap();
            assert_exact(&fetched.result, &want, want_suppressed);
            if advertiser_receives {
                assert_eq!(outcome.result, fetched.result, "{case}");
            } else {
                assert!(outcome.result.rows.is_empty(), "{case}");
                assert_eq!(outcome.summary.released_rows, 0, "{case}");
            }
            let entry = server.settled_entry(&session).await;
            assert_eq!(entry.decision, Decision::Released, "{case}");
            assert_eq!(entry.released_rows, want.len() as u64, "{case}");
            assert_eq!(entry.buckets > 1, is_job, "{case}");
            server.stop().await;
        }
    }
}
