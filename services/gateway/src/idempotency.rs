//! Idempotent submit: one (tenant, idempotency key), one task, one execution, with the same
//! parameters.
//!
//! The task id of a submit with an idempotency key is derived from (tenant, key) (dispatch-core),
//! so every instance computes the same id and one execution holds even without Redis: the
//! processor dedupes a second record of the same task id. What is compared is the submit's
//! [`Fingerprint`]: a second submit with the same key and other parameters is a
//! [`Claim::Conflict`] (ALREADY_EXISTS naming the field), never a silent "duplicate" of a task
//! the caller did not ask for.
//!
//! 1. Redis: `SET <prefix>idem:<tenant>:<key> <fingerprint, pending> NX PX ttl`. Won: go ahead;
//!    the value is overwritten with the accepted response ([`Idempotency::finish`]) or deleted if
//!    nothing was accepted ([`Idempotency::release`]). Lost: another fingerprint is a conflict;
//!    the same one with a stored response is answered with it (`duplicate = true`); only the
//!    pending marker (first submit in flight, or its release failed) falls through, because Redis
//!    alone must never make us answer OK for a lost task.
//! 2. MySQL, always (Redis may forget, fail or be flushed): the key is bound to its fingerprint in
//!    `idempotency_keys` before the task is made durable (`dispatch_store::idempotency_keys`); a
//!    key bound to another fingerprint is a conflict, on every instance and with Redis down.
//!    MySQL failing (or slower than `idempotency.store_timeout_ms`) does not refuse the submit
//!    when Redis compared; when neither could, the submit is refused with UNAVAILABLE rather
//!    than risk accepting a conflicting reuse of its key.
//! 3. Unless Redis vouched that this is the first submit, or the key was bound just now, the task
//!    id is looked up in MySQL (`tasks`, then the outbox): found is a duplicate; not found is
//!    produced (at worst a second record of the same task id, which the processor dedupes).
//!
//! A batch binds all its keys in one statement; items of one batch with the same key are
//! settled by the gateway before any of this (the first item's answer).
//!
//! Over 400 lines because a claim is one decision over two stores: the Redis path and the MySQL
//! fallback (the batched `Binder`) answer the same [`Claim`] and compare the same fingerprint; the
//! `Binder` would move to a module of its own first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dispatch_core::{IdempotencyKey, NewTask, TaskId, Tenant};
use dispatch_proto::v1 as pb;
use dispatch_runtime::settings::RedisSettings;
use dispatch_store::idempotency_keys::{self, Binding, Bound};
use dispatch_store::outbox_relay::{self, KnownTask};
use futures::future::join_all;
use parking_lot::RwLock;
use prost::Message;
use redis::aio::ConnectionManager;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::fingerprint::Fingerprint;
use crate::metrics;
use crate::settings::IdempotencySettings;
use dispatch_runtime::breaker::{Breaker, BreakerSettings};

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
    /// Seen before with the same parameters: answer this (duplicate = true).
    Duplicate(pb::SubmitTaskResponse),
    /// The key was first used with other parameters: refuse.
    Conflict(Conflict),
    /// Neither Redis nor MySQL could compare the parameters: refuse (UNAVAILABLE).
    Unchecked,
}

/// A key reused with other parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The task the key names.
    pub task_id: TaskId,
    /// The client's key.
    pub idempotency_key: String,
    /// The fields that differ from the first submit ([`crate::fingerprint::FIELDS`] names).
    pub fields: Vec<&'static str>,
}

/// One keyed submit to claim.
pub struct Keyed<'a> {
    /// The validated task (its `idempotency_key` is set).
    pub task: &'a NewTask,
    /// Its parameters' fingerprint.
    pub fingerprint: Fingerprint,
}

/// What Redis holds under a key: the fingerprint of the first submit and, once accepted, its
/// response. Tags far from `SubmitTaskResponse`'s, so a value written before fingerprints (a bare
/// response) decodes with neither field and is treated as "cannot compare".
#[derive(Clone, PartialEq, prost::Message)]
struct Stored {
    #[prost(bytes = "vec", tag = "100")]
    fingerprint: Vec<u8>,
    #[prost(message, optional, tag = "101")]
    response: Option<pb::SubmitTaskResponse>,
}

