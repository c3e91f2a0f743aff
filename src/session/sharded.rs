//! The session's side of sharding and federation. Between transactions each request is read
//! whole and routed (`shard::route`): a request for one target switches the session's pools to
//! that target's (so pooling, read/write splitting, prepared statements and the cache work
//! inside each shard as they do for one cluster); a scatter read or a split write is run by
//! `scatter`; anything that cannot be routed is refused with the reason. Inside a transaction
//! the target is fixed by its first statement, and a statement for another target is refused
//! (`check_in_transaction`, and `Proto::shard_refusal` for what is forwarded while attached).

use std::sync::Arc;

use tokio::io::AsyncReadExt;

use super::handshake::{target_pools, LoginSpec};
use super::relay::Session;
use super::{Context, TargetPools};
use crate::shard::cache::RouteCache;
use crate::shard::route::{Ask, Decision, Params, RouteError};
use crate::shard::Layout;
use crate::wire::frame::{cstr, FrameHead};
use crate::wire::{tag, PgError, SqlState};

/// A routed request is read whole before it is routed; larger ones are refused.
pub const MAX_ROUTED_REQUEST: usize = 64 << 20;

/// A login to a database spread over clusters.
pub struct ShardLogin {
    pub layout: Arc<Layout>,
    /// The pools of each target, in the layout's order.
    pub targets: Vec<TargetPools>,
    /// The target whose pools the login's fields hold.
    pub current: usize,
    /// `SET pgweir.shard_key`.
    pub session_key: Option<String>,
    /// Read-your-writes positions per target (each cluster has its own WAL); the current
    /// target's lives in the session.
    pub lsns: Vec<u64>,
}

impl ShardLogin {
    pub(super) fn new(ctx: &Context, base: &LoginSpec<'_>, layout: Arc<Layout>) -> Result<ShardLogin, PgError> {
        let targets = layout.targets.iter().map(|c| target_pools(ctx, base, c, true)).collect::<Result<Vec<_>, _>>()?;
        let current = layout.default_target();
        let lsns = vec![0; targets.len()];
        Ok(ShardLogin { layout, targets, current, session_key: None, lsns })
    }
}

/// What the router made of the request at the front of the client's buffer.
pub(super) enum ShardStep {
    /// It runs on the (now current) target through the normal path.
    Go,
    /// It was answered (scatter, split or refusal).
    Done,
    /// The client went away while the request was being read.
    Gone,
}

/// One statement of a request and the parameters it is bound with.
struct Item {
    text: String,
    bind: Option<Vec<u8>>,
    /// A Parse (or Describe) with no Bind in this request: its key is not known yet.
    parse_only: bool,
}

/// The text of the simple Query at the front of `buf` (valid UTF-8), if that is what it is.
fn simple_query(buf: &[u8]) -> Option<&str> {
    let h = FrameHead::parse(buf, usize::MAX).ok()??;
    if h.tag != tag::QUERY || buf.len() < h.total || h.total < 6 {
        return None;
    }
    std::str::from_utf8(&buf[5..h.total - 1]).ok()
}

/// Is a whole request (up to Sync, Query, FunctionCall or Flush) at the front of `buf`?
fn request_complete(buf: &[u8]) -> bool {
    let mut at = 0;
    loop {
        let Ok(Some(h)) = FrameHead::parse(&buf[at..], usize::MAX) else { return false };
        if buf.len() < at + h.total {
            return false;
        }
        if !matches!(h.tag, tag::PARSE | tag::BIND | tag::DESCRIBE | tag::EXECUTE | tag::CLOSE) {
            return true;
        }
        at += h.total;
    }
}

