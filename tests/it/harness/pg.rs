//! Throwaway PostgreSQL clusters for integration tests: one cluster per `PgCluster`, each in its
//! own temp dir on its own port, copied from an initdb template cached on disk (built once,
//! race-free across parallel test processes), optionally with TLS and streaming replicas.
//! It must never touch a cluster it did not start, and never leave a server running after drop
//! (including when the test panics).
//!
//! Template contents (roles, databases, pg_hba.conf) are listed on [`PgCluster`]. Bump
//! `TEMPLATE_REV` whenever they change so stale cached templates are not reused.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

use super::tls::{self, TestCa};
use super::{claim_dir, free_port, process_alive, process_cmdline, scratch_dir, sweep_orphans};

/// Part of the template's directory name: bump when the template's setup below changes.
const TEMPLATE_REV: u32 = 2;

/// Name prefix of cluster dirs in [`scratch_dir`].
const CLUSTER_PREFIX: &str = "pgweir-pg-";

/// How many times `start` picks a new port when the chosen one was taken meanwhile.
const PORT_ATTEMPTS: usize = 3;

const TEMPLATE_SQL: &str = "\
SET password_encryption = 'scram-sha-256';
CREATE ROLE scram_user LOGIN PASSWORD 'scram_pass';
CREATE ROLE clear_user LOGIN PASSWORD 'clear_pass';
CREATE ROLE ssl_user LOGIN PASSWORD 'ssl_pass';
CREATE ROLE app LOGIN CREATEDB;
SET password_encryption = 'md5';
CREATE ROLE md5_user LOGIN PASSWORD 'md5_pass';
RESET password_encryption;
GRANT ALL ON SCHEMA public TO PUBLIC;
CREATE DATABASE app_db OWNER app;
\\connect app_db
GRANT ALL ON SCHEMA public TO PUBLIC;
";

const TEMPLATE_HBA: &str = "\
# pgweir test template (harness/pg.rs); order matters
local   all          all                       trust
hostssl all          ssl_user    127.0.0.1/32  scram-sha-256
host    all          ssl_user    127.0.0.1/32  reject
host    all          scram_user  127.0.0.1/32  scram-sha-256
host    all          md5_user    127.0.0.1/32  md5
host    all          clear_user  127.0.0.1/32  password
host    all          all         127.0.0.1/32  trust
host    replication  all         127.0.0.1/32  trust
";

/// Settings for [`PgCluster::start`].
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// `ssl = on` with a fresh CA and a server cert for `localhost` and `127.0.0.1`
    /// (see [`PgCluster::ca_pem`]).
    pub ssl: bool,
    /// Default 100. `superuser_reserved_connections` is lowered to `max_connections - 1` when
    /// `max_connections <= 3` so small values still start (override it with `extra_conf`).
    pub max_connections: u32,
    /// Extra postgresql.conf lines, appended last (so they win), e.g. `"log_statement = 'all'"`.
    pub extra_conf: Vec<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions { ssl: false, max_connections: 100, extra_conf: Vec::new() }
    }
}

/// A running PostgreSQL cluster, stopped (`pg_ctl stop -m immediate`) and deleted on drop.
///
/// Roles (no password unless stated): `postgres` (superuser), `scram_user`/`scram_pass` (SCRAM),
/// `md5_user`/`md5_pass` (MD5-stored, `md5` in hba), `clear_user`/`clear_pass` (`password` in
/// hba), `ssl_user`/`ssl_pass` (SCRAM, TLS only), `app` (CREATEDB, trust). Databases `postgres`
/// and `app_db` (owner `app`); everyone may connect and create in `public` of both. Everyone
/// else over TCP from 127.0.0.1 is `trust`; replication connections are `trust`.
pub struct PgCluster {
    dir: TempDir,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    ca_pem: Option<String>,
    ca_path: Option<PathBuf>,
    running: bool,
}

