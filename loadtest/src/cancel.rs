//! `dispatch-loadgen cancel`: cancel a share of the tasks a run recorded, chosen by what MySQL
//! says about them now (redriven from the DLQ, retrying, not yet terminal, dead, or any), at a
//! fixed rate, through the gateways. The fault suite uses it to cancel redriven and retrying
//! tasks while load flows; every cancel goes to `--record-cancels` for the audit.

use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use dispatch_core::TaskId;
use dispatch_proto::v1::task_service_client::TaskServiceClient;
use sqlx::{MySqlPool, Row};
use tonic::transport::Endpoint;

use crate::audit::DatabaseArgs;
use crate::scenario::{CancelLog, roll, send_cancel};

/// Which recorded tasks may be cancelled.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Select {
    /// Tasks with a dead letter that was redriven.
    Redriven,
    /// Tasks in RETRYING.
    Retrying,
    /// Tasks not in a terminal state (or not stored yet).
    Live,
    /// Tasks in DEAD.
    Dead,
    /// Every recorded task.
    Any,
}

/// Flags of `cancel`.
#[derive(Debug, clap::Args, Clone)]
pub struct CancelArgs {
    /// Files written by `run --record-ids` (repeatable).
    #[arg(long = "ids", required = true)]
    pub ids: Vec<std::path::PathBuf>,
    /// Which tasks.
    #[arg(long, value_enum, default_value = "any")]
    pub select: Select,
    /// Share of the selected tasks to cancel (chosen by a hash of the id).
    #[arg(long, default_value_t = 1.0)]
    pub share: f64,
    /// At most this many (0: no bound).
    #[arg(long, default_value_t = 0)]
    pub max: usize,
    /// Cancels per second.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Gateway addresses, comma-separated (cancels alternate between them).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:50051")]
    pub gateway: Vec<String>,
    /// Bearer API key (the tasks' tenant).
    #[arg(long, env = "DISPATCH_API_KEY", default_value = "dev-key-acme")]
    pub api_key: String,
    /// The tenant of `--api-key`, for the record.
    #[arg(long, default_value = "")]
    pub tenant: String,
    /// Append every cancel to this file, for `audit --cancels`.
    #[arg(long)]
    pub record_cancels: Option<std::path::PathBuf>,
    /// The dispatch database (the tasks' states, for `--select`).
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub timeout_ms: u64,
}

fn id_roll(id: &TaskId) -> f64 {
    let b = id.as_bytes();
    let mut h = [0u8; 8];
    h.copy_from_slice(&b[8..16]);
    roll(u64::from_le_bytes(h), 11)
}

async fn selected(
    pool: &MySqlPool,
    select: Select,
    ids: &[TaskId],
) -> anyhow::Result<std::collections::HashSet<TaskId>> {
    let (head, tail) = match select {
        Select::Any => return Ok(ids.iter().copied().collect()),
        Select::Redriven => (
            "SELECT DISTINCT task_id FROM dead_letters WHERE redriven_at IS NOT NULL AND task_id IN (",
            ")",
        ),
        Select::Retrying => (
            "SELECT task_id FROM tasks WHERE state = 'retrying' AND task_id IN (",
            ")",
        ),
        Select::Dead => (
            "SELECT task_id FROM tasks WHERE state = 'dead' AND task_id IN (",
            ")",
        ),
        Select::Live => (
            "SELECT task_id FROM tasks WHERE state IN ('succeeded', 'dead', 'cancelled') AND task_id IN (",
            ")",
        ),
    };
    let mut found = std::collections::HashSet::new();
    for chunk in ids.chunks(1000) {
        let mut qb = sqlx::QueryBuilder::new(head);
        let mut sep = qb.separated(", ");
        for id in chunk {
            sep.push_bind(id.as_bytes().to_vec());
        }
        qb.push(tail);
        for r in qb.build().fetch_all(pool).await? {
            found.insert(TaskId::from_slice(&r.try_get::<Vec<u8>, _>(0)?)?);
        }
    }
    if select == Select::Live {
        // The query found the terminal ones.
        return Ok(ids.iter().filter(|i| !found.contains(i)).copied().collect());
    }
    Ok(found)
}

/// Runs `cancel`.
///
/// # Errors
/// Unreadable files, unreachable database or gateway.
pub async fn run(a: &CancelArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.rate > 0.0, "--rate must be positive");
    anyhow::ensure!(!a.gateway.is_empty(), "--gateway needs an address");
    // The load may still be writing these files.
    let recorded = crate::audit::read_ids_while_written(&a.ids)?;
    let mut keys = std::collections::HashMap::new();
    for r in &recorded {
        keys.entry(r.task_id).or_insert_with(|| r.key.clone());
    }
    let ids: Vec<TaskId> = keys.keys().copied().collect();
    let pool = MySqlPool::connect(&a.db.database_url).await?;
    let chosen = selected(&pool, a.select, &ids).await?;
    pool.close().await;
    let mut targets: Vec<TaskId> = chosen
        .into_iter()
        .filter(|id| id_roll(id) < a.share)
        .collect();
    targets.sort();
    if a.max > 0 {
        targets.truncate(a.max);
    }
    let mut clients = Vec::new();
    for g in &a.gateway {
        let ch = Endpoint::from_shared(g.clone())?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {g}: {e}"))?;
        clients.push(TaskServiceClient::new(ch));
    }
    let auth: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {}", a.api_key)
            .parse()
            .map_err(|_| anyhow::anyhow!("--api-key must be ASCII"))?;
    let log = Arc::new(CancelLog::open(a.record_cancels.as_deref())?);
    let timeout = Duration::from_millis(a.timeout_ms);
    let interval = Duration::from_secs_f64(1.0 / a.rate);
    let start = tokio::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (i, id) in targets.iter().enumerate() {
        tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
        let mut c = clients[i % clients.len()].clone();
        let (auth, log, tenant) = (auth.clone(), log.clone(), a.tenant.clone());
        let key = keys.get(id).cloned().unwrap_or_default();
        let id = id.to_string();
        set.spawn(async move {
            send_cancel(&mut c, &auth, timeout, &log, (&id, &key, &tenant, false)).await;
        });
    }
    while set.join_next().await.is_some() {}
    log.flush();
    eprintln!(
        "cancel: {} of {} recorded tasks selected ({:?}, share {}): {:?}",
        targets.len(),
        ids.len(),
        a.select,
        a.share,
        log.counts()
    );
    Ok(())
}
