//! The response plan: what the server owes for every message forwarded to it, in order, with
//! the proxy's own answers (ParseComplete for a statement the server already has,
//! CloseComplete, errors) slotted in where the client expects them, and the responses to
//! messages the proxy injected (a lazy Parse, a Close on eviction) marked to be swallowed.
//!
//! Pure bookkeeping, no I/O. Follows the extended protocol's rules: after an ErrorResponse the
//! server skips everything up to Sync, so the plan drops those entries (and the proxy's own
//! answers among them); each Sync, Query and FunctionCall ends with ReadyForQuery; Syncs that
//! arrive while the server is in COPY FROM STDIN mode are ignored by it.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::route::session_sql::Effect;
use crate::wire::frame::cstr;
use crate::wire::tag;

/// The session effects of a simple Query's statements, applied only if all of it succeeds (a
/// multi-statement Query is one implicit transaction).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryFx {
    pending: VecDeque<Vec<Effect>>,
    done: Vec<(Vec<Effect>, String)>,
    failed: bool,
}

impl QueryFx {
    pub fn new(per_statement: Vec<Vec<Effect>>) -> QueryFx {
        QueryFx { pending: per_statement.into(), ..QueryFx::default() }
    }
}

/// One request message's worth of server response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unit {
    /// `global`: the server-side statement name it creates (None for the unnamed statement);
    /// `client`: the client's name for it, forgotten if the Parse fails.
    Parse {
        global: Option<Arc<str>>,
        client: Option<String>,
    },
    Bind,
    /// `global`: a server-side statement the proxy closes (eviction); None for the client's.
    Close(Option<Arc<str>>),
    DescribeStatement,
    DescribePortal,
    /// With the session effects of the portal's statement, if any.
    Execute(Option<Box<Vec<Effect>>>),
    Sync,
    Query(Option<Box<QueryFx>>),
    FunctionCall,
}

impl Unit {
    fn is_boundary(&self) -> bool {
        matches!(self, Unit::Sync | Unit::Query(_) | Unit::FunctionCall)
    }

    /// The unit without its payload of effects (cheap to copy out of the queue).
    fn shape(&self) -> Unit {
        match self {
            Unit::Execute(_) => Unit::Execute(None),
            Unit::Query(_) => Unit::Query(None),
            other => other.clone(),
        }
    }

    /// Does a server message with this tag complete the unit?
    fn ends_with(&self, t: u8) -> bool {
        match self {
            Unit::Parse { .. } => t == b'1' || t == tag::ERROR_RESPONSE,
            Unit::Bind => t == b'2' || t == tag::ERROR_RESPONSE,
            Unit::Close(_) => t == b'3' || t == tag::ERROR_RESPONSE,
            Unit::DescribeStatement | Unit::DescribePortal => matches!(t, b'T' | b'n' | tag::ERROR_RESPONSE),
            Unit::Execute(_) => matches!(t, b'C' | b'I' | b's' | tag::ERROR_RESPONSE),
            Unit::Sync | Unit::Query(_) | Unit::FunctionCall => t == tag::READY_FOR_QUERY,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    /// The client sent it: its responses go to the client.
    Client(Unit),
    /// The proxy sent it: its responses are swallowed (an error is passed on).
    Injected(Unit),
    /// The proxy's own answer, sent when its turn comes.
    Synthetic(Bytes),
    /// The client ended a COPY (CopyDone/CopyFail); bookkeeping only.
    CopyEnd,
}

/// What to do with one server message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    Swallow,
}

/// A message the server skipped after an error, whose bookkeeping must be undone.
#[derive(Debug, PartialEq, Eq)]
pub enum Dropped {
    Parse { global: Arc<str>, client: Option<String> },
    Close { global: Arc<str> },
}

/// Something the caller must act on after a server message.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    None,
    /// A Parse failed: the server does not have `global` after all (and the client's name for
    /// it, if any, is gone too).
    ParseFailed {
        global: Arc<str>,
        client: Option<String>,
    },
    /// A ReadyForQuery arrived with this status.
    Ready(u8),
}

