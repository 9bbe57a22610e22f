//! Submit and batch round trips, partitioning and per-key order, against the real stack.

use std::collections::HashMap;
use std::time::Duration;

use dispatch_core::envelope::header;
use dispatch_core::partition::partition_for_key;
use dispatch_core::{EnvelopeKind, Priority};
use dispatch_proto::v1 as pb;
use dispatch_testkit::{TestEnv, consume_until};

use crate::harness::*;

#[tokio::test]
async fn submit_round_trip_lands_where_the_response_says() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let gw = Gateway::spawn(settings(&env)).await?;
    let mut client = gw.client().await?;

    let mut s = spec("order-1", b"{\"to\":\"a@example.com\"}");
    s.priority = pb::Priority::Critical as i32;
    let mut req = submit(s, KEY_ACME);
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    req.metadata_mut()
        .insert("traceparent", traceparent.parse()?);
    let resp = client.submit_task(req).await?.into_inner();
    assert_eq!(resp.accepted_via, pb::AcceptedVia::Kafka as i32);
    assert!(!resp.duplicate);
    assert_eq!(resp.version, dispatch_core::state::ACCEPTED_VERSION);
    assert_eq!(resp.topic, env.topics().tasks(Priority::Critical));
    assert_eq!(id(&resp.task_id).uuid().get_version_num(), 7);

    let consumer = env.consumer(std::slice::from_ref(&resp.topic))?;
    let records = consume_until(&consumer, Duration::from_secs(20), |r| !r.is_empty()).await?;
    let r = &records[0];
    assert_eq!((r.partition, r.offset), (resp.partition, resp.offset));
    assert_eq!(r.key, b"order-1");
    let e = envelope(r);
    assert_eq!(e.kind, EnvelopeKind::Submit);
    assert_eq!(e.task_id.to_string(), resp.task_id);
    assert_eq!(e.tenant.as_str(), "acme", "tenant comes from the api key");
    assert_eq!(e.payload, b"{\"to\":\"a@example.com\"}");
    assert_eq!(e.attempt, 1);
    assert_eq!(
        r.headers.get_str(header::TASK_ID),
        Some(resp.task_id.as_str())
    );
    assert_eq!(r.headers.get_str(header::TENANT), Some("acme"));
    assert_eq!(r.headers.get_str(header::KIND), Some("submit"));
    assert_eq!(r.headers.get_str(header::TASK_TYPE), Some("email.send"));
    let tp = r.headers.get_str(header::TRACEPARENT).unwrap_or_default();
    assert!(
        tp.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
        "the caller's trace continues into the record: {tp:?}"
    );
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn partitions_match_javas_murmur2_for_many_keys() -> anyhow::Result<()> {
    let env = TestEnv::with_partitions(6).await?;
    let gw = Gateway::spawn(settings(&env)).await?;
    let mut client = gw.client().await?;
    let keys: Vec<String> = (0..120).map(|i| format!("customer-{i}-é")).collect();
    let tasks = keys.iter().map(|k| spec(k, b"x")).collect();
    let resp = client
        .submit_tasks(authed(pb::SubmitTasksRequest { tasks }, KEY_ACME))
        .await?
        .into_inner();
    assert_eq!(resp.results.len(), keys.len());
    let mut expected: HashMap<String, i32> = HashMap::new();
    let mut seen_partitions = std::collections::HashSet::new();
    for (r, key) in resp.results.iter().zip(&keys) {
        let a = accepted(r).expect("accepted");
        let want = partition_for_key(key.as_bytes(), 6);
        assert_eq!(a.partition, want, "key {key}");
        seen_partitions.insert(want);
        expected.insert(a.task_id.clone(), want);
    }
    assert_eq!(
        seen_partitions.len(),
        6,
        "120 keys spread over all partitions"
    );

    let consumer = env.consumer(&[env.topics().tasks(Priority::Default)])?;
    let records = consume_until(&consumer, Duration::from_secs(30), |r| {
        r.len() >= keys.len()
    })
    .await?;
    for r in &records {
        let id = task_id_of(r).expect("task id header");
        assert_eq!(
            Some(&r.partition),
            expected.get(&id),
            "record of {id} is on the murmur2 partition"
        );
        assert_eq!(
            r.partition,
            partition_for_key(&r.key, 6),
            "consumer-side check of the key"
        );
    }
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn per_key_order_holds_across_1000_interleaved_submits() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let gw = Gateway::spawn(settings(&env)).await?;
    const KEYS: usize = 5;
    const PER_KEY: usize = 200;
    let mut writers = Vec::new();
    for k in 0..KEYS {
        let mut client = gw.client().await?;
        writers.push(tokio::spawn(async move {
            for seq in 0..PER_KEY {
                // One client per key waits for each OK before the next submit: that is the
                // order the gateway promises to keep; the keys interleave freely.
                let s = spec(&format!("key-{k}"), seq.to_string().as_bytes());
                client.submit_task(submit(s, KEY_ACME)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for w in writers {
        w.await??;
    }
    let consumer = env.consumer(&[env.topics().tasks(Priority::Default)])?;
    let records = consume_until(&consumer, Duration::from_secs(60), |r| {
        r.len() >= KEYS * PER_KEY
    })
    .await?;
    let mut next: HashMap<Vec<u8>, usize> = HashMap::new();
    for r in &records {
        let seq: usize = String::from_utf8(envelope(r).payload)?.parse()?;
        let want = next.entry(r.key.clone()).or_default();
        assert_eq!(seq, *want, "key {}", String::from_utf8_lossy(&r.key));
        *want += 1;
    }
    assert!(next.values().all(|n| *n == PER_KEY));
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_bad_item_does_not_fail_the_rest_of_its_batch() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let gw = Gateway::spawn(settings(&env)).await?;
    let mut client = gw.client().await?;
    let mut bad = spec("b-2", b"x");
    bad.task_type = "Not Valid".into();
    let tasks = vec![spec("b-1", b"1"), bad, spec("b-3", b"3")];
    let resp = client
        .submit_tasks(authed(pb::SubmitTasksRequest { tasks }, KEY_ACME))
        .await?
        .into_inner();
    let idx: Vec<u32> = resp.results.iter().map(|r| r.index).collect();
    assert_eq!(idx, [0, 1, 2]);
    assert!(accepted(&resp.results[0]).is_some());
    assert!(accepted(&resp.results[2]).is_some());
    match &resp.results[1].outcome {
        Some(pb::submit_result::Outcome::Error(e)) => {
            assert_eq!(e.code, tonic::Code::InvalidArgument as i32);
            let fields: Vec<&str> = e.violations.iter().map(|v| v.field.as_str()).collect();
            assert_eq!(fields, ["tasks[1].task_type"]);
        }
        other => panic!("item 1 should fail: {other:?}"),
    }
    let consumer = env.consumer(&[env.topics().tasks(Priority::Default)])?;
    let records = consume_until(&consumer, Duration::from_secs(20), |r| r.len() >= 2).await?;
    let mut keys: Vec<Vec<u8>> = records.iter().map(|r| r.key.clone()).collect();
    keys.sort();
    assert_eq!(keys, [b"b-1".to_vec(), b"b-3".to_vec()]);
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}
