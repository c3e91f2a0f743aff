//! Opening a server connection: TCP, optional TLS, StartupMessage, authentication, and the
//! parameter/backend-key exchange up to the first ReadyForQuery. Also forwards CancelRequests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{CancelKey, ServerConn, ServerError};
use crate::auth::md5::{md5_response, md5_stored};
use crate::auth::scram::{ScramClient, ScramCredentials, SCRAM_SHA_256};
use crate::net::Stream;
use crate::wire::backend::{
    parse_backend_key_data, put_password, put_sasl_initial_response, put_sasl_response, AuthRequest, ErrorFields,
};
use crate::wire::startup::{encode_cancel, encode_ssl_request, encode_startup};
use crate::wire::tag;

/// What the proxy can prove to a server about the user it connects as.
#[derive(Clone, Debug, Default)]
pub enum Credentials {
    /// Nothing: works only where the server trusts the connection.
    #[default]
    None,
    Password(String),
    /// PostgreSQL's stored MD5 hash ("md5..."), enough to answer an MD5 challenge.
    Md5Hash(String),
    /// Keys recovered from a client's SCRAM exchange (pass-through).
    ScramKeys {
        client_key: [u8; 32],
        server_key: [u8; 32],
        salt: Vec<u8>,
        iterations: u32,
    },
}

/// Where and as whom a pool's connections are opened.
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    /// Updated when a client logs in with SCRAM pass-through, so later connections can reuse it.
    pub credentials: Mutex<Credentials>,
    pub tls: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
    pub connect_timeout: Duration,
    pub next_id: Arc<AtomicU64>,
    /// Prepared statements kept per server connection.
    pub prepared_cap: usize,
}

impl Target {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Opens and authenticates a server connection.
pub async fn connect(target: &Target) -> Result<ServerConn, ServerError> {
    let addr = target.addr();
    match tokio::time::timeout(target.connect_timeout, connect_inner(target, &addr)).await {
        Ok(r) => r,
        Err(_) => Err(ServerError::Timeout { addr }),
    }
}

async fn connect_inner(target: &Target, addr: &str) -> Result<ServerConn, ServerError> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| ServerError::Connect { addr: addr.to_string(), reason: e.to_string() })?;
    tcp.set_nodelay(true)?;
    let cancel_addr = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| addr.to_string());
    let stream = match &target.tls {
        None => Stream::Plain(tcp),
        Some((connector, name)) => {
            let mut tcp = tcp;
            let mut req = BytesMut::new();
            encode_ssl_request(&mut req);
            tcp.write_all(&req).await?;
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer).await?;
            if answer[0] != b'S' {
                return Err(ServerError::Tls { addr: addr.to_string(), reason: "server does not support TLS".into() });
            }
            let tls = connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| ServerError::Tls { addr: addr.to_string(), reason: e.to_string() })?;
            Stream::Connected(Box::new(tls))
        }
    };
    let mut conn = ServerConn {
        stream,
        rbuf: BytesMut::with_capacity(8192),
        params: HashMap::new(),
        applied: HashMap::new(),
        prepared: super::prepared::PreparedCache::new(target.prepared_cap),
        cancel_key: std::sync::Arc::new(CancelKey { addr: cancel_addr, pid: 0, secret: Vec::new() }),
        status: b'I',
        broken: false,
        created: Instant::now(),
        id: target.next_id.fetch_add(1, Ordering::Relaxed),
        registered: None,
        synced: 0,
    };
    let mut out = BytesMut::new();
    // No application_name: the pool's defaults must be what a client that sets none would see
    // connecting directly; each client's own name is applied on checkout.
    encode_startup(&[("user", &target.user), ("database", &target.dbname)], &mut out);
    conn.stream.write_all(&out).await?;
    conn.stream.flush().await?;
    let creds = target.credentials.lock().map(|c| c.clone()).unwrap_or_default();
    authenticate(&mut conn, &target.user, &creds).await?;
    loop {
        let (t, body) = conn.read_frame().await?;
        match t {
            tag::PARAMETER_STATUS => conn.record_parameter(&body),
            tag::BACKEND_KEY_DATA => {
                let (pid, secret) = parse_backend_key_data(&body)
                    .ok_or_else(|| ServerError::Protocol("malformed BackendKeyData".into()))?;
                let key = std::sync::Arc::make_mut(&mut conn.cancel_key);
                key.pid = pid;
                key.secret = secret;
            }
            tag::READY_FOR_QUERY => {
                conn.status = body.first().copied().unwrap_or(b'I');
                return Ok(conn);
            }
            tag::ERROR_RESPONSE => return Err(rejected(&body)),
            tag::NOTICE_RESPONSE | tag::NEGOTIATE_PROTOCOL_VERSION => {}
            other => {
                return Err(ServerError::Protocol(format!("unexpected message '{}' during startup", other as char)))
            }
        }
    }
}

