//! Transport security: when plaintext is allowed, the server's and the client's rustls
//! configuration, and throwaway self-signed certificates (for tests and the demo).
//!
//! Plaintext `http://` is allowed only on a loopback address unless the operator says
//! `--insecure`: bearer tokens and query text must not cross a network unencrypted by accident.

use std::net::{IpAddr, SocketAddr};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A certificate chain and its private key, both PEM.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// The private key, PEM.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A transport security decision that was refused, or a certificate that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Plaintext on a non-loopback address without `--insecure`.
    #[error(
        "refusing plaintext on {0}, which is not a loopback address: give a certificate and key \
         (--tls-cert, --tls-key), or --insecure if a trusted network really protects it"
    )]
    PlaintextNotLoopback(String),
    /// The server URL is neither `http://` nor `https://`.
    #[error("the server URL must start with https:// (or http:// on loopback): {0}")]
    BadScheme(String),
    /// The server URL does not parse.
    #[error("invalid server URL {url}: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// A CA certificate was given for a plaintext URL, where it would be silently ignored.
    #[error("--ca was given but the server URL is plaintext http://; use https://")]
    CaWithoutTls,
    /// A client certificate was given for a plaintext URL, where it would be silently ignored.
    #[error("--tls-cert was given but the server URL is plaintext http://; use https://")]
    IdentityWithoutTls,
    /// Generating a self-signed certificate failed.
    #[error("could not generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

impl TlsIdentity {
    /// The tonic server configuration presenting this identity.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }

    /// A fresh self-signed certificate for `names` (DNS names or IP addresses), for tests and
    /// throwaway local setups. The certificate is its own CA: give `cert_pem` to the client
    /// as `--ca`.
    pub fn self_signed(names: &[&str]) -> Result<TlsIdentity, TlsError> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let certified = rcgen::generate_simple_self_signed(names)?;
        Ok(TlsIdentity {
            cert_pem: certified.cert.pem().into_bytes(),
            key_pem: certified.signing_key.serialize_pem().into_bytes(),
        })
    }
}

/// Whether a server may listen in plaintext on `addr`.
pub fn check_plaintext_listen(addr: SocketAddr, insecure: bool) -> Result<(), TlsError> {
    if insecure || addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(TlsError::PlaintextNotLoopback(addr.to_string()))
    }
}

/// Whether a URL host names the local machine: `localhost`, `127.0.0.0/8` or `[::1]`.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// How a client reaches the server.
#[derive(Debug, Clone)]
pub enum ClientTransport {
    /// Plaintext HTTP/2 (loopback, or `--insecure`).
    Plaintext,
    /// TLS, trusting the given CA (PEM) or else the system's roots.
    Tls(ClientTlsConfig),
}

impl ClientTransport {
    /// This transport, presenting `identity` as the client certificate: refused for plaintext,
    /// where it would be silently ignored.
    pub fn presenting(self, identity: &TlsIdentity) -> Result<ClientTransport, TlsError> {
        match self {
            ClientTransport::Plaintext => Err(TlsError::IdentityWithoutTls),
            ClientTransport::Tls(config) => Ok(ClientTransport::Tls(
                config.identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem)),
            )),
        }
    }
}

/// Decides the client's transport for `url`: `https://` uses TLS with `ca_pem` (or the system's
/// roots), `http://` is allowed only to a loopback host or with `insecure`.
pub fn client_transport(
    url: &str,
    ca_pem: Option<&[u8]>,
    insecure: bool,
) -> Result<ClientTransport, TlsError> {
    let uri: tonic::codegen::http::Uri = url.parse().map_err(|e| TlsError::BadUrl {
        url: url.to_owned(),
        reason: format!("{e}"),
    })?;
    let host = uri.host().ok_or_else(|| TlsError::BadUrl {
        url: url.to_owned(),
        reason: "no host".to_owned(),
    })?;
    match uri.scheme_str() {
        Some("https") => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let config = ClientTlsConfig::new().domain_name(host);
            let config = match ca_pem {
                Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
                None => config.with_native_roots(),
            };
            Ok(ClientTransport::Tls(config))
        }
        Some("http") => {
            if ca_pem.is_some() {
                return Err(TlsError::CaWithoutTls);
            }
            if insecure || is_loopback_host(host) {
                Ok(ClientTransport::Plaintext)
            } else {
                Err(TlsError::PlaintextNotLoopback(host.to_owned()))
            }
        }
        _ => Err(TlsError::BadScheme(url.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_only_on_loopback_unless_insecure() {
        let loopback: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        let v6_loopback: SocketAddr = "[::1]:50051".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:50051".parse().unwrap();
        assert!(check_plaintext_listen(loopback, false).is_ok());
        assert!(check_plaintext_listen(v6_loopback, false).is_ok());
        assert!(matches!(
            check_plaintext_listen(any, false),
            Err(TlsError::PlaintextNotLoopback(_))
        ));
        assert!(check_plaintext_listen(any, true).is_ok());
    }

    #[test]
    fn client_transport_rules() {
        assert!(matches!(
            client_transport("http://127.0.0.1:1", None, false),
            Ok(ClientTransport::Plaintext)
        ));
        assert!(matches!(
            client_transport("http://localhost:1", None, false),
            Ok(ClientTransport::Plaintext)
        ));
        assert!(matches!(
            client_transport("http://[::1]:1", None, false),
            Ok(ClientTransport::Plaintext)
        ));
        assert!(matches!(
            client_transport("http://203.0.113.9:1", None, false),
            Err(TlsError::PlaintextNotLoopback(_))
        ));
        assert!(matches!(
            client_transport("http://203.0.113.9:1", None, true),
            Ok(ClientTransport::Plaintext)
        ));
        assert!(matches!(
            client_transport("http://127.0.0.1:1", Some(b"pem"), false),
            Err(TlsError::CaWithoutTls)
        ));
        assert!(matches!(
            client_transport("ftp://127.0.0.1:1", None, false),
            Err(TlsError::BadScheme(_))
        ));
        assert!(matches!(
            client_transport("https://example.org:443", None, false),
            Ok(ClientTransport::Tls(_))
        ));
    }

    #[test]
    fn self_signed_identity_is_pem() {
        let id = TlsIdentity::self_signed(&["localhost", "127.0.0.1"]).unwrap();
        assert!(id.cert_pem.starts_with(b"-----BEGIN CERTIFICATE-----"));
        assert!(id.key_pem.starts_with(b"-----BEGIN PRIVATE KEY-----"));
        assert!(!format!("{id:?}").contains("PRIVATE"));
    }
}
