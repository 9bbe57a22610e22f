//! The MySQL tier: lookups behind a concurrency limit, timed and counted.
//!
//! The limit protects the database from a burst of cache misses (a cold start, a flushed Redis):
//! lookups beyond it queue for at most `store_queue_timeout_ms` and then fail like a database
//! error, which lets the caller fall back to a stale copy instead of piling up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dispatch_core::TaskId;
use dispatch_proto::v1 as pb;
use dispatch_runtime::tls_failures::{Dependency, TlsFailures};
use dispatch_store::MySqlPool;
use dispatch_store::tasks::ListFilter;
use tokio::sync::Semaphore;

use crate::error::StoreFailure;
use crate::metrics::{self, Stats, StoreQuery};

/// MySQL lookups for the reader.
#[derive(Debug, Clone)]
pub struct Store {
    pool: MySqlPool,
    limit: Arc<Semaphore>,
    queue_timeout: Duration,
    stats: Arc<Stats>,
    horizons: Arc<dispatch_store::retention::HorizonCache>,
    tls: Option<TlsFailures>,
}

impl Store {
    /// Wraps `pool` (the replica pool when one is configured).
    pub fn new(
        pool: MySqlPool,
        max_concurrency: usize,
        queue_timeout: Duration,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            pool,
            limit: Arc::new(Semaphore::new(max_concurrency)),
            queue_timeout,
            stats,
            horizons: Arc::default(),
            tls: None,
        }
    }

    /// Records the TLS failures of lookups and probes in `tls`, and the probe's successes
    /// (`mysql_tls`: see `app`).
    #[must_use]
    pub fn with_tls_failures(mut self, tls: TlsFailures) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The pool (health probe, pool gauges, test hooks).
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    async fn run<T, F>(&self, query: StoreQuery, fut: F) -> Result<T, StoreFailure>
    where
        F: Future<Output = dispatch_store::Result<T>>,
    {
        let _permit = tokio::time::timeout(self.queue_timeout, self.limit.acquire())
            .await
            .map_err(|_| StoreFailure("timed out waiting for a database slot".into()))?
            .map_err(|_| StoreFailure("store limiter closed".into()))?;
        let counter = match query {
            StoreQuery::Get => &self.stats.store_gets,
            StoreQuery::BatchGet => &self.stats.store_batch_gets,
            StoreQuery::List => &self.stats.store_lists,
            StoreQuery::Workflow => &self.stats.store_workflows,
        };
        Stats::bump(counter);
        metrics::store_query(query);
        let start = Instant::now();
        let out = fut.await;
        metrics::store_query_duration(query, start.elapsed());
        out.map_err(|e| {
            tracing::warn!(query = query.label(), error = %e, "store lookup failed");
            if let Some(tls) = &self.tls {
                tls.observe(Dependency::Mysql, &e);
            }
            StoreFailure(e.to_string())
        })
    }

    /// One task by id (any tenant).
    ///
    /// # Errors
    /// Database failure.
    pub async fn get(&self, id: TaskId) -> Result<Option<pb::Task>, StoreFailure> {
        self.run(StoreQuery::Get, dispatch_store::tasks::get(&self.pool, id))
            .await
    }

    /// Several tasks by id in one query (any tenant).
    ///
    /// # Errors
    /// Database failure.
    pub async fn get_many(&self, ids: &[TaskId]) -> Result<Vec<pb::Task>, StoreFailure> {
        self.run(
            StoreQuery::BatchGet,
            dispatch_store::tasks::get_many(&self.pool, ids),
        )
        .await
    }

    /// A page of a tenant's tasks.
    ///
    /// # Errors
    /// Database failure.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<pb::Task>, StoreFailure> {
        self.run(
            StoreQuery::List,
            dispatch_store::tasks::list(&self.pool, filter),
        )
        .await
    }

    /// A workflow with its nodes (any tenant's: the caller checks), straight from MySQL.
    ///
    /// # Errors
    /// Database failure or a corrupt row.
    pub async fn workflow(&self, id: TaskId) -> Result<Option<pb::Workflow>, StoreFailure> {
        self.run(
            StoreQuery::Workflow,
            dispatch_store::workflows::get(&self.pool, id),
        )
        .await
    }

    /// The NOT_FOUND message for a missing `id` of `tenant` when retention purged it (its id was
    /// made before the tenant's purge horizon); `None` when that is not known (no horizon, an id
    /// without a time, or MySQL did not answer within the queue timeout).
    pub async fn purged_hint(&self, tenant: &dispatch_core::Tenant, id: TaskId) -> Option<String> {
        dispatch_store::retention::id_created_at(id)?;
        let lookup = self.horizons.get(&self.pool, tenant.as_str());
        let horizon = tokio::time::timeout(self.queue_timeout, lookup)
            .await
            .ok()?
            .ok()??;
        dispatch_store::retention::purged_message(id, horizon)
    }

    /// `SELECT 1` with a timeout (the health probe); tells the TLS failures whether MySQL
    /// worked or failed that way.
    ///
    /// # Errors
    /// The database does not answer.
    pub async fn ping(&self, timeout: Duration) -> Result<(), String> {
        match tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(&self.pool)).await {
            Ok(Ok(_)) => {
                if let Some(tls) = &self.tls {
                    tls.succeeded(Dependency::Mysql);
                }
                Ok(())
            }
            Ok(Err(e)) => {
                if let Some(tls) = &self.tls {
                    tls.observe(Dependency::Mysql, &e);
                }
                Err(e.to_string())
            }
            Err(_) => Err("ping timed out".into()),
        }
    }

    /// Publishes the pool gauges.
    pub fn export_pool_gauges(&self, max: u32) {
        dispatch_runtime::metrics::db_pool("reader", &self.pool, max);
    }
}
