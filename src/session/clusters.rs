//! The clusters as the running proxy uses them: each one's settings, its TLS connector and,
//! with replicas, its monitored topology and the monitor task. RELOAD replaces the clusters
//! whose settings changed: the new entry starts its own monitor, and the old one's monitor stops
//! when the old entry is dropped. Sessions learn of the change through their retired pools
//! (`Pools::retire`) and move to new ones between transactions.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{Cluster, Config, ServerTls};
use crate::net::tls;
use crate::pool::topology::{self, MonitorLogin, Topology};

/// One cluster as running now.
pub struct ClusterState {
    pub config: Cluster,
    /// None: plain TCP.
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// Set when the cluster has replicas.
    pub topology: Option<Arc<Topology>>,
    /// Dropped with the entry, which ends its monitor.
    _monitor: Option<watch::Sender<()>>,
}

/// Every cluster by name.
pub struct Clusters {
    map: RwLock<HashMap<String, Arc<ClusterState>>>,
    /// The proxy's stop signal, which also ends every monitor.
    stop: watch::Receiver<bool>,
    /// Where monitors count failed polls.
    failures: prometheus::IntCounterVec,
}

impl Clusters {
    /// Every cluster of `config`, monitors running (call within the runtime).
    pub fn start(
        config: &Config,
        stop: watch::Receiver<bool>,
        failures: prometheus::IntCounterVec,
    ) -> Result<Clusters, tls::TlsError> {
        let mut map = HashMap::new();
        for (name, c) in &config.clusters {
            map.insert(name.clone(), Arc::new(build(config, c, &stop, &failures)?));
        }
        Ok(Clusters { map: RwLock::new(map), stop, failures })
    }

    pub fn get(&self, name: &str) -> Option<Arc<ClusterState>> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    /// The monitored clusters' topologies, by name.
    pub fn topologies(&self) -> Vec<(String, Arc<Topology>)> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> =
            map.iter().filter_map(|(n, c)| c.topology.as_ref().map(|t| (n.clone(), t.clone()))).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Brings the set in line with `config`: clusters added or changed get a new entry (and
    /// monitor), removed ones go. Returns the names of those that changed or went.
    pub fn update(&self, config: &Config) -> Result<Vec<String>, tls::TlsError> {
        let current = self.map.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut next = HashMap::new();
        let mut changed = Vec::new();
        for (name, c) in &config.clusters {
            match current.get(name) {
                Some(old) if old.config == *c => {
                    next.insert(name.clone(), old.clone());
                }
                old => {
                    if old.is_some() {
                        changed.push(name.clone());
                    }
                    next.insert(name.clone(), Arc::new(build(config, c, &self.stop, &self.failures)?));
                }
            }
        }
        changed.extend(current.keys().filter(|n| !config.clusters.contains_key(*n)).cloned());
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = next;
        changed.sort();
        Ok(changed)
    }
}

/// A cluster's running state; with replicas, its monitor is started.
fn build(
    config: &Config,
    c: &Cluster,
    stop: &watch::Receiver<bool>,
    failures: &prometheus::IntCounterVec,
) -> Result<ClusterState, tls::TlsError> {
    let connector = match c.tls {
        ServerTls::Disable => None,
        ServerTls::Verify(v) => Some(tls::connector(v, c.ca_file.as_deref())?),
    };
    if c.replicas.is_empty() {
        return Ok(ClusterState { config: c.clone(), tls: connector, topology: None, _monitor: None });
    }
    // The same series as a replaced monitor's: the counts go on where they were.
    let members = std::iter::once("primary".to_string()).chain((0..c.replicas.len()).map(|i| format!("replica{i}")));
    let counters = members.map(|m| failures.with_label_values(&[&c.name, &m])).collect();
    let top = Arc::new(Topology::new(c, &config.routing).count_failures_in(counters));
    let probes = monitor_probes(config, c, connector.clone())?;
    let (own_tx, mut own_rx) = watch::channel(());
    let (t, cluster, stop) = (top.clone(), c.clone(), stop.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = topology::monitor(t, cluster, probes, stop) => {}
            // The entry was dropped (replaced by RELOAD).
            _ = own_rx.changed() => {}
        }
    });
    Ok(ClusterState { config: c.clone(), tls: connector, topology: Some(top), _monitor: Some(own_tx) })
}

/// Who the monitor logs in as: `routing.monitor_user`, else the primary URL's user, else
/// auth_query's user, else `postgres`.
fn monitor_login(config: &Config, cluster: &Cluster) -> MonitorLogin {
    let r = &config.routing;
    if let Some(u) = &r.monitor_user {
        return MonitorLogin { user: u.clone(), password: r.monitor_password.clone() };
    }
    if let Some(u) = &cluster.primary.user {
        return MonitorLogin { user: u.clone(), password: cluster.primary.password.clone() };
    }
    if let Some(q) = &config.auth_query {
        return MonitorLogin { user: q.user.clone(), password: q.password.clone() };
    }
    MonitorLogin { user: "postgres".into(), password: None }
}

/// One probe per member (primary first), logging in as `monitor_login` over the cluster's TLS.
fn monitor_probes(
    config: &Config,
    cluster: &Cluster,
    tls: Option<tokio_rustls::TlsConnector>,
) -> Result<Vec<topology::Probe>, tls::TlsError> {
    let login = monitor_login(config, cluster);
    let mut probes = Vec::new();
    for ep in std::iter::once(&cluster.primary).chain(&cluster.replicas) {
        let tls = match &tls {
            Some(c) => Some((c.clone(), tls::server_name(&ep.host)?)),
            None => None,
        };
        let credentials = login.password.clone().map(crate::server::Credentials::Password).unwrap_or_default();
        probes.push(topology::Probe::new(crate::server::Target {
            host: ep.host.clone(),
            port: ep.port,
            user: login.user.clone(),
            dbname: "postgres".into(),
            credentials: std::sync::Mutex::new(credentials),
            tls,
            connect_timeout: Duration::from_secs(2),
            next_id: Arc::new(std::sync::atomic::AtomicU64::new(1)),
            prepared_cap: 1,
        }));
    }
    Ok(probes)
}
