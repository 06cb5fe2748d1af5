//! Network hygiene (`crates/service/src/listener.rs`): thousands of idle sockets against an
//! in-process TLS server do not keep an honest query from being served, and are closed after
//! the handshake timeout; connections over the per-address cap are closed at once. (The load
//! test of `cleanroom bench --concurrency` runs the binary: it is the root `tests/service_load.rs`.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cleanroom_service::listener::{ConnectionLimits, raise_open_files_limit};
use cleanroom_service::{Limits, ServerConfig, StateDb, TlsIdentity};
use cleanroom_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

// ------------------------------------------------------------------------- network hygiene

/// The first bytes of a TLS ClientHello: a handshake record announcing 512 bytes, of which only
/// a few follow.
const PARTIAL_CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03];

/// Raises this process's open-files limit (client and server ends of every socket are both
/// here) and says whether `needed` descriptors fit; prints why not.
fn open_files_allow(needed: u64) -> bool {
    let limit = raise_open_files_limit();
    match limit.now {
        Some(now) if now >= needed => true,
        _ => {
            eprintln!(
                "skipped: this test needs {needed} open files, the limit is {:?} (hard limit \
                 too low to raise)",
                limit.now
            );
            false
        }
    }
}

/// The publisher's server over TLS (certificate for `localhost`) with `connections`.
async fn tls_server(
    fx: &Fixture,
    identity: &TlsIdentity,
    connections: ConnectionLimits,
    limits: Limits,
) -> Running {
    let state = Arc::new(StateDb::open(fx.path(&format!("state-{}.db", rand_suffix()))).unwrap());
    serve_in_process(ServerConfig {
        collaboration: Arc::clone(&fx.collaboration),
        member: "publisher".to_owned(),
        data: BTreeMap::from([("impressions".to_owned(), fx.path("impressions.csv").into())]),
        limits,
        connections,
        state,
        tls: Some(identity.clone()),
        client_ca: None,
        insecure: false,
        on_session_end: None,
        work_dir: None,
        relay_key: None,
    })
    .await
}

/// One honest query over TLS on a fresh connection, checked against the plain answer; returns
/// how long it took from connecting to the result.
async fn honest_query(fx: &Fixture, identity: &TlsIdentity, server: &Running) -> Duration {
    let started = Instant::now();
    let outcome = run_query_tls(fx, server, identity, None, BY_CAMPAIGN)
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let (want, want_suppressed) = fx.plain_by_campaign();
    assert_exact(&outcome.result, &want, want_suppressed);
    elapsed
}

/// A session of the retailer, accepted over TLS, that then sends its items one at a time every
/// 250 ms (each message within every timeout); the task runs until aborted.
async fn trickle(
    fx: &Fixture,
    identity: &TlsIdentity,
    server: &Running,
) -> tokio::task::JoinHandle<()> {
    use cleanroom_psi::WireMessage;
    use cleanroom_service::proto::clean_room_service_client::CleanRoomServiceClient;
    use cleanroom_service::proto::{PsiMessage, RunSessionRequest, run_session_request};
    let tls = tonic::transport::ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(tonic::transport::Certificate::from_pem(&identity.cert_pem));
    let channel =
        tonic::transport::Channel::from_shared(format!("https://localhost:{}", server.addr.port()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut client = CleanRoomServiceClient::with_interceptor(
        channel,
        MaybeToken(Some(RETAILER_TOKEN.to_owned())),
    );
    let (tx, mut inbound) = raw_open(
        &mut client,
        start_message(fx, "retailer", RETAILER_BY_CAMPAIGN, "sales"),
    )
    .await
    .expect("the trickling session is accepted");
    inbound.message().await.unwrap().expect("the acceptance");
    let mut plan = fx
        .collaboration
        .plan("retailer", RETAILER_BY_CAMPAIGN)
        .unwrap();
    let table =
        cleanroom_service::data::receiver_table(&mut plan, &fx.path("sales.csv").into()).unwrap();
    let mut receiver =
        cleanroom_psi::Receiver::new(&plan.domain(), table, cleanroom_psi::Limits::default());
    let mut messages = vec![receiver.poll_message().unwrap()];
    while let Some(items) = receiver.poll_message() {
        messages.extend(rechunk(items, 1));
    }
    tokio::spawn(async move {
        // Read what the server sends, so that only this side's trickling holds the session.
        tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
        for message in messages {
            let payload = message.encode();
            let request = RunSessionRequest {
                message: Some(run_session_request::Message::Psi(PsiMessage { payload })),
            };
            if tx.send(request).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        std::future::pending::<()>().await;
    })
}

/// An idle socket and how long after it connected the server closed it (end of stream or
/// reset), or `None` if it was still open after `give_up`. `closed` counts the closed ones.
fn watch(
    mut socket: TcpStream,
    opened: Instant,
    give_up: Duration,
    closed: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Option<Duration>> {
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            match tokio::time::timeout_at(opened + give_up, socket.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Ok(0) | Err(_)) => {
                    closed.fetch_add(1, Ordering::Relaxed);
                    return Some(opened.elapsed());
                }
                // A TLS alert before the close.
                Ok(Ok(_)) => {}
            }
        }
    })
}

