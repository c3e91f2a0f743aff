//! What the proxy knows about a cluster's members: the primary's WAL position, each replica's
//! replay position, lag and health, and the requests outstanding on each (for
//! least-outstanding balancing). A monitor task polls the members; sessions read the result
//! through atomics and pick a replica. Positions are compared as LSNs: a replay timestamp alone
//! grows forever on an idle primary.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Cluster, Endpoint, PrimaryReads, Routing};

/// Parses "16/B374D848" into a 64-bit position.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// The timeline of a WAL file name ("00000002000000000000000A" → 2).
pub fn timeline_of(walfile: &str) -> Option<u32> {
    u32::from_str_radix(walfile.get(..8)?, 16).ok()
}

pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// One replica as last seen by the monitor.
#[derive(Debug, Default)]
pub struct ReplicaState {
    pub replay_lsn: AtomicU64,
    pub lag_ms: AtomicU64,
    pub healthy: AtomicBool,
    /// Requests currently running on it through this proxy.
    pub outstanding: AtomicUsize,
    /// Banned after a failure until this time (ms since the topology was made), with a
    /// backoff that doubles per consecutive failure.
    banned_until_ms: AtomicU64,
    failures: std::sync::atomic::AtomicU32,
}

/// First and longest ban of a failed replica.
const BAN_MIN: Duration = Duration::from_millis(250);
const BAN_MAX: Duration = Duration::from_secs(30);

/// A cluster's members as the monitor last saw them.
#[derive(Debug)]
pub struct Topology {
    pub cluster: String,
    pub primary_lsn: AtomicU64,
    pub replicas: Vec<ReplicaState>,
    pub primary_outstanding: AtomicUsize,
    /// Which member is the primary: 0 the configured one, i + 1 replica i after a failover.
    pub primary_member: AtomicUsize,
    /// The primary does not answer (or is in recovery): writes wait for a promoted member.
    pub primary_down: AtomicBool,
    /// Woken when the primary changes.
    pub changed: tokio::sync::Notify,
    /// Failed polls per member: the configured primary, then each replica (unregistered
    /// counters unless `count_failures_in` gave the metrics' handles).
    pub check_failures: Vec<prometheus::IntCounter>,
    routing: Routing,
    born: std::time::Instant,
}

/// Where a read goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Primary,
    Replica(usize),
    /// primary_reads = never and no replica is usable.
    Nowhere,
}

impl Topology {
    pub fn new(cluster: &Cluster, routing: &Routing) -> Topology {
        Topology {
            cluster: cluster.name.clone(),
            primary_lsn: AtomicU64::new(0),
            replicas: cluster.replicas.iter().map(|_| ReplicaState::default()).collect(),
            primary_outstanding: AtomicUsize::new(0),
            primary_member: AtomicUsize::new(0),
            primary_down: AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
            check_failures: (0..=cluster.replicas.len())
                .map(|_| prometheus::IntCounter::new("unregistered", "unregistered").expect("valid counter"))
                .collect(),
            routing: routing.clone(),
            born: std::time::Instant::now(),
        }
    }

    /// Failed polls are counted in these (one per member: primary, then replicas).
    pub fn count_failures_in(mut self, counters: Vec<prometheus::IntCounter>) -> Topology {
        if counters.len() == self.check_failures.len() {
            self.check_failures = counters;
        }
        self
    }

