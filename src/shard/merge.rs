//! How the results of a read sent to several shards become one result. A plain read is
//! concatenated as it streams, with LIMIT/OFFSET applied after the merge (each shard is asked
//! for LIMIT + OFFSET rows and no OFFSET). Everything else (ORDER BY, count/sum/min/max/avg,
//! GROUP BY) is finished by PostgreSQL itself: each shard computes partial results (AVG becomes
//! SUM and COUNT), and one server runs a final query over them (`VALUES` of the partial rows,
//! bound as parameters of their own types), so collation order, numeric scale and overflow
//! rules are PostgreSQL's, byte for byte. With a LIMIT the shards return at most LIMIT + OFFSET
//! rows each, which bounds what is held; aggregates hold one partial row per group and shard.
//! What cannot be merged correctly (DISTINCT, HAVING, window functions, other aggregates,
//! set operations) is refused with the reason. Pure: no I/O.

use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, LimitClause, OrderByKind, OrderBySort,
    Query, SelectItem, SetExpr, Statement, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::route::RouteError;

/// Most parameters one final query may bind (the protocol's limit is 65535).
pub const MAX_FINAL_PARAMS: usize = 65_535;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Each shard's rows in turn; `skip` rows dropped and at most `take` kept after the merge.
    Concat {
        shard_sql: String,
        skip: u64,
        take: Option<u64>,
    },
    Final(Final),
}

/// One output column of the final query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Out {
    /// A partial column as it is (a plain or GROUP BY column).
    Column(usize),
    Count(usize),
    Sum(usize),
    Min(usize),
    Max(usize),
    Avg {
        sum: usize,
        count: usize,
    },
}

/// A read finished by a query over the shards' partial rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Final {
    /// What each shard runs (results in text format).
    pub shard_sql: String,
    /// Output columns with their names; None: every partial column (`SELECT *`).
    pub(super) outs: Option<Vec<(Out, String)>>,
    /// Partial columns to group by.
    pub(super) group: Vec<usize>,
    pub(super) grouped: bool,
    /// ORDER BY: 1-based output position (or a name to find among the columns of `SELECT *`),
    /// and the direction.
    pub(super) order: Vec<(OrderKey, Dir)>,
    pub(super) limit: Option<u64>,
    pub(super) offset: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum OrderKey {
    Position(usize),
    Name(String),
}

/// One ORDER BY key's direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Dir {
    pub(super) desc: bool,
    pub(super) nulls_first: Option<bool>,
    /// `USING op`: only PostgreSQL can apply it.
    pub(super) using: Option<String>,
}

impl Dir {
    pub(super) fn sql(&self) -> String {
        let mut d = match &self.using {
            Some(op) => format!("USING {op}"),
            None if self.desc => "DESC".to_string(),
            None => "ASC".to_string(),
        };
        match self.nulls_first {
            Some(true) => d.push_str(" NULLS FIRST"),
            Some(false) => d.push_str(" NULLS LAST"),
            None => {}
        }
        d
    }
}

pub(super) fn unsupported(what: &str) -> RouteError {
    RouteError::Unsupported(format!("{what} cannot be merged across shards"))
}