async fn closing_times(watchers: Vec<tokio::task::JoinHandle<Option<Duration>>>) -> Vec<Duration> {
    let mut times = Vec::new();
    for (i, watcher) in watchers.into_iter().enumerate() {
        match watcher.await.unwrap() {
            Some(time) => times.push(time),
            None => panic!("idle socket {i} was never closed by the server"),
        }
    }
    times.sort();
    times
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_tls_query_is_served_beside_2000_idle_sockets() {
    const IDLE: usize = 2000;
    if !open_files_allow(2 * IDLE as u64 + 512) {
        return;
    }
    let timeout = Duration::from_secs(2);
    let fx = Fixture::new(5).with_second_querier();
    let identity = TlsIdentity::self_signed(&["localhost", "127.0.0.1"]).unwrap();
    // Every socket comes from 127.0.0.1: caps high enough for all of them.
    let connections = ConnectionLimits {
        per_address: 2500,
        total: 2600,
        handshake_timeout: timeout,
        first_bytes_timeout: timeout,
    };
    // Eight slots, four per member: the retailer's four tricklers leave the advertiser its own.
    let limits = Limits {
        max_concurrent_sessions: 8,
        ..Limits::default()
    };
    let server = tls_server(&fx, &identity, connections, limits).await;
    // The first query of a process also pays its one-off set-up; measure the second.
    let first_latency = honest_query(&fx, &identity, &server).await;
    let idle_latency = honest_query(&fx, &identity, &server).await;

    // Half plain silent TCP, half a partial ClientHello and then nothing.
    let closed = Arc::new(AtomicUsize::new(0));
    let first_opened = Instant::now();
    let mut watchers = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let mut socket = TcpStream::connect(server.addr).await.unwrap();
        let opened = Instant::now();
        if i % 2 == 1 {
            socket.write_all(PARTIAL_CLIENT_HELLO).await.unwrap();
        }
        watchers.push(watch(
            socket,
            opened,
            timeout + Duration::from_secs(10),
            Arc::clone(&closed),
        ));
    }
    let opening = first_opened.elapsed();
    // And four sessions of another member that trickle one item every 250 ms.
    let mut tricklers = Vec::new();
    for _ in 0..4 {
        tricklers.push(trickle(&fx, &identity, &server).await);
    }
    let still_open_before = IDLE - closed.load(Ordering::Relaxed);
    let loaded_latency = honest_query(&fx, &identity, &server).await;
    let still_open_after = IDLE - closed.load(Ordering::Relaxed);
    let trickling = tricklers.iter().filter(|t| !t.is_finished()).count();
    assert_eq!(
        trickling, 4,
        "the tricklers were still sending during the honest query"
    );
    for trickler in tricklers {
        trickler.abort();
    }
    eprintln!(
        "honest query: {:.2} s idle, {:.2} s with {IDLE} idle sockets and {trickling} trickling \
         sessions ({still_open_before} sockets open when it started, {still_open_after} when it \
         ended; opening them took {:.2} s; the process's first query took {:.2} s)",
        idle_latency.as_secs_f64(),
        loaded_latency.as_secs_f64(),
        opening.as_secs_f64(),
        first_latency.as_secs_f64(),
    );

    // Every idle socket was closed by the server, by the handshake timeout (not before it).
    let times = closing_times(watchers).await;
    let (first, last) = (times[0], times[times.len() - 1]);
    eprintln!(
        "{IDLE} idle sockets closed {:.2}-{:.2} s after they connected (handshake timeout {:.1} s)",
        first.as_secs_f64(),
        last.as_secs_f64(),
        timeout.as_secs_f64()
    );
    // (A lower bound with room for a loaded machine, where this side may note a socket open
    // later than the server accepted it.)
    assert!(first >= timeout * 3 / 4, "closed after {first:?}");
    // And the server is as good as before.
    honest_query(&fx, &identity, &server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_over_the_per_address_cap_are_closed_at_once() {
    const SILENT: usize = 1100;
    const PER_ADDRESS: usize = 64;
    if !open_files_allow(SILENT as u64 + 512) {
        return;
    }
    let timeout = Duration::from_millis(1500);
    let fx = Fixture::new(5);
    let identity = TlsIdentity::self_signed(&["localhost", "127.0.0.1"]).unwrap();
    let connections = ConnectionLimits {
        per_address: PER_ADDRESS as u32,
        total: 200,
        handshake_timeout: timeout,
        first_bytes_timeout: timeout,
    };
    let server = tls_server(&fx, &identity, connections, Limits::default()).await;

    let closed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut watchers = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        let socket = TcpStream::connect(server.addr).await.unwrap();
        watchers.push(watch(
            socket,
            Instant::now(),
            timeout + Duration::from_secs(10),
            Arc::clone(&closed),
        ));
    }
    let opening = started.elapsed();
    let times = closing_times(watchers).await;
    let done = started.elapsed();
    // The first 64 wait for the handshake timeout; the 1,036 over the cap are closed at once.
    let at_once = times.iter().filter(|t| **t < timeout / 2).count();
    let after_timeout = SILENT - at_once;
    eprintln!(
        "{SILENT} silent connections (opened in {:.2} s): {at_once} closed at once (slowest \
         {:.3} s), {after_timeout} after the {:.1} s handshake timeout (last {:.2} s); all \
         closed {:.2} s after the first connected",
        opening.as_secs_f64(),
        times[at_once.max(1) - 1].as_secs_f64(),
        timeout.as_secs_f64(),
        times[times.len() - 1].as_secs_f64(),
        done.as_secs_f64(),
    );
    // Those not closed at once were closed by the timeout, not before it.
    assert!(times[at_once] >= timeout * 3 / 4, "{times:?}");
    if opening < timeout / 2 {
        // All were opened before the first slot came free.
        assert_eq!(at_once, SILENT - PER_ADDRESS, "{times:?}");
        assert_eq!(after_timeout, PER_ADDRESS, "{times:?}");
    } else {
        // A slow machine: slots freed by the timeout were taken by later sockets.
        eprintln!("opening took longer than half the timeout: counts checked loosely");
        assert!(after_timeout >= PER_ADDRESS, "{times:?}");
        assert!(at_once >= SILENT / 2, "{times:?}");
    }

    // The slots are free again: an honest query from the same address is served.
    let latency = honest_query(&fx, &identity, &server).await;
    eprintln!("honest query after them: {:.2} s", latency.as_secs_f64());
    server.stop().await;
}
