//! Messages the proxy writes to clients during startup, and the server messages it must read
//! (authentication requests, ParameterStatus, BackendKeyData, ReadyForQuery, ErrorResponse).
//! Writers use `pgwire`'s message types; readers are small and never panic on bad input.

use bytes::BytesMut;
use pgwire::messages::startup::{Authentication, BackendKeyData, ParameterStatus, SecretKey};
use pgwire::messages::Message;

use super::frame::{cstr, put_frame};

/// Appends an Authentication* message.
pub fn put_auth(out: &mut BytesMut, auth: Authentication) {
    // Our authentication messages are tiny: encoding cannot exceed pgwire's size limit.
    let _ = auth.encode(out);
}

pub fn put_parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    let _ = ParameterStatus::new(name.to_string(), value.to_string()).encode(out);
}

pub fn put_backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    let _ = BackendKeyData::new(pid, SecretKey::I32(secret)).encode(out);
}

pub fn put_ready_for_query(out: &mut BytesMut, status: u8) {
    put_frame(out, b'Z', &[status]);
}

/// NegotiateProtocolVersion: the newest minor version we speak (0) and the `_pq_.` options we
/// did not recognise.
pub fn put_negotiate_protocol_version(out: &mut BytesMut, unsupported: &[String]) {
    let mut body = Vec::new();
    body.extend_from_slice(&0i32.to_be_bytes());
    body.extend_from_slice(&(unsupported.len() as i32).to_be_bytes());
    for o in unsupported {
        body.extend_from_slice(o.as_bytes());
        body.push(0);
    }
    put_frame(out, b'v', &body);
}

/// A simple-protocol Query message.
pub fn put_query(out: &mut BytesMut, sql: &str) {
    let mut body = Vec::with_capacity(sql.len() + 1);
    body.extend_from_slice(sql.as_bytes());
    body.push(0);
    put_frame(out, b'Q', &body);
}

/// PasswordMessage carrying a cleartext or MD5 password.
pub fn put_password(out: &mut BytesMut, password: &str) {
    let mut body = Vec::with_capacity(password.len() + 1);
    body.extend_from_slice(password.as_bytes());
    body.push(0);
    put_frame(out, b'p', &body);
}

pub fn put_sasl_initial_response(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    let mut body = Vec::with_capacity(mechanism.len() + 5 + data.len());
    body.extend_from_slice(mechanism.as_bytes());
    body.push(0);
    body.extend_from_slice(&(data.len() as i32).to_be_bytes());
    body.extend_from_slice(data);
    put_frame(out, b'p', &body);
}

pub fn put_sasl_response(out: &mut BytesMut, data: &[u8]) {
    put_frame(out, b'p', data);
}

/// An authentication request from a server (body of an 'R' message).
#[derive(Debug, PartialEq, Eq)]
pub enum AuthRequest {
    Ok,
    Cleartext,
    Md5([u8; 4]),
    Sasl(Vec<String>),
    SaslContinue(Vec<u8>),
    SaslFinal(Vec<u8>),
    Unsupported(i32),
}

impl AuthRequest {
    pub fn parse(body: &[u8]) -> Option<AuthRequest> {
        if body.len() < 4 {
            return None;
        }
        let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        let rest = &body[4..];
        Some(match code {
            0 => AuthRequest::Ok,
            3 => AuthRequest::Cleartext,
            5 => AuthRequest::Md5(rest.get(..4)?.try_into().ok()?),
            10 => {
                let mut mechs = Vec::new();
                let mut r = rest;
                while let Some((m, tail)) = cstr(r) {
                    if m.is_empty() {
                        break;
                    }
                    mechs.push(String::from_utf8_lossy(m).into_owned());
                    r = tail;
                }
                AuthRequest::Sasl(mechs)
            }
            11 => AuthRequest::SaslContinue(rest.to_vec()),
            12 => AuthRequest::SaslFinal(rest.to_vec()),
            other => AuthRequest::Unsupported(other),
        })
    }
}

/// A client's reply during SASL: the initial response (mechanism + data) or a later one.
pub fn parse_sasl_initial(body: &[u8]) -> Option<(String, Vec<u8>)> {
    let (mech, rest) = cstr(body)?;
    let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let data = &rest[4..];
    if len < 0 {
        return Some((String::from_utf8_lossy(mech).into_owned(), Vec::new()));
    }
    if data.len() != len as usize {
        return None;
    }
    Some((String::from_utf8_lossy(mech).into_owned(), data.to_vec()))
}

