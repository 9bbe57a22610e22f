//! The retention purge: deletes finished work after each tenant's retention (`[retention]`).
//!
//! Every processor instance runs [`Retention::run`]; only the one holding the MySQL named lock
//! `dispatch_retention.<database>` ([`dispatch_store::leader`], as the gateway's outbox relay)
//! purges. The leader runs every purge statement on the connection that holds the lock, so no
//! statement runs without it and two leaders never purge at once: a leader whose connection
//! dies loses the lock and its open batch in the same moment. The others try to take the lock
//! every `interval_ms`.
//!
//! A round walks the tenants that have tasks or dead letters (index look-ups, one tenant after
//! the other) and, per tenant:
//! 1. deletes terminal tasks that finished before `now - retention` with their attempts and
//!    ledger rows, `batch_size` tasks per short transaction ([`retention::purge_tasks_batch`]),
//!    then records that horizon, which GetTask quotes for a purged id;
//! 2. deletes dead-letter index rows that died before the later of that horizon and
//!    `now - (DLQ topic retention - dlq_margin_ms)`, so an index row never outlives its payload on
//!    the DLQ topic. The topic's `retention.ms` is read from Kafka every round (unless
//!    `dlq_topic_retention_ms` sets it); dead letters are bounded by it even for a tenant whose
//!    tasks are kept forever.
//!
//! Between batches the leader pauses `batch_pause_ms`, or `batch_pause_factor` times as long as
//! the batch took when that is longer (a busy MySQL slows the purge down instead of the purge
//! slowing everyone else further), checks that it still holds the lock and stops at shutdown. Purged rows are counted in `dispatch_retention_purged_rows_total{table}`
//! (the loop's metrics are recorded through [`crate::metrics`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dispatch_runtime::settings::KafkaSettings;
use dispatch_runtime::shutdown::pause;
use dispatch_store::{MySqlPool, leader, retention};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use sqlx::MySqlConnection;
use tokio_util::sync::CancellationToken;

use crate::metrics::{self, PurgedTable, RetentionRound};
use crate::settings::RetentionSettings;

/// The DLQ topic's retention when Kafka cannot be asked and it never answered: the retention
/// `dispatch_runtime::kafka::dispatch_topics` creates the topic with.
pub const DLQ_DEFAULT_RETENTION: Duration = Duration::from_millis(2_592_000_000);

/// One batch, as [`Retention::observer`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// `tasks` (with attempts and ledger rows) or `dead_letters`.
    pub table: &'static str,
    /// Whose rows.
    pub tenant: String,
    /// Rows deleted from `table`.
    pub rows: u64,
    /// Before its first statement.
    pub started: Instant,
    /// After its commit.
    pub finished: Instant,
}

/// Called after every batch.
pub type Observer = Arc<dyn Fn(&Batch) + Send + Sync>;

/// What one round deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// `tasks` rows.
    pub tasks: u64,
    /// `task_attempts` rows.
    pub attempts: u64,
    /// `handler_executions` rows.
    pub executions: u64,
    /// `dead_letters` rows.
    pub dead_letters: u64,
    /// Batches run.
    pub batches: u64,
    /// The round went through every tenant (not stopped, lock not lost).
    pub complete: bool,
}

/// The retention loop of one processor instance.
pub struct Retention {
    /// The processor's pool (the leader detaches one connection from it).
    pub pool: MySqlPool,
    /// `[retention]`.
    pub settings: RetentionSettings,
    /// Where the DLQ topic is (its `retention.ms` bounds the dead-letter index).
    pub kafka: KafkaSettings,
    /// Stops the loop (between batches).
    pub stop: CancellationToken,
    /// Sees every batch (tests; `None` in the service).
    pub observer: Option<Observer>,
}

