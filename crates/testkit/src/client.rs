//! Clients of an in-process server: the advertiser's high-level client (plaintext or TLS),
//! and a raw client of the generated gRPC API for what the high-level client would refuse to
//! send; reading a call to its final status.

use std::net::SocketAddr;
use std::time::Duration;

use cleanroom_rules::{ResultTable, Value};
use cleanroom_service::client::{ClientError, Query};
use cleanroom_service::proto::clean_room_service_client::CleanRoomServiceClient;
use cleanroom_service::proto::{
    QueryRefusal, RunSessionRequest, SessionStart, TableDescriptor, run_session_request,
};
use cleanroom_service::server::REFUSAL_METADATA_KEY;
use cleanroom_service::{BearerToken, Client, ClientConfig, TlsIdentity};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::collaboration::ADVERTISER_TOKEN;
use crate::fixture::Fixture;
use crate::server::Running;

/// The advertiser's client of the server at `url`, with a 60 s session timeout.
pub fn advertiser_client_config(url: String) -> ClientConfig {
    let mut config = ClientConfig::new(url, BearerToken::new(ADVERTISER_TOKEN).unwrap());
    config.timeout = Some(Duration::from_secs(60));
    config
}

/// The advertiser's `sql` over plaintext to the server at `url`.
pub async fn run_query(
    fx: &Fixture,
    url: String,
    sql: &str,
) -> Result<cleanroom_service::QueryOutcome, ClientError> {
    run_query_for(fx, url, sql, &[]).await
}

/// [`run_query`] whose result goes to `receivers` (empty: the advertiser).
pub async fn run_query_for(
    fx: &Fixture,
    url: String,
    sql: &str,
    receivers: &[String],
) -> Result<cleanroom_service::QueryOutcome, ClientError> {
    let mut client = Client::connect(&advertiser_client_config(url)).await?;
    let data = fx.advertiser_data();
    client
        .run_query(
            Query {
                collaboration: &fx.collaboration,
                member: "advertiser",
                sql,
                data: &data,
                receivers,
            },
            None,
        )
        .await
}

/// The advertiser's `sql` over TLS to `server` (whose certificate, for `localhost`, is
/// `server_tls`), presenting the client certificate `identity` when given.
pub async fn run_query_tls(
    fx: &Fixture,
    server: &Running,
    server_tls: &TlsIdentity,
    identity: Option<&TlsIdentity>,
    sql: &str,
) -> Result<cleanroom_service::QueryOutcome, ClientError> {
    let mut config = advertiser_client_config(format!("https://localhost:{}", server.addr.port()));
    config.ca_pem = Some(server_tls.cert_pem.clone());
    config.identity = identity.cloned();
    let mut client = Client::connect(&config).await?;
    let data = fx.advertiser_data();
    client
        .run_query(
            Query {
                collaboration: &fx.collaboration,
                member: "advertiser",
                sql,
                data: &data,
                receivers: &[],
            },
            None,
        )
        .await
}

/// Asserts that `got` has the rows `want` (floats within 1e-9).
pub fn assert_rows_equal(got: &ResultTable, want: &[Vec<Value>]) {
    assert_eq!(got.rows.len(), want.len(), "rows: {:?}", got.rows);
    for (g, w) in got.rows.iter().zip(want) {
        assert_eq!(g.len(), w.len());
        for (a, b) in g.iter().zip(w) {
            match (a, b) {
                (Value::Float(x), Value::Float(y)) => {
                    assert!((x - y).abs() < 1e-9, "{x} != {y} in row {g:?}")
                }
                _ => assert_eq!(a, b, "row {g:?}"),
            }
        }
    }
}

/// Asserts that `got` is exactly the plain computation: the rows `want` (floats within 1e-9)
/// and `suppressed` groups withheld.
pub fn assert_exact(got: &ResultTable, want: &[Vec<Value>], suppressed: u64) {
    assert_rows_equal(got, want);
    assert_eq!(got.suppressed_rows, suppressed, "suppressed groups");
}

/// Adds an optional bearer token: a raw client of the generated API, for what the
/// high-level client would refuse to send.
#[derive(Clone)]
pub struct MaybeToken(pub Option<String>);

impl Interceptor for MaybeToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        Ok(request)
    }
}

/// A client of the generated API, with an optional bearer token.
pub type RawClient = CleanRoomServiceClient<InterceptedService<Channel, MaybeToken>>;

/// A raw client of the server at `addr`, over plaintext, sending `token` if given.
pub async fn raw_client(addr: SocketAddr, token: Option<&str>) -> RawClient {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    CleanRoomServiceClient::with_interceptor(channel, MaybeToken(token.map(str::to_owned)))
}

/// The terms an honest client of `member` computes `sql` under in `collaboration`; none when
/// the rules refuse the SQL (the server refuses it before it looks at them).
pub fn honest_agreement(
    collaboration: &cleanroom_rules::Collaboration,
    member: &str,
    sql: &str,
) -> Option<cleanroom_service::proto::Agreement> {
    let plan = collaboration.plan(member, sql).ok()?;
    Some(cleanroom_service::agreement(collaboration, &plan))
}

/// The session start of `member`'s `sql`, bringing `table` with the fixture's conversions'
/// header and row count.
pub fn start_message(fx: &Fixture, member: &str, sql: &str, table: &str) -> RunSessionRequest {
    RunSessionRequest {
        message: Some(run_session_request::Message::Start(SessionStart {
            collaboration_id: fx.collaboration.id().to_owned(),
            member: member.to_owned(),
            sql: sql.to_owned(),
            table: Some(TableDescriptor {
                name: table.to_owned(),
                columns: fx.conversions.header.clone(),
                rows: fx.conversions.rows.len() as u64,
                skipped_rows: 0,
            }),
            agreement: honest_agreement(&fx.collaboration, member, sql),
            receivers: Vec::new(),
            result_keys: Vec::new(),
            buckets: 0,
            job_id: String::new(),
            chain_context: Vec::new(),
        })),
    }
}

/// Opens a raw session with `start`; returns the status of a refusal, or the open streams.
pub async fn raw_open(
    client: &mut RawClient,
    start: RunSessionRequest,
) -> Result<
    (
        mpsc::Sender<RunSessionRequest>,
        tonic::Streaming<cleanroom_service::proto::RunSessionResponse>,
    ),
    tonic::Status,
> {
    let (tx, rx) = mpsc::channel(8);
    tx.send(start).await.unwrap();
    let response = client.run_session(ReceiverStream::new(rx)).await?;
    Ok((tx, response.into_inner()))
}

/// The reason codes in a refusal's `cleanroom-refusal-bin` trailer.
pub fn refusal_codes(status: &tonic::Status) -> Vec<String> {
    let bytes = status
        .metadata()
        .get_bin(REFUSAL_METADATA_KEY)
        .expect("refusal details")
        .to_bytes()
        .unwrap();
    QueryRefusal::decode(bytes.as_ref())
        .unwrap()
        .reasons
        .into_iter()
        .map(|r| r.code)
        .collect()
}

/// Reads the call to its end, which must be an error status (within 20 s).
pub async fn final_status(
    inbound: &mut tonic::Streaming<cleanroom_service::proto::RunSessionResponse>,
) -> tonic::Status {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match inbound.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the call ended OK; expected an error status"),
                Err(status) => break status,
            }
        }
    })
    .await
    .expect("the server ends the call")
}
