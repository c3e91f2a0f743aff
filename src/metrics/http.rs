//! A minimal HTTP/1.1 endpoint for scrapers and orchestrators: `GET /metrics` (Prometheus text
//! format), `GET /healthz` (the process answers) and `GET /readyz` (200 only while every
//! cluster's primary is reachable, else 503). One request per connection; anything else gets
//! 404 or 405. It must never block the proxy: each connection is its own task with a deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the endpoint renders.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;
/// Whether the proxy can serve (checked per `/readyz` request).
pub type Ready = Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + Sync>;

pub async fn serve(listener: TcpListener, render: Render, ready: Ready, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let Ok((tcp, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (render, ready) = (render.clone(), ready.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(tcp, render, ready)).await;
        });
    }
}

async fn answer(mut tcp: TcpStream, render: Render, ready: Ready) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.split_ascii_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", render()),
        ("GET", "/healthz") => ("200 OK", "text/plain; charset=utf-8", "ok\n".to_string()),
        ("GET", "/readyz") => match ready().await {
            true => ("200 OK", "text/plain; charset=utf-8", "ready\n".to_string()),
            false => ("503 Service Unavailable", "text/plain; charset=utf-8", "no primary reachable\n".to_string()),
        },
        ("GET", _) => ("404 Not Found", "text/plain; charset=utf-8", "not found\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", "method not allowed\n".to_string()),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(resp.as_bytes()).await?;
    tcp.shutdown().await
}
