//! The reader's metrics (docs/metrics.md, "Reader"), registered once in the process registry, each
//! recorded through one function here, and [`Stats`]: the same counts per [`App`](crate::App)
//! instance, so tests running several apps in one process can assert exact numbers. Labelled series
//! are pre-created by [`init`].

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dispatch_runtime::metrics::LATENCY_BUCKETS;
use dispatch_runtime::metrics::new::{counter, counter_vec, gauge, histogram, histogram_vec};
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge};

/// `dispatch_cache_requests_total{tier, result}`.
static CACHE_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_cache_requests_total",
        "Cache lookups by tier and result.",
        &["tier", "result"],
    )
});

/// `dispatch_cache_coalesced_loads_total`.
static COALESCED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dispatch_cache_coalesced_loads_total",
        "Lookups that joined another caller's in-flight load.",
    )
});

/// `dispatch_cache_early_refreshes_total`.
static EARLY_REFRESHES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dispatch_cache_early_refreshes_total",
        "XFetch probabilistic early refreshes.",
    )
});

/// `dispatch_cache_entries`.
static CACHE_ENTRIES: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("dispatch_cache_entries", "L1 entries."));

/// `dispatch_cache_weighted_size_bytes`.
static CACHE_BYTES: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("dispatch_cache_weighted_size_bytes", "L1 weighted size."));

/// `dispatch_store_queries_total{query}`.
static STORE_QUERIES: LazyLock<IntCounterVec> =
    LazyLock::new(|| counter_vec("dispatch_store_queries_total", "MySQL lookups.", &["query"]));

/// `dispatch_store_query_duration_seconds{query}`.
static STORE_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "dispatch_store_query_duration_seconds",
        "MySQL lookup latency.",
        LATENCY_BUCKETS,
        &["query"],
    )
});

/// `dispatch_events_applied_total{result}`.
static EVENTS_APPLIED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_events_applied_total",
        "Events-topic updates by result (applied / stale).",
        &["result"],
    )
});

/// `dispatch_event_apply_lag_seconds`.
static EVENT_LAG: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "dispatch_event_apply_lag_seconds",
        "Event occurred_at to applied in L1.",
        LATENCY_BUCKETS,
    )
});

/// `dispatch_stale_reads_total`.
static STALE_READS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dispatch_stale_reads_total",
        "Answers served stale from L1 because MySQL failed.",
    )
});

/// `dispatch_watch_streams`.
static WATCH_STREAMS: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("dispatch_watch_streams", "Open WatchTask streams."));

/// `dispatch_watch_streams_refused_total{limit}`.
static WATCH_REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_watch_streams_refused_total",
        "WatchTask streams refused at a bound (limit: instance, tenant).",
        &["limit"],
    )
});

/// The gRPC methods of TaskQueryService (the `method` label).
pub const METHODS: [&str; 5] = [
    "GetTask",
    "BatchGetTasks",
    "ListTasks",
    "WatchTask",
    "GetWorkflow",
];

/// Pre-creates every labelled series so /metrics shows them before traffic.
pub fn init() {
    for tier in [Tier::L1, Tier::L2] {
        for result in [
            CacheResult::Hit,
            CacheResult::Miss,
            CacheResult::NegativeHit,
            CacheResult::Error,
        ] {
            let _ = CACHE_REQUESTS.with_label_values(&[tier.label(), result.label()]);
        }
    }
    for q in StoreQuery::ALL {
        let _ = STORE_QUERIES.with_label_values(&[q.label()]);
        let _ = STORE_DURATION.with_label_values(&[q.label()]);
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
    for l in [WatchLimit::Instance, WatchLimit::Tenant] {
        WATCH_REFUSED.with_label_values(&[l.label()]);
    }
    dispatch_runtime::metrics::db_pool_init("reader");
    dispatch_runtime::server::metrics::init_rpc_metrics("reader", &METHODS);
}

/// A cache tier (the `tier` label of `dispatch_cache_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// The in-process cache.
    L1,
    /// Redis.
    L2,
}

impl Tier {
    fn label(self) -> &'static str {
        match self {
            Self::L1 => "l1",
            Self::L2 => "l2",
        }
    }
}