/// The password in a PasswordMessage body.
pub fn parse_password(body: &[u8]) -> Option<String> {
    let (pw, rest) = cstr(body)?;
    if !rest.is_empty() {
        return None;
    }
    String::from_utf8(pw.to_vec()).ok()
}

/// ParameterStatus body → (name, value).
pub fn parse_parameter_status(body: &[u8]) -> Option<(String, String)> {
    let (name, rest) = cstr(body)?;
    let (value, _) = cstr(rest)?;
    Some((String::from_utf8_lossy(name).into_owned(), String::from_utf8_lossy(value).into_owned()))
}

/// BackendKeyData body → (pid, secret bytes).
pub fn parse_backend_key_data(body: &[u8]) -> Option<(i32, Vec<u8>)> {
    let pid = i32::from_be_bytes(body.get(..4)?.try_into().ok()?);
    let secret = body.get(4..)?;
    if secret.len() < 4 {
        return None;
    }
    Some((pid, secret.to_vec()))
}

/// The fields of an ErrorResponse or NoticeResponse that the proxy cares about. Any field may
/// be missing: a server (or a hostile peer) can send an error without a SQLSTATE.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: Option<String>,
    pub code: Option<String>,
    pub message: Option<String>,
}

impl ErrorFields {
    pub fn parse(body: &[u8]) -> ErrorFields {
        let mut f = ErrorFields::default();
        let mut rest = body;
        while let Some((&kind, tail)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let Some((value, tail)) = cstr(tail) else { break };
            let v = String::from_utf8_lossy(value).into_owned();
            match kind {
                b'V' => f.severity = Some(v),
                b'S' if f.severity.is_none() => f.severity = Some(v),
                b'C' => f.code = Some(v),
                b'M' => f.message = Some(v),
                _ => {}
            }
            rest = tail;
        }
        f
    }

    /// True for FATAL and PANIC: the server closes the connection after sending it.
    pub fn is_fatal(&self) -> bool {
        matches!(self.severity.as_deref(), Some("FATAL") | Some("PANIC"))
    }
}

impl std::fmt::Display for ErrorFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.severity.as_deref().unwrap_or("ERROR"),
            self.code.as_deref().unwrap_or("?????"),
            self.message.as_deref().unwrap_or("(no message)")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(out: &BytesMut) -> &[u8] {
        &out[5..]
    }

    #[test]
    fn auth_requests_round_trip() {
        let mut out = BytesMut::new();
        put_auth(&mut out, Authentication::MD5Password(vec![1, 2, 3, 4]));
        assert_eq!(AuthRequest::parse(body_of(&out)), Some(AuthRequest::Md5([1, 2, 3, 4])));
        let mut out = BytesMut::new();
        put_auth(&mut out, Authentication::SASL(vec!["SCRAM-SHA-256".into()]));
        assert_eq!(AuthRequest::parse(body_of(&out)), Some(AuthRequest::Sasl(vec!["SCRAM-SHA-256".into()])));
        assert_eq!(AuthRequest::parse(&[0, 0]), None);
        assert_eq!(AuthRequest::parse(&[0, 0, 0, 5, 1]), None);
    }

    #[test]
    fn sasl_initial_response_round_trip() {
        let mut out = BytesMut::new();
        put_sasl_initial_response(&mut out, "SCRAM-SHA-256", b"n,,n=,r=abc");
        assert_eq!(parse_sasl_initial(body_of(&out)), Some(("SCRAM-SHA-256".into(), b"n,,n=,r=abc".to_vec())));
        assert_eq!(parse_sasl_initial(b"SCRAM\0\0\0\0\x09abc"), None);
    }

    #[test]
    fn parameter_status_and_key_data() {
        let mut out = BytesMut::new();
        put_parameter_status(&mut out, "TimeZone", "UTC");
        assert_eq!(parse_parameter_status(body_of(&out)), Some(("TimeZone".into(), "UTC".into())));
        let mut out = BytesMut::new();
        put_backend_key_data(&mut out, 7, -5);
        assert_eq!(parse_backend_key_data(body_of(&out)), Some((7, (-5i32).to_be_bytes().to_vec())));
    }

    #[test]
    fn error_fields_tolerate_garbage() {
        assert_eq!(ErrorFields::parse(b""), ErrorFields::default());
        let f = ErrorFields::parse(b"SFATAL\0Mboom\0");
        assert_eq!(f.code, None);
        assert!(f.is_fatal());
        let f = ErrorFields::parse(b"SERROR\0C42P01\0Mno table");
        assert_eq!(f.code.as_deref(), Some("42P01"));
        assert_eq!(f.message, None);
    }
}