impl Session<'_> {
    /// Routes the request at the front of the client's buffer (no server attached).
    pub(super) async fn shard_request(&mut self) -> ShardStep {
        while !request_complete(&self.client.rbuf) {
            if self.client.rbuf.len() > MAX_ROUTED_REQUEST {
                self.refuse_request(PgError::error(
                    SqlState("54000"),
                    format!("pgweir: a request to a sharded database may be at most {MAX_ROUTED_REQUEST} bytes"),
                ));
                return ShardStep::Done;
            }
            match self.client.stream.read_buf(&mut self.client.rbuf).await {
                Ok(0) | Err(_) => return ShardStep::Gone,
                Ok(_) => {}
            }
        }
        let Some(shards) = self.login.shards.as_ref() else { return ShardStep::Go };
        let layout = shards.layout.clone();
        let cache = self.proto.route_cache.get_or_insert_with(RouteCache::default);
        // A simple Query is routed straight from the buffer; anything else item by item.
        let (decision, items) = match simple_query(&self.client.rbuf) {
            Some(text) => {
                self.proto.shard_skip = 1;
                self.parse_only = false;
                let ask = Ask { params: None, session_key: shards.session_key.as_deref() };
                let d = cache.route(&layout, text, ask);
                let multi = d.as_ref().is_ok_and(is_multi);
                (
                    d,
                    if multi {
                        vec![Item { text: text.to_owned(), bind: None, parse_only: false }]
                    } else {
                        Vec::new()
                    },
                )
            }
            None => {
                let items = self.request_items();
                self.proto.shard_skip = items.iter().filter(|i| !i.parse_only).count();
                self.parse_only = !items.is_empty() && items.iter().all(|i| i.parse_only);
                let Some(shards) = self.login.shards.as_ref() else { return ShardStep::Go };
                let cache = self.proto.route_cache.get_or_insert_with(RouteCache::default);
                (decide(&layout, &items, shards.session_key.as_deref(), cache), items)
            }
        };
        let decision = match decision {
            Ok(d) => d,
            Err(e) => {
                self.refuse_request(e.to_pg());
                return ShardStep::Done;
            }
        };
        match decision {
            Decision::Any => {
                let t = layout.default_target();
                self.use_target(t);
                ShardStep::Go
            }
            Decision::One(t) => {
                self.use_target(t);
                ShardStep::Go
            }
            multi => {
                let started = std::time::Instant::now();
                let shown = items.first().filter(|_| self.proto.timing.on()).map(|i| i.text.clone());
                let step = match multi {
                    Decision::Scatter(targets) => {
                        let Some(item) = items.into_iter().next() else { return ShardStep::Go };
                        self.scatter(&targets, &item.text).await
                    }
                    Decision::Split(parts) => self.split_write(parts).await,
                    Decision::CopyIn(plan) => {
                        let Some(item) = items.into_iter().next() else { return ShardStep::Go };
                        self.copy_split(plan, &item.text).await
                    }
                    Decision::Any | Decision::One(_) => return ShardStep::Go,
                };
                let took = started.elapsed();
                self.ctx.metrics.proxy.answered(crate::metrics::proxy::RouteLabel::Shard, took.as_secs_f64());
                if let Some(text) = shown {
                    self.proto.timing.answered(&text, crate::metrics::proxy::RouteLabel::Shard, took);
                }
                step
            }
        }
    }

    /// What the proxy checks statements against while attached to the current target.
    pub(super) fn shard_check(&self) -> Option<ShardCheck> {
        self.login.shards.as_ref().map(|s| ShardCheck {
            layout: s.layout.clone(),
            current: s.current,
            session_key: s.session_key.clone(),
        })
    }

    /// Makes target `t` the one whose pools the session uses.
    pub(super) fn use_target(&mut self, t: usize) {
        let Some(shards) = self.login.shards.as_mut() else { return };
        if shards.current == t {
            return;
        }
        let p = shards.targets[t].clone();
        shards.lsns[shards.current] = self.min_lsn;
        self.min_lsn = shards.lsns[t];
        shards.current = t;
        self.login.pool = p.pool;
        self.login.replicas = p.replicas;
        self.login.topology = p.topology;
        self.login.cache_db = p.cache_db;
    }

    /// The statements of the request at the front of the buffer, with their parameters.
    fn request_items(&self) -> Vec<Item> {
        let buf = &self.client.rbuf;
        let mut items: Vec<Item> = Vec::new();
        // The statement a Parse in this request defined, by client name.
        let mut parsed: Vec<(String, String)> = Vec::new();
        let mut at = 0;
        while let Ok(Some(h)) = FrameHead::parse(&buf[at..], usize::MAX) {
            if buf.len() < at + h.total {
                break;
            }
            let body = &buf[at + 5..at + h.total];
            at += h.total;
            match h.tag {
                tag::QUERY => {
                    let text = body.strip_suffix(&[0]).unwrap_or(body);
                    items.push(Item { text: text_of(text), bind: None, parse_only: false });
                    break;
                }
                tag::PARSE => {
                    if let Some((name, rest)) = cstr(body) {
                        if let Some((q, _)) = cstr(rest) {
                            let name = text_of(name);
                            let text = text_of(q);
                            items.push(Item { text: text.clone(), bind: None, parse_only: true });
                            parsed.retain(|(n, _)| *n != name);
                            parsed.push((name, text));
                        }
                    }
                }
                tag::BIND => {
                    let Some((_, rest)) = cstr(body) else { continue };
                    let Some((stmt, params)) = cstr(rest) else { continue };
                    let stmt = text_of(stmt);
                    let text = match parsed.iter().find(|(n, _)| *n == stmt) {
                        Some((_, t)) => Some(t.clone()),
                        None => self
                            .proto
                            .stmts
                            .get(&stmt)
                            .and_then(|d| super::stmts::parse_parse(&d.parse_frame[5..]).map(|p| p.query.to_vec()))
                            .map(|q| String::from_utf8_lossy(&q).into_owned()),
                    };
                    // The Parse it binds is routed with its parameters now.
                    if let Some(i) = items.iter().rposition(|i| i.parse_only && Some(&i.text) == text.as_ref()) {
                        items.remove(i);
                    }
                    if let Some(text) = text {
                        items.push(Item { text, bind: Some(params.to_vec()), parse_only: false });
                    }
                }
                tag::SYNC | tag::FLUSH | tag::FUNCTION_CALL => break,
                _ => {}
            }
        }
        items
    }
}

