//! Running a replica read again elsewhere: until the request ends, its messages are kept (only
//! requests that name no statement, so they replay as they are) and its answer is held in the
//! client's output, unwritten; if the replica fails before the ReadyForQuery (connection lost,
//! shutting down, 08xxx) or refuses the statement as a write (25006), the session drops the held
//! answer, puts the messages back and routes the request again. An answer over [`HOLD_MAX`]
//! bytes, or one the client waits for before its Sync (Flush), is let go and not retried.

use bytes::BytesMut;

use super::proto::{Proto, HIGH_WATER, STREAM_ABOVE};
use crate::wire::backend::ErrorFields;
use crate::wire::tag;

/// The most of a replica read's answer held back for a retry; past it the answer streams and
/// the read is no longer retried (below the high-water mark, so holding never stalls a pump).
const HOLD_MAX: usize = HIGH_WATER / 2;

/// What a server frame means for a captured request.
pub(super) enum Captured {
    /// Forward it (into the held part of the output while the capture lasts).
    Pass,
    /// Drop it: a dying member's notice, when the read will run elsewhere.
    Swallow,
    /// The member failed: run the request elsewhere (`Proto::retry` says why).
    Retry,
}

/// Why a read is run again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryCause {
    /// The replica went away (connection lost, shutting down, crashed): try another member.
    MemberLost,
    /// The replica refused it as a write (25006): it belongs on the primary.
    NeedsPrimary,
}

/// Client messages of a request that can be replayed as they are (no statement is named).
fn replayable(t: u8, body: &[u8]) -> bool {
    match t {
        tag::QUERY | tag::SYNC | tag::BIND | tag::EXECUTE | tag::FLUSH => true,
        tag::PARSE => body.first() == Some(&0),
        tag::DESCRIBE | tag::CLOSE => body.get(1) == Some(&0),
        _ => false,
    }
}

impl Proto {
    /// Captures the request about to be sent; the client's output has `out_len` bytes that are
    /// not its answer (they may be written at once).
    pub fn start_capture(&mut self, out_len: usize) {
        self.capture = Some(BytesMut::new());
        self.capture_done = false;
        self.retry = None;
        self.hold = out_len;
    }

    /// How much of the client's output (`out_len` bytes) may be written now: None for all of
    /// it; while a replica read's answer is held, only what came before it. An answer that
    /// grew past [`HOLD_MAX`] is let go here, before any write, so a held answer never fills
    /// the output to the high-water mark and stalls the pump.
    pub(super) fn writable(&mut self, out_len: usize) -> Option<&mut usize> {
        if self.capture.is_some() && out_len.saturating_sub(self.hold) > HOLD_MAX {
            self.capture = None;
        }
        self.capture.is_some().then_some(&mut self.hold)
    }

    /// Looks at a server frame while a request is captured. The capture ends (and the held
    /// answer goes out) with the request's ReadyForQuery, an error that allows no retry, or an
    /// answer to a request the client has not finished (it may wait for it, after a Flush).
    pub(super) fn captured_answer(&mut self, t: u8, body: &[u8]) -> Captured {
        if self.capture.is_none() {
            return Captured::Pass;
        }
        match t {
            tag::ERROR_RESPONSE => {
                if let Some(cause) = self.retry_cause(body) {
                    self.retry = Some(cause);
                    return Captured::Retry;
                }
                self.capture = None;
            }
            // A dying server's "terminating connection" warning is not the client's business
            // when the read will run elsewhere.
            tag::NOTICE_RESPONSE if self.retry_cause(body).is_some() => return Captured::Swallow,
            tag::READY_FOR_QUERY => self.capture = None,
            _ if !self.capture_done => self.capture = None,
            _ => {}
        }
        Captured::Pass
    }

    pub(super) fn capture_client(&mut self, t: u8, frame: &[u8], whole: bool) {
        if self.capture_done {
            // Anything after the captured request: no replay can be faithful any more.
            self.capture = None;
            return;
        }
        let Some(c) = self.capture.as_mut() else { return };
        if !whole || !replayable(t, &frame[5..]) || c.len() + frame.len() > STREAM_ABOVE {
            self.capture = None;
            return;
        }
        c.extend_from_slice(frame);
        if matches!(t, tag::SYNC | tag::QUERY) {
            self.capture_done = true;
        }
    }

    /// Does this server error allow running the captured request elsewhere?
    pub(super) fn retry_cause(&self, body: &[u8]) -> Option<RetryCause> {
        if self.capture.is_none() || !self.capture_done {
            return None;
        }
        let f = ErrorFields::parse(body);
        match f.code.as_deref()? {
            // The member is going away. Not 08P01: that is the client's own protocol error.
            "57P01" | "57P02" | "57P03" | "08000" | "08003" | "08006" => Some(RetryCause::MemberLost),
            "25006" => Some(RetryCause::NeedsPrimary),
            _ => None,
        }
    }

    /// The server connection ended: can the request run elsewhere?
    pub fn retry_on_loss(&self) -> bool {
        self.capture.is_some() && self.capture_done
    }
}
