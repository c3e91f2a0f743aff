//! PgWeir: a PostgreSQL-wire proxy. One process gives an unchanged application connection
//! pooling and multiplexing (this layer), and is built so read/write splitting, a result cache
//! and shard routing plug into the router without touching the session loop.
//!
//! ```text
//! client ──TCP/TLS──▶ listener (app) ──▶ session (handshake, auth, params, relay)
//!                                           │ request starts
//!                                           ▼
//!                                         pool (per database × user, deadpool)
//!                                           ▼
//!                                         server connection ──▶ PostgreSQL
//! ```
//!
//! Dependencies point down: `app` → `session` → `pool` → `server` → `wire`, `net`, `auth`;
//! `config` is a leaf everyone may read. `wire` and `auth` do no I/O.

pub mod app;
pub mod auth;
pub mod bench;
pub mod cache;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod pool;
#[cfg(any(test, feature = "props"))]
pub mod props;
pub mod route;
pub mod server;
pub mod session;
pub mod shard;
pub mod wire;
