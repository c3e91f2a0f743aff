//! What a SQL statement does to session state, as far as a multiplexing proxy must know: GUC
//! changes it can replay (`SET`, `RESET`, `set_config(..., false)`), state that ties a client to
//! its server (roles, temp objects, SQL prepared statements, LISTEN, WITH HOLD cursors, LOAD,
//! session advisory locks, currval/lastval), the resets that release it (`DISCARD`, `DEALLOCATE`,
//! `UNLISTEN`, `CLOSE`, `DROP`), and transaction control.
//!
//! Pure classification over `lexer` tokens: no I/O, no state, no parser, no allocation for
//! statements that cannot have an effect (an allocation-free pre-filter runs first). It must never
//! panic on any input. Unknown statements yield no effect; session state the proxy could not
//! replay faithfully is `Unreplayable`, never silently dropped. Effects are what a statement does
//! *if it succeeds*: the caller applies them only after the server's CommandComplete (and undoes
//! SET-family effects when the transaction or savepoint they ran in rolls back).

use super::lexer::{first_word, split_statements, tokenize, words, Spanned, Token};

/// First words of the statements [`statement_effect`] recognises (`select`/`with` aside).
const STATEMENT_WORDS: &[&str] = &[
    "set",
    "reset",
    "discard",
    "prepare",
    "deallocate",
    "listen",
    "unlisten",
    "create",
    "drop",
    "declare",
    "close",
    "load",
    "begin",
    "start",
    "commit",
    "end",
    "abort",
    "rollback",
    "savepoint",
    "release",
];

/// One session-visible effect of a statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// `SET [SESSION] name {TO|=} value`: `name` lowercased (qualified names keep the dot); `value` is
    /// the source text of the value list as written, trimmed, to replay as `SET name TO <value>`.
    Set {
        name: String,
        value: String,
    },
    /// `set_config('name', 'value', false)` with literal arguments: `name` lowercased, `value`
    /// the literal's (unquoted) value, to replay with `set_config` or a quoted `SET`.
    SetConfig {
        name: String,
        value: String,
    },
    /// `SET name TO DEFAULT`, `RESET name`, `set_config('name', NULL, false)`.
    Reset {
        name: String,
    },
    ResetAll,
    /// `SET ROLE x`, `SET SESSION AUTHORIZATION x`, `SET role = x`.
    SetRole,
    /// `RESET ROLE`, `SET ROLE NONE`, `RESET SESSION AUTHORIZATION`, `SET SESSION AUTHORIZATION DEFAULT`.
    ResetRole,
    DiscardAll,
    /// `DISCARD TEMP` / `DISCARD TEMPORARY`.
    DiscardTemp,
    /// `PREPARE name [ (types) ] AS ...` (not `PREPARE TRANSACTION`); name folded unless quoted.
    SqlPrepare {
        name: String,
    },
    /// `DEALLOCATE [PREPARE] name`.
    SqlDeallocate {
        name: String,
    },
    /// `DEALLOCATE [PREPARE] ALL`.
    SqlDeallocateAll,
    Listen {
        channel: String,
    },
    Unlisten {
        channel: String,
    },
    UnlistenAll,
    /// `CREATE [GLOBAL|LOCAL] {TEMP|TEMPORARY} {TABLE|VIEW|SEQUENCE} [IF NOT EXISTS] name`, anything
    /// created as `pg_temp.name` (tables, views, sequences, functions, procedures, types, domains),
    /// and `SELECT ... INTO TEMP [TABLE] name`.
    CreateTemp {
        name: String,
        on_commit_drop: bool,
    },
    /// `DROP {TABLE|VIEW|SEQUENCE} [IF EXISTS] name [, ...]`: the unqualified or `pg_temp.`-qualified
    /// names (names qualified with another schema cannot be temp objects and are left out).
    Drop {
        names: Vec<String>,
    },
    /// `DECLARE name ... CURSOR WITH HOLD FOR ...`.
    DeclareHold {
        name: String,
    },
    /// `CLOSE name`.
    CloseCursor {
        name: String,
    },
    /// `CLOSE ALL`.
    CloseAllCursors,
    /// `LOAD 'library'`.
    Load,
    /// `pg_advisory_lock`, `pg_advisory_lock_shared`, `pg_try_advisory_lock[_shared]` called.
    AdvisoryLock,
    /// `pg_advisory_unlock`, `pg_advisory_unlock_shared` called.
    AdvisoryUnlock,
    /// `pg_advisory_unlock_all()` called.
    AdvisoryUnlockAll,
    /// `currval(` / `lastval(` used (session-bound sequence state).
    SequenceState,
    /// Session state the proxy cannot replay: `set_config` with a non-literal name/value or an
    /// `is_local` that is not a literal boolean; `SET TIME ZONE INTERVAL ...`.
    Unreplayable,
    /// `BEGIN`, `START TRANSACTION`.
    Begin,
    /// `COMMIT`, `END` (also `AND [NO] CHAIN`), not `COMMIT PREPARED`.
    Commit,
    /// `ROLLBACK`, `ABORT` (also `AND [NO] CHAIN`), not `ROLLBACK PREPARED`.
    Rollback,
    Savepoint {
        name: String,
    },
    /// `ROLLBACK [WORK|TRANSACTION] TO [SAVEPOINT] name`.
    RollbackTo {
        name: String,
    },
    /// `RELEASE [SAVEPOINT] name`.
    Release {
        name: String,
    },
}

