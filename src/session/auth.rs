//! Client authentication as PostgreSQL does it: trust, MD5 and SCRAM-SHA-256 against the users in
//! the config or a verifier fetched with `auth_query`, with a mock exchange for unknown users so
//! names cannot be probed. Also decides which credentials the pool uses towards the server
//! (configured, from the upstream URL, or recovered from the client's SCRAM proof).

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::{Buf, BytesMut};
use pgwire::messages::startup::Authentication;
use tokio::io::AsyncReadExt;

use super::{ClientConn, Context};
use crate::auth::md5::{md5_stored, md5_verify, random_salt};
use crate::auth::scram::{ScramCredentials, ScramSecret, ScramServer};
use crate::config::{AuthMethod, AuthQuery, Config};
use crate::server::Credentials;
use crate::wire::backend::{parse_password, parse_sasl_initial, put_auth};
use crate::wire::frame::FrameHead;
use crate::wire::{tag, PgError, SqlState};

/// Where user secrets come from beyond the config file, plus per-process auth state.
pub struct AuthSource {
    mock_seed: [u8; 32],
    query: Option<AuthQuery>,
    primary: Option<(String, u16)>,
    client: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    /// SCRAM secrets derived from configured plaintext passwords (PBKDF2 is slow on purpose).
    derived: Mutex<HashMap<String, (String, ScramSecret)>>,
}

impl AuthSource {
    pub fn new(config: &Config) -> AuthSource {
        let primary = config.cluster(&config.default_cluster).map(|c| (c.primary.host.clone(), c.primary.port));
        AuthSource {
            mock_seed: rand::random(),
            query: config.auth_query.clone(),
            primary,
            client: tokio::sync::Mutex::new(None),
            derived: Mutex::new(HashMap::new()),
        }
    }

    fn scram_for_password(&self, user: &str, password: &str) -> ScramSecret {
        let mut map = self.derived.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(user) {
            Some((p, s)) if p == password => s.clone(),
            _ => {
                let s = ScramSecret::generate(password);
                map.insert(user.to_string(), (password.to_string(), s.clone()));
                s
            }
        }
    }

    /// Looks a user's stored password up with `auth_query`. Ok(None): no such user.
    async fn query_secret(&self, user: &str) -> Result<Option<Secret>, PgError> {
        let (Some(q), Some((host, port))) = (&self.query, &self.primary) else { return Ok(None) };
        let lookup = self.query_secret_inner(q, host, *port, user);
        match tokio::time::timeout(AUTH_QUERY_TIMEOUT, lookup).await {
            Ok(r) => r,
            Err(_) => {
                tracing::error!(auth_user = %q.user, "auth_query did not answer in time");
                *self.client.lock().await = None;
                Err(lookup_failed_text())
            }
        }
    }

    async fn query_secret_inner(
        &self,
        q: &AuthQuery,
        host: &str,
        port: u16,
        user: &str,
    ) -> Result<Option<Secret>, PgError> {
        let mut guard = self.client.lock().await;
        for attempt in 0..2 {
            if guard.as_ref().is_none_or(|c| c.is_closed()) {
                let mut cfg = tokio_postgres::Config::new();
                cfg.host(host).port(port).user(&q.user).dbname(&q.database).application_name("pgweir auth_query");
                if let Some(p) = &q.password {
                    cfg.password(p);
                }
                cfg.connect_timeout(std::time::Duration::from_secs(5));
                let (c, conn) = cfg.connect(tokio_postgres::NoTls).await.map_err(|e| lookup_failed(&q.user, &e))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                *guard = Some(c);
            }
            let client = guard.as_ref().expect("connected above");
            match client.query_opt(q.query.as_str(), &[&user]).await {
                Ok(None) => return Ok(None),
                Ok(Some(row)) => {
                    let pw: Option<String> = row.try_get(1).map_err(|e| lookup_failed(&q.user, &e))?;
                    return Ok(Some(Secret::from_stored(pw)));
                }
                Err(e) if attempt == 0 && client.is_closed() => {
                    tracing::warn!(error = %e, "auth_query connection lost; reconnecting");
                    *guard = None;
                }
                Err(e) => return Err(lookup_failed(&q.user, &e)),
            }
        }
        Ok(None)
    }
}

/// How long a user lookup through auth_query may take.
const AUTH_QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn lookup_failed(auth_user: &str, e: &tokio_postgres::Error) -> PgError {
    tracing::error!(error = %e, auth_user, "auth_query failed");
    lookup_failed_text()
}