fn rejected(body: &[u8]) -> ServerError {
    let mut raw = BytesMut::new();
    crate::wire::frame::put_frame(&mut raw, tag::ERROR_RESPONSE, body);
    ServerError::Rejected(ErrorFields::parse(body), raw.to_vec())
}

async fn authenticate(conn: &mut ServerConn, user: &str, creds: &Credentials) -> Result<(), ServerError> {
    let auth_err = |reason: &str| ServerError::Auth { user: user.to_string(), reason: reason.to_string() };
    let mut scram: Option<ScramClient> = None;
    let mut server_proved = false;
    loop {
        let (t, body) = conn.read_frame().await?;
        if t == tag::ERROR_RESPONSE {
            return Err(rejected(&body));
        }
        if t != tag::AUTHENTICATION {
            return Err(ServerError::Protocol(format!("expected authentication, got '{}'", t as char)));
        }
        let req = AuthRequest::parse(&body)
            .ok_or_else(|| ServerError::Protocol("malformed authentication request".into()))?;
        let mut out = BytesMut::new();
        match req {
            AuthRequest::Ok if scram.is_some() && !server_proved => {
                return Err(auth_err("the server ended SCRAM without proving it knows the password"))
            }
            AuthRequest::Ok => return Ok(()),
            AuthRequest::Cleartext => match creds {
                Credentials::Password(p) => put_password(&mut out, p),
                _ => {
                    return Err(auth_err(
                        "the server asks for a cleartext password and the proxy has none for this user",
                    ))
                }
            },
            AuthRequest::Md5(salt) => {
                let stored = match creds {
                    Credentials::Password(p) => md5_stored(user, p),
                    Credentials::Md5Hash(h) => h.clone(),
                    _ => {
                        return Err(auth_err(
                            "the server asks for an MD5 password and the proxy has none for this user",
                        ))
                    }
                };
                put_password(&mut out, &md5_response(&stored, salt));
            }
            AuthRequest::Sasl(mechs) => {
                if !mechs.iter().any(|m| m == SCRAM_SHA_256) {
                    return Err(auth_err(&format!("the server offers only unsupported SASL mechanisms {mechs:?}")));
                }
                let sc = match creds {
                    Credentials::Password(p) => ScramCredentials::Password(p.clone()),
                    Credentials::ScramKeys { client_key, server_key, salt, iterations } => ScramCredentials::Keys {
                        client_key: *client_key,
                        server_key: *server_key,
                        salt: salt.clone(),
                        iterations: *iterations,
                    },
                    _ => {
                        return Err(auth_err(
                            "the server asks for SCRAM and the proxy has no password or keys for this user",
                        ))
                    }
                };
                let mut client = ScramClient::new(sc);
                let first = client.client_first();
                put_sasl_initial_response(&mut out, SCRAM_SHA_256, &first);
                scram = Some(client);
            }
            AuthRequest::SaslContinue(data) => {
                let client =
                    scram.as_mut().ok_or_else(|| ServerError::Protocol("SASL continue without SASL".into()))?;
                let fin = client.server_first(&data).map_err(|e| auth_err(&e.to_string()))?;
                put_sasl_response(&mut out, &fin);
            }
            AuthRequest::SaslFinal(data) => {
                let client = scram.as_mut().ok_or_else(|| ServerError::Protocol("SASL final without SASL".into()))?;
                client.server_final(&data).map_err(|e| auth_err(&e.to_string()))?;
                server_proved = true;
                continue;
            }
            AuthRequest::Unsupported(code) => {
                return Err(auth_err(&format!("unsupported authentication method (code {code})")))
            }
        }
        conn.stream.write_all(&out).await?;
        conn.stream.flush().await?;
    }
}

/// Forwards a cancel to the server that holds `key` and waits until the server has taken it
/// (it closes the connection after reading the request).
pub async fn cancel(key: &CancelKey, timeout: Duration) -> Result<(), ServerError> {
    let work = async {
        let mut tcp = TcpStream::connect(&key.addr)
            .await
            .map_err(|e| ServerError::Connect { addr: key.addr.clone(), reason: e.to_string() })?;
        let mut out = BytesMut::new();
        encode_cancel(key.pid, &key.secret, &mut out);
        tcp.write_all(&out).await?;
        let mut sink = [0u8; 64];
        while tcp.read(&mut sink).await? > 0 {}
        Ok(())
    };
    tokio::time::timeout(timeout, work).await.unwrap_or(Err(ServerError::Timeout { addr: key.addr.clone() }))
}
