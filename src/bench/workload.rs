//! Workloads for `pgweir bench`: the built-in pgbench scripts and custom SQL files, parsed into
//! [`Script`]s whose `:name` variables are drawn at random once per transaction and either
//! written into the text (simple mode) or sent as `$n` int8 parameters (extended and prepared
//! modes). Pure: no I/O, no clock; the caller reads the file and supplies the random source.

use rand::{Rng, RngExt};

/// Accounts per scale unit, as pgbench creates them.
pub const ACCOUNTS_PER_SCALE: i64 = 100_000;
/// Tellers per scale unit, as pgbench creates them.
pub const TELLERS_PER_SCALE: i64 = 10;

const SELECT_ONLY: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n";

const TPCB_LIKE: &str = "\
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
";

/// A parse failure in a workload file, with its 1-based line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct WorkloadError {
    pub line: usize,
    pub message: String,
}

/// Where a variable's values come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VarRange {
    /// `\set name lo hi`: inclusive.
    Fixed(i64, i64),
    /// `lo ..= per_scale * scale`.
    Scaled { lo: i64, per_scale: i64 },
}

impl VarRange {
    fn bounds(self, scale: u32) -> (i64, i64) {
        match self {
            VarRange::Fixed(lo, hi) => (lo, hi),
            VarRange::Scaled { lo, per_scale } => (lo, (per_scale * i64::from(scale.max(1))).max(lo)),
        }
    }
}

const BUILTIN_VARS: [(&str, VarRange); 4] = [
    ("aid", VarRange::Scaled { lo: 1, per_scale: ACCOUNTS_PER_SCALE }),
    ("bid", VarRange::Scaled { lo: 1, per_scale: 1 }),
    ("tid", VarRange::Scaled { lo: 1, per_scale: TELLERS_PER_SCALE }),
    ("delta", VarRange::Fixed(-5000, 5000)),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// Index into the script's variables.
    Var(usize),
}

/// One SQL statement of a script, in both of its forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pieces: Vec<Piece>,
    /// The text with each distinct variable replaced by `$1`, `$2`, ... in order of first use.
    extended: String,
    /// The variable behind each `$n` (index `n - 1`).
    params: Vec<usize>,
}

impl Statement {
    /// The statement with the values written in (negative numbers in parentheses, so that
    /// `a - :delta` never becomes a `--` comment).
    pub fn simple_sql(&self, values: &[i64]) -> String {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(i) if values[*i] < 0 => out.push_str(&format!("({})", values[*i])),
                Piece::Var(i) => out.push_str(&values[*i].to_string()),
            }
        }
        out
    }

    /// The statement with `$n` placeholders (for Parse).
    pub fn extended_sql(&self) -> &str {
        &self.extended
    }

    /// How many `$n` parameters [`Statement::extended_sql`] has.
    pub fn param_count(&self) -> usize {
        self.params.len()
    }

    /// The parameter values, `$1` first, drawn from `values` (one per script variable).
    pub fn params(&self, values: &[i64]) -> Vec<i64> {
        self.params.iter().map(|i| values[*i]).collect()
    }
}

/// One transaction: statements run in order with one draw of every variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    vars: Vec<(String, VarRange)>,
    statements: Vec<Statement>,
}

impl Script {
    /// Parses a workload file: one statement per line (a trailing `;` is dropped), blank lines
    /// and `--` comment lines skipped, `\set name lo hi` defining a random integer variable
    /// (inclusive; anywhere in the file; it may redefine a built-in). `:name` outside quotes and
    /// comments names a variable; `::` is a cast, not a variable.
    pub fn parse(text: &str) -> Result<Script, WorkloadError> {
        let mut vars: Vec<(String, VarRange)> = BUILTIN_VARS.iter().map(|(n, r)| (n.to_string(), *r)).collect();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix('\\') {
                let (name, range) = parse_meta(rest).map_err(|message| WorkloadError { line: n + 1, message })?;
                match vars.iter_mut().find(|(v, _)| *v == name) {
                    Some(slot) => slot.1 = range,
                    None => vars.push((name, range)),
                }
            }
        }
        let mut statements = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with("--") || line.starts_with('\\') {
                continue;
            }
            let sql = line.trim_end_matches(|c: char| c == ';' || c.is_whitespace());
            if sql.is_empty() {
                continue;
            }
            let st = parse_statement(sql, &vars).map_err(|message| WorkloadError { line: n + 1, message })?;
            statements.push(st);
        }
        if statements.is_empty() {
            return Err(WorkloadError { line: 0, message: "no SQL statements".into() });
        }
        Ok(Script { vars, statements })
    }

    pub fn statements(&self) -> &[Statement] {
        &self.statements
    }

    /// Draws one value per variable for a transaction at this scale (`out` is cleared first).
    pub fn draw<R: Rng + ?Sized>(&self, scale: u32, rng: &mut R, out: &mut Vec<i64>) {
        out.clear();
        out.extend(self.vars.iter().map(|(_, r)| {
            let (lo, hi) = r.bounds(scale);
            rng.random_range(lo..=hi)
        }));
    }

    /// The inclusive range of variable `name` at this scale, if the script has it.
    pub fn range_of(&self, name: &str, scale: u32) -> Option<(i64, i64)> {
        self.vars.iter().find(|(n, _)| n == name).map(|(_, r)| r.bounds(scale))
    }
}

