//! What the result cache needs to know about a statement's text: whether it may be cached at
//! all (and if not, why), which tables it reads (their versions are part of the key), and which
//! tables a statement the proxy forwards may write (their versions are bumped at commit).
//!
//! Pure: no I/O, no clock, no global state. It must err towards refusing and towards
//! invalidating: a statement it cannot understand is never cached, and a write whose targets it
//! cannot name invalidates every entry of its database. Function volatility comes from a list of
//! PostgreSQL's immutable built-ins (`functions.txt`, generated from the catalog) plus the
//! user's `cache.safe_functions`; any other function call refuses the statement.

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{visit_relations, ObjectName, SetExpr, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::route::classify::{classify, Reason};
use crate::route::lexer::{split_statements, tokenize, Spanned, Token};

/// Why a statement a rule matched is not cached. The label is the metric's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Not a plain read: a write, DDL, a utility statement.
    Write,
    /// `FOR UPDATE` / `FOR SHARE` and friends.
    LockingRead,
    /// Calls a volatile or time- or session-dependent function (now(), random(), nextval,
    /// current_user, `'now'::date` ...).
    VolatileFunction,
    /// Calls a function whose volatility the proxy does not know (not built in, not listed in
    /// `cache.safe_functions`).
    UnknownFunction,
    /// Reads a system catalog or statistics view (pg_catalog, information_schema, pg_*).
    SystemTable,
    /// Reads a temporary table (`pg_temp`).
    TempTable,
    /// Several statements in one Query.
    MultiStatement,
    /// The statement could not be parsed.
    Unparseable,
    /// Inside a transaction block, or the session holds state that pins it to a server.
    InTransaction,
    /// The result was an error, a notice, a COPY, or not a complete result.
    NotAResult,
    /// The result was larger than `cache.max_entry_bytes`.
    TooLarge,
    /// The extended-protocol request asked for a partial result (Execute with a row limit).
    RowLimit,
    /// Redis could not be reached (or a version bump is still owed): nothing is served.
    Unavailable,
}

impl Refusal {
    pub const ALL: [Refusal; 13] = [
        Refusal::Write,
        Refusal::LockingRead,
        Refusal::VolatileFunction,
        Refusal::UnknownFunction,
        Refusal::SystemTable,
        Refusal::TempTable,
        Refusal::MultiStatement,
        Refusal::Unparseable,
        Refusal::InTransaction,
        Refusal::NotAResult,
        Refusal::TooLarge,
        Refusal::RowLimit,
        Refusal::Unavailable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::Write => "write",
            Refusal::LockingRead => "locking_read",
            Refusal::VolatileFunction => "volatile_function",
            Refusal::UnknownFunction => "unknown_function",
            Refusal::SystemTable => "system_table",
            Refusal::TempTable => "temp_table",
            Refusal::MultiStatement => "multi_statement",
            Refusal::Unparseable => "unparseable",
            Refusal::InTransaction => "in_transaction",
            Refusal::NotAResult => "not_a_result",
            Refusal::TooLarge => "too_large",
            Refusal::RowLimit => "row_limit",
            Refusal::Unavailable => "redis_unavailable",
        }
    }

    pub fn index(self) -> usize {
        Refusal::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// A read statement's cache facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadFacts {
    /// Why it may not be cached, if it may not.
    pub refusal: Option<Refusal>,
    /// Tables (and views, CTE names, table functions) it reads: unqualified, folded, sorted,
    /// deduplicated. Versions are kept per unqualified name, so `a.t` and `b.t` share one.
    pub tables: Vec<String>,
}

/// Tables a statement may write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Writes {
    #[default]
    None,
    /// These tables (unqualified, folded).
    Tables(Vec<String>),
    /// Unknown targets (DDL, DO, CALL, EXECUTE, unreadable text): every table of the database.
    Any,
}

impl Writes {
    pub fn is_none(&self) -> bool {
        matches!(self, Writes::None)
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Writes) {
        match (&mut *self, other) {
            (_, Writes::None) | (Writes::Any, _) => {}
            (_, Writes::Any) => *self = Writes::Any,
            (Writes::None, Writes::Tables(t)) => *self = Writes::Tables(t.clone()),
            (Writes::Tables(mine), Writes::Tables(t)) => {
                for name in t {
                    if !mine.contains(name) {
                        mine.push(name.clone());
                    }
                }
            }
        }
    }
}

/// Built-in functions the cache may call, and the user's additions.
pub struct Functions {
    names: HashSet<String>,
}

const BUILTIN_FUNCTIONS: &str = include_str!("functions.txt");

