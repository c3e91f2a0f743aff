//! Where a statement runs in a [`Layout`]: read from its tables (sqlparser), its key predicates
//! (`key = v`, `key IN (...)`, `OR`s of those, `AND`ed with anything), the key column of each
//! INSERT row, and the hints `/* pgweir: shard=N */`, `/* pgweir: key=V */` and the session's
//! `pgweir.shard_key`. Values may be literals (quoted or not, cast or not) or `$n` parameters
//! of the Bind being routed. Pure: no I/O.
//!
//! A read of a sharded table without a key scatters; a write without one is refused (never a
//! silent broadcast); a statement joining tables of two clusters is refused; a multi-row
//! INSERT whose rows belong to several shards is split into one INSERT per shard, cut out of
//! the original text so every literal reaches the server as the client wrote it.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_relations, BinaryOperator, Expr, FromTable, ObjectName, SetExpr, Statement, TableFactor, TableObject,
    TableWithJoins, UnaryOperator, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use thiserror::Error;

pub use super::params::Params;
use super::{KeyValue, Layout, Placement};
use crate::wire::{PgError, SqlState};

/// Where a request runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Touches no table (SET, SHOW, SELECT 1, COMMIT) or only reference tables: any target
    /// will do (the one in use, else the default).
    Any,
    One(usize),
    /// A read of every one of these shards, merged.
    Scatter(Vec<usize>),
    /// A write whose rows live on several shards: the statement each one runs.
    Split(Vec<(usize, String)>),
    /// `COPY sharded_table FROM STDIN`: rows split by key as they stream.
    CopyIn(super::copy::CopyPlan),
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum RouteError {
    #[error(
        "pgweir: {what} on sharded table \"{table}\" has no shard key: give {key} = value, or /* pgweir: shard=N */"
    )]
    NoKey { table: String, key: String, what: &'static str },
    #[error(
        "pgweir: this statement uses tables of two clusters (\"{0}\" and \"{1}\"); a query can only join tables of one"
    )]
    CrossCluster(String, String),
    #[error("pgweir: {0}")]
    BadKey(String),
    #[error("pgweir: bad routing hint: {0}")]
    BadHint(String),
    #[error("pgweir: cannot route this statement on a sharded database: {0}")]
    Unsupported(String),
}

impl RouteError {
    pub fn sqlstate(&self) -> SqlState {
        match self {
            RouteError::BadKey(_) => SqlState("22P02"),
            RouteError::BadHint(_) => SqlState("22023"),
            _ => SqlState::FEATURE_NOT_SUPPORTED,
        }
    }

    pub fn to_pg(&self) -> PgError {
        PgError::error(self.sqlstate(), self.to_string())
    }
}

/// What routing reads besides the statement text.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ask<'a> {
    pub params: Option<&'a Params<'a>>,
    /// `SET pgweir.shard_key`: used when the statement gives no key of its own.
    pub session_key: Option<&'a str>,
}

/// A constant a decision was computed from (for `RouteCache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Used {
    /// A literal starting at this byte offset, the key of sharded table `table`.
    Literal { at: usize, table: usize },
    /// Parameter `$n`, the key of sharded table `table`.
    Param { n: usize, table: usize },
    /// Something a cached plan cannot redo (a negated literal, a hint, the session key).
    Other,
}

/// Where `sql` (one Query string, or a Parse's text) runs.
pub fn route(layout: &Layout, sql: &str, ask: Ask<'_>) -> Result<Decision, RouteError> {
    route_explained(layout, sql, ask).0
}

/// [`route`], and the constants the decision was computed from.
pub fn route_explained(layout: &Layout, sql: &str, ask: Ask<'_>) -> (Result<Decision, RouteError>, Vec<Used>) {
    let used = std::cell::RefCell::new(Vec::new());
    let d = route_with(layout, sql, ask, &used);
    (d, used.into_inner())
}