type Toks<'t, 'a> = &'t [Spanned<'a>];

fn word<'t>(t: Toks<'t, '_>, i: usize) -> Option<&'t str> {
    match &t.get(i)?.token {
        Token::Word(w) => Some(w),
        _ => None,
    }
}

fn is_word(t: Toks, i: usize, kw: &str) -> bool {
    word(t, i) == Some(kw)
}

fn is_punct(t: Toks, i: usize, c: char) -> bool {
    matches!(t.get(i), Some(Spanned { token: Token::Punct(p), .. }) if *p == c)
}

/// An identifier as PostgreSQL names it: unquoted words are already folded, quoted ones kept.
fn ident_ref<'t>(t: Toks<'t, '_>, i: usize) -> Option<&'t str> {
    match &t.get(i)?.token {
        Token::Word(w) | Token::QuotedIdent(w) => Some(w),
        _ => None,
    }
}

fn ident(t: Toks, i: usize) -> Option<String> {
    ident_ref(t, i).map(str::to_string)
}

/// `[[db.]schema.]name` at `i`: (qualifier, name, index after it).
fn qualified(t: Toks, i: usize) -> Option<(Option<String>, String, usize)> {
    let mut name = ident(t, i)?;
    let mut qualifier = None;
    let mut j = i + 1;
    while is_punct(t, j, '.') {
        let Some(next) = ident(t, j + 1) else { break };
        qualifier = Some(std::mem::replace(&mut name, next));
        j += 2;
    }
    Some((qualifier, name, j))
}

/// Advances `i` past the word at `i` when it is one of `kws`; says whether it did.
fn skip_any(t: Toks, i: &mut usize, kws: &[&str]) -> bool {
    let hit = word(t, *i).is_some_and(|w| kws.contains(&w));
    *i += usize::from(hit);
    hit
}

/// `[GLOBAL|LOCAL] {TEMP|TEMPORARY}` at `i`: skips it, says whether it was there.
fn temp_prefix(t: Toks, i: &mut usize) -> bool {
    skip_any(t, i, &["global", "local"]);
    skip_any(t, i, &["temp", "temporary"])
}

fn is_pg_temp(schema: &str) -> bool {
    schema == "pg_temp" || schema.starts_with("pg_temp_")
}

/// `true` when `t[i..]` is the word sequence `kws`.
fn words_at(t: Toks, i: usize, kws: &[&str]) -> bool {
    kws.iter().enumerate().all(|(k, kw)| is_word(t, i + k, kw))
}

/// The source text from token `from` to the last token, trimmed; `None` when there is none.
fn source_from(src: &str, t: Toks, from: usize) -> Option<String> {
    let (first, last) = (t.get(from)?, t.last()?);
    src.get(first.start..last.end).map(|s| s.trim().to_string())
}

/// `NONE`, `"none"` or `'none'`: what `SET ROLE` treats as no role.
fn is_none_value(t: Toks, i: usize) -> bool {
    matches!(t.get(i).map(|s| &s.token), Some(Token::Word(v) | Token::QuotedIdent(v) | Token::Str(v)) if v == "none")
}

fn role_effect(name: &str, value_is_none: bool) -> Option<Effect> {
    match name {
        "role" if value_is_none => Some(Effect::ResetRole),
        "role" | "session_authorization" => Some(Effect::SetRole),
        _ => None,
    }
}

/// The effects of one statement (usually zero or one; a SELECT may call several functions), in
/// source order. Statement-level effects come from the leading keywords; function-call effects
/// (set_config, advisory locks, currval/lastval) are found anywhere as `name(` or
/// `pg_catalog.name(`. Text after a top-level `;` is only scanned for function calls: pass one
/// statement (see [`query_effects`]).
pub fn effects(stmt: &str) -> Vec<Effect> {
    if !may_have_effects(stmt) {
        return Vec::new();
    }
    let toks = tokenize(stmt);
    let end = toks.iter().position(|s| s.token == Token::Punct(';')).unwrap_or(toks.len());
    let mut found: Vec<(usize, Effect)> = Vec::new();
    if let Some(effect) = statement_effect(stmt, &toks[..end]) {
        found.push(effect);
    }
    function_effects(&toks, &mut found);
    found.sort_by_key(|(at, _)| *at);
    found.into_iter().map(|(_, e)| e).collect()
}