impl PgCluster {
    /// Starts a fresh cluster. Blocking (fine to call from `#[tokio::test]`); panics with the
    /// server log tail on failure.
    pub fn start(opts: PgOptions) -> PgCluster {
        let env = PgEnv::get();
        sweep_orphans(CLUSTER_PREFIX, stop_orphan);
        let template = ensure_template(env);
        let dir = new_cluster_dir(env);
        let data = dir.path().join("data");
        run_ok(Command::new("cp").arg("-a").arg(&template).arg(&data), "copy the initdb template");

        let (ca_pem, ca_path) = if opts.ssl {
            let ca = TestCa::new();
            let cert = ca.issue(&["localhost", "127.0.0.1"]);
            let (crt, key) = tls::write_files(&data, &cert);
            env.give_to_postgres(&crt);
            env.give_to_postgres(&key);
            let ca_path = dir.path().join("ca.pem");
            tls::write_mode(&ca_path, ca.ca_pem.as_bytes(), 0o644);
            (Some(ca.ca_pem), Some(ca_path))
        } else {
            (None, None)
        };

        let mut block = String::new();
        let mut line = |s: &str| {
            block.push_str(s);
            block.push('\n');
        };
        line("listen_addresses = '127.0.0.1'");
        line(&format!("max_connections = {}", opts.max_connections));
        if opts.max_connections <= 3 {
            line(&format!("superuser_reserved_connections = {}", opts.max_connections.saturating_sub(1)));
        }
        for s in [
            "shared_buffers = 16MB",
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "wal_level = replica",
            "max_wal_senders = 10",
            "hot_standby = on",
            "log_min_messages = warning",
            "logging_collector = off",
        ] {
            line(s);
        }
        if opts.ssl {
            line("ssl = on");
            line("ssl_cert_file = 'server.crt'");
            line("ssl_key_file = 'server.key'");
        } else {
            line("ssl = off");
        }
        for s in &opts.extra_conf {
            line(s);
        }
        let mut cluster =
            PgCluster { log: dir.path().join("server.log"), data, dir, port: 0, ca_pem, ca_path, running: false };
        cluster.boot(&block);
        cluster
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    /// `postgres://user@127.0.0.1:port/db`
    pub fn url(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }

    /// libpq key/value conninfo (`host=127.0.0.1 port=.. user=.. dbname=..`) for psql/pgbench.
    pub fn conninfo(&self, user: &str, db: &str) -> String {
        format!("host=127.0.0.1 port={} user={user} dbname={db}", self.port)
    }

    /// The data directory (owned by `postgres` when the tests run as root).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server log file (`pg_ctl -l`).
    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }

    /// Path of a PostgreSQL program (`psql`, `pgbench`, ...) of the same version as the server.
    pub fn bin(&self, program: &str) -> PathBuf {
        PgEnv::get().bin.join(program)
    }

    /// Runs SQL through psql (`-XAtq -v ON_ERROR_STOP=1`, over TCP, statements fed on stdin so
    /// each runs as its own statement) and returns stdout trimmed. Panics with stderr on failure.
    pub fn psql(&self, user: &str, db: &str, sql: &str) -> String {
        try_psql(&self.conninfo(user, db), sql)
            .unwrap_or_else(|e| panic!("psql as {user} on {db} (port {}) failed for:\n{sql}\n{e}", self.port))
    }

