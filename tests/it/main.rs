//! Integration tests: real PostgreSQL clusters and real clients (tokio-postgres, psql, pgbench)
//! through a real proxy. Each test starts its own cluster, so tests run in parallel.

mod harness;
mod raw;
mod support;

mod admin;
mod auth;
mod bench;
mod cache;
mod cli;
pub(crate) mod drain;
pub(crate) mod drivers;
mod faults;
mod logs;
mod long;
mod metrics;
mod packaging;
mod pooling;
mod prepared;
mod protocol;
mod routing;
mod session_state;
mod sharding;
mod tls;
