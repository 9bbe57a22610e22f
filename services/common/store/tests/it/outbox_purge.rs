//! The relay's purge of published outbox rows against the real MariaDB (deploy/local/stack.sh):
//! it deletes exactly the rows published before the cut, oldest first, and reads only those.
//! Reading more is what made it slow and blocking: over the (state, id) index a purge that found
//! fewer old rows than its batch read every published row (0.5-2.9 s over 120,000 rows published
//! within the day), each under a next-key lock.

use chrono::{Duration, Utc};
use dispatch_store::outbox;
use dispatch_testkit::TestEnv;
use sqlx::MySqlConnection;

/// Inserts `n` rows in `state`, published `age` ago (or never), with ids after the existing ones.
async fn rows(env: &TestEnv, n: u32, state: &str, age: Option<Duration>) -> anyhow::Result<()> {
    let published = age.map(|a| Utc::now() - a);
    sqlx::query(&format!(
        "INSERT INTO outbox (task_id, topic, record_key, record_value, headers, state, \
         next_attempt_at, created_at, published_at) \
         SELECT UNHEX(MD5(CONCAT(?, seq))), 'dispatch.tasks', 'k', 'v', '{{}}', ?, NOW(6), NOW(6), ? \
         FROM seq_1_to_{n}"
    ))
    .bind(format!("{state}-{}-", published.map_or(0, |p| p.timestamp_micros())))
    .bind(state)
    .bind(published)
    .execute(&env.pool)
    .await?;
    Ok(())
}

/// Index and table rows this session has read so far (MariaDB's per-session handler counters).
async fn rows_read(conn: &mut MySqlConnection) -> anyhow::Result<u64> {
    let all: Vec<(String, String)> = sqlx::query_as("SHOW SESSION STATUS LIKE 'Handler_read%'")
        .fetch_all(&mut *conn)
        .await?;
    Ok(all
        .iter()
        .filter(|(name, _)| name != "Handler_read_key")
        .map(|(_, v)| v.parse::<u64>().unwrap_or(0))
        .sum())
}

async fn count(env: &TestEnv, state: &str) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE state = ?")
            .bind(state)
            .fetch_one(&env.pool)
            .await?,
    )
}

#[tokio::test]
async fn the_purge_deletes_and_reads_only_rows_published_before_the_cut() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    // Ids in publishing order, as the relay leaves them: the old rows first, then a day's worth
    // of recent ones, then rows still pending.
    rows(&env, 300, "published", Some(Duration::days(3))).await?;
    rows(&env, 200, "published", Some(Duration::days(2))).await?;
    rows(&env, 5_000, "published", Some(Duration::hours(1))).await?;
    rows(&env, 50, "pending", None).await?;
    let cut = Utc::now() - Duration::days(1);

    let mut conn = env.pool.acquire().await?;
    let read_before = rows_read(&mut conn).await?;
    // A batch of 400 takes the 300 oldest and 100 of the next; the second finds the other 100.
    let first = outbox::purge_published(&mut *conn, cut, 400).await?;
    let second = outbox::purge_published(&mut *conn, cut, 400).await?;
    let third = outbox::purge_published(&mut *conn, cut, 400).await?;
    let read = rows_read(&mut conn).await? - read_before;
    assert_eq!((first, second, third), (400, 100, 0));

    let left_old: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox WHERE state = 'published' AND published_at < ?",
    )
    .bind(cut)
    .fetch_one(&env.pool)
    .await?;
    assert_eq!(left_old, 0);
    assert_eq!(count(&env, "published").await?, 5_000);
    assert_eq!(count(&env, "pending").await?, 50);
    // The 500 deleted rows, each read once in the index, plus a few reads past the cut and of
    // the SHOW itself; reading the recent rows would count 5,000 more.
    assert!(
        read < 1_000,
        "the purges read {read} rows to delete 500 of 5,500 published"
    );
    env.cleanup().await;
    Ok(())
}