#[derive(Debug, Default)]
pub struct Plan {
    q: VecDeque<Entry>,
    /// Last ReadyForQuery status (b'I', b'T', b'E'); 0 before the first.
    pub status: u8,
    rfq_seen: bool,
    /// The server is in COPY FROM STDIN mode (Sync and Flush are ignored there).
    pub copy_in: bool,
    /// Statements that completed with session effects: (effects, CommandComplete tag). The
    /// caller drains this after each server message.
    pub completed: Vec<(Vec<Effect>, String)>,
    /// Skipped messages whose bookkeeping the caller must undo (drained like `completed`).
    pub dropped: Vec<Dropped>,
    /// Client messages were queued since its last Sync/Query/FunctionCall (an open extended
    /// batch, e.g. ended by Flush): the server must stay with this client.
    open_batch: bool,
    /// Client requests (Sync, Query, FunctionCall) queued since the server was attached, and
    /// how many of them are answered (their ReadyForQuery seen, or owed nothing in COPY).
    pub client_boundaries: u64,
    pub client_ready: u64,
}

impl Plan {
    /// A fresh plan for a server at a ReadyForQuery boundary with `status`.
    pub fn new(status: u8) -> Plan {
        Plan { status, ..Plan::default() }
    }

    /// Starts over for a newly attached server, keeping the queue's allocation.
    pub fn reset(&mut self, status: u8) {
        self.q.clear();
        self.status = status;
        self.rfq_seen = false;
        self.copy_in = false;
        self.completed.clear();
        self.dropped.clear();
        self.open_batch = false;
        self.client_boundaries = 0;
        self.client_ready = 0;
    }

    pub fn client(&mut self, unit: Unit) {
        self.open_batch = !unit.is_boundary();
        self.client_boundaries += u64::from(unit.is_boundary());
        self.q.push_back(Entry::Client(unit));
    }

    /// The batch was ended by an injected Sync (the client's next messages start a new one).
    pub fn close_batch(&mut self) {
        self.open_batch = false;
    }

    pub fn injected(&mut self, unit: Unit) {
        self.q.push_back(Entry::Injected(unit));
    }

    pub fn synthetic(&mut self, frames: Bytes) {
        self.q.push_back(Entry::Synthetic(frames));
    }

    pub fn copy_end(&mut self) {
        self.copy_in = false;
        self.q.push_back(Entry::CopyEnd);
    }

    /// Nothing is owed, the last ReadyForQuery said idle, and no COPY is open.
    pub fn idle(&self) -> bool {
        self.q.is_empty() && self.rfq_seen && self.status == b'I' && !self.copy_in && !self.open_batch
    }

    /// A request still owed an answer would commit a transaction (its outcome is unknown if
    /// the server dies now).
    pub fn pending_commit(&self) -> bool {
        use crate::route::session_sql::Effect;
        self.q.iter().any(|e| match e {
            Entry::Client(Unit::Execute(Some(fx))) => fx.contains(&Effect::Commit),
            Entry::Client(Unit::Query(Some(q))) => q.pending.iter().flatten().any(|x| *x == Effect::Commit),
            _ => false,
        })
    }

    /// The client is in the middle of an extended batch (messages since its last Sync).
    pub fn batch_open(&self) -> bool {
        self.open_batch
    }

    /// Nothing is owed by the server (it may be inside a transaction block).
    pub fn quiet(&self) -> bool {
        self.q.is_empty() && !self.copy_in
    }

    /// A request waits on the server (not on the client's COPY data).
    pub fn awaits_server(&self) -> bool {
        !self.q.is_empty() && !self.copy_in
    }

    /// Requests still owed a ReadyForQuery.
    pub fn pending_boundaries(&self) -> usize {
        self.q.iter().filter(|e| matches!(e, Entry::Client(u) | Entry::Injected(u) if u.is_boundary())).count()
    }

    /// Emits the proxy's own answers that are next in line (they wait for nothing).
    pub fn emit_ready(&mut self, out: &mut BytesMut) {
        while let Some(front) = self.q.front() {
            match front {
                Entry::Synthetic(b) => {
                    out.extend_from_slice(b);
                    self.q.pop_front();
                }
                Entry::CopyEnd => {
                    self.q.pop_front();
                }
                _ => break,
            }
        }
    }