/// What Redis said about one key.
enum RedisSays {
    /// This submit took the key.
    Won(String),
    /// Accepted before with the same parameters.
    Duplicate(pb::SubmitTaskResponse),
    /// Bound to other parameters.
    Conflict(Vec<&'static str>),
    /// Same parameters, but only the pending marker: the first submit is in flight (or failed
    /// and its key could not be released), so Redis cannot vouch that the task was accepted.
    Pending,
    /// Redis cannot tell (down, slow, breaker open): it compared nothing.
    Unknown,
}

/// Binds keys in MySQL for every submit of this instance together: a submit's keys join the
/// next statement (up to [`BIND_BATCH_MAX`] keys), and at most [`BIND_STATEMENTS`] statements run
/// at once. Under load that is a statement per few milliseconds instead of one per keyed submit,
/// so the check does not take the pool the outbox and the relay need.
#[derive(Clone)]
struct Binder {
    tx: mpsc::Sender<BindRequest>,
}

struct BindRequest {
    keys: Vec<Binding>,
    reply: oneshot::Sender<Result<Vec<Bound>, String>>,
}

/// Keys per binding statement, at most (a request is never split).
const BIND_BATCH_MAX: usize = 500;
/// Binding statements in flight, at most.
const BIND_STATEMENTS: usize = 4;

impl Binder {
    /// Starts the binding task (it ends when every clone is dropped).
    fn spawn(pool: sqlx::MySqlPool) -> Self {
        let (tx, mut rx) = mpsc::channel::<BindRequest>(4_096);
        let permits = Arc::new(Semaphore::new(BIND_STATEMENTS));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let Some(first) = rx.recv().await else { return };
                let mut n = first.keys.len();
                let mut reqs = vec![first];
                while n < BIND_BATCH_MAX {
                    match rx.try_recv() {
                        Ok(r) => {
                            n += r.keys.len();
                            reqs.push(r);
                        }
                        Err(_) => break,
                    }
                }
                let pool = pool.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let all: Vec<Binding> = reqs.iter().flat_map(|r| r.keys.clone()).collect();
                    match idempotency_keys::bind(&pool, &all).await {
                        Ok(bound) => {
                            let mut it = bound.into_iter();
                            for r in reqs {
                                let part = it.by_ref().take(r.keys.len()).collect();
                                let _ = r.reply.send(Ok(part));
                            }
                        }
                        Err(e) => {
                            let e = e.to_string();
                            for r in reqs {
                                let _ = r.reply.send(Err(e.clone()));
                            }
                        }
                    }
                });
            }
        });
        Self { tx }
    }

    async fn bind(&self, keys: Vec<Binding>) -> Result<Vec<Bound>, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(BindRequest { keys, reply })
            .await
            .map_err(|_| "idempotency binder stopped".to_owned())?;
        rx.await
            .map_err(|_| "idempotency binder stopped".to_owned())?
    }
}

