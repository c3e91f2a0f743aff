//! Running a replica read again elsewhere: while the request's first answer has not reached
//! the client, its messages are kept (only requests that name no statement, so they replay as
//! they are); if the replica fails (connection lost, shutting down, 08xxx) or refuses the
//! statement as a write (25006), the session puts them back and routes the request again.

use bytes::BytesMut;

use super::proto::{Proto, STREAM_ABOVE};
use crate::wire::backend::ErrorFields;
use crate::wire::tag;

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
    pub fn start_capture(&mut self) {
        self.capture = Some(BytesMut::new());
        self.capture_done = false;
        self.retry = None;
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
