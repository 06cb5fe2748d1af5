//! Jobs of buckets through the real service (issue 18, PROTOCOL.md 3.6): the in-process
//! publisher with small buckets, the advertiser's real [`Client`] reading its table into
//! bucket files (or splitting it in memory), and a querier attacker that plays each bucket by
//! hand. Results are compared exactly with a plain computation over the same CSV files.

use std::path::Path;
use std::sync::Arc;

use cleanroom_psi::bucket::BucketKey;
use cleanroom_psi::elgamal::ValueKey;
use cleanroom_psi::{
    AggregateMessage, Limits as PsiLimits, Normalization, Receiver, ReceiverTable, WireMessage,
};
use cleanroom_service::client::{ClientError, Query};
use cleanroom_service::proto::{
    LaterResultKeys, PsiMessage, RunSessionRequest, RunSessionResponse, SealedResultKeys,
    run_session_request, run_session_response,
};
use cleanroom_service::{Client, Decision, Limits, QueryOutcome, ServerConfig, StateDb};
use cleanroom_testkit::*;
use tokio::sync::mpsc;
use tonic::{Code, Streaming};

/// Buckets of 100 rows, each side's expected to hold at least 20: the fixture's ~700
/// impressions make 8 buckets.
fn job_limits() -> Limits {
    Limits {
        bucket_rows: 100,
        min_bucket_rows: 20,
        ..Limits::default()
    }
}

/// The publisher's server configuration with `limits`, its bucket files under `work`.
fn server_config(fx: &Fixture, limits: Limits, work: &Path) -> ServerConfig {
    let state = Arc::new(StateDb::open(fx.path(&format!("state-{}.db", rand_suffix()))).unwrap());
    let mut config = publisher_config(fx, limits, None, state);
    config.work_dir = Some(work.to_owned());
    config
}

/// The publisher's server with `limits`, its bucket files under `work`.
async fn server(fx: &Fixture, limits: Limits, work: &Path) -> Running {
    serve_in_process(server_config(fx, limits, work)).await
}

/// The advertiser's `sql`, holding at most `bucket_rows` of its rows in memory, its bucket
/// files under `work`.
async fn query(
    fx: &Fixture,
    server: &Running,
    sql: &str,
    bucket_rows: u64,
    work: &Path,
) -> Result<QueryOutcome, ClientError> {
    let mut client = advertiser(server, bucket_rows, work, None).await?;
    let data = fx.advertiser_data();
    client
        .run_query(advertiser_query(fx, sql, &data), None)
        .await
}

/// The advertiser's client of `server`, holding at most `bucket_rows` of its rows in memory,
/// its bucket files (and a named job's key) under `work`, naming its query `job_id`.
async fn advertiser(
    server: &Running,
    bucket_rows: u64,
    work: &Path,
    job_id: Option<&str>,
) -> Result<Client, ClientError> {
    let mut config = advertiser_client_config(format!("http://{}", server.addr));
    config.bucket_rows = bucket_rows;
    config.work_dir = Some(work.to_owned());
    config.job_id = job_id.map(str::to_owned);
    Client::connect(&config).await
}

/// The advertiser's query `sql` over its tables `data`.
fn advertiser_query<'a>(
    fx: &'a Fixture,
    sql: &'a str,
    data: &'a std::collections::BTreeMap<String, cleanroom_data::TableSpec>,
) -> Query<'a> {
    Query {
        collaboration: &fx.collaboration,
        member: "advertiser",
        sql,
        data,
        receivers: &[],
    }
}

fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_buckets_releases_exactly_what_a_plain_computation_gives() {
    let fx = Fixture::new(5);
    let (server_work, client_work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let server = server(&fx, job_limits(), server_work.path()).await;
    for (sql, (want, want_suppressed)) in [
        (BY_CAMPAIGN, fx.plain_by_campaign()),
        (EU_BY_CHANNEL, fx.plain_eu_by_channel()),
    ] {
        // The advertiser's ~600 rows over 100 in memory: into its bucket files, asking for 8
        // buckets; within memory: split in memory, because the publisher's table is large.
        for bucket_rows in [100, 1 << 20] {
            let outcome = query(&fx, &server, sql, bucket_rows, client_work.path())
                .await
                .unwrap();
            let job = outcome.accepted.job.as_ref().expect("a job of buckets");
            assert_eq!(job.buckets, 8, "{sql}");
            assert_eq!(job.bucket_key.len(), 32);
            assert_exact(&outcome.result, &want, want_suppressed);
            assert_eq!(outcome.summary.released_rows, want.len() as u64);
            assert_eq!(outcome.summary.suppressed_rows, want_suppressed);
            assert_eq!(outcome.rows, fx.conversions.rows.len() as u64);

            let entry = server.settled_entry(&outcome.summary.session_id).await;
            assert_eq!(entry.decision, Decision::Released);
            assert_eq!((entry.buckets, entry.buckets_done), (8, 8));
            // The totals stored after each bucket are spent with the release.
            let id = &outcome.summary.session_id;
            assert_eq!(server.state.job_checkpoint(id).unwrap(), None);
            assert_eq!(entry.released_rows, want.len() as u64);
            if sql == BY_CAMPAIGN {
                // Every impression row is kept (EU_BY_CHANNEL filters them).
                assert_eq!(entry.matcher_rows, fx.impressions.rows.len() as u64);
            }
            assert_eq!(entry.receiver_rows, fx.conversions.rows.len() as u64);
            assert_eq!(entry.bytes_received, outcome.counters.bytes_sent);
            assert_eq!(entry.bytes_sent, outcome.counters.bytes_received);
            // The bucket files are gone on both sides once the job ended.
            assert!(is_empty(server_work.path()) && is_empty(client_work.path()));
        }
    }
    server.stop().await;

    // Buckets that would hold fewer than min_bucket_rows are never made: one session, the
    // same result.
    let whole = Limits {
        min_bucket_rows: 400,
        ..job_limits()
    };
    let server = self::server(&fx, whole, server_work.path()).await;
    let (want, want_suppressed) = fx.plain_by_campaign();
    let outcome = query(&fx, &server, BY_CAMPAIGN, 100, client_work.path())
        .await
        .unwrap();
    assert!(outcome.accepted.job.is_none());
    assert_exact(&outcome.result, &want, want_suppressed);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_buckets_that_are_not_a_power_of_two_is_refused() {
    let fx = Fixture::new(5);
    let work = tempfile::tempdir().unwrap();
    let server = server(&fx, job_limits(), work.path()).await;
    for buckets in [3, 8192] {
        let mut client = raw_client(server.addr, Some(ADVERTISER_TOKEN)).await;
        let Err(status) = raw_open(&mut client, start(&fx, BY_CAMPAIGN, buckets)).await else {
            panic!("{buckets} buckets accepted");
        };
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("power of two"), "{status:?}");
    }
    server.stop().await;
}

/// The advertiser's session start for `sql` with its fixture rows, asking for `buckets`.
fn start(fx: &Fixture, sql: &str, buckets: u32) -> RunSessionRequest {
    let mut start = start_message(fx, "advertiser", sql, "conversions");
    if let Some(run_session_request::Message::Start(s)) = &mut start.message {
        s.buckets = buckets;
    }
    start
}

/// What the querier sees at the end of a job it played by hand: the status it ended with,
/// and its own audit entry (ids and times blanked).
#[derive(Debug, PartialEq)]
struct View {
    code: Code,
    message: String,
    entry: cleanroom_service::proto::AuditEntry,
    /// The buckets done the server announced when the job resumed.
    resumed_at: Option<u32>,
}

/// The acceptance of `start` on a new connection, and the connection.
async fn accept(
    server: &Running,
    start: RunSessionRequest,
) -> (
    cleanroom_service::proto::SessionAccepted,
    mpsc::Sender<RunSessionRequest>,
    Streaming<RunSessionResponse>,
) {
    let mut client = raw_client(server.addr, Some(ADVERTISER_TOKEN)).await;
    let (tx, mut inbound) = raw_open(&mut client, start).await.unwrap();
    match inbound.message().await.unwrap().and_then(|m| m.message) {
        Some(run_session_response::Message::Accepted(a)) => (a, tx, inbound),
        other => panic!("expected an acceptance, got {other:?}"),
    }
}

/// Waits until `session_id`'s entry is `decision` with `done` buckets done.
async fn wait_for(server: &Running, session_id: &str, decision: Decision, done: u64) {
    for _ in 0..400 {
        let entry = server.state.entry(session_id).unwrap().unwrap();
        if entry.decision == decision && entry.buckets_done == done {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("session {session_id} never became {decision} with {done} buckets done");
}

/// What the querier of [`play_job_resumed`] does about the keys of a receiver other than
/// itself.
#[derive(Debug, Clone)]
enum LaterKeys {
    /// It names no other receiver.
    NoOtherReceiver,
    /// It names the analyst too, leaves the keys out of its start and sends these after the
    /// last bucket.
    After(Vec<SealedResultKeys>),
    /// As `After`, but sends them before its first protocol message, in the job's first bucket.
    Within(Vec<SealedResultKeys>),
}

/// The request that carries `keys` after the start.
fn later_keys(keys: &[SealedResultKeys]) -> RunSessionRequest {
    RunSessionRequest {
        message: Some(run_session_request::Message::ResultKeys(LaterResultKeys {
            result_keys: keys.to_vec(),
        })),
    }
}

/// Plays a job of buckets as a querier holding the one identifier `who`: in each bucket, an
/// honest receiver of its part (empty but for `who`'s bucket). With `resume_after` =
/// `Some(k)` the job is named, hung up once the server holds
/// `k` buckets and resumed on a new connection under the same name and value key. `later`
/// says whether the result goes to the analyst too and when its keys are sent.
async fn play_job_resumed(
    fx: &Fixture,
    server: &Running,
    (sql, who): (&str, &str),
    resume_after: Option<u32>,
    later: &LaterKeys,
) -> View {
    let plan = fx.collaboration.plan("advertiser", sql).unwrap();
    let mut start = start(fx, sql, 8);
    if let Some(run_session_request::Message::Start(s)) = &mut start.message {
        if resume_after.is_some() {
            // A name spent with its job: each case names its own.
            s.job_id = format!("probe-{}", rand_suffix());
        }
        if !matches!(later, LaterKeys::NoOtherReceiver) {
            s.receivers = vec!["advertiser".to_owned(), "analyst".to_owned()];
        }
    }
    let (accepted, mut tx, mut inbound) = accept(server, start.clone()).await;
    if let LaterKeys::Within(keys) = later {
        let _ = tx.send(later_keys(keys)).await;
    }
    let job = accepted.job.clone().expect("a job");
    let key = BucketKey::from_bytes(job.bucket_key.clone().try_into().unwrap());
    let columns = accepted.value_columns as usize;
    let value_key = ValueKey::generate(columns);
    let domain = plan.domain();
    let mine = key.bucket(&domain, who, job.buckets);
    let mut ended = None;
    let mut resumed_at = None;
    for bucket in 0..job.buckets {
        if Some(bucket) == resume_after {
            // Hang up once the server holds the buckets before this one, and come back.
            wait_for(
                server,
                &accepted.session_id,
                Decision::Running,
                bucket.into(),
            )
            .await;
            drop((tx, inbound));
            wait_for(
                server,
                &accepted.session_id,
                Decision::Interrupted,
                bucket.into(),
            )
            .await;
            let (again, new_tx, new_inbound) = accept(server, start.clone()).await;
            assert_eq!(again.session_id, accepted.session_id, "the job's own entry");
            let terms = again.job.expect("the job's terms");
            assert_eq!(terms.bucket_key, job.bucket_key);
            resumed_at = Some(terms.buckets_done);
            (tx, inbound) = (new_tx, new_inbound);
        }
        let mut table = ReceiverTable::new(Normalization::Email, columns).unwrap();
        table.ensure_group("").unwrap();
        if bucket == mine {
            table.push("", who, &vec![1; columns]).unwrap();
        }
        let receiver =
            Receiver::in_job(&domain, table, PsiLimits::default(), Some(&value_key)).unwrap();
        if let Err(status) = pump(receiver, &tx, &mut inbound).await {
            ended = Some(status);
            break;
        }
    }
    if let (None, LaterKeys::After(keys)) = (&ended, later) {
        let _ = tx.send(later_keys(keys)).await;
    }
    let status = match ended {
        Some(status) => status,
        None => final_status(&mut inbound).await,
    };
    drop(tx);
    server.settled_entry(&accepted.session_id).await;
    // The totals stored after each bucket end with the refused job.
    let stored = server.state.job_checkpoint(&accepted.session_id).unwrap();
    assert_eq!(stored, None, "totals kept after the job");
    let mut entry = own_entry(server, &accepted.session_id).await;
    entry.session_id.clear();
    entry.started_at.clear();
    entry.finished_at.clear();
    // The bytes of a job follow the publisher's bucket sizes under the job's fresh key (a
    // random partition of its table, drawn anew each job), whatever the querier holds.
    entry.bytes_sent = 0;
    entry.bytes_received = 0;
    View {
        code: status.code(),
        message: status.message().replace(&accepted.session_id, "<session>"),
        entry,
        resumed_at,
    }
}

/// Runs one bucket's honest receiver over the raw streams until it has sent its tags; the
/// status the server ended the call with, if it did.
async fn pump(
    mut receiver: Receiver,
    tx: &mpsc::Sender<RunSessionRequest>,
    inbound: &mut Streaming<RunSessionResponse>,
) -> Result<(), tonic::Status> {
    loop {
        while let Some(message) = receiver.poll_message() {
            let request = RunSessionRequest {
                message: Some(run_session_request::Message::Psi(PsiMessage {
                    payload: message.encode(),
                })),
            };
            let _ = tx.send(request).await;
        }
        if receiver.is_finished() {
            return Ok(());
        }
        match inbound.message().await? {
            Some(RunSessionResponse {
                message: Some(run_session_response::Message::Psi(PsiMessage { payload })),
            }) => receiver
                .handle_message(AggregateMessage::decode(&payload).unwrap())
                .unwrap(),
            other => panic!("unexpected {other:?} within a bucket"),
        }
    }
}

/// The querier's own audit entry of `session_id` (ListAuditEntries).
async fn own_entry(server: &Running, session_id: &str) -> cleanroom_service::proto::AuditEntry {
    let mut client = raw_client(server.addr, Some(ADVERTISER_TOKEN)).await;
    let request = cleanroom_service::proto::ListAuditEntriesRequest {
        limit: 1000,
        ..Default::default()
    };
    let entries = client
        .list_audit_entries(request)
        .await
        .unwrap()
        .into_inner()
        .entries;
    entries
        .into_iter()
        .find(|e| e.session_id == session_id)
        .expect("the querier sees its entry")
}

/// A bucket holds a part of the querier's set, so a bucket's matcher cannot hold the querier
/// to the threshold's number of identifiers: a querier with one identifier would run a whole
/// job and learn from the release whether it matched. The job checks the querier's distinct
/// identifiers over all its buckets before deciding anything, and refuses alike whether the
/// one identifier is the publisher's or a stranger's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_querier_set_under_the_threshold_is_refused_over_the_job_alike() {
    let views = threshold_cases(None, LaterKeys::NoOtherReceiver).await;
    assert_eq!(views[0].resumed_at, None);
}

/// The same querier naming the analyst as a receiver too, and bending the keys it sends for
/// it after its start: every bent message is refused alike, whether its identifier is the
/// publisher's or a stranger's, before anything is decided on the totals; the well-formed keys
/// end as the threshold test does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bent_result_keys_after_the_start_are_refused_alike() {
    let for_ = |receiver: &str, bytes: usize| SealedResultKeys {
        receiver: receiver.to_owned(),
        sealed: vec![7; bytes],
    };
    let cases = [
        (
            LaterKeys::After(vec![for_("analyst", 100)]),
            "querier_set_too_small",
        ),
        (LaterKeys::After(vec![]), "exactly one sealed box"),
        (LaterKeys::After(vec![for_("analyst", 47)]), "a box holds"),
        (
            LaterKeys::After(vec![for_("analyst", 100), for_("publisher", 100)]),
            "not a receiver other than",
        ),
        (
            LaterKeys::Within(vec![for_("analyst", 100)]),
            "within the protocol",
        ),
    ];
    for (later, said) in cases {
        let views = threshold_cases(None, later.clone()).await;
        assert!(views[0].message.contains(said), "{later:?}: {views:?}");
    }
}

/// The two cases of the threshold tests, a publisher's identifier and a stranger's, each
/// played by [`play_job_resumed`] with `resume_after` and `later`: they must end alike,
/// refused, with nothing left in the server's work directory.
async fn threshold_cases(resume_after: Option<u32>, later: LaterKeys) -> Vec<View> {
    let (fx, _) = Fixture::new(5).with_analyst_key(true);
    let work = tempfile::tempdir().unwrap();
    let server = server(&fx, job_limits(), work.path()).await;
    let target = fx
        .publisher_sets(|_| true, |_| String::new())
        .remove("")
        .unwrap()
        .into_iter()
        .next()
        .unwrap();
    let stranger = "user950@example.com";
    let mut views = Vec::new();
    for who in [target.as_str(), stranger] {
        views.push(play_job_resumed(&fx, &server, (BY_CAMPAIGN, who), resume_after, &later).await);
    }
    assert_eq!(views[0], views[1], "member and stranger differ");
    assert_eq!(views[0].code, Code::InvalidArgument, "{views:?}");
    assert_eq!(views[0].entry.released_rows, 0);
    assert!(is_empty(work.path()));
    server.stop().await;
    views
}

/// Under differential privacy a job is charged once, at admission, and its noise is drawn
/// once, on the totals: each released count is within a few noise scales of the exact count
/// over the whole table, and not all of them are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_job_is_charged_once_and_noised_once() {
    let fx = Fixture::private(5, 100.0, 1.0);
    let (server_work, client_work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let server = server(&fx, job_limits(), server_work.path()).await;
    let outcome = match query(&fx, &server, BY_CAMPAIGN, 100, client_work.path()).await {
        Ok(outcome) => outcome,
        Err(e) => panic!("{e}: {:?}", server.state.entries(None, Some(3))),
    };
    assert_eq!(outcome.accepted.job.as_ref().map(|j| j.buckets), Some(8));
    let privacy = outcome.accepted.privacy.as_ref().unwrap();
    let buyers = privacy.outputs.iter().find(|o| o.column == "buyers");
    let scale = buyers.expect("the count's noise").scale;
    assert!(scale >= 1.0, "count noise of scale {scale}");
    let campaign = fx.impressions.column("campaign");
    let exact: std::collections::BTreeMap<String, usize> = fx
        .publisher_sets(|_| true, |r| r[campaign].clone())
        .into_iter()
        .map(|(campaign, set)| {
            let buyers = fx
                .conversions
                .rows
                .iter()
                .filter_map(|r| normalize(&r[fx.conversions.column("email")]))
                .filter(|e| set.contains(e))
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            (campaign, buyers)
        })
        .collect();
    let mut differs = false;
    assert!(!outcome.result.rows.is_empty());
    for row in &outcome.result.rows {
        let (cleanroom_rules::Value::Text(c), cleanroom_rules::Value::Integer(noisy)) =
            (&row[0], &row[1])
        else {
            panic!("{row:?}");
        };
        let exact = exact[c] as f64;
        // e^-12 per value that a discrete Laplace draw of this scale goes further.
        assert!(
            (*noisy as f64 - exact).abs() <= 12.0 * scale,
            "{c}: {noisy} against {exact}"
        );
        differs |= *noisy as f64 != exact;
    }
    assert!(differs, "no noise on any released count");
    let standing = server.state.standings().unwrap();
    let advertiser = standing.iter().find(|s| s.member == "advertiser").unwrap();
    assert_eq!(advertiser.queries, 1, "charged once for the whole job");
    server.stop().await;
}

/// The querier of the threshold test above, hanging up in the middle of its job and resuming
/// it: the resumed job goes on from the totals the server kept (the identifier's bucket may be
/// before or after the break), and both cases still end alike, refused, with nothing left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_job_refuses_a_querier_set_under_the_threshold_alike() {
    let views = threshold_cases(Some(3), LaterKeys::NoOtherReceiver).await;
    assert_eq!(views[0].resumed_at, Some(3));
}

