//! Test certificates: a throwaway CA (rcgen, ring) that issues server certificates for
//! `localhost`/`127.0.0.1`, writes them to disk with the permissions PostgreSQL demands, and
//! builds matching rustls configs. Test-only: it never touches the machine's trust store and
//! never reuses a key across `TestCa`s.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A self-signed CA. `ca_pem` is what clients must trust.
pub struct TestCa {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate (PEM) and its PKCS#8 private key (PEM), signed by a [`TestCa`].
#[derive(Clone)]
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, "PgWeir test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("generate CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa { ca_pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// Issues a server (and client) certificate for `names`: DNS names and/or IP literals such
    /// as `"127.0.0.1"`. The first name becomes the subject CN.
    pub fn issue(&self, names: &[&str]) -> TestCert {
        let sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params (bad DNS name?)");
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("generate leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf certificate");
        TestCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

impl TestCert {
    pub fn cert_der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).expect("parse cert PEM")
    }

    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("parse key PEM")
    }
}

/// Writes `server.crt` (mode 0644) and `server.key` (mode 0600) into `dir`, replacing any
/// existing files. Returns (cert path, key path). Ownership is the caller's business
/// (`PgCluster` chowns them to `postgres` when running as root).
pub fn write_files(dir: &Path, cert: &TestCert) -> (PathBuf, PathBuf) {
    let cert_path = dir.join("server.crt");
    let key_path = dir.join("server.key");
    write_mode(&cert_path, cert.cert_pem.as_bytes(), 0o644);
    write_mode(&key_path, cert.key_pem.as_bytes(), 0o600);
    (cert_path, key_path)
}

/// Writes `contents` to `path` with exactly `mode` (umask and a pre-existing file's mode do not
/// matter).
pub fn write_mode(path: &Path, contents: &[u8], mode: u32) {
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client config trusting only `ca_pem` (ring provider, no process-wide default needed).
pub fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(der.expect("parse CA PEM")).expect("add CA root");
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(cfg)
}

/// A rustls server config presenting `cert` (no client authentication).
pub fn server_config(cert: &TestCert) -> Arc<rustls::ServerConfig> {
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert_der()], cert.key_der())
        .expect("server cert/key");
    Arc::new(cfg)
}
