//! The database baseline: a plain loop of multi-row upserts into a copy of the `tasks` table in
//! the same MariaDB, one transaction per batch, same batch size as the processor's writer. What the
//! processor persists per second is compared with this.

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
}

/// Runs the baseline.
///
/// # Errors
/// Database errors.
pub async fn run(a: &UpsertArgs) -> anyhow::Result<UpsertReport> {
    anyhow::ensure!(
        a.batch > 0 && a.rows > 0,
        "--rows and --batch must be positive"
    );
    let admin = MySqlPool::connect(&format!("{}/{}", a.server_url, a.source_database)).await?;
    sqlx::query("CREATE DATABASE IF NOT EXISTS dispatch_bench")
        .execute(&admin)
        .await?;
    sqlx::query("DROP TABLE IF EXISTS dispatch_bench.tasks")
        .execute(&admin)
        .await?;
    sqlx::query(&format!(
        "CREATE TABLE dispatch_bench.tasks LIKE `{}`.tasks",
        a.source_database
    ))
    .execute(&admin)
    .await?;
    let pool = MySqlPool::connect(&format!("{}/dispatch_bench", a.server_url)).await?;
    let payload = vec![b'x'; a.payload_bytes];
    let now = chrono::Utc::now();
    let start = Instant::now();
    let mut written = 0;
    while written < a.rows {
        let n = a.batch.min(a.rows - written);
        let mut tx = pool.begin().await?;
        let mut qb = QueryBuilder::new(
            "INSERT INTO tasks (task_id, tenant, business_key, task_type, priority, payload, state, attempts, \
             max_attempts, initial_backoff_ms, max_backoff_ms, generation, version, created_at, updated_at, finished_at) ",
        );
        qb.push_values(0..n, |mut b, _| {
            b.push_bind(uuid::Uuid::now_v7().as_bytes().to_vec())
                .push_bind("bench")
                .push_bind(format!("key-{}", written % 1000))
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
    sqlx::query("DROP DATABASE dispatch_bench")
        .execute(&admin)
        .await?;
    let r = UpsertReport {
        rows: written,
        batch: a.batch,
        seconds,
        rows_per_second: written as f64 / seconds,
    };
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&r)?)?;
    }
    Ok(r)
}