/// The merge plan of a read that runs on several shards.
pub fn plan(sql: &str) -> Result<Plan, RouteError> {
    let mut statements =
        Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| RouteError::Unsupported(e.to_string()))?;
    let Some(Statement::Query(q)) = statements.pop().filter(|_| statements.is_empty()) else {
        return Err(unsupported("a statement other than one SELECT"));
    };
    let mut q = *q;
    if q.fetch.is_some() {
        return Err(unsupported("FETCH FIRST"));
    }
    let (limit, offset) = limits(&q)?;
    let SetExpr::Select(select) = q.body.as_mut() else {
        return Err(unsupported("UNION, INTERSECT, EXCEPT or VALUES"));
    };
    if select.distinct.is_some() {
        return Err(unsupported("SELECT DISTINCT"));
    }
    if select.having.is_some() {
        return Err(unsupported("HAVING"));
    }
    let group_exprs = match &select.group_by {
        GroupByExpr::Expressions(e, m) if m.is_empty() => e.clone(),
        _ => return Err(unsupported("GROUP BY ALL, ROLLUP, CUBE or GROUPING SETS")),
    };
    // Output items: (expression or None for a wildcard, name, aggregate kind).
    let mut items: Vec<(Option<Expr>, String, Option<Agg>)> = Vec::new();
    for item in &select.projection {
        let (e, alias) = match item {
            SelectItem::UnnamedExpr(e) => (e, None),
            SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias.value.clone())),
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                items.push((None, String::new(), None));
                continue;
            }
            _ => return Err(unsupported("this select list")),
        };
        if has_window(e) {
            return Err(unsupported("a window function"));
        }
        let agg = aggregate(e)?;
        if agg.is_none() && contains_aggregate(e) {
            return Err(unsupported(&format!("an expression over an aggregate ({e})")));
        }
        items.push((Some(e.clone()), alias.unwrap_or_else(|| default_name(e)), agg));
    }
    let wildcard = items.iter().any(|i| i.0.is_none());
    let aggregates = items.iter().any(|i| i.2.is_some());
    let order_by = q.order_by.take();
    let mut order = Vec::new();
    if let Some(ob) = &order_by {
        let OrderByKind::Expressions(list) = &ob.kind else { return Err(unsupported("ORDER BY ALL")) };
        for o in list {
            let key = order_key(&o.expr, &items, wildcard)?;
            let dir = Dir {
                desc: matches!(o.options.sort, Some(OrderBySort::Desc)),
                nulls_first: o.options.nulls_first,
                using: match &o.options.sort {
                    Some(OrderBySort::Using(op)) => Some(op.to_string()),
                    _ => None,
                },
            };
            order.push((key, dir));
        }
    }
    if !aggregates && group_exprs.is_empty() {
        if order.is_empty() {
            // Plain concatenation: each shard sends LIMIT + OFFSET rows at most.
            set_limits(&mut q, limit.map(|l| l + offset), 0);
            return Ok(Plan::Concat { shard_sql: q.to_string(), skip: offset, take: limit });
        }
        q.order_by = order_by;
        set_limits(&mut q, limit.map(|l| l + offset), 0);
        return Ok(Plan::Final(Final {
            shard_sql: q.to_string(),
            outs: None,
            group: Vec::new(),
            grouped: false,
            order,
            limit,
            offset,
        }));
    }
    if wildcard {
        return Err(unsupported("SELECT * with aggregates or GROUP BY"));
    }
    // Partial columns: every output item (AVG as SUM and COUNT), then GROUP BY expressions the
    // select list does not show.
    let SetExpr::Select(select) = q.body.as_mut() else { return Err(unsupported("this query")) };
    let mut partial: Vec<SelectItem> = Vec::new();
    let mut outs = Vec::new();
    let mut group = Vec::new();
    for (e, name, agg) in &items {
        let e = e.clone().unwrap_or(Expr::Value(Value::Null.into()));
        let at = partial.len();
        let out = match agg {
            None => Out::Column(at),
            Some(Agg::Count) => Out::Count(at),
            Some(Agg::Sum) => Out::Sum(at),
            Some(Agg::Min) => Out::Min(at),
            Some(Agg::Max) => Out::Max(at),
            Some(Agg::Avg) => Out::Avg { sum: at, count: at + 1 },
        };
        match agg {
            Some(Agg::Avg) => {
                let arg = single_arg(&e).ok_or_else(|| unsupported("avg() without one argument"))?;
                partial.push(SelectItem::UnnamedExpr(call("sum", arg.clone())));
                partial.push(SelectItem::UnnamedExpr(call("count", arg)));
            }
            _ => partial.push(SelectItem::UnnamedExpr(e.clone())),
        }
        outs.push((out, name.clone()));
    }
    let mut group_list = Vec::new();
    for g in &group_exprs {
        // GROUP BY 2 names an output position; the shard query gets the expression itself.
        let expr = match g {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => {
                    let i: usize = n.parse().map_err(|_| unsupported("this GROUP BY"))?;
                    items
                        .get(i.wrapping_sub(1))
                        .and_then(|it| it.0.clone())
                        .ok_or_else(|| unsupported("this GROUP BY"))?
                }
                _ => g.clone(),
            },
            _ => g.clone(),
        };
        let shown = items.iter().position(|(e, name, agg)| {
            agg.is_none() && (e.as_ref() == Some(&expr) || matches!(&expr, Expr::Identifier(i) if i.value == *name))
        });
        let at = match shown.and_then(|i| match outs[i].0 {
            Out::Column(c) => Some(c),
            _ => None,
        }) {
            Some(c) => c,
            None => {
                partial.push(SelectItem::UnnamedExpr(expr.clone()));
                partial.len() - 1
            }
        };
        group.push(at);
        group_list.push(expr);
    }
    for (i, (e, _, agg)) in items.iter().enumerate() {
        if agg.is_none()
            && !group.contains(&match outs[i].0 {
                Out::Column(c) => c,
                _ => usize::MAX,
            })
        {
            let e = e.as_ref().map(|e| e.to_string()).unwrap_or_default();
            return Err(RouteError::Unsupported(format!(
                "column \"{e}\" must appear in the GROUP BY clause or be used in an aggregate function"
            )));
        }
    }
    select.projection = partial;
    select.group_by = GroupByExpr::Expressions(group_list, Vec::new());
    set_limits(&mut q, None, 0);
    Ok(Plan::Final(Final {
        shard_sql: q.to_string(),
        outs: Some(outs),
        group,
        grouped: !group_exprs.is_empty(),
        order,
        limit,
        offset,
    }))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Agg {
    Count,
    Sum,
    Min,
    Max,
    Avg,
}

