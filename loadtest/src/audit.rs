//! The audit: after a load run (with `--record-ids`) and a quiet period, prove from MySQL, the
//! simulate handler's execution ledger and the events topic that the guarantees held.
//!
//! Checks, each a count in the verdict:
//! - `missing`: accepted ids with no row in `tasks` (a lost task);
//! - `not_terminal`: rows not in SUCCEEDED/DEAD/CANCELLED after the wait;
//! - `ran_after_terminal`: ledger executions later than the task's committed `finished_at`
//!   (a task whose terminal state was committed ran again);
//! - `duplicate_runs_before_commit`: extra executions of one attempt before its commit (allowed by
//!   at-least-once after a crash; reported, not a failure);
//! - `regressed`: tasks whose events went from a terminal state to another state (or whose event
//!   versions went down) on the events topic;
//! - `order_violations`: keys whose first attempts ran in a different order than their records'
//!   Kafka offsets (submission order).

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::time::Duration;

use dispatch_core::{TaskId, TaskState};
use serde::Serialize;
use sqlx::{MySqlPool, Row};

/// One accepted submit, as recorded by the load generator.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Task id.
    pub task_id: TaskId,
    /// Business key.
    pub key: String,
    /// `kafka` or `outbox`.
    pub via: String,
    /// Topic (empty for outbox).
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset (outbox id for outbox).
    pub offset: i64,
}

/// Audit flags.
#[derive(Debug, clap::Args, Clone)]
pub struct AuditArgs {
    /// Files written by `run --record-ids` (repeatable).
    #[arg(long = "ids", required = true)]
    pub ids: Vec<std::path::PathBuf>,
    /// MySQL URL of the dispatch database.
    #[arg(
        long,
        env = "DISPATCH_DATABASE__URL",
        default_value = "mysql://dispatch:dispatch@127.0.0.1:3306/dispatch"
    )]
    pub database_url: String,
    /// Kafka brokers (for the events-topic regression check; empty skips it).
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Events topic.
    #[arg(long, default_value = "dispatch.task-events")]
    pub events_topic: String,
    /// Wait up to this long for every task to be terminal.
    #[arg(long, default_value_t = 120.0)]
    pub wait_s: f64,
    /// Write the verdict as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// The outcome.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Verdict {
    /// Distinct accepted ids.
    pub accepted: u64,
    /// Rows found.
    pub stored: u64,
    /// Terminal rows by state.
    pub terminal: BTreeMap<String, u64>,
    /// Lost.
    pub missing: u64,
    /// Still live after the wait.
    pub not_terminal: u64,
    /// Executions after a committed terminal state.
    pub ran_after_terminal: u64,
    /// Extra executions before a commit (allowed).
    pub duplicate_runs_before_commit: u64,
    /// Terminal-then-other or version-decreasing event sequences.
    pub regressed: u64,
    /// Events read for the regression check.
    pub events_checked: u64,
    /// Up to five regressed tasks with their event sequences (state@version, topic order).
    pub regressed_examples: Vec<String>,
    /// Keys with first attempts out of submission order.
    pub order_violations: u64,
    /// Keys whose order was checked.
    pub keys_checked: u64,
}

impl Verdict {
    /// Whether every guarantee held.
    pub fn passed(&self) -> bool {
        self.missing == 0
            && self.not_terminal == 0
            && self.ran_after_terminal == 0
            && self.regressed == 0
            && self.order_violations == 0
    }

    /// The one-line verdict.
    pub fn line(&self) -> String {
        format!(
            "audit {}: accepted={} stored={} terminal={:?} missing={} not_terminal={} ran_after_terminal={} duplicate_runs_before_commit={} regressed={} (events {}) order_violations={} (keys {})",
            if self.passed() { "PASS" } else { "FAIL" },
            self.accepted,
            self.stored,
            self.terminal,
            self.missing,
            self.not_terminal,
            self.ran_after_terminal,
            self.duplicate_runs_before_commit,
            self.regressed,
            self.events_checked,
            self.order_violations,
            self.keys_checked
        )
    }
}

