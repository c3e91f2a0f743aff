//! RELOAD (admin console) and SIGHUP: the config file is read and checked again; pool sizes
//! (`pool.size`, `databases.NAME.pool_size`, `users.pool_size`), `proxy.admin_users` and
//! `proxy.shutdown_timeout` apply at once without dropping anyone (a pool that shrinks closes
//! connections as they come back); other changes are reported as needing a restart and keep
//! their running values. A file that does not validate changes nothing.

use std::sync::Arc;

use super::Context;
use crate::config::{self, Config};

/// The size a pool of `database` and `user` gets under `c`.
pub fn pool_size(c: &Config, database: &str, user: &str) -> usize {
    c.user(user)
        .and_then(|u| u.pool_size)
        .or(c.databases.get(database).and_then(|d| d.pool_size))
        .unwrap_or(c.pool.size) as usize
}

/// Reloads; Ok: what changed (one line each), Err: why nothing did.
pub fn reload(ctx: &Context) -> Result<Vec<String>, String> {
    let old = ctx.live_config();
    let Some((path, overrides)) = old.origin.clone() else {
        return Err("pgweir was started without a config file: nothing to reload".into());
    };
    let new = config::load(Some(&path), &overrides).map_err(|e| e.to_string())?;
    let mut notes = Vec::new();
    let restart = [
        ("proxy.listen", old.listen != new.listen),
        ("proxy.auth", old.auth != new.auth),
        ("tls", old.client_tls != new.client_tls),
        (
            "users",
            old.users
                .iter()
                .map(|u| (&u.name, &u.password, &u.scram_verifier))
                .ne(new.users.iter().map(|u| (&u.name, &u.password, &u.scram_verifier))),
        ),
        ("clusters", old.clusters != new.clusters),
        ("routing", old.routing != new.routing),
        ("cache", old.cache != new.cache),
        ("metrics", old.metrics_listen != new.metrics_listen),
        ("pool.mode", old.pool.mode != new.pool.mode),
    ];
    for (what, changed) in restart {
        if changed {
            notes.push(format!("{what} changed: takes effect after a restart"));
        }
    }
    for pool in ctx.pools.all() {
        let (key, user) = pool.name.rsplit_once('/').unwrap_or((&pool.name, ""));
        let database = key.split(['#', '@']).next().unwrap_or(key);
        let size = pool_size(&new, database, user);
        if size != pool.max_size() {
            notes.push(format!("pool {}: size {} -> {size}", pool.name, pool.max_size()));
            pool.resize(size);
        }
    }
    *ctx.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
    tracing::info!(changes = ?notes, "configuration reloaded");
    Ok(notes)
}
