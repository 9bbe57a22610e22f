//! The outbox relay.
//!
//! **Why in the gateway**: the component that writes the outbox owns draining it. The gateway
//! already holds the producer (idempotent, same partitioner) and the Kafka breaker, and its sticky
//! routing depends on the backlog draining; the processor stays a pure consumer.
//!
//! **One publisher at a time, fenced.** The leader holds a MySQL named lock (`GET_LOCK`, per
//! database) on a dedicated connection ([`Fence`]); the others retry taking it every
//! `lock_retry_ms`, so a crashed leader (its connection closes, the lock goes) is replaced within
//! seconds. Before publishing any record the leader makes sure it still holds the lock, asking
//! MySQL again when its last answer is older than `relay_fence_ms`; a new leader publishes
//! nothing until `relay_lease_ms` after it took the lock. A leader that lost its lock therefore
//! stops before it would publish another record, and before its successor starts.
//!
//! **A row never loses its place.** Each round reads the keys blocked behind a failing or dead
//! row and a window of due rows of the other keys (`dispatch_store::outbox_relay`, no row locks),
//! and publishes each key's rows in id order, one at a time: the next only after librdkafka's
//! definitive delivery report for the previous (no timeout of its own, so a row is re-published
//! only if Kafka really refused it). The first failure ends the key's turn; its row is retried
//! with exponential backoff and marked `dead` after `max_attempts` (an alert), and either way its
//! key stays blocked, here and at the gateway's routing, until it is published or an operator
//! requeues it. While Kafka is at risk (breaker open, all brokers down, stalled) the relay does
//! not try, so an outage does not burn the rows' attempts.
//!
//! The leader also deletes published rows past `published_retention_ms` and idempotency keys
//! past `idempotency.store_retention_ms`, every `purge_interval_ms`, a bounded batch per
//! statement: without that the tables only grow.
//!
//! Over 400 lines because the fence, the publish round, the fault injection the fault scenarios
//! use and the relay's loop (leader election, draining, backlog metrics, the purges of published
//! rows and old idempotency keys) are one task; the purges ([`purge_published`],
//! [`purge_idempotency_keys`]) would move out first.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use dispatch_runtime::shutdown::pause;
use dispatch_store::outbox;
use dispatch_store::outbox_relay::{self, Verdict};
use futures::future::join_all;
use sqlx::MySqlConnection;
use tokio_util::sync::CancellationToken;

use crate::durable::Durable;
use crate::metrics;
use crate::producer::OutRecord;
use crate::settings::OutboxSettings;

/// Per-row retry delay after `attempts` failures.
pub fn backoff(s: &OutboxSettings, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let ms = s
        .relay_backoff_initial_ms
        .saturating_mul(1u64 << exp)
        .min(s.relay_backoff_max_ms);
    Duration::from_millis(ms)
}

/// The relay leader's lock, and the rule that fences its publishing.
pub struct Fence {
    conn: MySqlConnection,
    /// When MySQL last said this connection holds the lock.
    confirmed: Instant,
    /// How stale that answer may be when a record is published.
    recheck: Duration,
    /// Nothing is published before this (a predecessor that lost the lock has stopped by then).
    start: Instant,
    lost: bool,
}