/// The idempotency checker.
#[derive(Clone)]
pub struct Idempotency {
    redis: RedisSlot,
    breaker: Breaker,
    prefix: String,
    ttl_ms: u64,
    command_timeout: Duration,
    store_timeout: Duration,
    binder: Binder,
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
            breaker: Breaker::new(
                metrics::SERVICE,
                "redis",
                BreakerSettings::from_ms(
                    s.breaker_failures,
                    s.breaker_open_ms,
                    s.breaker_open_ms.saturating_mul(16),
                ),
            ),
            prefix: rs.key_prefix.clone(),
            ttl_ms: s.ttl_ms,
            command_timeout: Duration::from_millis(rs.command_timeout_ms.max(1)),
            store_timeout: Duration::from_millis(s.store_timeout_ms.max(1)),
            binder: Binder::spawn(pool.clone()),
            pool,
        }
    }

    fn key(&self, tenant: &Tenant, key: &IdempotencyKey) -> String {
        format!("{}idem:{}:{}", self.prefix, tenant, key)
    }

    /// A usable Redis connection, unless Redis is known to be failing.
    fn conn(&self) -> Option<ConnectionManager> {
        let c = self.redis.get()?;
        self.breaker.permits().then_some(c)
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
            Some(_) => self.breaker.success(),
            None => self.breaker.failure(),
        }
        out
    }

    /// Step 1 for one key.
    async fn redis_claim(&self, mut conn: ConnectionManager, k: &Keyed<'_>) -> RedisSays {
        let (t, fp) = (k.task, &k.fingerprint);
        let Some(key) = &t.idempotency_key else {
            return RedisSays::Unknown;
        };
        let rkey = self.key(&t.tenant, key);
        let pending = Stored {
            fingerprint: fp.encode(),
            response: Some(pb::SubmitTaskResponse {
                task_id: t.task_id.to_string(),
                version: dispatch_core::state::ACCEPTED_VERSION,
                ..Default::default()
            }),
        }
        .encode_to_vec();
        let mut set = redis::cmd("SET");
        set.arg(&rkey)
            .arg(pending)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl_ms.min(PENDING_TTL_MS));
        match self.run::<Option<String>>(&set, &mut conn).await {
            Some(Some(_)) => return RedisSays::Won(rkey),
            Some(None) => {}
            None => return RedisSays::Unknown, // Redis failing: the store decides.
        }
        let mut get = redis::cmd("GET");
        get.arg(&rkey);
        let Some(value) = self.run::<Option<Vec<u8>>>(&get, &mut conn).await.flatten() else {
            return RedisSays::Unknown; // expired in between, or failing
        };
        let task_id = t.task_id.to_string();
        let stored = Stored::decode(value.as_slice()).unwrap_or_default();
        let compared = !stored.fingerprint.is_empty();
        let response = if !compared {
            // Written before fingerprints: a bare response, nothing to compare with.
            pb::SubmitTaskResponse::decode(value.as_slice()).ok()
        } else {
            let fields = fp.diff_stored(&stored.fingerprint);
            if !fields.is_empty() {
                return RedisSays::Conflict(fields);
            }
            stored.response
        };
        match response.filter(|r| {
            r.task_id == task_id && r.accepted_via != pb::AcceptedVia::Unspecified as i32
        }) {
            Some(mut resp) => {
                resp.duplicate = true;
                RedisSays::Duplicate(resp)
            }
            None if compared => RedisSays::Pending,
            None => RedisSays::Unknown,
        }
    }

    /// Decides, for each keyed submit (in order), whether it is new, a duplicate or a conflict.
    /// The submits must have distinct keys (a batch settles its own repeats first). The MySQL
    /// steps take at most `idempotency.store_timeout_ms` and end by `deadline`.
    ///
    /// A submit whose parameters neither Redis nor MySQL could compare (Redis failing and MySQL
    /// failing or too slow) is [`Claim::Unchecked`]: accepting it could accept a conflicting
    /// reuse of its key, so the caller refuses it (UNAVAILABLE, safe to retry).
    pub async fn claim_many(&self, items: &[Keyed<'_>], deadline: Option<Instant>) -> Vec<Claim> {
        if items.is_empty() {
            return Vec::new();
        }
        if cfg!(feature = "fault-no-dedupe") {
            return items
                .iter()
                .map(|_| Claim::Fresh { redis_key: None })
                .collect();
        }
        let mut redis: Vec<RedisSays> = match self.conn() {
            Some(conn) => join_all(items.iter().map(|k| self.redis_claim(conn.clone(), k))).await,
            None => items.iter().map(|_| RedisSays::Unknown).collect(),
        };

        // Step 2: bind in MySQL whatever Redis did not settle.
        let open: Vec<usize> = (0..items.len())
            .filter(|&i| {
                matches!(
                    redis[i],
                    RedisSays::Won(_) | RedisSays::Pending | RedisSays::Unknown
                )
            })
            .collect();
        let bindings: Vec<Binding> = open
            .iter()
            .filter_map(|&i| {
                let t = items[i].task;
                Some(Binding {
                    task_id: t.task_id,
                    tenant: t.tenant.to_string(),
                    idempotency_key: t.idempotency_key.as_ref()?.to_string(),
                    business_key: t.business_key.to_string(),
                    priority: t.priority,
                    fingerprint: items[i].fingerprint.encode(),
                })
            })
            .collect();
        let store_deadline = {
            let bound = Instant::now() + self.store_timeout;
            deadline.map_or(bound, |d| d.min(bound))
        };
        let mut inserted = vec![false; items.len()];
        let mut bound_in_mysql = vec![false; items.len()];
        let bind = if bindings.is_empty() {
            Ok(Vec::new())
        } else {
            tokio::time::timeout_at(store_deadline.into(), self.binder.bind(bindings))
                .await
                .map_err(|_| "timed out".to_owned())
                .and_then(|r| r)
        };
        match bind {
            Ok(bound) => {
                for (&i, b) in open.iter().zip(bound) {
                    bound_in_mysql[i] = true;
                    match b {
                        Bound::Inserted => inserted[i] = true,
                        Bound::Same => {}
                        Bound::Other(stored) => {
                            if let RedisSays::Won(rkey) = &redis[i] {
                                // Redis forgot the key (expiry, flush): it must not keep ours.
                                self.release(rkey).await;
                            }
                            redis[i] =
                                RedisSays::Conflict(items[i].fingerprint.diff_stored(&stored));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot bind idempotency keys in mysql; redis alone compares parameters");
            }
        }

        // Step 3: the store decides what Redis did not vouch for (a key bound just now names no
        // task yet: nothing to look up).
        let lookup: Vec<TaskId> = (0..items.len())
            .filter(|&i| {
                matches!(redis[i], RedisSays::Pending | RedisSays::Unknown)
                    && bound_in_mysql[i]
                    && !inserted[i]
            })
            .map(|i| items[i].task.task_id)
            .collect();
        let known = if lookup.is_empty() {
            Ok(Default::default())
        } else {
            tokio::time::timeout_at(
                store_deadline.into(),
                outbox_relay::find_tasks(&self.pool, &lookup),
            )
            .await
            .map_err(|_| "timed out".to_owned())
            .and_then(|r| r.map_err(|e| e.to_string()))
        };
        let known = known.unwrap_or_else(|e| {
            // The parameters were compared; at worst a second record of the same task id, which
            // the processor dedupes.
            tracing::warn!(error = %e, "idempotency store lookup failed; producing");
            Default::default()
        });
        redis
            .into_iter()
            .zip(items)
            .enumerate()
            .map(|(i, (said, k))| {
                let t = k.task;
                match said {
                    RedisSays::Won(rkey) => Claim::Fresh {
                        redis_key: Some(rkey),
                    },
                    RedisSays::Duplicate(resp) => {
                        metrics::idempotency_hit("redis");
                        Claim::Duplicate(resp)
                    }
                    RedisSays::Conflict(fields) => Claim::Conflict(Conflict {
                        task_id: t.task_id,
                        idempotency_key: t
                            .idempotency_key
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_default(),
                        fields,
                    }),
                    RedisSays::Unknown if !bound_in_mysql[i] => Claim::Unchecked,
                    RedisSays::Pending | RedisSays::Unknown => match known.get(&t.task_id) {
                        Some(found) => {
                            metrics::idempotency_hit("store");
                            Claim::Duplicate(store_duplicate(t.task_id, found))
                        }
                        None => Claim::Fresh { redis_key: None },
                    },
                }
            })
            .collect()
    }

    /// Records the accepted response under the claimed key (best effort).
    pub async fn finish(
        &self,
        redis_key: &str,
        fingerprint: &Fingerprint,
        resp: &pb::SubmitTaskResponse,
    ) {
        if let Some(mut conn) = self.redis.get() {
            let value = Stored {
                fingerprint: fingerprint.encode(),
                response: Some(resp.clone()),
            };
            let mut set = redis::cmd("SET");
            set.arg(redis_key)
                .arg(value.encode_to_vec())
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

/// The answer to a duplicate the store knows of.
fn store_duplicate(task_id: TaskId, known: &KnownTask) -> pb::SubmitTaskResponse {
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
        resp.outbox_id = *outbox_id;
        resp.topic = topic.clone();
    }
    resp
}
