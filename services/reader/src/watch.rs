//! WatchTask: the current state, then every newer state of one task, in version order, until a
//! terminal state.
//!
//! Changes come from the events consumer through the per-id [`Notifier`](crate::notify::Notifier).
//! The stream subscribes *before* reading the current state, so a change in between is not lost,
//! and forwards only versions above the last one sent, so replays and reordering never show a
//! step backwards. A slow client that lags, and a periodic safety re-read, catch up from MySQL.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{TaskId, Tenant};
use dispatch_proto::v1 as pb;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::error::ReadError;
use crate::l1::is_terminal;
use crate::metrics;
use crate::reader::Reader;

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

struct OpenStream;

impl OpenStream {
    fn new() -> Self {
        metrics::WATCH_STREAMS.inc();
        Self
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::WATCH_STREAMS.dec();
    }
}

/// Starts watching `id` for `tenant`, first waiting (read-your-writes) for `min_version`.
///
/// # Errors
/// NotFound for an unknown id or another tenant's task; NotVisible when `min_version` does not
/// appear in time; Unavailable when it cannot be read.
pub async fn start(
    reader: Arc<Reader>,
    tenant: Tenant,
    id: TaskId,
    min_version: dispatch_core::Version,
    stop: CancellationToken,
    poll: Duration,
) -> Result<WatchStream, ReadError> {
    let mut changes = reader.notifier.subscribe(id);
    let current = reader.get(&tenant, id, min_version).await?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let _open = OpenStream::new();
        let mut last = current.task.version;
        if tx.send(Ok(event_of(&current.task))).await.is_err() || is_terminal(&current.task) {
            return;
        }
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + poll, poll);
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => {
                    let _ = tx.send(Err(Status::unavailable("server shutting down"))).await;
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