/// SQL constructs written like calls that are not function calls, and type names with modifiers.
const CALL_LIKE_KEYWORDS: &str = "in exists any all some values as over filter within cast coalesce nullif \
    greatest least array row extract position substring overlay trim and or not on using from join where \
    select when then else case by lateral rollup cube grouping sets partition union intersect except is \
    distinct like ilike similar between having limit offset order group with recursive materialized \
    numeric decimal varchar char character varying bit varbit timestamp timestamptz time timetz interval \
    float precision double zone xmlelement xmlforest xmlconcat xmlparse xmlpi xmlroot xmlserialize \
    xmlexists xmlattributes normalize treat collation";

/// Words that read the clock or the session's identity.
const VOLATILE_WORDS: &str = "current_timestamp current_date current_time localtime localtimestamp \
    current_user session_user current_role user current_schema current_catalog system_user";

/// Functions refused as volatile (for the refusal reason; anything unlisted is refused too).
const KNOWN_VOLATILE: &str = "now random nextval currval lastval setval clock_timestamp statement_timestamp \
    transaction_timestamp timeofday pg_sleep gen_random_uuid uuid_generate_v4 current_setting set_config \
    txid_current pg_backend_pid inet_client_addr pg_current_wal_lsn setseed age random_normal \
    pg_advisory_lock pg_try_advisory_lock current_schemas version";

impl Functions {
    pub fn new(extra: &[String]) -> Functions {
        let mut names: HashSet<String> = BUILTIN_FUNCTIONS
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect();
        names.extend(extra.iter().map(|f| f.to_ascii_lowercase()));
        Functions { names }
    }

    fn allows(&self, schema: Option<&str>, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        match schema.map(str::to_ascii_lowercase) {
            None => self.names.contains(&name),
            Some(s) if s == "pg_catalog" => self.names.contains(&name),
            Some(s) => self.names.contains(&format!("{s}.{name}")),
        }
    }
}

fn listed(list: &str, w: &str) -> bool {
    list.split_ascii_whitespace().any(|x| x == w)
}

use crate::route::classify::{after_parens, ident as name_at, is_punct as punct, word};

/// The cache facts of a read. `functions` decides which calls are safe.
pub fn read_facts(sql: &str, functions: &Functions) -> ReadFacts {
    let refuse = |r| ReadFacts { refusal: Some(r), tables: Vec::new() };
    let ranges = split_statements(sql);
    if ranges.len() > 1 {
        return refuse(Refusal::MultiStatement);
    }
    let toks = tokenize(sql);
    let Some(first) = toks.first() else { return refuse(Refusal::Unparseable) };
    let class = classify(&sql[first.start..], &[]);
    match class.reason {
        Reason::Read => {}
        Reason::LockingRead => return refuse(Refusal::LockingRead),
        Reason::WriteFunction | Reason::StandbyRefuses => return refuse(Refusal::VolatileFunction),
        Reason::Unparseable => return refuse(Refusal::Unparseable),
        Reason::MultiStatement => return refuse(Refusal::MultiStatement),
        _ => return refuse(Refusal::Write),
    }
    if let Some(r) = scan_calls(&toks, functions) {
        return refuse(r);
    }
    let statements = match Parser::parse_sql(&PostgreSqlDialect {}, &sql[first.start..]) {
        Ok(s) => s,
        // SHOW and friends the classifier reads without sqlparser's help.
        Err(_) => return refuse(Refusal::Unparseable),
    };
    let [Statement::Query(q)] = statements.as_slice() else { return refuse(Refusal::Write) };
    if !matches!(*q.body, SetExpr::Select(_) | SetExpr::SetOperation { .. } | SetExpr::Values(_) | SetExpr::Query(_)) {
        return refuse(Refusal::Write);
    }
    let mut tables = Vec::new();
    let mut refusal = None;
    let _ = visit_relations(&statements, |rel: &ObjectName| {
        let parts: Vec<String> = rel.0.iter().filter_map(|p| p.as_ident()).map(fold_ident).collect();
        let Some(table) = parts.last() else {
            refusal = Some(Refusal::Unparseable);
            return ControlFlow::Break(());
        };
        let schema = parts.len().checked_sub(2).map(|i| parts[i].as_str());
        if matches!(schema, Some("pg_catalog" | "information_schema")) || (schema.is_none() && table.starts_with("pg_"))
        {
            refusal = Some(Refusal::SystemTable);
            return ControlFlow::Break(());
        }
        if schema.is_some_and(|s| s.starts_with("pg_temp")) {
            refusal = Some(Refusal::TempTable);
            return ControlFlow::Break(());
        }
        tables.push(table.clone());
        ControlFlow::Continue(())
    });
    if refusal.is_some() {
        return ReadFacts { refusal, tables: Vec::new() };
    }
    tables.sort();
    tables.dedup();
    ReadFacts { refusal: None, tables }
}