/// The allocation-free pre-filter: `false` only when [`effects`] would surely find nothing (no
/// recognised first word, no name that may be a recognised function, no `SELECT ... INTO`).
fn may_have_effects(stmt: &str) -> bool {
    let is = |w: &str, list: &[&str]| list.iter().any(|k| w.eq_ignore_ascii_case(k));
    let select = match first_word(stmt) {
        Some(first) if is(first, STATEMENT_WORDS) => return true,
        Some(first) => is(first, &["select", "with"]),
        None => false,
    };
    // Without tokenizing first: none of the names appears anywhere.
    let b = stmt.as_bytes();
    let ci = crate::route::lexer::contains_ci;
    let named = ["set_config", "currval", "lastval", "advisory_"].iter().any(|n| ci(b, n.as_bytes()));
    if !(named || select && ci(b, b"into")) {
        return false;
    }
    let function = |w: &str| {
        is(w, &["set_config", "currval", "lastval"])
            || w.as_bytes().windows(9).any(|x| x.eq_ignore_ascii_case(b"advisory_"))
    };
    words(stmt).any(|w| function(w) || (select && w.eq_ignore_ascii_case("into")))
}

/// Effects per statement for a whole Query string: [`split_statements`] then [`effects`] on each.
pub fn query_effects(sql: &str) -> Vec<Vec<Effect>> {
    split_statements(sql).into_iter().map(|r| effects(&sql[r])).collect()
}

/// The effect of the statement's leading keywords, with the token index it is anchored at.
fn statement_effect(src: &str, t: Toks) -> Option<(usize, Effect)> {
    let effect = match word(t, 0)? {
        "set" => set_statement(src, t)?,
        "reset" => reset_statement(t)?,
        "discard" => match word(t, 1)? {
            "all" => Effect::DiscardAll,
            "temp" | "temporary" => Effect::DiscardTemp,
            _ => return None,
        },
        "prepare" if is_word(t, 1, "transaction") && matches!(t.get(2).map(|s| &s.token), Some(Token::Str(_))) => {
            return None
        }
        "prepare" => Effect::SqlPrepare { name: ident(t, 1)? },
        "deallocate" => {
            let at = if is_word(t, 1, "prepare") && t.len() > 2 { 2 } else { 1 };
            if is_word(t, at, "all") {
                Effect::SqlDeallocateAll
            } else {
                Effect::SqlDeallocate { name: ident(t, at)? }
            }
        }
        "listen" => Effect::Listen { channel: ident(t, 1)? },
        "unlisten" if is_punct(t, 1, '*') => Effect::UnlistenAll,
        "unlisten" => Effect::Unlisten { channel: ident(t, 1)? },
        "create" => create_statement(t)?,
        "drop" => drop_statement(t)?,
        "declare" => {
            let name = ident(t, 1)?;
            let hold = (2..t.len()).take_while(|&k| !is_word(t, k, "for")).any(|k| words_at(t, k, &["with", "hold"]));
            if !hold {
                return None;
            }
            Effect::DeclareHold { name }
        }
        "close" if is_word(t, 1, "all") => Effect::CloseAllCursors,
        "close" => Effect::CloseCursor { name: ident(t, 1)? },
        "load" => Effect::Load,
        "begin" => Effect::Begin,
        "start" if is_word(t, 1, "transaction") => Effect::Begin,
        "commit" | "end" if !is_word(t, 1, "prepared") => Effect::Commit,
        "abort" => Effect::Rollback,
        "rollback" if is_word(t, 1, "prepared") => return None,
        "rollback" => {
            let to = if matches!(word(t, 1), Some("work" | "transaction")) { 2 } else { 1 };
            if is_word(t, to, "to") {
                Effect::RollbackTo { name: savepoint_name(t, to + 1)? }
            } else {
                Effect::Rollback
            }
        }
        "savepoint" => Effect::Savepoint { name: ident(t, 1)? },
        "release" => Effect::Release { name: savepoint_name(t, 1)? },
        "select" | "with" => return select_into_temp(t),
        _ => return None,
    };
    Some((0, effect))
}

/// `[SAVEPOINT] name` at `i` (a savepoint may itself be called `savepoint`).
fn savepoint_name(t: Toks, i: usize) -> Option<String> {
    let at = if is_word(t, i, "savepoint") && t.len() > i + 1 { i + 1 } else { i };
    ident(t, at)
}

/// `true` when the token at `i` is `TO` or `=` (a generic `SET name TO value`).
fn is_assign(t: Toks, i: usize) -> bool {
    is_word(t, i, "to") || is_punct(t, i, '=')
}

