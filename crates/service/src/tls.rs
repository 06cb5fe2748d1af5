//! Transport security: when plaintext is allowed, the server's and the client's rustls
//! configuration, and throwaway self-signed certificates (for tests and the demo).
//!
//! Plaintext `http://` is allowed only on a loopback address unless the operator says
//! `--insecure`: bearer tokens and query text must not cross a network unencrypted by accident.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject as _};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig};

use crate::client_cert::ClientAuth;

/// The ALPN protocol the server offers: HTTP/2, the only one gRPC speaks.
pub const ALPN_H2: &[u8] = b"h2";

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
    /// A client CA was given without TLS: client certificates exist only in a TLS handshake.
    #[error(
        "--client-ca needs TLS: client certificates are only exchanged in a TLS handshake; give \
         --tls-cert and --tls-key as well"
    )]
    ClientCaWithoutTls,
    /// The client CA file holds no usable certificate.
    #[error("the client CA certificate (--client-ca) cannot be used: {0}")]
    ClientCa(String),
    /// Generating a self-signed certificate failed.
    #[error("could not generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The certificate chain is not PEM, or holds no certificate.
    #[error("the TLS certificate chain cannot be read: {0}")]
    Certificate(String),
    /// The private key is not a PEM private key.
    #[error("the TLS private key cannot be read: {0}")]
    PrivateKey(#[source] pem::Error),
    /// rustls refused the certificate and key together (e.g. a key that does not match).
    #[error("the TLS certificate and key cannot be used: {0}")]
    Config(#[from] rustls::Error),
}

impl TlsIdentity {
    /// The rustls server configuration presenting this identity: the `ring` provider, its safe
    /// default protocol versions (TLS 1.2 and 1.3), ALPN `h2` only (what tonic's own TLS
    /// configuration sets), and client certificates as `clients` says ([`ClientAuth::verifier`]):
    /// required and chained to the client CA when there is one, else asked for only when some
    /// are pinned and then accepted only when pinned, else not asked for.
    pub fn rustls_server_config(
        &self,
        clients: &ClientAuth,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let chain = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        if chain.is_empty() {
            return Err(TlsError::Certificate(
                "no certificate in the PEM".to_owned(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(TlsError::PrivateKey)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = clients.verifier(&provider)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?;
        let builder = match verifier {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key)?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
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
            ClientTransport::Tls(config) => Ok(ClientTransport::Tls(config.identity(
                tonic::transport::Identity::from_pem(&identity.cert_pem, &identity.key_pem),
            ))),
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

    #[test]
    fn a_client_ca_must_hold_a_certificate() {
        let id = TlsIdentity::self_signed(&["localhost"]).unwrap();
        for bad in [&b"not a certificate"[..], b""] {
            let clients = ClientAuth {
                pins: Vec::new(),
                ca_pem: Some(bad.to_vec()),
            };
            let error = id.rustls_server_config(&clients).unwrap_err();
            assert_eq!(
                error.to_string(),
                "the client CA certificate (--client-ca) cannot be used: no certificate in the PEM"
            );
        }
        let clients = ClientAuth {
            pins: Vec::new(),
            ca_pem: Some(id.cert_pem.clone()),
        };
        assert!(id.rustls_server_config(&clients).is_ok());
    }

    #[test]
    fn server_config_offers_h2_and_refuses_bad_pem() {
        let id = TlsIdentity::self_signed(&["localhost"]).unwrap();
        let config = id.rustls_server_config(&ClientAuth::default()).unwrap();
        assert_eq!(config.alpn_protocols, [ALPN_H2.to_vec()]);
        let no_cert = TlsIdentity {
            cert_pem: b"not a certificate".to_vec(),
            key_pem: id.key_pem.clone(),
        };
        assert!(matches!(
            no_cert.rustls_server_config(&ClientAuth::default()),
            Err(TlsError::Certificate(_))
        ));
        let no_key = TlsIdentity {
            cert_pem: id.cert_pem.clone(),
            key_pem: b"not a key".to_vec(),
        };
        assert!(matches!(
            no_key.rustls_server_config(&ClientAuth::default()),
            Err(TlsError::PrivateKey(_))
        ));
        let other = TlsIdentity::self_signed(&["localhost"]).unwrap();
        let mismatched = TlsIdentity {
            cert_pem: id.cert_pem.clone(),
            key_pem: other.key_pem,
        };
        assert!(matches!(
            mismatched.rustls_server_config(&ClientAuth::default()),
            Err(TlsError::Config(_))
        ));
    }
}
