//! Transport only: a byte stream that is plain TCP or TLS (either side), TLS configuration for
//! the client side (we are the server) and the server side (we are the client), a cheap
//! liveness probe for idle connections, and per-address admission at accept. Knows nothing of the PostgreSQL protocol.

pub mod admission;
pub mod stream;
pub mod tls;

pub use stream::{is_idle_and_open, Stream};

/// Raises this process's open-file soft limit to the hard limit (each client and server
/// connection holds one descriptor); returns the soft limit before and after.
pub fn raise_nofile() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one `rlimit` into the struct we pass, which we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    let mut target = lim.rlim_max;
    if target == libc::RLIM_INFINITY {
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok());
        target = nr_open.unwrap_or(1 << 20);
    }
    if before < target {
        lim.rlim_cur = target;
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, lim.rlim_cur.max(before)))
}