impl Fence {
    /// Takes the lock if it is free, on a connection of its own (detached from the pool).
    ///
    /// # Errors
    /// Database errors.
    pub async fn acquire(
        pool: &sqlx::MySqlPool,
        s: &OutboxSettings,
    ) -> Result<Option<Self>, String> {
        let mut conn = pool.acquire().await.map_err(|e| e.to_string())?.detach();
        match outbox_relay::try_relay_lock(&mut conn).await {
            Ok(true) => {
                let now = Instant::now();
                Ok(Some(Self {
                    conn,
                    confirmed: now,
                    recheck: Duration::from_millis(s.relay_fence_ms),
                    start: now + Duration::from_millis(s.relay_lease_ms),
                    lost: false,
                }))
            }
            Ok(false) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Waits out the lease of a predecessor (or until `stop`).
    pub async fn wait_lease(&self, stop: &CancellationToken) {
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep_until(self.start.into()) => {}
        }
    }

    /// Whether this leader may publish a record now.
    pub async fn check(&mut self) -> bool {
        if self.lost || Instant::now() < self.start {
            return false;
        }
        if self.confirmed.elapsed() < self.recheck {
            return true;
        }
        let asked = Instant::now();
        match outbox_relay::holds_relay_lock(&mut self.conn).await {
            Ok(true) => {
                self.confirmed = asked;
                true
            }
            Ok(false) | Err(_) => {
                self.lost = true;
                false
            }
        }
    }

    /// Whether the lock was found lost.
    pub fn lost(&self) -> bool {
        self.lost
    }

    /// Releases the lock (best effort; closing the connection releases it too).
    pub async fn release(mut self) {
        let _ = outbox_relay::release_relay_lock(&mut self.conn).await;
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// Rows acknowledged by Kafka.
    pub published: usize,
    /// Rows Kafka refused.
    pub failed: usize,
    /// The fence said stop: this instance is no longer the leader.
    pub lost_lock: bool,
    /// Kafka was not at risk (breaker closed, brokers up, not stalled) when the round began.
    pub kafka_ok: bool,
}

/// Keys read per round (blocked keys beyond it may take part in a window, where they are still
/// recognised and skipped).
const BLOCKED_KEYS_MAX: u32 = 1_000;

/// One round: publishes the due rows of a window, key by key in id order, under `fence`.
///
/// # Errors
/// Database errors.
pub async fn relay_once(
    durable: &Durable,
    pool: &sqlx::MySqlPool,
    s: &OutboxSettings,
    fence: &tokio::sync::Mutex<Fence>,
) -> dispatch_store::Result<Round> {
    let producer = durable.producer();
    if let Some(why) = producer.at_risk() {
        tracing::debug!(why, "kafka at risk; the relay waits");
        return Ok(Round::default());
    }
    let now = Utc::now();
    let idle = Round {
        kafka_ok: true,
        ..Round::default()
    };
    let blocked = outbox_relay::blocked_keys(pool, now, BLOCKED_KEYS_MAX).await?;
    metrics::outbox_blocked_keys(blocked.failing.len(), blocked.dead.len());
    let rows = outbox_relay::pending_window(pool, &blocked, now, s.relay_batch_size).await?;
    if rows.is_empty() {
        return Ok(idle);
    }
    let fault_share = fault_fail_share(&s.fault_fail_publishes_file);
    // Each key's rows, in id order (the window is in id order).
    let mut chains: Vec<Vec<outbox::OutboxRecord>> = Vec::new();
    let mut chain_of: HashMap<(String, Vec<u8>), usize> = HashMap::new();
    for r in rows {
        let k = (r.topic.clone(), r.key.clone());
        let i = *chain_of.entry(k).or_insert_with(|| {
            chains.push(Vec::new());
            chains.len() - 1
        });
        chains[i].push(r);
    }
    let runs = chains.into_iter().map(|chain| async move {
        let mut verdicts = Vec::new();
        for r in chain {
            if !fence.lock().await.check().await {
                break;
            }
            let (id, attempts) = (r.id, r.attempts);
            let rec = OutRecord {
                topic: r.topic,
                key: r.key,
                value: r.value,
                headers: r.headers,
            };
            let outcome = if fault_fails(fault_share, id, attempts) {
                Err(format!(
                    "fault switch outbox.fault_fail_publishes_file ({}): publish failed",
                    s.fault_fail_publishes_file
                ))
            } else {
                producer
                    .send(&rec, "tasks")
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            };
            let stop = outcome.is_err();
            verdicts.push(Verdict {
                id,
                attempts,
                outcome,
            });
            if stop {
                break; // the key's next row waits for this one
            }
        }
        verdicts
    });
    let verdicts: Vec<Verdict> = join_all(runs).await.into_iter().flatten().collect();
    let (published, failed) =
        outbox_relay::record_verdicts(pool, &verdicts, s.max_attempts, |a| backoff(s, a)).await?;
    if failed > 0 {
        producer.breaker().failure();
    } else if published > 0 {
        producer.breaker().success();
    }
    Ok(Round {
        published,
        failed,
        lost_lock: fence.lock().await.lost(),
        kafka_ok: true,
    })
}

/// The share of publishes the fault switch (`outbox.fault_fail_publishes_file`) fails: 0 when it
/// is off (no path, or no file at the path), else the file's share (empty or unreadable: all).
fn fault_fail_share(path: &str) -> f64 {
    if path.is_empty() {
        return 0.0;
    }
    match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0.0,
        Err(_) => 1.0,
        Ok(text) => {
            let share = text.trim().parse::<f64>().unwrap_or(1.0).clamp(0.0, 1.0);
            tracing::warn!(path, share, "outbox fault switch on: relay publishes fail");
            share
        }
    }
}

/// Whether the fault switch fails this publish of row `id` at `attempts`: a deterministic draw
/// per (row, attempt), so a row that failed may pass on a later attempt.
fn fault_fails(share: f64, id: u64, attempts: u32) -> bool {
    if share <= 0.0 {
        return false;
    }
    let x = (id as f64 * 0.618_033_988_75 + f64::from(attempts) * 0.414_213_562_37).fract();
    x < share
}

/// Rows deleted per purge statement (each holds its row locks only that long).
const PURGE_BATCH: u32 = 1_000;

/// Deletes published rows past their retention. Returns how many.
///
/// # Errors
/// Database errors (what was deleted before stays deleted).
pub async fn purge_published(
    pool: &sqlx::MySqlPool,
    s: &OutboxSettings,
) -> dispatch_store::Result<u64> {
    if s.published_retention_ms == 0 {
        return Ok(0);
    }
    let retention =
        chrono::Duration::milliseconds(i64::try_from(s.published_retention_ms).unwrap_or(i64::MAX));
    let before = Utc::now()
        .checked_sub_signed(retention)
        .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
    let mut total = 0;
    loop {
        let n = outbox::purge_published(pool, before, PURGE_BATCH).await?;
        total += n;
        if n < u64::from(PURGE_BATCH) {
            return Ok(total);
        }
    }
}

/// Runs the relay until `stop`: leader election, draining, backlog metrics.
pub async fn run(
    durable: Durable,
    pool: sqlx::MySqlPool,
    s: OutboxSettings,
    idempotency_retention: Duration,
    stop: CancellationToken,
) {
    let idle = Duration::from_millis(s.relay_interval_ms.max(1));
    let retry = Duration::from_millis(s.lock_retry_ms.max(1));
    let purge_every = Duration::from_millis(s.purge_interval_ms.max(1));
    let mut purged_at: Option<Instant> = None;
    let mut fence: Option<tokio::sync::Mutex<Fence>> = None;
    // Publishes failed since the last clean round: the next clean one makes the rows that wait
    // out a backoff due at once (Kafka is back; they should not wait up to the backoff cap).
    let mut failing = false;
    while !stop.is_cancelled() {
        let Some(leader) = fence.as_ref() else {
            match Fence::acquire(&pool, &s).await {
                Ok(Some(f)) => {
                    tracing::info!(lease_ms = s.relay_lease_ms, "outbox relay leader");
                    // Rows may wait out backoffs another leader gave them: the first clean round
                    // makes them due.
                    failing = true;
                    f.wait_lease(&stop).await;
                    fence = Some(tokio::sync::Mutex::new(f));
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "cannot take the outbox relay lock"),
            }
            pause(&stop, retry).await;
            continue;
        };
        if !leader.lock().await.check().await {
            tracing::warn!("outbox relay lock lost; publishing stopped");
            fence = None;
            continue;
        }
        let busy = match relay_once(&durable, &pool, &s, leader).await {
            Ok(round) => {
                if round.published + round.failed > 0 {
                    metrics::outbox_relayed(round.published, round.failed);
                }
                if round.lost_lock {
                    tracing::warn!("outbox relay lock lost; publishing stopped");
                    fence = None;
                    continue;
                }
                if round.failed > 0 {
                    failing = true;
                } else if failing && round.kafka_ok {
                    failing = false;
                    match outbox_relay::retry_now(&pool, Utc::now()).await {
                        Ok(n) if n > 0 => {
                            tracing::info!(
                                rows = n,
                                "publishing works again; rows waiting out a backoff are due now"
                            )
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot make backed-off outbox rows due")
                        }
                    }
                }
                round.published > 0 && round.failed == 0
            }
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay round failed");
                false
            }
        };
        if purged_at.is_none_or(|t| t.elapsed() >= purge_every) {
            purged_at = Some(Instant::now());
            match purge_published(&pool, &s).await {
                Ok(n) => metrics::outbox_purged(n),
                Err(e) => tracing::warn!(error = %e, "outbox purge failed"),
            }
            if let Err(e) = purge_idempotency_keys(&pool, idempotency_retention).await {
                tracing::warn!(error = %e, "idempotency key purge failed");
            }
        }
        match outbox::backlog(&pool).await {
            Ok(b) => metrics::outbox_backlog(&b),
            Err(e) => tracing::debug!(error = %e, "outbox backlog query failed"),
        }
        if !busy {
            pause(&stop, idle).await;
        }
    }
    if let Some(f) = fence {
        f.into_inner().release().await;
        tracing::info!("outbox relay stopped");
    }
}

