//! `dispatchctl outbox list|requeue` against a real processor and MariaDB.

use crate::harness::{Services, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_find_and_requeue_dead_outbox_rows() -> anyhow::Result<()> {
    let stack = Stack::start(Services {
        gateway: false,
        reader: false,
        processor: true,
    })
    .await?;
    let pool = stack.env.pool.clone();
    let id = stack.env.insert_outbox_row("acct-9").await?;
    sqlx::query(
        "UPDATE outbox SET state = 'dead', attempts = 20, last_error = 'kafka: record too large' \
         WHERE id = ?",
    )
    .bind(id)
    .execute(&pool)
    .await?;

    let out = stack
        .ctl(&["-o", "json", "outbox", "list", "--state", "dead"])
        .await?;
    assert_eq!(out.code, 0, "{out:?}");
    let listed = out.json()?;
    assert_eq!(listed["dead"], 1);
    assert_eq!(listed["rows"][0]["id"], id);
    assert_eq!(listed["rows"][0]["business_key"], "acct-9");
    assert_eq!(listed["rows"][0]["last_error"], "kafka: record too large");
    let table = stack.ctl(&["outbox", "list"]).await?;
    assert_eq!(table.code, 0, "{table:?}");
    assert!(table.stdout.contains("acct-9") && table.stdout.contains("pending 0, dead 1"));

    // Nothing named: refused, with the way to name rows.
    let out = stack.ctl(&["outbox", "requeue"]).await?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--all"), "{}", out.stderr);
    let out = stack.ctl(&["outbox", "requeue", "not-an-id"]).await?;
    assert_eq!(out.code, 2, "{out:?}");

    let dry = stack
        .ctl(&["-o", "json", "outbox", "requeue", "--all", "--dry-run"])
        .await?;
    assert_eq!(dry.json()?["requeued"], 1, "{dry:?}");
    let done = stack
        .ctl(&["-o", "json", "outbox", "requeue", &id.to_string()])
        .await?;
    assert_eq!(done.json()?["requeued"], 1, "{done:?}");
    let (state, attempts): (String, u32) =
        sqlx::query_as("SELECT state, attempts FROM outbox WHERE id = ?")
            .bind(id)
            .fetch_one(&pool)
            .await?;
    assert_eq!((state.as_str(), attempts), ("pending", 0));
    stack.stop().await
}