/// A top-level call of an aggregate the proxy can combine; an error for one it cannot.
fn aggregate(e: &Expr) -> Result<Option<Agg>, RouteError> {
    let Expr::Function(f) = e else { return Ok(None) };
    let name = f.name.to_string().to_ascii_lowercase();
    let name = name.strip_prefix("pg_catalog.").unwrap_or(&name);
    let agg = match name {
        "count" => Agg::Count,
        "sum" => Agg::Sum,
        "min" => Agg::Min,
        "max" => Agg::Max,
        "avg" => Agg::Avg,
        other if KNOWN_AGGREGATES.contains(&other) => return Err(unsupported(&format!("aggregate {other}()"))),
        _ => return Ok(None),
    };
    if f.over.is_some() {
        return Err(unsupported("a window function"));
    }
    if f.filter.is_some() || !f.within_group.is_empty() {
        return Err(unsupported(&format!("{name}() with FILTER or WITHIN GROUP")));
    }
    if let FunctionArguments::List(l) = &f.args {
        if l.duplicate_treatment == Some(sqlparser::ast::DuplicateTreatment::Distinct) || !l.clauses.is_empty() {
            return Err(unsupported(&format!("{name}(DISTINCT ...) or an ordered aggregate")));
        }
    }
    Ok(Some(agg))
}

/// Aggregates that would give wrong answers if concatenated.
const KNOWN_AGGREGATES: &[&str] = &[
    "array_agg",
    "string_agg",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "bit_xor",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "xmlagg",
    "range_agg",
    "range_intersect_agg",
];

fn contains_aggregate(e: &Expr) -> bool {
    let mut found = false;
    let _ = sqlparser::ast::visit_expressions(e, |x: &Expr| {
        if !std::ptr::eq(x, e) && matches!(aggregate(x), Ok(Some(_)) | Err(_)) {
            found = true;
            return std::ops::ControlFlow::Break(());
        }
        std::ops::ControlFlow::Continue(())
    });
    found
}

fn has_window(e: &Expr) -> bool {
    let mut found = false;
    let _ = sqlparser::ast::visit_expressions(e, |x: &Expr| {
        if matches!(x, Expr::Function(f) if f.over.is_some()) {
            found = true;
            return std::ops::ControlFlow::Break(());
        }
        std::ops::ControlFlow::Continue(())
    });
    found
}

