//! The console's SHOW tables over the proxy's live state: clients, config, databases, pools,
//! replicas, stats, cache and pins.

use std::sync::atomic::Ordering::Relaxed;

use super::table::{Table, INT8, SOCKET_COLUMNS, TEXT};
use crate::session::Context;

pub(super) fn clients(ctx: &Context) -> Table {
    let mut t = Table::new(&[&SOCKET_COLUMNS[..], &[("id", INT8)]].concat());
    for (id, slot) in ctx.cancels.clients() {
        let info = slot.info.lock().unwrap_or_else(|p| p.into_inner());
        let Some(i) = info.as_ref() else { continue };
        let state = match slot.state.load(Relaxed) {
            1 => "waiting",
            2 => "active",
            _ => "idle",
        };
        let since = i.connected.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let connect_time = format!("{since}");
        t.row(vec![
            "C".into(),
            i.user.clone(),
            i.database.clone(),
            state.into(),
            i.peer.ip().to_string(),
            i.peer.port().to_string(),
            i.local.map(|a| a.ip().to_string()).unwrap_or_default(),
            i.local.map(|a| a.port().to_string()).unwrap_or_else(|| "0".into()),
            connect_time.clone(),
            connect_time,
            "0".into(),
            "0".into(),
            "0".into(),
            format!("{id:x}"),
            String::new(),
            id.to_string(),
            if i.tls { "TLS" } else { "" }.into(),
            i.application_name.clone(),
            id.to_string(),
        ]);
    }
    t
}

pub(super) fn mode(m: crate::config::PoolMode) -> String {
    match m {
        crate::config::PoolMode::Session => "session".into(),
        crate::config::PoolMode::Transaction => "transaction".into(),
    }
}

pub(super) fn config(ctx: &Context) -> Table {
    let live = ctx.live_config();
    let c = &*live;
    let mut t = Table::new(&[("key", TEXT), ("value", TEXT), ("default", TEXT), ("changeable", TEXT)]);
    let listen: Vec<String> = c.listen.iter().map(|a| a.to_string()).collect();
    let rows: Vec<(&str, String, &str)> = vec![
        ("listen", listen.join(","), "127.0.0.1:6432"),
        ("auth", format!("{:?}", c.auth).to_ascii_lowercase(), "scramsha256"),
        ("pool_mode", mode(c.pool.mode), "transaction"),
        ("default_pool_size", c.pool.size.to_string(), "20"),
        ("min_pool_size", c.pool.min_idle.to_string(), "0"),
        ("max_client_conn", c.pool.max_client_connections.to_string(), "10000"),
        ("query_wait_timeout", c.pool.wait_timeout.as_secs().to_string(), "120"),
        ("server_idle_timeout", c.pool.idle_timeout.as_secs().to_string(), "600"),
        ("server_lifetime", c.pool.lifetime.as_secs().to_string(), "3600"),
        ("server_connect_timeout", c.pool.connect_timeout.as_secs().to_string(), "5"),
        ("max_prepared_statements", c.prepared.server_cache_size.to_string(), "256"),
        ("max_message_size", c.max_message_size.to_string(), "1073741824"),
        ("admin_users", c.admin_users.join(","), ""),
    ];
    for (k, v, d) in rows {
        t.row(vec![k.to_string(), v, d.to_string(), "no".to_string()]);
    }
    t
}

