//! A certificate authority made for one test: its certificate (what `serve --client-ca` is
//! given) and client certificates it issues to members.

use cleanroom_service::TlsIdentity;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A fresh CA (an ECDSA P-256 key and a self-signed CA certificate), valid from 1975 to 4096 as
/// rcgen makes them.
pub struct CertificateAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl CertificateAuthority {
    /// A new CA whose certificate's common name is `name` (two CAs of the same name still have
    /// different keys: neither's certificates chain to the other).
    pub fn new(name: &str) -> CertificateAuthority {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        CertificateAuthority {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> Vec<u8> {
        self.cert_pem.clone().into_bytes()
    }

    /// A client certificate for `member` (common name and DNS name), for client
    /// authentication only, signed by this CA; with its fresh key.
    pub fn issue_client(&self, member: &str) -> TlsIdentity {
        let mut params = CertificateParams::new(vec![member.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, member);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        TlsIdentity {
            cert_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
        }
    }
}
