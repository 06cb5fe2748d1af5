//! List queries as jobs of buckets through the real service (issue 18, docs/scale-out.md §1):
//! the in-process publisher with small buckets, the advertiser's real [`Client`], and a querier
//! attacker that plays buckets by hand. Rows are compared exactly with the join computed in the
//! clear over the same CSV files.

use std::collections::BTreeMap;
use std::path::Path;

use cleanroom_psi::bucket::BucketKey;
use cleanroom_psi::{
    Limits as PsiLimits, ListMessage, ListQuerier, ListQuerierTable, Normalization, WireMessage,
};
use cleanroom_service::client::{ClientError, Progress, Query};
use cleanroom_service::proto::{
    PsiMessage, RunSessionRequest, RunSessionResponse, SessionStart, TableDescriptor,
    run_session_request, run_session_response,
};
use cleanroom_service::{BearerToken, Client, ClientConfig, Decision, Limits, QueryOutcome};
use cleanroom_testkit::list::*;
use cleanroom_testkit::{ADVERTISER_TOKEN, Running, honest_agreement, raw_client, raw_open};
use tokio::sync::mpsc;
use tonic::Streaming;

/// Buckets of 200 rows, each side's expected to hold at least 20: the publisher's 500
/// subscribers make 4 buckets.
fn job_limits() -> Limits {
    Limits {
        bucket_rows: 200,
        min_bucket_rows: 20,
        ..Limits::default()
    }
}

fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_job_lists_exactly_the_plain_join() {
    let fx = ListFixture::new();
    let (server_work, client_work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let server = start_list_server_with(&fx, job_limits(), Some(server_work.path())).await;
    let want = fx.plain_overlap();
    // The publisher's own need (4 buckets), and the advertiser's request for more (its 401
    // rows at 100 per bucket: 8).
    for (client_rows, buckets) in [(1 << 18, 4u32), (100, 8)] {
        let outcome = list_query_with(&fx, server.addr, OVERLAP, |config| {
            config.bucket_rows = client_rows;
            config.work_dir = Some(client_work.path().to_owned());
        })
        .await
        .unwrap();
        let job = outcome.accepted.job.as_ref().expect("a job of buckets");
        assert_eq!(job.buckets, buckets);
        assert_eq!(sorted(outcome.result.rows.clone()), want);
        assert_eq!(outcome.unopened, 0);
        assert_eq!(outcome.rows, 401);

        let entry = server.settled_entry(&outcome.summary.session_id).await;
        assert_eq!(entry.decision, Decision::Released);
        assert_eq!(
            (entry.buckets, entry.buckets_done),
            (u64::from(buckets), u64::from(buckets))
        );
        assert_eq!(entry.matcher_rows, 502);
        assert_eq!(entry.bytes_received, outcome.counters.bytes_sent);
        assert_eq!(entry.bytes_sent, outcome.counters.bytes_received);
        // The items and the withheld evaluations are gone on both sides once the job ended.
        assert!(is_empty(server_work.path()) && is_empty(client_work.path()));
    }
    // A DISTINCT, filtered and ordered list: the same rows as one session gives.
    let one = start_list_server(&fx).await;
    let whole = list_query(&fx, one.addr, WEEKLY).await;
    assert!(whole.accepted.job.is_none());
    let split = list_query(&fx, server.addr, WEEKLY).await;
    assert!(split.accepted.job.is_some());
    assert_eq!(split.result.rows, whole.result.rows);
    one.stop().await;
    server.stop().await;
}

/// The advertiser's raw session start of a list over `rows` customer rows.
fn list_start(fx: &ListFixture, rows: u64) -> RunSessionRequest {
    RunSessionRequest {
        message: Some(run_session_request::Message::Start(SessionStart {
            collaboration_id: fx.collaboration.id().to_owned(),
            member: "advertiser".to_owned(),
            sql: OVERLAP.to_owned(),
            table: Some(TableDescriptor {
                name: "customers".to_owned(),
                columns: fx.customers.header.clone(),
                rows,
                skipped_rows: 0,
            }),
            agreement: honest_agreement(&fx.collaboration, "advertiser", OVERLAP),
            receivers: Vec::new(),
            result_keys: Vec::new(),
            buckets: 4,
            job_id: String::new(),
            chain_context: Vec::new(),
        })),
    }
}

/// How the attacker ends its job early.
#[derive(Debug, Clone, Copy)]
enum Deviation {
    /// It plays bucket 0 honestly, then hangs up.
    DropAfterFirstBucket,
    /// It plays bucket 0 honestly, then sends bucket 0's points again (not its hello).
    RepeatFirstBucket,
}

/// What the attacker sees: the kinds of the protocol messages it got, the status its call
/// ended with (none when it hung up), and its audit entry (ids, times and bytes blanked: the
/// bytes follow the publisher's bucket sizes under the job's fresh key).
#[derive(Debug, PartialEq)]
struct View {
    received: Vec<&'static str>,
    status: Option<(tonic::Code, String)>,
    entry: (Decision, u64, u64, String),
}

fn psi(payload: Vec<u8>) -> RunSessionRequest {
    RunSessionRequest {
        message: Some(run_session_request::Message::Psi(PsiMessage { payload })),
    }
}

/// Runs `querier` over the raw streams until it is finished; returns the points it sent and
/// the kinds of the messages it received.
async fn play_bucket(
    mut querier: ListQuerier,
    tx: &mpsc::Sender<RunSessionRequest>,
    inbound: &mut Streaming<RunSessionResponse>,
    received: &mut Vec<&'static str>,
) -> Vec<Vec<u8>> {
    let mut sent = Vec::new();
    loop {
        while let Some(message) = querier.poll_message() {
            sent.push(message.encode());
            let _ = tx.send(psi(message.encode())).await;
        }
        if querier.is_finished() {
            return sent;
        }
        match inbound.message().await.unwrap() {
            Some(RunSessionResponse {
                message: Some(run_session_response::Message::Psi(PsiMessage { payload })),
            }) => {
                let message = ListMessage::decode(&payload).unwrap();
                received.push(message.kind());
                querier.handle_message(message).unwrap();
            }
            other => panic!("unexpected {other:?} within a bucket"),
        }
    }
}

/// A querier that asks a list job about `ids` (all in bucket 0 of the job's key), plays
/// bucket 0 and then deviates.
async fn attack(fx: &ListFixture, server: &Running, ids: &[String], how: Deviation) -> View {
    let mut client = raw_client(server.addr, Some(ADVERTISER_TOKEN)).await;
    let (tx, mut inbound) = raw_open(&mut client, list_start(fx, 401)).await.unwrap();
    let accepted = match inbound.message().await.unwrap().and_then(|m| m.message) {
        Some(run_session_response::Message::Accepted(a)) => a,
        other => panic!("expected an acceptance, got {other:?}"),
    };
    let job = accepted.job.clone().expect("a job");
    let key = BucketKey::from_bytes(job.bucket_key.clone().try_into().unwrap());
    let domain = fx
        .collaboration
        .plan("advertiser", OVERLAP)
        .unwrap()
        .domain();
    let mut table = ListQuerierTable::new(Normalization::Email);
    for id in ids {
        if key.bucket(&domain, id, job.buckets) == 0 {
            table.push(id);
        }
    }
    let querier = ListQuerier::for_bucket(
        &domain,
        table,
        2,
        PsiLimits::default(),
        Box::new(std::io::sink()),
    );
    let mut received = Vec::new();
    let sent = play_bucket(querier, &tx, &mut inbound, &mut received).await;
    // The deviation comes once the server holds bucket 0 (its evaluations withheld on disk).
    for _ in 0..400 {
        let entry = server.state.entry(&accepted.session_id).unwrap().unwrap();
        if entry.buckets_done == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let status = match how {
        Deviation::DropAfterFirstBucket => {
            drop((tx, inbound));
            None
        }
        Deviation::RepeatFirstBucket => {
            // The points again, without their hello: bucket 1's provider gets points it was
            // not told of.
            for message in sent.into_iter().skip(1) {
                let _ = tx.send(psi(message)).await;
            }
            // Whatever comes before the end is bucket 1's provider messages.
            let status = loop {
                match inbound.message().await {
                    Ok(Some(RunSessionResponse {
                        message: Some(run_session_response::Message::Psi(PsiMessage { payload })),
                    })) => received.push(ListMessage::decode(&payload).unwrap().kind()),
                    Ok(other) => panic!("unexpected {other:?}"),
                    Err(status) => break status,
                }
            };
            Some((
                status.code(),
                status.message().replace(&accepted.session_id, "<session>"),
            ))
        }
    };
    let entry = server.settled_entry(&accepted.session_id).await;
    View {
        received,
        status,
        entry: (
            entry.decision,
            entry.released_rows,
            entry.buckets_done,
            entry.reason,
        ),
    }
}

/// A list job releases nothing of a bucket on its own: a querier that stops after its first
/// bucket, or sends that bucket's points again, gets no evaluation of any bucket, and sees the
/// same thing whether the identifiers it asks about are the publisher's or strangers'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_querier_that_leaves_a_list_job_early_gets_no_evaluation_alike() {
    let fx = ListFixture::new();
    let work = tempfile::tempdir().unwrap();
    let server = start_list_server_with(&fx, job_limits(), Some(work.path())).await;
    let theirs: Vec<String> = (0..300).map(|n| format!("member{n}@example.org")).collect();
    let strangers: Vec<String> = (0..300)
        .map(|n| format!("stranger{n}@example.net"))
        .collect();
    for how in [
        Deviation::DropAfterFirstBucket,
        Deviation::RepeatFirstBucket,
    ] {
        let a = attack(&fx, &server, &theirs, how).await;
        let b = attack(&fx, &server, &strangers, how).await;
        assert!(
            !a.received.contains(&"ListProviderEvaluations"),
            "{how:?}: {a:?}"
        );
        assert_ne!(a.entry.0, Decision::Released, "{how:?}");
        assert_eq!((a.entry.1, a.entry.2), (0, 1), "{how:?}: {a:?}");
        assert_eq!(a, b, "{how:?}");
        if let Deviation::RepeatFirstBucket = how {
            assert!(a.status.is_some());
        }
    }
    // The job's files went with it.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(is_empty(work.path()));
    server.stop().await;
}

/// Runs the advertiser's list [`OVERLAP`] as job `job_id` (8 buckets asked, files under
/// `work`), dropping it when bucket `stop_after` is about to begin; returns its session id and
/// outcome (`None`: stopped).
async fn named_list_query(
    fx: &ListFixture,
    server: &Running,
    job_id: &str,
    work: &Path,
    stop_after: Option<u32>,
) -> (String, Option<Result<QueryOutcome, ClientError>>) {
    let mut config = ClientConfig::new(
        format!("http://{}", server.addr),
        BearerToken::new(ADVERTISER_TOKEN).unwrap(),
    );
    config.bucket_rows = 100;
    config.work_dir = Some(work.to_owned());
    config.job_id = Some(job_id.to_owned());
    let mut client = Client::connect(&config).await.unwrap();
    let data = BTreeMap::from([("customers".to_owned(), fx.path("customers.csv").into())]);
    let query = Query {
        collaboration: &fx.collaboration,
        member: "advertiser",
        sql: OVERLAP,
        data: &data,
        receivers: &[],
    };
    let session = std::sync::Mutex::new(String::new());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stop = std::sync::Mutex::new(Some(stop));
    let hook = |p: Progress<'_>| match p {
        Progress::Accepted { session_id, .. } => {
            *session.lock().unwrap() = session_id.to_owned();
        }
        Progress::Bucket { done, .. } if Some(done) == stop_after => {
            if let Some(stop) = stop.lock().unwrap().take() {
                let _ = stop.send(());
            }
        }
        _ => {}
    };
    let outcome = tokio::select! {
        outcome = client.run_query(query, Some(&hook)) => Some(outcome),
        _ = stopped => None,
    };
    let session = session.lock().unwrap().clone();
    (session, outcome)
}

