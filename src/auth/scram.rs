//! SCRAM-SHA-256 (RFC 5802 / RFC 7677) exactly as PostgreSQL speaks it: the verifier format stored in
//! `pg_authid.rolpassword`, the server side of an exchange (with a mock mode for unknown users, and
//! SCRAM-SHA-256-PLUS with `tls-server-end-point` channel binding over TLS), and the
//! client side the proxy uses toward a real server, either with a password or with the ClientKey it
//! recovered from a client's proof (PgBouncer-style pass-through).
//!
//! Pure logic: no I/O, no async, no logging, no global state. It must never reveal whether a user
//! exists (a mock exchange fails only at the final step, with the same error as a wrong password), never
//! compare secrets in variable time, and never panic on malformed input.

use std::borrow::Cow;
use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use ScramError::{Malformed, Unsupported};

/// The SASL mechanism without channel binding.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// The SASL mechanism with channel binding (offered over TLS only).
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The one channel-binding type PostgreSQL (and so the proxy) supports (RFC 5929).
const TLS_SERVER_END_POINT: &[u8] = b"tls-server-end-point";
/// PostgreSQL's default `scram_iterations`.
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// The most PBKDF2 iterations the proxy computes for a server's challenge (PostgreSQL's
/// default is 4096).
pub const MAX_SERVER_ITERATIONS: u32 = 100_000;

const KEY_LEN: usize = 32;
/// PostgreSQL's SCRAM_DEFAULT_SALT_LEN.
const SALT_LEN: usize = 16;
/// PostgreSQL's SCRAM_RAW_NONCE_LEN (before base64).
const RAW_NONCE_LEN: usize = 18;

type HmacSha256 = Hmac<Sha256>;

/// Why a SCRAM step failed. Server side: [`ScramError::is_protocol_violation`] picks 08P01, everything
/// else is 28P01. Client side (proxy -> server): every error means the login to the server failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("unsupported SASL mechanism \"{0}\"")]
    UnsupportedMechanism(String),
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// Channel binding required (`p=`), an authzid, or a mandatory extension. PostgreSQL answers 0A000.
    #[error("unsupported SCRAM feature: {0}")]
    Unsupported(&'static str),
    #[error("SCRAM channel-binding attribute does not match the client-first-message")]
    ChannelBindingMismatch,
    /// The mechanism and the gs2 header disagree about channel binding (PostgreSQL's 08P01
    /// "SCRAM channel binding negotiation error" cases, including a downgrade).
    #[error("SCRAM channel binding negotiation error: {0}")]
    ChannelBindingNegotiation(&'static str),
    #[error("SCRAM message out of order")]
    OutOfOrder,
    #[error("SCRAM nonce mismatch")]
    NonceMismatch,
    /// Wrong password, or an unknown user (mock exchange).
    #[error("invalid SCRAM client proof")]
    InvalidProof,
    /// Client side with recovered keys: the server holds a different verifier than the proxy.
    #[error("the server's SCRAM verifier differs from the proxy's (salt or iteration count)")]
    VerifierMismatch,
    #[error("invalid SCRAM server signature")]
    InvalidServerSignature,
    /// The server sent `e=<error>` in its server-final-message.
    #[error("server rejected SCRAM authentication: {0}")]
    ServerError(String),
}

impl ScramError {
    /// True for malformed or out-of-order messages and unsupported features (08P01); false for
    /// authentication failures (28P01).
    pub fn is_protocol_violation(&self) -> bool {
        matches!(
            self,
            Self::UnsupportedMechanism(_)
                | Malformed(_)
                | Unsupported(_)
                | Self::ChannelBindingMismatch
                | Self::ChannelBindingNegotiation(_)
                | Self::OutOfOrder
        )
    }
}

/// A user's SCRAM-SHA-256 verifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramSecret {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl ScramSecret {
    /// Parse PostgreSQL's verifier format
    /// "SCRAM-SHA-256$<iter>:<salt b64>$<StoredKey b64>:<ServerKey b64>" (as in pg_authid.rolpassword).
    /// None if malformed.
    pub fn parse(s: &str) -> Option<ScramSecret> {
        let (iter_salt, keys) = s.strip_prefix("SCRAM-SHA-256$")?.split_once('$')?;
        let (iter, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(ScramSecret {
            iterations: parse_iterations(iter.as_bytes())?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }

    /// Build from a plaintext password (SASLprep, then PBKDF2-HMAC-SHA256 "Hi"), salt and iterations.
    /// `iterations == 0` means [`DEFAULT_ITERATIONS`], as in PostgreSQL.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramSecret {
        let iterations = if iterations > 0 { iterations } else { DEFAULT_ITERATIONS };
        let (client_key, server_key) = password_keys(password, salt, iterations);
        let (salt, stored_key) = (salt.to_vec(), sha256(&[&client_key]));
        ScramSecret { iterations, salt, stored_key, server_key }
    }

    /// Random 16-byte salt, [`DEFAULT_ITERATIONS`].
    pub fn generate(password: &str) -> ScramSecret {
        let mut salt = [0u8; SALT_LEN];
        rand::fill(&mut salt[..]);
        Self::from_password(password, &salt, DEFAULT_ITERATIONS)
    }

    /// A deterministic fake secret for an unknown user (salt = first 16 bytes of
    /// SHA-256(mock_seed || user)), like PostgreSQL's scram_mock_salt, so the exchange looks identical
    /// and always fails. The keys are derived from the seed too (no client key matches them in
    /// practice, and a [`ScramServer`] in mock mode fails regardless).
    pub fn mock(user: &str, mock_seed: &[u8]) -> ScramSecret {
        let user = user.as_bytes();
        ScramSecret {
            iterations: DEFAULT_ITERATIONS,
            salt: sha256(&[mock_seed, user])[..SALT_LEN].to_vec(),
            stored_key: sha256(&[b"pgweir mock stored key", mock_seed, user]),
            server_key: sha256(&[b"pgweir mock server key", mock_seed, user]),
        }
    }
}

impl fmt::Display for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (salt, stored, server) = (&self.salt[..], &self.stored_key, &self.server_key);
        let [salt, stored, server] = [salt, stored, server].map(|b| B64.encode(b));
        write!(f, "{SCRAM_SHA_256}${}:{salt}${stored}:{server}", self.iterations)
    }
}