    /// A tokio-postgres config for this cluster (10 s connect timeout), to adjust before
    /// connecting (`.password(..)`, `.application_name(..)`, ...).
    pub fn config(&self, user: &str, db: &str) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1").port(self.port).user(user).dbname(db).connect_timeout(Duration::from_secs(10));
        cfg
    }

    /// A tokio-postgres client (NoTls); its connection task is spawned on the current runtime.
    pub async fn connect(&self, user: &str, db: &str) -> tokio_postgres::Client {
        connect_config(&self.config(user, db)).await
    }

    /// PEM of the CA that signed the server certificate (ssl clusters only).
    pub fn ca_pem(&self) -> Option<String> {
        self.ca_pem.clone()
    }

    /// The CA PEM as a world-readable file (ssl clusters only), e.g. for `sslrootcert=`.
    pub fn ca_path(&self) -> Option<PathBuf> {
        self.ca_path.clone()
    }

    /// Terminates every session whose application_name is `application_name` (as `postgres`,
    /// waiting up to 5 s each for it to exit). Returns how many were terminated.
    pub fn kill_backends(&self, application_name: &str) -> usize {
        let name = application_name.replace('\'', "''");
        let out = self.psql(
            "postgres",
            "postgres",
            &format!(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) \
                 FROM pg_stat_activity \
                 WHERE application_name = '{name}' AND pid <> pg_backend_pid();"
            ),
        );
        out.parse().unwrap_or_else(|_| panic!("kill_backends: unexpected psql output {out:?}"))
    }

    /// Starts a streaming replica of this cluster (pg_basebackup -R -X stream) in its own temp
    /// dir and port; returns once it accepts connections and `pg_is_in_recovery()` is true.
    /// With ssl the replica serves the same certificate (same `ca_pem`).
    pub fn start_replica(&self) -> PgCluster {
        assert!(self.running, "start_replica on a stopped cluster");
        let env = PgEnv::get();
        let dir = new_cluster_dir(env);
        let data = dir.path().join("data");
        run_ok(
            env.command("pg_basebackup")
                .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
                .arg(self.port.to_string())
                .arg("-D")
                .arg(&data)
                .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]),
            "pg_basebackup for a replica",
        );
        let ca_path = self.ca_pem.as_ref().map(|pem| {
            let p = dir.path().join("ca.pem");
            tls::write_mode(&p, pem.as_bytes(), 0o644);
            p
        });
        let mut replica = PgCluster {
            log: dir.path().join("server.log"),
            data,
            dir,
            port: 0,
            ca_pem: self.ca_pem.clone(),
            ca_path,
            running: false,
        };
        replica.boot("hot_standby = on\n");
        replica.wait_for_recovery(true);
        replica
    }

    /// Restarts the server on the same port and data: a clean `pg_ctl stop -m fast` (unlike
    /// `stop`, which is immediate and, with `synchronous_commit = off`, may lose the last commits),
    /// then start. Clients are disconnected. Panics with the log tail on failure.
    pub fn restart(&mut self) {
        if self.running {
            self.running = false;
            stop_postmaster(&self.data, "fast");
        }
        let log_start = fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        if let Err(e) = self.pg_ctl_start(log_start) {
            panic!(
                "restart on port {} failed: {e}\n--- server log tail ---\n{}",
                self.port,
                tail(&self.log, log_start, 40)
            );
        }
    }

    /// Promotes a replica (`pg_ctl promote -w`) and waits until `pg_is_in_recovery()` is false.
    pub fn promote(&self) {
        run_ok(
            PgEnv::get().command("pg_ctl").arg("-D").arg(&self.data).args(["-w", "-t", "60", "promote"]),
            "pg_ctl promote",
        );
        self.wait_for_recovery(false);
    }

    /// Polls until `pg_is_in_recovery()` equals `in_recovery` (30 s deadline).
    fn wait_for_recovery(&self, in_recovery: bool) {
        let want = if in_recovery { "t" } else { "f" };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = try_psql(&self.conninfo("postgres", "postgres"), "SELECT pg_is_in_recovery();");
            if r.as_deref() == Ok(want) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "cluster on port {} never reported pg_is_in_recovery() = {want} (last: {r:?})\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server immediately (`pg_ctl stop -m immediate`). Idempotent; drop calls it.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        stop_postmaster(&self.data, "immediate");
    }

    /// The last 40 lines of the server log.
    pub fn log_tail(&self) -> String {
        tail(&self.log, 0, 40)
    }

    /// Appends `extra` to postgresql.conf (after the template's own settings) with a fresh port
    /// and this cluster's socket dir, then `pg_ctl -W start` and waits for `ready` itself;
    /// retries with a new port when the chosen one was taken meanwhile.
    fn boot(&mut self, extra: &str) {
        let conf_path = self.data.join("postgresql.conf");
        let base_conf = fs::read_to_string(&conf_path).unwrap_or_else(|e| panic!("read {}: {e}", conf_path.display()));
        for attempt in 1..=PORT_ATTEMPTS {
            let port = free_port();
            let conf = format!(
                "{base_conf}\n# --- pgweir test harness ---\nport = {port}\n\
                 unix_socket_directories = '{}'\n{extra}",
                self.dir.path().display()
            );
            fs::write(&conf_path, conf).unwrap_or_else(|e| panic!("write {}: {e}", conf_path.display()));
            let log_start = fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
            let Err(err) = self.pg_ctl_start(log_start) else {
                self.port = port;
                return;
            };
            let log = tail(&self.log, log_start, 40);
            let port_taken = log.contains("could not bind")
                || log.contains("Address already in use")
                || log.contains("could not create any TCP/IP sockets");
            if port_taken && attempt < PORT_ATTEMPTS {
                continue;
            }
            panic!(
                "PostgreSQL failed to start (data dir {}, port {port}, attempt {attempt}): {err}\n\
                 --- server log tail ---\n{log}",
                self.data.display(),
            );
        }
        unreachable!()
    }

    /// `pg_ctl -W start` with the current config, then waits for `ready` (polling every 5 ms;
    /// `pg_ctl -w` polls every 100 ms). On failure no server is left running.
    fn pg_ctl_start(&mut self, log_start: u64) -> Result<(), String> {
        let out = PgEnv::get()
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-W", "start"])
            .stdin(Stdio::null())
            .output()
            .expect("spawn pg_ctl");
        let waited = if out.status.success() {
            wait_ready(&self.data, &self.log, log_start)
        } else {
            Err(format!(
                "pg_ctl start failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        };
        if waited.is_err() && postmaster_pid(&self.data).is_some() {
            // A half-started server must not outlive us.
            stop_postmaster(&self.data, "immediate");
        }
        self.running = waited.is_ok();
        waited
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Connects with `cfg` (NoTls), spawning the connection task; panics if the connection fails.
/// Works for the proxy too: `connect_config(pg.config("app", "app_db").port(proxy_port))`.
pub async fn connect_config(cfg: &tokio_postgres::Config) -> tokio_postgres::Client {
    let (client, conn) =
        cfg.connect(tokio_postgres::NoTls).await.unwrap_or_else(|e| panic!("connect with {cfg:?}: {e}"));
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("harness: tokio-postgres connection ended with error: {e}");
        }
    });
    client
}

/// Runs SQL through psql against any server (a cluster, or the proxy) given a libpq conninfo
/// string, e.g. `"host=127.0.0.1 port=6432 user=scram_user password=scram_pass dbname=postgres"`.
/// `PG*` environment variables are cleared; add `sslmode=...` etc. to the conninfo.
/// Returns stdout trimmed, or stderr (plus stdout) on failure.
pub fn try_psql(conninfo: &str, sql: &str) -> Result<String, String> {
    let env = PgEnv::get();
    let mut cmd = Command::new(env.psql());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-f", "-", "-d"])
        .arg(with_connect_timeout(conninfo))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", env.psql().display()));
    let mut stdin = child.stdin.take().expect("psql stdin");
    let sql = sql.to_string();
    // A writer thread, so big input and big output cannot deadlock on full pipes. psql may exit
    // early (e.g. auth failure) and close stdin: that shows in its exit status.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(sql.as_bytes());
    });
    let out = child.wait_with_output().expect("wait for psql");
    let _ = writer.join();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "psql exited with {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            if stdout.is_empty() { String::new() } else { format!("\nstdout: {stdout}") }
        ))
    }
}