/// `set name lo hi` (the part after the backslash).
fn parse_meta(rest: &str) -> Result<(String, VarRange), String> {
    let words: Vec<&str> = rest.split_whitespace().collect();
    match words.as_slice() {
        ["set", name, lo, hi] => {
            if !is_ident(name) {
                return Err(format!("\\set: invalid variable name {name:?}"));
            }
            let lo: i64 = lo.parse().map_err(|_| format!("\\set {name}: {lo:?} is not an integer"))?;
            let hi: i64 = hi.parse().map_err(|_| format!("\\set {name}: {hi:?} is not an integer"))?;
            if lo > hi {
                return Err(format!("\\set {name}: the low bound {lo} is above the high bound {hi}"));
            }
            Ok((name.to_string(), VarRange::Fixed(lo, hi)))
        }
        ["set", ..] => Err("\\set takes a name and two integers: \\set name lo hi".into()),
        [cmd, ..] => Err(format!("unsupported meta-command \\{cmd} (only \\set name lo hi is)")),
        [] => Err("empty meta-command".into()),
    }
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_statement(sql: &str, vars: &[(String, VarRange)]) -> Result<Statement, String> {
    let bytes = sql.as_bytes();
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let c = bytes[i];
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
        } else if c == b'\'' || c == b'"' {
            quote = Some(c);
        } else if c == b'-' && bytes.get(i + 1) == Some(&b'-') {
            // A trailing comment: the rest of the line is passed as it is.
            text.push_str(&sql[i..]);
            break;
        } else if c == b':' && bytes.get(i + 1) == Some(&b':') {
            text.push_str("::");
            i += 2;
            continue;
        } else if c == b':' && bytes.get(i + 1).is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_') {
            let end = sql[i + 1..]
                .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                .map_or(sql.len(), |e| e + i + 1);
            let name = &sql[i + 1..end];
            let idx = vars.iter().position(|(n, _)| n == name).ok_or_else(|| {
                format!("unknown variable :{name} (built-ins are :aid, :bid, :tid, :delta; define others with \\set {name} lo hi)")
            })?;
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(Piece::Var(idx));
            i = end;
            continue;
        }
        // Copy one whole UTF-8 character.
        let len = sql[i..].chars().next().map_or(1, char::len_utf8);
        text.push_str(&sql[i..i + len]);
        i += len;
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    let mut params: Vec<usize> = Vec::new();
    let mut extended = String::new();
    for p in &pieces {
        match p {
            Piece::Text(t) => extended.push_str(t),
            Piece::Var(v) => {
                let n = match params.iter().position(|x| x == v) {
                    Some(n) => n + 1,
                    None => {
                        params.push(*v);
                        params.len()
                    }
                };
                extended.push_str(&format!("${n}"));
            }
        }
    }
    Ok(Statement { pieces, extended, params })
}

/// A workload: one or more scripts, one chosen per transaction by weight.
#[derive(Debug, Clone)]
pub struct Workload {
    name: String,
    scripts: Vec<(u32, Script)>,
    builtin: bool,
}