fn set_statement(src: &str, t: Toks) -> Option<Effect> {
    let mut i = 1;
    match word(t, i) {
        Some("local") => return None,
        Some("session") if !is_assign(t, i + 1) => {
            match word(t, i + 1) {
                Some("characteristics") => return None,
                Some("authorization") => return session_authorization(t, i + 2),
                _ => {}
            }
            i += 1;
        }
        _ => {}
    }
    let keyword_form = !is_assign(t, i + 1);
    match word(t, i) {
        Some("transaction" | "constraints" | "catalog") if keyword_form => None,
        Some("session") if is_word(t, i + 1, "authorization") => session_authorization(t, i + 2),
        Some("role") if keyword_form => {
            t.get(i + 1)?;
            role_effect("role", is_none_value(t, i + 1))
        }
        Some("time") if is_word(t, i + 1, "zone") => {
            let name = "timezone".to_string();
            match word(t, i + 2) {
                Some("local" | "default") if t.len() == i + 3 => Some(Effect::Reset { name }),
                Some("interval") => Some(Effect::Unreplayable),
                _ => Some(Effect::Set { name, value: source_from(src, t, i + 2)? }),
            }
        }
        Some("names") if keyword_form => {
            let name = "client_encoding".to_string();
            if t.len() == i + 1 || (t.len() == i + 2 && is_word(t, i + 1, "default")) {
                return Some(Effect::Reset { name });
            }
            Some(Effect::Set { name, value: source_from(src, t, i + 1)? })
        }
        Some("schema") if keyword_form => {
            Some(Effect::Set { name: "search_path".into(), value: source_from(src, t, i + 1)? })
        }
        Some("xml") if is_word(t, i + 1, "option") => {
            Some(Effect::Set { name: "xmloption".into(), value: source_from(src, t, i + 2)? })
        }
        _ => generic_set(src, t, i),
    }
}

fn session_authorization(t: Toks, i: usize) -> Option<Effect> {
    t.get(i)?;
    Some(if is_word(t, i, "default") { Effect::ResetRole } else { Effect::SetRole })
}

/// `var_name` at `i`: `ColId ['.' ColId ...]`, lowercased (GUC names are case-insensitive).
fn var_name(t: Toks, i: usize) -> Option<(String, usize)> {
    let mut name = ident_ref(t, i)?.to_ascii_lowercase();
    let mut j = i + 1;
    while is_punct(t, j, '.') {
        let Some(part) = ident_ref(t, j + 1) else { break };
        name.push('.');
        name.push_str(&part.to_ascii_lowercase());
        j += 2;
    }
    Some((name, j))
}

/// `name {TO|=} {value [, ...] | DEFAULT}` at `i`.
fn generic_set(src: &str, t: Toks, i: usize) -> Option<Effect> {
    let (name, j) = var_name(t, i)?;
    if !is_assign(t, j) {
        return None; // includes `SET name FROM CURRENT`, which keeps the current value
    }
    let default = t.len() == j + 2 && is_word(t, j + 1, "default");
    if let Some(role) = role_effect(&name, t.len() == j + 2 && is_none_value(t, j + 1)) {
        return Some(if default { Effect::ResetRole } else { role });
    }
    if default {
        return Some(Effect::Reset { name });
    }
    Some(Effect::Set { name, value: source_from(src, t, j + 1)? })
}

fn reset_statement(t: Toks) -> Option<Effect> {
    let timezone = || Some(Effect::Reset { name: "timezone".into() });
    match word(t, 1) {
        Some("all") => Some(Effect::ResetAll),
        Some("session") if is_word(t, 2, "authorization") => Some(Effect::ResetRole),
        Some("time") if is_word(t, 2, "zone") => timezone(),
        Some("transaction") if is_word(t, 2, "isolation") => None,
        _ => {
            let (name, _) = var_name(t, 1)?;
            Some(if role_effect(&name, true).is_some() { Effect::ResetRole } else { Effect::Reset { name } })
        }
    }
}

fn create_statement(t: Toks) -> Option<Effect> {
    let mut i = if words_at(t, 1, &["or", "replace"]) { 3 } else { 1 };
    let temp = temp_prefix(t, &mut i);
    skip_any(t, &mut i, &["recursive"]);
    match word(t, i)? {
        "table" | "view" | "sequence" => {}
        "function" | "procedure" | "type" | "domain" if !temp => {}
        _ => return None,
    }
    i += 1;
    if words_at(t, i, &["if", "not", "exists"]) {
        i += 3;
    }
    let (qualifier, name, _) = qualified(t, i)?;
    if !temp && !qualifier.as_deref().is_some_and(is_pg_temp) {
        return None;
    }
    let on_commit_drop = (i..t.len()).any(|k| words_at(t, k, &["on", "commit", "drop"]));
    Some(Effect::CreateTemp { name, on_commit_drop })
}

fn drop_statement(t: Toks) -> Option<Effect> {
    if !matches!(word(t, 1)?, "table" | "view" | "sequence") {
        return None;
    }
    let mut i = if words_at(t, 2, &["if", "exists"]) { 4 } else { 2 };
    let mut names = Vec::new();
    while let Some((qualifier, name, next)) = qualified(t, i) {
        if qualifier.as_deref().is_none_or(is_pg_temp) {
            names.push(name);
        }
        if !is_punct(t, next, ',') {
            break;
        }
        i = next + 1;
    }
    (!names.is_empty()).then_some(Effect::Drop { names })
}

