//! L2: Redis, shared by every reader instance.
//!
//! - `<prefix>task:<id>` is a hash `{v: zero-padded version, t: protobuf Task}` with a randomized
//!   TTL; a Lua compare-and-set writes it only when the version moves forward, so instances that
//!   load or apply events in different orders converge on the newest state.
//! - `<prefix>neg:<id>` marks an unknown id for a short TTL; writing the task deletes it.
//! - Every command runs under the breaker and a timeout. While the breaker is open (or Redis was
//!   never reached) lookups skip L2 and writes are dropped: Redis is an optimisation, never a
//!   dependency of a correct answer.
//!
//! Over 400 lines because the Lua compare-and-set, the batched lookups and writes, and the
//! background fill queue all run under the one breaker and timeout described above; the code ends
//! near line 406. The background write queue ([`put_in_background`] and its drain) would move out
//! first.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Weak};
use std::time::Duration;

use dispatch_core::TaskId;
use dispatch_proto::v1 as pb;
use prost::Message;
use redis::aio::ConnectionManager;
use tokio::sync::{OnceCell, mpsc};

use crate::l1::is_terminal;
use crate::metrics::{self, CacheResult, Tier};
use crate::settings::CacheSettings;
use crate::xfetch::jittered;
use dispatch_runtime::breaker::Breaker;
use dispatch_runtime::tls_failures::{Dependency, TlsFailures};

/// Health component (and breaker) name of Redis.
pub const REDIS: &str = "redis";

/// The compare-and-set: KEYS = task key, negative key; ARGV = version (20 digits, so string
/// comparison is numeric comparison), task bytes, TTL ms, and `1` to write only over an entry
/// that is already there (the task or its negative entry: an event refreshes what readers
/// cached, it does not fill Redis with every task that changes).
const CAS: &str = r"
local cur = redis.call('HGET', KEYS[1], 'v')
if ARGV[4] == '1' and not cur and redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
if cur and cur >= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 't', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('DEL', KEYS[2])
return 1
";

/// What L2 answered.
#[derive(Debug, Clone)]
pub enum L2Lookup {
    /// The task.
    Hit(Arc<pb::Task>),
    /// A negative entry: the id was unknown a moment ago.
    NegativeHit,
    /// Nothing cached.
    Miss,
    /// Not asked (disabled or breaker open) or failed.
    Unavailable,
}

/// The Redis tier.
pub struct L2 {
    enabled: bool,
    conn: OnceCell<ConnectionManager>,
    breaker: Breaker,
    prefix: String,
    timeout: Duration,
    live_ttl: Duration,
    terminal_ttl: Duration,
    negative_ttl: Duration,
    jitter: f64,
    cas: redis::Script,
    /// Background writes (see [`put_in_background`]); made on first use.
    queue: std::sync::OnceLock<mpsc::Sender<(Arc<pb::Task>, Fill)>>,
    /// Where a failed command's TLS failure is recorded (`redis_tls`: see `app`).
    tls: Option<TlsFailures>,
}

impl L2 {
    /// A tier that is not connected yet (see [`L2::set_connection`]).
    pub fn new(
        s: &CacheSettings,
        prefix: String,
        command_timeout: Duration,
        breaker: Breaker,
    ) -> Self {
        let ms = Duration::from_millis;
        Self {
            enabled: s.l2_enabled,
            conn: OnceCell::new(),
            breaker,
            prefix,
            // The connection manager has its own response timeout; this also bounds reconnects.
            timeout: command_timeout,
            live_ttl: ms(s.l2_live_ttl_ms),
            terminal_ttl: ms(s.l2_terminal_ttl_ms),
            negative_ttl: ms(s.l2_negative_ttl_ms),
            jitter: s.ttl_jitter_ratio,
            cas: redis::Script::new(CAS),
            queue: std::sync::OnceLock::new(),
            tls: None,
        }
    }

    /// Records the TLS failures of commands (a reconnect the server refuses) in `tls`.
    #[must_use]
    pub fn with_tls_failures(mut self, tls: TlsFailures) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Whether L2 is configured on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether a connection exists (the manager reconnects by itself afterwards).
    pub fn connected(&self) -> bool {
        self.conn.initialized()
    }

    /// Installs the connection once it could be made.
    pub fn set_connection(&self, conn: ConnectionManager) {
        let _ = self.conn.set(conn);
    }