/// What an unauthenticated client is told: no names, no server errors.
fn lookup_failed_text() -> PgError {
    PgError::fatal(SqlState::CONNECTION_FAILURE, "pgweir: cannot look up users through auth_query")
        .with_hint("the proxy's log has the reason; check auth_query (user, password, database)")
}

/// A user's stored password in one of PostgreSQL's forms.
#[derive(Clone)]
enum Secret {
    Plain(String),
    Scram(ScramSecret),
    Md5(String),
    /// The user exists but has no password: only trust lets it in.
    NoPassword,
}

impl Secret {
    fn from_stored(stored: Option<String>) -> Secret {
        match stored {
            None => Secret::NoPassword,
            Some(s) => {
                if let Some(v) = ScramSecret::parse(&s) {
                    Secret::Scram(v)
                } else if crate::auth::md5::is_md5_stored(&s) {
                    Secret::Md5(s)
                } else {
                    Secret::Plain(s)
                }
            }
        }
    }
}

/// Who the pool connects as, and with what.
pub struct AuthOutcome {
    pub server_user: String,
    pub credentials: Credentials,
    /// The credentials were recovered from this login and should replace the pool's.
    pub refreshes_pool: bool,
}

fn failed(user: &str) -> PgError {
    PgError::fatal(SqlState::INVALID_PASSWORD, format!("password authentication failed for user \"{user}\""))
}

/// Runs the exchange the configured method calls for and sends AuthenticationOk on success.
pub async fn authenticate(ctx: &Context, client: &mut ClientConn, user: &str) -> Result<AuthOutcome, PgError> {
    let config = &ctx.config;
    let secret = match config.user(user) {
        Some(u) => Some(match (&u.scram_verifier, &u.password) {
            (_, Some(p)) => Secret::Plain(p.clone()),
            (Some(v), None) => ScramSecret::parse(v).map(Secret::Scram).unwrap_or(Secret::NoPassword),
            (None, None) => Secret::NoPassword,
        }),
        None if config.auth == AuthMethod::Trust => None,
        None => ctx.auth.query_secret(user).await?,
    };
    // What this login proves, usable towards the server.
    let mut derived = match &secret {
        Some(Secret::Plain(p)) => Credentials::Password(p.clone()),
        Some(Secret::Md5(h)) => Credentials::Md5Hash(h.clone()),
        _ => Credentials::None,
    };
    let mut refreshes_pool = false;
    match config.auth {
        AuthMethod::Trust => {}
        AuthMethod::Md5 | AuthMethod::ScramSha256 => {
            let scram_secret = match &secret {
                Some(Secret::Scram(s)) => Some((s.clone(), true)),
                Some(Secret::Plain(p)) if config.auth == AuthMethod::ScramSha256 => {
                    Some((ctx.auth.scram_for_password(user, p), false))
                }
                _ => None,
            };
            let md5_secret = match &secret {
                Some(Secret::Plain(p)) => Some(md5_stored(user, p)),
                Some(Secret::Md5(h)) => Some(h.clone()),
                _ => None,
            };
            if let Some((s, from_verifier)) = scram_secret {
                let client_key = scram_exchange(ctx, client, user, s.clone(), false).await?;
                if from_verifier {
                    if let ScramCredentials::Keys { client_key, server_key, salt, iterations } =
                        ScramCredentials::from_client_key(client_key, &s)
                    {
                        derived = Credentials::ScramKeys { client_key, server_key, salt, iterations };
                        refreshes_pool = true;
                    }
                }
            } else if config.auth == AuthMethod::Md5 {
                md5_exchange(client, user, md5_secret.as_deref()).await?;
            } else {
                // Unknown user, no password, or only an MD5 hash: PostgreSQL runs a mock SCRAM
                // exchange that always fails, so the answer looks like a wrong password.
                scram_exchange(ctx, client, user, ScramSecret::mock(user, &ctx.auth.mock_seed), true).await?;
                return Err(failed(user));
            }
        }
    }
    put_auth(&mut client.wbuf, Authentication::Ok);

    // Server-side identity: the user's own override, then the upstream URL's, then the client's.
    let cluster = config.cluster(&config.default_cluster);
    let url_user = cluster.and_then(|c| c.primary.user.clone());
    let url_password = cluster.and_then(|c| c.primary.password.clone());
    let user_cfg = config.user(user);
    let outcome = if let Some(u) = user_cfg.filter(|u| u.server_user.is_some() || u.server_password.is_some()) {
        AuthOutcome {
            server_user: u.server_user.clone().unwrap_or_else(|| user.to_string()),
            credentials: u.server_password.clone().map(Credentials::Password).unwrap_or(derived),
            refreshes_pool: false,
        }
    } else if let Some(url_user) = url_user {
        AuthOutcome {
            server_user: url_user,
            credentials: url_password.map(Credentials::Password).unwrap_or_default(),
            refreshes_pool: false,
        }
    } else {
        AuthOutcome { server_user: user.to_string(), credentials: derived, refreshes_pool }
    };
    Ok(outcome)
}

