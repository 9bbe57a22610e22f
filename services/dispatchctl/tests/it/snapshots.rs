//! Tables and JSON, compared with `tests/snapshots/*` after normalizing ids and times.

use std::time::Duration;

use dispatch_core::TaskState;
use dispatch_testkit::eventually;

use crate::harness::{Services, Stack, assert_snapshot, normalize};

/// An unregistered type: the processor dead-letters it at once (class `unknown_type`), so every
/// field of the dead letter is deterministic.
const DEAD_TYPE: &str = "no.such.type";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_and_json_match_the_snapshots() -> anyhow::Result<()> {
    let stack = Stack::start(Services::ALL).await?;
    let prefix = stack.env.kafka.topic_prefix.clone();
    let snap = |name: &str, out: &crate::harness::Out| {
        assert_eq!(out.code, 0, "{name}: {out:?}");
        assert_snapshot(name, &normalize(&out.stdout, &prefix));
    };

    let sub = stack.submit("snap-1", DEAD_TYPE, r#"{"n":1}"#).await?;
    snap("submit.json", &sub);
    let id = sub.task_id()?;
    stack.await_state(&id, TaskState::Dead).await?;

    snap("get.txt", &stack.ctl(&["get", &id]).await?);
    snap("get.json", &stack.ctl(&["-o", "json", "get", &id]).await?);
    let list = stack.ctl(&["dlq", "list"]).await?;
    snap("dlq_list.txt", &list);
    assert_eq!(list.stderr.trim(), "1 of 1 dead letters");
    snap(
        "dlq_list.json",
        &stack.ctl(&["-o", "json", "dlq", "list"]).await?,
    );
    snap("dlq_show.txt", &stack.ctl(&["dlq", "show", &id]).await?);
    snap(
        "dlq_show.json",
        &stack.ctl(&["-o", "json", "dlq", "show", &id]).await?,
    );
    let dry = ["dlq", "redrive", "--type", DEAD_TYPE, "--dry-run"];
    snap("dlq_redrive_dry_run.txt", &stack.ctl(&dry).await?);
    let purge = [
        "dlq",
        "purge",
        "--tenant",
        "acme",
        "--since",
        "1h",
        "--dry-run",
    ];
    snap("dlq_purge_dry_run.txt", &stack.ctl(&purge).await?);
    snap(
        "pause_low.txt",
        &stack.ctl(&["pause", "--priority", "low"]).await?,
    );
    snap(
        "pause_type.json",
        &stack
            .ctl(&["-o", "json", "pause", "--type", "report.build"])
            .await?,
    );
    snap(
        "resume_low.txt",
        &stack.ctl(&["resume", "--priority", "low"]).await?,
    );

    // Stats move with offsets and commits: checked by value, not snapshot.
    let stats = stack.ctl(&["-o", "json", "stats"]).await?;
    assert_eq!(stats.code, 0, "{stats:?}");
    let s = stats.json()?;
    assert_eq!(s["dlq_size"], 1);
    assert_eq!(s["paused_task_types"], serde_json::json!(["report.build"]));
    assert_eq!(s["paused_priorities"], serde_json::json!([]));
    assert_eq!(s["retry_depths"].as_object().map(|m| m.len()), Some(3));
    assert!(s["partitions"].as_array().is_some_and(|p| !p.is_empty()));
    let table = stack.ctl(&["stats"]).await?;
    assert_eq!(table.code, 0);
    for h in [
        "DLQ SIZE",
        "OUTBOX BACKLOG",
        "RETRY TOPIC",
        "HIGH WATERMARK",
        "report.build",
    ] {
        assert!(table.stdout.contains(h), "{h} missing: {}", table.stdout);
    }

    // A real redrive through the CLI: moves it once; the task dies again (still no handler),
    // which indexes a new dead letter of the next generation.
    let r = stack
        .ctl(&[
            "-o", "json", "dlq", "redrive", "--type", DEAD_TYPE, "--rate", "1000",
        ])
        .await?;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        (r.json()?["matched"].clone(), r.json()?["redriven"].clone()),
        (1.into(), 1.into())
    );
    let ctl = &stack;
    eventually(
        "the redriven task dies again",
        Duration::from_secs(30),
        || async move {
            let l = ctl.ctl(&["-o", "json", "dlq", "list"]).await.ok()?;
            (l.json().ok()?["total"] == 2).then_some(())
        },
    )
    .await?;
    stack.stop().await
}
