//! Reaching a server: the channel a client opens (TLS unless plaintext is allowed), the hint a
//! TLS connection ended by the server gets, and the health check.

use std::time::Duration;

use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use super::ClientError;
use crate::tls::{ClientTransport, client_transport};
use crate::transport::causes;

/// The channel to `server` that [`Client::connect`] opens: TLS unless plaintext is allowed for
/// the URL (trusting `ca_pem`, or the system's roots), presenting `identity` as the client
/// certificate when given. No token is attached here.
pub(super) async fn connect_channel(
    server: &str,
    ca_pem: Option<&[u8]>,
    insecure: bool,
    identity: Option<&crate::tls::TlsIdentity>,
    connect_timeout: Duration,
) -> Result<Channel, ClientError> {
    let mut transport = client_transport(server, ca_pem, insecure)?;
    if let Some(identity) = identity {
        transport = transport.presenting(identity)?;
    }
    let connect_error =
        |source: tonic::transport::Error| ClientError::transport(server, &causes(&source));
    let mut endpoint = Endpoint::from_shared(server.to_owned())
        .map_err(connect_error)?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    if let ClientTransport::Tls(tls) = transport {
        endpoint = endpoint.tls_config(tls).map_err(connect_error)?;
    }
    endpoint.connect().await.map_err(connect_error)
}

/// The message of the `CANCELLED` status tonic gives a call whose connection was dropped.
pub(super) const CONNECTION_DROPPED: &str = "operation was canceled";

/// `error` with a hint about client certificates when it is a TLS connection that the server
/// ended without an answer, which is how a server that requires client certificates (`serve
/// --client-ca`, or pins) refuses a client without an acceptable one: the handshake fails on
/// the server's side, and the client only sees the connection end. `presented` says whether
/// this client presented a certificate. Other errors are returned as they are.
pub(super) fn with_certificate_hint(
    error: ClientError,
    server: &str,
    presented: bool,
) -> ClientError {
    if !server.starts_with("https://") {
        return error;
    }
    let ended = match &error {
        ClientError::Transport {
            cause, hint: None, ..
        } => ![
            "Connection refused",
            "dns error",
            "tcp connect error",
            "no answer within",
        ]
        .iter()
        .any(|sign| cause.contains(sign)),
        ClientError::Remote(remote) => {
            remote.code == Code::Cancelled
                && remote.reasons.is_empty()
                && remote.message == CONNECTION_DROPPED
        }
        _ => false,
    };
    if !ended {
        return error;
    }
    let cause = match error {
        ClientError::Transport { cause, .. } => cause,
        ClientError::Remote(remote) => remote.message,
        _ => unreachable!("matched above"),
    };
    let hint = if presented {
        "the server ended the TLS connection: it may not accept your client certificate (it must \
         chain to the server's --client-ca, or be the one your member entry pins)"
    } else {
        "the server ended the TLS connection: if it requires client certificates (serve \
         --client-ca), give --tls-cert and --tls-key"
    };
    ClientError::Transport {
        server: server.to_owned(),
        cause,
        hint: Some(hint.to_owned()),
    }
}

/// A server's answer to a health check (`grpc.health.v1`).
pub use tonic_health::pb::health_check_response::ServingStatus;

/// Asks the server at `server` (`https://`, or `http://` where plaintext is allowed) what
/// `grpc.health.v1.Health/Check` says of `service` (`""`: the server as a whole), connecting as
/// [`Client::connect`] does (trusting `ca_pem`, presenting `identity`) but sending no token:
/// health checks take none. Gives up after `timeout`, connection included. An answer outside
/// the enumeration reads as [`ServingStatus::Unknown`].
pub async fn check_health(
    server: &str,
    ca_pem: Option<&[u8]>,
    insecure: bool,
    identity: Option<&crate::tls::TlsIdentity>,
    service: &str,
    timeout: Duration,
) -> Result<ServingStatus, ClientError> {
    let presented = identity.is_some();
    let check = async {
        let channel = connect_channel(server, ca_pem, insecure, identity, timeout)
            .await
            .map_err(|e| with_certificate_hint(e, server, presented))?;
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let response = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .map_err(|status| {
                let error = if crate::transport::is_transport_failure(status.message()) {
                    ClientError::transport(server, status.message())
                } else {
                    ClientError::from(status)
                };
                with_certificate_hint(error, server, presented)
            })?;
        Ok(ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown))
    };
    tokio::time::timeout(timeout, check).await.map_err(|_| {
        ClientError::transport(
            server,
            &format!("no answer within {} s", timeout.as_secs_f32()),
        )
    })?
}
