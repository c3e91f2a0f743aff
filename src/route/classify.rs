//! Read/write classification of a Query string: whether it may run on a replica or must go to the
//! primary, why, and which transaction control it is (DESIGN §3, §5). The literal-stripping
//! fingerprint and the bounded cache that make this cheap on the hot path are in `cache`.
//!
//! Pure: no I/O, no clock, no global state; the cache is an owned value. It routes to the primary
//! unless a statement is clearly a read, and must never send a write, a locking read, a
//! standby-refused call or an unparseable statement to a replica on its own judgement (only a
//! client's hint may). It reads literals' kinds, never their values, so every text sharing a
//! normalized token sequence classifies alike; that is what makes the cache sound. Unparseable
//! results are never cached. It must never panic on any input (sqlparser's depth limit bounds
//! its recursion; ours is at most one level: EXPLAIN's or COPY's inner statement).

use sqlparser::ast::{Query, SetExpr, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};

pub use super::cache::{fingerprint, ClassifyCache};
use super::lexer::{block_comment_end, split_statements, tokenize, Spanned, Token};

/// Where a statement should run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Primary,
    Replica,
}

/// Why a statement goes where it goes (for logs/metrics and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A plain read: SELECT/VALUES/TABLE/SHOW/EXPLAIN of a read/`COPY ... TO STDOUT`.
    Read,
    /// DML, DDL, maintenance, CALL, DO: anything that may write.
    Write,
    /// `FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE`.
    LockingRead,
    /// `WITH x AS (INSERT/UPDATE/DELETE/MERGE ...) SELECT ...`.
    WritableCte,
    /// `SELECT ... INTO new_table`.
    SelectInto,
    /// Calls a function that writes or holds session state (nextval, advisory locks, set_config,
    /// large-object writes, user-listed ones ...).
    WriteFunction,
    /// Fails or means something else on a standby (txid_current, pg_current_wal_lsn, LISTEN,
    /// `SHOW transaction_read_only` ...).
    StandbyRefuses,
    /// sqlparser cannot parse it (and the lexer found no more specific reason).
    Unparseable,
    /// Several statements, not all plain reads.
    MultiStatement,
    /// BEGIN/COMMIT/ROLLBACK/SAVEPOINT ...: see [`Classification::txn`]; the caller decides.
    TransactionControl,
    /// A `pgweir:` hint comment chose the route.
    Hint,
    /// Session and utility statements: SET, PREPARE/EXECUTE, DISCARD, LOCK, cursors, EXPLAIN
    /// ANALYZE of a read, COPY to a server file or program, an empty query ...
    Other,
}

/// What to do with a Query string, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classification {
    pub route: Route,
    pub reason: Reason,
    /// What transaction control the statement is, if any (BEGIN/START TRANSACTION with its
    /// read-only-ness and isolation level, COMMIT/END, ROLLBACK/ABORT, SAVEPOINT etc.). For a
    /// multi-statement string: the first statement's.
    pub txn: Option<TxnControl>,
}

/// Transaction control statements. `AND CHAIN` is not reported: COMMIT/ROLLBACK AND CHAIN opens
/// a new transaction at once, which the caller sees in ReadyForQuery's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnControl {
    /// BEGIN / START TRANSACTION; the last of conflicting modes wins, as in PostgreSQL.
    /// `serializable` is only what the statement says (default_transaction_isolation is not known here).
    Begin { read_only: bool, serializable: bool, deferrable: bool },
    /// COMMIT, END.
    Commit,
    /// ROLLBACK, ABORT.
    Rollback,
    /// SAVEPOINT, RELEASE [SAVEPOINT], ROLLBACK TO [SAVEPOINT].
    Savepoint,
    /// SET TRANSACTION, PREPARE TRANSACTION, COMMIT PREPARED, ROLLBACK PREPARED.
    Other,
}

impl Classification {
    fn primary(reason: Reason) -> Self {
        Classification { route: Route::Primary, reason, txn: None }
    }

    fn read() -> Self {
        Classification { route: Route::Replica, reason: Reason::Read, txn: None }
    }
}

/// A classification and whether a text with the same normalized tokens may reuse it.
type Verdict = (Classification, bool);

/// Functions that write or depend on session state a replica does not share.
const WRITE_FUNCTIONS: &str = "nextval setval currval lastval set_config lo_create lo_creat lo_import lo_export \
    lo_unlink lo_put lo_from_bytea lo_open lowrite lo_truncate lo_truncate64 dblink_exec pg_notify \
    pg_logical_emit_message pg_switch_wal pg_create_restore_point";

/// Prefixes of write-function families (every advisory lock variant, lock and unlock).
const WRITE_FUNCTION_PREFIXES: &[&str] = &["pg_advisory_", "pg_try_advisory_"];

/// Functions that fail on a standby or answer something else there.
const STANDBY_FUNCTIONS: &str = "txid_current txid_current_if_assigned pg_current_xact_id \
    pg_current_xact_id_if_assigned pg_current_wal_lsn pg_current_wal_insert_lsn pg_current_wal_flush_lsn \
    pg_is_in_recovery";

/// Settings whose value tells a client it reached a standby (libpq's and pgjdbc's
/// target_session_attrs probes send `SHOW transaction_read_only`).
const STANDBY_SETTINGS: &str = "transaction_read_only default_transaction_read_only in_hot_standby";

/// First words of statements that may write (when sqlparser accepts them).
const WRITE_WORDS: &str = "insert update delete merge copy create alter drop truncate grant revoke comment \
    security reindex cluster vacuum analyze analyse refresh call do import reassign with";

/// Whether `name` is one of the space-separated `list` (ASCII case-insensitive).
fn listed(list: &str, name: &str) -> bool {
    list.split_ascii_whitespace().any(|item| item.eq_ignore_ascii_case(name))
}

/// Statements longer than this are classified by their first word alone when that already
/// sends them to the primary (a multi-megabyte INSERT is not worth a parse).
const MAX_UTILITY_PARSE: usize = 64 * 1024;

/// Hint in a leading comment: `/* pgweir: primary */` or `/* pgweir: replica */` (case-insensitive,
/// whitespace-tolerant, other comma- or space-separated items allowed, e.g. `pgweir: replica,
/// cache ttl=30s`); also `-- pgweir: primary` line comments. Only comments before the first token
/// count; `primary` wins if several hints disagree.
pub fn hint(sql: &str) -> Option<Route> {
    let mut found = None;
    for body in leading_comments(sql) {
        match hint_body(body) {
            Some(Route::Primary) => found = Some(Route::Primary),
            Some(Route::Replica) if found.is_none() => found = Some(Route::Replica),
            _ => {}
        }
    }
    found
}

