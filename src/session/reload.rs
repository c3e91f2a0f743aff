//! RELOAD (admin console) and SIGHUP: the config file is read and checked again; pool sizes
//! (`pool.size`, `databases.NAME.pool_size`, `users.pool_size`), `proxy.admin_users` and
//! `proxy.shutdown_timeout` apply at once without dropping anyone (a pool that shrinks closes
//! connections as they come back). Changed clusters (members, TLS) and databases (cluster,
//! server name, sharding) get new pools: the old ones are retired, each session moves to the
//! new ones at its next transaction boundary, and a retired pool closes when its last session
//! has moved or left. Other changes are reported as needing a restart and keep their running
//! values. A file that does not validate changes nothing.

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

/// Where a database's pools connect: what makes them change (its pool size and mode do not).
fn placement(d: &crate::config::Database) -> impl PartialEq + '_ {
    (&d.cluster, &d.dbname, &d.layout)
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
        ("routing", old.routing != new.routing),
        ("cache", old.cache != new.cache),
        (
            "metrics",
            (old.metrics_listen, old.top_queries, old.slow_query)
                != (new.metrics_listen, new.top_queries, new.slow_query),
        ),
        ("pool.mode", old.pool.mode != new.pool.mode),
    ];
    for (what, changed) in restart {
        if changed {
            notes.push(format!("{what} changed: takes effect after a restart"));
        }
    }
    // Logins resolve their pools under the read side: none sees the clusters, pools and
    // config halfway through the change.
    let _changing = ctx.resolving.write().unwrap_or_else(|p| p.into_inner());
    let clusters = ctx.clusters.update(&new).map_err(|e| e.to_string())?;
    let mut databases: Vec<&String> = old.databases.keys().chain(new.databases.keys()).collect();
    databases.sort();
    databases.dedup();
    databases.retain(|d| old.databases.get(*d).map(placement) != new.databases.get(*d).map(placement));
    for c in &clusters {
        notes.push(format!("cluster {c} changed: new pools; sessions move to them between transactions"));
    }
    for d in &databases {
        notes.push(format!("database {d} changed: new pools; sessions move to them between transactions"));
    }
    let mode_changed =
        |d: &String| old.databases.get(d).and_then(|x| x.pool_mode) != new.databases.get(d).and_then(|x| x.pool_mode);
    for d in old.databases.keys().filter(|d| new.databases.contains_key(*d) && mode_changed(d)) {
        notes.push(format!("databases.{d}.pool_mode changed: takes effect after a restart"));
    }
    let retired = ctx.pools.retire(|p| {
        let key = p.name.rsplit_once('/').map_or(p.name.as_str(), |(k, _)| k);
        let database = key.split(['#', '@']).next().unwrap_or(key);
        // A pool of the database's home cluster (no `#cluster` in its key) whose database
        // now lives elsewhere (its entry, or the default cluster, changed).
        let home = new.databases.get(database).map_or(new.default_cluster.as_str(), |d| d.cluster.as_str());
        let moved =
            !key.contains('#') && new.databases.get(database).is_none_or(|d| d.layout.is_none()) && p.cluster != home;
        clusters.contains(&p.cluster) || databases.iter().any(|d| d.as_str() == database) || moved
    });
    if !retired.is_empty() {
        // What the proxy says at login (server_version, ...) may differ on the new servers.
        ctx.welcomes.clear();
        notes.push(format!("retired pools: {}", retired.join(", ")));
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

impl super::relay::Session<'_> {
    /// Before a request that starts on no server: a draining proxy sends the client away
    /// (it reconnects to another process or instance), and a login whose pools RELOAD
    /// retired moves to new ones.
    pub(super) fn between_transactions(&mut self) -> Result<(), crate::wire::PgError> {
        if self.ctx.control.draining.load(std::sync::atomic::Ordering::SeqCst) && self.deferred_begin.is_none() {
            return Err(crate::wire::PgError::fatal(
                crate::wire::SqlState("57P01"),
                "pgweir: terminating connection: the proxy is shutting down",
            )
            .with_hint("reconnect: another PgWeir takes new connections"));
        }
        if self.login.retired() {
            self.follow_reload();
        }
        Ok(())
    }

    /// At a transaction boundary, after RELOAD retired this login's pools: the login is
    /// resolved again under the new configuration (pools, replicas, topology, sharding). A
    /// login the new configuration cannot serve, or one whose pool mode changed, stays on
    /// its old pools until it disconnects.
    pub(super) fn follow_reload(&mut self) {
        if self.server.is_some() || self.counted_pin || self.deferred_begin.is_some() {
            return;
        }
        let l = &self.login;
        let fresh =
            super::handshake::resolve(self.ctx, l.user.clone(), l.database.clone(), l.settings.clone(), l.who.clone());
        match fresh {
            Ok(mut new) if new.mode == l.mode => {
                if let (Some(old), Some(s)) = (&l.shards, new.shards.as_mut()) {
                    s.session_key = old.session_key.clone();
                }
                // Counted again in the new pool's clients (SHOW POOLS).
                let state = self.state;
                self.set_state(None);
                self.login = new;
                self.set_state(state);
                self.proto.route_cache = None;
                tracing::info!("session moved to the reloaded configuration's pools");
            }
            Ok(_) => {
                self.kept_old_pools = true;
                tracing::warn!("pool mode changed by RELOAD: this session keeps its old pools until it ends");
            }
            Err(e) => {
                self.kept_old_pools = true;
                tracing::warn!(error = %e, "RELOAD: this session keeps its old pools until it ends");
            }
        }
    }
}
