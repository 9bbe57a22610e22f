//! The process-wide Prometheus registry.
//!
//! Every metric is registered in [`registry`] once (`LazyLock` statics in each crate's
//! `metrics.rs`), named `dispatch_<noun>_<unit>[_total]` in base units, never labelled by task id
//! or key. The process collector adds `process_*` (CPU, RSS, fds).

use std::sync::LazyLock;

use prometheus::{Encoder, Registry, TextEncoder};

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let r = Registry::new();
    #[cfg(target_os = "linux")]
    {
        let _ = r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
    }
    r
});

/// The registry every dispatch metric lives in.
pub fn registry() -> &'static Registry {
    &REGISTRY
}

/// Every collector registered through [`register`], for [`families`].
static REGISTERED: LazyLock<parking_lot::Mutex<Vec<Box<dyn prometheus::core::Collector>>>> =
    LazyLock::new(Default::default);

/// Registers a collector, returning it (a second registration of the same name is ignored, so
/// tests that build several apps in one process share the metric).
pub fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    if REGISTRY.register(Box::new(c.clone())).is_ok() {
        REGISTERED.lock().push(Box::new(c.clone()));
    }
    c
}

/// Constructors of registered metrics, for each crate's `LazyLock` statics: a definition that
/// fails (a bad name, a label list that does not fit) is a bug in a static, never a run-time
/// condition.
pub mod new {
    use prometheus::{
        Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
        IntGauge, IntGaugeVec, Opts,
    };

    use super::register;

    fn def<T>(r: Result<T, prometheus::Error>) -> T {
        r.unwrap_or_else(|e| unreachable!("static metric definition: {e}"))
    }

    /// A registered [`IntCounter`].
    pub fn counter(name: &str, help: &str) -> IntCounter {
        register(def(IntCounter::new(name, help)))
    }

    /// A registered [`IntCounterVec`].
    pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        register(def(IntCounterVec::new(Opts::new(name, help), labels)))
    }

    /// A registered [`IntGauge`].
    pub fn gauge(name: &str, help: &str) -> IntGauge {
        register(def(IntGauge::new(name, help)))
    }

    /// A registered [`IntGaugeVec`].
    pub fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        register(def(IntGaugeVec::new(Opts::new(name, help), labels)))
    }

    /// A registered float [`Gauge`].
    pub fn float_gauge(name: &str, help: &str) -> Gauge {
        register(def(Gauge::new(name, help)))
    }

    /// A registered float [`GaugeVec`].
    pub fn float_gauge_vec(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        register(def(GaugeVec::new(Opts::new(name, help), labels)))
    }

    /// A registered [`Histogram`] with `buckets`.
    pub fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
        register(def(Histogram::with_opts(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        )))
    }

    /// A registered [`HistogramVec`] with `buckets`.
    pub fn histogram_vec(name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> HistogramVec {
        register(def(HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        )))
    }
}

/// A metric family as registered: what docs/metrics.md must say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    /// `dispatch_...`.
    pub name: String,
    /// `counter`, `gauge`, `histogram`, `summary` or `untyped`.
    pub kind: &'static str,
    /// Label names (constant and variable), sorted.
    pub labels: Vec<String>,
}

/// Every family registered through [`register`] so far, by name, series or not (a labelled
/// family without a series yet is left out of `/metrics`, not of this). The metric catalogue
/// (docs/metrics.md) is checked against it by each service's tests.
pub fn families() -> Vec<Family> {
    use prometheus::proto::MetricType;
    let mut out: Vec<Family> = REGISTERED
        .lock()
        .iter()
        .flat_map(|c| {
            let descs = c.desc();
            c.collect().into_iter().map(move |mf| {
                let mut labels: Vec<String> = descs
                    .iter()
                    .filter(|d| d.fq_name == mf.name())
                    .flat_map(|d| {
                        d.variable_labels
                            .iter()
                            .cloned()
                            .chain(d.const_label_pairs.iter().map(|l| l.name().to_owned()))
                    })
                    .collect();
                labels.sort();
                labels.dedup();
                Family {
                    name: mf.name().to_owned(),
                    kind: match mf.get_field_type() {
                        MetricType::COUNTER => "counter",
                        MetricType::GAUGE => "gauge",
                        MetricType::HISTOGRAM => "histogram",
                        MetricType::SUMMARY => "summary",
                        MetricType::UNTYPED => "untyped",
                    },
                    labels,
                }
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    out
}

/// `dispatch_db_pool_connections{service, state}`: defined here once for every service.
static DB_POOL: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    register(
        prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "dispatch_db_pool_connections",
                "MySQL pool connections (state: idle, in_use, max).",
            ),
            &["service", "state"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Publishes `pool`'s idle and in-use connections and its maximum for `service`.
pub fn db_pool(service: &str, pool: &dispatch_store::MySqlPool, max: u32) {
    let size = i64::from(pool.size());
    let idle = pool.num_idle() as i64;
    DB_POOL.with_label_values(&[service, "idle"]).set(idle);
    DB_POOL
        .with_label_values(&[service, "in_use"])
        .set((size - idle).max(0));
    DB_POOL
        .with_label_values(&[service, "max"])
        .set(i64::from(max));
}

/// Pre-creates `service`'s pool series (zeros until the first [`db_pool`]).
pub fn db_pool_init(service: &str) {
    for s in ["idle", "in_use", "max"] {
        DB_POOL.with_label_values(&[service, s]);
    }
}

/// Standard latency buckets in seconds: 100 µs .. 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Renders the registry in the Prometheus text format.
pub fn render() -> String {
    let mut buf = Vec::new();
    let families = REGISTRY.gather();
    if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
        tracing::error!(error = %e, "cannot encode metrics");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// Build and runtime information: `dispatch_build_info{service, version} 1` and tokio runtime gauges.
pub fn register_runtime_metrics(service: &str) {
    // Every family the runtime defines is registered here, series or not, so what a service
    // registers (and docs/metrics.md is checked against) does not depend on what it has used.
    crate::kafka::init_statistics_metrics();
    crate::breaker::init_metrics();
    crate::ratelimit::init_metrics();
    crate::server::auth::init_metrics();
    // Every service talks to Kafka and MySQL; Redis' series come with its users.
    crate::tls_failures::init(
        service,
        &[
            crate::tls_failures::Dependency::Kafka,
            crate::tls_failures::Dependency::Mysql,
        ],
    );
    let info = register(
        prometheus::IntGaugeVec::new(
            prometheus::Opts::new("dispatch_build_info", "Build information; always 1."),
            &["service", "version"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    );
    info.with_label_values(&[service, env!("CARGO_PKG_VERSION")])
        .set(1);
    let workers = register(
        prometheus::IntGauge::new("dispatch_tokio_workers", "Tokio runtime worker threads.")
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    );
    let alive = register(
        prometheus::IntGauge::new("dispatch_tokio_alive_tasks", "Tokio tasks currently alive.")
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    );
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        let m = handle.metrics();
        workers.set(m.num_workers() as i64);
        alive.set(m.num_alive_tasks() as i64);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                alive.set(m.num_alive_tasks() as i64);
            }
        });
    }
}