/// The files under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        match path.is_dir() {
            true => files.extend(files_under(&path)),
            false => files.push(path),
        }
    }
    files
}

/// A named list job whose client stops in the middle resumes under the same name: the server
/// goes on from the buckets it holds (their evaluations kept on its disk), the client opens
/// those from the buckets it saved, and the list is exactly the plain join, released once in
/// one audit entry. Its release is not kept: asked again, the job has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_list_job_resumes_where_its_client_stopped() {
    let fx = ListFixture::new();
    let (server_work, client_work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let server = start_list_server_with(&fx, job_limits(), Some(server_work.path())).await;

    let (id, outcome) =
        named_list_query(&fx, &server, "overlap-1", client_work.path(), Some(4)).await;
    assert!(outcome.is_none(), "stopped");
    let entry = server.settled_entry(&id).await;
    assert_eq!(entry.decision, Decision::Interrupted, "{}", entry.reason);
    assert_eq!(entry.buckets, 8);
    assert!((3..8).contains(&entry.buckets_done), "{entry:?}");
    // The server keeps the evaluations of the buckets it holds; the client its saved buckets,
    // owner-only, at least as many.
    let evaluations = files_under(server_work.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".evaluations/evaluations-"))
        .count() as u64;
    assert!(evaluations >= entry.buckets_done, "{evaluations}");
    let states: Vec<_> = files_under(client_work.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "state"))
        .collect();
    assert!(states.len() as u64 >= entry.buckets_done, "{states:?}");
    #[cfg(unix)]
    for state in &states {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{state:?}");
    }

    let (again, outcome) =
        named_list_query(&fx, &server, "overlap-1", client_work.path(), None).await;
    let outcome = outcome.unwrap().unwrap();
    assert_eq!(again, id, "the job's own entry");
    let done = outcome.accepted.job.as_ref().unwrap().buckets_done;
    assert_eq!(u64::from(done), entry.buckets_done);
    assert_eq!(sorted(outcome.result.rows.clone()), fx.plain_overlap());
    let entry = server.settled_entry(&id).await;
    assert_eq!(entry.decision, Decision::Released);
    assert_eq!(entry.buckets_done, 8);
    assert_eq!(server.state.entries(None, Some(100)).unwrap().len(), 1);
    // Nothing of the job is left on either side.
    assert!(
        is_empty(server_work.path()),
        "{:?}",
        files_under(server_work.path())
    );
    assert!(
        is_empty(client_work.path()),
        "{:?}",
        files_under(client_work.path())
    );

    // Asked again under its name, the job has ended: its release is not kept.
    let (_, outcome) = named_list_query(&fx, &server, "overlap-1", client_work.path(), None).await;
    match outcome.unwrap() {
        Err(ClientError::Remote(remote)) => {
            assert!(remote.message.contains("not kept"), "{remote}");
        }
        other => panic!("a list job released twice: {other:?}"),
    }
    server.stop().await;
}
