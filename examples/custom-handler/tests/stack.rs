//! The invoice processor against the real local stack (deploy/local/stack.sh: Kafka, MariaDB):
//! tasks produced to the task topics as the gateway would, run by the embedded handler, their
//! outcomes read back from MySQL.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use dispatch_core::{Envelope, NewTask, RetryPolicy, TaskId, TaskState};
use dispatch_example_custom_handler::{ConfiguredRates, InvoiceSettings, Rendered, builder};
use dispatch_processor::Settings;
use dispatch_runtime::Shutdown;
use dispatch_testkit::{TestEnv, eventually};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::MySqlPool;

fn invoice(region: &str, lines: usize) -> String {
    let lines: Vec<String> = (0..lines)
        .map(|i| format!(r#"{{"sku":"sku-{i}","qty":1,"unit_cents":100}}"#))
        .collect();
    format!(
        r#"{{"customer":"acme","region":"{region}","lines":[{}]}}"#,
        lines.join(",")
    )
}

fn task(key: &str, payload: &str, timeout_ms: Option<u32>) -> Envelope {
    Envelope::submit(NewTask {
        retry: RetryPolicy {
            max_attempts: 2,
            initial_backoff_ms: 100,
            max_backoff_ms: 200,
        },
        timeout_ms,
        ..dispatch_testkit::new_task("invoice.render", key, payload.as_bytes())
    })
}

async fn produce(env: &TestEnv, p: &FutureProducer, e: &Envelope) {
    let mut h = rdkafka::message::OwnedHeaders::new();
    let headers = e.headers();
    for (k, v) in headers.iter() {
        h = h.insert(rdkafka::message::Header {
            key: k,
            value: Some(v),
        });
    }
    let topic = env.topics().tasks(e.priority);
    p.send(
        FutureRecord::to(&topic)
            .key(e.key())
            .payload(&e.encode())
            .headers(h),
        Duration::from_secs(10),
    )
    .await
    .map_err(|(e, _)| e)
    .expect("produce");
}

async fn states(pool: &MySqlPool, ids: &[TaskId]) -> HashMap<TaskId, TaskState> {
    dispatch_store::tasks::states(pool, ids)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(id, s)| (id, s.state))
        .collect()
}

async fn outcomes(pool: &MySqlPool, id: TaskId) -> Vec<String> {
    sqlx::query_as::<_, (Vec<u8>,)>(
        "SELECT outcome FROM task_attempts WHERE task_id = ? ORDER BY attempt",
    )
    .bind(id.as_bytes().to_vec())
    .fetch_all(pool)
    .await
    .expect("attempts")
    .into_iter()
    .map(|(o,)| String::from_utf8(o).expect("ascii"))
    .collect()
}

#[tokio::test]
async fn invoices_succeed_fail_time_out_and_drain_at_a_graceful_stop() {
    let env = TestEnv::new()
        .await
        .expect("stack (deploy/local/stack.sh up)");
    let mut s = Settings {
        kafka: env.kafka.clone(),
        database: env.db.clone(),
        ..Settings::default()
    };
    s.kafka.create_topics = false;
    s.grpc.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    s.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    s.consumer.group = format!("invoices-{}", env.id);
    s.shutdown.drain_timeout_ms = 20_000;
    let inv = InvoiceSettings {
        ms_per_line: 20,
        unavailable_regions: ["apac".to_string()].into(),
        ..InvoiceSettings::default()
    };
    let app = builder(s, inv.clone(), ConfiguredRates::new(&inv))
        .build()
        .await
        .expect("build");
    let control = app.control();
    let shutdown = Shutdown::new();
    let running = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    eventually("partitions assigned", Duration::from_secs(30), || {
        let n = control.assigned_partitions();
        async move { (n > 0).then_some(()) }
    })
    .await
    .expect("assigned");

    let p: FutureProducer = dispatch_runtime::kafka::producer_config(&env.kafka)
        .create()
        .expect("producer");
    let ok = task("ok", &invoice("eu", 3), None);
    let bad = task("bad", r#"{"customer":"acme"}"#, None);
    let outage = task("outage", &invoice("apac", 1), None);
    // 100 lines at 20 ms: 2 s, under a task timeout of 300 ms.
    let slow = task("slow", &invoice("eu", 100), Some(300));
    for t in [&ok, &bad, &outage, &slow] {
        produce(&env, &p, t).await;
    }
    let ids = [ok.task_id, bad.task_id, outage.task_id, slow.task_id];
    let want = HashMap::from([
        (ok.task_id, TaskState::Succeeded),
        (bad.task_id, TaskState::Dead),
        (outage.task_id, TaskState::Dead),
        (slow.task_id, TaskState::Dead),
    ]);
    let pool = &env.pool;
    eventually(
        "every invoice finished",
        Duration::from_secs(60),
        || async {
            let got = states(pool, &ids).await;
            (got == want).then_some(())
        },
    )
    .await
    .unwrap_or_else(|_| panic!("{:?}", want));

    let stored = dispatch_store::tasks::get(pool, ok.task_id)
        .await
        .expect("get")
        .expect("task");
    let r: Rendered = serde_json::from_slice(&stored.result).expect("result");
    assert_eq!(
        (r.subtotal_cents, r.tax_cents, r.total_cents),
        (300, 60, 360)
    );
    assert_eq!(outcomes(pool, ok.task_id).await, ["succeeded"]);
    assert_eq!(
        outcomes(pool, bad.task_id).await,
        ["permanent"],
        "a permanent error is not retried"
    );
    assert_eq!(
        outcomes(pool, outage.task_id).await,
        ["retryable", "retryable"]
    );
    assert_eq!(outcomes(pool, slow.task_id).await, ["timeout", "timeout"]);

    // Graceful stop: a render under way when the stop comes finishes and is recorded.
    let drain = task("drain", &invoice("eu", 75), None);
    produce(&env, &p, &drain).await;
    eventually("the last invoice runs", Duration::from_secs(30), || async {
        (states(pool, &[drain.task_id]).await.get(&drain.task_id) == Some(&TaskState::Running))
            .then_some(())
    })
    .await
    .expect("running");
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("stops within the drain bound")
        .expect("join")
        .expect("clean stop");
    assert_eq!(
        states(pool, &[drain.task_id]).await.get(&drain.task_id),
        Some(&TaskState::Succeeded),
        "finished during the drain, not cut off"
    );
    env.cleanup().await;
}