impl Retention {
    /// Tries to lead every `interval_ms`; purges a round per interval while leading; releases the
    /// lock at `stop`.
    pub async fn run(self) {
        let interval = Duration::from_millis(self.settings.interval_ms.max(1));
        let mut dlq = DlqRetention::default();
        let mut lock: Option<MySqlConnection> = None;
        while !self.stop.is_cancelled() {
            if lock.is_none() {
                lock = tokio::select! {
                    l = self.try_lead() => l,
                    () = self.stop.cancelled() => break,
                };
            }
            if let Some(conn) = lock.as_mut() {
                // Neither a Kafka nor a MySQL that does not answer holds up the processor's stop.
                let dlq_retention = tokio::select! {
                    r = dlq.get(&self.settings, &self.kafka) => r,
                    () = self.stop.cancelled() => break,
                };
                let round = tokio::select! {
                    r = self.round(conn, dlq_retention) => r,
                    () = self.stop.cancelled() => {
                        // Dropped mid-statement: the connection goes (its open batch rolls back
                        // and the lock is released when the server ends the session).
                        lock = None;
                        metrics::retention_leader(false);
                        metrics::retention_round_ended(RetentionRound::Interrupted);
                        break;
                    }
                };
                match round {
                    Ok(r) if r.complete => {
                        metrics::retention_round_ended(RetentionRound::Complete);
                        if r.batches > 0 {
                            tracing::info!(
                                tasks = r.tasks,
                                attempts = r.attempts,
                                executions = r.executions,
                                dead_letters = r.dead_letters,
                                "retention round purged rows"
                            );
                        }
                    }
                    Ok(_) => {
                        metrics::retention_round_ended(RetentionRound::Interrupted);
                        if !self.stop.is_cancelled() {
                            tracing::warn!("retention leader lock lost");
                            lock = None;
                            metrics::retention_leader(false);
                        }
                    }
                    Err(e) => {
                        metrics::retention_round_ended(RetentionRound::Failed);
                        tracing::warn!(error = %e, "retention round failed; giving up the lock");
                        // Dropping the connection closes it, which releases the lock.
                        lock = None;
                        metrics::retention_leader(false);
                    }
                }
            }
            pause(&self.stop, interval).await;
        }
        if let Some(mut conn) = lock {
            let _ = leader::release_lock(&mut conn, retention::LOCK).await;
            metrics::retention_leader(false);
            tracing::info!("retention leader stopped");
        }
    }

    /// Takes the lock if it is free, on a connection detached from the pool.
    async fn try_lead(&self) -> Option<MySqlConnection> {
        let mut conn = match self.pool.acquire().await {
            Ok(c) => c.detach(),
            Err(e) => {
                tracing::debug!(error = %e, "retention: no connection for the leader lock");
                return None;
            }
        };
        match leader::try_lock(&mut conn, retention::LOCK).await {
            Ok(true) => {
                metrics::retention_leader(true);
                tracing::info!("retention leader");
                Some(conn)
            }
            Ok(false) => None,
            Err(e) => {
                tracing::debug!(error = %e, "retention: taking the leader lock failed");
                None
            }
        }
    }

    /// One round on `conn` (which must hold the lock), with the DLQ topic's retention
    /// (`None`: unbounded). Returns what it deleted; `complete` is false when it stopped early
    /// (shutdown, or `conn` no longer holds the lock).
    ///
    /// # Errors
    /// Database errors (the batch in progress is rolled back).
    pub async fn round(
        &self,
        conn: &mut MySqlConnection,
        dlq_retention: Option<Duration>,
    ) -> dispatch_store::Result<Round> {
        let now = Utc::now();
        let s = &self.settings;
        let dlq_horizon = dlq_retention.map(|r| {
            before(
                now,
                r.saturating_sub(Duration::from_millis(s.dlq_margin_ms)),
            )
        });
        let mut out = Round::default();
        let mut after = String::new();
        while let Some(tenant) = retention::next_tenant(conn, &after).await? {
            let task_horizon = s.retention_of(&tenant).map(|r| before(now, r));
            if let Some(h) = task_horizon {
                loop {
                    if !self.may_purge(conn).await? {
                        return Ok(out);
                    }
                    let started = Instant::now();
                    let b = retention::purge_tasks_batch(conn, &tenant, h, s.batch_size).await?;
                    out.tasks += b.tasks;
                    out.attempts += b.attempts;
                    out.executions += b.executions;
                    out.batches += 1;
                    metrics::retention_purged(PurgedTable::Tasks, b.tasks);
                    metrics::retention_purged(PurgedTable::TaskAttempts, b.attempts);
                    metrics::retention_purged(PurgedTable::HandlerExecutions, b.executions);
                    metrics::retention_purged(PurgedTable::WorkflowNodes, b.workflow_nodes);
                    self.observe("tasks", &tenant, b.tasks, started);
                    if b.candidates < u64::from(s.batch_size) {
                        break;
                    }
                    if !self.pause_between_batches(started.elapsed()).await {
                        return Ok(out);
                    }
                }
                retention::record_horizon(conn, &tenant, h).await?;
            }
            // Whichever comes first deletes the row: the tenant's retention, or the topic's.
            let dead_horizon = match (task_horizon, dlq_horizon) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            if let Some(h) = dead_horizon {
                loop {
                    if !self.may_purge(conn).await? {
                        return Ok(out);
                    }
                    let started = Instant::now();
                    let n =
                        retention::purge_dead_letters_batch(conn, &tenant, h, s.batch_size).await?;
                    out.dead_letters += n;
                    out.batches += 1;
                    metrics::retention_purged(PurgedTable::DeadLetters, n);
                    self.observe("dead_letters", &tenant, n, started);
                    if n < u64::from(s.batch_size) {
                        break;
                    }
                    if !self.pause_between_batches(started.elapsed()).await {
                        return Ok(out);
                    }
                }
            }
            after = tenant;
        }
        out.complete = true;
        Ok(out)
    }

