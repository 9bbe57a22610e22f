//! `dispatchctl stats` shows the whole processor group, whichever instance answers: every
//! partition of the group's topics (about 100 here) with its lag and owner, every instance by
//! its id, the pauses in force; and it answers within a second.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use dispatch_core::Priority;
use dispatch_testkit::{TestEnv, eventually};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

use dispatch_testkit::stack::{Processor, processor_settings};

use crate::harness::{KEY_ADMIN, ctl};

/// Partitions per task topic: 6 topics (3 priorities, 3 retry levels) of 17 = 102 partitions.
const PARTITIONS: i32 = 17;
/// Records produced to the paused low topic.
const WAITING: usize = 40;

struct Instance {
    admin: String,
    client_id: String,
    control: dispatch_processor::Control,
    app: Processor,
}

/// A processor of `group` with librdkafka client id `client_id`, not waiting for partitions.
async fn processor(env: &TestEnv, group: &str, client_id: &str) -> anyhow::Result<Instance> {
    let mut s = processor_settings(env);
    s.kafka
        .librdkafka
        .insert("client.id".into(), client_id.into());
    s.consumer.group = group.into();
    s.shutdown.drain_timeout_ms = 2_000;
    let app = Processor::spawn(dispatch_processor::App::builder(s)).await?;
    Ok(Instance {
        admin: format!("http://{}", app.addr),
        client_id: client_id.into(),
        control: app.control.clone(),
        app,
    })
}

async fn stats(admin: &str) -> anyhow::Result<(Value, Duration)> {
    let started = Instant::now();
    let out = ctl(&[
        "--admin",
        admin,
        "--admin-key",
        KEY_ADMIN,
        "-o",
        "json",
        "stats",
    ])
    .await?;
    let took = started.elapsed();
    anyhow::ensure!(out.code == 0, "stats failed: {out:?}");
    Ok((out.json()?, took))
}