/// Adds `connect_timeout=10` to a key/value conninfo or a URI unless it has one.
fn with_connect_timeout(conninfo: &str) -> String {
    if conninfo.contains("connect_timeout") {
        conninfo.to_string()
    } else if conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://") {
        let sep = if conninfo.contains('?') { '&' } else { '?' };
        format!("{conninfo}{sep}connect_timeout=10")
    } else {
        format!("{conninfo} connect_timeout=10")
    }
}

/// Where the PostgreSQL binaries are, and whom to run them as. Resolved once per process.
struct PgEnv {
    bin: PathBuf,
    major: String,
    uid: u32,
    /// `Some((uid, gid))` of `postgres` when we are root (initdb/postgres refuse to run as root).
    postgres_owner: Option<(u32, u32)>,
}

impl PgEnv {
    fn get() -> &'static PgEnv {
        static ENV: OnceLock<PgEnv> = OnceLock::new();
        ENV.get_or_init(PgEnv::detect)
    }

    fn detect() -> PgEnv {
        let uid = super::current_uid();
        let bin = find_bin_dir();
        let version = command_stdout(Command::new(bin.join("postgres")).arg("--version"))
            .unwrap_or_else(|| panic!("`{}/postgres --version` failed", bin.display()));
        // "postgres (PostgreSQL) 15.14 (Debian ...)"
        let major = version
            .split_whitespace()
            .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
            .and_then(|v| v.split('.').next())
            .unwrap_or_else(|| panic!("cannot parse postgres version from {version:?}"))
            .to_string();
        let postgres_owner = (uid == 0).then(|| {
            let id = |flag: &str| {
                command_stdout(Command::new("id").args([flag, "postgres"]))
                    .and_then(|s| s.parse::<u32>().ok())
                    .expect("running as root but there is no `postgres` user to run PostgreSQL as")
            };
            (id("-u"), id("-g"))
        });
        PgEnv { bin, major, uid, postgres_owner }
    }

    /// A PostgreSQL server-side program, run as `postgres` when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut cmd = if self.postgres_owner.is_some() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        // postgres must be able to stat its cwd; our cwd may not be readable by it.
        cmd.current_dir("/");
        cmd
    }

    fn psql(&self) -> PathBuf {
        let p = self.bin.join("psql");
        if p.exists() {
            p
        } else {
            PathBuf::from("psql")
        }
    }

    /// chown to postgres when running as root (no-op otherwise).
    fn give_to_postgres(&self, path: &Path) {
        if let Some((uid, gid)) = self.postgres_owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown postgres {}: {e}", path.display()));
        }
    }
}

