//! An in-process server: the publisher's `cleanroom serve` on 127.0.0.1 (a free port), run on
//! the test's runtime until stopped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cleanroom_service::{Decision, Limits, ServerConfig, StateDb, TlsIdentity};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::fixture::Fixture;

/// A server running in this process.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its audit log and ledger.
    pub state: Arc<StateDb>,
    /// Stops it (taken by [`Running::stop`]).
    pub stop: Option<oneshot::Sender<()>>,
    /// The serving task.
    pub task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops the server and waits (up to 10 s) for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("server stops")
                .unwrap();
        }
    }

    /// The audit entry of a session, waiting (briefly) for it to be complete.
    pub async fn settled_entry(&self, session_id: &str) -> cleanroom_service::AuditEntry {
        for _ in 0..200 {
            if let Some(entry) = self.state.entry(session_id).unwrap()
                && entry.decision != Decision::Running
            {
                return entry;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("session {session_id} never completed");
    }
}

/// The publisher's server over the fixture's impressions, with a fresh state database.
pub async fn start_server(fx: &Fixture, limits: Limits, tls: Option<TlsIdentity>) -> Running {
    let state = Arc::new(StateDb::open(fx.path(&format!("state-{}.db", rand_suffix()))).unwrap());
    start_server_with_state(fx, limits, tls, state).await
}

/// The publisher's server over the fixture's impressions, recording in `state` (which may be
/// shared with other servers).
pub async fn start_server_with_state(
    fx: &Fixture,
    limits: Limits,
    tls: Option<TlsIdentity>,
    state: Arc<StateDb>,
) -> Running {
    serve_in_process(publisher_config(fx, limits, tls, state)).await
}

/// The configuration of the publisher's server over the fixture's impressions, recording in
/// `state`: what [`start_server_with_state`] serves, for a test to change before serving it.
pub fn publisher_config(
    fx: &Fixture,
    limits: Limits,
    tls: Option<TlsIdentity>,
    state: Arc<StateDb>,
) -> ServerConfig {
    ServerConfig {
        collaboration: Arc::clone(&fx.collaboration),
        member: "publisher".to_owned(),
        data: BTreeMap::from([("impressions".to_owned(), fx.path("impressions.csv").into())]),
        limits,
        connections: cleanroom_service::ConnectionLimits::default(),
        state,
        tls,
        client_ca: None,
        insecure: false,
        on_session_end: None,
        work_dir: None,
        relay_key: None,
    }
}

/// Serves `config` on 127.0.0.1 (a free port) in this process until [`Running::stop`].
pub async fn serve_in_process(config: ServerConfig) -> Running {
    let state = Arc::clone(&config.state);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        cleanroom_service::serve(config, listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Running {
        addr,
        state,
        stop: Some(stop),
        task: Some(task),
    }
}

/// A number unique in this process (for file names).
pub fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