    /// Not stopping, and `conn` still holds the lock.
    async fn may_purge(&self, conn: &mut MySqlConnection) -> dispatch_store::Result<bool> {
        Ok(!self.stop.is_cancelled() && leader::holds_lock(conn, retention::LOCK).await?)
    }

    /// Waits after a batch that took `took` ([`RetentionSettings::pause_after`]): a purge whose
    /// batches slow down because MySQL is busy slows down with them. False when stopped meanwhile.
    async fn pause_between_batches(&self, took: Duration) -> bool {
        let d = self.settings.pause_after(took);
        if !d.is_zero() {
            pause(&self.stop, d).await;
        }
        !self.stop.is_cancelled()
    }

    fn observe(&self, table: &'static str, tenant: &str, rows: u64, started: Instant) {
        let finished = Instant::now();
        metrics::retention_batch_took(finished - started);
        if let Some(f) = &self.observer {
            f(&Batch {
                table,
                tenant: tenant.to_owned(),
                rows,
                started,
                finished,
            });
        }
    }
}

/// `now - d`, saturating.
fn before(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The DLQ topic's retention, as last read from Kafka.
#[derive(Default)]
struct DlqRetention {
    admin: Option<AdminClient<DefaultClientContext>>,
    /// `Some(None)`: the topic keeps records forever (`retention.ms = -1`).
    known: Option<Option<Duration>>,
}

impl DlqRetention {
    /// The retention bounding dead-letter index rows (`None`: unbounded).
    async fn get(&mut self, s: &RetentionSettings, kafka: &KafkaSettings) -> Option<Duration> {
        if let Some(ms) = s.dlq_topic_retention_ms {
            return Some(Duration::from_millis(ms));
        }
        match self.read(kafka).await {
            Ok(r) => {
                self.known = Some(r);
                r
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention: cannot read the DLQ topic's retention.ms");
                self.known.unwrap_or(Some(DLQ_DEFAULT_RETENTION))
            }
        }
    }

    async fn read(&mut self, kafka: &KafkaSettings) -> anyhow::Result<Option<Duration>> {
        if self.admin.is_none() {
            self.admin = Some(dispatch_runtime::kafka::client_config(kafka).create()?);
        }
        let admin = self
            .admin
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no admin client"))?;
        let name = kafka.topics().dlq();
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
        let topic = [ResourceSpecifier::Topic(&name)];
        let resource = admin
            .describe_configs(&topic, &opts)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no answer for {name}"))?
            .map_err(|code| anyhow::anyhow!("describe {name}: {code}"))?;
        let value = resource
            .get("retention.ms")
            .and_then(|e| e.value.clone())
            .ok_or_else(|| anyhow::anyhow!("{name} has no retention.ms"))?;
        let ms: i64 = value
            .parse()
            .map_err(|_| anyhow::anyhow!("{name} retention.ms {value:?}"))?;
        // -1: the topic keeps records forever.
        Ok(u64::try_from(ms).ok().map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn horizons_saturate() {
        let now = Utc::now();
        assert_eq!(
            before(now, Duration::from_secs(60)),
            now - chrono::Duration::seconds(60)
        );
        assert_eq!(before(now, Duration::MAX), DateTime::<Utc>::MIN_UTC);
    }
}