    /// Judges one whole server message (`t`, `body`), or the first piece of a streamed one
    /// (then `body` is what has arrived of it). Asynchronous messages (notices, notifications,
    /// parameter changes) always go to the client. The proxy's answers due before this message
    /// are appended to `out` first; call `emit_ready` after forwarding it for those due after.
    pub fn on_server(&mut self, t: u8, body: &[u8], out: &mut BytesMut) -> (Verdict, Event) {
        if matches!(t, tag::NOTICE_RESPONSE | tag::NOTIFICATION | tag::PARAMETER_STATUS) {
            return (Verdict::Forward, Event::None);
        }
        if t == tag::READY_FOR_QUERY {
            self.status = body.first().copied().unwrap_or(b'I');
        }
        self.emit_ready(out);
        let (injected, unit) = match self.q.front() {
            Some(Entry::Client(u)) => (false, u.shape()),
            Some(Entry::Injected(u)) => (true, u.shape()),
            // Nothing owed: a FATAL from a dying server, say. Pass it on.
            _ => return (Verdict::Forward, self.after_ready(t)),
        };
        if t == tag::COPY_IN_RESPONSE {
            self.enter_copy_in();
            return (Verdict::Forward, Event::None);
        }
        if t == tag::READY_FOR_QUERY && !unit.is_boundary() {
            // Out of step (should not happen): settle at this boundary.
            while let Some(e) = self.q.pop_front() {
                if matches!(&e, Entry::Client(u) if u.is_boundary()) {
                    self.client_ready += 1;
                }
                if matches!(&e, Entry::Client(u) | Entry::Injected(u) if u.is_boundary()) {
                    break;
                }
            }
            return (Verdict::Forward, self.after_ready(t));
        }
        if !injected {
            self.note_effects(t, body);
        }
        if !unit.ends_with(t) {
            // Part of a longer answer (rows, descriptions, COPY data).
            return (if injected { Verdict::Swallow } else { Verdict::Forward }, Event::None);
        }
        let popped = self.q.pop_front();
        if t == tag::READY_FOR_QUERY && !injected {
            self.client_ready += 1;
        }
        if let Some(Entry::Client(Unit::Query(Some(fx)))) = popped {
            if t == tag::READY_FOR_QUERY && !fx.failed {
                self.completed.extend(fx.done);
            }
        }
        let mut event = Event::None;
        if t == tag::ERROR_RESPONSE {
            self.copy_in = false;
            if let Unit::Parse { global: Some(g), client } = &unit {
                event = Event::ParseFailed { global: g.clone(), client: client.clone() };
            }
            if !unit.is_boundary() {
                // The server now skips everything up to the next Sync.
                while let Some(front) = self.q.front() {
                    if matches!(front, Entry::Client(Unit::Sync) | Entry::Injected(Unit::Sync)) {
                        break;
                    }
                    match self.q.pop_front() {
                        Some(Entry::Client(Unit::Parse { global: Some(g), client }))
                        | Some(Entry::Injected(Unit::Parse { global: Some(g), client })) => {
                            self.dropped.push(Dropped::Parse { global: g, client })
                        }
                        Some(Entry::Injected(Unit::Close(Some(g)))) => self.dropped.push(Dropped::Close { global: g }),
                        _ => {}
                    }
                }
            }
            // An error is never swallowed: for an injected message it stands for the client's.
            return (Verdict::Forward, event);
        }
        if t == tag::READY_FOR_QUERY {
            event = self.after_ready(t);
        }
        (if injected { Verdict::Swallow } else { Verdict::Forward }, event)
    }

    /// CommandComplete of a statement with effects; an error cancels a Query's effects.
    fn note_effects(&mut self, t: u8, body: &[u8]) {
        let tag_text = || cstr(body).map(|(t, _)| String::from_utf8_lossy(t).into_owned()).unwrap_or_default();
        match self.q.front_mut() {
            Some(Entry::Client(Unit::Query(Some(fx)))) => match t {
                b'C' => {
                    let e = fx.pending.pop_front().unwrap_or_default();
                    if !e.is_empty() {
                        fx.done.push((e, tag_text()));
                    }
                }
                tag::ERROR_RESPONSE => fx.failed = true,
                _ => {}
            },
            Some(Entry::Client(Unit::Execute(fx))) if t == b'C' => {
                if let Some(e) = fx.take() {
                    self.completed.push((*e, tag_text()));
                }
            }
            _ => {}
        }
    }

