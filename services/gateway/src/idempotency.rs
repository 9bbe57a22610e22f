//! Idempotent submit.
//!
//! The task id of a submit with an idempotency key is derived from (tenant, key) (dispatch-core),
//! so every instance computes the same id and one execution holds even without Redis: the
//! processor dedupes a second record of the same task id. Redis only avoids that second Kafka
//! write:
//!
//! 1. `SET <prefix>idem:<tenant>:<key> <pending> NX PX ttl`. Won: go ahead and produce, then
//!    overwrite the value with the encoded response ([`Idempotency::finish`]), or delete it if
//!    the produce failed ([`Idempotency::release`]) so a retry is not answered "duplicate" for a
//!    task that was never accepted. Lost: answer the stored response with `duplicate = true`;
//!    if only the pending marker is there (first submit in flight, or its release failed), fall
//!    through to step 2, because Redis alone must never make us answer OK for a lost task.
//! 2. Redis down or slow (a failsafe breaker plus a short command timeout): look the task id up in
//!    MySQL (`tasks`, then the outbox) and answer duplicate if found; otherwise produce.

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{IdempotencyKey, TaskId, Tenant};
use dispatch_proto::v1 as pb;
use dispatch_runtime::settings::RedisSettings;
use dispatch_store::outbox_relay::{self, KnownTask};
use parking_lot::RwLock;
use prost::Message;
use redis::aio::ConnectionManager;

use crate::breaker::{self, Breaker};
use crate::metrics;
use crate::settings::IdempotencySettings;

/// The pending marker expires quickly: it only has to outlive one submit.
const PENDING_TTL_MS: u64 = 60_000;

/// A Redis connection that may not exist yet (Redis down at start-up): a background task keeps
/// trying to connect, and the [`ConnectionManager`] reconnects by itself afterwards.
#[derive(Clone, Default)]
pub struct RedisSlot(Arc<RwLock<Option<ConnectionManager>>>);

impl RedisSlot {
    /// The connection, if one was ever made.
    pub fn get(&self) -> Option<ConnectionManager> {
        self.0.read().clone()
    }

    /// Installs a connection.
    pub fn set(&self, conn: ConnectionManager) {
        *self.0.write() = Some(conn);
    }

    /// Connects now if possible, else keeps trying every `retry` until `stop`.
    pub async fn connect(
        &self,
        s: &RedisSettings,
        retry: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            match dispatch_runtime::redis_client::connect(s).await {
                Ok(c) => {
                    self.set(c);
                    tracing::info!("redis connected");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "redis not reachable; idempotency falls back to mysql")
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(retry) => {}
            }
        }
    }
}

/// What to do with a submit that has an idempotency key.
#[derive(Debug)]
pub enum Claim {
    /// First time seen (as far as we can tell): produce. `redis_key` is set when the fast-path
    /// key was taken and must be finished or released.
    Fresh {
        /// The Redis key this submit owns.
        redis_key: Option<String>,
    },
    /// Seen before: answer this (duplicate = true).
    Duplicate(pb::SubmitTaskResponse),
}

/// The idempotency checker.
#[derive(Clone)]
pub struct Idempotency {
    redis: RedisSlot,
    breaker: Breaker,
    prefix: String,
    ttl_ms: u64,
    command_timeout: Duration,
    pool: sqlx::MySqlPool,
}

impl Idempotency {
    /// Builds the checker over `redis` (possibly not connected yet) and the store.
    pub fn new(
        redis: RedisSlot,
        rs: &RedisSettings,
        s: &IdempotencySettings,
        pool: sqlx::MySqlPool,
    ) -> Self {
        Self {
            redis,
            breaker: breaker::new(
                "redis",
                s.breaker_failures,
                s.breaker_open_ms,
                s.breaker_open_ms.saturating_mul(16),
            ),
            prefix: rs.key_prefix.clone(),
            ttl_ms: s.ttl_ms,
            command_timeout: Duration::from_millis(rs.command_timeout_ms.max(1)),
            pool,
        }
    }

    fn key(&self, tenant: &Tenant, key: &IdempotencyKey) -> String {
        format!("{}idem:{}:{}", self.prefix, tenant, key)
    }