    /// Counts a failed poll of `member` (0 the configured primary, i + 1 replica i).
    fn poll_failed(&self, member: usize) {
        if let Some(c) = self.check_failures.get(member) {
            c.inc();
        }
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// Takes replica `i` out of rotation after a failure, for longer each time it fails again.
    /// Returns the ban's length.
    pub fn ban(&self, i: usize) -> Duration {
        let r = &self.replicas[i];
        let n = r.failures.fetch_add(1, Ordering::Relaxed).min(16);
        let ban = (BAN_MIN * 2u32.pow(n)).min(BAN_MAX);
        r.banned_until_ms.store(self.now_ms() + ban.as_millis() as u64, Ordering::Relaxed);
        r.healthy.store(false, Ordering::Relaxed);
        ban
    }

    /// The replica index that is now the primary, if a failover promoted one.
    pub fn promoted_replica(&self) -> Option<usize> {
        self.primary_member.load(Ordering::Relaxed).checked_sub(1)
    }

    /// Is replica `i` healthy, within the lag bounds, and past `min_lsn` (read-your-writes)?
    pub fn usable(&self, i: usize, min_lsn: u64) -> bool {
        if self.promoted_replica() == Some(i) {
            return false;
        }
        let r = &self.replicas[i];
        if !r.healthy.load(Ordering::Relaxed) || r.banned_until_ms.load(Ordering::Relaxed) > self.now_ms() {
            return false;
        }
        let replay = r.replay_lsn.load(Ordering::Relaxed);
        let primary = self.primary_lsn.load(Ordering::Relaxed);
        replay >= min_lsn
            && primary.saturating_sub(replay) <= self.routing.max_lag_bytes
            && r.lag_ms.load(Ordering::Relaxed) <= self.routing.max_lag_ms
    }

    /// The member a read should use: the usable replica with the fewest requests outstanding
    /// (the primary counts as one more member when primary_reads = always).
    pub fn pick_read(&self, min_lsn: u64) -> Target {
        let mut best: Option<(usize, usize)> = None;
        for i in 0..self.replicas.len() {
            if self.usable(i, min_lsn) {
                let load = self.replicas[i].outstanding.load(Ordering::Relaxed);
                if best.is_none_or(|(_, l)| load < l) {
                    best = Some((i, load));
                }
            }
        }
        match (best, self.routing.primary_reads) {
            (Some((_, load)), PrimaryReads::Always) if self.primary_outstanding.load(Ordering::Relaxed) < load => {
                Target::Primary
            }
            (Some((i, _)), _) => Target::Replica(i),
            (None, PrimaryReads::Never) => Target::Nowhere,
            (None, _) => Target::Primary,
        }
    }
}

/// Who the monitor logs in as.
#[derive(Clone, Debug)]
pub struct MonitorLogin {
    pub user: String,
    pub password: Option<String>,
}

/// One member's monitor connection: the proxy's own server connection (so TLS and every
/// authentication method work as for clients), kept open between polls.
pub struct Probe {
    pub target: crate::server::Target,
    conn: Option<crate::server::ServerConn>,
    /// A login failure was logged (once until it works again).
    refused: bool,
}

impl Probe {
    pub fn new(target: crate::server::Target) -> Probe {
        Probe { target, conn: None, refused: false }
    }
}

/// How a poll of one member failed.
#[derive(Debug, PartialEq, Eq)]
enum PollError {
    /// No answer: down, unreachable, timed out.
    Unreachable,
    /// It answered but refused the monitor (bad login, no such database): says nothing about
    /// the member's health.
    Refused,
}

/// Runs `sql` on a member and returns its first row (columns as text).
async fn query_member(probe: &mut Probe, sql: &str, timeout: Duration) -> Result<Vec<Option<String>>, PollError> {
    use crate::server::ServerError;
    let work = async {
        if probe.conn.is_none() {
            probe.conn = Some(crate::server::connect(&probe.target).await?);
        }
        let conn = probe.conn.as_mut().expect("connected above");
        conn.query_row(sql).await
    };
    let result = tokio::time::timeout(timeout, work).await;
    match result {
        Ok(Ok(Some(row))) => {
            probe.refused = false;
            Ok(row)
        }
        Ok(Ok(None)) => Err(PollError::Unreachable),
        Ok(Err(e @ (ServerError::Rejected(..) | ServerError::Auth { .. }))) if !e.is_transient() => {
            probe.conn = None;
            if !probe.refused {
                tracing::error!(member = %probe.target.addr(), error = %e, "the monitor cannot log in; set routing.monitor_user / monitor_password");
                probe.refused = true;
            }
            Err(PollError::Refused)
        }
        _ => {
            probe.conn = None;
            Err(PollError::Unreachable)
        }
    }
}

fn col_bool(row: &[Option<String>], i: usize) -> Option<bool> {
    row.get(i)?.as_deref().map(|v| v == "t")
}

fn col_text(row: &[Option<String>], i: usize) -> Option<&str> {
    row.get(i)?.as_deref()
}

/// Polls the primary's WAL position and each replica's replay position every
/// `health_interval`, until `stop` fires.
pub async fn monitor(
    top: Arc<Topology>,
    cluster: Cluster,
    mut probes: Vec<Probe>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let every = top.routing.health_interval;
    let timeout = every.max(Duration::from_millis(500)) * 2;
    // When the primary's position was first seen: a replica's time lag is how long ago the
    // primary passed the replica's replay position (0 when caught up), which stays right on an
    // idle primary, unlike "now - last replayed commit".
    let mut history: std::collections::VecDeque<(std::time::Instant, u64)> = Default::default();
    let members: Vec<&Endpoint> = std::iter::once(&cluster.primary).chain(&cluster.replicas).collect();
    debug_assert_eq!(members.len(), probes.len());
    let mut primary_tli = 0u32;
    loop {
        let current = top.primary_member.load(Ordering::Relaxed);
        let sql = "select pg_is_in_recovery(), \
                   case when pg_is_in_recovery() then null else pg_current_wal_lsn()::text end, \
                   case when pg_is_in_recovery() then null else pg_walfile_name(pg_current_wal_lsn()) end";
        let answer = query_member(&mut probes[current], sql, timeout).await;
        if answer.is_err() {
            top.poll_failed(current);
        }
        if answer == Err(PollError::Refused) {
            // Nothing learned about the primary; try again after the usual pause.
            tokio::select! {
                _ = tokio::time::sleep(every) => continue,
                _ = stop.changed() => return,
            }
        }
        let row = answer.unwrap_or_default();
        let lsn = match col_bool(&row, 0) {
            Some(false) => col_text(&row, 1).and_then(parse_lsn),
            _ => None,
        };
        if let Some(t) = col_text(&row, 2).and_then(timeline_of) {
            primary_tli = t;
        }
        match lsn {
            Some(lsn) => {
                top.primary_down.store(false, Ordering::Relaxed);
                top.primary_lsn.store(lsn, Ordering::Relaxed);
                if history.back().is_none_or(|(_, l)| *l < lsn) {
                    history.push_back((std::time::Instant::now(), lsn));
                }
                while history.len() > 1
                    && history
                        .front()
                        .is_some_and(|(t, _)| t.elapsed() > Duration::from_millis(top.routing.max_lag_ms) * 4)
                {
                    history.pop_front();
                }
            }
            None => {
                if !top.primary_down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(cluster = %top.cluster, primary = %members[current].addr(), "primary unreachable or in recovery; looking for a promoted member");
                }
                // Failover: the first other member that answers and is not in recovery.
                for (m, ep) in members.iter().enumerate().filter(|(m, _)| *m != current) {
                    let row = query_member(&mut probes[m], "select pg_is_in_recovery()", timeout).await;
                    if row.is_err() {
                        top.poll_failed(m);
                    }
                    if row.ok().and_then(|r| col_bool(&r, 0)) == Some(false) {
                        tracing::warn!(cluster = %top.cluster, new_primary = %ep.addr(), "failover: writes go to the promoted member");
                        top.primary_member.store(m, Ordering::Relaxed);
                        top.primary_down.store(false, Ordering::Relaxed);
                        history.clear();
                        top.changed.notify_waiters();
                        break;
                    }
                }
            }
        }
        for (i, ep) in cluster.replicas.iter().enumerate() {
            if top.promoted_replica() == Some(i) {
                continue;
            }
            let sql = "select pg_is_in_recovery(), coalesce(pg_last_wal_replay_lsn(), '0/0')::text, \
                       case when pg_is_in_recovery() then null else pg_walfile_name(pg_current_wal_lsn()) end, \
                       (select received_tli from pg_stat_wal_receiver)::text";
            let state = &top.replicas[i];
            match query_member(&mut probes[i + 1], sql, timeout).await {
                Ok(row) => {
                    let in_recovery = col_bool(&row, 0).unwrap_or(false);
                    let replay = col_text(&row, 1).and_then(parse_lsn).unwrap_or(0);
                    let lag_ms = history
                        .iter()
                        .find(|(_, lsn)| *lsn > replay)
                        .map(|(t, _)| t.elapsed().as_millis() as u64)
                        .unwrap_or(0);
                    state.replay_lsn.store(replay, Ordering::Relaxed);
                    state.lag_ms.store(lag_ms, Ordering::Relaxed);
                    if !in_recovery {
                        // Promoted while the old primary still answers: the newer timeline
                        // wins at once, so writes stop going to the old one.
                        let tli = col_text(&row, 2).and_then(timeline_of);
                        if tli.is_some_and(|t| t > primary_tli) {
                            tracing::warn!(cluster = %top.cluster, new_primary = %ep.addr(), "failover: a replica was promoted onto a newer timeline; writes go to it");
                            top.primary_member.store(i + 1, Ordering::Relaxed);
                            top.primary_down.store(false, Ordering::Relaxed);
                            primary_tli = tli.unwrap_or(primary_tli);
                            history.clear();
                            top.changed.notify_waiters();
                        } else {
                            tracing::warn!(cluster = %top.cluster, replica = %ep.addr(), "replica is not in recovery; not routing reads to it");
                        }
                    }
                    // After a failover, a replica still on the old timeline has diverged from
                    // the new primary: its positions mean nothing until it follows it.
                    let tli: Option<u32> = col_text(&row, 3).and_then(|t| t.parse().ok());
                    let current_timeline = tli.is_none_or(|t| primary_tli == 0 || t >= primary_tli);
                    state.healthy.store(in_recovery && current_timeline, Ordering::Relaxed);
                    if in_recovery && state.banned_until_ms.load(Ordering::Relaxed) + 5_000 < top.now_ms() {
                        // Answering well for a while after its last ban: the backoff starts over.
                        state.failures.store(0, Ordering::Relaxed);
                    }
                }
                Err(PollError::Refused) => top.poll_failed(i + 1),
                Err(PollError::Unreachable) => {
                    top.poll_failed(i + 1);
                    if state.healthy.swap(false, Ordering::Relaxed) {
                        tracing::warn!(cluster = %top.cluster, replica = %ep.addr(), "replica unreachable; reads go elsewhere");
                    }
                }
            }
        }
        // Look again soon while writes are waiting for a primary.
        let pause = if top.primary_down.load(Ordering::Relaxed) { every.min(Duration::from_millis(50)) } else { every };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(n: usize, primary_reads: PrimaryReads) -> Topology {
        let ep = Endpoint::parse("postgres://h:1").unwrap();
        let cluster = crate::config::Cluster {
            name: "c".into(),
            primary: ep.clone(),
            replicas: vec![ep; n],
            tls: crate::config::ServerTls::Disable,
            ca_file: None,
        };
        let routing = Routing {
            primary_reads,
            max_lag_bytes: 1000,
            max_lag_ms: 1000,
            read_your_writes: true,
            defer_begin: false,
            health_interval: Duration::from_millis(100),
            failover_timeout: Duration::from_secs(1),
            write_functions: vec![],
            monitor_user: None,
            monitor_password: None,
        };
        Topology::new(&cluster, &routing)
    }

    #[test]
    fn timelines_from_wal_file_names() {
        assert_eq!(timeline_of("00000002000000000000000A"), Some(2));
        assert_eq!(timeline_of("x"), None);
    }

    #[test]
    fn lsns_round_trip() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("nope"), None);
    }

    #[test]
    fn picks_least_outstanding_usable_replica() {
        let t = topo(2, PrimaryReads::Fallback);
        assert_eq!(t.pick_read(0), Target::Primary, "no replica healthy yet");
        for r in &t.replicas {
            r.healthy.store(true, Ordering::Relaxed);
        }
        t.replicas[0].outstanding.store(3, Ordering::Relaxed);
        assert_eq!(t.pick_read(0), Target::Replica(1));
        // Read-your-writes: only replicas past the session's position.
        t.primary_lsn.store(500, Ordering::Relaxed);
        t.replicas[0].replay_lsn.store(500, Ordering::Relaxed);
        t.replicas[1].replay_lsn.store(400, Ordering::Relaxed);
        assert_eq!(t.pick_read(450), Target::Replica(0));
        assert_eq!(t.pick_read(600), Target::Primary);
        // Lag bounds.
        t.primary_lsn.store(5000, Ordering::Relaxed);
        assert_eq!(t.pick_read(0), Target::Primary, "both replicas too far behind");
    }

    #[test]
    fn a_banned_replica_stays_out_for_a_growing_while() {
        let t = topo(1, PrimaryReads::Fallback);
        t.replicas[0].healthy.store(true, Ordering::Relaxed);
        assert_eq!(t.pick_read(0), Target::Replica(0));
        assert_eq!(t.ban(0), BAN_MIN);
        t.replicas[0].healthy.store(true, Ordering::Relaxed);
        assert_eq!(t.pick_read(0), Target::Primary, "banned even though the monitor saw it answer");
        assert_eq!(t.ban(0), BAN_MIN * 2);
    }

    #[test]
    fn never_means_no_primary_reads() {
        let t = topo(1, PrimaryReads::Never);
        assert_eq!(t.pick_read(0), Target::Nowhere);
    }
}
