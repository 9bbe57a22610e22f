//! A processor frozen (SIGSTOP) past its session timeout while a record it has read waits to
//! start: the group gives the partition to another instance, which runs and commits the task.
//! Continued, the frozen process must not start that task again (`processor::stall`).
//!
//! Seen in the fault suite (`long-handler-rebalance`, 2026-12-04): a record of the frozen
//! processor started its handler right after SIGCONT, 3 s after another instance had committed
//! the task SUCCEEDED, before the frozen one had learnt that its partition was gone.
//!
//! The tasks are `http` tasks against an endpoint in this test, which records every call: the
//! endpoint's answer to the task that holds the type's one permit reaches the frozen process
//! while it is stopped, so the moment it continues that task ends and the waiting one starts,
//! with no database round trip in between to give the consumer time to hear of the revoke.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dispatch_core::TaskState;
use dispatch_testkit::{TestEnv, eventually};
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Child;

use crate::harness::{binary, metrics, produce, producer, signal, task, wait_all};

/// Calls the endpoint received: (the task's name from its payload, when).
type Calls = Arc<Mutex<Vec<(String, DateTime<Utc>)>>>;

/// Tasks waiting behind `hold`.
const LATE: usize = 10;

/// An HTTP endpoint that records each POST and answers 200 after the payload's `delay_ms`.
async fn endpoint() -> anyhow::Result<(u16, Calls)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let calls: Calls = Arc::default();
    let log = calls.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut conn = BufReader::new(conn);
                loop {
                    // Request line and headers, then the body by its Content-Length.
                    let mut len = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if conn.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let name = v["name"].as_str().unwrap_or_default().to_owned();
                    log.lock().push((name, Utc::now()));
                    let delay = v["delay_ms"].as_u64().unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if conn.get_mut().write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((port, calls))
}

/// The processor binary on `env`: tasks of type `frozen` POST to the endpoint, one at a time;
/// its admin port `admin`.
fn spawn(env: &TestEnv, endpoint: u16, admin: u16) -> anyhow::Result<Child> {
    Ok(binary(env)
        .env("DISPATCH_HANDLERS__TYPES__FROZEN__KIND", "http")
        .env("DISPATCH_HANDLERS__TYPES__FROZEN__CONCURRENCY", "1")
        .env("DISPATCH_HANDLERS__TYPES__FROZEN__TIMEOUT_MS", "60000")
        .env(
            "DISPATCH_HANDLERS__HTTP__FROZEN__URL",
            format!("http://127.0.0.1:{endpoint}/"),
        )
        .env("DISPATCH_HANDLERS__HTTP__FROZEN__TIMEOUT_MS", "60000")
        .env("DISPATCH_ADMIN__LISTEN", format!("127.0.0.1:{admin}"))
        .spawn()?)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The value of an unlabelled gauge or counter on `admin`'s /metrics.
async fn metric(admin: u16, name: &str) -> Option<f64> {
    let text = metrics(([127, 0, 0, 1], admin).into()).await.ok()?;
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(f64::max)
}

#[tokio::test]
async fn a_processor_frozen_past_its_session_does_not_start_what_its_successor_committed()
-> anyhow::Result<()> {
    let env = TestEnv::with_partitions(1).await?;
    let p = producer(&env)?;
    let (port, calls) = endpoint().await?;
    // The type runs one task at a time: `hold` takes the permit for 6 s; each `late-<i>` reads
    // its state at the gate, then waits for the permit (parked). Continued, the frozen process
    // ends `hold` at once and would start the `late` tasks one after another within
    // milliseconds: each is a chance to start before its consumer hears of the revoke.
    let hold = task("frozen", "hold", r#"{"name":"hold","delay_ms":6000}"#);
    let late: Vec<_> = (0..LATE)
        .map(|i| {
            let name = format!("late-{i}");
            task(
                "frozen",
                &name,
                &format!(r#"{{"name":"{name}","delay_ms":0}}"#),
            )
        })
        .collect();
    let (admin_a, admin_b) = (free_port()?, free_port()?);
    let mut a = spawn(&env, port, admin_a)?;
    produce(&p, &env.topics(), &hold).await?;
    eventually(
        "`hold` calls the endpoint",
        Duration::from_secs(60),
        || async { calls.lock().iter().any(|(n, _)| n == "hold").then_some(()) },
    )
    .await?;
    for e in &late {
        produce(&p, &env.topics(), e).await?;
    }
    eventually(
        "every `late` parked behind `hold` on the first processor",
        Duration::from_secs(60),
        || async {
            (metric(admin_a, "dispatch_consumer_parked_records").await? >= LATE as f64)
                .then_some(())
        },
    )
    .await?;

    // Frozen past its session: the second processor gets the partition and runs them all, while
    // the endpoint's answer to the first processor's `hold` waits in its socket.
    signal(&a, "-STOP").await?;
    let mut b = spawn(&env, port, admin_b)?;
    let ids: Vec<_> = std::iter::once(&hold)
        .chain(&late)
        .map(|e| e.task_id)
        .collect();
    let done = wait_all(
        &env.pool,
        &ids,
        TaskState::Succeeded,
        Duration::from_secs(90),
    )
    .await;
    signal(&a, "-CONT").await?;
    done?;

    // Continued, the first processor learns that its partition is gone.
    eventually(
        "the first processor saw its partition revoked",
        Duration::from_secs(60),
        || async {
            (metric(
                admin_a,
                "dispatch_consumer_rebalances_total{kind=\"revoke\"}",
            )
            .await?
                >= 1.0)
                .then_some(())
        },
    )
    .await?;
    signal(&a, "-TERM").await?;
    tokio::time::timeout(Duration::from_secs(30), a.wait()).await??;
    b.start_kill()?;
    b.wait().await?;

    let calls = calls.lock().clone();
    let runs = |name: &str| -> Vec<DateTime<Utc>> {
        calls
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, t)| *t)
            .collect()
    };
    assert_eq!(
        runs("hold").len(),
        2,
        "`hold` ran on both processors: {calls:?}"
    );
    for (i, e) in late.iter().enumerate() {
        let finished: DateTime<Utc> =
            sqlx::query_scalar("SELECT finished_at FROM tasks WHERE task_id = ?")
                .bind(e.task_id.as_bytes().as_slice())
                .fetch_one(&env.pool)
                .await?;
        let started = runs(&format!("late-{i}"));
        assert!(
            started.iter().all(|t| *t <= finished),
            "`late-{i}` started at {started:?}, after its SUCCEEDED was committed at {finished}"
        );
        assert_eq!(started.len(), 1, "`late-{i}` ran once: {started:?}");
    }
    env.cleanup().await;
    Ok(())
}
