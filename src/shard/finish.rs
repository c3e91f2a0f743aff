//! The final query PostgreSQL runs over the shards' partial rows (aggregates combined, AVG
//! from SUM and COUNT, GROUP BY, collatable ORDER BY, LIMIT/OFFSET after the merge), and the
//! sort keys of a merge the proxy can stream itself. Pure: no I/O.

use super::merge::{unsupported, Final, OrderKey, Out, MAX_FINAL_PARAMS};
use super::route::RouteError;

/// The type name of a partial SUM's type, and of the AVG computed from it (by type OID).
fn sum_types(oid: u32) -> Option<(&'static str, &'static str)> {
    Some(match oid {
        20 => ("int8", "numeric"),
        21 | 23 => ("int8", "numeric"),
        1700 => ("numeric", "numeric"),
        700 => ("float4", "float8"),
        701 => ("float8", "float8"),
        1186 => ("interval", "interval"),
        790 => ("money", "money"),
        _ => return None,
    })
}

impl Final {
    /// Rows of an ORDER BY without aggregates can be merged as they stream, when the proxy
    /// can compare the sort columns itself (`sort_keys`).
    pub fn streams(&self) -> bool {
        self.outs.is_none()
    }

    /// Rows dropped, then rows kept, after the merge.
    pub fn bounds(&self) -> (u64, Option<u64>) {
        (self.offset, self.limit)
    }

    /// The ORDER BY resolved against the shards' result columns (names, type OIDs, formats),
    /// if every key is a column of a type `order` compares exactly.
    pub fn sort_keys(&self, names: &[String], types: &[u32], formats: &[i16]) -> Option<Vec<super::order::SortKey>> {
        if !self.streams() {
            return None;
        }
        let mut keys = Vec::with_capacity(self.order.len());
        for (k, dir) in &self.order {
            if dir.using.is_some() {
                return None;
            }
            let col = match k {
                OrderKey::Position(p) => p.checked_sub(1)?,
                OrderKey::Name(n) => names.iter().position(|x| x == n)?,
            };
            let kind = super::order::kind(*types.get(col)?, formats.get(col).copied().unwrap_or(0))?;
            keys.push(super::order::SortKey {
                col,
                kind,
                desc: dir.desc,
                nulls_first: dir.nulls_first.unwrap_or(dir.desc),
            });
        }
        Some(keys)
    }

    /// The final query over `rows` partial rows of the given column type OIDs (their values
    /// are bound as parameters `$1..`, row after row). `names`: the partial columns' names
    /// (for ORDER BY of a `SELECT *`).
    pub fn final_sql(&self, types: &[u32], names: &[String], rows: usize) -> Result<String, RouteError> {
        let ncols = types.len();
        if ncols == 0 {
            return Err(unsupported("a read without columns"));
        }
        if rows.max(1) * ncols > MAX_FINAL_PARAMS {
            return Err(RouteError::Unsupported(format!(
                "merging {rows} partial rows of {ncols} columns across shards exceeds {MAX_FINAL_PARAMS} values: add or lower a LIMIT, or narrow the query"
            )));
        }
        let col = |i: usize| format!("c{}", i + 1);
        let quote = |n: &str| format!("\"{}\"", n.replace('"', "\"\""));
        let select: Vec<String> = match &self.outs {
            None => {
                (0..ncols).map(|i| format!("{} AS {}", col(i), quote(names.get(i).map_or("?column?", |s| s)))).collect()
            }
            Some(outs) => {
                let mut v = Vec::with_capacity(outs.len());
                for (out, name) in outs {
                    let ty = |i: usize| types.get(i).copied().unwrap_or(0);
                    let cast = |i: usize, avg: bool| {
                        sum_types(ty(i))
                            .map(|(s, a)| if avg { a } else { s })
                            .ok_or_else(|| unsupported(&format!("sum/avg of type oid {}", ty(i))))
                    };
                    let e = match *out {
                        Out::Column(i) => col(i),
                        Out::Count(i) => format!("CAST(coalesce(sum({}), 0) AS int8)", col(i)),
                        Out::Sum(i) => format!("CAST(sum({}) AS {})", col(i), cast(i, false)?),
                        Out::Min(i) => format!("min({})", col(i)),
                        Out::Max(i) => format!("max({})", col(i)),
                        Out::Avg { sum, count } => {
                            format!("CAST(sum({}) AS {}) / NULLIF(sum({}), 0)", col(sum), cast(sum, true)?, col(count))
                        }
                    };
                    v.push(format!("{e} AS {}", quote(name)));
                }
                v
            }
        };
        let mut values = Vec::with_capacity(rows.max(1));
        for r in 0..rows.max(1) {
            let row: Vec<String> = (0..ncols).map(|c| format!("${}", r * ncols + c + 1)).collect();
            values.push(format!("({})", row.join(", ")));
        }
        let mut sql = format!(
            "SELECT {} FROM (VALUES {}) AS pgweir_partial({})",
            select.join(", "),
            values.join(", "),
            (0..ncols).map(col).collect::<Vec<_>>().join(", ")
        );
        if rows == 0 {
            // One row of NULLs keeps the column types; nothing of it is shown.
            sql.push_str(" WHERE false");
        }
        if self.grouped {
            let g: Vec<String> = self.group.iter().map(|&i| col(i)).collect();
            sql.push_str(&format!(" GROUP BY {}", g.join(", ")));
        }
        if !self.order.is_empty() {
            let mut keys = Vec::new();
            for (k, dir) in &self.order {
                let pos = match k {
                    OrderKey::Position(p) => *p,
                    OrderKey::Name(n) => names.iter().position(|x| x == n).map(|i| i + 1).ok_or_else(|| {
                        RouteError::Unsupported(format!("ORDER BY {n}: no such column in the result"))
                    })?,
                };
                keys.push(format!("{pos} {}", dir.sql()));
            }
            sql.push_str(&format!(" ORDER BY {}", keys.join(", ")));
        }
        if let Some(l) = self.limit {
            sql.push_str(&format!(" LIMIT {l}"));
        }
        if self.offset > 0 {
            sql.push_str(&format!(" OFFSET {}", self.offset));
        }
        Ok(sql)
    }
}
