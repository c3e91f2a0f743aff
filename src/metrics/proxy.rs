//! The proxy's own metrics: client connections by state, logins, pool waits, transactions and
//! queries by route with latency histograms, pins by reason, errors by SQLSTATE class, replica
//! bans; and the gauges read from pools and topologies at scrape time (server connections by
//! state, replica lag). Every hot-path handle is resolved when the proxy starts.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Where a request ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteLabel {
    Primary,
    Replica,
    Cache,
    /// Run on several shards at once (scatter reads, split writes, COPY).
    Shard,
}

impl RouteLabel {
    const ALL: [RouteLabel; 4] = [RouteLabel::Primary, RouteLabel::Replica, RouteLabel::Cache, RouteLabel::Shard];

    fn label(self) -> &'static str {
        match self {
            RouteLabel::Primary => "primary",
            RouteLabel::Replica => "replica",
            RouteLabel::Cache => "cache",
            RouteLabel::Shard => "shard",
        }
    }
}

/// A client session's state, for `pgweir_client_connections`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientState {
    /// Logged in, no server.
    Idle,
    /// Waiting for a server from a pool.
    Waiting,
    /// Holding a server.
    Active,
}

/// Pin reasons as `session::state::Pins::reasons` names them.
pub const PIN_REASONS: [&str; 9] = [
    "temp_table",
    "listen",
    "advisory_lock",
    "hold_cursor",
    "sql_prepare",
    "load",
    "sequence",
    "role",
    "unreplayable_setting",
];

/// Latency buckets in seconds: 100 µs to 10 s.
const LATENCY: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0];

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: T) -> T {
    registry.register(Box::new(m.clone())).expect("metric registered once");
    m
}

pub struct ProxyMetrics {
    clients: [IntGauge; 3],
    pub logins: IntCounter,
    pub login_failures: IntCounter,
    pub pool_waits: IntCounter,
    pub pool_wait_seconds: Histogram,
    transactions: Vec<IntCounter>,
    queries: Vec<IntCounter>,
    transaction_seconds: Vec<Histogram>,
    pins: Vec<IntCounter>,
    errors: IntCounterVec,
    pub replica_bans: IntCounter,
    /// Read at scrape time.
    pub server_connections: IntGaugeVec,
    pub replica_lag_bytes: IntGaugeVec,
    pub replica_healthy: IntGaugeVec,
    pub server_prepared: IntGaugeVec,
    /// Caught up with the monitors' counts at scrape time.
    pub health_check_failures: IntCounterVec,
}

impl ProxyMetrics {
    pub fn new(registry: &Registry) -> ProxyMetrics {
        let clients = register(
            registry,
            IntGaugeVec::new(Opts::new("pgweir_client_connections", "Client connections by state"), &["state"])
                .expect("valid metric"),
        );
        let by_route = |name: &str, help: &str| {
            let v = register(registry, IntCounterVec::new(Opts::new(name, help), &["route"]).expect("valid metric"));
            RouteLabel::ALL.iter().map(|r| v.with_label_values(&[r.label()])).collect::<Vec<_>>()
        };
        let seconds = register(
            registry,
            prometheus::HistogramVec::new(
                HistogramOpts::new(
                    "pgweir_transaction_duration_seconds",
                    "Time from a request's server checkout to its release (a transaction or a single statement), by route",
                )
                .buckets(LATENCY.to_vec()),
                &["route"],
            )
            .expect("valid metric"),
        );
        let pins = register(
            registry,
            IntCounterVec::new(Opts::new("pgweir_pins_total", "Sessions pinned to a server, by reason"), &["reason"])
                .expect("valid metric"),
        );
        let counter = |name: &str, help: &str| register(registry, IntCounter::new(name, help).expect("valid metric"));
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            register(registry, IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
        };
        ProxyMetrics {
            clients: ["idle", "waiting", "active"].map(|s| clients.with_label_values(&[s])),
            logins: counter("pgweir_client_logins_total", "Clients that logged in"),
            login_failures: counter(
                "pgweir_client_login_failures_total",
                "Connections refused at startup or authentication",
            ),
            pool_waits: counter("pgweir_pool_waits_total", "Server checkouts that found no idle connection and waited"),
            pool_wait_seconds: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new("pgweir_pool_wait_seconds", "Time to check a server connection out of a pool")
                        .buckets(LATENCY.to_vec()),
                )
                .expect("valid metric"),
            ),
            transactions: by_route(
                "pgweir_transactions_total",
                "Server checkouts (transactions or single statements), by route",
            ),
            queries: by_route("pgweir_queries_total", "Statements executed (Query or Execute messages), by route"),
            transaction_seconds: RouteLabel::ALL.iter().map(|r| seconds.with_label_values(&[r.label()])).collect(),
            pins: PIN_REASONS.iter().map(|r| pins.with_label_values(&[r])).collect(),
            errors: register(
                registry,
                IntCounterVec::new(
                    Opts::new("pgweir_errors_total", "ErrorResponses sent to clients, by SQLSTATE class"),
                    &["class"],
                )
                .expect("valid metric"),
            ),
            replica_bans: counter("pgweir_replica_bans_total", "Replicas taken out of rotation after a failure"),
            server_connections: gauges(
                "pgweir_server_connections",
                "Server connections by pool and state",
                &["pool", "state"],
            ),
            replica_lag_bytes: gauges(
                "pgweir_replica_lag_bytes",
                "WAL bytes a replica's replay is behind its primary",
                &["cluster", "replica"],
            ),
            replica_healthy: gauges(
                "pgweir_replica_healthy",
                "1 when the replica answers and is within the lag limits",
                &["cluster", "replica"],
            ),
            server_prepared: gauges(
                "pgweir_server_prepared_statements",
                "Prepared statements held by a pool's idle server connections (as last returned)",
                &["pool"],
            ),
            health_check_failures: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "pgweir_health_check_failures_total",
                        "Monitor polls of a cluster member that failed or timed out (member: primary or replicaN)",
                    ),
                    &["cluster", "member"],
                )
                .expect("valid metric"),
            ),
        }
    }

    /// Moves one session from state `from` (None: a new session) to `to` (None: gone).
    pub fn client(&self, from: Option<ClientState>, to: Option<ClientState>) {
        let at = |s: ClientState| match s {
            ClientState::Idle => 0,
            ClientState::Waiting => 1,
            ClientState::Active => 2,
        };
        if let Some(f) = from {
            self.clients[at(f)].dec();
        }
        if let Some(t) = to {
            self.clients[at(t)].inc();
        }
    }

    /// A server was released after `seconds` holding it, having run `queries` statements.
    pub fn released(&self, route: RouteLabel, seconds: f64, queries: u64) {
        let i = route as usize;
        self.transactions[i].inc();
        self.queries[i].inc_by(queries);
        self.transaction_seconds[i].observe(seconds);
    }

    /// A request answered without a server of its own (cache hit, scatter, split).
    pub fn answered(&self, route: RouteLabel, seconds: f64) {
        self.released(route, seconds, 1);
    }

    pub fn pinned(&self, reasons: &[&str]) {
        for r in reasons {
            if let Some(i) = PIN_REASONS.iter().position(|x| x == r) {
                self.pins[i].inc();
            }
        }
    }

    /// An ErrorResponse with SQLSTATE `code` reached a client.
    pub fn error(&self, code: Option<&str>) {
        let class =
            code.and_then(|c| c.get(..2)).filter(|c| c.bytes().all(|b| b.is_ascii_alphanumeric())).unwrap_or("XX");
        self.errors.with_label_values(&[class]).inc();
    }
}
