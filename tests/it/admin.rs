//! The admin console through psql: who may use it, each SHOW command's columns (PgBouncer's
//! names where the concept matches), and SHOW POOLS following a client that holds a server.

use std::process::Command;

use crate::harness::pg::{PgCluster, PgOptions};
use crate::support::{connect, start_proxy};

/// psql's unaligned output with the header line: (exit ok, stdout, stderr).
fn psql(pg: &PgCluster, port: u16, user: &str, sql: &str) -> (bool, String, String) {
    let out = Command::new(pg.bin("psql"))
        .args(["-X", "-A", "-q", "-F", "|", "-P", "footer=off", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user, "-d", "pgweir", "-c", sql])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn columns(out: &str) -> Vec<String> {
    out.lines().next().unwrap_or("").split('|').map(str::to_string).collect()
}

/// The rows as maps from column name to value.
fn rows(out: &str) -> Vec<std::collections::HashMap<String, String>> {
    let cols = columns(out);
    out.lines().skip(1).map(|l| cols.iter().cloned().zip(l.split('|').map(str::to_string)).collect()).collect()
}

/// PgBouncer's SHOW SERVERS columns (1.18, with 1.21's prepared_statements), then the connection id.
const SERVER_COLUMNS: &[&str] = &[
    "type",
    "user",
    "database",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    "prepared_statements",
    "id",
];

const QUERY_COLUMNS: &[&str] = &[
    "fingerprint",
    "calls",
    "total_ms",
    "mean_ms",
    "max_ms",
    "route",
    "primary",
    "replica",
    "cache",
    "shard",
    "query",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_console_answers_show_commands_for_admins_only() {
    let pg = PgCluster::start(PgOptions::default());
    let toml = "[proxy]\nauth = \"trust\"\nadmin_users = [\"postgres\"]\n[pool]\nsize = 3\n";
    let proxy = start_proxy(&pg, toml).await;
    let port = proxy.local_addr().port();

    let expect: &[(&str, &[&str])] = &[
        ("SHOW VERSION", &["version"]),
        ("SHOW CONFIG", &["key", "value", "default", "changeable"]),
        (
            "SHOW DATABASES",
            &[
                "name",
                "host",
                "port",
                "database",
                "force_user",
                "pool_size",
                "min_pool_size",
                "reserve_pool",
                "pool_mode",
                "max_connections",
                "current_connections",
                "paused",
                "disabled",
            ],
        ),
        (
            "SHOW POOLS",
            &[
                "database",
                "user",
                "cl_active",
                "cl_waiting",
                "cl_active_cancel_req",
                "cl_waiting_cancel_req",
                "sv_active",
                "sv_active_cancel",
                "sv_being_canceled",
                "sv_idle",
                "sv_used",
                "sv_tested",
                "sv_login",
                "maxwait",
                "maxwait_us",
                "pool_mode",
                "pool_size",
            ],
        ),
        (
            "SHOW REPLICAS",
            &["cluster", "replica", "host", "port", "healthy", "replay_lsn", "lag_bytes", "lag_ms", "outstanding"],
        ),
        ("show help;", &["command"]),
        (
            "SHOW STATS",
            &[
                "database",
                "total_xact_count",
                "total_query_count",
                "total_received",
                "total_sent",
                "total_xact_time",
                "total_query_time",
                "total_wait_time",
                "avg_xact_count",
                "avg_query_count",
                "avg_recv",
                "avg_sent",
                "avg_xact_time",
                "avg_query_time",
                "avg_wait_time",
            ],
        ),
        ("SHOW CACHE", &["rule", "hits", "misses", "served_bytes", "stored_bytes", "refusal", "refusals"]),
        ("SHOW PINS", &["pool", "pinned_now", "max_pinned"]),
        ("SHOW SERVERS", SERVER_COLUMNS),
        ("SHOW QUERIES", QUERY_COLUMNS),
    ];
    for (cmd, cols) in expect {
        let pg = &pg;
        let (ok, out, err) = tokio::task::block_in_place(|| psql(pg, port, "postgres", cmd));
        assert!(ok, "{cmd}: {err}");
        assert_eq!(columns(&out), *cols, "{cmd}");
    }
    let (_, out, _) = tokio::task::block_in_place(|| psql(&pg, port, "postgres", "SHOW VERSION"));
    assert!(out.contains("PgWeir "), "{out}");

    // A client holding a server shows in SHOW POOLS.
    let c = connect(proxy.local_addr(), "app", None, "postgres").await;
    c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let (_, out, _) = tokio::task::block_in_place(|| psql(&pg, port, "postgres", "SHOW POOLS"));
    let row = rows(&out).into_iter().find(|r| r["database"] == "postgres" && r["user"] == "app").expect("app's pool");
    assert_eq!((row["cl_active"].as_str(), row["sv_active"].as_str()), ("1", "1"), "{out}");
    assert_eq!(row["pool_mode"], "transaction");
    c.batch_execute("COMMIT").await.unwrap();
    let (_, out, _) = tokio::task::block_in_place(|| psql(&pg, port, "postgres", "SHOW STATS"));
    let row = rows(&out).into_iter().find(|r| r["database"] == "postgres").expect("stats for postgres");
    assert!(row["total_xact_count"].parse::<u64>().unwrap() >= 1, "{out}");
    assert!(row["total_query_count"].parse::<u64>().unwrap() >= 2, "{out}");
    let (_, out, _) = tokio::task::block_in_place(|| psql(&pg, port, "postgres", "SHOW POOLS"));
    let row = rows(&out).into_iter().find(|r| r["database"] == "postgres" && r["user"] == "app").expect("app's pool");
    assert_eq!((row["sv_active"].as_str(), row["sv_idle"].as_str()), ("0", "1"), "{out}");

    // PAUSE holds new transactions back until RESUME; the one in progress may finish.
    let (ok, _, err) = tokio::task::block_in_place(|| psql(&pg, port, "postgres", "PAUSE postgres"));
    assert!(ok, "{err}");
    let held = tokio::spawn(async move { crate::support::scalar(&c, "select 'ran'").await.map(|v| (v, c)) });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "a transaction started while paused");
    let (ok, _, err) = tokio::task::block_in_place(|| psql(&pg, port, "postgres", "RESUME postgres"));
    assert!(ok, "{err}");
    let (v, _c) =
        tokio::time::timeout(std::time::Duration::from_secs(5), held).await.expect("resumed").unwrap().unwrap();
    assert_eq!(v, "ran");

    // SHOW CLIENTS lists a client by its application_name; KILL ends it.
    let mut cfg = crate::support::client_config(proxy.local_addr(), "app", None, "postgres");
    cfg.application_name("victim");
    let (victim, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    let conn = tokio::spawn(conn);
    let (_, out, _) = tokio::task::block_in_place(|| psql(&pg, port, "postgres", "SHOW CLIENTS"));
    let cols = columns(&out);
    for want in ["type", "user", "database", "state", "addr", "port", "connect_time", "application_name", "id"] {
        assert!(cols.iter().any(|c| c == want), "SHOW CLIENTS lacks {want}: {cols:?}");
    }
    let row = rows(&out).into_iter().find(|r| r["application_name"] == "victim").expect("the victim is listed");
    assert_eq!((row["user"].as_str(), row["database"].as_str(), row["state"].as_str()), ("app", "postgres", "idle"));
    let kill = format!("KILL {}", row["id"]);
    let (ok, _, err) = tokio::task::block_in_place(|| psql(&pg, port, "postgres", &kill));
    assert!(ok, "{err}");
    assert!(
        tokio::time::timeout(std::time::Duration::from_secs(5), conn).await.is_ok(),
        "the victim's connection ended"
    );
    assert!(victim.simple_query("select 1").await.is_err());
    let gone = crate::support::eventually(std::time::Duration::from_secs(5), || {
        let (_, out, _) = tokio::task::block_in_place(|| psql(&pg, port, "postgres", "SHOW CLIENTS"));
        !out.contains("victim")
    })
    .await;
    assert!(gone, "the killed session is still listed");

    // Mistakes and strangers.
    let (ok, _, err) = tokio::task::block_in_place(|| psql(&pg, port, "postgres", "SHOW NONSENSE"));
    assert!(!ok && err.contains("unknown command"), "{err}");
    let (ok, _, err) = tokio::task::block_in_place(|| psql(&pg, port, "app", "SHOW POOLS"));
    assert!(!ok && err.contains("may not use the admin console"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_new_pool_size_under_load() {
    let pg = PgCluster::start(PgOptions::default());
    let pgport = pg.port().to_string();
    let init = Command::new(pg.bin("pgbench"))
        .args(["-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p", &pgport, "-U", "postgres", "postgres"])
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgweir.toml");
    let write = |size: u32| {
        let text = format!("[proxy]\nauth = \"trust\"\nadmin_users = [\"postgres\"]\n[pool]\nsize = {size}\n");
        std::fs::write(&file, text).unwrap();
    };
    write(2);
    let overrides = pgweir::config::Overrides {
        listen: vec!["127.0.0.1:0".into()],
        upstream: Some(format!("postgres://127.0.0.1:{pgport}")),
        ..Default::default()
    };
    let cfg = pgweir::config::load(Some(&file), &overrides).unwrap();
    let proxy = pgweir::app::Proxy::start(cfg).await.unwrap();
    let port = proxy.local_addr().port();
    let size_of = |pg: &PgCluster| -> String {
        let (ok, out, err) = psql(pg, port, "postgres", "SHOW POOLS");
        assert!(ok, "{err}");
        rows(&out)
            .into_iter()
            .find(|r| r["database"] == "postgres" && r["user"] == "postgres")
            .map(|r| r["pool_size"].clone())
            .unwrap_or_default()
    };
    let bin = pg.bin("pgbench");
    let bench = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(["-n", "-S", "-c", "8", "-j", "2", "-T", "4", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-U", "postgres", "postgres"])
            .output()
            .unwrap()
    });
    let started = crate::support::eventually(std::time::Duration::from_secs(5), || {
        tokio::task::block_in_place(|| size_of(&pg)) == "2"
    })
    .await;
    assert!(started, "pgbench's pool never appeared");
    write(5);
    let (ok, _, err) = tokio::task::block_in_place(|| psql(&pg, port, "postgres", "RELOAD"));
    assert!(ok, "{err}");
    assert_eq!(tokio::task::block_in_place(|| size_of(&pg)), "5");
    let out = bench.await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("number of failed transactions: 0"), "{text}");
    // A file that does not validate changes nothing.
    std::fs::write(&file, "[pool]\nsize = 0\n").unwrap();
    let (ok, _, err) = tokio::task::block_in_place(|| psql(&pg, port, "postgres", "RELOAD"));
    assert!(!ok && err.contains("reload failed"), "{err}");
    assert_eq!(tokio::task::block_in_place(|| size_of(&pg)), "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_servers_and_show_queries_follow_the_traffic() {
    let pg = PgCluster::start(PgOptions::default());
    let toml = "[proxy]\nauth = \"trust\"\nadmin_users = [\"postgres\"]\n[pool]\nsize = 3\n";
    let proxy = start_proxy(&pg, toml).await;
    let port = proxy.local_addr().port();
    let show = |cmd: &str| {
        let (ok, out, err) = tokio::task::block_in_place(|| psql(&pg, port, "postgres", cmd));
        assert!(ok, "{cmd}: {err}");
        out
    };

    // A client inside a transaction holds a server: SHOW SERVERS says so, with the backend's
    // pid and the client it is linked to.
    let mut cfg = crate::support::client_config(proxy.local_addr(), "app", None, "postgres");
    cfg.application_name("holder");
    let (c, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    c.batch_execute("BEGIN").await.unwrap();
    let pid = crate::support::scalar(&c, "select pg_backend_pid()").await.unwrap();
    let out = show("SHOW SERVERS");
    assert_eq!(columns(&out), SERVER_COLUMNS);
    let servers = rows(&out);
    let row = servers.iter().find(|r| r["remote_pid"] == pid).unwrap_or_else(|| panic!("backend {pid}: {out}"));
    assert_eq!((row["type"].as_str(), row["user"].as_str(), row["database"].as_str()), ("S", "app", "postgres"));
    assert_eq!(row["state"], "active", "{out}");
    assert_eq!(row["addr"], "127.0.0.1");
    assert_eq!(row["port"], pg.port().to_string());
    let clients = rows(&show("SHOW CLIENTS"));
    let holder = clients.iter().find(|r| r["application_name"] == "holder").expect("the holder is listed");
    assert_eq!(row["link"], holder["ptr"], "linked to the client holding it");
    c.batch_execute("COMMIT").await.unwrap();
    // The server goes back to its pool just after the answer reaches the client.
    let returned = crate::support::eventually(std::time::Duration::from_secs(5), || {
        let servers = rows(&show("SHOW SERVERS"));
        let row = servers.iter().find(|r| r["remote_pid"] == pid).expect("the connection stays pooled");
        (row["state"].as_str(), row["link"].as_str()) == ("idle", "")
    })
    .await;
    assert!(returned, "not idle after COMMIT: {}", show("SHOW SERVERS"));

    // SHOW QUERIES: statements by shape, literals never shown; simple and extended protocol.
    for n in 1..=3 {
        c.simple_query(&format!("SELECT {n} + 40 AS answer")).await.unwrap();
    }
    for n in 0..2i32 {
        c.query("select $1::int + 7 as seven", &[&n]).await.unwrap();
    }
    c.batch_execute("select pg_sleep(0.05)").await.unwrap();
    // Pipelined requests count each by itself.
    let (a, b) = tokio::join!(c.query("select 1 as piped_first", &[]), c.query("select 2 as piped_second", &[]));
    a.unwrap();
    b.unwrap();
    let out = show("SHOW QUERIES");
    assert_eq!(columns(&out), QUERY_COLUMNS);
    let qs = rows(&out);
    let by_text = |t: &str| qs.iter().find(|r| r["query"] == t).unwrap_or_else(|| panic!("no \"{t}\" in {out}"));
    let simple = by_text("SELECT ? + ? AS answer");
    assert_eq!((simple["calls"].as_str(), simple["route"].as_str(), simple["primary"].as_str()), ("3", "primary", "3"));
    let fp = u64::from_str_radix(&simple["fingerprint"], 16).expect("16 hex digits");
    assert_eq!(fp, pgweir::route::classify::fingerprint("select 9 + 9 as answer"), "the cache rules' fingerprint");
    let ext = by_text("select $1::int + ? as seven");
    assert_eq!(ext["calls"], "2", "executions counted, not the prepare: {out}");
    let slow = by_text("select pg_sleep(?)");
    assert!(slow["mean_ms"].parse::<f64>().unwrap() >= 50.0, "{out}");
    assert!(slow["max_ms"].parse::<f64>().unwrap() >= slow["mean_ms"].parse::<f64>().unwrap());
    assert!(!out.contains("40 AS"), "a literal leaked: {out}");
    assert_eq!(by_text("select ? as piped_first")["calls"], "1", "{out}");
    assert_eq!(by_text("select ? as piped_second")["calls"], "1", "{out}");
    // Ordered by total time: the sleep first.
    assert_eq!(qs[0]["query"], "select pg_sleep(?)", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_moves_a_cluster_to_a_new_primary_between_transactions() {
    let a = PgCluster::start(PgOptions::default());
    let b = PgCluster::start(PgOptions::default());
    for (pg, name) in [(&a, "A"), (&b, "B")] {
        pg.psql(
            "postgres",
            "postgres",
            &format!("create table whoami(name text); insert into whoami values ('{name}')"),
        );
        let init = Command::new(pg.bin("pgbench"))
            .args([
                "-i",
                "-q",
                "-s",
                "1",
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port().to_string(),
                "-U",
                "postgres",
                "postgres",
            ])
            .output()
            .unwrap();
        assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgweir.toml");
    let write = |pg: &PgCluster| {
        let text = format!(
            "[proxy]\nauth = \"trust\"\nadmin_users = [\"postgres\"]\n[pool]\nsize = 4\n\
             [clusters.default]\nprimary = \"postgres://127.0.0.1:{}\"\n",
            pg.port()
        );
        std::fs::write(&file, text).unwrap();
    };
    write(&a);
    let overrides = pgweir::config::Overrides { listen: vec!["127.0.0.1:0".into()], ..Default::default() };
    let proxy = pgweir::app::Proxy::start(pgweir::config::load(Some(&file), &overrides).unwrap()).await.unwrap();
    let port = proxy.local_addr().port();

    // A transaction open on A when the reload happens, and a load running through it.
    let c1 = connect(proxy.local_addr(), "postgres", None, "postgres").await;
    c1.batch_execute("BEGIN").await.unwrap();
    assert_eq!(whoami(&c1).await, "A");
    let bin = a.bin("pgbench");
    let bench = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(["-n", "-S", "-c", "4", "-j", "2", "-T", "3", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-U", "postgres", "postgres"])
            .output()
            .unwrap()
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    write(&b);
    let (ok, _, err) = tokio::task::block_in_place(|| psql(&a, port, "postgres", "RELOAD"));
    assert!(ok, "{err}");

    // The open transaction finishes where it started; the next one runs on B.
    assert_eq!(whoami(&c1).await, "A");
    c1.batch_execute("COMMIT").await.unwrap();
    assert_eq!(whoami(&c1).await, "B", "the session moved at its transaction boundary");
    let c2 = connect(proxy.local_addr(), "postgres", None, "postgres").await;
    assert_eq!(whoami(&c2).await, "B", "a new client goes to the new primary");
    let out = bench.await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("number of failed transactions: 0"), "{text}");

    // Once every session has moved or left, the old pool's connections to A close.
    let count =
        "select count(*) from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()";
    let drained = crate::support::eventually(std::time::Duration::from_secs(10), || {
        a.psql("postgres", "postgres", count).trim() == "0"
    })
    .await;
    assert!(drained, "connections to the old primary remain: {}", a.psql("postgres", "postgres", count));
}

async fn whoami(c: &tokio_postgres::Client) -> String {
    crate::support::scalar(c, "select name from whoami").await.unwrap()
}
