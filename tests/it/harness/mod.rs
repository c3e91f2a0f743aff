//! Integration-test harness: throwaway PostgreSQL clusters (`pg`), Redis servers (`redis`) and
//! test certificates (`tls`), each owned by the test that starts it and stopped on drop; plus the
//! small shared pieces they need (free ports, the scratch dir, orphan sweeping).
//! It must never share mutable state between tests (each test may be its own process, all running
//! in parallel): the only things shared are files on disk (the cached initdb template, and dirs
//! that name their owner process so a later test can clean up after a killed one).
#![allow(dead_code)]

pub mod pg;
pub mod redis;
pub mod tls;

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, release it).
/// Another process can grab it before you bind it: servers started by this harness retry with a
/// fresh port when that happens, and so should any other caller that can.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Where the harness puts its dirs (clusters, Redis servers, the initdb template):
/// `$PGWEIR_TEST_TMPDIR` if set, else `/dev/shm` when usable (tmpfs: copying the template there
/// takes ~20 ms against ~400 ms onto this machine's disk), else the system temp dir.
pub fn scratch_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("PGWEIR_TEST_TMPDIR") {
            let dir = PathBuf::from(dir);
            fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("PGWEIR_TEST_TMPDIR={}: {e}", dir.display()));
            return dir;
        }
        let shm = Path::new("/dev/shm");
        // Each cluster takes ~40 MB there: skip a small one (Docker's default is 64 MB).
        if dir_usable(shm) && free_kib(shm).is_some_and(|kib| kib >= 2 * 1024 * 1024) {
            return shm.to_path_buf();
        }
        std::env::temp_dir()
    })
    .clone()
}

/// Free space of the filesystem holding `dir` (`df -Pk`).
fn free_kib(dir: &Path) -> Option<u64> {
    let out = Command::new("df").arg("-Pk").arg(dir).stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().nth(1)?.split_whitespace().nth(3)?.parse().ok()
}

/// Whether we can create entries in `dir`, and (as root, where servers run as `postgres`) every
/// ancestor is traversable by others.
fn dir_usable(dir: &Path) -> bool {
    let Ok(meta) = fs::metadata(dir) else {
        return false;
    };
    if !meta.is_dir() {
        return false;
    }
    if current_uid() == 0 {
        return dir.ancestors().all(|a| fs::metadata(a).is_ok_and(|m| m.mode() & 0o001 != 0));
    }
    meta.uid() == current_uid() || meta.mode() & 0o002 != 0
}

/// The effective uid of this process (`id -u`, once).
pub fn current_uid() -> u32 {
    static UID: OnceLock<u32> = OnceLock::new();
    *UID.get_or_init(|| {
        let out = Command::new("id").arg("-u").stdin(Stdio::null()).output().expect("run `id -u`");
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("parse `id -u`")
    })
}

/// Whether `pid` is a live (not zombie) process (reads /proc: Linux only).
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) state ..."; comm may contain spaces or parentheses.
    let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// The command line of a live process, NUL separators turned into spaces.
pub fn process_cmdline(pid: u32) -> Option<String> {
    if !process_alive(pid) {
        return None;
    }
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

const OWNER_FILE: &str = "owner.pid";

/// Marks `dir` as belonging to this test process (see [`sweep_orphans`]).
fn claim_dir(dir: &Path) {
    let path = dir.join(OWNER_FILE);
    fs::write(&path, std::process::id().to_string()).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Cleans up after test processes that were killed before their drops ran (e.g. a test-runner
/// timeout): for each `<scratch_dir>/<prefix>*` dir whose owner process is gone (or that never
/// got an owner within 10 minutes), calls `stop(dir)` to end the servers it held, then deletes it.
fn sweep_orphans(prefix: &str, stop: impl Fn(&Path)) {
    let Ok(entries) = fs::read_dir(scratch_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let dir = entry.path();
        let owner = fs::read_to_string(dir.join(OWNER_FILE)).ok().and_then(|s| s.trim().parse::<u32>().ok());
        let orphaned = match owner {
            Some(pid) => !process_alive(pid),
            None => entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(600)),
        };
        if orphaned {
            stop(&dir);
            let _ = fs::remove_dir_all(&dir);
        }
    }
}