fn route_with(
    layout: &Layout,
    sql: &str,
    ask: Ask<'_>,
    used: &std::cell::RefCell<Vec<Used>>,
) -> Result<Decision, RouteError> {
    let mut hint_key = None;
    for item in crate::route::classify::pgweir_items(sql) {
        let (k, v) = item.split_once('=').unwrap_or((item, ""));
        if k.eq_ignore_ascii_case("shard") {
            let n: usize = v.parse().map_err(|_| RouteError::BadHint(format!("shard={v} is not a shard number")))?;
            if n >= layout.shards {
                return Err(RouteError::BadHint(format!("shard={n}, but there are {} shards", layout.shards)));
            }
            used.borrow_mut().push(Used::Other);
            return Ok(Decision::One(n));
        }
        if k.eq_ignore_ascii_case("key") {
            hint_key = Some(v.trim_matches('\''));
            used.borrow_mut().push(Used::Other);
        }
    }
    let key = hint_key.or(ask.session_key);
    let statements = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(s) => s,
        Err(e) => {
            used.borrow_mut().push(Used::Other);
            return unparsed(layout, sql, key, &e.to_string());
        }
    };
    let mut acc: Option<Decision> = None;
    for st in &statements {
        let d = Router { layout, sql, params: ask.params, key, used }.statement(st)?;
        acc = Some(match (acc, d) {
            (None, d) | (Some(Decision::Any), d) => d,
            (Some(a), Decision::Any) => a,
            (Some(a), d) if a == d => a,
            _ => {
                return Err(RouteError::Unsupported(
                    "the statements of this query run on different shards or clusters: send them one at a time".into(),
                ))
            }
        });
    }
    Ok(acc.unwrap_or(Decision::Any))
}

/// Statements sqlparser cannot read: fine if they name no sharded or federated table.
fn unparsed(layout: &Layout, sql: &str, key: Option<&str>, why: &str) -> Result<Decision, RouteError> {
    let toks = crate::route::lexer::tokenize(sql);
    let mentioned = toks.iter().find_map(|t| {
        let w = match &t.token {
            crate::route::lexer::Token::Word(w) | crate::route::lexer::Token::QuotedIdent(w) => w,
            _ => return None,
        };
        match layout.place(None, w) {
            Placement::On(t) if Some(t) != layout.home => Some(Placement::On(t)),
            p @ Placement::Sharded(_) => Some(p),
            _ => None,
        }
    });
    match (mentioned, key) {
        (None, _) => Ok(Decision::Any),
        (Some(Placement::On(t)), _) => Ok(Decision::One(t)),
        (Some(Placement::Sharded(i)), Some(k)) => {
            let t = &layout.tables[i];
            let v = t.key_type.from_text(k).map_err(RouteError::BadKey)?;
            Ok(Decision::One(t.shard_of(Some(&v), layout.shards).map_err(RouteError::BadKey)?))
        }
        _ => Err(RouteError::Unsupported(format!(
            "pgweir could not parse it ({why}); add /* pgweir: shard=N */ or /* pgweir: key=V */"
        ))),
    }
}

/// A table reference in a statement's FROM: which sharded table, by which name it is visible.
struct Ref {
    table: usize,
    visible: String,
}

struct Router<'a> {
    layout: &'a Layout,
    sql: &'a str,
    params: Option<&'a Params<'a>>,
    key: Option<&'a str>,
    used: &'a std::cell::RefCell<Vec<Used>>,
}

fn fold(i: &sqlparser::ast::Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_ascii_lowercase()
    }
}

fn split_name(name: &ObjectName) -> (Option<String>, String) {
    let parts: Vec<String> = name.0.iter().filter_map(|p| p.as_ident()).map(fold).collect();
    let table = parts.last().cloned().unwrap_or_default();
    let schema = parts.len().checked_sub(2).map(|i| parts[i].clone());
    (schema, table)
}

type Shards = Option<BTreeSet<usize>>;