fn single_arg(e: &Expr) -> Option<Expr> {
    let Expr::Function(f) = e else { return None };
    let FunctionArguments::List(l) = &f.args else { return None };
    match l.args.as_slice() {
        [FunctionArg::Unnamed(FunctionArgExpr::Expr(a))] => Some(a.clone()),
        _ => None,
    }
}

fn call(name: &str, arg: Expr) -> Expr {
    let sql = format!("{name}({arg})");
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&sql)
        .and_then(|mut p| p.parse_expr())
        .unwrap_or(Expr::Value(Value::Null.into()))
}

/// The column name PostgreSQL gives an unaliased expression.
fn default_name(e: &Expr) -> String {
    match e {
        Expr::Identifier(i) => fold(i),
        Expr::CompoundIdentifier(parts) => parts.last().map(fold).unwrap_or_default(),
        Expr::Function(f) => f.name.0.last().and_then(|p| p.as_ident()).map(fold).unwrap_or_default(),
        Expr::Cast { expr, .. } | Expr::Nested(expr) => default_name(expr),
        _ => "?column?".into(),
    }
}

fn fold(i: &Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_ascii_lowercase()
    }
}

fn order_key(e: &Expr, items: &[(Option<Expr>, String, Option<Agg>)], wildcard: bool) -> Result<OrderKey, RouteError> {
    if let Expr::Value(v) = e {
        if let Value::Number(n, _) = &v.value {
            return n.parse().map(OrderKey::Position).map_err(|_| unsupported("this ORDER BY"));
        }
    }
    if let Some(i) = items.iter().position(|(x, _, _)| x.as_ref() == Some(e)) {
        return Ok(OrderKey::Position(i + 1));
    }
    let name = match e {
        Expr::Identifier(i) => Some(fold(i)),
        Expr::CompoundIdentifier(p) => p.last().map(fold),
        _ => None,
    };
    if let Some(name) = name {
        if let Some(i) = items.iter().position(|(x, n, _)| x.is_some() && *n == name) {
            return Ok(OrderKey::Position(i + 1));
        }
        if wildcard {
            return Ok(OrderKey::Name(name));
        }
    }
    Err(RouteError::Unsupported(format!(
        "ORDER BY {e} across shards: order by a column of the select list (by name or position)"
    )))
}

/// LIMIT and OFFSET as numbers (None: no LIMIT).
fn limits(q: &Query) -> Result<(Option<u64>, u64), RouteError> {
    let num = |e: &Expr| -> Result<Option<u64>, RouteError> {
        match e {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => n.parse().map(Some).map_err(|_| unsupported("this LIMIT")),
                Value::Null => Ok(None),
                _ => Err(unsupported("a LIMIT or OFFSET that is not a number")),
            },
            _ => Err(unsupported("a LIMIT or OFFSET that is not a number")),
        }
    };
    match &q.limit_clause {
        None => Ok((None, 0)),
        Some(LimitClause::LimitOffset { limit, offset, limit_by }) if limit_by.is_empty() => {
            let l = match limit {
                Some(e) => num(e)?,
                None => None,
            };
            let o = match offset {
                Some(o) => num(&o.value)?.unwrap_or(0),
                None => 0,
            };
            Ok((l, o))
        }
        Some(_) => Err(unsupported("this LIMIT")),
    }
}

fn set_limits(q: &mut Query, limit: Option<u64>, offset: u64) {
    let lit = |n: u64| Expr::Value(Value::Number(n.to_string(), false).into());
    q.limit_clause = match (limit, offset) {
        (None, 0) => None,
        (l, o) => Some(LimitClause::LimitOffset {
            limit: l.map(lit),
            offset: (o > 0).then(|| sqlparser::ast::Offset { value: lit(o), rows: sqlparser::ast::OffsetRows::None }),
            limit_by: Vec::new(),
        }),
    };
}

#[cfg(test)]
#[path = "merge_tests.rs"]
mod tests;