fn fold_ident(i: &sqlparser::ast::Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_ascii_lowercase()
    }
}

/// Refuses calls of unsafe functions, clock and identity keywords, and `'now'`-style literals.
fn scan_calls(t: &[Spanned<'_>], functions: &Functions) -> Option<Refusal> {
    let mut unknown = false;
    for (i, tok) in t.iter().enumerate() {
        let after_dot = punct(t, i.wrapping_sub(1), '.');
        match &tok.token {
            Token::Str(s) => {
                let s = s.trim().to_ascii_lowercase();
                if matches!(s.as_str(), "now" | "today" | "tomorrow" | "yesterday") {
                    return Some(Refusal::VolatileFunction);
                }
            }
            Token::Word(w) if !after_dot && !punct(t, i + 1, '(') && listed(VOLATILE_WORDS, w) => {
                return Some(Refusal::VolatileFunction)
            }
            Token::Word(w) | Token::QuotedIdent(w) if punct(t, i + 1, '(') => {
                let quoted = matches!(tok.token, Token::QuotedIdent(_));
                if !quoted && !after_dot && listed(CALL_LIKE_KEYWORDS, w) {
                    continue;
                }
                // An alias's column list (`AS g(i)`) or a CTE's (`WITH x(a) AS (...)`).
                if word(t, i.wrapping_sub(1)) == Some("as") || cte_columns(t, i + 1) {
                    continue;
                }
                let schema = if after_dot { name_at(t, i.wrapping_sub(2)) } else { None };
                if functions.allows(schema, w) {
                    continue;
                }
                if listed(KNOWN_VOLATILE, &w.to_ascii_lowercase()) || listed(VOLATILE_WORDS, w) {
                    return Some(Refusal::VolatileFunction);
                }
                unknown = true;
            }
            _ => {}
        }
    }
    unknown.then_some(Refusal::UnknownFunction)
}

/// `t[open]` is `(`: whether the parentheses are followed by `AS (` or `AS [NOT] MATERIALIZED`.
fn cte_columns(t: &[Spanned<'_>], open: usize) -> bool {
    let i = after_parens(t, open);
    word(t, i) == Some("as") && (punct(t, i + 1, '(') || matches!(word(t, i + 1), Some("not" | "materialized")))
}

/// Words that start statements which change no table's rows.
const NO_WRITE_WORDS: [&str; 34] = [
    "select",
    "values",
    "table",
    "with",
    "set",
    "reset",
    "show",
    "begin",
    "start",
    "commit",
    "end",
    "rollback",
    "abort",
    "savepoint",
    "release",
    "prepare",
    "deallocate",
    "discard",
    "listen",
    "unlisten",
    "notify",
    "lock",
    "declare",
    "fetch",
    "move",
    "close",
    "explain",
    "vacuum",
    "analyze",
    "analyse",
    "checkpoint",
    "load",
    "cluster",
    "reindex",
];

/// Tables a statement the client sends may write (several statements: all of them).
pub fn writes(sql: &str) -> Writes {
    // The common case without tokenizing: a read or a session statement, with no DML word
    // anywhere (a writable CTE or EXPLAIN ANALYZE of a write would have one).
    if let Some(w) = crate::route::lexer::first_word(sql) {
        let quiet = NO_WRITE_WORDS.iter().any(|x| x.eq_ignore_ascii_case(w));
        if quiet && !has_dml_word(sql) {
            return Writes::None;
        }
    }
    let mut all = Writes::None;
    for range in split_statements(sql) {
        all.merge(&statement_writes(&sql[range]));
        if all == Writes::Any {
            break;
        }
    }
    all
}

/// Does a DML word appear anywhere (case-insensitive, even inside another word or a string)?
/// One pass: only bytes that can start one are compared further.
fn has_dml_word(sql: &str) -> bool {
    const WORDS: [&[u8]; 6] = [b"insert", b"update", b"delete", b"merge", b"truncate", b"copy"];
    let b = sql.as_bytes();
    (0..b.len()).any(|i| {
        let c = b[i].to_ascii_lowercase();
        matches!(c, b'i' | b'u' | b'd' | b'm' | b't' | b'c')
            && WORDS.iter().any(|w| w[0] == c && b[i..].len() >= w.len() && b[i..i + w.len()].eq_ignore_ascii_case(w))
    })
}

fn statement_writes(sql: &str) -> Writes {
    let t = tokenize(sql);
    let first = if punct(&t, 0, '(') { "(" } else { word(&t, 0).unwrap_or("") };
    let mut found: Vec<String> = Vec::new();
    fn push(found: &mut Vec<String>, name: Option<&str>) {
        if let Some(n) = name {
            if !found.iter().any(|f| f == n) {
                found.push(n.to_string());
            }
        }
    }
    // The name at `i`, qualified or not: its last part.
    let target = |i: usize| -> (Option<&str>, usize) {
        let mut j = i;
        if word(&t, j) == Some("only") {
            j += 1;
        }
        let mut name = name_at(&t, j);
        while punct(&t, j + 1, '.') {
            j += 2;
            name = name_at(&t, j);
        }
        (name, j + 1)
    };
    let mut i = 0;
    while i < t.len() {
        match word(&t, i) {
            Some("insert" | "merge") if word(&t, i + 1) == Some("into") => push(&mut found, target(i + 2).0),
            Some("update") if i == 0 || punct(&t, i - 1, '(') || word(&t, i.wrapping_sub(1)) == Some("analyze") => {
                push(&mut found, target(i + 1).0)
            }
            // `WITH ... UPDATE t` at the top level after a CTE list.
            Some("update") if punct(&t, i.wrapping_sub(1), ')') => push(&mut found, target(i + 1).0),
            Some("delete") if word(&t, i + 1) == Some("from") => push(&mut found, target(i + 2).0),
            Some("truncate") if i == 0 => {
                let mut j = i + 1 + usize::from(word(&t, i + 1) == Some("table"));
                loop {
                    let (name, next) = target(j);
                    push(&mut found, name);
                    if !punct(&t, next, ',') {
                        break;
                    }
                    j = next + 1;
                }
            }
            Some("copy") if i == 0 => {
                let (name, mut next) = target(1);
                if punct(&t, next, '(') {
                    next = after_parens(&t, next);
                }
                if name.is_some() && word(&t, next) == Some("from") {
                    push(&mut found, name);
                }
            }
            _ => {}
        }
        i += 1;
    }
    match first {
        "insert" | "update" | "delete" | "merge" | "truncate" | "copy" if !found.is_empty() => {
            return Writes::Tables(found)
        }
        "copy" => return Writes::None,
        "create" => {
            // A new table holds nothing cached; other objects (views, rules, policies,
            // functions, triggers) can change what existing queries return.
            let mut j = 1;
            while matches!(word(&t, j), Some("temp" | "temporary" | "unlogged" | "global" | "local" | "unique")) {
                j += 1;
            }
            return match word(&t, j) {
                Some("table" | "index" | "sequence") => Writes::None,
                _ => Writes::Any,
            };
        }
        "alter" | "drop" if word(&t, 1) == Some("table") => {
            let mut j = 2;
            if word(&t, j) == Some("if") {
                j += 2;
            }
            let (name, mut next) = target(j);
            push(&mut found, name);
            while first == "drop" && punct(&t, next, ',') {
                let (n, after) = target(next + 1);
                push(&mut found, n);
                next = after;
            }
            return if found.is_empty() { Writes::Any } else { Writes::Tables(found) };
        }
        _ => {}
    }
    if !found.is_empty() {
        return Writes::Tables(found);
    }
    if first == "(" || NO_WRITE_WORDS.contains(&first) {
        return Writes::None;
    }
    Writes::Any
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(sql: &str) -> ReadFacts {
        read_facts(sql, &Functions::new(&["my_pure".into()]))
    }

    fn refusal(sql: &str) -> Option<Refusal> {
        facts(sql).refusal
    }

    #[test]
    fn plain_reads_are_cacheable_with_their_tables() {
        let f = facts("SELECT a.id, count(*) FROM public.accounts a JOIN Branches b ON a.bid = b.bid GROUP BY 1");
        assert_eq!(f, ReadFacts { refusal: None, tables: vec!["accounts".into(), "branches".into()] });
        let f = facts("/* pgweir: cache ttl=30s */ select * from \"Mixed\" where x = $1");
        assert_eq!(f.tables, vec!["Mixed".to_string()]);
        assert_eq!(refusal("SELECT lower(name), sum(x)::numeric(10,2), coalesce(a, 0) FROM t"), None);
        assert_eq!(refusal("SELECT * FROM generate_series(1, 3) AS g(i)"), None);
        assert_eq!(refusal("SELECT to_char(ts, 'YYYY') FROM t WHERE ts > '2020-01-01'"), None);
        assert_eq!(refusal("SELECT my_pure(x) FROM t"), None);
        assert_eq!(refusal("WITH x(a) AS (SELECT 1) SELECT a FROM x"), None);
        assert_eq!(refusal("SELECT 1"), None);
    }

    #[test]
    fn refusals_name_their_reason() {
        let cases = [
            ("SELECT now()", Refusal::VolatileFunction),
            ("SELECT random() FROM t", Refusal::VolatileFunction),
            ("SELECT nextval('s')", Refusal::VolatileFunction),
            ("SELECT current_user", Refusal::VolatileFunction),
            ("SELECT * FROM t WHERE d > CURRENT_DATE", Refusal::VolatileFunction),
            ("SELECT 'now'::timestamptz", Refusal::VolatileFunction),
            ("SELECT clock_timestamp()", Refusal::VolatileFunction),
            ("SELECT pg_sleep(1)", Refusal::VolatileFunction),
            ("SELECT user_defined(x) FROM t", Refusal::UnknownFunction),
            ("SELECT * FROM t FOR UPDATE", Refusal::LockingRead),
            ("SELECT * FROM t FOR NO KEY UPDATE", Refusal::LockingRead),
            ("SELECT * FROM pg_stat_activity", Refusal::SystemTable),
            ("SELECT * FROM pg_catalog.pg_class", Refusal::SystemTable),
            ("SELECT * FROM information_schema.tables", Refusal::SystemTable),
            ("SELECT * FROM pg_temp.scratch", Refusal::TempTable),
            ("SELECT 1; SELECT 2", Refusal::MultiStatement),
            ("INSERT INTO t VALUES (1)", Refusal::Write),
            ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", Refusal::Write),
            ("SELECT * INTO copy FROM t", Refusal::Write),
            ("SET x = 1", Refusal::Write),
            ("SELEC oops", Refusal::Unparseable),
        ];
        for (sql, want) in cases {
            assert_eq!(refusal(sql), Some(want), "{sql}");
        }
    }

    #[test]
    fn write_targets() {
        let t = |v: &[&str]| Writes::Tables(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(writes("INSERT INTO public.orders (id) VALUES (1)"), t(&["orders"]));
        assert_eq!(writes("update ONLY Items set x = 1 where id = 2"), t(&["items"]));
        assert_eq!(writes("DELETE FROM \"Cart\" USING other WHERE true"), t(&["Cart"]));
        assert_eq!(writes("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE"), t(&["t"]));
        assert_eq!(writes("TRUNCATE TABLE a, b.c"), t(&["a", "c"]));
        assert_eq!(writes("COPY t (a, b) FROM STDIN"), t(&["t"]));
        assert_eq!(writes("COPY t TO STDOUT"), Writes::None);
        assert_eq!(writes("COPY (SELECT 1) TO STDOUT"), Writes::None);
        assert_eq!(writes("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d"), t(&["t"]));
        assert_eq!(writes("WITH x AS (SELECT 1) UPDATE t SET a = 1"), t(&["t"]));
        assert_eq!(writes("SELECT * FROM t FOR UPDATE"), Writes::None);
        assert_eq!(writes("ALTER TABLE IF EXISTS t ENABLE ROW LEVEL SECURITY"), t(&["t"]));
        assert_eq!(writes("DROP TABLE a, b"), t(&["a", "b"]));
        assert_eq!(writes("CREATE TABLE n (id int)"), Writes::None);
        assert_eq!(writes("CREATE POLICY p ON t USING (true)"), Writes::Any);
        assert_eq!(writes("CALL refresh_all()"), Writes::Any);
        assert_eq!(writes("DO $$ BEGIN DELETE FROM t; END $$"), Writes::Any);
        assert_eq!(writes("EXECUTE ins(1)"), Writes::Any);
        assert_eq!(writes("SELECT 1"), Writes::None);
        assert_eq!(writes("BEGIN; UPDATE a SET x = 1; COMMIT"), t(&["a"]));
        assert_eq!(writes("SET search_path = a"), Writes::None);
        assert_eq!(writes("EXPLAIN ANALYZE UPDATE t SET x = 1"), t(&["t"]));
    }

    #[test]
    fn merge_of_writes() {
        let mut w = Writes::None;
        w.merge(&Writes::Tables(vec!["a".into()]));
        w.merge(&Writes::Tables(vec!["a".into(), "b".into()]));
        assert_eq!(w, Writes::Tables(vec!["a".into(), "b".into()]));
        w.merge(&Writes::Any);
        assert_eq!(w, Writes::Any);
    }
}