pub(super) fn databases(ctx: &Context) -> Table {
    let live = ctx.live_config();
    let c = &*live;
    let mut t = Table::new(&[
        ("name", TEXT),
        ("host", TEXT),
        ("port", INT8),
        ("database", TEXT),
        ("force_user", TEXT),
        ("pool_size", INT8),
        ("min_pool_size", INT8),
        ("reserve_pool", INT8),
        ("pool_mode", TEXT),
        ("max_connections", INT8),
        ("current_connections", INT8),
        ("paused", INT8),
        ("disabled", INT8),
    ]);
    let current = |db: &str| -> usize {
        ctx.pools
            .all()
            .iter()
            .filter(|p| {
                p.name
                    .split('/')
                    .next()
                    .is_some_and(|k| k == db || k.starts_with(&format!("{db}#")) || k.starts_with(&format!("{db}@")))
            })
            .map(|p| p.status().size)
            .sum()
    };
    let mut names: Vec<(String, crate::config::Database)> =
        c.databases.iter().map(|(n, d)| (n.clone(), d.clone())).collect();
    // Every other name goes to the default cluster under its own name.
    let other = crate::config::Database {
        cluster: c.default_cluster.clone(),
        dbname: None,
        pool_size: None,
        pool_mode: None,
        layout: None,
    };
    names.push(("*".into(), other));
    for (name, d) in names {
        let (dbname, size, pool_mode) = (d.dbname, d.pool_size, d.pool_mode);
        let Some(cl) = c.cluster(&d.cluster) else { continue };
        t.row(vec![
            name.clone(),
            cl.primary.host.clone(),
            cl.primary.port.to_string(),
            dbname.or(cl.primary.dbname.clone()).unwrap_or_else(|| name.clone()),
            String::new(),
            size.unwrap_or(c.pool.size).to_string(),
            c.pool.min_idle.to_string(),
            "0".into(),
            mode(pool_mode.unwrap_or(c.pool.mode)),
            "0".into(),
            current(&name).to_string(),
            "0".into(),
            "0".into(),
        ]);
    }
    t
}

pub(super) fn pools(ctx: &Context) -> Table {
    let mut t = Table::new(&[
        ("database", TEXT),
        ("user", TEXT),
        ("cl_active", INT8),
        ("cl_waiting", INT8),
        ("cl_active_cancel_req", INT8),
        ("cl_waiting_cancel_req", INT8),
        ("sv_active", INT8),
        ("sv_active_cancel", INT8),
        ("sv_being_canceled", INT8),
        ("sv_idle", INT8),
        ("sv_used", INT8),
        ("sv_tested", INT8),
        ("sv_login", INT8),
        ("maxwait", INT8),
        ("maxwait_us", INT8),
        ("pool_mode", TEXT),
        ("pool_size", INT8),
    ]);
    let mut pools = ctx.pools.all();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    for p in pools {
        let (db, user) = p.name.rsplit_once('/').unwrap_or((&p.name, ""));
        let s = p.status();
        let idle = s.available;
        let z = || "0".to_string();
        t.row(vec![
            db.to_string(),
            user.to_string(),
            p.clients_active.load(Relaxed).max(0).to_string(),
            p.clients_waiting.load(Relaxed).max(0).to_string(),
            z(),
            z(),
            s.size.saturating_sub(idle).to_string(),
            z(),
            z(),
            idle.to_string(),
            z(),
            z(),
            z(),
            z(),
            z(),
            mode(p.mode),
            p.max_size().to_string(),
        ]);
    }
    t
}

pub(super) fn replicas(ctx: &Context) -> Table {
    let mut t = Table::new(&[
        ("cluster", TEXT),
        ("replica", INT8),
        ("host", TEXT),
        ("port", INT8),
        ("healthy", TEXT),
        ("replay_lsn", TEXT),
        ("lag_bytes", INT8),
        ("lag_ms", INT8),
        ("outstanding", INT8),
    ]);
    for (name, top) in ctx.clusters.topologies() {
        let Some(state) = ctx.clusters.get(&name) else { continue };
        let cluster = &state.config;
        let primary = top.primary_lsn.load(Relaxed);
        for (i, r) in top.replicas.iter().enumerate() {
            let ep = cluster.replicas.get(i);
            let replay = r.replay_lsn.load(Relaxed);
            t.row(vec![
                name.clone(),
                i.to_string(),
                ep.map(|e| e.host.clone()).unwrap_or_default(),
                ep.map(|e| e.port.to_string()).unwrap_or_default(),
                if r.healthy.load(Relaxed) { "yes" } else { "no" }.to_string(),
                crate::pool::topology::format_lsn(replay),
                primary.saturating_sub(replay).to_string(),
                r.lag_ms.load(Relaxed).to_string(),
                r.outstanding.load(Relaxed).to_string(),
            ]);
        }
    }
    t
}

