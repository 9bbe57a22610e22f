//! [`Control`]: the operator hooks AdminService is built on.
//!
//! - Pause/resume a priority: the poll thread pauses that topic's partitions (and keeps them
//!   paused across rebalances) until resumed.
//! - Pause/resume a task type: records of the type are held in their lanes (not run, offsets not
//!   stored) until resumed; other types keep flowing.
//! - [`Control::stats`]: per-partition positions and lag, in-flight records, retry depths,
//!   breaker states, what is paused.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use dispatch_core::{Priority, Topics};
use rdkafka::consumer::BaseConsumer;
use tokio::sync::watch;

use crate::consumer::{Ctx, Shared};
use crate::handler::http::Hosts;
use crate::lag::{PartitionStats, partition_stats};

/// What is paused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paused {
    /// Paused priorities.
    pub priorities: Vec<Priority>,
    /// Paused task types.
    pub task_types: Vec<String>,
}

/// A snapshot for operators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Assigned partitions.
    pub partitions: Vec<PartitionStats>,
    /// Records consumed and not yet persisted.
    pub in_flight: u64,
    /// Summed lag per retry topic.
    pub retry_depths: BTreeMap<String, i64>,
    /// `http:<host>` -> `open` / `closed`.
    pub breakers: BTreeMap<String, String>,
    /// What is paused.
    pub paused: Paused,
}

/// Operator control of a running processor (cheap to clone).
#[derive(Clone)]
pub struct Control {
    pub(crate) shared: Arc<Shared>,
    pub(crate) types: Arc<watch::Sender<BTreeSet<String>>>,
    pub(crate) consumer: Arc<BaseConsumer<Ctx>>,
    pub(crate) hosts: Hosts,
    pub(crate) topics: Topics,
}

impl Control {
    /// Stops fetching the priority's topic.
    pub fn pause_priority(&self, p: Priority) -> Paused {
        self.shared.paused_priorities.lock().insert(p);
        tracing::info!(priority = p.as_str(), "priority paused");
        self.paused()
    }

    /// Resumes the priority's topic.
    pub fn resume_priority(&self, p: Priority) -> Paused {
        self.shared.paused_priorities.lock().remove(&p);
        tracing::info!(priority = p.as_str(), "priority resumed");
        self.paused()
    }

    /// Holds records of `task_type` until resumed.
    pub fn pause_task_type(&self, task_type: &str) -> Paused {
        self.types.send_modify(|s| {
            s.insert(task_type.to_owned());
        });
        tracing::info!(task_type, "task type paused");
        self.paused()
    }

    /// Releases held records of `task_type`.
    pub fn resume_task_type(&self, task_type: &str) -> Paused {
        self.types.send_modify(|s| {
            s.remove(task_type);
        });
        tracing::info!(task_type, "task type resumed");
        self.paused()
    }

    /// How many partitions this instance is assigned.
    pub fn assigned_partitions(&self) -> usize {
        self.shared.partitions.assigned().len()
    }

    /// Records consumed and not yet persisted.
    pub fn in_flight(&self) -> usize {
        self.shared.partitions.in_flight()
    }

    /// What is paused.
    pub fn paused(&self) -> Paused {
        Paused {
            priorities: {
                let set = self.shared.paused_priorities.lock();
                Priority::ALL
                    .into_iter()
                    .filter(|p| set.contains(p))
                    .collect()
            },
            task_types: self.types.borrow().iter().cloned().collect(),
        }
    }

    /// Positions, lag, in-flight work, retry depths, breakers and pauses.
    ///
    /// # Errors
    /// The blocking broker queries could not be run.
    pub async fn stats(&self) -> anyhow::Result<Stats> {
        let (c, s) = (self.consumer.clone(), self.shared.clone());
        let partitions = tokio::task::spawn_blocking(move || partition_stats(&c, &s)).await?;
        let mut retry_depths = BTreeMap::new();
        for level in 1..=dispatch_core::topics::RETRY_LEVELS {
            retry_depths.insert(self.topics.retry(level), 0);
        }
        for p in &partitions {
            if let Some(d) = retry_depths.get_mut(&p.topic) {
                *d += p.lag;
            }
        }
        Ok(Stats {
            in_flight: self.shared.partitions.in_flight() as u64,
            partitions,
            retry_depths,
            breakers: self.hosts.states(),
            paused: self.paused(),
        })
    }
}