/// What a cache lookup (or write) found (the `result` label of `dispatch_cache_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// The task was cached.
    Hit,
    /// Nothing was cached.
    Miss,
    /// The task was cached as missing.
    NegativeHit,
    /// The tier failed (or held something undecodable).
    Error,
    /// A background write was dropped because the tier's write queue was full.
    WriteDropped,
}

impl CacheResult {
    fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::NegativeHit => "negative_hit",
            Self::Error => "error",
            Self::WriteDropped => "write_dropped",
        }
    }
}

/// A MySQL lookup (the `query` label of `dispatch_store_queries_total` and
/// `dispatch_store_query_duration_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreQuery {
    /// One task by id (GetTask, WatchTask, read-your-writes).
    Get,
    /// Several tasks by id (BatchGetTasks).
    BatchGet,
    /// A page of a tenant's tasks (ListTasks).
    List,
    /// A workflow with its nodes (GetWorkflow).
    Workflow,
}

impl StoreQuery {
    /// Every query.
    pub const ALL: [StoreQuery; 4] = [Self::Get, Self::BatchGet, Self::List, Self::Workflow];

    /// The label value (also the `query` field of the store's log lines).
    pub fn label(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::BatchGet => "batch_get",
            Self::List => "list",
            Self::Workflow => "workflow",
        }
    }
}

/// A bound on WatchTask streams (the `limit` label of `dispatch_watch_streams_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchLimit {
    /// The instance's maximum (`cache.watch_max_streams`).
    Instance,
    /// The tenant's maximum on this instance (`cache.watch_max_streams_per_tenant`).
    Tenant,
}

impl WatchLimit {
    fn label(self) -> &'static str {
        match self {
            Self::Instance => "instance",
            Self::Tenant => "tenant",
        }
    }
}

/// One lookup in `tier` found `result`.
pub fn cache_request(tier: Tier, result: CacheResult) {
    cache_requests(tier, result, 1);
}

/// `n` lookups in `tier` found `result`.
pub fn cache_requests(tier: Tier, result: CacheResult, n: u64) {
    CACHE_REQUESTS
        .with_label_values(&[tier.label(), result.label()])
        .inc_by(n);
}

/// A lookup joined another caller's in-flight load.
pub fn coalesced_load() {
    COALESCED.inc();
}

/// An XFetch early refresh started.
pub fn early_refresh() {
    EARLY_REFRESHES.inc();
}

/// The size of L1.
pub fn cache_size(entries: u64, bytes: u64) {
    CACHE_ENTRIES.set(i64::try_from(entries).unwrap_or(i64::MAX));
    CACHE_BYTES.set(i64::try_from(bytes).unwrap_or(i64::MAX));
}

/// A MySQL lookup starts.
pub fn store_query(query: StoreQuery) {
    STORE_QUERIES.with_label_values(&[query.label()]).inc();
}

/// A MySQL lookup finished after `elapsed`.
pub fn store_query_duration(query: StoreQuery, elapsed: Duration) {
    STORE_DURATION
        .with_label_values(&[query.label()])
        .observe(elapsed.as_secs_f64());
}

/// An event from the events topic changed L1 (`applied`) or was older than what it held.
pub fn event_applied(applied: bool) {
    let result = if applied { "applied" } else { "stale" };
    EVENTS_APPLIED.with_label_values(&[result]).inc();
}

/// An event was applied `lag` after it occurred.
pub fn event_lag(lag: Duration) {
    EVENT_LAG.observe(lag.as_secs_f64());
}

/// An answer was served stale from L1 because MySQL failed.
pub fn stale_read() {
    STALE_READS.inc();
}

/// A WatchTask stream opened.
pub fn watch_opened() {
    WATCH_STREAMS.inc();
}

/// A WatchTask stream closed.
pub fn watch_closed() {
    WATCH_STREAMS.dec();
}

/// A WatchTask stream was refused at `limit`.
pub fn watch_refused(limit: WatchLimit) {
    WATCH_REFUSED.with_label_values(&[limit.label()]).inc();
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
    /// Workflow lookups (`query="workflow"`).
    pub store_workflows: AtomicU64,
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