/// The bodies of the comments before the first token (block comments nest, as in PostgreSQL).
pub fn leading_comments(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    loop {
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            i += 1;
        }
        if b[i..].starts_with(b"/*") {
            let (body, end) = match block_comment_end(b, i) {
                Some(end) => (sql.get(i + 2..end - 2), end),
                None => (sql.get(i + 2..), b.len()),
            };
            i = end;
            out.push(body.unwrap_or(""));
        } else if b[i..].starts_with(b"--") {
            let end = b[i..].iter().position(|&c| c == b'\n').map_or(b.len(), |n| i + n);
            out.push(&sql[i + 2..end]);
            i = end;
        } else {
            return out;
        }
    }
}

/// The items of the leading `pgweir:` comments (`/* pgweir: shard=2, cache */` gives `shard=2`
/// and `cache`).
pub fn pgweir_items(sql: &str) -> Vec<&str> {
    let mut items = Vec::new();
    for body in leading_comments(sql) {
        let body = body.trim_start();
        let Some(rest) = body.get(..6).filter(|p| p.eq_ignore_ascii_case("pgweir")).map(|_| &body[6..]) else {
            continue;
        };
        let Some(rest) = rest.trim_start().strip_prefix(':') else { continue };
        items.extend(rest.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()));
    }
    items
}

fn hint_body(body: &str) -> Option<Route> {
    let body = body.trim_start();
    let rest = body.get(..6).filter(|p| p.eq_ignore_ascii_case("pgweir")).map(|_| &body[6..])?;
    let rest = rest.trim_start().strip_prefix(':')?;
    let mut route = None;
    for item in rest.split(|c: char| c == ',' || c.is_whitespace()) {
        if item.eq_ignore_ascii_case("primary") {
            return Some(Route::Primary);
        }
        if item.eq_ignore_ascii_case("replica") {
            route = Some(Route::Replica);
        }
    }
    route
}

/// Classifies a whole Query string (may hold several statements: a multi-statement string goes to
/// the primary unless every statement is a plain read, in which case Replica). A hint overrides
/// everything. `extra_write_functions` are user-listed write functions (case-insensitive; `name`
/// matches any schema, `schema.name` matches that schema or an unqualified call).
pub fn classify(sql: &str, extra_write_functions: &[String]) -> Classification {
    classify_verdict(sql, extra_write_functions).0
}

pub(super) fn classify_verdict(sql: &str, extra: &[String]) -> Verdict {
    let ranges = split_statements(sql);
    if let Some(route) = hint(sql) {
        let txn = ranges.first().and_then(|r| txn_control(&tokenize(&sql[r.clone()])).flatten());
        return (Classification { route, reason: Reason::Hint, txn }, true);
    }
    match ranges.as_slice() {
        [] => (Classification::primary(Reason::Other), true),
        [only] => statement(&sql[only.clone()], extra, false),
        _ => {
            let (mut txn, mut all_read, mut all_sure) = (None, true, true);
            for (n, range) in ranges.iter().enumerate() {
                let (class, sure) = statement(&sql[range.clone()], extra, false);
                if n == 0 {
                    txn = class.txn.clone();
                }
                // One statement surely bound for the primary settles the whole string.
                let settled = sure && class.route == Route::Primary;
                all_read &= class.reason == Reason::Read;
                all_sure &= sure;
                if settled {
                    return (Classification { route: Route::Primary, reason: Reason::MultiStatement, txn }, true);
                }
            }
            if all_read {
                return (Classification::read(), true);
            }
            (Classification { route: Route::Primary, reason: Reason::MultiStatement, txn }, all_sure)
        }
    }
}

