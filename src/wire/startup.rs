//! The untagged packets that open a connection: SSLRequest, GSSENCRequest, CancelRequest and
//! StartupMessage, plus the `options` startup parameter. Pure parsing, no I/O.

use thiserror::Error;

/// PostgreSQL's limit on an untagged startup-phase packet (pqcomm.h MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_PACKET: usize = 10_000;

const SSL_REQUEST_CODE: u32 = 80_877_103;
const GSSENC_REQUEST_CODE: u32 = 80_877_104;
const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// A CancelRequest one PgWeir passes to its peers (`proxy.peers`) when the key is not its own;
/// a peer acts on it but never forwards it again. Not a PostgreSQL code.
const FORWARDED_CANCEL_CODE: u32 = 80_877_199;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum StartupError {
    #[error("invalid length of startup packet")]
    BadLength,
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid startup packet layout: expected terminator as last byte")]
    BadLayout,
    #[error("invalid cancel request packet")]
    BadCancel,
    #[error("startup packet is not valid UTF-8")]
    NotUtf8,
}

/// One decoded startup-phase packet.
#[derive(Debug, PartialEq, Eq)]
pub enum InitialPacket {
    SslRequest,
    GssEncRequest,
    Cancel { pid: i32, secret: Vec<u8>, forwarded: bool },
    Startup(StartupMessage),
}

/// A v3 StartupMessage.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// Minor protocol version the client asked for (3.x).
    pub minor: u16,
    /// Parameters in the order the client sent them.
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Parses one packet at the front of `buf`: `Ok(None)` if more bytes are needed, else the
/// packet and the number of bytes it took.
pub fn parse_initial(buf: &[u8]) -> Result<Option<(InitialPacket, usize)>, StartupError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(8..=MAX_STARTUP_PACKET).contains(&len) {
        return Err(StartupError::BadLength);
    }
    if buf.len() < len {
        return Ok(None);
    }
    let code = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let body = &buf[8..len];
    let packet = match code {
        SSL_REQUEST_CODE if body.is_empty() => InitialPacket::SslRequest,
        GSSENC_REQUEST_CODE if body.is_empty() => InitialPacket::GssEncRequest,
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => return Err(StartupError::BadLength),
        CANCEL_REQUEST_CODE | FORWARDED_CANCEL_CODE => {
            // pid (4) + secret (4 in protocol 3.0, up to 256 in 3.2)
            if body.len() < 8 || body.len() > 4 + 256 {
                return Err(StartupError::BadCancel);
            }
            let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            InitialPacket::Cancel { pid, secret: body[4..].to_vec(), forwarded: code == FORWARDED_CANCEL_CODE }
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            InitialPacket::Startup(parse_params(minor, body)?)
        }
    };
    Ok(Some((packet, len)))
}

fn parse_params(minor: u16, mut body: &[u8]) -> Result<StartupMessage, StartupError> {
    let mut params = Vec::new();
    loop {
        let Some((key, rest)) = super::frame::cstr(body) else {
            return Err(StartupError::BadLayout);
        };
        if key.is_empty() {
            if !rest.is_empty() {
                return Err(StartupError::BadLayout);
            }
            break;
        }
        let Some((value, rest)) = super::frame::cstr(rest) else {
            return Err(StartupError::BadLayout);
        };
        let key = std::str::from_utf8(key).map_err(|_| StartupError::NotUtf8)?;
        let value = std::str::from_utf8(value).map_err(|_| StartupError::NotUtf8)?;
        params.push((key.to_string(), value.to_string()));
        body = rest;
    }
    Ok(StartupMessage { minor, params })
}

/// Encodes a StartupMessage (protocol 3.0) for a server connection.
pub fn encode_startup(params: &[(&str, &str)], out: &mut bytes::BytesMut) {
    let mut body = Vec::with_capacity(64);
    body.extend_from_slice(&196_608u32.to_be_bytes());
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(&body);
}

/// Encodes an SSLRequest.
pub fn encode_ssl_request(out: &mut bytes::BytesMut) {
    out.extend_from_slice(&8u32.to_be_bytes());
    out.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
}

/// Encodes a CancelRequest for a server's backend key.
pub fn encode_cancel(pid: i32, secret: &[u8], out: &mut bytes::BytesMut) {
    encode_cancel_code(CANCEL_REQUEST_CODE, pid, secret, out);
}

/// Encodes a CancelRequest passed on to a peer PgWeir.
pub fn encode_forwarded_cancel(pid: i32, secret: &[u8], out: &mut bytes::BytesMut) {
    encode_cancel_code(FORWARDED_CANCEL_CODE, pid, secret, out);
}

