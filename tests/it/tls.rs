//! TLS on both sides of the proxy.

use std::io::{Read, Write};

use crate::harness::pg::{try_psql, PgCluster, PgOptions};
use crate::harness::tls::{write_files, TestCa};
use crate::support::start_proxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tls_required() {
    let pg = PgCluster::start(PgOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = write_files(dir.path(), &ca.issue(&["localhost", "127.0.0.1"]));
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let toml = format!(
        "[proxy]\nauth = \"trust\"\n[tls]\nmode = \"require\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let proxy = start_proxy(&pg, &toml).await;
    let port = proxy.local_addr().port();
    let base = format!("host=127.0.0.1 port={port} user=app dbname=postgres");
    let info = tokio::task::spawn_blocking({
        let base = base.clone();
        let ca = ca_file.display().to_string();
        move || {
            (
                try_psql(&format!("{base} sslmode=require"), "select 'encrypted'"),
                try_psql(&format!("{base} sslmode=verify-full sslrootcert={ca}"), "select 'verified'"),
                try_psql(&format!("{base} sslmode=disable"), "select 1"),
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(info.0.as_deref(), Ok("encrypted"));
    assert_eq!(info.1.as_deref(), Ok("verified"));
    let refused = info.2.expect_err("plaintext must be refused");
    assert!(refused.contains("accepts only TLS"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_before_the_tls_handshake_are_rejected() {
    let pg = PgCluster::start(PgOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = write_files(dir.path(), &ca.issue(&["localhost"]));
    let toml = format!("[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n", cert.display(), key.display());
    let proxy = start_proxy(&pg, &toml).await;
    let addr = proxy.local_addr();
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        // SSLRequest immediately followed by a plaintext StartupMessage in the same packet.
        let mut pkt = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        pkt.extend_from_slice(&[0, 0, 0, 9, 0, 3, 0, 0, 0]);
        s.write_all(&pkt).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        buf
    })
    .await
    .unwrap();
    assert_eq!(answer.first(), Some(&b'S'));
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("08P01") && text.contains("unencrypted data after SSL request"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_verify_full() {
    let pg = PgCluster::start(PgOptions { ssl: true, ..PgOptions::default() });
    let ca = pg.ca_path().unwrap();
    // ssl_user may only log in over TLS (hostssl); the proxy must encrypt and verify the server.
    let toml = format!(
        "[[users]]\nname = \"ssl_user\"\npassword = \"ssl_pass\"\n\
         [clusters.default]\nprimary = \"postgres://127.0.0.1:{}\"\ntls = \"verify-full\"\nca_file = \"{}\"\n",
        pg.port(),
        ca.display()
    );
    let proxy = start_proxy(&pg, &toml).await;
    let c = crate::support::try_connect(proxy.local_addr(), "ssl_user", Some("ssl_pass"), "postgres").await.unwrap();
    let ssl =
        crate::support::scalar(&c, "select ssl::text from pg_stat_ssl where pid = pg_backend_pid()").await.unwrap();
    assert_eq!(ssl, "true");

    // A CA that did not sign the server's certificate: the proxy refuses to talk to it.
    let other = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let bad_ca = dir.path().join("other-ca.pem");
    std::fs::write(&bad_ca, &other.ca_pem).unwrap();
    let toml = toml.replace(&ca.display().to_string(), &bad_ca.display().to_string());
    let proxy = start_proxy(&pg, &toml).await;
    let err =
        crate::support::try_connect(proxy.local_addr(), "ssl_user", Some("ssl_pass"), "postgres").await.err().unwrap();
    assert!(crate::support::sqlstate(&err).starts_with("08"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_channel_binding_over_tls() {
    let pg = PgCluster::start(PgOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = write_files(dir.path(), &ca.issue(&["localhost", "127.0.0.1"]));
    let toml = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n[[users]]\nname = \"scram_user\"\npassword = \"scram_pass\"\n",
        cert.display(),
        key.display()
    );
    let proxy = start_proxy(&pg, &toml).await;
    let base = format!("host=127.0.0.1 port={} user=scram_user dbname=postgres", proxy.local_addr().port());
    let answers = tokio::task::spawn_blocking(move || {
        let run = |extra: &str| try_psql(&format!("{base} {extra}"), "select current_user");
        [
            run("password=scram_pass sslmode=require channel_binding=require"),
            run("password=wrong sslmode=require channel_binding=require"),
            run("password=scram_pass sslmode=require channel_binding=disable"),
            run("password=scram_pass sslmode=disable channel_binding=require"),
        ]
    })
    .await
    .unwrap();
    // libpq's channel_binding=require fails unless the exchange was SCRAM-SHA-256-PLUS, bound to
    // the certificate of the TLS session it verified the server over.
    assert_eq!(answers[0].as_deref(), Ok("scram_user"), "{:?}", answers[0]);
    let wrong = answers[1].as_ref().expect_err("wrong password");
    assert!(wrong.contains("password authentication failed"), "{wrong}");
    assert_eq!(answers[2].as_deref(), Ok("scram_user"), "a client that does not bind still logs in");
    // Without TLS there is nothing to bind to: the proxy offers plain SCRAM-SHA-256 only.
    let plain = answers[3].as_ref().expect_err("no channel binding without TLS");
    assert!(plain.contains("channel binding"), "{plain}");
}
