//! The outbox relay.
//!
//! **Why in the gateway**: the component that writes the outbox owns draining it. The gateway
//! already holds the producer (idempotent, same partitioner) and the Kafka breaker, and its sticky
//! routing depends on the backlog draining; the processor stays a pure consumer.
//!
//! One relay runs at a time across all gateway instances: the leader holds a MySQL named lock
//! (`GET_LOCK`, per database) on a dedicated connection for as long as it relays; the others retry
//! taking it every `lock_retry_ms`, so a crashed leader (its connection closes, the lock goes) is
//! replaced within seconds. The leader drains rows in id order, a key never overtaking its own
//! older rows (`outbox_relay::relay_ordered`), and waits for librdkafka's definitive delivery
//! report (no timeout of its own), so a row is re-published only if Kafka really refused it. A row
//! that fails is retried with exponential backoff and marked `dead` after `max_attempts` (an
//! alert: `dispatch_outbox_backlog_records{state="dead"}`). While the Kafka breaker is open the
//! relay does not try, so an outage does not burn the rows' attempts.
//!
//! The leader also deletes published rows past `published_retention_ms`, every
//! `purge_interval_ms`, a bounded batch per statement: without that the table only grows.

use std::time::{Duration, Instant};

use chrono::Utc;
use dispatch_store::outbox;
use dispatch_store::outbox_relay;
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

/// Publishes one batch of due rows. Returns (published, failed).
///
/// # Errors
/// Database errors.
pub async fn relay_once(
    durable: &Durable,
    pool: &sqlx::MySqlPool,
    s: &OutboxSettings,
) -> dispatch_store::Result<(usize, usize)> {
    let producer = durable.producer();
    if !producer.breaker().is_call_permitted() {
        return Ok((0, 0));
    }
    outbox_relay::relay_ordered(
        pool,
        s.relay_batch_size,
        s.max_attempts,
        |a| backoff(s, a),
        |records| async move {
            // Produced together (librdkafka keeps per-partition order); every report awaited.
            let sends = records.into_iter().map(|r| async move {
                let rec = OutRecord {
                    topic: r.topic,
                    key: r.key,
                    value: r.value,
                    headers: r.headers,
                };
                producer.send(&rec, "tasks").await
            });
            let results = join_all(sends).await;
            let verdicts: Vec<Result<(), String>> = results
                .into_iter()
                .map(|r| r.map(|_| ()).map_err(|e| e.to_string()))
                .collect();
            if verdicts.iter().any(Result::is_err) {
                producer.breaker().on_error();
            } else {
                producer.breaker().on_success();
            }
            verdicts
        },
    )
    .await
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

async fn take_lock(pool: &sqlx::MySqlPool) -> Result<Option<MySqlConnection>, String> {
    let mut conn = pool.acquire().await.map_err(|e| e.to_string())?.detach();
    match outbox_relay::try_relay_lock(&mut conn).await {
        Ok(true) => Ok(Some(conn)),
        Ok(false) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs the relay until `stop`: leader election, draining, backlog metrics.
pub async fn run(
    durable: Durable,
    pool: sqlx::MySqlPool,
    s: OutboxSettings,
    stop: CancellationToken,
) {
    let idle = Duration::from_millis(s.relay_interval_ms.max(1));
    let retry = Duration::from_millis(s.lock_retry_ms.max(1));
    let purge_every = Duration::from_millis(s.purge_interval_ms.max(1));
    let mut purged_at: Option<Instant> = None;
    let mut lock: Option<MySqlConnection> = None;
    while !stop.is_cancelled() {
        let Some(conn) = lock.as_mut() else {
            match take_lock(&pool).await {
                Ok(Some(c)) => {
                    tracing::info!("outbox relay leader");
                    lock = Some(c);
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "cannot take the outbox relay lock"),
            }
            pause(&stop, retry).await;
            continue;
        };
        if !matches!(outbox_relay::holds_relay_lock(conn).await, Ok(true)) {
            tracing::warn!("outbox relay lock lost");
            lock = None;
            continue;
        }
        let busy = match relay_once(&durable, &pool, &s).await {
            Ok((0, 0)) => false,
            Ok((published, failed)) => {
                metrics::outbox_relayed(published, failed);
                failed == 0
            }
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay batch failed");
                false
            }
        };
        if purged_at.is_none_or(|t| t.elapsed() >= purge_every) {
            purged_at = Some(Instant::now());
            match purge_published(&pool, &s).await {
                Ok(n) => metrics::outbox_purged(n),
                Err(e) => tracing::warn!(error = %e, "outbox purge failed"),
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
    if let Some(mut conn) = lock {
        let _ = outbox_relay::release_relay_lock(&mut conn).await;
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

async fn pause(stop: &CancellationToken, d: Duration) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(d) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
