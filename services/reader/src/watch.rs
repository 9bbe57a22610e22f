//! WatchTask: the current state, then every newer state of one task, in version order, until a
//! terminal state.
//!
//! Changes come from the events consumer through the per-id [`Notifier`](crate::notify::Notifier).
//! The stream subscribes *before* reading the current state, so a change in between is not lost,
//! and forwards only versions above the last one sent, so replays and reordering never show a
//! step backwards. A slow client that lags, and a periodic safety re-read, catch up from MySQL.
//!
//! Streams are bounded ([`Watches`]): per instance and per tenant (refused with
//! RESOURCE_EXHAUSTED naming the setting), and in duration (a stream on a task that never
//! finishes ends with UNAVAILABLE after `cache.watch_max_duration_ms`; the client watches again
//! from the version it last saw).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{TaskId, Tenant};
use dispatch_proto::v1 as pb;
use futures::Stream;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::error::ReadError;
use crate::l1::is_terminal;
use crate::lookup::Reader;
use crate::metrics::{self, WatchLimit};

/// The stream type of WatchTask.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::TaskEvent, Status>> + Send>>;

/// The event a snapshot stands for.
pub fn event_of(t: &pb::Task) -> pb::TaskEvent {
    pb::TaskEvent {
        task_id: t.task_id.clone(),
        state: t.state,
        version: t.version,
        occurred_at: t.updated_at,
        task: Some(t.clone()),
    }
}

/// The bounds of WatchTask on one instance.
#[derive(Debug, Clone, Copy)]
pub struct WatchLimits {
    /// Streams open at once.
    pub max_streams: usize,
    /// Streams one tenant may hold open at once.
    pub max_streams_per_tenant: usize,
    /// A stream ends after this long (the client watches again).
    pub max_duration: Duration,
    /// Safety re-read interval.
    pub poll: Duration,
}

/// Open streams, in total and per tenant. Each open stream holds a task, a channel and a
/// subscription: without a bound, a client opening streams in a loop (or on tasks that never
/// finish) grows the reader without limit.
#[derive(Debug)]
pub struct Watches {
    limits: WatchLimits,
    open: Mutex<(usize, HashMap<String, usize>)>,
}

/// One admitted stream; dropping it frees its place.
#[derive(Debug)]
pub struct Admitted {
    watches: Arc<Watches>,
    tenant: String,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.watches.open.lock();
        open.0 -= 1;
        if let Some(n) = open.1.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.tenant);
            }
        }
        metrics::watch_closed();
    }
}

impl Watches {
    /// A registry enforcing `limits`.
    pub fn new(limits: WatchLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// The limits.
    pub fn limits(&self) -> WatchLimits {
        self.limits
    }

    /// Admits one more stream of `tenant`, or refuses it naming the bound it hit.
    ///
    /// # Errors
    /// `Exhausted` when the instance or the tenant holds its maximum of open streams.
    pub fn admit(self: &Arc<Self>, tenant: &Tenant) -> Result<Admitted, ReadError> {
        let mut open = self.open.lock();
        if open.0 >= self.limits.max_streams {
            metrics::watch_refused(WatchLimit::Instance);
            return Err(ReadError::Exhausted(format!(
                "this reader holds its maximum of {} WatchTask streams (cache.watch_max_streams); retry later or on another instance",
                self.limits.max_streams
            )));
        }
        let mine = open.1.get(tenant.as_str()).copied().unwrap_or(0);
        if mine >= self.limits.max_streams_per_tenant {
            metrics::watch_refused(WatchLimit::Tenant);
            return Err(ReadError::Exhausted(format!(
                "tenant {tenant} holds its maximum of {} WatchTask streams on this reader (cache.watch_max_streams_per_tenant)",
                self.limits.max_streams_per_tenant
            )));
        }
        open.0 += 1;
        *open.1.entry(tenant.to_string()).or_default() += 1;
        metrics::watch_opened();
        Ok(Admitted {
            watches: Arc::clone(self),
            tenant: tenant.to_string(),
        })
    }

    /// Streams open now: (total, of `tenant`).
    pub fn open(&self, tenant: &str) -> (usize, usize) {
        let open = self.open.lock();
        (open.0, open.1.get(tenant).copied().unwrap_or(0))
    }
}

/// Starts watching `id` for `tenant` (admitted by [`Watches::admit`]), first waiting
/// (read-your-writes) for `min_version`.
///
/// # Errors
/// NotFound for an unknown id or another tenant's task; NotVisible when `min_version` does not
/// appear in time; Unavailable when it cannot be read.
pub async fn start(
    reader: Arc<Reader>,
    admitted: Admitted,
    tenant: Tenant,
    id: TaskId,
    min_version: dispatch_core::Version,
    stop: CancellationToken,
) -> Result<WatchStream, ReadError> {
    let WatchLimits {
        poll, max_duration, ..
    } = admitted.watches.limits();
    let mut changes = reader.notifier.subscribe(id);
    let current = reader.get(&tenant, id, min_version).await?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let _open = admitted;
        let mut last = current.task.version;
        if tx.send(Ok(event_of(&current.task))).await.is_err() || is_terminal(&current.task) {
            return;
        }
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + poll, poll);
        let ends = tokio::time::sleep(max_duration);
        tokio::pin!(ends);
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => {
                    let _ = tx.send(Err(Status::unavailable("server shutting down"))).await;
                    return;
                }
                () = &mut ends => {
                    let _ = tx.send(Err(Status::unavailable(format!(
                        "WatchTask streams end after {} s (cache.watch_max_duration_ms); watch again with min_version {last}",
                        max_duration.as_secs()
                    )))).await;
                    return;
                }
                () = tx.closed() => return,
                got = changes.recv() => match got {
                    Ok(t) => Some(t),
                    // Lagged: the newest state from MySQL replaces the missed ones.
                    Err(_) => reader.read_through(id).await.ok().flatten(),
                },
                _ = tick.tick() => reader.read_through(id).await.ok().flatten(),
            };
            let Some(t) = next else { continue };
            if t.version <= last || t.tenant != tenant.as_str() {
                continue;
            }
            last = t.version;
            if tx.send(Ok(event_of(&t))).await.is_err() || is_terminal(&t) {
                return;
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}
