//! The PostgreSQL v3 wire layer: frame splitting, the few messages the proxy acts on, and
//! SQLSTATE errors. Pure: no I/O, no tokio, no knowledge of sessions or pools.
//!
//! Everything the proxy does not need to understand travels as raw frames (tag byte, length,
//! body bytes) and is never decoded. Messages we must write (authentication, errors, parameter
//! status) are encoded with the `pgwire` crate's message types; messages we must read from a
//! server are parsed by small, panic-free readers here.

pub mod backend;
pub mod error;
pub mod frame;
pub mod startup;

pub use error::{PgError, SqlState};
pub use frame::{FrameError, FrameHead, Splitter};

/// Frontend (client → server) message tags the proxy looks at.
pub mod tag {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const TERMINATE: u8 = b'X';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const PASSWORD: u8 = b'p';

    // Backend (server → client) tags.
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION: u8 = b'A';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    pub const DATA_ROW: u8 = b'D';
}

/// Bytes from the wire as text: borrowed when valid UTF-8 (the fast check), else with
/// replacement characters.
pub fn text(b: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(b),
    }
}