/// `SELECT ... INTO [GLOBAL|LOCAL] {TEMP|TEMPORARY} [TABLE] name` (also after a `WITH` list).
fn select_into_temp(t: Toks) -> Option<(usize, Effect)> {
    let mut depth = 0usize;
    let mut main = None;
    for (k, s) in t.iter().enumerate() {
        match &s.token {
            Token::Punct('(') => depth += 1,
            Token::Punct(')') => depth = depth.saturating_sub(1),
            Token::Word(w) if depth == 0 => {
                if main.is_none()
                    && matches!(w.as_str(), "select" | "insert" | "update" | "delete" | "merge" | "values")
                {
                    main = Some(w.as_str());
                } else if main == Some("select") && w == "into" {
                    return into_temp_target(t, k + 1).map(|e| (k, e));
                }
            }
            _ => {}
        }
    }
    None
}

fn into_temp_target(t: Toks, mut i: usize) -> Option<Effect> {
    let temp = temp_prefix(t, &mut i);
    skip_any(t, &mut i, &["table"]);
    if is_word(t, i, "from") {
        return None;
    }
    let (qualifier, name, _) = qualified(t, i)?;
    (temp || qualifier.as_deref().is_some_and(is_pg_temp)).then_some(Effect::CreateTemp { name, on_commit_drop: false })
}

/// Function calls with session effects, anywhere in the statement.
fn function_effects(t: Toks, found: &mut Vec<(usize, Effect)>) {
    for k in 0..t.len() {
        if !is_punct(t, k + 1, '(') {
            continue;
        }
        let Some(name) = ident_ref(t, k) else { continue };
        let mut before = k;
        if k >= 2 && is_punct(t, k - 1, '.') {
            if ident_ref(t, k - 2) != Some("pg_catalog") {
                continue; // some other schema's function
            }
            before = k - 2;
        }
        // `DROP FUNCTION pg_advisory_lock(bigint)` and the like name a function without calling it.
        if before > 0 && matches!(word(t, before - 1), Some("function" | "procedure" | "routine" | "aggregate")) {
            continue;
        }
        let effect = match name {
            "set_config" => set_config_call(t, k + 1),
            "pg_advisory_lock" | "pg_advisory_lock_shared" | "pg_try_advisory_lock" | "pg_try_advisory_lock_shared" => {
                Some(Effect::AdvisoryLock)
            }
            "pg_advisory_unlock" | "pg_advisory_unlock_shared" => Some(Effect::AdvisoryUnlock),
            "pg_advisory_unlock_all" => Some(Effect::AdvisoryUnlockAll),
            "currval" | "lastval" => Some(Effect::SequenceState),
            _ => None,
        };
        if let Some(effect) = effect {
            found.push((k, effect));
        }
    }
}

/// A literal argument: one token, optionally cast (`'x'::text`).
fn literal<'t, 'a>(arg: Toks<'t, 'a>) -> Option<&'t Token<'a>> {
    match arg {
        [one] => Some(&one.token),
        [one, colon1, colon2, ty]
            if colon1.token == Token::Punct(':')
                && colon2.token == Token::Punct(':')
                && matches!(ty.token, Token::Word(_)) =>
        {
            Some(&one.token)
        }
        _ => None,
    }
}

/// PostgreSQL's `parse_bool` spellings (`t`, `true`, `yes`, `on`, `1`, prefixes; case-insensitive).
fn parse_bool(text: &str) -> Option<bool> {
    let v = text.trim().to_ascii_lowercase();
    let prefix_of = |full: &str| !v.is_empty() && full.starts_with(v.as_str());
    match v.as_str() {
        "on" | "1" => Some(true),
        "of" | "off" | "0" => Some(false),
        _ if prefix_of("true") || prefix_of("yes") => Some(true),
        _ if prefix_of("false") || prefix_of("no") => Some(false),
        _ => None,
    }
}

/// `set_config(name, value, is_local)`; `open` is the index of `(`. `None` when `is_local` is a
/// literal true (transaction-scoped, like `SET LOCAL`).
fn set_config_call(t: Toks, open: usize) -> Option<Effect> {
    let mut args: [&[Spanned]; 3] = [&[]; 3];
    let mut count = 0;
    let (mut depth, mut arg_start) = (0usize, open + 1);
    for k in open + 1..t.len() {
        match t[k].token {
            Token::Punct('(' | '[') => depth += 1,
            Token::Punct(')' | ']') if depth > 0 => depth -= 1,
            Token::Punct(',' | ')') => {
                if let Some(slot) = args.get_mut(count) {
                    *slot = &t[arg_start..k];
                }
                count += 1;
                arg_start = k + 1;
                if t[k].token == Token::Punct(')') {
                    break;
                }
            }
            _ => {}
        }
    }
    let is_local = match literal(args[2]) {
        Some(Token::Word(w)) if w == "true" || w == "false" => Some(w == "true"),
        Some(Token::Str(s)) => parse_bool(s),
        _ => None,
    };
    if is_local == Some(true) {
        return None;
    }
    let text = |arg| match literal(arg) {
        Some(Token::Str(s)) => Some(Some(s.clone())),
        Some(Token::Word(w)) if w == "null" => Some(None),
        _ => None,
    };
    match (count, is_local, text(args[0]), text(args[1])) {
        (3, Some(false), Some(Some(name)), Some(Some(value))) => {
            Some(Effect::SetConfig { name: name.to_ascii_lowercase(), value })
        }
        (3, Some(false), Some(Some(name)), Some(None)) => Some(Effect::Reset { name: name.to_ascii_lowercase() }),
        _ => Some(Effect::Unreplayable),
    }
}

