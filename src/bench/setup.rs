//! Everything `pgweir bench` does on the upstream outside the measured loop: connecting,
//! `--init` (pgbench's tables and rows, generated on the server), checking that the built-in
//! workloads' tables exist, finding the scale, and counting the server's client backends while
//! a step runs. It must never touch tables other than pgbench's four, and only with `--init`.

use std::time::Duration;

use tokio_postgres::{Client, Config, NoTls};

use super::workload::{ACCOUNTS_PER_SCALE, TELLERS_PER_SCALE};
use super::BenchError;

/// Client backends of the current database other than the one asking.
pub const SERVER_CONNECTIONS_SQL: &str = "select count(*) from pg_stat_activity where backend_type = 'client backend' \
     and datname = current_database() and pid <> pg_backend_pid()";

const TABLES: [&str; 4] = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"];

/// `host:port/dbname as user` for messages.
pub fn describe_config(cfg: &Config) -> String {
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "?".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let user = cfg.get_user().unwrap_or("postgres");
    let db = cfg.get_dbname().unwrap_or(user);
    format!("{host}:{port}/{db} as {user}")
}

/// An error's text: `SQLSTATE: message` for server errors, else the whole chain.
pub fn describe_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                let more = s.to_string();
                if !text.contains(&more) {
                    text.push_str(": ");
                    text.push_str(&more);
                }
                source = s.source();
            }
            text
        }
    }
}

/// Opens a connection (its driver runs on a spawned task until the client is dropped).
pub async fn connect(cfg: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Connects to a target for setup, as a [`BenchError::Connect`] on failure.
pub async fn connect_for(target: &str, cfg: &Config) -> Result<Client, BenchError> {
    connect(cfg).await.map_err(|e| BenchError::Connect {
        target: target.to_string(),
        addr: describe_config(cfg),
        reason: describe_error(&e),
    })
}

/// The statements of `pgbench -i -s scale` with server-side generation (`-I dtGvp`).
pub fn init_statements(scale: u32) -> Vec<String> {
    let s = i64::from(scale);
    vec![
        format!("DROP TABLE IF EXISTS {}", TABLES.join(", ")),
        "CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22))".into(),
        "CREATE TABLE pgbench_tellers (tid int NOT NULL, bid int, tbalance int, filler char(84)) WITH (fillfactor = 100)"
            .into(),
        "CREATE TABLE pgbench_accounts (aid int NOT NULL, bid int, abalance int, filler char(84)) WITH (fillfactor = 100)"
            .into(),
        "CREATE TABLE pgbench_branches (bid int NOT NULL, bbalance int, filler char(88)) WITH (fillfactor = 100)".into(),
        format!("INSERT INTO pgbench_branches (bid, bbalance) SELECT bid, 0 FROM generate_series(1, {s}) AS bid"),
        format!(
            "INSERT INTO pgbench_tellers (tid, bid, tbalance) SELECT tid, (tid - 1) / {TELLERS_PER_SCALE} + 1, 0 \
             FROM generate_series(1, {}) AS tid",
            TELLERS_PER_SCALE * s
        ),
        format!(
            "INSERT INTO pgbench_accounts (aid, bid, abalance, filler) SELECT aid, (aid - 1) / {ACCOUNTS_PER_SCALE} + 1, 0, '' \
             FROM generate_series(1, {}) AS aid",
            ACCOUNTS_PER_SCALE * s
        ),
        format!("VACUUM ANALYZE {}", TABLES.join(", ")),
        "ALTER TABLE pgbench_branches ADD PRIMARY KEY (bid)".into(),
        "ALTER TABLE pgbench_tellers ADD PRIMARY KEY (tid)".into(),
        "ALTER TABLE pgbench_accounts ADD PRIMARY KEY (aid)".into(),
    ]
}

/// Creates and fills the pgbench tables (each statement on its own: VACUUM cannot run in a
/// transaction block).
pub async fn init(client: &Client, scale: u32) -> Result<(), BenchError> {
    for sql in init_statements(scale) {
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| BenchError::Init { statement: sql.clone(), reason: describe_error(&e) })?;
    }
    Ok(())
}

/// Rows in pgbench_branches (pgbench's scale), or `None` if the table does not exist.
pub async fn branches(client: &Client) -> Result<Option<u32>, BenchError> {
    let setup =
        |e: tokio_postgres::Error| BenchError::Setup(format!("reading pgbench_branches: {}", describe_error(&e)));
    let exists: bool =
        client.query_one("select to_regclass('pgbench_branches') is not null", &[]).await.map_err(setup)?.get(0);
    if !exists {
        return Ok(None);
    }
    let n: i64 = client.query_one("select count(*) from pgbench_branches", &[]).await.map_err(setup)?.get(0);
    Ok(Some(u32::try_from(n).unwrap_or(u32::MAX)))
}

/// Fails with a sentence naming the missing pgbench tables, if any.
pub async fn check_tables(client: &Client, db: &str) -> Result<(), BenchError> {
    let rows = client
        .query("select t from unnest($1::text[]) as t where to_regclass(t) is null", &[&TABLES.to_vec()])
        .await
        .map_err(|e| BenchError::Setup(format!("looking for the pgbench tables: {}", describe_error(&e))))?;
    let missing: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(BenchError::Setup(format!(
        "the built-in workloads need the pgbench tables, and database {db:?} has no {}: run with --init \
         (or pgbench -i -s SCALE) first",
        missing.join(", ")
    )))
}

/// Client backends on the upstream's database now (excluding this connection's own).
pub async fn server_connections(client: &Client) -> Result<i64, tokio_postgres::Error> {
    Ok(client.query_one(SERVER_CONNECTIONS_SQL, &[]).await?.get(0))
}

/// Waits (up to `timeout`) until the upstream has at most `baseline` client backends, so a
/// step does not count the previous step's connections that are still closing.
pub async fn wait_quiet(client: &Client, baseline: i64, timeout: Duration) {
    let end = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < end {
        match server_connections(client).await {
            Ok(n) if n > baseline => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_generates_scaled_rows_and_keys() {
        let s = init_statements(3);
        assert!(s[0].starts_with("DROP TABLE IF EXISTS pgbench_accounts"));
        assert!(s.iter().any(|q| q.contains("generate_series(1, 300000) AS aid")));
        assert!(s.iter().any(|q| q.contains("generate_series(1, 30) AS tid")));
        assert!(s.iter().any(|q| q.contains("generate_series(1, 3) AS bid")));
        assert!(s.last().unwrap().ends_with("ADD PRIMARY KEY (aid)"));
        let creates = s.iter().filter(|q| q.starts_with("CREATE TABLE")).count();
        assert_eq!(creates, 4);
    }

    #[test]
    fn describes_configs_without_passwords() {
        let cfg: Config = "postgres://app:secret@db:5433/shop".parse().unwrap();
        assert_eq!(describe_config(&cfg), "db:5433/shop as app");
    }
}