enum ServerState {
    Initial,
    /// After server-first: (the expected `c=` content: gs2 header plus channel-binding data,
    /// client-first-message-bare, server-first-message).
    SentFirst(Vec<u8>, Vec<u8>, Vec<u8>),
    Done,
}

/// Server side of one exchange (what PostgreSQL does when it authenticates a client).
pub struct ScramServer {
    secret: ScramSecret,
    mock: bool,
    state: ServerState,
    fixed_nonce: Option<String>,
    /// `tls-server-end-point` data of the TLS session the client came over (then PLUS is offered).
    binding: Option<Vec<u8>>,
}

impl ScramServer {
    /// `secret`: the user's verifier; `mock`: true when the user does not exist (the exchange then fails
    /// at the final step with the same error as a wrong password, never earlier).
    pub fn new(secret: ScramSecret, mock: bool) -> ScramServer {
        ScramServer { secret, mock, state: ServerState::Initial, fixed_nonce: None, binding: None }
    }

    /// Offers SCRAM-SHA-256-PLUS too: `end_point` is the `tls-server-end-point` channel binding of
    /// the TLS session the client is on (`crate::net::tls::server_end_point`).
    pub fn with_channel_binding(mut self, end_point: Vec<u8>) -> ScramServer {
        self.binding = Some(end_point);
        self
    }

    /// The mechanisms for AuthenticationSASL, in PostgreSQL's order (PLUS first when offered).
    pub fn mechanisms(&self) -> Vec<String> {
        let plus = self.binding.as_ref().map(|_| SCRAM_SHA_256_PLUS.to_owned());
        plus.into_iter().chain([SCRAM_SHA_256.to_owned()]).collect()
    }

    #[cfg(test)]
    pub(crate) fn with_server_nonce(secret: ScramSecret, mock: bool, nonce: &str) -> ScramServer {
        ScramServer { fixed_nonce: Some(nonce.to_owned()), ..Self::new(secret, mock) }
    }

    /// The verifier this exchange runs against (with the ClientKey that
    /// [`ScramServer::client_final`] recovers it makes [`ScramCredentials::from_client_key`]).
    pub fn secret(&self) -> &ScramSecret {
        &self.secret
    }

    /// Input: the SASLInitialResponse's mechanism name and data (client-first-message). Output:
    /// server-first-message "r=<client nonce><server nonce>,s=<salt b64>,i=<iter>". The `n=` user name
    /// is ignored (PostgreSQL uses the startup user). Accepts gs2 headers "n,," and "y,," with
    /// SCRAM-SHA-256 and, when channel binding is offered, "p=tls-server-end-point,," with
    /// SCRAM-SHA-256-PLUS; "y,," while PLUS is offered is a downgrade and refused.
    pub fn client_first(&mut self, mechanism: &str, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        let ServerState::Initial = std::mem::replace(&mut self.state, ServerState::Done) else {
            return Err(ScramError::OutOfOrder);
        };
        let plus = match mechanism {
            SCRAM_SHA_256 => false,
            SCRAM_SHA_256_PLUS if self.binding.is_some() => true,
            _ => return Err(ScramError::UnsupportedMechanism(mechanism.to_owned())),
        };
        check_no_nul(data)?;
        let (gs2_header, bare) = self.gs2_header(plus, data)?;
        if bare.starts_with(b"m") {
            return Err(Unsupported("mandatory extension"));
        }
        // Any extensions after the nonce are ignored, as PostgreSQL does.
        let &[(b'n', _), (b'r', client_nonce), ..] = &parse_attrs(bare)?[..] else {
            return Err(Malformed("expected n= and r= in client-first-message"));
        };
        ensure(is_printable(client_nonce), Malformed("non-printable nonce"))?;

        let server_nonce = self.fixed_nonce.clone().unwrap_or_else(random_nonce);
        let (salt, iterations) = (B64.encode(&self.secret.salt), self.secret.iterations);
        let rest = format!("{server_nonce},s={salt},i={iterations}");
        let server_first = [b"r=", client_nonce, rest.as_bytes()].concat();
        let mut cbind = gs2_header.to_vec();
        if plus {
            cbind.extend_from_slice(self.binding.as_deref().unwrap_or_default());
        }
        self.state = ServerState::SentFirst(cbind, bare.to_vec(), server_first.clone());
        Ok(server_first)
    }