#[cfg(test)]
mod tests {
    use super::Effect::{self, *};
    use super::*;

    fn set(name: &str, value: &str) -> Effect {
        Set { name: name.into(), value: value.into() }
    }

    fn reset(name: &str) -> Effect {
        Reset { name: name.into() }
    }

    fn temp(name: &str, on_commit_drop: bool) -> Effect {
        CreateTemp { name: name.into(), on_commit_drop }
    }

    fn n(s: &str) -> String {
        s.to_string()
    }

    #[test]
    fn classifies_statements() {
        let cases: Vec<(&str, Vec<Effect>)> = vec![
            // SET and its special forms
            ("SET search_path = a,b", vec![set("search_path", "a,b")]),
            ("set Search_Path TO a, \"B\", public", vec![set("search_path", "a, \"B\", public")]),
            ("SET SESSION timezone TO 'Asia/Tokyo'", vec![set("timezone", "'Asia/Tokyo'")]),
            ("/* pgweir: x */ SET statement_timeout = 5000", vec![set("statement_timeout", "5000")]),
            ("SET app.user_id = '42'", vec![set("app.user_id", "'42'")]),
            ("SET \"App\".\"User\" TO 7 /* trailing */", vec![set("app.user", "7")]),
            ("SET datestyle TO iso, mdy;", vec![set("datestyle", "iso, mdy")]),
            ("SET TIME ZONE 'UTC'", vec![set("timezone", "'UTC'")]),
            ("set time zone -7", vec![set("timezone", "-7")]),
            ("SET TIME ZONE LOCAL", vec![reset("timezone")]),
            ("SET TIME ZONE DEFAULT", vec![reset("timezone")]),
            ("SET TIME ZONE INTERVAL '+00:00' HOUR TO MINUTE", vec![Unreplayable]),
            ("SET NAMES 'UTF8'", vec![set("client_encoding", "'UTF8'")]),
            ("SET NAMES DEFAULT", vec![reset("client_encoding")]),
            ("SET SCHEMA 'app'", vec![set("search_path", "'app'")]),
            ("SET XML OPTION DOCUMENT", vec![set("xmloption", "DOCUMENT")]),
            ("SET work_mem TO DEFAULT", vec![reset("work_mem")]),
            ("SET work_mem = default", vec![reset("work_mem")]),
            ("SET LOCAL work_mem = '1MB'", vec![]),
            ("SET LOCAL ROLE admin", vec![]),
            ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", vec![]),
            ("SET CONSTRAINTS ALL DEFERRED", vec![]),
            ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", vec![]),
            ("SET work_mem FROM CURRENT", vec![]),
            ("SET", vec![]),
            ("SET work_mem =", vec![]),
            // roles
            ("SET ROLE admin", vec![SetRole]),
            ("SET SESSION ROLE 'admin'", vec![SetRole]),
            ("SET role = admin", vec![SetRole]),
            ("SET ROLE NONE", vec![ResetRole]),
            ("SET role TO 'none'", vec![ResetRole]),
            ("SET role TO DEFAULT", vec![ResetRole]),
            ("SET SESSION AUTHORIZATION bob", vec![SetRole]),
            ("SET SESSION AUTHORIZATION DEFAULT", vec![ResetRole]),
            ("RESET ROLE", vec![ResetRole]),
            ("RESET SESSION AUTHORIZATION", vec![ResetRole]),
            ("RESET session_authorization", vec![ResetRole]),
            ("RESET \"role\"", vec![ResetRole]),
            // RESET / DISCARD
            ("RESET search_path", vec![reset("search_path")]),
            ("RESET TIME ZONE", vec![reset("timezone")]),
            ("reset app.User_Id", vec![reset("app.user_id")]),
            ("RESET ALL", vec![ResetAll]),
            ("RESET TRANSACTION ISOLATION LEVEL", vec![]),
            ("DISCARD ALL", vec![DiscardAll]),
            ("discard temp", vec![DiscardTemp]),
            ("DISCARD TEMPORARY", vec![DiscardTemp]),
            ("DISCARD PLANS", vec![]),
            // set_config
            (
                "SELECT set_config('search_path', 'a, b', false)",
                vec![SetConfig { name: n("search_path"), value: n("a, b") }],
            ),
            (
                "select pg_catalog.set_config('App.X', 'it''s', 'f')",
                vec![SetConfig { name: n("app.x"), value: n("it's") }],
            ),
            (
                "SELECT set_config('a.b', $$v$$::text, 'off'::boolean)",
                vec![SetConfig { name: n("a.b"), value: n("v") }],
            ),
            ("SELECT set_config('a.b', NULL, FALSE)", vec![reset("a.b")]),
            ("SELECT set_config('request.jwt', $1, true)", vec![]),
            ("SELECT set_config('a.b', 'v', 'yes')", vec![]),
            ("SELECT set_config('a.b', $1, false)", vec![Unreplayable]),
            ("SELECT set_config('a.b', 'v', $2)", vec![Unreplayable]),
            ("SELECT set_config(name, 'v', false) FROM t", vec![Unreplayable]),
            ("SELECT set_config('a.b', lower('V'), false)", vec![Unreplayable]),
            ("SELECT set_config('a.b', 'v', 0)", vec![Unreplayable]),
            ("SELECT myschema.set_config('a', 'b', false)", vec![]),
            // prepared statements
            ("PREPARE q1 (int, text) AS SELECT $1", vec![SqlPrepare { name: n("q1") }]),
            ("prepare \"Q2\" as select 1", vec![SqlPrepare { name: n("Q2") }]),
            ("PREPARE TRANSACTION 'gid'", vec![]),
            ("DEALLOCATE Q1", vec![SqlDeallocate { name: n("q1") }]),
            ("DEALLOCATE PREPARE \"Q2\"", vec![SqlDeallocate { name: n("Q2") }]),
            ("DEALLOCATE ALL", vec![SqlDeallocateAll]),
            ("DEALLOCATE PREPARE ALL", vec![SqlDeallocateAll]),
            ("EXECUTE q1(1)", vec![]),
            // LISTEN
            ("LISTEN Jobs", vec![Listen { channel: n("jobs") }]),
            ("LISTEN \"Jobs\"", vec![Listen { channel: n("Jobs") }]),
            ("UNLISTEN jobs", vec![Unlisten { channel: n("jobs") }]),
            ("UNLISTEN *", vec![UnlistenAll]),
            // temp objects
            ("CREATE TEMP TABLE t (a int)", vec![temp("t", false)]),
            ("CREATE GLOBAL TEMPORARY TABLE IF NOT EXISTS \"T\" (a int) ON COMMIT DROP", vec![temp("T", true)]),
            ("create local temp table x on commit delete rows as select 1", vec![temp("x", false)]),
            ("CREATE OR REPLACE TEMP RECURSIVE VIEW v (n) AS SELECT 1", vec![temp("v", false)]),
            ("CREATE TEMPORARY SEQUENCE s", vec![temp("s", false)]),
            ("CREATE TABLE pg_temp.t2 (a int)", vec![temp("t2", false)]),
            ("CREATE FUNCTION pg_temp.f() RETURNS int AS $$select 1$$ LANGUAGE sql", vec![temp("f", false)]),
            ("CREATE TABLE t (a int)", vec![]),
            ("CREATE UNLOGGED TABLE u (a int)", vec![]),
            ("CREATE TEMP TABLE t AS SELECT pg_advisory_lock(1)", vec![temp("t", false), AdvisoryLock]),
            ("SELECT * INTO TEMP TABLE t3 FROM src", vec![temp("t3", false)]),
            ("SELECT pg_advisory_lock(1) INTO TEMPORARY t4", vec![AdvisoryLock, temp("t4", false)]),
            ("WITH x AS (SELECT 1) SELECT * INTO TEMP t5 FROM x", vec![temp("t5", false)]),
            ("SELECT * INTO newtab FROM src", vec![]),
            ("WITH x AS (SELECT 1) INSERT INTO temp SELECT * FROM x", vec![]),
            ("DROP TABLE t", vec![Drop { names: vec![n("t")] }]),
            (
                "DROP TABLE IF EXISTS pg_temp.a, \"B\", public.c, d CASCADE",
                vec![Drop { names: vec![n("a"), n("B"), n("d")] }],
            ),
            ("DROP VIEW v; ", vec![Drop { names: vec![n("v")] }]),
            ("DROP SEQUENCE public.s", vec![]),
            ("DROP FUNCTION pg_advisory_lock(bigint)", vec![]),
            // cursors
            ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", vec![DeclareHold { name: n("c") }]),
            ("DECLARE \"C\" BINARY NO SCROLL CURSOR WITH HOLD FOR SELECT 1", vec![DeclareHold { name: n("C") }]),
            ("DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1", vec![]),
            ("DECLARE c CURSOR FOR WITH hold AS (SELECT 1) SELECT * FROM hold", vec![]),
            ("CLOSE c", vec![CloseCursor { name: n("c") }]),
            ("CLOSE ALL", vec![CloseAllCursors]),
            ("LOAD 'auto_explain'", vec![Load]),
            // function calls
            ("SELECT pg_advisory_lock(1), pg_try_advisory_lock_shared(2)", vec![AdvisoryLock, AdvisoryLock]),
            ("SELECT pg_advisory_xact_lock(1)", vec![]),
            (
                "SELECT pg_catalog.pg_advisory_unlock(1), pg_advisory_unlock_shared(1)",
                vec![AdvisoryUnlock, AdvisoryUnlock],
            ),
            ("select PG_ADVISORY_UNLOCK_ALL()", vec![AdvisoryUnlockAll]),
            ("INSERT INTO t VALUES (nextval('s')) RETURNING currval('s')", vec![SequenceState]),
            ("WITH a AS (SELECT lastval ()) SELECT * FROM a", vec![SequenceState]),
            ("SELECT 'pg_advisory_lock(1)', \"currval\" FROM t", vec![]),
            ("SELECT \"currval\"('s')", vec![SequenceState]),
            // transactions
            ("BEGIN", vec![Begin]),
            ("begin transaction isolation level serializable", vec![Begin]),
            ("START TRANSACTION READ ONLY", vec![Begin]),
            ("COMMIT", vec![Commit]),
            ("END", vec![Commit]),
            ("COMMIT AND NO CHAIN", vec![Commit]),
            ("ROLLBACK", vec![Rollback]),
            ("ABORT WORK", vec![Rollback]),
            ("ROLLBACK AND CHAIN", vec![Rollback]),
            ("COMMIT PREPARED 'gid'", vec![]),
            ("ROLLBACK PREPARED 'gid'", vec![]),
            ("SAVEPOINT Sp1", vec![Savepoint { name: n("sp1") }]),
            ("ROLLBACK TO sp1", vec![RollbackTo { name: n("sp1") }]),
            ("ROLLBACK WORK TO SAVEPOINT \"Sp\"", vec![RollbackTo { name: n("Sp") }]),
            ("RELEASE SAVEPOINT sp1", vec![Release { name: n("sp1") }]),
            ("RELEASE sp1", vec![Release { name: n("sp1") }]),
            ("RELEASE savepoint", vec![Release { name: n("savepoint") }]),
            // unrecognised
            ("SELECT 1", vec![]),
            ("ALTER ROLE bob SET search_path = x", vec![]),
            ("DO $$BEGIN PERFORM set_config('a', 'b', false); END$$", vec![]),
            ("", vec![]),
            ("-- only a comment", vec![]),
        ];
        assert!(cases.len() >= 60);
        for (sql, expected) in cases {
            assert_eq!(effects(sql), expected, "{sql}");
        }
    }