    /// A usable Redis connection, unless Redis is known to be failing.
    fn conn(&self) -> Option<ConnectionManager> {
        let c = self.redis.get()?;
        self.breaker.is_call_permitted().then_some(c)
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        conn: &mut ConnectionManager,
    ) -> Option<T> {
        let fut = cmd.query_async::<T>(conn);
        let out = match tokio::time::timeout(self.command_timeout, fut).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "redis command failed");
                None
            }
            Err(_) => {
                tracing::debug!("redis command timed out");
                None
            }
        };
        match out {
            Some(_) => self.breaker.on_success(),
            None => self.breaker.on_error(),
        }
        out
    }

    /// Decides whether `task_id` (derived from `key`) was already accepted.
    pub async fn claim(&self, tenant: &Tenant, key: &IdempotencyKey, task_id: TaskId) -> Claim {
        if let Some(mut conn) = self.conn() {
            let rkey = self.key(tenant, key);
            let pending = pb::SubmitTaskResponse {
                task_id: task_id.to_string(),
                version: dispatch_core::state::ACCEPTED_VERSION,
                ..Default::default()
            }
            .encode_to_vec();
            let mut set = redis::cmd("SET");
            set.arg(&rkey)
                .arg(pending)
                .arg("NX")
                .arg("PX")
                .arg(self.ttl_ms.min(PENDING_TTL_MS));
            match self.run::<Option<String>>(&set, &mut conn).await {
                Some(Some(_)) => {
                    return Claim::Fresh {
                        redis_key: Some(rkey),
                    };
                }
                Some(None) => {
                    let mut get = redis::cmd("GET");
                    get.arg(&rkey);
                    let stored = self
                        .run::<Option<Vec<u8>>>(&get, &mut conn)
                        .await
                        .flatten()
                        .and_then(|v| pb::SubmitTaskResponse::decode(v.as_slice()).ok())
                        .filter(|r| {
                            r.task_id == task_id.to_string()
                                && r.accepted_via != pb::AcceptedVia::Unspecified as i32
                        });
                    if let Some(mut resp) = stored {
                        metrics::idempotency_hit("redis");
                        resp.duplicate = true;
                        return Claim::Duplicate(resp);
                    }
                    // Only the pending marker: the first submit is in flight, or it failed and
                    // its key could not be released. Redis cannot vouch that the task was
                    // accepted, so the store decides (at worst a second record, deduped by id).
                }
                None => {} // Redis failing: the store decides.
            }
        }
        match outbox_relay::find_task(&self.pool, task_id).await {
            Ok(Some(known)) => {
                metrics::idempotency_hit("store");
                let mut resp = pb::SubmitTaskResponse {
                    task_id: task_id.to_string(),
                    duplicate: true,
                    version: dispatch_core::state::ACCEPTED_VERSION,
                    ..Default::default()
                };
                if let KnownTask::Outboxed {
                    outbox_id, topic, ..
                } = known
                {
                    resp.accepted_via = pb::AcceptedVia::Outbox as i32;
                    resp.outbox_id = outbox_id;
                    resp.topic = topic;
                }
                Claim::Duplicate(resp)
            }
            Ok(None) => Claim::Fresh { redis_key: None },
            Err(e) => {
                // Neither Redis nor MySQL can tell: produce anyway; the processor dedupes by id.
                tracing::warn!(error = %e, "idempotency store check failed; accepting");
                Claim::Fresh { redis_key: None }
            }
        }
    }

    /// Records the accepted response under the claimed key (best effort).
    pub async fn finish(&self, redis_key: &str, resp: &pb::SubmitTaskResponse) {
        if let Some(mut conn) = self.redis.get() {
            let mut set = redis::cmd("SET");
            set.arg(redis_key)
                .arg(resp.encode_to_vec())
                .arg("XX")
                .arg("PX")
                .arg(self.ttl_ms);
            let _ = self.run::<Option<String>>(&set, &mut conn).await;
        }
    }

    /// Frees the claimed key after a failed submit, so a retry is not a "duplicate".
    pub async fn release(&self, redis_key: &str) {
        if let Some(mut conn) = self.redis.get() {
            let mut del = redis::cmd("DEL");
            del.arg(redis_key);
            if self.run::<i64>(&del, &mut conn).await.is_none() {
                tracing::warn!(
                    "cannot release idempotency key after a failed submit; it expires with its ttl"
                );
            }
        }
    }

    /// `PING` for the health probe.
    ///
    /// # Errors
    /// Not connected, or the command failed.
    pub async fn ping(&self) -> Result<(), String> {
        let mut conn = self.redis.get().ok_or("not connected")?;
        let ping = redis::cmd("PING");
        let fut = ping.query_async::<String>(&mut conn);
        match tokio::time::timeout(self.command_timeout * 4, fut).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timeout".into()),
        }
    }
}