impl Workload {
    /// The names `--workload` accepts besides a file path.
    pub const BUILTINS: [&'static str; 3] = ["select-only", "tpcb-like", "read-heavy"];

    /// A built-in workload by name, or `None` if `name` is not one.
    pub fn builtin(name: &str) -> Option<Workload> {
        let parse = |t: &str| Script::parse(t).expect("built-in scripts parse");
        let scripts = match name {
            "select-only" => vec![(1, parse(SELECT_ONLY))],
            "tpcb-like" => vec![(1, parse(TPCB_LIKE))],
            "read-heavy" => vec![(9, parse(SELECT_ONLY)), (1, parse(TPCB_LIKE))],
            _ => return None,
        };
        Some(Workload { name: name.to_string(), scripts, builtin: true })
    }

    /// A custom workload from a file's text (`name` is what reports call it).
    pub fn from_file(name: &str, text: &str) -> Result<Workload, WorkloadError> {
        Ok(Workload { name: name.to_string(), scripts: vec![(1, Script::parse(text)?)], builtin: false })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this is a built-in workload (which needs the pgbench tables).
    pub fn is_builtin(&self) -> bool {
        self.builtin
    }

    pub fn scripts(&self) -> impl Iterator<Item = &Script> {
        self.scripts.iter().map(|(_, s)| s)
    }

    /// Picks the script for the next transaction (its index in [`Workload::scripts`]).
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        if self.scripts.len() == 1 {
            return 0;
        }
        let total: u32 = self.scripts.iter().map(|(w, _)| w).sum();
        let mut roll = rng.random_range(0..total);
        for (i, (w, _)) in self.scripts.iter().enumerate() {
            if roll < *w {
                return i;
            }
            roll -= w;
        }
        self.scripts.len() - 1
    }

    pub fn script(&self, i: usize) -> &Script {
        &self.scripts[i].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn custom_file_with_set_comments_and_blank_lines() {
        let text = "-- a comment\n\n\\set uid 1 10\nSELECT * FROM users WHERE id = :uid::int;\n  \nUPDATE t SET n = n + :delta WHERE id = :uid;\n";
        let s = Script::parse(text).unwrap();
        assert_eq!(s.statements().len(), 2);
        assert_eq!(s.range_of("uid", 3), Some((1, 10)));
        assert_eq!(s.statements()[0].extended_sql(), "SELECT * FROM users WHERE id = $1::int");
        assert_eq!(s.statements()[1].extended_sql(), "UPDATE t SET n = n + $1 WHERE id = $2");
        assert_eq!(s.statements()[1].param_count(), 2);
    }

    #[test]
    fn simple_substitution_vs_extended_parameters() {
        let s = Script::parse("\\set x 1 1\nSELECT :x, :aid + :x, ':x', \"col:x\", a::text -- :x\n").unwrap();
        let st = &s.statements()[0];
        // Variables in order: aid, bid, tid, delta, x.
        let values = [7, 1, 2, -3, 42];
        assert_eq!(st.simple_sql(&values), "SELECT 42, 7 + 42, ':x', \"col:x\", a::text -- :x");
        assert_eq!(st.extended_sql(), "SELECT $1, $2 + $1, ':x', \"col:x\", a::text -- :x");
        assert_eq!(st.params(&values), vec![42, 7]);
    }

    #[test]
    fn negative_values_cannot_turn_into_comments() {
        let s = Script::parse("UPDATE t SET b = b -:delta").unwrap();
        assert_eq!(s.statements()[0].simple_sql(&[1, 1, 1, -5]), "UPDATE t SET b = b -(-5)");
    }

    #[test]
    fn set_may_come_after_use_and_redefine_builtins() {
        let s = Script::parse("SELECT :aid\n\\set aid 5 5\n").unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let mut v = Vec::new();
        s.draw(100, &mut rng, &mut v);
        assert_eq!(s.statements()[0].simple_sql(&v), "SELECT 5");
    }

    #[test]
    fn parse_errors_name_the_line() {
        let e = Script::parse("SELECT 1\nSELECT :nope\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains(":nope"), "{e}");
        let e = Script::parse("\\set n 10 1\nSELECT :n").unwrap_err();
        assert_eq!((e.line, e.message.contains("above")), (1, true), "{e}");
        let e = Script::parse("\\set n x 1\nSELECT :n").unwrap_err();
        assert!(e.to_string().starts_with("line 1: "), "{e}");
        let e = Script::parse("\\sleep 10ms\nSELECT 1").unwrap_err();
        assert!(e.message.contains("\\sleep"), "{e}");
        assert!(Script::parse("-- only a comment\n\n").is_err());
    }

    #[test]
    fn builtin_ranges_follow_the_scale() {
        let w = Workload::builtin("tpcb-like").unwrap();
        let s = w.script(0);
        assert_eq!(s.range_of("aid", 10), Some((1, 1_000_000)));
        assert_eq!(s.range_of("bid", 10), Some((1, 10)));
        assert_eq!(s.range_of("tid", 10), Some((1, 100)));
        assert_eq!(s.range_of("delta", 10), Some((-5000, 5000)));
        assert_eq!(s.statements().len(), 7);
        assert_eq!(s.statements()[0].extended_sql(), "BEGIN");
        assert_eq!(
            s.statements()[5].extended_sql(),
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)"
        );
        let mut rng = StdRng::seed_from_u64(7);
        let mut v = Vec::new();
        for _ in 0..1000 {
            s.draw(2, &mut rng, &mut v);
            assert!((1..=200_000).contains(&v[0]) && (1..=2).contains(&v[1]) && (1..=20).contains(&v[2]));
            assert!((-5000..=5000).contains(&v[3]));
        }
        assert!(Workload::builtin("tpcc").is_none());
    }

    #[test]
    fn read_heavy_is_nine_to_one() {
        let w = Workload::builtin("read-heavy").unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        let writes = (0..10_000).filter(|_| w.pick(&mut rng) == 1).count();
        assert!((800..1200).contains(&writes), "{writes} of 10000 were tpcb-like");
        assert_eq!(w.script(0).statements().len(), 1);
    }
}
