//! `dispatchctl schedule` against a gateway and a processor: create, a fire running, trigger,
//! list, pause, resume, delete; bad input exits 2 naming the field, an unknown name exits 3.

use std::time::Duration;

use dispatch_testkit::eventually;

use crate::harness::{Services, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_from_the_command_line() -> anyhow::Result<()> {
    let stack = Stack::start(Services {
        gateway: true,
        reader: false,
        processor: true,
    })
    .await?;
    let out = stack
        .ctl(&[
            "-o",
            "json",
            "schedule",
            "create",
            "beat",
            "--every",
            "1s",
            "--key",
            "beat",
            "--type",
            "noop",
            "--overlap",
            "allow",
            "--catchup",
            "all",
            "--catchup-limit",
            "3",
        ])
        .await?;
    assert_eq!(out.code, 0, "{out:?}");
    let created = out.json()?;
    assert_eq!(created["name"], "beat");
    assert_eq!(created["overlap"], "allow");
    assert_eq!(created["catchup"], "all");
    assert_eq!(created["timing"], "every 1000ms");

    // The processor's loop fires it; `get` shows the count and the last task.
    let got = eventually("two fires", Duration::from_secs(30), || async {
        let out = stack
            .ctl(&["-o", "json", "schedule", "get", "beat"])
            .await
            .ok()?;
        let v = out.json().ok()?;
        (v["fires"].as_u64()? >= 2).then_some(v)
    })
    .await?;
    assert!(!got["last_task_id"].as_str().unwrap_or_default().is_empty());

    let out = stack
        .ctl(&["-o", "json", "schedule", "trigger", "beat"])
        .await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.json()?["task_id"]
            .as_str()
            .is_some_and(|t| t.len() == 36)
    );

    let out = stack
        .ctl(&["-o", "json", "schedule", "pause", "beat"])
        .await?;
    assert_eq!(out.json()?["paused"], true, "{out:?}");
    let out = stack.ctl(&["-o", "json", "schedule", "list"]).await?;
    let list = out.json()?;
    assert_eq!(list["schedules"][0]["name"], "beat", "{out:?}");
    let out = stack
        .ctl(&["-o", "json", "schedule", "resume", "beat"])
        .await?;
    assert_eq!(out.json()?["paused"], false, "{out:?}");

    // Bad input: exit 2, the field named; nothing stored.
    let out = stack
        .ctl(&[
            "schedule",
            "create",
            "bad",
            "--cron",
            "61 * * * * *",
            "--tz",
            "Mars/Olympus",
            "--key",
            "k",
            "--type",
            "noop",
        ])
        .await?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("schedule.cron") && out.stderr.contains("schedule.time_zone"),
        "{}",
        out.stderr
    );
    let out = stack
        .ctl(&[
            "schedule", "create", "beat", "--every", "1m", "--key", "k", "--type", "noop",
        ])
        .await?;
    assert_ne!(out.code, 0, "a name taken: {out:?}");
    assert!(out.stderr.contains("exists already"), "{}", out.stderr);
    let out = stack.ctl(&["schedule", "get", "bad"]).await?;
    assert_eq!(out.code, 3, "{out:?}");

    let out = stack.ctl(&["schedule", "delete", "beat"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    let out = stack.ctl(&["schedule", "get", "beat"]).await?;
    assert_eq!(out.code, 3, "{out:?}");
    stack.stop().await?;
    Ok(())
}