/// Reads id files (`task_id \t key \t via \t topic \t partition \t offset`). An id recorded
/// more than once (an idempotent resubmit) is one task; for ordering, its earliest Kafka record
/// counts (a duplicate produced while Redis was down, or answered from MySQL without
/// coordinates, does not move it).
///
/// # Errors
/// Unreadable or malformed files.
pub fn read_ids(paths: &[std::path::PathBuf]) -> anyhow::Result<Vec<Accepted>> {
    let mut by_id: HashMap<TaskId, usize> = HashMap::new();
    let mut out: Vec<Accepted> = Vec::new();
    for p in paths {
        let f = std::fs::File::open(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line?;
            let c: Vec<&str> = line.split('\t').collect();
            anyhow::ensure!(
                c.len() == 6,
                "{} line {}: expected 6 columns",
                p.display(),
                n + 1
            );
            let task_id = TaskId::parse(c[0])
                .map_err(|e| anyhow::anyhow!("{} line {}: {e}", p.display(), n + 1))?;
            let acc = Accepted {
                task_id,
                key: c[1].into(),
                via: c[2].into(),
                topic: c[3].into(),
                partition: c[4].parse()?,
                offset: c[5].parse()?,
            };
            match by_id.get(&task_id) {
                None => {
                    by_id.insert(task_id, out.len());
                    out.push(acc);
                }
                Some(&i) => {
                    let cur = &out[i];
                    let better = acc.via == "kafka"
                        && !acc.topic.is_empty()
                        && (cur.via != "kafka"
                            || cur.topic.is_empty()
                            || (cur.topic == acc.topic && acc.offset < cur.offset));
                    if better {
                        out[i] = acc;
                    }
                }
            }
        }
    }
    Ok(out)
}

/// One ledger row: (row id, generation, attempt, executed at).
type Execution = (u64, u32, u32, chrono::DateTime<chrono::Utc>);

struct StoredRow {
    state: TaskState,
    finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

async fn rows(pool: &MySqlPool, ids: &[TaskId]) -> anyhow::Result<HashMap<TaskId, StoredRow>> {
    let mut out = HashMap::new();
    for chunk in ids.chunks(1000) {
        let mut qb = sqlx::QueryBuilder::new(
            "SELECT task_id, state, finished_at FROM tasks WHERE task_id IN (",
        );
        let mut sep = qb.separated(", ");
        for id in chunk {
            sep.push_bind(id.as_bytes().to_vec());
        }
        qb.push(")");
        for r in qb.build().fetch_all(pool).await? {
            let id = TaskId::from_slice(&r.try_get::<Vec<u8>, _>(0)?)?;
            let st: String = r.try_get(1)?;
            let state =
                TaskState::parse(&st).ok_or_else(|| anyhow::anyhow!("unknown state {st}"))?;
            out.insert(
                id,
                StoredRow {
                    state,
                    finished_at: r.try_get(2)?,
                },
            );
        }
    }
    Ok(out)
}

/// Runs the audit.
///
/// # Errors
/// Unreachable database or unreadable files (a failed *guarantee* is a verdict, not an error).
pub async fn audit(a: &AuditArgs) -> anyhow::Result<Verdict> {
    let accepted = read_ids(&a.ids)?;
    let pool = MySqlPool::connect(&a.database_url).await?;
    let ids: Vec<TaskId> = accepted.iter().map(|x| x.task_id).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(a.wait_s);
    let stored = loop {
        let stored = rows(&pool, &ids).await?;
        let done = stored.len() == ids.len() && stored.values().all(|r| r.state.is_terminal());
        if done || tokio::time::Instant::now() >= deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut v = Verdict {
        accepted: ids.len() as u64,
        stored: stored.len() as u64,
        ..Default::default()
    };
    v.missing = ids.iter().filter(|id| !stored.contains_key(id)).count() as u64;
    for r in stored.values() {
        if r.state.is_terminal() {
            *v.terminal.entry(r.state.as_str().to_owned()).or_default() += 1;
        } else {
            v.not_terminal += 1;
        }
    }

    // The ledger: executions per task, in execution order.
    let mut execs: HashMap<TaskId, Vec<Execution>> = HashMap::new();
    for chunk in ids.chunks(1000) {
        let mut qb = sqlx::QueryBuilder::new(
            "SELECT id, task_id, generation, attempt, executed_at FROM handler_executions WHERE task_id IN (",
        );
        let mut sep = qb.separated(", ");
        for id in chunk {
            sep.push_bind(id.as_bytes().to_vec());
        }
        qb.push(") ORDER BY id");
        for r in qb.build().fetch_all(&pool).await? {
            let id = TaskId::from_slice(&r.try_get::<Vec<u8>, _>(1)?)?;
            execs.entry(id).or_default().push((
                r.try_get(0)?,
                r.try_get(2)?,
                r.try_get(3)?,
                r.try_get(4)?,
            ));
        }
    }
    for (id, list) in &execs {
        if let Some(fin) = stored.get(id).and_then(|r| r.finished_at) {
            v.ran_after_terminal += list.iter().filter(|e| e.3 > fin).count() as u64;
        }
        let mut per_attempt: HashMap<(u32, u32), u64> = HashMap::new();
        for e in list {
            *per_attempt.entry((e.1, e.2)).or_default() += 1;
        }
        v.duplicate_runs_before_commit += per_attempt.values().map(|n| n - 1).sum::<u64>();
    }

    // Per-key order: among Kafka-accepted tasks of one key on one topic, first executions follow
    // offsets.
    let mut by_key: HashMap<(&str, &str), Vec<&Accepted>> = HashMap::new();
    for acc in accepted
        .iter()
        .filter(|x| x.via == "kafka" && !x.topic.is_empty())
    {
        by_key
            .entry((acc.key.as_str(), acc.topic.as_str()))
            .or_default()
            .push(acc);
    }
    for list in by_key.values_mut() {
        list.sort_by_key(|x| x.offset);
        let firsts: Vec<Option<u64>> = list
            .iter()
            .map(|x| {
                execs
                    .get(&x.task_id)
                    .and_then(|e| e.iter().find(|e| e.1 == 0 && e.2 == 1))
                    .map(|e| e.0)
            })
            .collect();
        let ran: Vec<u64> = firsts.into_iter().flatten().collect();
        if ran.len() >= 2 {
            v.keys_checked += 1;
            if ran.windows(2).any(|w| w[0] > w[1]) {
                v.order_violations += 1;
            }
        }
    }

    if !a.brokers.is_empty() {
        let (checked, regressed, examples) =
            events_regressions(&a.brokers, &a.events_topic, &ids).await?;
        v.events_checked = checked;
        v.regressed = regressed;
        v.regressed_examples = examples;
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&v)?)?;
    }
    Ok(v)
}

