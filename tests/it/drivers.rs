//! Real drivers through transaction mode: Python's psycopg 3 (server-side prepares from the
//! first execution) and asyncpg (statement cache, Parse/Describe/Flush). The test command
//! installs them into a venv (`scripts/test.sh`); `PGWEIR_PYTHON` names its interpreter.

use std::path::PathBuf;
use std::process::Command;

use crate::harness::pg::{PgCluster, PgOptions};
use crate::support::start_proxy;

pub(crate) fn python() -> PathBuf {
    let p = std::env::var_os("PGWEIR_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python"));
    let ok =
        Command::new(&p).args(["-c", "import psycopg, asyncpg, yaml"]).status().map(|s| s.success()).unwrap_or(false);
    assert!(
        ok,
        "{} lacks psycopg/asyncpg/PyYAML: run scripts/test.sh (it builds the venv) or set PGWEIR_PYTHON",
        p.display()
    );
    p
}

fn run_driver(script: &str) {
    let pg = PgCluster::start(PgOptions::default());
    pg.psql(
        "app",
        "app_db",
        "create table kv(k int primary key, v text); insert into kv select g, 'v' || g from generate_series(1, 100) g",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let proxy = rt.block_on(start_proxy(&pg, "[proxy]\nauth = \"trust\"\n[pool]\nsize = 2\n"));
    let port = proxy.local_addr().port().to_string();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/drivers").join(script);
    let out =
        Command::new(python()).arg(&path).args(["127.0.0.1", &port, "app", "app_db", "20", "40"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{text}");
    assert!(text.contains("ok 20 clients"), "{text}");
    drop(rt);
}

#[test]
fn psycopg3_server_side_prepares() {
    run_driver("psycopg_prepared.py");
}

#[test]
fn asyncpg_statement_cache_and_flush() {
    run_driver("asyncpg_prepared.py");
}
