//! [`Control`]: the operator hooks AdminService is built on.
//!
//! - Pause/resume a priority: the poll thread pauses that topic's partitions (and keeps them
//!   paused across rebalances) until resumed.
//! - Pause/resume a task type: records of the type are held in their lanes (not run, offsets not
//!   stored) until resumed; other types keep flowing.
//! - Pauses are shared: [`Control::pause`] records the pause in MySQL (`consumption_pauses`) and
//!   applies it here at once; every instance runs [`Control::sync_loop`], so the others follow
//!   within `consumer.pause_sync_ms`, and an instance that starts (or restarts) later begins
//!   paused. If MySQL cannot be read, an instance keeps the pauses it last knew.
//! - [`Control::stats`]: per-partition positions and lag, in-flight records, retry depths,
//!   breaker states, what is paused.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use std::time::Duration;

use chrono::Utc;
use dispatch_core::{Priority, Topics};
use dispatch_store::MySqlPool;
use dispatch_store::pauses::{self, Pause, PauseTarget};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::consumer::Shared;
use crate::handler::http::Hosts;
use crate::lag::{Member, PartitionStats, QUERY_TIMEOUT, cluster_stats};

/// What a pause or resume acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A priority topic.
    Priority(Priority),
    /// A task type.
    TaskType(String),
}

impl Target {
    fn stored(&self) -> PauseTarget {
        match self {
            Self::Priority(p) => PauseTarget::Priority(p.as_str().to_owned()),
            Self::TaskType(t) => PauseTarget::TaskType(t.clone()),
        }
    }
}

/// What is paused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paused {
    /// Paused priorities.
    pub priorities: Vec<Priority>,
    /// Paused task types.
    pub task_types: Vec<String>,
}

/// A snapshot for operators: the whole consumer group, plus this instance's own in-flight
/// records and breakers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Every partition of the group's topics, with its owner.
    pub partitions: Vec<PartitionStats>,
    /// Every member of the group.
    pub members: Vec<Member>,
    /// The pauses recorded for every instance, oldest first.
    pub pauses: Vec<Pause>,
    /// This instance's Kafka client id.
    pub client_id: String,
    /// The consumer group.
    pub group: String,
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
    pub(crate) hosts: Hosts,
    pub(crate) topics: Topics,
    pub(crate) pool: MySqlPool,
    /// The consumer's group and `client.id` (how stats name this instance).
    pub(crate) group: String,
    pub(crate) client_id: String,
    /// The client stats queries go through.
    pub(crate) stats_client: crate::lag::StatsClient,
    /// Serializes "read the shared pauses, apply them", so a slow poll can never apply a list
    /// older than a pause this instance just recorded.
    pub(crate) sync: Arc<tokio::sync::Mutex<()>>,
}

impl Control {
    /// Pauses `target` on every processor instance: recorded in MySQL, applied here at once, by
    /// the others within their sync interval. Pausing what is paused is a no-op.
    ///
    /// # Errors
    /// MySQL could not record it (nothing changed).
    pub async fn pause(&self, target: &Target) -> dispatch_store::Result<Paused> {
        let _g = self.sync.lock().await;
        pauses::pause(&self.pool, &target.stored(), Utc::now()).await?;
        tracing::info!(target = ?target, "consumption paused");
        self.load_and_apply().await
    }

    /// Resumes `target` on every processor instance (as [`Control::pause`]).
    ///
    /// # Errors
    /// MySQL could not record it (nothing changed).
    pub async fn resume(&self, target: &Target) -> dispatch_store::Result<Paused> {
        let _g = self.sync.lock().await;
        pauses::resume(&self.pool, &target.stored()).await?;
        tracing::info!(target = ?target, "consumption resumed");
        self.load_and_apply().await
    }

    /// Reads the shared pauses and applies them to this instance.
    ///
    /// # Errors
    /// MySQL could not be read (what was applied before stays).
    pub async fn sync(&self) -> dispatch_store::Result<Paused> {
        let _g = self.sync.lock().await;
        self.load_and_apply().await
    }

    /// Runs [`Control::sync`] every `interval` until `stop`.
    pub async fn sync_loop(self, interval: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.sync().await {
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!("shared pauses readable again");
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot read shared pauses; keeping the last known");
                }
                Err(_) => {}
            }
        }
    }

    async fn load_and_apply(&self) -> dispatch_store::Result<Paused> {
        let stored = pauses::list(&self.pool).await?;
        self.apply(&stored);
        Ok(self.paused())
    }

    /// Makes this instance's pauses exactly `stored`.
    fn apply(&self, stored: &[Pause]) {
        crate::metrics::operator_pauses(stored);
        let mut priorities = std::collections::HashSet::new();
        let mut types = BTreeSet::new();
        for p in stored {
            match &p.target {
                PauseTarget::Priority(name) => match Priority::parse(name) {
                    Some(p) => {
                        priorities.insert(p);
                    }
                    None => {
                        tracing::warn!(priority = %name, "ignoring a pause of an unknown priority")
                    }
                },
                PauseTarget::TaskType(t) => {
                    types.insert(t.clone());
                }
            }
        }
        {
            let mut current = self.shared.paused_priorities.lock();
            if *current != priorities {
                tracing::info!(paused = ?priorities, "paused priorities changed");
                *current = priorities;
                self.shared.pauses_changed();
            }
        }
        self.types.send_if_modified(|current| {
            if *current == types {
                return false;
            }
            tracing::info!(paused = ?types, "paused task types changed");
            *current = types;
            true
        });
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

    /// The group's lag on every partition and who owns it, every member, the pauses in force;
    /// in-flight work and breakers of this instance. A handful of batched broker requests and
    /// one MySQL read, whatever the partition count.
    ///
    /// # Errors
    /// A broker query failed or timed out, or MySQL could not be read.
    pub async fn stats(&self) -> anyhow::Result<Stats> {
        let c = self.stats_client.clone();
        let group = self.group.clone();
        let topics = self.topics.all_task_topics();
        let (view, stored) = tokio::join!(
            tokio::task::spawn_blocking(move || {
                cluster_stats(c.get()?, &group, &topics, QUERY_TIMEOUT)
            }),
            pauses::list(&self.pool),
        );
        let view = view??;
        let mut stored = stored?;
        stored.sort_by(|a, b| (a.paused_at, &a.target).cmp(&(b.paused_at, &b.target)));
        let mut retry_depths = BTreeMap::new();
        for level in 1..=dispatch_core::topics::RETRY_LEVELS {
            retry_depths.insert(self.topics.retry(level), 0);
        }
        for p in &view.partitions {
            if let Some(d) = retry_depths.get_mut(&p.topic) {
                *d += p.lag;
            }
        }
        Ok(Stats {
            in_flight: self.shared.partitions.in_flight() as u64,
            partitions: view.partitions,
            members: view.members,
            pauses: stored,
            client_id: self.client_id.clone(),
            group: self.group.clone(),
            retry_depths,
            breakers: self.hosts.states(),
            paused: self.paused(),
        })
    }
}