    /// Splits the client-first-message into its gs2 header and the bare message, checking the
    /// channel-binding flag against the mechanism as PostgreSQL's read_client_first_message does.
    fn gs2_header<'a>(&self, plus: bool, data: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), ScramError> {
        use ScramError::ChannelBindingNegotiation as Negotiation;
        let header_len = match data {
            [b'p', b'=', rest @ ..] => {
                ensure(plus, Negotiation("SCRAM-SHA-256 was selected but the message asks for channel binding"))?;
                let name_len = rest.iter().position(|&b| b == b',').ok_or(Malformed("invalid gs2 header"))?;
                ensure(&rest[..name_len] == TLS_SERVER_END_POINT, Unsupported("channel-binding type"))?;
                match rest.get(name_len + 1) {
                    Some(b',') => 2 + name_len + 2,
                    Some(b'a') => return Err(Unsupported("authzid")),
                    _ => return Err(Malformed("invalid gs2 header")),
                }
            }
            [b'n' | b'y', ..] if plus => {
                return Err(Negotiation("SCRAM-SHA-256-PLUS was selected but the message has no channel binding"))
            }
            [b'y', b',', b',', ..] if self.binding.is_some() => {
                return Err(Negotiation("the client thinks the server does not support channel binding, but it does"))
            }
            [b'n' | b'y', b',', b',', ..] => 3,
            [b'n' | b'y', b',', b'a', ..] => return Err(Unsupported("authzid")),
            _ => return Err(Malformed("invalid gs2 header")),
        };
        Ok(data.split_at(header_len))
    }

    /// Input: client-final-message "c=<b64 gs2 header>,r=<nonce>,p=<proof b64>". Output on success:
    /// (server-final-message "v=<b64 ServerSignature>", the recovered ClientKey).
    pub fn client_final(&mut self, data: &[u8]) -> Result<(Vec<u8>, [u8; 32]), ScramError> {
        let state = std::mem::replace(&mut self.state, ServerState::Done);
        let ServerState::SentFirst(expected_cbind, bare, first) = state else {
            return Err(ScramError::OutOfOrder);
        };
        check_no_nul(data)?;
        let attrs = parse_attrs(data)?;
        // Extensions between r= and p= are ignored; the proof must come last and only once.
        let &[(b'c', cbind), (b'r', final_nonce), ref extensions @ .., (b'p', proof_b64)] = &attrs[..] else {
            return Err(Malformed("expected c=, r= and a final p="));
        };
        let proof_last = extensions.iter().all(|a| a.0 != b'p');
        ensure(proof_last, Malformed("proof not last"))?;
        let cbind = B64.decode(cbind).map_err(|_| Malformed("bad base64 in c="))?;
        ensure(ct_eq(&cbind, &expected_cbind), ScramError::ChannelBindingMismatch)?;
        let proof = B64.decode(proof_b64).ok().and_then(|p| p.try_into().ok());
        let proof: [u8; KEY_LEN] = proof.ok_or(Malformed("malformed proof"))?;

        // server_first starts with "r=" and the full nonce, up to the first comma.
        let nonce = first[2..].split(|&b| b == b',').next().unwrap_or_default();
        ensure(ct_eq(final_nonce, nonce), ScramError::NonceMismatch)?;
        let without_proof = &data[..data.len() - proof_b64.len() - ",p=".len()];
        let auth_message = [&bare[..], b",", &first, b",", without_proof].concat();
        let client_signature = hmac(&self.secret.stored_key, &[&auth_message]);
        let client_key = xor(&proof, &client_signature);
        let proof_ok = ct_eq(&sha256(&[&client_key]), &self.secret.stored_key);
        ensure(proof_ok && !self.mock, ScramError::InvalidProof)?;
        let server_signature = B64.encode(hmac(&self.secret.server_key, &[&auth_message]));
        Ok((format!("v={server_signature}").into_bytes(), client_key))
    }
}

/// What the proxy authenticates to a PostgreSQL server with.
#[derive(Clone)]
pub enum ScramCredentials {
    Password(String),
    /// Keys recovered from a client's exchange; `salt` and `iterations` are those they derive from.
    Keys {
        client_key: [u8; 32],
        server_key: [u8; 32],
        salt: Vec<u8>,
        iterations: u32,
    },
}

impl ScramCredentials {
    /// Pass-through credentials from the ClientKey a [`ScramServer`] recovered and its verifier.
    pub fn from_client_key(client_key: [u8; 32], secret: &ScramSecret) -> ScramCredentials {
        let (server_key, salt, iterations) = (secret.server_key, secret.salt.clone(), secret.iterations);
        ScramCredentials::Keys { client_key, server_key, salt, iterations }
    }
}

/// Never prints a password or key.
impl fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Password(_) => "ScramCredentials::Password(..)",
            Self::Keys { .. } => "ScramCredentials::Keys(..)",
        })
    }
}

enum ClientState {
    Initial,
    SentFirst { bare: String, nonce: String },
    SentFinal { signature: [u8; KEY_LEN] },
    Done,
}

/// Client side of one exchange, used by the proxy to authenticate to a PostgreSQL server.
pub struct ScramClient {
    creds: ScramCredentials,
    state: ClientState,
    fixed_nonce: Option<String>,
    user: String,
}

impl ScramClient {
    pub fn new(creds: ScramCredentials) -> ScramClient {
        let (state, fixed_nonce, user) = (ClientState::Initial, None, String::new());
        ScramClient { creds, state, fixed_nonce, user }
    }

    #[cfg(test)]
    pub(crate) fn with_nonce(creds: ScramCredentials, user: &str, nonce: &str) -> ScramClient {
        let (fixed_nonce, user) = (Some(nonce.to_owned()), user.to_owned());
        ScramClient { fixed_nonce, user, ..Self::new(creds) }
    }

    /// client-first-message for SASLInitialResponse (mechanism [`SCRAM_SHA_256`], gs2 header "n,,",
    /// empty n=). Calling it again restarts the exchange.
    pub fn client_first(&mut self) -> Vec<u8> {
        let nonce = self.fixed_nonce.clone().unwrap_or_else(random_nonce);
        let bare = format!("n={},r={nonce}", self.user);
        let message = format!("n,,{bare}").into_bytes();
        self.state = ClientState::SentFirst { bare, nonce };
        message
    }

    /// Input: server-first (AuthenticationSASLContinue). Output: client-final-message. With
    /// [`ScramCredentials::Keys`], fails with [`ScramError::VerifierMismatch`] if the server's salt or
    /// iteration count differ from the ones the keys derive from.
    pub fn server_first(&mut self, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        let state = std::mem::replace(&mut self.state, ClientState::Done);
        let ClientState::SentFirst { bare, nonce: mine } = state else {
            return Err(ScramError::OutOfOrder);
        };
        check_no_nul(data)?;
        if data.starts_with(b"m") {
            return Err(Unsupported("mandatory extension"));
        }
        let &[(b'r', nonce), (b's', salt), (b'i', iterations)] = &parse_attrs(data)?[..] else {
            return Err(Malformed("expected r=, s= and i= in server-first-message"));
        };
        let extends = nonce.len() > mine.len() && nonce.starts_with(mine.as_bytes());
        ensure(extends, ScramError::NonceMismatch)?;
        ensure(is_printable(nonce), Malformed("non-printable nonce"))?;
        let salt = B64.decode(salt).map_err(|_| Malformed("bad base64 salt"))?;
        let iterations = parse_iterations(iterations).ok_or(Malformed("bad iteration count"))?;
        // PBKDF2 runs inline: a hostile or broken server must not make us spin for minutes.
        ensure(iterations <= MAX_SERVER_ITERATIONS, Malformed("iteration count above the proxy's limit"))?;

        let (client_key, server_key) = match &self.creds {
            ScramCredentials::Password(password) => password_keys(password, &salt, iterations),
            ScramCredentials::Keys { client_key, server_key, salt: s, iterations: i } => {
                ensure(*s == salt && *i == iterations, ScramError::VerifierMismatch)?;
                (*client_key, *server_key)
            }
        };
        let without_proof = [b"c=biws,r=", nonce].concat();
        let auth_message = [bare.as_bytes(), b",", data, b",", &without_proof].concat();
        let proof = xor(&client_key, &hmac(&sha256(&[&client_key]), &[&auth_message]));
        let signature = hmac(&server_key, &[&auth_message]);
        self.state = ClientState::SentFinal { signature };
        Ok([&without_proof[..], b",p=", B64.encode(proof).as_bytes()].concat())
    }