/// The advertiser's named job `job_id` of `sql`, as [`query`] runs it; with `stop_after`, the
/// client's call is dropped (the process "dies") once that many buckets are done on its side.
/// Returns the job's session and the outcome, `None` when stopped.
async fn named_query(
    fx: &Fixture,
    server: &Running,
    (sql, job_id): (&str, &str),
    work: &Path,
    stop_after: Option<u32>,
) -> (String, Option<Result<QueryOutcome, ClientError>>) {
    let mut client = advertiser(server, 100, work, Some(job_id)).await.unwrap();
    let data = fx.advertiser_data();
    let query = advertiser_query(fx, sql, &data);
    let session = std::sync::Mutex::new(String::new());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stop = std::sync::Mutex::new(Some(stop));
    let hook = |p: cleanroom_service::client::Progress<'_>| match p {
        cleanroom_service::client::Progress::Accepted { session_id, .. } => {
            *session.lock().unwrap() = session_id.to_owned();
        }
        cleanroom_service::client::Progress::Bucket { done, .. } if Some(done) == stop_after => {
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

/// A named job whose client stops in the middle resumes when the same query runs again under
/// the same name: the same audit entry goes on from the buckets the server holds, the result
/// is exactly the plain one, the job is charged once, and once released it is never released
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_job_resumes_where_its_client_stopped_and_releases_once() {
    let fx = Fixture::new(5);
    let (server_work, client_work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let server = server(&fx, job_limits(), server_work.path()).await;
    let (want, want_suppressed) = fx.plain_by_campaign();
    let named = (BY_CAMPAIGN, "by-campaign-1");

    let (id, outcome) = named_query(&fx, &server, named, client_work.path(), Some(4)).await;
    assert!(outcome.is_none(), "stopped");
    let entry = server.settled_entry(&id).await;
    assert_eq!(entry.decision, Decision::Interrupted, "{}", entry.reason);
    assert!((3..8).contains(&entry.buckets_done), "{entry:?}");
    let (done, _) = server
        .state
        .job_checkpoint(&id)
        .unwrap()
        .expect("totals kept");
    assert_eq!(u64::from(done), entry.buckets_done);
    // The client's value key waits for the job, owner-only.
    let keys: Vec<_> = std::fs::read_dir(client_work.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "key"))
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let key = std::fs::read(&keys[0]).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&keys[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let (again, outcome) = named_query(&fx, &server, named, client_work.path(), None).await;
    let outcome = outcome.unwrap().unwrap();
    assert_eq!(again, id, "the job's own entry");
    assert_eq!(outcome.accepted.job.as_ref().unwrap().buckets_done, done);
    assert_exact(&outcome.result, &want, want_suppressed);
    let entry = server.settled_entry(&id).await;
    assert_eq!(entry.decision, Decision::Released);
    assert_eq!((entry.buckets, entry.buckets_done), (8, 8));
    assert_eq!(entry.released_rows, want.len() as u64);
    // The bytes of both connections.
    assert!(entry.bytes_received > outcome.counters.bytes_sent);
    assert_eq!(server.state.job_checkpoint(&id).unwrap(), None);
    let entries = server.state.entries(None, Some(100)).unwrap();
    assert_eq!(entries.len(), 1, "one entry for the job: {entries:?}");
    let standing = server.state.standings().unwrap();
    let advertiser = standing.iter().find(|s| s.member == "advertiser").unwrap();
    assert_eq!(advertiser.queries, 1, "charged once for the whole job");
    assert!(is_empty(server_work.path()) && is_empty(client_work.path()));

    // Released once. A client that lost the release (it died before the release arrived, so
    // it still has its key) gets the same release again under the name: nothing runs, nothing
    // is charged or recorded.
    std::fs::write(&keys[0], &key).unwrap();
    let (resent, outcome) = named_query(&fx, &server, named, client_work.path(), None).await;
    let outcome = outcome.unwrap().unwrap();
    assert_eq!(resent, id);
    assert_eq!(outcome.accepted.job.as_ref().unwrap().buckets_done, 8);
    assert_exact(&outcome.result, &want, want_suppressed);
    assert_eq!(server.state.entries(None, Some(100)).unwrap().len(), 1);
    assert_eq!(server.state.entry(&id).unwrap().unwrap(), entry);
    assert!(is_empty(client_work.path()), "the key went with the result");
    // Without its key the sums of the release cannot be opened: said, and nothing sent.
    let (_, outcome) = named_query(&fx, &server, named, client_work.path(), None).await;
    match outcome.unwrap() {
        Err(error) => assert!(error.to_string().contains("is gone"), "{error}"),
        Ok(_) => panic!("a release opened without its key"),
    }
    // Nor can other terms under the name of an interrupted one: stop another, change its SQL.
    let other = (EU_BY_CHANNEL, "eu-1");
    let (id, _) = named_query(&fx, &server, other, client_work.path(), Some(2)).await;
    server.settled_entry(&id).await;
    let (_, outcome) = named_query(
        &fx,
        &server,
        (BY_CAMPAIGN, "eu-1"),
        client_work.path(),
        None,
    )
    .await;
    match outcome.unwrap() {
        Err(ClientError::Remote(remote)) => {
            assert_eq!(remote.code, Code::FailedPrecondition, "{remote}");
            assert!(remote.message.contains("other terms"), "{remote}");
            assert_eq!(remote.reasons[0].code, "job_terms_differ");
        }
        other => panic!("a job resumed under other terms: {other:?}"),
    }
    // The job still waits: the client keeps its key for it.
    assert!(!is_empty(client_work.path()));
    assert_eq!(
        server.state.entry(&id).unwrap().unwrap().decision,
        Decision::Interrupted,
        "the job waits for its own terms"
    );
    let standing = server.state.standings().unwrap();
    let advertiser = standing.iter().find(|s| s.member == "advertiser").unwrap();
    assert_eq!(advertiser.queries, 2, "resumes and resends are not charged");
    server.stop().await;
}

/// A named job that waits longer than the server's retention is cancelled and its totals
/// deleted; bucket files a killed server left are removed when it starts; and the client that
/// comes back to resume it is told the job ended and removes what it kept for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_not_resumed_in_time_is_cancelled_and_its_client_forgets_it() {
    let fx = Fixture::new(5);
    let (server_work, client_work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let limits = Limits {
        job_retention: std::time::Duration::from_millis(1),
        ..job_limits()
    };
    let config = server_config(&fx, limits, server_work.path());
    let server = serve_in_process(config.clone()).await;
    let named = (BY_CAMPAIGN, "late-1");

    let (id, outcome) = named_query(&fx, &server, named, client_work.path(), Some(2)).await;
    assert!(outcome.is_none(), "stopped");
    let entry = server.settled_entry(&id).await;
    assert_eq!(entry.decision, Decision::Interrupted, "{}", entry.reason);
    assert!(server.state.job_checkpoint(&id).unwrap().is_some());
    assert!(
        !is_empty(client_work.path()),
        "the client keeps the job's key"
    );
    // What a server killed in the middle of the job would have left.
    let left = server_work.path().join(format!("cleanroom-job-{id}"));
    std::fs::create_dir(&left).unwrap();
    std::fs::write(left.join("matcher-0.bucket"), b"rows").unwrap();

    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let tidied = cleanroom_service::retention::tidy(&config, true).unwrap();
    assert_eq!(tidied.expired.cancelled, std::slice::from_ref(&id));
    assert_eq!(tidied.directories_removed, 1);
    assert!(is_empty(server_work.path()));
    let entry = server.state.entry(&id).unwrap().unwrap();
    assert_eq!(entry.decision, Decision::Cancelled);
    assert!(
        entry.reason.starts_with("not resumed within"),
        "{}",
        entry.reason
    );
    assert_eq!(server.state.job_checkpoint(&id).unwrap(), None);

    let (_, outcome) = named_query(&fx, &server, named, client_work.path(), None).await;
    match outcome.unwrap() {
        Err(ClientError::Remote(remote)) => {
            assert_eq!(remote.code, Code::FailedPrecondition, "{remote}");
            assert_eq!(remote.reasons[0].code, "job_ended", "{remote}");
            assert!(remote.message.contains("removed what it kept"), "{remote}");
        }
        other => panic!("a cancelled job resumed: {other:?}"),
    }
    assert!(is_empty(client_work.path()), "the key went with the job");
    assert_eq!(
        server.state.entry(&id).unwrap().unwrap().decision,
        Decision::Cancelled
    );
    server.stop().await;
}
