//! Client certificates (mutual TLS): pinned by the collaboration, or issued by a CA the server
//! trusts (`serve --client-ca`).
//!
//! A member entry may pin the SHA-256 of its DER client certificate (`client_cert_sha256`).
//! When any member does, the server asks every TLS client for a certificate and accepts one
//! only if its end-entity certificate's digest is pinned; rustls still checks that the client
//! holds the certificate's private key (the handshake signature, verified with the `ring`
//! provider's algorithms). The pin *is* the trust decision, as with an SSH key: no CA, chain or
//! validity period is consulted, and a member rotates its certificate by changing its pin.
//!
//! The certificate does not replace the token: [`crate::auth::CheckToken`] finds the member by
//! its token, then refuses the call unless the connection presented that member's pinned
//! certificate. A member without a pin authenticates by token alone, as before.
//!
//! With a client CA ([`ClientAuth::ca_pem`]), the handshake itself requires every client to
//! present a certificate that chains to that CA, verified by rustls' `WebPkiClientVerifier`
//! (chain, validity period, the client-authentication key usage, and the handshake signature);
//! a client without one never reaches the service, whatever token it holds. Pins still apply on
//! top: a pinned member must present its pinned certificate, which must then chain to the CA
//! too. The token is still required of every member.

use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use tokio_rustls::rustls::RootCertStore;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::crypto::{
    WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, UnixTime};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme,
};

/// The SHA-256 of a DER certificate: what a collaboration pins.
pub type CertificateDigest = [u8; 32];

/// The digest of `certificate` (DER).
pub fn digest(certificate: &[u8]) -> CertificateDigest {
    Sha256::digest(certificate).into()
}

/// The digest of the first certificate of a PEM chain: the `client_cert_sha256` to pin for it.
pub fn digest_of_pem(cert_pem: &[u8]) -> Result<CertificateDigest, crate::tls::TlsError> {
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    let cert = CertificateDer::pem_slice_iter(cert_pem)
        .next()
        .ok_or_else(|| crate::tls::TlsError::Certificate("no certificate in the PEM".to_owned()))?
        .map_err(|e| crate::tls::TlsError::Certificate(e.to_string()))?;
    Ok(digest(&cert))
}

/// Which client certificates a TLS server asks for and accepts.
#[derive(Debug, Clone, Default)]
pub struct ClientAuth {
    /// The digests the collaboration's member entries pin (`client_cert_sha256`).
    pub pins: Vec<CertificateDigest>,
    /// The CA certificates (PEM) every client certificate must chain to (`serve --client-ca`);
    /// with them, a client without such a certificate fails the handshake.
    pub ca_pem: Option<Vec<u8>>,
}

impl ClientAuth {
    /// The verifier for these settings, checking signatures with `provider`: a mandatory
    /// chain to the CA when there is one, else a certificate asked for and accepted only when
    /// pinned when there are pins, else `None` (no certificate asked for).
    pub fn verifier(
        &self,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Option<Arc<dyn ClientCertVerifier>>, crate::tls::TlsError> {
        if let Some(ca) = &self.ca_pem {
            let roots = client_ca_roots(ca)?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
                    .build()
                    .map_err(|e| crate::tls::TlsError::ClientCa(e.to_string()))?;
            return Ok(Some(verifier));
        }
        if self.pins.is_empty() {
            return Ok(None);
        }
        Ok(Some(PinnedClientCerts::new(
            self.pins.clone(),
            provider.signature_verification_algorithms,
        )))
    }
}

/// The trust anchors of a client CA file: every certificate of the PEM, at least one, each a
/// certificate rustls can use as a trust anchor.
pub fn client_ca_roots(ca_pem: &[u8]) -> Result<RootCertStore, crate::tls::TlsError> {
    use crate::tls::TlsError;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| TlsError::ClientCa(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| TlsError::ClientCa(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::ClientCa("no certificate in the PEM".to_owned()));
    }
    Ok(roots)
}

/// Accepts a client certificate only when its digest is pinned.
#[derive(Debug)]
pub struct PinnedClientCerts {
    pins: Vec<CertificateDigest>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedClientCerts {
    /// A verifier for `pins`, checking handshake signatures with `algorithms` (the crypto
    /// provider's).
    pub fn new(pins: Vec<CertificateDigest>, algorithms: WebPkiSupportedAlgorithms) -> Arc<Self> {
        Arc::new(PinnedClientCerts { pins, algorithms })
    }
}

impl ClientCertVerifier for PinnedClientCerts {
    fn offer_client_auth(&self) -> bool {
        true
    }

    /// Members without a pin connect without a certificate.
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        if self.pins.contains(&digest(end_entity)) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