/// Reads the events topic from the beginning to its current end and counts tasks (of `ids`)
/// whose event sequence regresses.
async fn events_regressions(
    brokers: &str,
    topic: &str,
    ids: &[TaskId],
) -> anyhow::Result<(u64, u64, Vec<String>)> {
    use prost::Message as _;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    let wanted: std::collections::HashSet<String> = ids.iter().map(|i| i.to_string()).collect();
    let brokers = brokers.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, u64, Vec<String>)> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("audit-{}", uuid::Uuid::now_v7()))
            .set("enable.auto.commit", "false")
            .create()?;
        let md = c.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let parts: Vec<i32> = md
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut tpl = TopicPartitionList::new();
        let mut ends = HashMap::new();
        for p in &parts {
            let (_, hi) = c.fetch_watermarks(&topic, *p, Duration::from_secs(10))?;
            ends.insert(*p, hi);
            tpl.add_partition_offset(&topic, *p, Offset::Beginning)?;
        }
        c.assign(&tpl)?;
        let mut last: HashMap<String, (TaskState, u64)> = HashMap::new();
        let mut history: HashMap<String, Vec<String>> = HashMap::new();
        let mut bad = std::collections::HashSet::new();
        let mut checked = 0u64;
        let mut remaining: HashMap<i32, i64> = ends
            .iter()
            .filter(|(_, hi)| **hi > 0)
            .map(|(p, hi)| (*p, *hi))
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !remaining.is_empty() && std::time::Instant::now() < deadline {
            let Some(msg) = c.poll(Duration::from_millis(500)) else {
                continue;
            };
            let msg = msg?;
            if msg.offset() + 1 >= *remaining.get(&msg.partition()).unwrap_or(&0) {
                remaining.remove(&msg.partition());
            }
            let Some(value) = msg.payload() else { continue };
            let Ok(ev) = dispatch_proto::v1::TaskEvent::decode(value) else {
                continue;
            };
            if !wanted.contains(&ev.task_id) {
                continue;
            }
            checked += 1;
            let st = dispatch_proto::v1::TaskState::try_from(ev.state)
                .ok()
                .and_then(TaskState::from_proto);
            let Some(st) = st else { continue };
            history
                .entry(ev.task_id.clone())
                .or_default()
                .push(format!("{st}@{}", ev.version));
            if let Some((prev, ver)) = last.get(&ev.task_id) {
                let regress = ev.version < *ver
                    || (prev.is_terminal() && ev.version > *ver && *prev != TaskState::Dead);
                if regress {
                    bad.insert(ev.task_id.clone());
                }
            }
            last.insert(ev.task_id.clone(), (st, ev.version));
        }
        let examples = bad
            .iter()
            .take(5)
            .map(|id| {
                format!(
                    "{id}: {}",
                    history.get(id).map(|h| h.join(" ")).unwrap_or_default()
                )
            })
            .collect();
        Ok((checked, bad.len() as u64, examples))
    })
    .await?
}