/// Reads one message from the client during authentication.
async fn read_message(client: &mut ClientConn) -> Result<(u8, BytesMut), PgError> {
    loop {
        let head = FrameHead::parse(&client.rbuf, 64 * 1024)
            .map_err(|e| PgError::fatal(SqlState::PROTOCOL_VIOLATION, e.to_string()))?;
        if let Some(h) = head {
            if client.rbuf.len() >= h.total {
                let mut frame = client.rbuf.split_to(h.total);
                frame.advance(5);
                return Ok((h.tag, frame));
            }
        }
        let n = client.rbuf.len();
        client.rbuf.reserve(1024);
        let read = client.stream.read_buf(&mut client.rbuf).await;
        if !matches!(read, Ok(m) if m > 0) {
            let _ = n;
            return Err(PgError::fatal(SqlState::PROTOCOL_VIOLATION, "connection closed during authentication"));
        }
    }
}

async fn expect_password_message(client: &mut ClientConn) -> Result<BytesMut, PgError> {
    client.flush().await.map_err(|_| PgError::fatal(SqlState::CONNECTION_FAILURE, "connection lost"))?;
    let (t, body) = read_message(client).await?;
    if t != tag::PASSWORD {
        return Err(PgError::fatal(
            SqlState::PROTOCOL_VIOLATION,
            format!("expected password response, got message type {}", t as char),
        ));
    }
    Ok(body)
}

/// SCRAM-SHA-256, and SCRAM-SHA-256-PLUS (channel binding to the proxy's certificate) for a client
/// on TLS, as PostgreSQL offers both there.
async fn scram_exchange(
    ctx: &Context,
    client: &mut ClientConn,
    user: &str,
    secret: ScramSecret,
    mock: bool,
) -> Result<[u8; 32], PgError> {
    let violation = |m: String| PgError::fatal(SqlState::PROTOCOL_VIOLATION, m);
    let mut server = ScramServer::new(secret, mock);
    let end_point = ctx.tls.as_ref().and_then(|t| t.end_point.as_ref()).filter(|_| client.stream.is_tls());
    if let Some(end_point) = end_point {
        server = server.with_channel_binding(end_point.to_vec());
    }
    put_auth(&mut client.wbuf, Authentication::SASL(server.mechanisms()));
    let body = expect_password_message(client).await?;
    let (mech, data) =
        parse_sasl_initial(&body).ok_or_else(|| violation("malformed SASLInitialResponse message".into()))?;
    let first = server.client_first(&mech, &data).map_err(|e| {
        if e.is_protocol_violation() {
            violation(e.to_string())
        } else {
            failed(user)
        }
    })?;
    put_auth(&mut client.wbuf, Authentication::SASLContinue(first.into()));
    let body = expect_password_message(client).await?;
    match server.client_final(&body) {
        Ok((fin, client_key)) => {
            put_auth(&mut client.wbuf, Authentication::SASLFinal(fin.into()));
            Ok(client_key)
        }
        Err(e) if e.is_protocol_violation() => Err(violation(e.to_string())),
        Err(_) => Err(failed(user)),
    }
}

async fn md5_exchange(client: &mut ClientConn, user: &str, stored: Option<&str>) -> Result<(), PgError> {
    let salt = random_salt();
    put_auth(&mut client.wbuf, Authentication::MD5Password(salt.to_vec()));
    let body = expect_password_message(client).await?;
    let answer =
        parse_password(&body).ok_or_else(|| PgError::fatal(SqlState::PROTOCOL_VIOLATION, "invalid password packet"))?;
    match stored {
        Some(s) if md5_verify(s, salt, &answer) => Ok(()),
        _ => Err(failed(user)),
    }
}
