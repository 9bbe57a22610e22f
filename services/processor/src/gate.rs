//! The gate: stored `(state, version)` lookups, batched across concurrent records.
//!
//! Every record asks before it runs whether its task already moved past this attempt (a replay,
//! a duplicate, a zombie's leftovers). Lookups from concurrent records are gathered for up to
//! `gate.max_delay_us` or `gate.max_ids` ids and answered by one `IN (...)` query.

use foldhash::HashMap;
use std::time::Duration;

use dispatch_core::TaskId;
use dispatch_store::MySqlPool;
use dispatch_store::tasks::StateVersion;

use crate::coalesce::Coalescer;

/// Asks for stored states.
#[derive(Clone)]
pub struct Gate {
    lookups: Coalescer<TaskId, Option<StateVersion>>,
}

impl Gate {
    /// Spawns the gate task (it ends when every [`Gate`] is dropped).
    pub fn spawn(pool: MySqlPool, max_ids: usize, max_delay: Duration) -> Self {
        let lookups = Coalescer::spawn(max_ids, max_delay, move |ids: Vec<TaskId>| {
            let pool = pool.clone();
            async move {
                let found: HashMap<TaskId, StateVersion> =
                    dispatch_store::tasks::states(&pool, &ids)
                        .await
                        .map_err(|e| e.to_string())?
                        .into_iter()
                        .collect();
                Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
            }
        });
        Self { lookups }
    }

    /// The stored state of `id` (`None`: no row yet).
    ///
    /// # Errors
    /// The lookup failed (database error) or the gate is gone.
    pub async fn lookup(&self, id: TaskId) -> Result<Option<StateVersion>, String> {
        self.lookups.call(id).await
    }
}