/// PgBouncer's SHOW STATS, per client database (totals since start; averages per second since
/// start). Bytes are not counted (0).
pub(super) fn stats(ctx: &Context) -> Table {
    let mut t = Table::new(&[
        ("database", TEXT),
        ("total_xact_count", INT8),
        ("total_query_count", INT8),
        ("total_received", INT8),
        ("total_sent", INT8),
        ("total_xact_time", INT8),
        ("total_query_time", INT8),
        ("total_wait_time", INT8),
        ("avg_xact_count", INT8),
        ("avg_query_count", INT8),
        ("avg_recv", INT8),
        ("avg_sent", INT8),
        ("avg_xact_time", INT8),
        ("avg_query_time", INT8),
        ("avg_wait_time", INT8),
    ]);
    let mut by_db: std::collections::BTreeMap<String, [u64; 4]> = Default::default();
    for p in ctx.pools.all() {
        let key = p.name.rsplit_once('/').map_or(p.name.as_str(), |(k, _)| k);
        let db = key.split(['#', '@']).next().unwrap_or(key).to_string();
        let s = &p.stats;
        let e = by_db.entry(db).or_default();
        e[0] += s.xacts.load(Relaxed);
        e[1] += s.queries.load(Relaxed);
        e[2] += s.xact_us.load(Relaxed);
        e[3] += s.wait_us.load(Relaxed);
    }
    let secs = ctx.started.elapsed().as_secs().max(1);
    for (db, [xacts, queries, xact_us, wait_us]) in by_db {
        let per = |n: u64, d: u64| n.checked_div(d).unwrap_or(0);
        t.row(vec![
            db,
            xacts.to_string(),
            queries.to_string(),
            "0".into(),
            "0".into(),
            xact_us.to_string(),
            xact_us.to_string(),
            wait_us.to_string(),
            per(xacts, secs).to_string(),
            per(queries, secs).to_string(),
            "0".into(),
            "0".into(),
            per(xact_us, xacts).to_string(),
            per(xact_us, queries).to_string(),
            per(wait_us, xacts).to_string(),
        ]);
    }
    t
}

/// The result cache per rule, then refusals by reason (rule column empty).
pub(super) fn cache(ctx: &Context) -> Table {
    let mut t = Table::new(&[
        ("rule", TEXT),
        ("hits", INT8),
        ("misses", INT8),
        ("served_bytes", INT8),
        ("stored_bytes", INT8),
        ("refusal", TEXT),
        ("refusals", INT8),
    ]);
    let m = &ctx.metrics.cache;
    for (name, hits, misses, served, stored) in m.rows() {
        t.row(vec![
            name,
            hits.to_string(),
            misses.to_string(),
            served.to_string(),
            stored.to_string(),
            String::new(),
            "0".into(),
        ]);
    }
    for (reason, n) in m.refusal_counts() {
        t.row(vec![String::new(), "0".into(), "0".into(), "0".into(), "0".into(), reason.to_string(), n.to_string()]);
    }
    t
}

/// Pinned clients per pool now (pins by reason over time: `pgweir_pins_total`).
pub(super) fn pins(ctx: &Context) -> Table {
    let mut t = Table::new(&[("pool", TEXT), ("pinned_now", INT8), ("max_pinned", INT8)]);
    let mut pools = ctx.pools.all();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    for p in pools {
        t.row(vec![p.name.clone(), p.pinned().to_string(), p.max_pinned.to_string()]);
    }
    t
}