    /// The breaker.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    fn task_key(&self, id: &TaskId) -> String {
        format!("{}task:{id}", self.prefix)
    }

    fn neg_key(&self, id: &TaskId) -> String {
        format!("{}neg:{id}", self.prefix)
    }

    /// Runs `f` on the connection under the breaker and timeout; `None` when skipped or failed.
    async fn call<T, F, Fut>(&self, what: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.enabled || !self.breaker.permits() {
            return None;
        }
        let Some(conn) = self.conn.get() else {
            self.breaker.failure();
            return None;
        };
        match tokio::time::timeout(self.timeout, f(conn.clone())).await {
            Ok(Ok(v)) => {
                self.breaker.success();
                Some(v)
            }
            Ok(Err(e)) => {
                tracing::debug!(op = what, error = %e, "redis command failed");
                if let Some(tls) = &self.tls {
                    tls.observe(Dependency::Redis, &e);
                }
                self.breaker.failure();
                None
            }
            Err(_) => {
                tracing::debug!(op = what, "redis command timed out");
                self.breaker.failure();
                None
            }
        }
    }

    /// Looks `id` up.
    pub async fn get(&self, id: &TaskId) -> L2Lookup {
        let (k, n) = (self.task_key(id), self.neg_key(id));
        let got = self
            .call("get", |mut c| async move {
                redis::pipe()
                    .cmd("HGET")
                    .arg(&k)
                    .arg("t")
                    .cmd("EXISTS")
                    .arg(&n)
                    .query_async::<(Option<Vec<u8>>, bool)>(&mut c)
                    .await
            })
            .await;
        self.classify(got)
    }

    /// Looks several ids up in one round trip (results in the order of `ids`).
    pub async fn get_many(&self, ids: &[TaskId]) -> Vec<L2Lookup> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HGET")
                .arg(self.task_key(id))
                .arg("t")
                .cmd("EXISTS")
                .arg(self.neg_key(id));
        }
        let got = self
            .call("get_many", |mut c| async move {
                pipe.query_async::<Vec<(Option<Vec<u8>>, bool)>>(&mut c)
                    .await
            })
            .await;
        match got {
            Some(pairs) if pairs.len() == ids.len() => {
                pairs.into_iter().map(|p| self.classify(Some(p))).collect()
            }
            _ => {
                if self.enabled {
                    metrics::cache_requests(Tier::L2, CacheResult::Error, ids.len() as u64);
                }
                vec![L2Lookup::Unavailable; ids.len()]
            }
        }
    }

    fn classify(&self, got: Option<(Option<Vec<u8>>, bool)>) -> L2Lookup {
        let (result, out) = match got {
            None if !self.enabled => return L2Lookup::Unavailable,
            None => (CacheResult::Error, L2Lookup::Unavailable),
            Some((Some(bytes), _)) => match pb::Task::decode(bytes.as_slice()) {
                Ok(t) => (CacheResult::Hit, L2Lookup::Hit(Arc::new(t))),
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable task in redis; ignoring it");
                    (CacheResult::Error, L2Lookup::Miss)
                }
            },
            Some((None, true)) => (CacheResult::NegativeHit, L2Lookup::NegativeHit),
            Some((None, false)) => (CacheResult::Miss, L2Lookup::Miss),
        };
        metrics::cache_request(Tier::L2, result);
        out
    }

    /// Stores `task` unless Redis holds a newer version. Returns whether it was written.
    pub async fn put(&self, task: &pb::Task) -> bool {
        self.write(task, Fill::Always).await
    }

    /// Stores `task` as [`L2::put`] does, but only over an entry Redis already holds for it (the
    /// task or its negative entry): what an event does.
    pub async fn refresh(&self, task: &pb::Task) -> bool {
        self.write(task, Fill::OnlyCached).await
    }

    async fn write(&self, task: &pb::Task, fill: Fill) -> bool {
        self.write_many(&[(task, fill)]).await.first() == Some(&true)
    }

    /// Runs the compare-and-set for every task in one pipelined round trip (EVALSHA each; the
    /// script is loaded again if Redis lost it, e.g. after a restart). Returns, per task, whether
    /// it was written; all false when Redis could not be asked.
    async fn write_many(&self, tasks: &[(&pb::Task, Fill)]) -> Vec<bool> {
        let mut pipe = redis::pipe();
        let mut ids = 0;
        for (task, fill) in tasks {
            let Ok(id) = TaskId::parse(&task.task_id) else {
                continue;
            };
            let base = if is_terminal(task) {
                self.terminal_ttl
            } else {
                self.live_ttl
            };
            let ttl = jittered(base, self.jitter).as_millis().max(1) as u64;
            pipe.cmd("EVALSHA")
                .arg(self.cas.get_hash())
                .arg(2)
                .arg(self.task_key(&id))
                .arg(self.neg_key(&id))
                .arg(format!("{:020}", task.version))
                .arg(task.encode_to_vec())
                .arg(ttl)
                .arg(u8::from(*fill == Fill::OnlyCached));
            ids += 1;
        }
        if ids == 0 {
            return vec![false; tasks.len()];
        }
        let cas = &self.cas;
        let written = self
            .call("put", |mut c| async move {
                match pipe.query_async::<Vec<i64>>(&mut c).await {
                    Err(e)
                        if e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        cas.load_async(&mut c).await?;
                        pipe.query_async::<Vec<i64>>(&mut c).await
                    }
                    other => other,
                }
            })
            .await;
        match written {
            // Tasks with a malformed id (none in practice: events and loads carry parsed ids)
            // were left out of the pipeline; report them unwritten and the rest in order.
            Some(w) if ids == tasks.len() => w.into_iter().map(|r| r == 1).collect(),
            Some(w) => {
                let mut w = w.into_iter();
                tasks
                    .iter()
                    .map(|(t, _)| TaskId::parse(&t.task_id).is_ok() && w.next() == Some(1))
                    .collect()
            }
            None => vec![false; tasks.len()],
        }
    }

    /// Marks `id` unknown for a short while.
    pub async fn put_negative(&self, id: &TaskId) {
        let key = self.neg_key(id);
        let ttl = jittered(self.negative_ttl, self.jitter).as_millis().max(1) as u64;
        self.call("put_negative", |mut c| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("PX")
                .arg(ttl)
                .query_async::<()>(&mut c)
                .await
        })
        .await;
    }

    /// PING (the background probe that closes the breaker again once Redis recovers).
    pub async fn ping(&self) -> bool {
        self.call("ping", |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .is_some()
    }
}