/// Keeps sticky routing in step with the outbox (rows written by any instance).
pub async fn watch_sticky(durable: Durable, s: OutboxSettings, stop: CancellationToken) {
    let idle = Duration::from_millis(s.relay_interval_ms.max(1));
    while !stop.is_cancelled() {
        durable.refresh_sticky().await;
        pause(&stop, idle).await;
    }
}

/// Deletes idempotency keys older than `retention` (0 keeps them). Returns how many. Past it, a
/// resubmit still finds its task id (one task, one execution) but its parameters are no longer
/// compared.
///
/// # Errors
/// Database errors.
pub async fn purge_idempotency_keys(
    pool: &sqlx::MySqlPool,
    retention: Duration,
) -> dispatch_store::Result<u64> {
    if retention.is_zero() {
        return Ok(0);
    }
    let before = Utc::now()
        .checked_sub_signed(chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX))
        .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
    let mut total = 0;
    loop {
        let n = dispatch_store::idempotency_keys::purge(pool, before, PURGE_BATCH).await?;
        total += n;
        if n < u64::from(PURGE_BATCH) {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fault_switch_is_off_without_a_file_and_fails_its_share_with_one() {
        assert_eq!(fault_fail_share(""), 0.0);
        let dir = std::env::temp_dir().join(format!("relay-fault-{}", std::process::id()));
        let path = dir.to_string_lossy().into_owned();
        let _ = std::fs::remove_file(&dir);
        assert_eq!(fault_fail_share(&path), 0.0);
        std::fs::write(&dir, "").expect("write the switch file");
        assert_eq!(fault_fail_share(&path), 1.0);
        assert!((0..100).all(|id| fault_fails(1.0, id, 1)));
        std::fs::write(&dir, "0.5\n").expect("write the switch file");
        assert_eq!(fault_fail_share(&path), 0.5);
        let failed = (0..1000).filter(|&id| fault_fails(0.5, id, 1)).count();
        assert!((400..600).contains(&failed), "{failed}");
        assert!((0..100).all(|id| !fault_fails(0.0, id, 1)));
        std::fs::remove_file(&dir).expect("remove the switch file");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let s = OutboxSettings {
            relay_backoff_initial_ms: 100,
            relay_backoff_max_ms: 1_000,
            ..OutboxSettings::default()
        };
        let got: Vec<u128> = (1..=6).map(|a| backoff(&s, a).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
    }
}