fn encode_cancel_code(code: u32, pid: i32, secret: &[u8], out: &mut bytes::BytesMut) {
    out.extend_from_slice(&((12 + secret.len()) as u32).to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(secret);
}

/// Splits the `options` startup parameter into `name=value` settings, as PostgreSQL does:
/// words separated by spaces (a backslash escapes the next character), each either
/// `-c name=value`, `-cname=value` or `--name=value`. Dashes in names become underscores.
/// Returns an error naming the first word it does not understand.
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    let mut in_word = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            c if c.is_ascii_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next().ok_or_else(|| "-c requires a value".to_string())?
        } else if let Some(s) = w.strip_prefix("--") {
            s.to_string()
        } else if let Some(s) = w.strip_prefix("-c") {
            s.to_string()
        } else {
            return Err(format!("invalid command-line argument for server process: {w}"));
        };
        let Some((name, value)) = setting.split_once('=') else {
            return Err(format!("invalid command-line argument for server process: {setting}"));
        };
        out.push((name.replace('-', "_"), value.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup_bytes(params: &[(&str, &str)]) -> Vec<u8> {
        let mut b = bytes::BytesMut::new();
        encode_startup(params, &mut b);
        b.to_vec()
    }

    #[test]
    fn parses_startup_round_trip() {
        let b = startup_bytes(&[("user", "alice"), ("database", "db1"), ("application_name", "psql")]);
        let (p, n) = parse_initial(&b).unwrap().unwrap();
        assert_eq!(n, b.len());
        let InitialPacket::Startup(s) = p else { panic!() };
        assert_eq!(s.get("user"), Some("alice"));
        assert_eq!(s.get("database"), Some("db1"));
        assert_eq!(s.params.len(), 3);
    }

    #[test]
    fn partial_packet_needs_more() {
        let b = startup_bytes(&[("user", "alice")]);
        assert_eq!(parse_initial(&b[..b.len() - 1]).unwrap(), None);
        assert_eq!(parse_initial(&b[..2]).unwrap(), None);
    }

    #[test]
    fn ssl_and_cancel_requests() {
        let mut b = bytes::BytesMut::new();
        encode_ssl_request(&mut b);
        assert_eq!(parse_initial(&b).unwrap().unwrap().0, InitialPacket::SslRequest);
        let mut c = bytes::BytesMut::new();
        encode_cancel(42, &[1, 2, 3, 4], &mut c);
        assert_eq!(
            parse_initial(&c).unwrap().unwrap().0,
            InitialPacket::Cancel { pid: 42, secret: vec![1, 2, 3, 4], forwarded: false }
        );
        let mut f = bytes::BytesMut::new();
        encode_forwarded_cancel(42, &[1, 2, 3, 4], &mut f);
        assert_eq!(
            parse_initial(&f).unwrap().unwrap().0,
            InitialPacket::Cancel { pid: 42, secret: vec![1, 2, 3, 4], forwarded: true }
        );
    }

    #[test]
    fn malformed_packets_are_errors() {
        assert_eq!(parse_initial(&[0, 0, 0, 2, 0, 0, 0, 0]), Err(StartupError::BadLength));
        assert_eq!(parse_initial(&[0xff, 0, 0, 2]), Err(StartupError::BadLength));
        // protocol 2.0
        assert!(matches!(
            parse_initial(&[0, 0, 0, 9, 0, 2, 0, 0, 0]),
            Err(StartupError::UnsupportedProtocol { major: 2, .. })
        ));
        // missing final terminator
        let mut b = startup_bytes(&[("user", "a")]);
        b.pop();
        let len = (b.len() as u32).to_be_bytes();
        b[..4].copy_from_slice(&len);
        assert_eq!(parse_initial(&b), Err(StartupError::BadLayout));
    }

    #[test]
    fn options_parse_like_postgres() {
        let o = parse_options("-c search_path=a,b --statement-timeout=5s -cwork_mem=64MB -c x=a\\ b").unwrap();
        assert_eq!(
            o,
            vec![
                ("search_path".into(), "a,b".into()),
                ("statement_timeout".into(), "5s".into()),
                ("work_mem".into(), "64MB".into()),
                ("x".into(), "a b".into()),
            ]
        );
        assert!(parse_options("-x").is_err());
        assert!(parse_options("-c").is_err());
        assert_eq!(parse_options("  ").unwrap(), vec![]);
    }
}