    fn after_ready(&mut self, t: u8) -> Event {
        if t == tag::READY_FOR_QUERY {
            self.rfq_seen = true;
            self.copy_in = false;
            return Event::Ready(self.status);
        }
        Event::None
    }

    /// The server entered COPY FROM STDIN. Syncs the client sent after the Execute that
    /// started it (and before its CopyDone/CopyFail) reach the server in copy mode and are
    /// ignored there: they owe nothing.
    fn enter_copy_in(&mut self) {
        // The client may already have ended the COPY (CopyDone queued behind the Execute).
        let ended = self.q.iter().any(|e| matches!(e, Entry::CopyEnd));
        self.copy_in = !ended;
        if !matches!(self.q.front(), Some(Entry::Client(Unit::Execute(_)))) {
            return;
        }
        let mut i = 1;
        while i < self.q.len() {
            match &self.q[i] {
                Entry::CopyEnd => break,
                Entry::Client(Unit::Sync) => {
                    self.q.remove(i);
                    self.client_ready += 1;
                }
                _ => i += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(plan: &mut Plan, tags: &[u8]) -> (Vec<Verdict>, BytesMut) {
        let mut out = BytesMut::new();
        let mut v = Vec::new();
        for &t in tags {
            v.push(plan.on_server(t, b"I", &mut out).0);
            plan.emit_ready(&mut out);
        }
        (v, out)
    }

    #[test]
    fn client_requests_are_counted_as_they_are_answered() {
        let mut p = Plan::new(b'I');
        p.client(Unit::Query(None));
        p.injected(Unit::Sync);
        p.client(Unit::Parse { global: None, client: None });
        p.client(Unit::Sync);
        assert_eq!((p.client_boundaries, p.client_ready), (2, 0));
        let (_, _) = run(&mut p, b"Z");
        assert_eq!(p.client_ready, 1, "the Query is answered");
        let (_, _) = run(&mut p, b"Z");
        assert_eq!(p.client_ready, 1, "the injected Sync is not the client's");
        let (_, _) = run(&mut p, b"1Z");
        assert_eq!(p.client_ready, 2);
        p.reset(b'I');
        assert_eq!((p.client_boundaries, p.client_ready), (0, 0));
    }

    #[test]
    fn simple_query_ends_at_ready() {
        let mut p = Plan::new(b'I');
        p.client(Unit::Query(None));
        assert!(!p.idle());
        let (v, _) = run(&mut p, b"TDCZ");
        assert!(v.iter().all(|v| *v == Verdict::Forward));
        assert!(p.idle());
    }

    #[test]
    fn injected_parse_is_swallowed_and_synthetic_answers_keep_their_place() {
        let mut p = Plan::new(b'I');
        // Client: Parse(s1) answered by the proxy, Bind(s1) needing a lazy Parse, Execute, Sync.
        p.synthetic(Bytes::from_static(b"1\0\0\0\x04"));
        p.injected(Unit::Parse { global: Some("g".into()), client: None });
        p.client(Unit::Bind);
        p.client(Unit::Execute(None));
        p.client(Unit::Sync);
        let mut out = BytesMut::new();
        p.emit_ready(&mut out);
        assert_eq!(&out[..], b"1\0\0\0\x04", "the synthetic ParseComplete goes out at once");
        let (v, _) = run(&mut p, b"12DCZ");
        assert_eq!(v, vec![Verdict::Swallow, Verdict::Forward, Verdict::Forward, Verdict::Forward, Verdict::Forward]);
        assert!(p.idle());
    }

    #[test]
    fn error_skips_to_sync_and_drops_later_synthetic_answers() {
        let mut p = Plan::new(b'I');
        p.client(Unit::Parse { global: Some("g".into()), client: Some("s1".into()) });
        p.synthetic(Bytes::from_static(b"3\0\0\0\x04"));
        p.client(Unit::Bind);
        p.client(Unit::Sync);
        let mut out = BytesMut::new();
        let (v, e) = p.on_server(b'E', b"", &mut out);
        assert_eq!(v, Verdict::Forward);
        assert_eq!(e, Event::ParseFailed { global: "g".into(), client: Some("s1".into()) });
        p.emit_ready(&mut out);
        assert!(out.is_empty(), "the CloseComplete after a failed Parse is dropped");
        let (_, e) = p.on_server(b'Z', b"I", &mut out);
        assert_eq!(e, Event::Ready(b'I'));
        assert!(p.idle());
    }

    #[test]
    fn error_in_injected_parse_is_passed_on() {
        let mut p = Plan::new(b'I');
        p.injected(Unit::Parse { global: Some("g".into()), client: None });
        p.client(Unit::Bind);
        p.client(Unit::Sync);
        let mut out = BytesMut::new();
        assert_eq!(p.on_server(b'E', b"", &mut out).0, Verdict::Forward);
        assert_eq!(p.pending_boundaries(), 1);
    }

    #[test]
    fn flush_without_sync_is_not_idle() {
        let mut p = Plan::new(b'I');
        p.client(Unit::Parse { global: None, client: None });
        p.client(Unit::DescribeStatement);
        run(&mut p, b"1tT");
        assert!(!p.idle() && p.quiet());
        assert!(!p.idle(), "no ReadyForQuery yet");
    }

    #[test]
    fn syncs_sent_into_a_copy_owe_nothing() {
        // tokio-postgres: Bind, Execute, Sync, CopyData..., CopyDone, Sync.
        let mut p = Plan::new(b'I');
        p.client(Unit::Bind);
        p.client(Unit::Execute(None));
        p.client(Unit::Sync);
        run(&mut p, b"2G");
        assert!(p.copy_in);
        p.copy_end();
        p.client(Unit::Sync);
        let (v, _) = run(&mut p, b"CZ");
        assert_eq!(v, vec![Verdict::Forward, Verdict::Forward]);
        assert!(p.idle());
    }

    #[test]
    fn query_effects_apply_only_if_the_whole_query_succeeds() {
        let fx = |s: &str| vec![Effect::Listen { channel: s.into() }];
        let mut p = Plan::new(b'I');
        p.client(Unit::Query(Some(Box::new(QueryFx::new(vec![fx("a"), vec![]])))));
        let mut out = BytesMut::new();
        p.on_server(b'C', b"LISTEN\0", &mut out);
        p.on_server(b'C', b"SELECT 1\0", &mut out);
        p.on_server(b'Z', b"I", &mut out);
        assert_eq!(p.completed, vec![(fx("a"), "LISTEN".to_string())]);
        p.completed.clear();
        p.client(Unit::Query(Some(Box::new(QueryFx::new(vec![fx("b"), vec![]])))));
        p.on_server(b'C', b"LISTEN\0", &mut out);
        p.on_server(b'E', b"", &mut out);
        p.on_server(b'Z', b"I", &mut out);
        assert!(p.completed.is_empty());
        p.client(Unit::Execute(Some(Box::new(fx("c")))));
        p.client(Unit::Sync);
        p.on_server(b'C', b"LISTEN\0", &mut out);
        assert_eq!(p.completed, vec![(fx("c"), "LISTEN".to_string())]);
    }

    #[test]
    fn notices_pass_through_anywhere() {
        let mut p = Plan::new(b'I');
        p.injected(Unit::Parse { global: Some("g".into()), client: None });
        let mut out = BytesMut::new();
        assert_eq!(p.on_server(b'N', b"", &mut out).0, Verdict::Forward);
        assert_eq!(p.on_server(b'1', b"", &mut out).0, Verdict::Swallow);
    }

    #[test]
    fn pipelined_requests_count_every_boundary() {
        let mut p = Plan::new(b'I');
        for _ in 0..3 {
            p.client(Unit::Bind);
            p.client(Unit::Execute(None));
            p.client(Unit::Sync);
        }
        assert_eq!(p.pending_boundaries(), 3);
        run(&mut p, b"2CZ2CZ");
        assert!(!p.idle());
        run(&mut p, b"2CZ");
        assert!(p.idle());
    }
}
