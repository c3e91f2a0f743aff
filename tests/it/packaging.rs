//! The deployment files (compose, Kubernetes, Prometheus, Grafana) parse and hold what running
//! them needs; the dashboard queries only metrics a running proxy exports.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn deployment_files_parse_and_name_real_metrics() {
    // Nothing listens on port 1: a login fails (an error, a pool) and the replica shows lag, so
    // every labelled family has a series.
    let cfg = pgweir::config::from_str(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nauth = \"trust\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [clusters.default]\nprimary = \"postgres://127.0.0.1:1\"\nreplicas = [\"postgres://127.0.0.1:1\"]\n",
        "test.toml",
        &Default::default(),
    )
    .unwrap();
    let proxy = pgweir::app::Proxy::start(cfg).await.unwrap();
    assert!(crate::support::try_connect(proxy.local_addr(), "app", None, "app").await.is_err());
    let mut s = tokio::net::TcpStream::connect(proxy.metrics_addr().unwrap()).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    let names: Vec<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    assert!(names.iter().any(|n| n == "pgweir_transactions_total"), "{body}");
    let repo = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new(crate::drivers::python())
        .arg(format!("{repo}/tests/packaging_check.py"))
        .arg(repo)
        .args(&names)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("ok packaging"), "{text}");
}
