//! `COPY table FROM STDIN` into a sharded table, split by key: the data stream (text or CSV
//! format, in CopyData chunks that may cut rows anywhere) is cut into rows, each row's key field
//! is read (with the format's quoting, escapes and NULL marker) and the row goes to its shard.
//! Pure: no I/O.

use sqlparser::ast::{CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Statement};

use super::route::RouteError;
use super::{KeyValue, Layout, Placement};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Format {
    Text,
    Csv { quote: u8, escape: u8 },
}

/// How one COPY's rows are split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyPlan {
    /// The sharded table (index into `Layout::tables`).
    pub table: usize,
    key_col: usize,
    format: Format,
    delimiter: u8,
    null: Vec<u8>,
    /// The first line is a header: every shard gets it.
    pub header: bool,
}

fn bad(m: impl Into<String>) -> RouteError {
    RouteError::Unsupported(m.into())
}

/// The plan of a `COPY ... FROM STDIN` into a sharded table; None for any other statement.
pub fn plan(layout: &Layout, st: &Statement) -> Result<Option<CopyPlan>, RouteError> {
    let Statement::Copy {
        source: CopySource::Table { table_name, columns },
        to: false,
        target,
        options,
        legacy_options,
        ..
    } = st
    else {
        return Ok(None);
    };
    let parts: Vec<String> =
        table_name.0.iter().filter_map(|p| p.as_ident()).map(|i| fold(&i.value, i.quote_style.is_some())).collect();
    let name = parts.last().cloned().unwrap_or_default();
    let schema = parts.len().checked_sub(2).map(|i| parts[i].as_str());
    let Placement::Sharded(table) = layout.place(schema, &name) else { return Ok(None) };
    if *target != CopyTarget::Stdin {
        return Err(bad("COPY into a sharded table from a file or program runs on the server: use FROM STDIN"));
    }
    let key = &layout.tables[table].key;
    let key_col = columns.iter().position(|c| fold(&c.value, c.quote_style.is_some()) == *key).ok_or_else(|| {
        bad(format!("COPY into sharded table \"{name}\" must list its columns, including the key \"{key}\""))
    })?;
    let mut p =
        CopyPlan { table, key_col, format: Format::Text, delimiter: b'\t', null: b"\\N".to_vec(), header: false };
    let (mut quote, mut escape, mut delimiter, mut null) = (b'"', None, None, None);
    let byte = |c: char| {
        u8::try_from(c as u32).ok().filter(u8::is_ascii).ok_or_else(|| bad("COPY option characters must be ASCII"))
    };
    for o in options {
        match o {
            CopyOption::Format(f) => match f.value.to_ascii_lowercase().as_str() {
                "text" => p.format = Format::Text,
                "csv" => p.format = Format::Csv { quote: b'"', escape: b'"' },
                _ => return Err(bad("binary COPY into a sharded table (use text or csv)")),
            },
            CopyOption::Delimiter(c) => delimiter = Some(byte(*c)?),
            CopyOption::Null(n) => null = Some(n.as_bytes().to_vec()),
            CopyOption::Header(h) => p.header = *h,
            CopyOption::Quote(c) => quote = byte(*c)?,
            CopyOption::Escape(c) => escape = Some(byte(*c)?),
            _ => {}
        }
    }
    for o in legacy_options {
        match o {
            CopyLegacyOption::Binary => return Err(bad("binary COPY into a sharded table (use text or csv)")),
            CopyLegacyOption::Delimiter(c) => delimiter = Some(byte(*c)?),
            CopyLegacyOption::Null(n) => null = Some(n.as_bytes().to_vec()),
            CopyLegacyOption::Csv(opts) => {
                p.format = Format::Csv { quote: b'"', escape: b'"' };
                for c in opts {
                    match c {
                        CopyLegacyCsvOption::Header => p.header = true,
                        CopyLegacyCsvOption::Quote(q) => quote = byte(*q)?,
                        CopyLegacyCsvOption::Escape(e) => escape = Some(byte(*e)?),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if let Format::Csv { .. } = p.format {
        p.format = Format::Csv { quote, escape: escape.unwrap_or(quote) };
        p.delimiter = delimiter.unwrap_or(b',');
        p.null = null.unwrap_or_default();
    } else {
        p.delimiter = delimiter.unwrap_or(b'\t');
        p.null = null.unwrap_or_else(|| b"\\N".to_vec());
    }
    Ok(Some(p))
}

fn fold(s: &str, quoted: bool) -> String {
    if quoted {
        s.to_string()
    } else {
        s.to_ascii_lowercase()
    }
}

/// Cuts a COPY data stream into rows.
#[derive(Debug, Default)]
pub struct Rows {
    partial: Vec<u8>,
    /// CSV: inside a quoted field at the end of `partial`.
    in_quotes: bool,
    /// How far `partial` has been scanned.
    scanned: usize,
    /// The text format's end marker `\.` was seen: the rest is ignored.
    pub ended: bool,
}

impl Rows {
    /// Adds data; `row` gets each complete row (with its line end).
    pub fn feed(&mut self, plan: &CopyPlan, data: &[u8], mut row: impl FnMut(&[u8])) {
        if self.ended {
            return;
        }
        self.partial.extend_from_slice(data);
        let mut start = 0;
        let mut i = self.scanned;
        let buf = &self.partial;
        while i < buf.len() {
            let b = buf[i];
            match &plan.format {
                Format::Csv { quote, escape } => {
                    if self.in_quotes && b == *escape && escape != quote && i + 1 < buf.len() && buf[i + 1] == *quote {
                        i += 2;
                        continue;
                    }
                    if b == *quote {
                        self.in_quotes = !self.in_quotes;
                    } else if b == b'\n' && !self.in_quotes {
                        row(&buf[start..=i]);
                        start = i + 1;
                    }
                }
                Format::Text => {
                    if b == b'\\' {
                        // An escaped character never ends a row (even an escaped newline).
                        if i + 1 >= buf.len() {
                            break;
                        }
                        i += 2;
                        continue;
                    }
                    if b == b'\n' {
                        let line = &buf[start..=i];
                        if line == b"\\.\n" || line == b"\\.\r\n" {
                            self.ended = true;
                            self.partial.clear();
                            self.scanned = 0;
                            return;
                        }
                        row(line);
                        start = i + 1;
                    }
                }
            }
            i += 1;
        }
        self.partial.drain(..start);
        self.scanned = i - start;
    }

    /// The last row when the data does not end with a newline (None if nothing is left).
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        let rest = std::mem::take(&mut self.partial);
        self.scanned = 0;
        (!rest.is_empty() && !self.ended && rest != b"\\." && rest != b"\\.\r").then_some(rest)
    }
}

impl CopyPlan {
    /// The key field of one row, as its type's value (None: NULL).
    pub fn key(&self, layout: &Layout, row: &[u8]) -> Result<Option<KeyValue>, String> {
        let row = row.strip_suffix(b"\n").unwrap_or(row);
        let row = row.strip_suffix(b"\r").unwrap_or(row);
        let field = match &self.format {
            Format::Text => nth_text_field(row, self.delimiter, self.key_col),
            Format::Csv { quote, escape } => nth_csv_field(row, self.delimiter, *quote, *escape, self.key_col),
        }
        .ok_or_else(|| format!("a COPY row has no column {} (the key)", self.key_col + 1))?;
        let (raw, quoted) = field;
        if !quoted && raw == self.null {
            return Ok(None);
        }
        let value = match &self.format {
            Format::Text => unescape_text(&raw),
            Format::Csv { .. } => raw,
        };
        let text = std::str::from_utf8(&value).map_err(|_| "a COPY key is not UTF-8".to_string())?;
        layout.tables[self.table].key_type.from_text(text).map(Some)
    }
}

/// Field `n` of a text-format row, still escaped (and never "quoted").
fn nth_text_field(row: &[u8], delim: u8, n: usize) -> Option<(Vec<u8>, bool)> {
    let mut field = 0;
    let mut start = 0;
    let mut i = 0;
    while i < row.len() {
        if row[i] == b'\\' {
            i += 2;
            continue;
        }
        if row[i] == delim {
            if field == n {
                return Some((row[start..i].to_vec(), false));
            }
            field += 1;
            start = i + 1;
        }
        i += 1;
    }
    (field == n).then(|| (row[start..].to_vec(), false))
}

/// Field `n` of a CSV row, unquoted; `true` if it was quoted (a quoted empty string is not NULL).
fn nth_csv_field(row: &[u8], delim: u8, quote: u8, escape: u8, n: usize) -> Option<(Vec<u8>, bool)> {
    let mut field = 0;
    let mut value = Vec::new();
    let mut quoted = false;
    let mut in_quotes = false;
    let mut i = 0;
    while i < row.len() {
        let b = row[i];
        if in_quotes {
            if b == escape && i + 1 < row.len() && row[i + 1] == quote {
                value.push(quote);
                i += 2;
                continue;
            }
            if b == quote {
                in_quotes = false;
            } else {
                value.push(b);
            }
        } else if b == quote {
            in_quotes = true;
            quoted = true;
        } else if b == delim {
            if field == n {
                return Some((value, quoted));
            }
            field += 1;
            value.clear();
            quoted = false;
        } else {
            value.push(b);
        }
        i += 1;
    }
    (field == n).then_some((value, quoted))
}

/// The text format's backslash escapes.
fn unescape_text(f: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        if f[i] != b'\\' || i + 1 >= f.len() {
            out.push(f[i]);
            i += 1;
            continue;
        }
        let c = f[i + 1];
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = (c - b'0') as u32;
                let mut k = 0;
                while k < 2 && i < f.len() && (b'0'..=b'7').contains(&f[i]) {
                    v = v * 8 + (f[i] - b'0') as u32;
                    i += 1;
                    k += 1;
                }
                out.push(v as u8);
            }
            b'x' if i < f.len() && f[i].is_ascii_hexdigit() => {
                let mut v = 0u32;
                let mut k = 0;
                while k < 2 && i < f.len() && f[i].is_ascii_hexdigit() {
                    v = v * 16 + (f[i] as char).to_digit(16).unwrap_or(0);
                    i += 1;
                    k += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::{Function, KeyType, ShardedTable};
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn layout(ty: KeyType) -> Layout {
        Layout {
            targets: vec!["a".into(), "b".into()],
            shards: 2,
            tables: vec![ShardedTable {
                schema: None,
                name: "t".into(),
                key: "id".into(),
                key_type: ty,
                function: Function::Hash,
            }],
            federation: vec![],
            home: None,
        }
    }

    fn plan_of(l: &Layout, sql: &str) -> Result<Option<CopyPlan>, RouteError> {
        plan(l, &Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap()[0])
    }

    fn rows(p: &CopyPlan, chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut r = Rows::default();
        let mut out = Vec::new();
        for c in chunks {
            r.feed(p, c, |row| out.push(row.to_vec()));
        }
        out.extend(r.finish());
        out
    }

    #[test]
    fn text_rows_split_anywhere_and_keys_unescape() {
        let l = layout(KeyType::Text);
        let p = plan_of(&l, "COPY t (v, id) FROM STDIN").unwrap().unwrap();
        let data: &[u8] = b"1\ta\\tb\n2\t\\N\n3\tx\\\ny\n4\tlast";
        for cut in 0..data.len() {
            let got = rows(&p, &[&data[..cut], &data[cut..]]);
            assert_eq!(got.len(), 4, "cut at {cut}: {got:?}");
        }
        let got = rows(&p, &[data]);
        assert_eq!(p.key(&l, &got[0]), Ok(Some(KeyValue::Text(b"a\tb".to_vec()))));
        assert_eq!(p.key(&l, &got[1]), Ok(None));
        assert_eq!(p.key(&l, &got[2]), Ok(Some(KeyValue::Text(b"x\ny".to_vec()))));
        assert_eq!(p.key(&l, &got[3]), Ok(Some(KeyValue::Text(b"last".to_vec()))));
        // The end marker stops the data.
        assert_eq!(rows(&p, &[b"1\ta\n\\.\n2\tb\n"]).len(), 1);
    }

    #[test]
    fn csv_rows_keep_quoted_newlines_and_delimiters() {
        let l = layout(KeyType::BigInt);
        let p = plan_of(&l, "COPY t (name, id) FROM STDIN WITH (FORMAT csv, HEADER true)").unwrap().unwrap();
        assert!(p.header);
        let data: &[u8] = b"name,id\n\"a,\nb\",7\n\"say \"\"hi\"\"\",8\r\n,9\n";
        for cut in 0..data.len() {
            assert_eq!(rows(&p, &[&data[..cut], &data[cut..]]).len(), 4, "cut at {cut}");
        }
        let got = rows(&p, &[data]);
        assert_eq!(p.key(&l, &got[1]), Ok(Some(KeyValue::Int(7))));
        assert_eq!(p.key(&l, &got[2]), Ok(Some(KeyValue::Int(8))));
        assert_eq!(p.key(&l, &got[3]), Ok(Some(KeyValue::Int(9))));
        let p = plan_of(&l, "COPY t (id, name) FROM STDIN CSV").unwrap().unwrap();
        assert_eq!(p.key(&l, b",x\n"), Ok(None));
        assert!(p.key(&l, b"\"\",x\n").is_err(), "a quoted empty string is not NULL");
    }

    #[test]
    fn what_cannot_be_split_is_refused() {
        let l = layout(KeyType::BigInt);
        assert!(plan_of(&l, "COPY t FROM STDIN").unwrap_err().to_string().contains("must list its columns"));
        assert!(plan_of(&l, "COPY t (id) FROM STDIN WITH (FORMAT binary)").is_err());
        assert!(plan_of(&l, "COPY t (id) FROM '/tmp/x'").is_err());
        assert_eq!(plan_of(&l, "COPY other (id) FROM STDIN"), Ok(None));
        assert_eq!(plan_of(&l, "COPY t (id) TO STDOUT"), Ok(None));
    }
}
