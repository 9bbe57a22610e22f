//! In-process fan-out of applied events, per task id: read-your-writes waiters and WatchTask
//! streams subscribe to one id and hear only about it (a global channel would wake every waiter on
//! every event).

use std::collections::HashMap;
use std::sync::Arc;

use dispatch_core::TaskId;
use dispatch_proto::v1 as pb;
use parking_lot::Mutex;
use tokio::sync::broadcast;

/// Buffered snapshots per id; a subscriber that falls further behind re-reads the task.
const CAPACITY: usize = 64;

/// The registry of per-id channels.
#[derive(Debug, Default)]
pub struct Notifier {
    channels: Mutex<HashMap<TaskId, broadcast::Sender<Arc<pb::Task>>>>,
}

impl Notifier {
    /// Listens for snapshots of `id` published from now on.
    pub fn subscribe(self: &Arc<Self>, id: TaskId) -> Subscription {
        let rx = self
            .channels
            .lock()
            .entry(id)
            .or_insert_with(|| broadcast::channel(CAPACITY).0)
            .subscribe();
        Subscription {
            notifier: Arc::clone(self),
            id,
            rx,
        }
    }

    /// Hands `task` to every subscriber of `id` (no-op without subscribers).
    pub fn publish(&self, id: TaskId, task: &Arc<pb::Task>) {
        if let Some(tx) = self.channels.lock().get(&id) {
            let _ = tx.send(Arc::clone(task));
        }
    }

    /// Ids with at least one subscriber.
    pub fn len(&self) -> usize {
        self.channels.lock().len()
    }

    /// Whether nobody listens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One subscriber; unregisters the id's channel when the last one goes.
#[derive(Debug)]
pub struct Subscription {
    notifier: Arc<Notifier>,
    id: TaskId,
    rx: broadcast::Receiver<Arc<pb::Task>>,
}

impl Subscription {
    /// The next snapshot; `Err(n)` when `n` were missed because this subscriber lagged.
    ///
    /// # Errors
    /// Lagged by `n` snapshots.
    pub async fn recv(&mut self) -> Result<Arc<pb::Task>, u64> {
        loop {
            match self.rx.recv().await {
                Ok(t) => return Ok(t),
                Err(broadcast::error::RecvError::Lagged(n)) => return Err(n),
                // The sender lives in the map while we are subscribed; wait forever otherwise.
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut map = self.notifier.channels.lock();
        // Our receiver is still alive here: 1 means we are the last.
        if map.get(&self.id).is_some_and(|tx| tx.receiver_count() <= 1) {
            map.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_hear_their_id_only_and_clean_up() {
        let n = Arc::new(Notifier::default());
        let (a, b) = (TaskId::new(), TaskId::new());
        let mut sa = n.subscribe(a);
        let sa2 = n.subscribe(a);
        let t = |id: TaskId, v| {
            Arc::new(pb::Task {
                task_id: id.to_string(),
                version: v,
                ..Default::default()
            })
        };
        n.publish(b, &t(b, 1));
        n.publish(a, &t(a, 2));
        assert_eq!(sa.recv().await.expect("event").version, 2);
        drop(sa2);
        assert_eq!(n.len(), 1);
        drop(sa);
        assert!(n.is_empty());
    }
}
