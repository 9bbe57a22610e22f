//! The gate: stored `(state, version)` lookups, batched across concurrent records.
//!
//! Every record asks before it runs whether its task already moved past this attempt (a replay,
//! a duplicate, a zombie's leftovers). Lookups from concurrent records are gathered for up to
//! `writer.gate_max_delay_us` or `writer.gate_max_ids` ids and answered by one `IN (...)` query.

use std::collections::HashMap;
use std::time::Duration;

use dispatch_core::TaskId;
use dispatch_store::MySqlPool;
use dispatch_store::tasks::StateVersion;
use tokio::sync::{mpsc, oneshot};

type Reply = oneshot::Sender<Result<Option<StateVersion>, String>>;

/// Asks the gate task.
#[derive(Clone)]
pub struct Gate {
    tx: mpsc::Sender<(TaskId, Reply)>,
}

impl Gate {
    /// Spawns the gate task (it ends when every [`Gate`] is dropped).
    pub fn spawn(pool: MySqlPool, max_ids: usize, max_delay: Duration) -> Self {
        let (tx, rx) = mpsc::channel(max_ids * 4);
        tokio::spawn(run(pool, rx, max_ids, max_delay));
        Self { tx }
    }

    /// The stored state of `id` (`None`: no row yet).
    ///
    /// # Errors
    /// The lookup failed (database error) or the gate is gone.
    pub async fn lookup(&self, id: TaskId) -> Result<Option<StateVersion>, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((id, tx))
            .await
            .map_err(|_| "gate stopped".to_string())?;
        rx.await.map_err(|_| "gate stopped".to_string())?
    }
}

async fn run(
    pool: MySqlPool,
    mut rx: mpsc::Receiver<(TaskId, Reply)>,
    max_ids: usize,
    max_delay: Duration,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + max_delay;
        while batch.len() < max_ids {
            tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => batch.push(r),
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        // Queries run concurrently (bounded by the pool) while the next batch gathers.
        let pool = pool.clone();
        tokio::spawn(async move {
            let ids: Vec<TaskId> = batch.iter().map(|(id, _)| *id).collect();
            match dispatch_store::tasks::states(&pool, &ids).await {
                Ok(rows) => {
                    let found: HashMap<TaskId, StateVersion> = rows.into_iter().collect();
                    for (id, reply) in batch {
                        let _ = reply.send(Ok(found.get(&id).copied()));
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    for (_, reply) in batch {
                        let _ = reply.send(Err(msg.clone()));
                    }
                }
            }
        });
    }
}
