//! Both members of a collaboration in one process: a real server on a loopback port (TLS with a
//! throwaway self-signed certificate, or plaintext) and a real client querying it. Used by
//! `cleanroom demo` and `cleanroom bench --transport grpc`.

use anyhow::{Context, Result};
use cleanroom_rules::Collaboration;
use cleanroom_service::server::ServerConfig;
use cleanroom_service::{
    BearerToken, Client, ClientConfig, Limits, Query, QueryOutcome, StateDb, TlsIdentity,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

use cleanroom_data::TableSpec;
use std::sync::Arc;

/// A fresh random bearer token and the hex SHA-256 that goes into the collaboration file.
pub fn fresh_token() -> (String, String) {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    let token = hex::encode(bytes);
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    (token, hash)
}

/// One side of the loopback collaboration: a member and its tables' CSV files.
pub struct Side<'a> {
    /// The member's name in the collaboration.
    pub member: &'a str,
    /// Table name → where the table is.
    pub data: BTreeMap<String, TableSpec>,
}

/// Serve `server`'s tables on 127.0.0.1, run `sql` as `client` against it, and shut the
/// server down. The state database goes to `state_dir`.
pub fn run(
    collaboration: Collaboration,
    server: Side<'_>,
    client: Side<'_>,
    client_token: &str,
    sql: &str,
    tls: bool,
    state_dir: &Path,
) -> Result<QueryOutcome> {
    let (runtime, identity) = runtime_and_identity(tls)?;
    let collaboration = Arc::new(collaboration);
    let config = server_config(
        &collaboration,
        server,
        state_dir.join("state.db"),
        identity.clone(),
        None,
    )?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(cleanroom_service::serve(config, listener, async {
            let _ = stopped.await;
        }));
        let scheme = if tls { "https" } else { "http" };
        let mut client_config = ClientConfig::new(
            format!("{scheme}://localhost:{port}"),
            BearerToken::new(client_token)?,
        );
        client_config.ca_pem = identity.map(|i| i.cert_pem);
        let query = Query {
            collaboration: &collaboration,
            member: client.member,
            sql,
            data: &client.data,
            receivers: &[],
        };
        let outcome = async {
            let mut c = Client::connect(&client_config).await?;
            c.run_query(query, None).await
        }
        .await;
        let _ = stop.send(());
        serving.await.context("server task")??;
        Ok(outcome?)
    })
}

/// A provider of a join across three or more members: its side and its secret relay key.
pub struct Provider<'a> {
    /// The member and its tables.
    pub side: Side<'a>,
    /// The opening half of its `relay_key`.
    pub relay_key: cleanroom_psi::sealed::OpeningKey,
}

/// Serve every provider's tables on its own 127.0.0.1 port (each with its own state database
/// in `state_dir`), run `sql` as `client` against all of them (a join across three or more
/// members), and shut the servers down.
pub fn run_chain(
    collaboration: Collaboration,
    providers: Vec<Provider<'_>>,
    client: Side<'_>,
    client_token: &str,
    sql: &str,
    tls: bool,
    state_dir: &Path,
) -> Result<QueryOutcome> {
    let (runtime, identity) = runtime_and_identity(tls)?;
    let collaboration = Arc::new(collaboration);
    runtime.block_on(async {
        let mut servers = Vec::new();
        let mut configs = BTreeMap::new();
        for provider in providers {
            let tables: Vec<String> = provider.side.data.keys().cloned().collect();
            let state = state_dir.join(format!("state-{}.db", provider.side.member));
            let config = server_config(
                &collaboration,
                provider.side,
                state,
                identity.clone(),
                Some(provider.relay_key),
            )?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let port = listener.local_addr()?.port();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let serving = tokio::spawn(cleanroom_service::serve(config, listener, async {
                let _ = stopped.await;
            }));
            servers.push((stop, serving));
            let scheme = if tls { "https" } else { "http" };
            for table in tables {
                let mut client_config = ClientConfig::new(
                    format!("{scheme}://localhost:{port}"),
                    BearerToken::new(client_token)?,
                );
                client_config.ca_pem = identity.as_ref().map(|i| i.cert_pem.clone());
                configs.insert(table, client_config);
            }
        }
        let query = Query {
            collaboration: &collaboration,
            member: client.member,
            sql,
            data: &client.data,
            receivers: &[],
        };
        let outcome = cleanroom_service::client::run_chain_query(query, &configs, None).await;
        for (stop, serving) in servers {
            let _ = stop.send(());
            serving.await.context("server task")??;
        }
        Ok(outcome?)
    })
}

/// The loopback server of `side`: default limits, its state database at `state`, TLS with
/// `identity` (or plaintext), and its relay key when it serves joins across members.
fn server_config(
    collaboration: &Arc<Collaboration>,
    side: Side<'_>,
    state: std::path::PathBuf,
    identity: Option<TlsIdentity>,
    relay_key: Option<cleanroom_psi::sealed::OpeningKey>,
) -> Result<ServerConfig> {
    Ok(ServerConfig {
        collaboration: Arc::clone(collaboration),
        member: side.member.to_owned(),
        data: side.data,
        limits: Limits::default(),
        connections: cleanroom_service::ConnectionLimits::default(),
        state: Arc::new(StateDb::open(state)?),
        tls: identity,
        client_ca: None,
        insecure: false,
        on_session_end: None,
        work_dir: None,
        relay_key: relay_key.map(Arc::new),
    })
}

/// The runtime the loopback members run on, and the servers' throwaway certificate for
/// `localhost` (none in plaintext).
fn runtime_and_identity(tls: bool) -> Result<(tokio::runtime::Runtime, Option<TlsIdentity>)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let identity = if tls {
        Some(TlsIdentity::self_signed(&["localhost"])?)
    } else {
        None
    };
    Ok((runtime, identity))
}