fn find_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PGWEIR_PG_BIN") {
        let dir = PathBuf::from(dir);
        assert!(dir.join("initdb").exists(), "PGWEIR_PG_BIN={} has no initdb", dir.display());
        return dir;
    }
    if let Some(dir) = command_stdout(Command::new("pg_config").arg("--bindir")) {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
            return dir;
        }
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).expect(
        "no PostgreSQL server binaries: set PGWEIR_PG_BIN, put pg_config on PATH, \
         or install postgresql (expects /usr/lib/postgresql/<major>/bin)",
    )
}

/// A new world-traversable temp dir for one cluster, owned by postgres when we are root.
fn new_cluster_dir(env: &PgEnv) -> TempDir {
    let dir =
        tempfile::Builder::new().prefix(CLUSTER_PREFIX).tempdir_in(scratch_dir()).expect("create cluster temp dir");
    claim_dir(dir.path());
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod cluster temp dir");
    env.give_to_postgres(dir.path());
    dir
}

/// Returns the cached template data dir, building it first if needed. Parallel processes may
/// both build one; each builds in its own staging dir and `rename`s it into place, and the loser
/// uses the winner's.
fn ensure_template(env: &PgEnv) -> PathBuf {
    let name = format!("pgweir-test-template-r{TEMPLATE_REV}-pg{}-uid{}", env.major, env.uid);
    let base = scratch_dir();
    let data = base.join(&name).join("data");
    if data.join("PG_VERSION").exists() {
        return data;
    }
    remove_stale_templates(&base, &name);
    let final_dir = base.join(&name);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let staging = base.join(format!("{name}.building-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&staging).unwrap_or_else(|e| panic!("create {}: {e}", staging.display()));
    fs::set_permissions(&staging, fs::Permissions::from_mode(0o755)).expect("chmod staging");
    env.give_to_postgres(&staging);
    let built = std::panic::catch_unwind(|| build_template(env, &staging));
    if let Err(panic) = built {
        let _ = fs::remove_dir_all(&staging);
        std::panic::resume_unwind(panic);
    }
    match fs::rename(&staging, &final_dir) {
        Ok(()) => {}
        Err(_) if final_dir.join("data").join("PG_VERSION").exists() => {
            // Another process won the race: use its template.
            let _ = fs::remove_dir_all(&staging);
        }
        Err(e) => panic!("rename {} -> {}: {e}", staging.display(), final_dir.display()),
    }
    final_dir.join("data")
}

/// Deletes this uid's templates of older revisions and staging dirs abandoned over 10 minutes
/// ago (a build takes ~1 s), so stale templates do not pile up in tmpfs.
fn remove_stale_templates(base: &Path, name: &str) {
    let Some((_, tail)) = name.split_once("-pg") else {
        return;
    };
    let suffix = format!("-pg{tail}");
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = file.strip_prefix("pgweir-test-template-r") else {
            continue;
        };
        let old_rev = rest
            .split_once('-')
            .and_then(|(rev, _)| rev.parse::<u32>().ok())
            .is_some_and(|rev| rev < TEMPLATE_REV && rest.ends_with(&suffix));
        let abandoned = file.contains(".building-")
            && entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(600));
        if old_rev || abandoned {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn build_template(env: &PgEnv, staging: &Path) {
    let data = staging.join("data");
    let log = staging.join("setup.log");
    run_ok(
        env.command("initdb").arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
            // 1 MB WAL segments: the copied template is 15 MB smaller (faster `start`).
            "--wal-segsize=1",
        ]),
        "initdb for the test template",
    );
    // Boot it once (TCP only, no socket) to create roles and databases.
    let mut port = 0;
    for attempt in 1..=PORT_ATTEMPTS {
        port = free_port();
        let out = env
            .command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(format!(
                "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' \
                 -c fsync=off -c logging_collector=off"
            ))
            .args(["-w", "-t", "60", "start"])
            .stdin(Stdio::null())
            .output()
            .expect("spawn pg_ctl");
        if out.status.success() {
            break;
        }
        if postmaster_pid(&data).is_some() {
            let _ = env.command("pg_ctl").arg("-D").arg(&data).args(["-m", "immediate", "stop"]).output();
        }
        let log_text = tail(&log, 0, 40);
        if attempt == PORT_ATTEMPTS || !log_text.contains("could not bind") {
            panic!("template setup: PostgreSQL failed to start:\n{log_text}");
        }
    }
    let sql = try_psql(&format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"), TEMPLATE_SQL);
    let stopped = env
        .command("pg_ctl")
        .arg("-D")
        .arg(&data)
        .args(["-m", "fast", "-w", "-t", "60", "stop"])
        .stdin(Stdio::null())
        .output();
    if let Err(e) = sql {
        panic!("template setup SQL failed: {e}\n--- log ---\n{}", tail(&log, 0, 40));
    }
    assert!(matches!(&stopped, Ok(o) if o.status.success()), "template setup: pg_ctl stop failed: {stopped:?}");
    let hba = data.join("pg_hba.conf");
    fs::write(&hba, TEMPLATE_HBA).unwrap_or_else(|e| panic!("write {}: {e}", hba.display()));
    env.give_to_postgres(&hba);
    let _ = fs::remove_file(data.join("postmaster.opts"));
    let _ = fs::remove_file(&log);
}

/// Waits (polling every 5 ms) until the postmaster in `data` reports `ready`/`standby` in
/// postmaster.pid, as `pg_ctl -w` does (which polls every 100 ms).
fn wait_ready(data: &Path, log: &Path, log_start: u64) -> Result<(), String> {
    let started = Instant::now();
    loop {
        match fs::read_to_string(data.join("postmaster.pid")) {
            Ok(pidfile) => {
                let lines: Vec<&str> = pidfile.lines().collect();
                let pid = lines.first().and_then(|l| l.trim().parse::<u32>().ok());
                if let Some(status) = lines.get(7) {
                    if matches!(status.trim(), "ready" | "standby") {
                        return Ok(());
                    }
                }
                if let Some(pid) = pid {
                    if !process_alive(pid) {
                        return Err(format!("postmaster {pid} exited during startup"));
                    }
                }
            }
            Err(_) => {
                // Not written yet, or the postmaster already gave up.
                let log_text = tail(log, log_start, 40);
                if log_text.contains("FATAL:") || log_text.contains("PANIC:") {
                    return Err("postmaster exited during startup".into());
                }
                if started.elapsed() > Duration::from_secs(15) {
                    return Err("no postmaster.pid after 15 s".into());
                }
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err("not ready after 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `pg_ctl stop -m <mode>` on `data`, then waits (polling every 2 ms; pg_ctl's own wait polls
/// every 100 ms) until the postmaster has exited; SIGKILLs it if it has not after 30 s.
fn stop_postmaster(data: &Path, mode: &str) {
    let Some(pid) = postmaster_pid(data) else {
        return;
    };
    let out = PgEnv::get()
        .command("pg_ctl")
        .arg("-D")
        .arg(data)
        .args(["-m", mode, "-W", "stop"])
        .stdin(Stdio::null())
        .output();
    let signalled = matches!(&out, Ok(o) if o.status.success());
    let deadline = Instant::now() + Duration::from_secs(if signalled { 30 } else { 0 });
    while process_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    if process_alive(pid) {
        eprintln!("harness: pg_ctl stop did not stop {} ({out:?}); killing postmaster {pid}", data.display());
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
}

/// For [`sweep_orphans`]: stops the postmaster of a cluster dir left by a killed test process,
/// if it is still running (its command line names that data dir: never a reused pid).
fn stop_orphan(dir: &Path) {
    let data = dir.join("data");
    let Some(pid) = postmaster_pid(&data) else {
        return;
    };
    if process_cmdline(pid).is_some_and(|c| c.contains(&*data.to_string_lossy())) {
        eprintln!("harness: stopping orphaned cluster {}", data.display());
        stop_postmaster(&data, "immediate");
    }
}

/// The postmaster's pid from `postmaster.pid`, if the file exists.
fn postmaster_pid(data: &Path) -> Option<u32> {
    fs::read_to_string(data.join("postmaster.pid")).ok()?.lines().next()?.trim().parse().ok()
}

/// Runs a command to completion, panicking with its output if it fails.
fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{what}: cannot spawn {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}): {cmd:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Trimmed stdout of a successful command, else None.
fn command_stdout(cmd: &mut Command) -> Option<String> {
    let out = cmd.stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The last `lines` lines of `path` from byte offset `from` on.
fn tail(path: &Path, from: u64, lines: usize) -> String {
    let Ok(bytes) = fs::read(path) else {
        return format!("(no log at {})", path.display());
    };
    let text = String::from_utf8_lossy(bytes.get(from as usize..).unwrap_or(&[]));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