    #[test]
    fn query_effects_per_statement() {
        let sql = "SET a.b = ';'; SELECT 1; /* hint */ LISTEN x; BEGIN; SELECT pg_advisory_lock(1); COMMIT;";
        assert_eq!(
            query_effects(sql),
            vec![
                vec![set("a.b", "';'")],
                vec![],
                vec![Listen { channel: n("x") }],
                vec![Begin],
                vec![AdvisoryLock],
                vec![Commit]
            ]
        );
        assert_eq!(query_effects("  ;; "), Vec::<Vec<Effect>>::new());
    }

    #[test]
    fn prefilter_skips_plain_queries_without_allocating_tokens() {
        assert!(!may_have_effects("SELECT abalance FROM pgbench_accounts WHERE aid = 1"));
        assert!(!may_have_effects("UPDATE t SET a = 1 WHERE b = 'set_config('"));
        assert!(may_have_effects("select * INTO x from y"));
        assert!(may_have_effects("/* c */ Set a = 1"));
        assert!(may_have_effects("INSERT INTO t VALUES (CurrVal('s'))"));
    }

    #[test]
    fn parse_bool_matches_postgres() {
        for yes in ["t", "TRUE", " tr ", "y", "yes", "on", "1"] {
            assert_eq!(parse_bool(yes), Some(true), "{yes}");
        }
        for no in ["f", "False", "n", "no", "of", "off", "0", " fal"] {
            assert_eq!(parse_bool(no), Some(false), "{no}");
        }
        for bad in ["", "o", "2", "10", "truex", "nope"] {
            assert_eq!(parse_bool(bad), None, "{bad}");
        }
    }

    #[test]
    fn never_panics_on_prefixes_or_garbage() {
        let samples = [
            "SET SESSION search_path TO \"A\", b; RESET ALL; SET TIME ZONE 'UTC'; SET ROLE NONE",
            "SELECT pg_catalog.set_config('a.b', E'x\\'y', 'f'), currval('s'), pg_advisory_lock(1)",
            "CREATE GLOBAL TEMP TABLE IF NOT EXISTS pg_temp.t (a int) ON COMMIT DROP; DROP TABLE IF EXISTS a, b",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1; CLOSE ALL; ROLLBACK WORK TO SAVEPOINT s; RELEASE s",
            "PREPARE p (int) AS SELECT $1; DEALLOCATE PREPARE ALL; UNLISTEN *; SELECT * INTO TEMP t FROM x",
        ];
        for sample in samples {
            for (i, _) in sample.char_indices() {
                let _ = effects(&sample[..i]);
                let _ = query_effects(&sample[i..]);
            }
        }
        for garbage in
            ["(", ")", "set_config(", "set_config(,,,", "SET .", "SET a.", "DROP TABLE ,", "CREATE TEMP", "\0\u{80}$$"]
        {
            let _ = effects(garbage);
        }
    }
}