fn strings(v: &Value, field: &str) -> BTreeSet<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x[field].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn stats_shows_every_partition_instance_and_pause_of_the_group_fast() -> anyhow::Result<()> {
    let env = TestEnv::with_partitions(PARTITIONS).await?;
    let group = format!("ctl-stats-{}", env.id);
    let a = processor(&env, &group, "stats-proc-a").await?;
    let b = processor(&env, &group, "stats-proc-b").await?;
    let (ca, cb) = (a.control.clone(), b.control.clone());
    eventually(
        "both instances own partitions",
        Duration::from_secs(60),
        || {
            let (ca, cb) = (ca.clone(), cb.clone());
            async move {
                (ca.assigned_partitions() > 0
                    && cb.assigned_partitions() > 0
                    && ca.assigned_partitions() + cb.assigned_partitions()
                        == 6 * PARTITIONS as usize)
                    .then_some(())
            }
        },
    )
    .await?;

    // Low paused through a (shared: b follows), then records wait on every low partition.
    let out = ctl(&[
        "--admin",
        &a.admin,
        "--admin-key",
        KEY_ADMIN,
        "pause",
        "--priority",
        "low",
    ])
    .await?;
    assert_eq!(out.code, 0, "{out:?}");
    let cb = b.control.clone();
    eventually("b follows the pause", Duration::from_secs(10), || {
        let cb = cb.clone();
        async move { (cb.paused().priorities == vec![Priority::Low]).then_some(()) }
    })
    .await?;
    let low = env.topics().tasks(Priority::Low);
    let producer: FutureProducer = dispatch_runtime::kafka::producer_config(&env.kafka).create()?;
    for i in 0..WAITING {
        let key = format!("waiting-{i}");
        producer
            .send(
                FutureRecord::to(&low).key(&key).payload("held"),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
    }

    // Asked through b: the whole group, as a converged view (the rebalance may still settle).
    let instances: BTreeSet<String> = [a.client_id.clone(), b.client_id.clone()].into();
    let b_admin = b.admin.clone();
    let s = eventually(
        "stats with every partition owned",
        Duration::from_secs(30),
        || {
            let b_admin = b_admin.clone();
            let instances = instances.clone();
            async move {
                let (s, _) = stats(&b_admin).await.ok()?;
                let parts = s["partitions"].as_array()?;
                let owned = parts
                    .iter()
                    .all(|p| instances.contains(p["owner"].as_str().unwrap_or_default()));
                (owned && strings(&s["instances"], "client_id") == instances).then_some(s)
            }
        },
    )
    .await?;

    // Every partition of the six task topics, each once, from both owners.
    let parts = s["partitions"].as_array().expect("partitions");
    let seen: BTreeSet<(String, i64)> = parts
        .iter()
        .map(|p| {
            (
                p["topic"].as_str().unwrap_or_default().to_owned(),
                p["partition"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    let want: BTreeSet<(String, i64)> = env
        .topics()
        .all_task_topics()
        .into_iter()
        .flat_map(|t| (0..i64::from(PARTITIONS)).map(move |p| (t.clone(), p)))
        .collect();
    assert_eq!(parts.len(), want.len(), "one row per partition");
    assert_eq!(seen, want, "every partition of the group's topics");
    assert_eq!(
        strings(&s["partitions"], "owner"),
        instances,
        "both instances own some of the partitions shown"
    );
    assert_eq!(s["answered_by"], "stats-proc-b");
    assert_eq!(s["group"], group.as_str());

    // The lag is the group's: all waiting records, on low partitions owned by either instance.
    let low_lag: i64 = parts
        .iter()
        .filter(|p| p["topic"] == low.as_str())
        .map(|p| p["lag"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(low_lag, WAITING as i64, "every waiting record counts");
    assert_eq!(s["total_lag"], WAITING as i64);

    // Every instance with its id, what it owns, and its share of the lag.
    let listed = s["instances"].as_array().expect("instances");
    assert_eq!(listed.len(), 2);
    let owned: u64 = listed
        .iter()
        .map(|i| i["partitions"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(owned, 6 * PARTITIONS as u64);
    assert!(
        listed
            .iter()
            .all(|i| i["partitions"].as_u64().unwrap_or(0) > 0
                && !i["member_id"].as_str().unwrap_or_default().is_empty())
    );
    let lag_shares: i64 = listed.iter().map(|i| i["lag"].as_i64().unwrap_or(0)).sum();
    assert_eq!(lag_shares, WAITING as i64);

    // The pause in force, with its start.
    let pauses = s["pauses"].as_array().expect("pauses");
    assert_eq!(pauses.len(), 1, "{pauses:?}");
    assert_eq!(pauses[0]["kind"], "priority");
    assert_eq!(pauses[0]["target"], "low");
    assert!(
        pauses[0]["paused_at"]
            .as_str()
            .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()),
        "{pauses:?}"
    );

    // Fast at about 100 partitions: each of three answers well within the CLI's default timeout,
    // and the typical one (the median) within a second.
    let mut took = Vec::new();
    for _ in 0..3 {
        took.push(stats(&a.admin).await?.1);
    }
    took.sort();
    assert!(took[1] < Duration::from_secs(1), "stats took {took:?}");
    assert!(took[2] < Duration::from_secs(3), "stats took {took:?}");

    // The table names the instances, the owners and the pause.
    let table = ctl(&["--admin", &a.admin, "--admin-key", KEY_ADMIN, "stats"]).await?;
    assert_eq!(table.code, 0, "{table:?}");
    for h in [
        "INSTANCE",
        "OWNER",
        "TOTAL LAG",
        "stats-proc-a",
        "stats-proc-b",
        "SINCE",
    ] {
        assert!(table.stdout.contains(h), "{h} missing: {}", table.stdout);
    }

    for i in [a, b] {
        i.app.stop().await?;
    }
    env.cleanup().await;
    Ok(())
}
