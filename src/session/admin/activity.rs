//! The console's views of what is running: SHOW SERVERS (every open server connection, with
//! PgBouncer's columns) and SHOW QUERIES (top statements by fingerprint).

use super::table::{Table, INT8, SOCKET_COLUMNS, TEXT};
use crate::session::Context;

const FLOAT8: u32 = 701;

pub(super) fn servers(ctx: &Context) -> Table {
    let mut t = Table::new(&[&SOCKET_COLUMNS[..], &[("prepared_statements", INT8), ("id", INT8)]].concat());
    let mut pools = ctx.pools.all();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    for p in pools {
        let (db, user) = p.name.rsplit_once('/').unwrap_or((&p.name, ""));
        for s in p.servers() {
            let connected = s.connected.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            let holder = s.holder();
            t.row(vec![
                "S".into(),
                user.to_string(),
                db.to_string(),
                if holder.is_some() { "active" } else { "idle" }.into(),
                s.peer.map(|a| a.ip().to_string()).unwrap_or_default(),
                s.peer.map_or(0, |a| a.port()).to_string(),
                s.local.map(|a| a.ip().to_string()).unwrap_or_default(),
                s.local.map_or(0, |a| a.port()).to_string(),
                connected.to_string(),
                s.request_time().to_string(),
                "0".into(),
                "0".into(),
                "0".into(),
                format!("{:x}", s.id),
                // The holding client's ptr in SHOW CLIENTS (its id in hex).
                holder.filter(|c| *c > 0).map(|c| format!("{c:x}")).unwrap_or_default(),
                s.remote_pid.to_string(),
                if s.tls { "TLS" } else { "" }.into(),
                String::new(),
                s.prepared().to_string(),
                s.id.to_string(),
            ]);
        }
    }
    t
}

/// Top statements by total time (`metrics.top_queries` kept).
pub(super) fn queries(ctx: &Context) -> Table {
    let mut t = Table::new(&[
        ("fingerprint", TEXT),
        ("calls", INT8),
        ("total_ms", FLOAT8),
        ("mean_ms", FLOAT8),
        ("max_ms", FLOAT8),
        ("route", TEXT),
        ("primary", INT8),
        ("replica", INT8),
        ("cache", INT8),
        ("shard", INT8),
        ("query", TEXT),
    ]);
    for (fp, s) in ctx.metrics.queries.top() {
        let ms = |us: u64| format!("{:.3}", us as f64 / 1000.0);
        let mean = s.total_us.checked_div(s.calls).unwrap_or(0);
        let mut row = vec![format!("{fp:016x}"), s.calls.to_string(), ms(s.total_us), ms(mean), ms(s.max_us)];
        row.push(s.main_route().into());
        row.extend(s.routes.iter().map(u64::to_string));
        row.push(s.text.clone());
        t.row(row);
    }
    t
}
