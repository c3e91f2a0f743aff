//! TLS configuration: the acceptor for client connections (certificate and key files, with the
//! certificate's `tls-server-end-point` channel binding for SCRAM-SHA-256-PLUS) and the connector
//! for server connections (`require`, `verify-ca` or `verify-full`). Uses rustls with the `ring`
//! provider, passed explicitly (no process-wide default is needed).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {reason}")]
    File { what: &'static str, path: String, reason: String },
    #[error("invalid TLS configuration: {0}")]
    Config(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::File { what: "certificates", path: path.display().to_string(), reason: e.to_string() })?
        .collect();
    let certs = certs.map_err(|e| TlsError::File {
        what: "certificates",
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::File {
            what: "certificates",
            path: path.display().to_string(),
            reason: "no PEM certificate found".into(),
        });
    }
    Ok(certs)
}

/// How client connections are encrypted: the acceptor, and the `tls-server-end-point` channel
/// binding of the certificate it presents (None when its signature algorithm defines none).
#[derive(Clone)]
pub struct ClientTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub end_point: Option<Arc<[u8]>>,
}

/// Builds the acceptor for client connections from PEM files.
pub fn acceptor(cert_file: &Path, key_file: &Path) -> Result<ClientTls, TlsError> {
    let certs = read_certs(cert_file)?;
    let end_point = server_end_point(&certs[0]).map(Arc::from);
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| TlsError::File {
        what: "private key",
        path: key_file.display().to_string(),
        reason: e.to_string(),
    })?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(ClientTls { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)), end_point })
}

/// RFC 5929 `tls-server-end-point`: the hash of the server certificate (DER), with the hash of its
/// signature algorithm, SHA-256 for MD5 and SHA-1. None for algorithms without one single hash
/// (Ed25519, RSASSA-PSS): then SCRAM-SHA-256-PLUS is not offered.
pub fn server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    use x509_parser::oid_registry as oid;
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let alg = &cert.signature_algorithm.algorithm;
    let sha256 = [
        oid::OID_PKCS1_MD5WITHRSAENC,
        oid::OID_PKCS1_SHA1WITHRSA,
        oid::OID_PKCS1_SHA256WITHRSA,
        oid::OID_SIG_ECDSA_WITH_SHA256,
        oid::OID_SIG_DSA_WITH_SHA1,
    ];
    if sha256.contains(alg) {
        Some(sha2::Sha256::digest(cert_der).to_vec())
    } else if [oid::OID_PKCS1_SHA384WITHRSA, oid::OID_SIG_ECDSA_WITH_SHA384].contains(alg) {
        Some(sha2::Sha384::digest(cert_der).to_vec())
    } else if [oid::OID_PKCS1_SHA512WITHRSA, oid::OID_SIG_ECDSA_WITH_SHA512].contains(alg) {
        Some(sha2::Sha512::digest(cert_der).to_vec())
    } else if [oid::OID_PKCS1_SHA224WITHRSA, oid::OID_SIG_ECDSA_WITH_SHA224].contains(alg) {
        Some(sha2::Sha224::digest(cert_der).to_vec())
    } else {
        None
    }
}

/// How a server's certificate is checked (libpq's sslmode names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Encrypt, check nothing (libpq `require`).
    None,
    /// The chain must lead to a trusted CA; the name is not checked.
    Ca,
    /// The chain and the host name are checked.
    Full,
}

/// Builds the connector for server connections. `ca_file` gives the trusted roots for
/// `verify-ca`/`verify-full`; without it the system bundle is used.
pub fn connector(verify: Verify, ca_file: Option<&Path>) -> Result<tokio_rustls::TlsConnector, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let config = match verify {
        Verify::None => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAny(provider))).with_no_client_auth()
        }
        Verify::Ca | Verify::Full => {
            let mut roots = RootCertStore::empty();
            let path = ca_file.map(Path::to_path_buf).unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into());
            for cert in read_certs(&path)? {
                roots.add(cert).map_err(|e| TlsError::Config(e.to_string()))?;
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            if verify == Verify::Full {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            } else {
                builder.dangerous().with_custom_certificate_verifier(Arc::new(IgnoreName(webpki))).with_no_client_auth()
            }
        }
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// The server name to present and (for verify-full) check.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_string()).map_err(|e| TlsError::Config(format!("bad server name {host}: {e}")))
}

/// `require`: accepts any certificate but still checks the handshake signatures.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the full WebPKI check except the name.
#[derive(Debug)]
struct IgnoreName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for IgnoreName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::server_end_point;
    use sha2::Digest;

    fn self_signed(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        let p256 = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(server_end_point(&p256), Some(sha2::Sha256::digest(&p256).to_vec()));
        let p384 = self_signed(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(server_end_point(&p384), Some(sha2::Sha384::digest(&p384).to_vec()));
        let ed25519 = self_signed(&rcgen::PKCS_ED25519);
        assert_eq!(server_end_point(&ed25519), None, "Ed25519 has no tls-server-end-point hash");
        assert_eq!(server_end_point(b"not a certificate"), None);
    }
}