/// What a session attached to one target checks each statement of a transaction against.
#[derive(Clone, Debug)]
pub struct ShardCheck {
    pub layout: Arc<Layout>,
    pub current: usize,
    pub session_key: Option<String>,
}

impl ShardCheck {
    /// Does this bound statement belong on another target, or on several?
    pub fn elsewhere(&self, cache: &mut RouteCache, text: &str, bind: &[u8]) -> bool {
        let item = Item { text: text.to_string(), bind: Some(bind.to_vec()), parse_only: false };
        match decide(&self.layout, std::slice::from_ref(&item), self.session_key.as_deref(), cache) {
            Ok(Decision::One(t)) => t != self.current,
            Ok(d) => is_multi(&d),
            Err(_) => false,
        }
    }

    /// Refuses a statement meant for another target. `bind`: the Bind's parameters (after
    /// its names), None for a Query.
    pub fn check(&self, cache: &mut RouteCache, text: &str, bind: Option<&[u8]>, in_block: bool) -> Option<PgError> {
        let item = Item { text: text.to_string(), bind: bind.map(<[u8]>::to_vec), parse_only: false };
        let d = match decide(&self.layout, std::slice::from_ref(&item), self.session_key.as_deref(), cache) {
            Ok(d) => d,
            Err(e) => return Some(e.to_pg()),
        };
        let name = |t: usize| self.layout.targets[t].clone();
        match d {
            Decision::Any => None,
            Decision::One(t) if t == self.current => None,
            Decision::One(t) if in_block => Some(cross_transaction(&name(self.current), &name(t))),
            Decision::One(_) | Decision::Scatter(_) | Decision::Split(_) | Decision::CopyIn(_) if !in_block => Some(PgError::error(
                SqlState::FEATURE_NOT_SUPPORTED,
                format!(
                    "pgweir: this statement belongs on another shard than the one its batch started on (\"{}\"): use a named statement, or end the batch with Sync before it",
                    name(self.current)
                ),
            )),
            Decision::Scatter(_) => Some(PgError::error(
                SqlState::FEATURE_NOT_SUPPORTED,
                format!(
                    "pgweir: this read spans shards, and this transaction runs on \"{}\": run cross-shard reads outside a transaction, or give the key",
                    name(self.current)
                ),
            )),
            Decision::Split(_) | Decision::CopyIn(_) => Some(cross_shard_write()),
            Decision::One(_) => None,
        }
    }
}

pub(super) fn cross_transaction(current: &str, other: &str) -> PgError {
    PgError::error(
        SqlState::FEATURE_NOT_SUPPORTED,
        format!("pgweir: this transaction runs on \"{current}\", and this statement belongs on \"{other}\": a transaction cannot span shards or clusters"),
    )
    .with_hint("commit first, or keep each transaction on one shard key")
}

pub(super) fn cross_shard_write() -> PgError {
    PgError::error(
        SqlState::FEATURE_NOT_SUPPORTED,
        "pgweir: a transaction cannot write to two shards (PgWeir has no two-phase commit): write each shard in its own transaction",
    )
}