    /// Input: server-final (AuthenticationSASLFinal). Verifies the server signature with ServerKey
    /// (constant-time).
    pub fn server_final(&mut self, data: &[u8]) -> Result<(), ScramError> {
        let state = std::mem::replace(&mut self.state, ClientState::Done);
        let ClientState::SentFinal { signature: expected } = state else {
            return Err(ScramError::OutOfOrder);
        };
        check_no_nul(data)?;
        if let Some(error) = data.strip_prefix(b"e=") {
            let error = String::from_utf8_lossy(error).into_owned();
            return Err(ScramError::ServerError(error));
        }
        let &[(b'v', signature)] = &parse_attrs(data)?[..] else {
            return Err(Malformed("expected only v= in server-final-message"));
        };
        let signature = B64.decode(signature).map_err(|_| Malformed("bad base64 v="))?;
        ensure(ct_eq(&signature, &expected), ScramError::InvalidServerSignature)
    }
}

/// SASLprep as PostgreSQL's pg_saslprep: ASCII passes through; if preparation fails (prohibited
/// characters) the raw password is used.
fn saslprep(password: &str) -> Cow<'_, str> {
    if password.is_ascii() {
        return Cow::Borrowed(password);
    }
    stringprep::saslprep(password).unwrap_or(Cow::Borrowed(password))
}

/// (ClientKey, ServerKey) for a password.
fn password_keys(password: &str, salt: &[u8], iterations: u32) -> ([u8; 32], [u8; 32]) {
    let salted = hi(saslprep(password).as_bytes(), salt, iterations);
    let [client_key, server_key] = [b"Client Key", b"Server Key"].map(|k| hmac(&salted, &[k]));
    (client_key, server_key)
}

/// RFC 5802 Hi(): PBKDF2-HMAC-SHA-256 with one output block.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; KEY_LEN] {
    let keyed = HmacSha256::new_from_slice(password).expect("HMAC takes any key length");
    let mut u = hmac_with(keyed.clone(), &[salt, &1u32.to_be_bytes()]);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac_with(keyed.clone(), &[&u]);
        out = xor(&out, &u);
    }
    out
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    hmac_with(mac, parts)
}

fn hmac_with(mut mac: HmacSha256, parts: &[&[u8]]) -> [u8; KEY_LEN] {
    parts.iter().for_each(|part| mac.update(part));
    mac.finalize().into_bytes().into()
}

fn sha256(parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut hasher = Sha256::new();
    parts.iter().for_each(|part| hasher.update(part));
    hasher.finalize().into()
}

fn xor(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// Constant-time equality (length is not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    a.len() == b.len() && std::hint::black_box(diff) == 0
}

fn random_nonce() -> String {
    let mut raw = [0u8; RAW_NONCE_LEN];
    rand::fill(&mut raw[..]);
    B64.encode(raw)
}

/// A positive decimal iteration count, digits only.
fn parse_iterations(s: &[u8]) -> Option<u32> {
    let digits = !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    let s = std::str::from_utf8(s).ok().filter(|_| digits)?;
    s.parse().ok().filter(|&i| i > 0)
}

/// RFC 5802 printable: %x21-2B / %x2D-7E.
fn is_printable(s: &[u8]) -> bool {
    s.iter().all(|&b| (0x21..=0x7e).contains(&b) && b != b',')
}

fn ensure(condition: bool, error: ScramError) -> Result<(), ScramError> {
    if condition {
        Ok(())
    } else {
        Err(error)
    }
}

/// PostgreSQL reads SCRAM messages as C strings: reject empty messages and embedded NULs.
fn check_no_nul(data: &[u8]) -> Result<(), ScramError> {
    ensure(!data.is_empty(), Malformed("empty message"))?;
    ensure(!data.contains(&0), Malformed("NUL byte in message"))
}

