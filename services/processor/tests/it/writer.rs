//! The batch writer against the real MariaDB, with the events topic unreachable (a Kafka outage).

use std::time::Duration;

use dispatch_core::TaskState;
use dispatch_processor::process::write_of;
use dispatch_processor::produce::Producer;
use dispatch_processor::writer::{self, WriterTask};
use dispatch_runtime::admin::Health;
use dispatch_runtime::producer::ProducerCore;
use dispatch_runtime::tls_failures::TlsFailures;
use dispatch_testkit::TestEnv;
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::harness::task;

/// A retry's claim holds as soon as MySQL committed it, not once its event is published: with the
/// events pipeline stalled (here: no broker at all), the claim resolves while the write's
/// publication is still pending, so a handler that waits for its claim starts right after it is
/// durable and a cancel cannot commit in a seconds-long gap before the start. A claim a newer
/// write overtook (a committed CANCELLED) does not hold.
#[tokio::test]
async fn a_claim_resolves_at_its_commit_while_the_events_pipeline_stalls() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut stalled = ClientConfig::new();
    stalled
        .set("bootstrap.servers", "127.0.0.1:1")
        .set("message.timeout.ms", "300000");
    let stalled = ProducerCore::new("processor", stalled)?;
    let (close, abort) = (CancellationToken::new(), CancellationToken::new());
    let tracker = TaskTracker::new();
    let w = writer::spawn(
        WriterTask {
            commits: env.pool.clone(),
            pool: env.pool.clone(),
            producer: Producer::new(stalled),
            topics: env.topics(),
            max_rows: 100,
            max_delay: Duration::from_millis(5),
            max_concurrent: 2,
            hold_uncommitted: true,
            health: Health::new(),
            tls: TlsFailures::new("processor", &[]),
            close: close.clone(),
            abort: abort.clone(),
        },
        &tracker,
        64,
    );

    let e = task("noop", "k", "");
    let running = |attempt| {
        write_of(
            &e,
            TaskState::Running,
            attempt,
            TaskState::Running.version(0, attempt),
        )
    };
    let (claimed, mut event) = w.claim(running(2), Vec::new()).await;
    let held = tokio::time::timeout(Duration::from_secs(20), claimed).await??;
    assert!(held, "the claim landed");
    assert!(
        event.try_recv().is_err(),
        "its event cannot have been published: there is no broker"
    );

    let other = task("noop", "k", "");
    let cancelled = write_of(
        &other,
        TaskState::Cancelled,
        1,
        TaskState::Cancelled.version(0, 0),
    );
    let (first, _) = w.claim(cancelled, Vec::new()).await;
    assert!(tokio::time::timeout(Duration::from_secs(20), first).await??);
    let late = write_of(
        &other,
        TaskState::Running,
        2,
        TaskState::Running.version(0, 2),
    );
    let (claimed, _) = w.claim(late, Vec::new()).await;
    let held = tokio::time::timeout(Duration::from_secs(20), claimed).await??;
    assert!(!held, "a claim after a committed cancel does not hold");

    abort.cancel();
    close.cancel();
    drop(w);
    tracker.close();
    tokio::time::timeout(Duration::from_secs(20), tracker.wait()).await?;
    env.cleanup().await;
    Ok(())
}