/// One decision for a whole request: its statements must agree.
fn decide(
    layout: &Layout,
    items: &[Item],
    session_key: Option<&str>,
    cache: &mut RouteCache,
) -> Result<Decision, RouteError> {
    let mut acc = Decision::Any;
    for item in items {
        let params = match &item.bind {
            Some(b) => Some(Params::parse(b).ok_or_else(|| RouteError::BadKey("malformed Bind message".into()))?),
            None => None,
        };
        let ask = Ask { params: params.as_ref(), session_key };
        let d = match (cache.route(layout, &item.text, ask), item.parse_only) {
            // Described before it is bound: any shard has the same tables.
            (Ok(Decision::Scatter(s)), true) => Decision::One(s[0]),
            (Ok(Decision::Split(_) | Decision::CopyIn(_)), true) | (Err(RouteError::NoKey { .. }), true) => {
                Decision::One(0)
            }
            (r, _) => r?,
        };
        acc = match (acc, d) {
            (Decision::Any, d) => d,
            (a, Decision::Any) => a,
            (a, d) if a == d => a,
            (a, d) if is_multi(&a) || is_multi(&d) => {
                return Err(RouteError::Unsupported(
                    "a batch of several statements where one spans shards: send that one on its own (with its own Sync)".into(),
                ));
            }
            _ => {
                return Err(RouteError::Unsupported(
                    "the statements of this batch belong on different shards or clusters: send one Sync per statement"
                        .into(),
                ))
            }
        };
    }
    if is_multi(&acc) && items.len() > 1 {
        return Err(RouteError::Unsupported(
            "a batch of several statements where one spans shards: send that one on its own (with its own Sync)".into(),
        ));
    }
    Ok(acc)
}

fn text_of(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(b).into_owned(),
    }
}

fn is_multi(d: &Decision) -> bool {
    matches!(d, Decision::Scatter(_) | Decision::Split(_) | Decision::CopyIn(_))
}

/// The attached server's side: statements forwarded inside a routed request or transaction are
/// checked against the target they belong on.
impl super::proto::Proto {
    /// Inside a transaction of a sharded database: the error for a statement of another target.
    /// A statement forwarded to the attached server that belongs on another target. The
    /// statements of the request that was routed when the server was attached are not checked
    /// again; everything after them is: statements of a transaction, of a pinned session, or of
    /// a batch continued after a Flush (asyncpg's Parse/Describe/Flush, then Bind).
    pub(super) fn shard_refusal(&mut self, text: &str, bind: Option<&[u8]>) -> Option<PgError> {
        let check = self.shard_check.as_ref()?;
        if self.shard_skip > 0 {
            self.shard_skip -= 1;
            return None;
        }
        let in_block = self.plan.status != b'I' || self.state.pins.any();
        let cache = self.route_cache.get_or_insert_with(Default::default);
        check.check(cache, text, bind, in_block)
    }

    /// A Bind of a named statement, between transactions, in a batch continued after a Flush,
    /// whose key belongs on another target: it can run there (the statement is prepared there
    /// at first use).
    pub(super) fn belongs_elsewhere(&mut self, body: &[u8]) -> bool {
        let Some(check) = self.shard_check.as_ref() else { return false };
        if self.shard_skip > 0 || !self.rewrite || self.plan.status != b'I' || self.state.pins.any() {
            return false;
        }
        let Some((_, stmt, rest_at)) = super::stmts::parse_bind_names(body) else { return false };
        let Some(def) = self.stmts.get(stmt).filter(|_| !stmt.is_empty()) else { return false };
        let Some(p) = super::stmts::parse_parse(&def.parse_frame[5..]) else { return false };
        let text = crate::wire::text(p.query).into_owned();
        let cache = self.route_cache.get_or_insert_with(Default::default);
        check.elsewhere(cache, &text, &body[rest_at..])
    }

    pub(super) fn bind_refusal(&mut self, body: &[u8]) -> Option<PgError> {
        self.shard_check.as_ref()?;
        let (_, stmt, rest_at) = super::stmts::parse_bind_names(body)?;
        let text = if stmt.is_empty() {
            self.unnamed_text.clone()?
        } else {
            let def = self.stmts.get(stmt)?;
            String::from_utf8_lossy(super::stmts::parse_parse(&def.parse_frame[5..])?.query).into_owned()
        };
        self.shard_refusal(&text, Some(&body[rest_at..]))
    }
}