/// Splits a message into its comma-separated `ALPHA "=" value` attributes.
fn parse_attrs(data: &[u8]) -> Result<Vec<(u8, &[u8])>, ScramError> {
    data.split(|&b| b == b',')
        .map(|attr| match attr {
            [name, b'=', value @ ..] if name.is_ascii_alphabetic() => Ok((*name, value)),
            _ => Err(Malformed("attribute expected")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Verifier PostgreSQL 15 stored for `CREATE ROLE scram_fixture LOGIN PASSWORD 'secret'`.
    const PG_VERIFIER: &str = "SCRAM-SHA-256$4096:5Ts6zMRVLo9oiyqi1B1T2Q==$l8dmp/mdpxgtumrSwcYnw7A3SQ8brBkaXLHNgq5+49A=:viFam2u6d2MCqwOvxMOPs7u52X+wFen3CmyY+FbJhtA=";

    // RFC 7677 section 3.
    const RFC_CLIENT_FIRST: &[u8] = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_FIRST: &[u8] =
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &[u8] =
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &[u8] = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_secret() -> ScramSecret {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        ScramSecret::from_password("pencil", &salt, 4096)
    }

    fn password(p: &str) -> ScramCredentials {
        ScramCredentials::Password(p.to_owned())
    }

    /// Runs a whole exchange; returns the recovered ClientKey.
    fn exchange(client: &mut ScramClient, server: &mut ScramServer) -> Result<[u8; 32], ScramError> {
        let server_first = server.client_first(SCRAM_SHA_256, &client.client_first())?;
        let client_final = client.server_first(&server_first)?;
        let (server_final, client_key) = server.client_final(&client_final)?;
        client.server_final(&server_final)?;
        Ok(client_key)
    }

    fn server_after_first(secret: ScramSecret, client_first: &[u8]) -> ScramServer {
        let mut server = ScramServer::with_server_nonce(secret, false, "FixedServerNonce");
        server.client_first(SCRAM_SHA_256, client_first).unwrap();
        server
    }

    #[test]
    fn rfc7677_vector_server_side() {
        let nonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let mut server = ScramServer::with_server_nonce(rfc_secret(), false, nonce);
        assert_eq!(server.client_first(SCRAM_SHA_256, RFC_CLIENT_FIRST).unwrap(), RFC_SERVER_FIRST);
        let (server_final, _) = server.client_final(RFC_CLIENT_FINAL).unwrap();
        assert_eq!(server_final, RFC_SERVER_FINAL);
    }

    #[test]
    fn rfc7677_vector_client_side() {
        let mut client = ScramClient::with_nonce(password("pencil"), "user", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(client.client_first(), RFC_CLIENT_FIRST);
        assert_eq!(client.server_first(RFC_SERVER_FIRST).unwrap(), RFC_CLIENT_FINAL);
        client.server_final(RFC_SERVER_FINAL).unwrap();
    }

    #[test]
    fn password_round_trip() {
        let secret = ScramSecret::generate("hunter2");
        assert_eq!(secret.iterations, DEFAULT_ITERATIONS);
        assert_eq!(secret.salt.len(), 16);
        let mut client = ScramClient::new(password("hunter2"));
        let mut server = ScramServer::new(secret, false);
        let first = client.client_first();
        assert!(first.starts_with(b"n,,n=,r="));
        assert_eq!(first.len() - b"n,,n=,r=".len(), 24, "18 raw bytes, base64");
        let server_first = server.client_first(SCRAM_SHA_256, &first).unwrap();
        assert_eq!(server_first.len(), first.len() - b"n,,n=,".len() + 24 + b",s=,i=4096".len() + 24);
        let client_final = client.server_first(&server_first).unwrap();
        let (server_final, _) = server.client_final(&client_final).unwrap();
        client.server_final(&server_final).unwrap();
    }

    #[test]
    fn pass_through_with_recovered_client_key() {
        let secret = ScramSecret::generate("s3cret");
        let mut proxy_side = ScramServer::new(secret.clone(), false);
        let client_key = exchange(&mut ScramClient::new(password("s3cret")), &mut proxy_side).unwrap();

        let creds = ScramCredentials::from_client_key(client_key, proxy_side.secret());
        let mut upstream = ScramServer::new(secret.clone(), false);
        let again = exchange(&mut ScramClient::new(creds.clone()), &mut upstream).unwrap();
        assert_eq!(again, client_key);

        // A server whose verifier has another salt: refused before sending a proof.
        let other = ScramSecret::generate("s3cret");
        let mut client = ScramClient::new(creds);
        let err = exchange(&mut client, &mut ScramServer::new(other, false)).unwrap_err();
        assert_eq!(err, ScramError::VerifierMismatch);
        assert!(!err.is_protocol_violation());
    }

    #[test]
    fn server_key_mismatch_fails_server_signature() {
        let secret = ScramSecret::generate("pw");
        let mut server = ScramServer::new(secret.clone(), false);
        let client_key = exchange(&mut ScramClient::new(password("pw")), &mut server).unwrap();
        let mut creds = ScramCredentials::from_client_key(client_key, &secret);
        if let ScramCredentials::Keys { server_key, .. } = &mut creds {
            server_key[0] ^= 1;
        }
        let err = exchange(&mut ScramClient::new(creds), &mut ScramServer::new(secret, false));
        assert_eq!(err.unwrap_err(), ScramError::InvalidServerSignature);
    }

    #[test]
    fn wrong_password_fails_only_at_client_final() {
        let mut client = ScramClient::new(password("wrong"));
        let mut server = ScramServer::new(ScramSecret::generate("right"), false);
        let server_first = server.client_first(SCRAM_SHA_256, &client.client_first()).unwrap();
        let client_final = client.server_first(&server_first).unwrap();
        let err = server.client_final(&client_final).unwrap_err();
        assert_eq!(err, ScramError::InvalidProof);
        assert!(!err.is_protocol_violation());
    }

    #[test]
    fn mock_fails_at_client_final_like_a_wrong_password() {
        let seed = b"instance mock seed";
        let secret = ScramSecret::mock("ghost", seed);
        assert_eq!(secret, ScramSecret::mock("ghost", seed), "deterministic");
        assert_ne!(secret.salt, ScramSecret::mock("other", seed).salt);
        assert_eq!(secret.salt, sha256(&[seed, b"ghost"])[..16]);
        assert_eq!(secret.iterations, DEFAULT_ITERATIONS);

        let mut client = ScramClient::new(password("anything"));
        let mut server = ScramServer::new(secret.clone(), true);
        let server_first = server.client_first(SCRAM_SHA_256, &client.client_first()).unwrap();
        let salt = format!(",s={},i=4096", B64.encode(&secret.salt));
        assert!(String::from_utf8(server_first.clone()).unwrap().ends_with(&salt));
        let client_final = client.server_first(&server_first).unwrap();
        assert_eq!(server.client_final(&client_final).unwrap_err(), ScramError::InvalidProof);

        // Even a client that somehow knew keys matching the mock secret fails.
        let creds = ScramCredentials::Keys {
            client_key: [7; 32],
            server_key: secret.server_key,
            salt: secret.salt.clone(),
            iterations: secret.iterations,
        };
        let mut rigged = secret;
        rigged.stored_key = sha256(&[&[7; 32]]);
        let err = exchange(&mut ScramClient::new(creds.clone()), &mut ScramServer::new(rigged.clone(), true));
        assert_eq!(err.unwrap_err(), ScramError::InvalidProof);
        exchange(&mut ScramClient::new(creds), &mut ScramServer::new(rigged, false)).unwrap();
    }

    #[test]
    fn postgres_verifier_fixture() {
        let secret = ScramSecret::parse(PG_VERIFIER).unwrap();
        assert_eq!(secret.iterations, 4096);
        assert_eq!(secret.salt.len(), 16);
        assert_eq!(secret.to_string(), PG_VERIFIER);
        assert_eq!(ScramSecret::from_password("secret", &secret.salt, 4096), secret);

        let mut server = ScramServer::new(secret.clone(), false);
        exchange(&mut ScramClient::new(password("secret")), &mut server).unwrap();
        let mut server = ScramServer::new(secret, false);
        let err = exchange(&mut ScramClient::new(password("Secret")), &mut server).unwrap_err();
        assert_eq!(err, ScramError::InvalidProof);
    }

    #[test]
    fn saslprep_matches_postgres() {
        // (password, verifier PostgreSQL 15 stored for it)
        let cases = [
            ("I\u{AD}X", "SCRAM-SHA-256$4096:Pul9Eupdqme3e53LFSsYRQ==$M3wfot1bZqueJsmDE2wE1r5M+ivlHdUnKmqIRRK5mqg=:Vw+MhiwM8Cb8TSVMchVbcfwQSmdo61KB+71C/jF+HnU="),
            ("\u{2168}", "SCRAM-SHA-256$4096:rz7PS4bcO+qy5Nk5+FJdVw==$IMn+lftFor4N85Y/qCxZCg9/P3jWo1nyThkhbQQE5k4=:6jLE41CPDPW6uN4whxIXyIlFnyVwVXzS2v5Tvqv4mvU="),
            ("\u{627}", "SCRAM-SHA-256$4096:rhJFbavPsplc04l7yBkQqQ==$UVtjdeDHswmKY9LJ4uzQgiqZcp3u81k3u8HrbtKEcuI=:AAcJDmhu9wODRnt3s9LysKD0gtna/ACVndrlO2PgyUA="),
            ("a\u{7}b", "SCRAM-SHA-256$4096:PGWBt8ASSCBfoCUbWXYFjQ==$QvIUz5srxDI0yVYmpl2x92YzENKn3DEGqH6hj8x0kDc=:HddCtmLXx2WoA1VKfITmGo5Gtem0ED37e3iYj/OHCVU="),
            ("\u{627}1", "SCRAM-SHA-256$4096:l5PrzxdtT/cYeq0hHFoHkQ==$/NpMIf92IXMr71Ix5M4ceIPLbfUkqS6edgZvkX5lERA=:DGBMlw68mD0bK7UNcckzEjX5iI/Ae/7wN4Z7D0a/J8E="),
            ("\u{221}x", "SCRAM-SHA-256$4096:zM+YU+PwtuSJNLyKD7ASsw==$hCadOzAKdqQ++xhdoPc/yrrUeYodBwPLDcZUoYAY2/4=:pSwIjZGKxJYiDpEEe2Xr2pkJOz8xitX03rIJFgTTcro="),
            ("caf\u{e9}", "SCRAM-SHA-256$4096:nC8u79B7Hw0wdc3cHWRk0Q==$mXT7rWSWfdu6eCx/WYFEJCiN4HvpujTyAzFhURNL8uY=:hIi0AuJIR+vjo53nQcob2vkM0df2oXeibMOaKnHb8Hk="),
            ("\u{627}x\u{628}", "SCRAM-SHA-256$4096:d+VkgiLhSyVd20s5FYUZ7g==$Fk24HWjSCS6pe8p/sH+t4/N9R9+9Ok+zQNuvkQJD/T8=:ByCL/8lHph1I2+i4jWjTn4nGWHRRAw6Ul1ExRZTR5PQ="),
        ];
        for (pw, verifier) in cases {
            let secret = ScramSecret::parse(verifier).unwrap();
            assert_eq!(ScramSecret::from_password(pw, &secret.salt, 4096), secret, "{pw:?}");
        }
        // Mapping and NFKC really happened, and the prohibited fallback really used the raw bytes.
        let salt = [1u8; 16];
        assert_eq!(ScramSecret::from_password("I\u{AD}X", &salt, 1), ScramSecret::from_password("IX", &salt, 1));
        assert_eq!(ScramSecret::from_password("\u{2168}", &salt, 1), ScramSecret::from_password("IX", &salt, 1));
        let (raw_client_key, _) = (hmac(&hi("\u{627}1".as_bytes(), &salt, 1), &[b"Client Key"]), ());
        assert_eq!(ScramSecret::from_password("\u{627}1", &salt, 1).stored_key, sha256(&[&raw_client_key]));
    }

    #[test]
    fn parse_rejects_malformed_verifiers() {
        let good = ScramSecret::parse(PG_VERIFIER).unwrap().to_string();
        assert!(ScramSecret::parse(&good).is_some());
        let bad = [
            "",
            "md5c4ca4238a0b923820dcc509a6f75849b",
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$4096:5Ts6zMRVLo9oiyqi1B1T2Q==",
            "SCRAM-SHA-256$x:5Ts6zMRVLo9oiyqi1B1T2Q==$l8dmp/mdpxgtumrSwcYnw7A3SQ8brBkaXLHNgq5+49A=:viFam2u6d2MCqwOvxMOPs7u52X+wFen3CmyY+FbJhtA=",
            "SCRAM-SHA-256$0:5Ts6zMRVLo9oiyqi1B1T2Q==$l8dmp/mdpxgtumrSwcYnw7A3SQ8brBkaXLHNgq5+49A=:viFam2u6d2MCqwOvxMOPs7u52X+wFen3CmyY+FbJhtA=",
            "SCRAM-SHA-256$+4096:5Ts6zMRVLo9oiyqi1B1T2Q==$l8dmp/mdpxgtumrSwcYnw7A3SQ8brBkaXLHNgq5+49A=:viFam2u6d2MCqwOvxMOPs7u52X+wFen3CmyY+FbJhtA=",
            "SCRAM-SHA-256$4096:!!$l8dmp/mdpxgtumrSwcYnw7A3SQ8brBkaXLHNgq5+49A=:viFam2u6d2MCqwOvxMOPs7u52X+wFen3CmyY+FbJhtA=",
            "SCRAM-SHA-256$4096:5Ts6zMRVLo9oiyqi1B1T2Q==$AAAA:viFam2u6d2MCqwOvxMOPs7u52X+wFen3CmyY+FbJhtA=",
            "SCRAM-SHA-256$4096:5Ts6zMRVLo9oiyqi1B1T2Q==$l8dmp/mdpxgtumrSwcYnw7A3SQ8brBkaXLHNgq5+49A=",
            "SCRAM-SHA-1$4096:5Ts6zMRVLo9oiyqi1B1T2Q==$l8dmp/mdpxgtumrSwcYnw7A3SQ8brBkaXLHNgq5+49A=:viFam2u6d2MCqwOvxMOPs7u52X+wFen3CmyY+FbJhtA=",
        ];
        for s in bad {
            assert_eq!(ScramSecret::parse(s), None, "{s}");
        }
    }

    #[test]
    fn client_first_gs2_headers_and_mechanisms() {
        let secret = ScramSecret::from_password("pw", &[2; 16], 4096);
        let run = |mech: &str, data: &[u8]| ScramServer::new(secret.clone(), false).client_first(mech, data);
        assert!(run(SCRAM_SHA_256, b"n,,n=,r=abc").is_ok());
        assert!(run(SCRAM_SHA_256, b"y,,n=ignored,r=abc,x=ext").is_ok());
        let violations: [(&str, &[u8]); 13] = [
            ("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abc"),
            ("SCRAM-SHA-1", b"n,,n=,r=abc"),
            (SCRAM_SHA_256, b"p=tls-server-end-point,,n=,r=abc"),
            (SCRAM_SHA_256, b"n,a=admin,n=,r=abc"),
            (SCRAM_SHA_256, b"n,,m=ext,n=,r=abc"),
            (SCRAM_SHA_256, b""),
            (SCRAM_SHA_256, b"x,,n=,r=abc"),
            (SCRAM_SHA_256, b"n"),
            (SCRAM_SHA_256, b"n,,r=abc"),
            (SCRAM_SHA_256, b"n,,n="),
            (SCRAM_SHA_256, b"n,,n=,r=a\x01b"),
            (SCRAM_SHA_256, b"n,,n=,r=abc\0"),
            (SCRAM_SHA_256, b"n,,n=,r=abc,=x"),
        ];
        for (mech, data) in violations {
            let err = run(mech, data).unwrap_err();
            assert!(err.is_protocol_violation(), "{mech} {:?}: {err}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn client_final_channel_binding_echo() {
        let secret = ScramSecret::from_password("pw", &[3; 16], 4096);
        // "y,," must be echoed as eSws; echoing "n,," instead is a violation.
        let mut server = ScramServer::with_server_nonce(secret.clone(), false, "SRV");
        server.client_first(SCRAM_SHA_256, b"y,,n=,r=abc").unwrap();
        let err = server.client_final(b"c=biws,r=abcSRV,p=AAAA").unwrap_err();
        assert_eq!(err, ScramError::ChannelBindingMismatch);

        let mut client = ScramClient::with_nonce(password("pw"), "", "abc");
        client.client_first();
        let client_final = client.server_first(b"r=abcSRV,s=AwMDAwMDAwMDAwMDAwMDAw==,i=4096").unwrap();
        // Rewrite the gs2 echo as "y,," and recompute the proof by hand for the y,, exchange.
        let without_proof = "c=eSws,r=abcSRV";
        let auth = [
            b"n=,r=abc".as_slice(),
            b",",
            b"r=abcSRV,s=AwMDAwMDAwMDAwMDAwMDAw==,i=4096",
            b",",
            without_proof.as_bytes(),
        ];
        let (client_key, _) = password_keys("pw", &[3; 16], 4096);
        let proof = xor(&client_key, &hmac(&secret.stored_key, &auth));
        let message = format!("{without_proof},p={}", B64.encode(proof));
        let mut server = ScramServer::with_server_nonce(secret, false, "SRV");
        server.client_first(SCRAM_SHA_256, b"y,,n=,r=abc").unwrap();
        let (_, recovered) = server.client_final(message.as_bytes()).unwrap();
        assert_eq!(recovered, client_key);
        assert!(client_final.starts_with(b"c=biws,r=abcSRV,p="));
    }

    #[test]
    fn plus_binds_to_the_certificate_and_refuses_downgrades() {
        let secret = ScramSecret::from_password("pw", &[5; 16], 4096);
        let binding = b"hash of the proxy's certificate".to_vec();
        let server =
            || ScramServer::with_server_nonce(secret.clone(), false, "SRV").with_channel_binding(binding.clone());
        assert_eq!(server().mechanisms(), [SCRAM_SHA_256_PLUS, SCRAM_SHA_256]);
        assert_eq!(ScramServer::new(secret.clone(), false).mechanisms(), [SCRAM_SHA_256]);

        let header = b"p=tls-server-end-point,,".as_slice();
        let exchange = |cbind_data: &[u8]| {
            let mut s = server();
            let server_first = s.client_first(SCRAM_SHA_256_PLUS, &[header, b"n=,r=abc"].concat()).unwrap();
            let without_proof = format!("c={},r=abcSRV", B64.encode([header, cbind_data].concat()));
            let auth = [b"n=,r=abc".as_slice(), b",", server_first.as_slice(), b",", without_proof.as_bytes()];
            let (client_key, _) = password_keys("pw", &[5; 16], 4096);
            let proof = xor(&client_key, &hmac(&secret.stored_key, &auth));
            let message = format!("{without_proof},p={}", B64.encode(proof));
            s.client_final(message.as_bytes()).map(|(_, recovered)| recovered == client_key)
        };
        assert_eq!(exchange(&binding), Ok(true));
        // A man in the middle terminates TLS with another certificate: its hash differs.
        assert_eq!(exchange(b"hash of another certificate"), Err(ScramError::ChannelBindingMismatch));

        assert!(server().client_first(SCRAM_SHA_256, b"n,,n=,r=abc").is_ok(), "a client that cannot bind");
        let violations: [(&str, &[u8]); 7] = [
            (SCRAM_SHA_256, b"y,,n=,r=abc"),
            (SCRAM_SHA_256_PLUS, b"n,,n=,r=abc"),
            (SCRAM_SHA_256_PLUS, b"y,,n=,r=abc"),
            (SCRAM_SHA_256, b"p=tls-server-end-point,,n=,r=abc"),
            (SCRAM_SHA_256_PLUS, b"p=tls-unique,,n=,r=abc"),
            (SCRAM_SHA_256_PLUS, b"p=tls-server-end-point,a=admin,n=,r=abc"),
            (SCRAM_SHA_256_PLUS, b"p=tls-server-end-point"),
        ];
        for (mech, data) in violations {
            let err = server().client_first(mech, data).unwrap_err();
            assert!(err.is_protocol_violation(), "{mech} {:?}: {err}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn client_final_malformed_inputs() {
        let secret = ScramSecret::from_password("pw", &[4; 16], 4096);
        let mut client = ScramClient::new(password("pw"));
        let first = client.client_first();
        let server_first = server_after_first(secret.clone(), &first).client_first(SCRAM_SHA_256, &first);
        assert_eq!(server_first.unwrap_err(), ScramError::OutOfOrder);
        let mut server = ScramServer::with_server_nonce(secret.clone(), false, "FixedServerNonce");
        let server_first = server.client_first(SCRAM_SHA_256, &first).unwrap();
        let good = String::from_utf8(client.server_first(&server_first).unwrap()).unwrap();
        let (without_proof, proof) = good.rsplit_once(",p=").unwrap();
        let nonce = without_proof.strip_prefix("c=biws,r=").unwrap();

        let violations = [
            String::new(),
            "garbage".to_owned(),
            format!("r={nonce},p={proof}"),
            format!("c=biws,p={proof}"),
            format!("c=biws,r={nonce}"),
            format!("c=!!!!,r={nonce},p={proof}"),
            format!("c=biws,r={nonce},p=!!!!"),
            format!("c=biws,r={nonce},p=AAAA"),
            format!("c=biws,r={nonce},p={proof},x=y"),
            format!("c=biws,r={nonce},p={proof}\0"),
            format!("c=cCx0bHMsLA==,r={nonce},p={proof}"),
        ];
        for message in violations {
            let mut server = server_after_first(secret.clone(), &first);
            let err = server.client_final(message.as_bytes()).unwrap_err();
            assert!(err.is_protocol_violation(), "{message:?}: {err}");
        }
        // A wrong nonce is an authentication failure, as in PostgreSQL.
        let mut server = server_after_first(secret.clone(), &first);
        let tampered = format!("c=biws,r={nonce}x,p={proof}");
        assert_eq!(server.client_final(tampered.as_bytes()).unwrap_err(), ScramError::NonceMismatch);
        // Extensions before the proof are allowed (and covered by the proof, so this one fails).
        let mut server = server_after_first(secret.clone(), &first);
        let ext = format!("c=biws,r={nonce},x=y,p={proof}");
        assert_eq!(server.client_final(ext.as_bytes()).unwrap_err(), ScramError::InvalidProof);
        // The untouched message still works, once.
        let mut server = server_after_first(secret, &first);
        server.client_final(good.as_bytes()).unwrap();
        assert_eq!(server.client_final(good.as_bytes()).unwrap_err(), ScramError::OutOfOrder);
    }

    #[test]
    fn out_of_order_calls() {
        let secret = ScramSecret::from_password("pw", &[5; 16], 4096);
        let mut server = ScramServer::new(secret.clone(), false);
        assert_eq!(server.client_final(b"c=biws,r=x,p=AAAA").unwrap_err(), ScramError::OutOfOrder);
        let mut server = ScramServer::new(secret, false);
        server.client_first(SCRAM_SHA_256, b"n,,n=,r=abc").unwrap();
        let err = server.client_first(SCRAM_SHA_256, b"n,,n=,r=abc").unwrap_err();
        assert_eq!(err, ScramError::OutOfOrder);

        let mut client = ScramClient::new(password("pw"));
        assert_eq!(client.server_first(b"r=x,s=AAAA,i=1").unwrap_err(), ScramError::OutOfOrder);
        assert_eq!(client.server_final(b"v=AAAA").unwrap_err(), ScramError::OutOfOrder);
    }

    #[test]
    fn client_rejects_bad_server_messages() {
        let bad_first: [&[u8]; 10] = [
            b"",
            b"r=abc",
            b"r=zzzSRV,s=AAAA,i=4096",
            b"r=abc,s=AAAA,i=4096",
            b"r=abcSRV,s=!!!!,i=4096",
            b"r=abcSRV,s=AAAA,i=0",
            b"r=abcSRV,s=AAAA,i=-1",
            b"r=abcSRV,s=AAAA,i=4096,x=y",
            b"m=ext,r=abcSRV,s=AAAA,i=4096",
            b"r=abcS\x01V,s=AAAA,i=4096",
        ];
        for data in bad_first {
            let mut client = ScramClient::with_nonce(password("pw"), "", "abc");
            client.client_first();
            assert!(client.server_first(data).is_err(), "{:?}", String::from_utf8_lossy(data));
        }
        let mut client = ScramClient::with_nonce(password("pw"), "", "abc");
        client.client_first();
        assert_eq!(client.server_first(b"r=zzzSRV,s=AAAA,i=1").unwrap_err(), ScramError::NonceMismatch);

        let server_final = |data: &[u8]| {
            let mut client = ScramClient::with_nonce(password("pw"), "", "abc");
            client.client_first();
            client.server_first(b"r=abcSRV,s=AAAA,i=1").unwrap();
            client.server_final(data).unwrap_err()
        };
        let err = server_final(b"e=invalid-proof");
        assert_eq!(err, ScramError::ServerError("invalid-proof".into()));
        assert_eq!(server_final(b"v=AAAA"), ScramError::InvalidServerSignature);
        for data in [&b"v=!!!!"[..], b"x=AAAA", b"v=AAAA,x=y", b"", b"v"] {
            assert!(server_final(data).is_protocol_violation(), "{data:?}");
        }
    }

    #[test]
    fn hi_matches_pbkdf2_test_vector() {
        // RFC 7914 section 11: PBKDF2-HMAC-SHA256("passwd", "salt", 1), first 32 bytes.
        let expected = "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc";
        let got: String = hi(b"passwd", b"salt", 1).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn debug_hides_credentials() {
        let creds = password("topsecret");
        assert!(!format!("{creds:?}").contains("topsecret"));
    }
}