/// Whether a write may create an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fill {
    /// Loads: store what was read.
    Always,
    /// Events: only refresh what is cached.
    OnlyCached,
}

/// Writes `tasks` to L2 in the background (events, batch loads): the caller's answer never waits
/// for Redis. Writes go through one queue per tier, drained by one task that coalesces what has
/// queued up (the newest version of each task) into a single pipelined round trip: at thousands
/// of events per second that is one Redis call per batch instead of one spawned task and one
/// call per event. A full queue drops the write, as an open breaker does: L2 is an optimisation,
/// and its entries expire.
pub fn put_in_background(l2: &Arc<L2>, tasks: Vec<Arc<pb::Task>>, fill: Fill) {
    if !l2.enabled() || tasks.is_empty() || l2.breaker.is_open() {
        return;
    }
    let queue = l2.queue.get_or_init(|| {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(drain_writes(Arc::downgrade(l2), rx));
        tx
    });
    for t in tasks {
        if queue.try_send((t, fill)).is_err() {
            metrics::cache_request(Tier::L2, CacheResult::WriteDropped);
        }
    }
}

/// Queued background writes a tier holds at most.
const WRITE_QUEUE: usize = 16_384;
/// Writes one round trip carries at most.
const WRITE_BATCH: usize = 512;

async fn drain_writes(l2: Weak<L2>, mut rx: mpsc::Receiver<(Arc<pb::Task>, Fill)>) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        let Some(l2) = l2.upgrade() else { return };
        let writes = coalesce(&mut batch);
        l2.write_many(&writes).await;
        batch.clear();
    }
}

/// The writes of a batch, one per task: its newest version, and `Always` if any write of that
/// version may create the entry.
fn coalesce(batch: &mut [(Arc<pb::Task>, Fill)]) -> Vec<(&pb::Task, Fill)> {
    let mut newest: HashMap<&str, (&pb::Task, Fill)> = HashMap::with_capacity(batch.len());
    for (task, fill) in batch.iter() {
        match newest.entry(task.task_id.as_str()) {
            Entry::Vacant(v) => {
                v.insert((task, *fill));
            }
            Entry::Occupied(mut o) => {
                let kept = o.get_mut();
                if task.version > kept.0.version {
                    *kept = (task, *fill);
                } else if task.version == kept.0.version && *fill == Fill::Always {
                    kept.1 = Fill::Always;
                }
            }
        }
    }
    newest.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, version: u64) -> Arc<pb::Task> {
        Arc::new(pb::Task {
            task_id: id.into(),
            version,
            ..Default::default()
        })
    }

    #[test]
    fn coalescing_keeps_the_newest_version_of_each_task() {
        let mut batch = vec![
            (task("a", 3), Fill::OnlyCached),
            (task("b", 1), Fill::OnlyCached),
            (task("a", 9), Fill::OnlyCached),
            (task("a", 5), Fill::Always),
            (task("b", 1), Fill::Always),
            (task("c", 2), Fill::OnlyCached),
        ];
        let mut got: Vec<_> = coalesce(&mut batch)
            .into_iter()
            .map(|(t, f)| (t.task_id.clone(), t.version, f))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                // An older load does not turn the newer event into a fill.
                ("a".into(), 9, Fill::OnlyCached),
                // A load of the same version may create the entry.
                ("b".into(), 1, Fill::Always),
                ("c".into(), 2, Fill::OnlyCached),
            ]
        );
    }
}