impl Router<'_> {
    fn statement(&self, st: &Statement) -> Result<Decision, RouteError> {
        let layout = self.layout;
        let mut fixed = BTreeSet::new();
        let mut sharded = BTreeSet::new();
        let mut everywhere = false;
        let copied = match st {
            Statement::Copy { source: sqlparser::ast::CopySource::Table { table_name, .. }, .. } => Some(table_name),
            _ => None,
        };
        let mut note = |rel: &ObjectName| {
            let (schema, table) = split_name(rel);
            match layout.place(schema.as_deref(), &table) {
                Placement::Sharded(i) => {
                    sharded.insert(i);
                }
                Placement::On(t) => {
                    fixed.insert(t);
                }
                Placement::Everywhere => everywhere = true,
            }
        };
        let _ = visit_relations(st, |rel: &ObjectName| {
            note(rel);
            ControlFlow::<()>::Continue(())
        });
        // COPY's table is not a relation to the visitor.
        if let Some(name) = copied {
            note(name);
        }
        let name = |t: usize| layout.targets[t].clone();
        if fixed.len() > 1 {
            let mut it = fixed.iter();
            let (a, b) = (*it.next().unwrap_or(&0), *it.next().unwrap_or(&0));
            return Err(RouteError::CrossCluster(name(a), name(b)));
        }
        let fixed = fixed.into_iter().next();
        let dml = matches!(st, Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_));
        if sharded.is_empty() {
            if everywhere && dml && fixed.is_none() {
                return Err(RouteError::Unsupported(
                    "it writes to a table no federation rule places (such tables are taken to exist on every shard, and writes to them would have to reach all): map it in [databases.NAME.federation] or run it on each shard".into(),
                ));
            }
            return Ok(fixed.map_or(Decision::Any, Decision::One));
        }
        if let Some(t) = fixed.filter(|&t| t >= layout.shards) {
            let s = &layout.tables[*sharded.iter().next().unwrap_or(&0)];
            return Err(RouteError::CrossCluster(format!("{} (sharded)", s.name), name(t)));
        }
        let first = *sharded.iter().next().unwrap_or(&0);
        let mut shards: Shards = match self.key {
            Some(k) => {
                self.used.borrow_mut().push(Used::Other);
                Some(self.one_key(first, k)?)
            }
            None => None,
        };
        let mut split = None;
        let what = match st {
            Statement::Query(q) => {
                if shards.is_none() {
                    shards = self.query_shards(q)?;
                }
                "a read"
            }
            Statement::Insert(ins) => {
                if shards.is_none() {
                    let (s, rows) = self.insert_shards(ins)?;
                    shards = Some(s);
                    split = rows;
                }
                "an INSERT"
            }
            Statement::Update(u) => {
                let refs = self.refs(std::slice::from_ref(&u.table));
                for a in &u.assignments {
                    if let sqlparser::ast::AssignmentTarget::ColumnName(c) = &a.target {
                        let (_, col) = split_name(c);
                        if refs.iter().any(|r| layout.tables[r.table].key == col) {
                            return Err(RouteError::Unsupported(format!(
                                "it changes the shard key \"{col}\" (rows cannot move between shards): delete and insert instead"
                            )));
                        }
                    }
                }
                if shards.is_none() {
                    shards = self.where_shards(&refs, u.selection.as_ref())?;
                }
                "an UPDATE"
            }
            Statement::Delete(d) => {
                let from = match &d.from {
                    FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f,
                };
                if shards.is_none() {
                    shards = self.where_shards(&self.refs(from), d.selection.as_ref())?;
                }
                "a DELETE"
            }
            Statement::Copy { .. } if self.key.is_none() => match super::copy::plan(layout, st)? {
                Some(p) => return Ok(Decision::CopyIn(p)),
                None => {
                    return Err(RouteError::Unsupported(format!(
                        "COPY {} TO spans shards: copy from each shard, or select with the key",
                        layout.tables[first].name
                    )))
                }
            },
            _ => {
                return Err(RouteError::Unsupported(format!(
                    "it is not a SELECT, INSERT, UPDATE or DELETE and names sharded table \"{}\": run it on each shard (or add /* pgweir: shard=N */)",
                    layout.tables[first].name
                )))
            }
        };
        let Some(mut set) = shards else {
            if dml {
                let t = &layout.tables[first];
                return Err(RouteError::NoKey { table: t.name.clone(), key: t.key.clone(), what });
            }
            return Ok(Decision::Scatter(match fixed {
                Some(t) => vec![t],
                None => (0..layout.shards).collect(),
            }));
        };
        if let Some(t) = fixed {
            if !set.contains(&t) && !set.is_empty() {
                return Err(RouteError::CrossCluster(name(t), name(*set.iter().next().unwrap_or(&0))));
            }
            set = BTreeSet::from([t]);
        }
        Ok(match (set.len(), split) {
            // The predicates exclude every shard: any one answers "nothing".
            (0, _) => Decision::One(0),
            (1, _) => Decision::One(*set.iter().next().unwrap_or(&0)),
            (_, Some(parts)) => Decision::Split(parts),
            (_, None) if dml => Decision::Split(set.into_iter().map(|s| (s, self.sql.to_string())).collect()),
            (_, None) => Decision::Scatter(set.into_iter().collect()),
        })
    }

    /// The shard of a key given as text (hint or session setting), for sharded table `i`.
    fn one_key(&self, i: usize, k: &str) -> Result<BTreeSet<usize>, RouteError> {
        let t = &self.layout.tables[i];
        let v = t.key_type.from_text(k).map_err(RouteError::BadKey)?;
        Ok(BTreeSet::from([t.shard_of(Some(&v), self.layout.shards).map_err(RouteError::BadKey)?]))
    }

    /// Sharded tables in a FROM list, by the names they are visible under.
    fn refs(&self, from: &[TableWithJoins]) -> Vec<Ref> {
        let mut out = Vec::new();
        let mut add = |f: &TableFactor| {
            if let TableFactor::Table { name, alias, .. } = f {
                let (schema, table) = split_name(name);
                if let Placement::Sharded(i) = self.layout.place(schema.as_deref(), &table) {
                    out.push(Ref { table: i, visible: alias.as_ref().map(|a| fold(&a.name)).unwrap_or(table) });
                }
            }
        };
        for twj in from {
            add(&twj.relation);
            for j in &twj.joins {
                add(&j.relation);
            }
        }
        out
    }

    fn query_shards(&self, q: &sqlparser::ast::Query) -> Result<Shards, RouteError> {
        match q.body.as_ref() {
            SetExpr::Select(s) => self.where_shards(&self.refs(&s.from), s.selection.as_ref()),
            SetExpr::Query(inner) => self.query_shards(inner),
            _ => Ok(None),
        }
    }

    fn where_shards(&self, refs: &[Ref], selection: Option<&Expr>) -> Result<Shards, RouteError> {
        match selection {
            Some(e) if !refs.is_empty() => self.expr_shards(refs, e),
            _ => Ok(None),
        }
    }

    /// The shards rows matching `e` can be on (None: any).
    fn expr_shards(&self, refs: &[Ref], e: &Expr) -> Result<Shards, RouteError> {
        Ok(match e {
            Expr::Nested(inner) => self.expr_shards(refs, inner)?,
            Expr::BinaryOp { left, op: BinaryOperator::And, right } => {
                match (self.expr_shards(refs, left)?, self.expr_shards(refs, right)?) {
                    (Some(a), Some(b)) => Some(a.intersection(&b).copied().collect()),
                    (a, None) => a,
                    (None, b) => b,
                }
            }
            Expr::BinaryOp { left, op: BinaryOperator::Or, right } => {
                match (self.expr_shards(refs, left)?, self.expr_shards(refs, right)?) {
                    (Some(a), Some(b)) => Some(a.union(&b).copied().collect()),
                    _ => None,
                }
            }
            Expr::BinaryOp { left, op: BinaryOperator::Eq, right } => {
                let pair = match (self.key_column(refs, left), self.key_column(refs, right)) {
                    (Some(t), None) => Some((t, right)),
                    (None, Some(t)) => Some((t, left)),
                    _ => None,
                };
                match pair {
                    Some((t, v)) => match self.constant(t, v)? {
                        Some(k) => Some(BTreeSet::from([self.shard(t, k.as_ref())?])),
                        None => None,
                    },
                    None => None,
                }
            }
            Expr::InList { expr, list, negated: false } => match self.key_column(refs, expr) {
                Some(t) => {
                    let mut set = BTreeSet::new();
                    for v in list {
                        match self.constant(t, v)? {
                            Some(k) => set.insert(self.shard(t, k.as_ref())?),
                            None => return Ok(None),
                        };
                    }
                    Some(set)
                }
                None => None,
            },
            _ => None,
        })
    }

    fn literal(&self, at: sqlparser::tokenizer::Location, table: usize) {
        let u = offset(self.sql, at).map_or(Used::Other, |at| Used::Literal { at, table });
        self.used.borrow_mut().push(u);
    }

    fn shard(&self, t: usize, k: Option<&KeyValue>) -> Result<usize, RouteError> {
        self.layout.tables[t].shard_of(k, self.layout.shards).map_err(RouteError::BadKey)
    }

    /// Is `e` the key column of one of `refs`? (Unqualified only when one sharded table is in scope.)
    fn key_column(&self, refs: &[Ref], e: &Expr) -> Option<usize> {
        let tables = &self.layout.tables;
        match e {
            Expr::Nested(inner) => self.key_column(refs, inner),
            Expr::Identifier(i) if refs.len() == 1 && fold(i) == tables[refs[0].table].key => Some(refs[0].table),
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                let col = fold(&parts[parts.len() - 1]);
                let q = fold(&parts[parts.len() - 2]);
                refs.iter().find(|r| r.visible == q && tables[r.table].key == col).map(|r| r.table)
            }
            _ => None,
        }
    }

    /// A constant key for table `t`: Some(Some(v)), Some(None) for NULL, None when `e` is not
    /// a constant (a column, a function call).
    fn constant(&self, t: usize, e: &Expr) -> Result<Option<Option<KeyValue>>, RouteError> {
        let ty = self.layout.tables[t].key_type;
        let text = |s: &str| ty.from_text(s).map(|v| Some(Some(v))).map_err(RouteError::BadKey);
        match e {
            Expr::Nested(inner) => self.constant(t, inner),
            Expr::Cast { expr, .. } => self.constant(t, expr),
            Expr::TypedString(ts) => match ts.value.value.clone().into_string() {
                Some(s) => {
                    self.literal(ts.value.span.start, t);
                    text(&s)
                }
                None => Ok(None),
            },
            Expr::UnaryOp { op: UnaryOperator::Minus, expr } => match self.constant(t, expr)? {
                Some(Some(KeyValue::Int(v))) => {
                    match v.checked_neg().inspect(|_| self.used.borrow_mut().push(Used::Other)) {
                        Some(n) => text(&n.to_string()),
                        None => Err(RouteError::BadKey(format!("-({v}) is out of range"))),
                    }
                }
                _ => Ok(None),
            },
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => {
                    self.literal(v.span.start, t);
                    text(n)
                }
                Value::Null => Ok(Some(None)),
                Value::Placeholder(p) => {
                    let n: usize = p
                        .trim_start_matches('$')
                        .parse()
                        .map_err(|_| RouteError::BadKey(format!("bad parameter {p}")))?;
                    match self.params {
                        Some(params) => {
                            self.used.borrow_mut().push(Used::Param { n, table: t });
                            Ok(Some(params.key(n, ty)?))
                        }
                        // A Parse routed without its Bind: the key is not known yet.
                        None => {
                            self.used.borrow_mut().push(Used::Other);
                            Ok(None)
                        }
                    }
                }
                other => match other.clone().into_string() {
                    Some(s) => {
                        self.literal(v.span.start, t);
                        text(&s)
                    }
                    None => Ok(None),
                },
            },
            _ => Ok(None),
        }
    }

    /// The shards an INSERT's rows go to, and when there are several (and no parameters), the
    /// INSERT for each shard.
    #[allow(clippy::type_complexity)]
    fn insert_shards(
        &self,
        ins: &sqlparser::ast::Insert,
    ) -> Result<(BTreeSet<usize>, Option<Vec<(usize, String)>>), RouteError> {
        let TableObject::TableName(name) = &ins.table else {
            return Err(RouteError::Unsupported("INSERT into a table function".into()));
        };
        let (schema, table) = split_name(name);
        let Placement::Sharded(t) = self.layout.place(schema.as_deref(), &table) else {
            return Err(RouteError::Unsupported("INSERT ... SELECT from a sharded table into another table".into()));
        };
        let key = &self.layout.tables[t].key;
        let no_key = || RouteError::NoKey { table: table.clone(), key: key.clone(), what: "an INSERT" };
        let Some(pos) = ins.columns.iter().position(|c| split_name(c).1 == *key) else {
            return Err(RouteError::Unsupported(format!(
                "an INSERT into sharded table \"{table}\" must list its columns, including the key \"{key}\""
            )));
        };
        let Some(SetExpr::Values(values)) = ins.source.as_ref().map(|q| q.body.as_ref()) else {
            return Err(no_key());
        };
        let mut per_row = Vec::with_capacity(values.rows.len());
        for row in &values.rows {
            let v = row.content.get(pos).ok_or_else(no_key)?;
            let k = self.constant(t, v)?.ok_or_else(no_key)?;
            per_row.push(self.shard(t, k.as_ref())?);
        }
        let set: BTreeSet<usize> = per_row.iter().copied().collect();
        if set.len() <= 1 {
            return Ok((set, None));
        }
        if self.params.is_some_and(|p| !p.is_empty()) {
            return Err(RouteError::Unsupported(
                "a multi-row INSERT with parameters whose rows belong to different shards: send one statement per row or per shard".into(),
            ));
        }
        let spans: Option<Vec<(usize, usize)>> = values
            .rows
            .iter()
            .map(|r| {
                let a = offset(self.sql, r.opening_token.0.span.start)?;
                let b = offset(self.sql, r.closing_token.0.span.end)?;
                Some((a, b))
            })
            .collect();
        let spans = spans
            .filter(|s| !s.is_empty())
            .ok_or_else(|| RouteError::Unsupported("INSERT rows without positions".into()))?;
        let (head, tail) = (&self.sql[..spans[0].0], &self.sql[spans[spans.len() - 1].1..]);
        let parts = set
            .iter()
            .map(|&s| {
                let rows: Vec<&str> =
                    per_row.iter().zip(&spans).filter(|(r, _)| **r == s).map(|(_, &(a, b))| &self.sql[a..b]).collect();
                (s, format!("{head}{}{tail}", rows.join(", ")))
            })
            .collect();
        Ok((set, Some(parts)))
    }
}

/// The byte offset of a sqlparser location (1-based line and character column); for an end
/// location, the offset just past that character.
fn offset(sql: &str, loc: sqlparser::tokenizer::Location) -> Option<usize> {
    let line_start = if loc.line <= 1 { 0 } else { sql.match_indices('\n').nth(loc.line as usize - 2)?.0 + 1 };
    let line = &sql[line_start..];
    let line = &line[..line.find('\n').unwrap_or(line.len())];
    let col = loc.column.checked_sub(1)? as usize;
    // One past the line's last character: the end of a token that ends the line.
    line.char_indices().map(|(i, _)| i).chain(std::iter::once(line.len())).nth(col).map(|i| line_start + i)
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
