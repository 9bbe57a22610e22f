//! The reader's metrics (docs/metrics.md, "Reader"), registered once in the process registry, and
//! [`Stats`]: the same counts per [`App`](crate::App) instance, so tests running several apps in one
//! process can assert exact numbers.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use dispatch_runtime::metrics::{LATENCY_BUCKETS, register};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
};

fn def<T>(r: Result<T, prometheus::Error>) -> T {
    r.unwrap_or_else(|e| unreachable!("static metric definition: {e}"))
}

/// `dispatch_cache_requests_total{tier, result}`.
pub static CACHE_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(def(IntCounterVec::new(
        Opts::new(
            "dispatch_cache_requests_total",
            "Cache lookups by tier and result.",
        ),
        &["tier", "result"],
    )))
});

/// `dispatch_cache_coalesced_loads_total`.
pub static COALESCED: LazyLock<IntCounter> = LazyLock::new(|| {
    register(def(IntCounter::new(
        "dispatch_cache_coalesced_loads_total",
        "Lookups that joined another caller's in-flight load.",
    )))
});

/// `dispatch_cache_early_refreshes_total`.
pub static EARLY_REFRESHES: LazyLock<IntCounter> = LazyLock::new(|| {
    register(def(IntCounter::new(
        "dispatch_cache_early_refreshes_total",
        "XFetch probabilistic early refreshes.",
    )))
});

/// `dispatch_cache_entries`.
pub static CACHE_ENTRIES: LazyLock<IntGauge> =
    LazyLock::new(|| register(def(IntGauge::new("dispatch_cache_entries", "L1 entries."))));

/// `dispatch_cache_weighted_size_bytes`.
pub static CACHE_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    register(def(IntGauge::new(
        "dispatch_cache_weighted_size_bytes",
        "L1 weighted size.",
    )))
});

/// `dispatch_store_queries_total{query}`.
pub static STORE_QUERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(def(IntCounterVec::new(
        Opts::new("dispatch_store_queries_total", "MySQL lookups."),
        &["query"],
    )))
});

/// `dispatch_store_query_duration_seconds{query}`.
pub static STORE_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(def(HistogramVec::new(
        HistogramOpts::new(
            "dispatch_store_query_duration_seconds",
            "MySQL lookup latency.",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
        &["query"],
    )))
});

/// `dispatch_events_applied_total{result}`.
pub static EVENTS_APPLIED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(def(IntCounterVec::new(
        Opts::new(
            "dispatch_events_applied_total",
            "Events-topic updates by result (applied / stale).",
        ),
        &["result"],
    )))
});

/// `dispatch_event_apply_lag_seconds`.
pub static EVENT_LAG: LazyLock<Histogram> = LazyLock::new(|| {
    register(def(Histogram::with_opts(
        HistogramOpts::new(
            "dispatch_event_apply_lag_seconds",
            "Event occurred_at to applied in L1.",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
    )))
});

/// `dispatch_stale_reads_total`.
pub static STALE_READS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(def(IntCounter::new(
        "dispatch_stale_reads_total",
        "Answers served stale from L1 because MySQL failed.",
    )))
});

/// `dispatch_watch_streams`.
pub static WATCH_STREAMS: LazyLock<IntGauge> = LazyLock::new(|| {
    register(def(IntGauge::new(
        "dispatch_watch_streams",
        "Open WatchTask streams.",
    )))
});

/// `dispatch_watch_streams_refused_total{limit}`.
pub static WATCH_REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(def(IntCounterVec::new(
        Opts::new(
            "dispatch_watch_streams_refused_total",
            "WatchTask streams refused at a bound (limit: instance, tenant).",
        ),
        &["limit"],
    )))
});

/// The gRPC methods of TaskQueryService (the `method` label).
pub const METHODS: [&str; 4] = ["GetTask", "BatchGetTasks", "ListTasks", "WatchTask"];

/// Pre-creates every labelled series so /metrics shows them before traffic.
pub fn init() {
    for tier in ["l1", "l2"] {
        for result in ["hit", "miss", "negative_hit", "error"] {
            let _ = CACHE_REQUESTS.with_label_values(&[tier, result]);
        }
    }
    for q in ["get", "batch_get", "list"] {
        let _ = STORE_QUERIES.with_label_values(&[q]);
        let _ = STORE_DURATION.with_label_values(&[q]);
    }
    for r in ["applied", "stale"] {
        let _ = EVENTS_APPLIED.with_label_values(&[r]);
    }
    LazyLock::force(&COALESCED);
    LazyLock::force(&EARLY_REFRESHES);
    LazyLock::force(&CACHE_ENTRIES);
    LazyLock::force(&CACHE_BYTES);
    LazyLock::force(&EVENT_LAG);
    LazyLock::force(&STALE_READS);
    WATCH_STREAMS.add(0);
    for l in ["instance", "tenant"] {
        WATCH_REFUSED.with_label_values(&[l]);
    }
    dispatch_runtime::metrics::db_pool_init("reader");
    dispatch_runtime::server::metrics::init_rpc_metrics("reader", &METHODS);
}

/// Per-instance counters (the process-wide metrics are shared by every app in a test binary).
#[derive(Debug, Default)]
pub struct Stats {
    /// Single-id MySQL lookups (`query="get"`).
    pub store_gets: AtomicU64,
    /// Multi-id MySQL lookups (`query="batch_get"`).
    pub store_batch_gets: AtomicU64,
    /// Listing queries (`query="list"`).
    pub store_lists: AtomicU64,
    /// Lookups that joined another caller's load.
    pub coalesced: AtomicU64,
    /// XFetch early refreshes started.
    pub early_refreshes: AtomicU64,
    /// Answers served stale because MySQL failed.
    pub stale_reads: AtomicU64,
    /// Events that changed L1.
    pub events_applied: AtomicU64,
    /// Events older than what L1 held.
    pub events_stale: AtomicU64,
}

impl Stats {
    /// Reads one counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}