/// The token at `i` when it is an unquoted word (folded).
pub(crate) fn word<'t>(t: &'t [Spanned<'_>], i: usize) -> Option<&'t str> {
    match t.get(i).map(|s| &s.token) {
        Some(Token::Word(w)) => Some(w),
        _ => None,
    }
}

/// The token at `i` when it is a word or a quoted identifier.
pub(crate) fn ident<'t>(t: &'t [Spanned<'_>], i: usize) -> Option<&'t str> {
    match t.get(i).map(|s| &s.token) {
        Some(Token::Word(w) | Token::QuotedIdent(w)) => Some(w),
        _ => None,
    }
}

/// Whether the token at `i` is the punctuation `c`.
pub(crate) fn is_punct(t: &[Spanned<'_>], i: usize, c: char) -> bool {
    matches!(t.get(i), Some(Spanned { token: Token::Punct(p), .. }) if *p == c)
}

/// `t[open]` is `(`: the index after its matching `)` (or the end).
pub(crate) fn after_parens(t: &[Spanned<'_>], open: usize) -> usize {
    let mut depth = 0usize;
    for (i, tok) in t.iter().enumerate().skip(open) {
        match tok.token {
            Token::Punct('(') => depth += 1,
            Token::Punct(')') => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            return i + 1;
        }
    }
    t.len()
}

fn parse(sql: &str) -> Result<Vec<Statement>, ParserError> {
    Parser::parse_sql(&PostgreSqlDialect {}, sql)
}

/// Classifies one statement (no trailing `;`). `nested`: inside EXPLAIN or COPY, where neither
/// may appear again (this bounds our recursion).
fn statement(text: &str, extra: &[String], nested: bool) -> Verdict {
    let toks = tokenize(text);
    if let Some(control) = txn_control(&toks) {
        return match control {
            Some(txn) if !nested => {
                (Classification { route: Route::Primary, reason: Reason::TransactionControl, txn: Some(txn) }, true)
            }
            _ => (Classification::primary(Reason::Unparseable), false),
        };
    }
    let first = if is_punct(&toks, 0, '(') { "(" } else { word(&toks, 0).unwrap_or("") };
    match first {
        "select" | "with" | "values" | "(" => query(text, &toks, extra),
        "table" => match toks.get(1) {
            Some(next) => query(&format!("SELECT * FROM {}", &text[next.start..]), &toks, extra),
            None => (Classification::primary(Reason::Unparseable), false),
        },
        "explain" | "copy" if nested => (Classification::primary(Reason::Unparseable), false),
        "explain" => explain(text, &toks, extra),
        "copy" => copy(text, &toks, extra),
        "show" => match parse(text) {
            Err(_) => (Classification::primary(Reason::Unparseable), false),
            Ok(_) if toks.len() == 2 && ident(&toks, 1).is_some_and(|n| listed(STANDBY_SETTINGS, n)) => {
                (Classification::primary(Reason::StandbyRefuses), true)
            }
            Ok(_) => (Classification::read(), true),
        },
        _ => utility(text, first),
    }
}

/// Statements that go to the primary whatever they say; sqlparser only tells a known statement
/// from one it cannot read.
fn utility(text: &str, first: &str) -> Verdict {
    let reason = if listed(WRITE_WORDS, first) {
        Reason::Write
    } else if matches!(first, "listen" | "notify") {
        Reason::StandbyRefuses
    } else {
        Reason::Other
    };
    if text.len() > MAX_UTILITY_PARSE && !first.is_empty() {
        return (Classification::primary(reason), false);
    }
    match parse(text) {
        Ok(_) => (Classification::primary(reason), true),
        Err(_) => (Classification::primary(Reason::Unparseable), false),
    }
}

/// What made a query more than a plain read; [`Findings::reason`] picks the most specific.
#[derive(Default)]
struct Findings {
    write: bool,
    writable_cte: bool,
    into: bool,
    locking: bool,
    standby: bool,
    write_fn: bool,
}

impl Findings {
    fn reason(&self) -> Option<Reason> {
        [
            (self.write, Reason::Write),
            (self.writable_cte, Reason::WritableCte),
            (self.into, Reason::SelectInto),
            (self.locking, Reason::LockingRead),
            (self.standby, Reason::StandbyRefuses),
            (self.write_fn, Reason::WriteFunction),
        ]
        .into_iter()
        .find_map(|(hit, reason)| hit.then_some(reason))
    }
}

/// SELECT / WITH / VALUES / TABLE / parenthesized queries. The lexer scan works even where
/// sqlparser fails (`FOR NO KEY UPDATE`); the AST confirms what the tokens cannot show.
fn query(parse_text: &str, toks: &[Spanned<'_>], extra: &[String]) -> Verdict {
    let mut found = Findings::default();
    scan_tokens(toks, extra, &mut found);
    match parse(parse_text).as_deref() {
        Ok([Statement::Query(q)]) => walk_query(q, true, &mut found),
        Ok([_]) => found.write = true,
        _ => {
            return match found.reason() {
                Some(reason) => (Classification::primary(reason), true),
                None => (Classification::primary(Reason::Unparseable), false),
            }
        }
    }
    match found.reason() {
        Some(reason) => (Classification::primary(reason), true),
        None => (Classification::read(), true),
    }
}

fn walk_query(q: &Query, top: bool, found: &mut Findings) {
    if let Some(with) = &q.with {
        for cte in &with.cte_tables {
            walk_query(&cte.query, false, found);
        }
    }
    found.locking |= !q.locks.is_empty();
    walk_set(&q.body, top, found);
}

fn walk_set(body: &SetExpr, top: bool, found: &mut Findings) {
    match body {
        SetExpr::Select(select) => found.into |= select.into.is_some(),
        SetExpr::Query(q) => walk_query(q, top, found),
        SetExpr::SetOperation { left, right, .. } => {
            walk_set(left, top, found);
            walk_set(right, top, found);
        }
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) if top => found.write = true,
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => found.writable_cte = true,
        SetExpr::Values(_) | SetExpr::Table(_) => {}
    }
}

/// Token-level facts: locking clauses, writable CTEs, `INTO`, a DML main statement after a WITH
/// list, and calls (`name(`) of write or standby-refused functions. Strings are single tokens,
/// so nothing inside a literal counts.
fn scan_tokens(t: &[Spanned<'_>], extra: &[String], found: &mut Findings) {
    let dml = |w: Option<&str>| matches!(w, Some("insert" | "update" | "delete" | "merge"));
    let mut depth = 0usize;
    for (i, tok) in t.iter().enumerate() {
        match &tok.token {
            Token::Punct('(') => depth += 1,
            Token::Punct(')') => depth = depth.saturating_sub(1),
            Token::Word(w) if w == "for" => {
                found.locking |= matches!(
                    (word(t, i + 1), word(t, i + 2)),
                    (Some("update" | "share"), _) | (Some("no"), Some("key")) | (Some("key"), Some("share"))
                );
            }
            Token::Word(w) if w == "into" => {
                found.into |= !matches!(word(t, i.wrapping_sub(1)), Some("insert" | "merge"));
            }
            Token::Word(w) if w == "as" => {
                let mut j = i + 1;
                j += usize::from(word(t, j) == Some("not"));
                j += usize::from(word(t, j) == Some("materialized"));
                found.writable_cte |= is_punct(t, j, '(') && dml(word(t, j + 1));
            }
            Token::Word(w) if depth == 0 && dml(Some(w.as_str())) && is_punct(t, i.wrapping_sub(1), ')') => {
                found.write = true
            }
            Token::Word(name) | Token::QuotedIdent(name) if is_punct(t, i + 1, '(') => {
                let schema = if is_punct(t, i.wrapping_sub(1), '.') { ident(t, i.wrapping_sub(2)) } else { None };
                check_function(schema, name, extra, found);
            }
            _ => {}
        }
    }
}

fn check_function(schema: Option<&str>, name: &str, extra: &[String], found: &mut Findings) {
    if listed(STANDBY_FUNCTIONS, name) {
        found.standby = true;
    } else if listed(WRITE_FUNCTIONS, name)
        || WRITE_FUNCTION_PREFIXES.iter().any(|p| name.get(..p.len()).is_some_and(|head| head.eq_ignore_ascii_case(p)))
        || extra.iter().any(|e| extra_matches(e, schema, name))
    {
        found.write_fn = true;
    }
}

/// `entry` is `name` or `schema.name` (optionally double-quoted parts); case-insensitive.
fn extra_matches(entry: &str, schema: Option<&str>, name: &str) -> bool {
    let entry = entry.trim();
    let (entry_schema, entry_name) = match entry.rsplit_once('.') {
        Some((s, n)) => (Some(s.trim().trim_matches('"')), n.trim().trim_matches('"')),
        None => (None, entry.trim_matches('"')),
    };
    entry_name.eq_ignore_ascii_case(name)
        && match (entry_schema, schema) {
            (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
            _ => true,
        }
}

/// `EXPLAIN [ANALYZE] [VERBOSE] stmt` or `EXPLAIN (option [value], ...) stmt`: the inner
/// statement's classification; any ANALYZE option (it executes the statement) sends it to the primary.
fn explain(text: &str, toks: &[Spanned<'_>], extra: &[String]) -> Verdict {
    let mut i = 1;
    let mut analyze = false;
    if is_punct(toks, 1, '(') {
        i = after_parens(toks, 1);
        analyze = (1..i).any(|j| matches!(word(toks, j), Some("analyze" | "analyse")));
    } else {
        while let Some(w @ ("analyze" | "analyse" | "verbose")) = word(toks, i) {
            analyze |= w != "verbose";
            i += 1;
        }
    }
    let Some(inner) = toks.get(i) else { return (Classification::primary(Reason::Unparseable), false) };
    let (class, sure) = statement(&text[inner.start..], extra, true);
    let reason = match class.reason {
        Reason::Read if analyze => Reason::Other,
        reason => reason,
    };
    let route = if reason == Reason::Read { Route::Replica } else { Route::Primary };
    (Classification { route, reason, txn: None }, sure)
}

/// `COPY ... FROM` writes; `COPY table TO STDOUT` reads; `COPY (query) TO STDOUT` is the query's
/// classification; a server file or program target stays on the primary.
fn copy(text: &str, toks: &[Spanned<'_>], extra: &[String]) -> Verdict {
    let (class, sure) = utility(text, "copy");
    if class.reason == Reason::Unparseable {
        return (class, sure);
    }
    let mut i = 1;
    let mut inner = None;
    let paren = is_punct(toks, 1, '(');
    if paren {
        i = after_parens(toks, 1);
        inner = toks.get(2).filter(|_| i > 3 && is_punct(toks, i - 1, ')')).map(|t| &text[t.start..toks[i - 1].start]);
    } else {
        i += usize::from(word(toks, i) == Some("binary") && ident(toks, i + 1).is_some());
        while ident(toks, i).is_some() && !matches!(word(toks, i), Some("from" | "to")) {
            i += 1;
            if !is_punct(toks, i, '.') {
                break;
            }
            i += 1;
        }
        if is_punct(toks, i, '(') {
            i = after_parens(toks, i);
        }
    }
    match (word(toks, i), word(toks, i + 1)) {
        (Some("to"), Some("stdout")) => match inner {
            Some(inner) => {
                let (class, sure) = statement(inner, extra, true);
                (Classification { txn: None, ..class }, sure)
            }
            None if paren => (Classification::primary(Reason::Unparseable), false),
            None => (Classification::read(), true),
        },
        (Some("to"), _) => (Classification::primary(Reason::Other), true),
        _ => (Classification::primary(Reason::Write), true),
    }
}

/// BEGIN / START TRANSACTION modes: the phrase, which flag it sets (read_only, serializable,
/// deferrable) and to what.
const MODES: &[(&str, usize, bool)] = &[
    ("isolation level serializable", 1, true),
    ("isolation level repeatable read", 1, false),
    ("isolation level read committed", 1, false),
    ("isolation level read uncommitted", 1, false),
    ("read only", 0, true),
    ("read write", 0, false),
    ("not deferrable", 2, false),
    ("deferrable", 2, true),
];

/// A cursor over a statement's tokens for the transaction-control grammar.
struct Cursor<'t, 'a> {
    t: &'t [Spanned<'a>],
    i: usize,
}

impl Cursor<'_, '_> {
    /// Consumes the space-separated words of `phrase` if they all come next.
    fn eat(&mut self, phrase: &str) -> bool {
        let hit = phrase.split(' ').enumerate().all(|(k, w)| word(self.t, self.i + k) == Some(w));
        self.i += if hit { phrase.split(' ').count() } else { 0 };
        hit
    }

    /// Consumes one token if `ok` accepts it (a savepoint name, a prepared transaction's gid).
    fn eat_token(&mut self, ok: fn(&Token<'_>) -> bool) -> bool {
        let hit = self.t.get(self.i).is_some_and(|s| ok(&s.token));
        self.i += usize::from(hit);
        hit
    }

    fn name(&mut self) -> bool {
        self.eat_token(|t| matches!(t, Token::Word(_) | Token::QuotedIdent(_)))
    }

    fn done(&self) -> bool {
        self.i >= self.t.len()
    }

    /// `[AND [NO] CHAIN]`.
    fn chain(&mut self) -> bool {
        if !self.eat("and") {
            return true;
        }
        self.eat("no");
        self.eat("chain")
    }

    /// `[mode [[,] mode ...]]`; the last of conflicting modes wins, as in PostgreSQL.
    fn modes(&mut self) -> Option<TxnControl> {
        let mut flags = [false; 3];
        while !self.done() {
            let &(_, flag, on) = MODES.iter().find(|(phrase, ..)| self.eat(phrase))?;
            flags[flag] = on;
            if is_punct(self.t, self.i, ',') {
                self.i += 1;
                if self.done() {
                    return None;
                }
            }
        }
        let [read_only, serializable, deferrable] = flags;
        Some(TxnControl::Begin { read_only, serializable, deferrable })
    }
}

/// `None`: not transaction control. `Some(None)`: transaction control PostgreSQL would reject.
fn txn_control(t: &[Spanned<'_>]) -> Option<Option<TxnControl>> {
    let first = word(t, 0)?;
    let second = word(t, 1);
    let mut p = Cursor { t, i: 1 };
    let noise = |p: &mut Cursor| p.eat("work") || p.eat("transaction");
    let control = match (first, second) {
        ("begin", _) => {
            noise(&mut p);
            p.modes()
        }
        ("start", Some("transaction")) => {
            p.i = 2;
            p.modes()
        }
        ("commit" | "rollback", Some("prepared")) | ("prepare", Some("transaction")) => {
            p.i = 2;
            p.eat_token(|t| matches!(t, Token::Str(_))).then_some(TxnControl::Other)
        }
        ("commit" | "end", _) => {
            noise(&mut p);
            p.chain().then_some(TxnControl::Commit)
        }
        ("rollback" | "abort", _) => {
            noise(&mut p);
            if first == "rollback" && p.eat("to") {
                p.eat("savepoint");
                p.name().then_some(TxnControl::Savepoint)
            } else {
                p.chain().then_some(TxnControl::Rollback)
            }
        }
        ("savepoint", _) => p.name().then_some(TxnControl::Savepoint),
        ("release", _) => {
            p.eat("savepoint");
            p.name().then_some(TxnControl::Savepoint)
        }
        ("set", Some("transaction")) => {
            p.i = t.len();
            Some(TxnControl::Other)
        }
        _ => return None,
    };
    Some(control.filter(|_| p.done()))
}

#[cfg(test)]
mod tests {
    use super::Reason::*;
    use super::*;

    const P: Route = Route::Primary;
    const R: Route = Route::Replica;

    /// (statement, expected route, expected reason).
    const CORPUS: &[(&str, Route, Reason)] = &[
        // Plain reads.
        ("SELECT abalance FROM pgbench_accounts WHERE aid = 123;", R, Read),
        ("select 1", R, Read),
        ("SELECT * FROM t WHERE a = $1 AND b = ANY($2)", R, Read),
        ("SELECT count(*) FILTER (WHERE a > 1) FROM t GROUP BY ROLLUP (b)", R, Read),
        ("SELECT DISTINCT ON (a) a, b FROM t ORDER BY a, b DESC LIMIT 10 OFFSET 5", R, Read),
        ("SELECT * FROM t ORDER BY a FETCH FIRST 5 ROWS ONLY", R, Read),
        ("SELECT a FROM t WHERE b IN (SELECT b FROM u WHERE c = 'update')", R, Read),
        ("SELECT * FROM t, LATERAL (SELECT 1) s", R, Read),
        ("SELECT * FROM unnest(ARRAY[1, 2]) WITH ORDINALITY", R, Read),
        ("SELECT now() AT TIME ZONE 'UTC', x::int[] FROM t", R, Read),
        ("SELECT a FROM t WHERE b @> '{1}' AND c ~* 'x' AND d IS DISTINCT FROM 1", R, Read),
        ("SELECT 1 UNION SELECT 2 ORDER BY 1 LIMIT 1", R, Read),
        ("(SELECT 1) UNION ALL (SELECT 2)", R, Read),
        ("SELECT 1 INTERSECT SELECT 1 EXCEPT SELECT 2", R, Read),
        ("WITH x AS (SELECT 1) SELECT * FROM x", R, Read),
        ("WITH x AS MATERIALIZED (SELECT 1), y AS NOT MATERIALIZED (SELECT 2) SELECT * FROM x, y", R, Read),
        ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r", R, Read),
        ("VALUES (1)", R, Read),
        ("VALUES (1, 'a'), (2, 'b') ORDER BY 1", R, Read),
        ("TABLE t", R, Read),
        ("table public.t", R, Read),
        ("SHOW search_path", R, Read),
        ("SHOW ALL", R, Read),
        ("SHOW TimeZone", R, Read),
        ("EXPLAIN SELECT 1", R, Read),
        ("EXPLAIN VERBOSE SELECT * FROM t", R, Read),
        ("EXPLAIN (FORMAT JSON, COSTS off) SELECT * FROM t", R, Read),
        ("COPY (SELECT 1) TO STDOUT", R, Read),
        ("COPY t TO STDOUT", R, Read),
        ("COPY public.t (a, b) TO STDOUT WITH (FORMAT csv)", R, Read),
        // Comments, quoting and literals that must not count.
        ("/* update t set a = 1 */ SELECT 1", R, Read),
        ("SELECT 1 -- for update\n", R, Read),
        ("-- leading\nSELECT /* inline; DELETE */ a FROM t /* trailing */", R, Read),
        ("SELECT 'for update' FROM t", R, Read),
        ("SELECT $$ update t set a = 1 $$", R, Read),
        ("SELECT $fn$ delete from t; select nextval('s') $fn$ AS body", R, Read),
        ("SELECT 'nextval(''s'')', 'pg_advisory_lock(1)'", R, Read),
        ("SELECT E'it\\'s nextval(1)' AS x", R, Read),
        ("SELECT \"My Col\", \"update\" FROM \"My Table\"", R, Read),
        ("SELECT nextval FROM t", R, Read),
        ("SELECT for_update, into_x FROM t", R, Read),
        ("SELECT format('select setval(%L)', 'x')", R, Read),
        ("SELECT a FROM t; ", R, Read),
        ("  \n\tSELECT 1  ;  ;", R, Read),
        // Locking reads.
        ("SELECT * FROM t FOR UPDATE", P, LockingRead),
        ("select * from t for no key update", P, LockingRead),
        ("SELECT * FROM t FOR SHARE", P, LockingRead),
        ("SELECT * FROM t FOR KEY SHARE", P, LockingRead),
        ("SELECT * FROM t FOR UPDATE OF t SKIP LOCKED", P, LockingRead),
        ("SELECT * FROM t FOR NO KEY UPDATE NOWAIT", P, LockingRead),
        ("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", P, LockingRead),
        ("WITH x AS (SELECT * FROM t FOR SHARE) SELECT * FROM x", P, LockingRead),
        ("SELECT * FROM t /* c */ FOR /* c */ NO /* c */ KEY -- c\n UPDATE", P, LockingRead),
        // Writable CTEs, SELECT INTO.
        ("WITH x AS (UPDATE t SET a=1 RETURNING *) SELECT * FROM x", P, WritableCte),
        ("WITH x AS (DELETE FROM t RETURNING id) SELECT count(*) FROM x", P, WritableCte),
        ("WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x", P, WritableCte),
        (
            "WITH a AS (SELECT 1), b AS NOT MATERIALIZED (UPDATE t SET a = 2 RETURNING a) SELECT * FROM a, b",
            P,
            WritableCte,
        ),
        ("WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x FOR NO KEY UPDATE", P, WritableCte),
        ("SELECT * INTO newt FROM t", P, SelectInto),
        ("SELECT a, b INTO TEMP newt FROM t WHERE a > 1", P, SelectInto),
        ("WITH x AS (SELECT 1 AS a) SELECT a INTO newt FROM x", P, SelectInto),
        // Write and standby-refused functions.
        ("SELECT nextval('s')", P, WriteFunction),
        ("SELECT NEXTVAL ( 's' )", P, WriteFunction),
        ("SELECT setval('s', 42, true)", P, WriteFunction),
        ("SELECT currval('s')", P, WriteFunction),
        ("SELECT lastval()", P, WriteFunction),
        ("SELECT pg_catalog.set_config('a','b',false)", P, WriteFunction),
        ("SELECT set_config('search_path', 'x', true)", P, WriteFunction),
        ("SELECT pg_advisory_lock(1)", P, WriteFunction),
        ("SELECT pg_advisory_xact_lock_shared(1, 2)", P, WriteFunction),
        ("SELECT pg_advisory_unlock_all()", P, WriteFunction),
        ("SELECT pg_try_advisory_lock(hashtext('job'))", P, WriteFunction),
        ("SELECT lo_create(0)", P, WriteFunction),
        ("SELECT lo_import('/tmp/x')", P, WriteFunction),
        ("SELECT lo_unlink(1234)", P, WriteFunction),
        ("SELECT lo_put(1234, 0, '\\x00')", P, WriteFunction),
        ("SELECT lo_from_bytea(0, 'abc')", P, WriteFunction),
        ("SELECT dblink_exec('conn', 'DELETE FROM t')", P, WriteFunction),
        ("SELECT pg_notify('chan', 'payload')", P, WriteFunction),
        ("SELECT \"nextval\"('s')", P, WriteFunction),
        ("SELECT * FROM t WHERE id = (SELECT nextval('s'))", P, WriteFunction),
        ("VALUES (nextval('s'))", P, WriteFunction),
        ("WITH x AS (SELECT setval('s', 1)) SELECT * FROM x", P, WriteFunction),
        ("SELECT app.audit_log('x')", P, WriteFunction),
        ("SELECT Bump_Counter(1)", P, WriteFunction),
        ("SELECT txid_current()", P, StandbyRefuses),
        ("SELECT pg_current_xact_id()", P, StandbyRefuses),
        ("SELECT pg_current_wal_lsn()", P, StandbyRefuses),
        ("SELECT pg_catalog.pg_current_wal_insert_lsn()", P, StandbyRefuses),
        ("SELECT pg_is_in_recovery()", P, StandbyRefuses),
        ("SHOW transaction_read_only", P, StandbyRefuses),
        ("SHOW in_hot_standby", P, StandbyRefuses),
        // EXPLAIN.
        ("EXPLAIN ANALYZE DELETE FROM t", P, Write),
        ("EXPLAIN ANALYZE SELECT 1", P, Other),
        ("EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM t", P, Other),
        ("EXPLAIN (analyse true) SELECT 1", P, Other),
        ("EXPLAIN UPDATE t SET a = 1", P, Write),
        ("EXPLAIN SELECT * FROM t FOR UPDATE", P, LockingRead),
        ("EXPLAIN SELECT nextval('s')", P, WriteFunction),
        ("EXPLAIN EXPLAIN SELECT 1", P, Unparseable),
        ("EXPLAIN BEGIN", P, Unparseable),
        ("EXPLAIN", P, Unparseable),
        // COPY.
        ("COPY t FROM STDIN", P, Write),
        ("COPY t (a, b) FROM STDIN WITH (FORMAT csv)", P, Write),
        ("COPY t TO '/tmp/out.csv'", P, Other),
        ("COPY (DELETE FROM t RETURNING *) TO STDOUT", P, Write),
        ("COPY (SELECT nextval('s')) TO STDOUT", P, WriteFunction),
        // Writes, DDL, maintenance.
        ("INSERT INTO t VALUES (1)", P, Write),
        ("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, -4, CURRENT_TIMESTAMP)", P, Write),
        ("UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 5", P, Write),
        ("DELETE FROM t WHERE a = 1", P, Write),
        ("MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN UPDATE SET b = s.b", P, Write),
        ("WITH x AS (SELECT 1 AS a) INSERT INTO t SELECT a FROM x", P, Write),
        ("WITH x AS (SELECT 1 AS a) UPDATE t SET b = x.a FROM x", P, Write),
        ("CREATE TABLE t (a int)", P, Write),
        ("CREATE TEMP TABLE t (a int)", P, Write),
        ("CREATE TABLE t2 AS SELECT * FROM t", P, Write),
        ("ALTER TABLE t ADD COLUMN b int", P, Write),
        ("DROP TABLE t", P, Write),
        ("TRUNCATE t", P, Write),
        ("CREATE INDEX CONCURRENTLY i ON t (a)", P, Write),
        ("GRANT SELECT ON t TO u", P, Write),
        ("COMMENT ON TABLE t IS 'x'", P, Write),
        ("VACUUM t", P, Write),
        ("ANALYZE t", P, Write),
        ("CALL p(1)", P, Write),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ select 1 $$", P, Write),
        // Unparseable by sqlparser 0.63.
        ("DO $$ begin end $$", P, Unparseable),
        ("VACUUM ANALYZE t", P, Unparseable),
        ("REFRESH MATERIALIZED VIEW v", P, Unparseable),
        ("SELEC 1", P, Unparseable),
        ("SELECT (", P, Unparseable),
        ("TABLE", P, Unparseable),
        ("'just a string'", P, Unparseable),
        // Session and utility statements.
        ("SET statement_timeout = '5s'", P, Other),
        ("SET search_path TO a, b", P, Other),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", P, Other),
        ("RESET ALL", P, Other),
        ("DISCARD ALL", P, Other),
        ("PREPARE p (int) AS SELECT $1", P, Other),
        ("EXECUTE p(1)", P, Other),
        ("DEALLOCATE ALL", P, Other),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", P, Other),
        ("FETCH 10 FROM c", P, Other),
        ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", P, Other),
        ("LISTEN chan", P, StandbyRefuses),
        ("NOTIFY chan, 'x'", P, StandbyRefuses),
        ("", P, Other),
        ("/* only a comment */", P, Other),
        // Transaction control.
        ("BEGIN", P, TransactionControl),
        ("START TRANSACTION READ ONLY DEFERRABLE", P, TransactionControl),
        ("COMMIT", P, TransactionControl),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", P, TransactionControl),
        ("BEGIN garbage", P, Unparseable),
        ("START TRANSACTION READ", P, Unparseable),
        // Multi-statement strings.
        ("SELECT 1; SELECT 2", R, Read),
        ("SELECT 1; SHOW search_path; VALUES (3);", R, Read),
        ("SELECT 1; UPDATE t SET a = 1", P, MultiStatement),
        ("BEGIN; SELECT 1; COMMIT", P, MultiStatement),
        ("SELECT 1; SELECT nextval('s')", P, MultiStatement),
        ("SELECT ';' ; SELECT \";\"", R, Read),
        // Hints win.
        ("/* pgweir: replica */ UPDATE t SET a = 1", R, Hint),
        ("/*pgweir:primary*/ SELECT 1", P, Hint),
        ("  /*  PgWeir :  REPLICA  */ SELECT nextval('s')", R, Hint),
        ("-- pgweir: primary\nSELECT 1", P, Hint),
        ("/* app=web */ -- pgweir: replica, cache ttl=30s\nSELECT 1", R, Hint),
        ("/* pgweir: replica */ /* pgweir: primary */ SELECT 1", P, Hint),
        ("/* pgweir: replica */ SELECT 1; DELETE FROM t", R, Hint),
        ("SELECT 1 /* pgweir: replica */ FOR UPDATE", P, LockingRead),
        ("/* pgweir: cache ttl=30s */ SELECT 1", R, Read),
        ("/* pgweirx: replica */ UPDATE t SET a = 1", P, Write),
        ("SELECT a FROM t -- pgweir: replica", R, Read),
        // More tricky ones.
        ("SELECT lo_get(1234)", R, Read),
        ("SELECT pg_advisory_lock FROM t", R, Read),
        ("SELECT 1 FROM t WHERE a IN (SELECT b FROM u FOR UPDATE)", P, LockingRead),
        ("select * from \"Ünï\" for key share", P, LockingRead),
        ("SELECT * FROM \"for\" update", R, Read),
        ("COPY t TO PROGRAM 'gzip > /tmp/x'", P, Other),
        ("TABLE t FOR UPDATE", P, LockingRead),
        ("WITH x AS (SELECT 1) SELECT * FROM x; UPDATE t SET a = 1", P, MultiStatement),
        ("WITH x AS (SELECT 1) DELETE FROM t USING x", P, Write),
        ("SELECT 1; DO $$ begin end $$; SELECT 2", P, MultiStatement),
    ];

    fn extra() -> Vec<String> {
        vec!["app.audit_log".to_string(), "BUMP_COUNTER".to_string()]
    }

    #[test]
    fn corpus() {
        let extra = extra();
        let mut cache = ClassifyCache::new(1024);
        let mut failures = Vec::new();
        for &(sql, route, reason) in CORPUS {
            let got = classify(sql, &extra);
            if (got.route, got.reason) != (route, reason) {
                failures.push(format!("{sql:?}: expected {route:?}/{reason:?}, got {:?}/{:?}", got.route, got.reason));
            }
            // Twice through the cache: a miss, then (when cacheable) a hit; both agree with classify.
            assert_eq!(cache.classify(sql, &extra), got, "{sql:?}");
            assert_eq!(cache.classify(sql, &extra), got, "{sql:?}");
        }
        assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
        assert!(CORPUS.len() >= 100, "{}", CORPUS.len());
    }

    fn begin(read_only: bool, serializable: bool, deferrable: bool) -> Option<TxnControl> {
        Some(TxnControl::Begin { read_only, serializable, deferrable })
    }

    #[test]
    fn transaction_control() {
        use TxnControl::*;
        let cases = [
            ("BEGIN", begin(false, false, false)),
            ("begin work", begin(false, false, false)),
            ("BEGIN TRANSACTION READ ONLY", begin(true, false, false)),
            ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE", begin(true, true, true)),
            ("BEGIN ISOLATION LEVEL REPEATABLE READ, READ WRITE", begin(false, false, false)),
            ("BEGIN READ ONLY, ISOLATION LEVEL READ COMMITTED, NOT DEFERRABLE", begin(true, false, false)),
            ("BEGIN ISOLATION LEVEL SERIALIZABLE ISOLATION LEVEL READ UNCOMMITTED", begin(false, false, false)),
            ("START TRANSACTION", begin(false, false, false)),
            ("START TRANSACTION READ ONLY DEFERRABLE", begin(true, false, true)),
            ("start transaction isolation level serializable", begin(false, true, false)),
            ("/* c */ START -- x\n TRANSACTION READ ONLY;", begin(true, false, false)),
            ("COMMIT", Some(Commit)),
            ("commit work", Some(Commit)),
            ("COMMIT AND NO CHAIN", Some(Commit)),
            ("END", Some(Commit)),
            ("END TRANSACTION", Some(Commit)),
            ("ROLLBACK", Some(Rollback)),
            ("ROLLBACK AND CHAIN", Some(Rollback)),
            ("ABORT", Some(Rollback)),
            ("SAVEPOINT s1", Some(Savepoint)),
            ("RELEASE SAVEPOINT s1", Some(Savepoint)),
            ("RELEASE s1", Some(Savepoint)),
            ("ROLLBACK TO SAVEPOINT s1", Some(Savepoint)),
            ("ROLLBACK WORK TO \"S 1\"", Some(Savepoint)),
            ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", Some(Other)),
            ("SET TRANSACTION SNAPSHOT '00000003-0000001B-1'", Some(Other)),
            ("PREPARE TRANSACTION 'gid'", Some(Other)),
            ("COMMIT PREPARED 'gid'", Some(Other)),
            ("ROLLBACK PREPARED 'gid'", Some(Other)),
        ];
        for (sql, txn) in cases {
            let got = classify(sql, &[]);
            assert_eq!(got, Classification { route: Route::Primary, reason: TransactionControl, txn }, "{sql:?}");
        }
        for bad in ["BEGIN READ", "BEGIN ISOLATION LEVEL", "BEGIN READ ONLY,", "COMMIT NOW", "SAVEPOINT", "ROLLBACK TO"]
        {
            assert_eq!(classify(bad, &[]), Classification::primary(Unparseable), "{bad:?}");
        }
        assert_eq!(classify("START", &[]).reason, Unparseable);
        assert_eq!(classify("BEGIN; UPDATE t SET a = 1; COMMIT", &[]).txn, begin(false, false, false));
        let hinted = classify("/* pgweir: replica */ BEGIN READ ONLY", &[]);
        assert_eq!(hinted, Classification { route: Route::Replica, reason: Hint, txn: begin(true, false, false) });
    }

    #[test]
    fn hints() {
        assert_eq!(hint("/* pgweir: primary */ SELECT 1"), Some(Route::Primary));
        assert_eq!(hint("/*PGWEIR:Replica*/SELECT 1"), Some(Route::Replica));
        assert_eq!(hint("--pgweir:replica"), Some(Route::Replica));
        assert_eq!(hint("/* pgweir: replica /* nested */ */ SELECT 1"), Some(Route::Replica));
        assert_eq!(hint("SELECT 1 /* pgweir: replica */"), None);
        assert_eq!(hint("/* pgweir replica */ SELECT 1"), None);
        assert_eq!(hint("/* pgweir: replicas */ SELECT 1"), None);
        assert_eq!(hint("/* not pgweir: replica */ SELECT 1"), None);
        assert_eq!(hint("/* pgweir: replica"), Some(Route::Replica));
        assert_eq!(hint(""), None);
        assert_eq!(hint("/*é*/ -- ü\n"), None);
    }

    #[test]
    fn extra_functions_match_case_insensitively_and_by_schema() {
        let extra = vec!["audit.log_event".to_string(), "\"Stamp\"".to_string()];
        let reason = |sql| classify(sql, &extra).reason;
        assert_eq!(reason("SELECT audit.log_event(1)"), WriteFunction);
        assert_eq!(reason("SELECT AUDIT.LOG_EVENT(1)"), WriteFunction);
        assert_eq!(reason("SELECT log_event(1)"), WriteFunction);
        assert_eq!(reason("SELECT other.log_event(1)"), Read);
        assert_eq!(reason("SELECT x.stamp(1)"), WriteFunction);
        assert_eq!(reason("SELECT log_event FROM t"), Read);
        assert_eq!(reason("SELECT 'log_event(1)'"), Read);
        assert_eq!(classify("SELECT log_event(1)", &[]).reason, Read);
    }

    #[test]
    fn fingerprints_strip_literals_and_keep_structure() {
        let fp = fingerprint;
        let base = fp("SELECT abalance FROM pgbench_accounts WHERE aid = 1");
        assert_eq!(base, fp("SELECT abalance FROM pgbench_accounts WHERE aid = 2"));
        assert_eq!(base, fp("select  ABALANCE\nfrom pgbench_accounts /* c */ where aid = 98765 -- x"));
        assert_eq!(base, fp("SELECT abalance FROM pgbench_accounts WHERE aid = 'str'"));
        assert_ne!(base, fp("SELECT abalance FROM pgbench_accounts WHERE bid = 1"));
        assert_ne!(base, fp("SELECT abalance FROM pgbench_accounts WHERE aid = $1"));
        assert_ne!(base, fp("SELECT abalance FROM pgbench_accounts WHERE aid = 1;"));
        assert_ne!(base, fp("SELECT abalance FROM \"pgbench_accounts\" WHERE aid = 1"));
        assert_ne!(base, fp("/* pgweir: primary */ SELECT abalance FROM pgbench_accounts WHERE aid = 1"));
        assert_eq!(fp("/* pgweir: primary */ SELECT 1"), fp("/*PGWEIR: primary*/ SELECT 2"));
        assert_ne!(fp("SELECT $1"), fp("SELECT $2"));
        assert_ne!(fp("SELECT \"ab\""), fp("SELECT ab"));
        assert_ne!(fp("SELECT ab"), fp("SELECT a b"));
        assert_eq!(fp("SELECT $$x$$"), fp("SELECT E'y'"));
    }

    #[test]
    fn cache_hits_across_literal_values_and_bounds_its_size() {
        let mut cache = ClassifyCache::new(4);
        for aid in 0..100 {
            let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid}");
            assert_eq!(cache.classify(&sql, &[]), Classification::read());
        }
        assert_eq!(cache.len(), 1);
        for n in 0..50 {
            cache.classify(&format!("SELECT c{n} FROM t"), &[]);
            assert!(cache.len() <= 4);
        }
        assert_eq!(cache.len(), 4);
        // Never cached: unparseable statements.
        let mut cache = ClassifyCache::new(8);
        cache.classify("DO $$ begin end $$", &[]);
        cache.classify("SELEC 1", &[]);
        assert!(cache.is_empty());
        // Capacity 0 disables caching but still classifies.
        let mut off = ClassifyCache::new(0);
        assert_eq!(off.classify("SELECT nextval('s')", &[]).reason, WriteFunction);
        assert_eq!(off.len(), 0);
    }

    #[test]
    fn cache_follows_changes_of_the_write_function_list() {
        let mut cache = ClassifyCache::new(8);
        assert_eq!(cache.classify("SELECT f(1)", &[]).reason, Read);
        assert_eq!(cache.classify("SELECT f(2)", &["f".to_string()]).reason, WriteFunction);
        assert_eq!(cache.classify("SELECT f(3)", &[]).reason, Read);
    }

    #[test]
    fn forced_collisions_never_return_another_statements_classification() {
        let mut cache = ClassifyCache::with_hash(16, |_| 42);
        let pairs = [
            ("SELECT * FROM t WHERE a = 1", Read),
            ("SELECT * FROM t WHERE a = 1 FOR UPDATE", LockingRead),
            ("DELETE FROM t WHERE a = 1", Write),
            ("SELECT nextval('s')", WriteFunction),
            ("/* pgweir: replica */ DELETE FROM t WHERE a = 1", Hint),
        ];
        for _ in 0..3 {
            for (sql, reason) in pairs {
                assert_eq!(cache.classify(sql, &[]).reason, reason, "{sql:?}");
                assert!(cache.len() <= 1);
            }
        }
        // Same shape, other literal: a confirmed hit.
        assert_eq!(cache.classify("/* pgweir: replica */ DELETE FROM t WHERE a = 7", &[]).route, Route::Replica);
    }

    #[test]
    fn never_panics_and_stays_shallow_on_hostile_input() {
        let n = 3_000;
        let hostile = [
            format!("SELECT {}1{}", "(".repeat(100 * n), ")".repeat(100 * n)),
            format!("{}SELECT 1{}", "WITH x AS (".repeat(n), ") SELECT 1".repeat(n)),
            format!("{}SELECT 1{}", "(SELECT 1 UNION ".repeat(n), ")".repeat(n)),
            format!("SELECT * FROM {}t{}", "(t JOIN ".repeat(n), " ON true)".repeat(n)),
            format!("INSERT INTO t {}SELECT 1{}", "(SELECT * FROM (".repeat(n), ") s)".repeat(n)),
            "EXPLAIN ".repeat(10 * n) + "SELECT 1",
            "COPY (".repeat(n) + "SELECT 1",
        ];
        // Tokio's default worker stack: the recursion is sqlparser's (depth-limited), not ours.
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                for sql in &hostile {
                    assert_eq!(classify(sql, &[]).route, Route::Primary);
                }
            })
            .unwrap()
            .join()
            .unwrap();
        const ALPHABET: &[&str] = &[
            "'", "\"", "$$", ";", "/*", "*/", "--", "\n", "(", ")", " ", "select ", "for ", "update ", "with ", "as ",
            "into ", "begin ", "explain ", "copy ", "to ", "stdout ", "nextval", ".", "é", "pgweir:", "replica ",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut cache = ClassifyCache::new(64);
        for _ in 0..3000 {
            let mut sql = String::new();
            for _ in 0..(state % 24) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                sql.push_str(ALPHABET[(state % ALPHABET.len() as u64) as usize]);
            }
            let direct = classify(&sql, &[]);
            assert_eq!(cache.classify(&sql, &[]), direct, "{sql:?}");
        }
    }

    /// `cargo test --release -- --ignored --nocapture warm_cache_speed`
    #[test]
    #[ignore]
    fn warm_cache_speed() {
        let mut cache = ClassifyCache::new(10_000);
        let texts: Vec<String> =
            (0..1000).map(|n| format!("SELECT abalance FROM pgbench_accounts WHERE aid = {};", n * 7919)).collect();
        cache.classify(&texts[0], &[]);
        let rounds = 1_000_000;
        let start = std::time::Instant::now();
        for i in 0..rounds {
            let c = cache.classify(std::hint::black_box(&texts[i % texts.len()]), &[]);
            assert_eq!(c.route, Route::Replica);
        }
        let per = start.elapsed() / rounds as u32;
        let start = std::time::Instant::now();
        for i in 0..rounds {
            std::hint::black_box(fingerprint(std::hint::black_box(&texts[i % texts.len()])));
        }
        let fp = start.elapsed() / rounds as u32;
        let start = std::time::Instant::now();
        for text in texts.iter().take(200) {
            std::hint::black_box(classify(text, &[]));
        }
        let cold = start.elapsed() / 200;
        println!("warm ClassifyCache::classify: {per:?}/query; fingerprint: {fp:?}; uncached classify: {cold:?}");
    }
}
