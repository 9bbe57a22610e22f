//! The database baseline: a plain loop of multi-row upserts into the `tasks` table of the same
//! MariaDB, one transaction per batch, same batch size as the processor's writer. What the
//! processor persists per second is compared with this.
//!
//! By default the rows go into the live table itself, under a tenant of their own, and are
//! deleted afterwards: the baseline then pays for the same table size, indexes and buffer-pool
//! residency as the processor. `--fresh-table` writes into an empty copy instead (the best case).

use std::time::Instant;

use serde::Serialize;
use sqlx::{MySqlPool, QueryBuilder};

/// Flags.
#[derive(Debug, clap::Args, Clone)]
pub struct UpsertArgs {
    /// MySQL server URL without a database.
    #[arg(long, default_value = "mysql://dispatch:dispatch@127.0.0.1:3306")]
    pub server_url: String,
    /// Database holding the real `tasks` table to copy the schema from.
    #[arg(long, default_value = "dispatch")]
    pub source_database: String,
    /// Rows to write.
    #[arg(long, default_value_t = 100_000)]
    pub rows: usize,
    /// Rows per transaction.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Payload bytes per row.
    #[arg(long, default_value_t = 300)]
    pub payload_bytes: usize,
    /// Write into a fresh, empty copy of the table instead of the live one.
    #[arg(long)]
    pub fresh_table: bool,
    /// Use the processor's own version-fenced statement (`dispatch_store::tasks::upsert_batch`)
    /// instead of the plain upsert: separates the statement's cost from the pipeline's.
    #[arg(long)]
    pub processor_statement: bool,
    /// Write the JSON result here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// Result.
#[derive(Debug, Serialize)]
pub struct UpsertReport {
    /// Rows written.
    pub rows: usize,
    /// Rows per transaction.
    pub batch: usize,
    /// Seconds.
    pub seconds: f64,
    /// Rows per second.
    pub rows_per_second: f64,
    /// `live` or `fresh`.
    pub table: &'static str,
    /// Rows the table held before the run.
    pub table_rows_before: i64,
}

/// The tenant the baseline's rows belong to in the live table.
const TENANT: &str = "bench-baseline";

/// Runs the baseline.
///
/// # Errors
/// Database errors.
pub async fn run(a: &UpsertArgs) -> anyhow::Result<UpsertReport> {
    anyhow::ensure!(
        a.batch > 0 && a.rows > 0,
        "--rows and --batch must be positive"
    );
    let source = MySqlPool::connect(&format!("{}/{}", a.server_url, a.source_database)).await?;
    let (pool, database) = if a.fresh_table {
        sqlx::query("CREATE DATABASE IF NOT EXISTS dispatch_bench")
            .execute(&source)
            .await?;
        sqlx::query("DROP TABLE IF EXISTS dispatch_bench.tasks")
            .execute(&source)
            .await?;
        sqlx::query(&format!(
            "CREATE TABLE dispatch_bench.tasks LIKE `{}`.tasks",
            a.source_database
        ))
        .execute(&source)
        .await?;
        let pool = MySqlPool::connect(&format!("{}/dispatch_bench", a.server_url)).await?;
        (pool, "dispatch_bench".to_string())
    } else {
        delete_rows(&source).await?;
        (source.clone(), a.source_database.clone())
    };
    // An estimate from the table statistics: an exact COUNT(*) of millions of rows takes seconds.
    let table_rows_before: i64 = sqlx::query_scalar(
        "SELECT CAST(table_rows AS SIGNED) FROM information_schema.tables WHERE table_schema = ? AND table_name = 'tasks'",
    )
    .bind(&database)
    .fetch_one(&pool)
    .await?;
    let payload = vec![b'x'; a.payload_bytes];
    let start = Instant::now();
    let mut written = 0;
    while written < a.rows {
        let n = a.batch.min(a.rows - written);
        let now = chrono::Utc::now();
        let mut tx = pool.begin().await?;
        if a.processor_statement {
            let rows: Vec<_> = (written..written + n)
                .map(|i| processor_write(i, &payload, now))
                .collect();
            dispatch_store::tasks::upsert_batch(&mut tx, &rows).await?;
            tx.commit().await?;
            written += n;
            continue;
        }
        let mut qb = QueryBuilder::new(
            "INSERT INTO tasks (task_id, tenant, business_key, task_type, priority, payload, state, attempts, \
             max_attempts, initial_backoff_ms, max_backoff_ms, generation, version, created_at, updated_at, finished_at) ",
        );
        qb.push_values(written..written + n, |mut b, i| {
            b.push_bind(uuid::Uuid::now_v7().as_bytes().to_vec())
                .push_bind(TENANT)
                .push_bind(format!("key-{}", i % 1000))
                .push_bind("noop")
                .push_bind(2u8)
                .push_bind(payload.clone())
                .push_bind("succeeded")
                .push_bind(1u32)
                .push_bind(4u32)
                .push_bind(1000u32)
                .push_bind(300_000u32)
                .push_bind(0u32)
                .push_bind(13u64)
                .push_bind(now)
                .push_bind(now)
                .push_bind(now);
        });
        qb.push(" ON DUPLICATE KEY UPDATE version = IF(VALUES(version) > version, VALUES(version), version), state = IF(version = VALUES(version), VALUES(state), state)");
        qb.build().execute(&mut *tx).await?;
        tx.commit().await?;
        written += n;
    }
    let seconds = start.elapsed().as_secs_f64();
    if a.fresh_table {
        sqlx::query("DROP DATABASE dispatch_bench")
            .execute(&source)
            .await?;
    } else {
        delete_rows(&source).await?;
    }
    let r = UpsertReport {
        rows: written,
        batch: a.batch,
        seconds,
        rows_per_second: written as f64 / seconds,
        table: if a.fresh_table { "fresh" } else { "live" },
        table_rows_before,
    };
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&r)?)?;
    }
    Ok(r)
}

/// Deletes the baseline's rows from the live table, in chunks (one huge DELETE would hold its locks
/// and undo for the whole run).
async fn delete_rows(pool: &MySqlPool) -> anyhow::Result<()> {
    loop {
        let done = sqlx::query("DELETE FROM tasks WHERE tenant = ? LIMIT 5000")
            .bind(TENANT)
            .execute(pool)
            .await?
            .rows_affected();
        if done == 0 {
            return Ok(());
        }
    }
}

fn processor_write(
    i: usize,
    payload: &[u8],
    now: chrono::DateTime<chrono::Utc>,
) -> dispatch_store::tasks::TaskWrite {
    use dispatch_core::{TaskId, TaskState};
    dispatch_store::tasks::TaskWrite {
        business_key: format!("key-{}", i % 1000),
        payload: payload.to_vec(),
        created_at: now,
        updated_at: now,
        ..dispatch_testkit::task_write(TaskId::new(), TENANT, TaskState::Succeeded, 1)
    }
}
