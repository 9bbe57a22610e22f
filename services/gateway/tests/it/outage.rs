//! Kafka outages refuse nothing while MySQL is up: a submit switches to the outbox as soon as
//! its produce is at risk (all brokers down, Kafka stalled, or the caller's deadline would not
//! leave time for the outbox), and a deadline too short to make a submit durable is answered
//! DEADLINE_EXCEEDED with nothing written.
//!
//! Outages are made without touching the shared broker: a "black hole" (a listener that accepts
//! and never answers: reachable but stalled) or librdkafka's in-process mock cluster, whose
//! broker can be taken down and brought back while the gateway runs (the real broker advertises
//! its own address, so a TCP proxy in front of it would only see the bootstrap connection).
//!
//! Over 400 lines because it holds one test per outage (a deadline, a stalled Kafka, a broker
//! outage, Kafka and MySQL down, a key check that ate the deadline), sharing the black hole, the
//! mock cluster helpers and `CuttableDb`; the MySQL-down cases with `CuttableDb` would move to a
//! file of their own first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dispatch_core::Priority;
use dispatch_gateway::Settings;
use dispatch_proto::v1 as pb;
use dispatch_testkit::{TestEnv, consume_until, eventually};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use tokio::net::TcpListener;
use tonic::Code;

use crate::harness::*;

/// A broker address that accepts connections and never answers (held until the test ends).
pub async fn black_hole() -> anyhow::Result<String> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    Ok(addr.to_string())
}

/// A gateway whose Kafka is reachable but never answers; the breaker never opens, so only the
/// deadline and stall rules can move submits to the outbox.
async fn stalled(env: &TestEnv) -> anyhow::Result<Settings> {
    let mut s = settings(env);
    s.kafka.brokers = black_hole().await?;
    s.kafka.message_timeout_ms = 30_000;
    s.outbox.produce_timeout_ms = 3_000;
    s.outbox.produce_stall_ms = 60_000;
    s.outbox.breaker_failures = 1_000;
    s.outbox.relay_enabled = false;
    Ok(s)
}

async fn outbox_rows(env: &TestEnv) -> anyhow::Result<i64> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox")
        .fetch_one(&env.pool)
        .await?;
    Ok(n)
}

#[tokio::test]
async fn a_produce_that_would_outlive_the_callers_deadline_goes_to_the_outbox_in_time()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let gw = Gateway::spawn(stalled(&env).await?).await?;
    let mut client = gw.client().await?;

    // Too short to make anything durable (under outbox.write_reserve_ms, 250 ms): Kafka gets the
    // whole deadline, does not answer, and the gateway itself says DEADLINE_EXCEEDED (not the
    // transport's CANCELLED) with no outbox row written, now or later.
    let mut req = submit(spec("k", b"short"), KEY_ACME);
    req.set_timeout(Duration::from_millis(200));
    let err = client.submit_task(req).await.expect_err("too short");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(outbox_rows(&env).await?, 0, "nothing half written");

    // A 1 s deadline against a 3 s produce timeout: the produce is abandoned in time for the
    // outbox, and the caller gets OK within its deadline.
    let mut req = submit(spec("k", b"in time"), KEY_ACME);
    req.set_timeout(Duration::from_millis(1_000));
    let start = Instant::now();
    let r = client.submit_task(req).await?.into_inner();
    assert_eq!(r.accepted_via, pb::AcceptedVia::Outbox as i32);
    assert!(
        start.elapsed() < Duration::from_millis(1_000),
        "{:?}",
        start.elapsed()
    );

    // The submit answered DEADLINE_EXCEEDED never shows up: the gateway finished it before
    // answering (its own status proves that), and its row count is still the one accepted.
    assert_eq!(outbox_rows(&env).await?, 1);
    // Cancels keep the same rules.
    let mut req = authed(
        pb::CancelTaskRequest {
            task_id: r.task_id.clone(),
            business_key: String::new(),
            reason: String::new(),
        },
        KEY_ACME,
    );
    req.set_timeout(Duration::from_millis(1_000));
    assert!(client.cancel_task(req).await?.into_inner().accepted);
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_stalled_kafka_sends_submits_to_the_outbox_without_waiting_out_the_produce_timeout()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut s = stalled(&env).await?;
    s.outbox.produce_timeout_ms = 10_000;
    s.outbox.produce_stall_ms = 300;
    let gw = Gateway::spawn(s).await?;
    let client = gw.client().await?;
    let start = Instant::now();
    let submits = (0..20).map(|i| {
        let mut c = client.clone();
        async move {
            let t = Instant::now();
            let r = c
                .submit_task(submit(spec(&format!("k{}", i % 4), b"x"), KEY_ACME))
                .await;
            (r, t.elapsed())
        }
    });
    for (r, took) in futures::future::join_all(submits).await {
        let r = r?.into_inner();
        assert_eq!(r.accepted_via, pb::AcceptedVia::Outbox as i32);
        assert!(took < Duration::from_secs(3), "took {took:?}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(outbox_rows(&env).await?, 20);
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

/// The mock cluster's task topics, as the gateway names them.
fn mock_topics(mock: &MockCluster<'static, DefaultProducerContext>, env: &TestEnv) {
    for p in Priority::ALL {
        mock.create_topic(&env.topics().tasks(p), 3, 1)
            .expect("mock topic");
    }
}

fn mock_consumer(env: &TestEnv, bootstrap: &str, topic: &str) -> anyhow::Result<StreamConsumer> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("outage-{}", env.id))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    c.subscribe(&[topic])?;
    Ok(c)
}

#[tokio::test]
async fn a_broker_outage_refuses_no_submit_and_loses_none() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mock = MockCluster::new(1)?;
    mock_topics(&mock, &env);
    let mut s = settings(&env);
    s.kafka.brokers = mock.bootstrap_servers();
    s.kafka.message_timeout_ms = 10_000;
    // The defaults, except a shorter stall rule than production's (the run is short).
    s.outbox.produce_stall_ms = 500;
    let gw = Gateway::spawn(s).await?;
    let client = gw.client().await?;
    // Healthy first (the mock broker may take a moment: early submits may go to the outbox).
    let mut warm = 0;
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let r = client
            .clone()
            .submit_task(submit(spec("warm", b"x"), KEY_ACME))
            .await?
            .into_inner();
        warm += 1;
        if r.accepted_via == pb::AcceptedVia::Kafka as i32 {
            break;
        }
        anyhow::ensure!(Instant::now() < until, "no submit reached kafka");
    }

    // 10 keys, each submitting in sequence (so each key's order is defined) every 50 ms for 6 s,
    // every call with a 2 s deadline; the broker is down from 1.5 s to 4 s.
    let run = Duration::from_secs(6);
    let started = Instant::now();
    let load = (0..10).map(|k| {
        let mut c = client.clone();
        async move {
            let mut out = Vec::new();
            let mut i = 0;
            while started.elapsed() < run {
                let mut req = submit(
                    spec(&format!("acct-{k}"), format!("{i}").as_bytes()),
                    KEY_ACME,
                );
                req.set_timeout(Duration::from_secs(2));
                let t = Instant::now();
                let r = c.submit_task(req).await.map(tonic::Response::into_inner);
                out.push((r, t.elapsed()));
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (k, out)
        }
    });
    let outage = async {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        mock.broker_down(1).expect("broker down");
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        mock.broker_up(1).expect("broker up");
    };
    let (results, ()) = tokio::join!(futures::future::join_all(load), outage);

    let mut order: HashMap<String, Vec<String>> = HashMap::new();
    let (mut latencies, mut via_outbox, mut refused) = (Vec::new(), 0, Vec::new());
    for (k, out) in results {
        for (r, took) in out {
            latencies.push(took);
            match r {
                Ok(resp) => {
                    if resp.accepted_via == pb::AcceptedVia::Outbox as i32 {
                        via_outbox += 1;
                    }
                    order
                        .entry(format!("acct-{k}"))
                        .or_default()
                        .push(resp.task_id);
                }
                Err(e) => refused.push(format!("{:?}: {}", e.code(), e.message())),
            }
        }
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    let accepted: usize = order.values().map(Vec::len).sum();
    eprintln!(
        "outage run: {accepted} accepted ({via_outbox} via the outbox), {} refused, p99 {p99:?}, max {:?}",
        refused.len(),
        latencies.last()
    );
    assert!(refused.is_empty(), "refused: {refused:?}");
    assert!(via_outbox > 0, "the outage sent submits to the outbox");
    assert!(p99 < Duration::from_millis(1_500), "p99 {p99:?}");

    // Everything accepted reaches Kafka once the broker is back, in each key's order.
    let consumer = mock_consumer(
        &env,
        &mock.bootstrap_servers(),
        &env.topics().tasks(Priority::Default),
    )?;
    let wanted: usize = accepted + warm;
    let records = consume_until(&consumer, Duration::from_secs(60), |r| {
        let ids: std::collections::HashSet<_> = r.iter().filter_map(task_id_of).collect();
        ids.len() >= wanted
    })
    .await?;
    for (key, ids) in &order {
        let mut seen = std::collections::HashSet::new();
        let got: Vec<String> = records
            .iter()
            .filter(|r| r.key == key.as_bytes())
            .filter_map(task_id_of)
            .filter(|id| seen.insert(id.clone()))
            .collect();
        assert_eq!(&got, ids, "order of {key} (first copy of each task)");
    }
    eventually("outbox drained", Duration::from_secs(30), || async {
        let b = dispatch_store::outbox::backlog(&env.pool).await.ok()?;
        (b.pending == 0).then_some(())
    })
    .await?;
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

/// A TCP proxy to MariaDB that can be cut: open connections are dropped and new ones are held
/// without an answer (a database that went away behind a load balancer).
struct CuttableDb {
    addr: String,
    cut: Arc<std::sync::atomic::AtomicBool>,
}

impl CuttableDb {
    async fn start(upstream: String) -> anyhow::Result<Self> {
        use std::sync::atomic::Ordering;
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?.to_string();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let c = Arc::clone(&cut);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut down, _)) = l.accept().await {
                if c.load(Ordering::SeqCst) {
                    held.push(down);
                    continue;
                }
                let (c, upstream) = (Arc::clone(&c), upstream.clone());
                tokio::spawn(async move {
                    let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
                    let watch = async {
                        while !c.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! { _ = copy => {}, () = watch => {} }
                });
            }
        });
        Ok(Self { addr, cut })
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// With Kafka and MySQL both gone nothing can make a submit durable: an outbox write that gets
/// no answer within 2.5 s is UNAVAILABLE (not DEADLINE_EXCEEDED at the caller's deadline), and
/// after a few of those the outbox breaker answers UNAVAILABLE at once; nothing is accepted.
#[tokio::test]
async fn with_kafka_and_mysql_down_submits_are_refused_unavailable_without_waiting()
-> anyhow::Result<()> {
    use secrecy::ExposeSecret;
    let env = TestEnv::new().await?;
    let url = env.db.url.expose_secret().to_owned();
    let rest = url.split_once('@').map(|(_, r)| r).unwrap_or_default();
    let (hostport, db) = rest.split_once('/').unwrap_or((rest, ""));
    let proxy = CuttableDb::start(hostport.to_owned()).await?;
    let mut s = stalled(&env).await?;
    s.database.url = url.replace(hostport, &proxy.addr).into();
    s.database.acquire_timeout_ms = 10_000;
    s.outbox.breaker_failures = 1; // Kafka is at risk after one failed produce
    s.outbox.produce_timeout_ms = 200;
    let gw = Gateway::spawn(s).await?;
    let mut client = gw.client().await?;
    let _ = db;
    proxy.cut();

    let mut codes = Vec::new();
    let mut slow = 0;
    for i in 0..8 {
        let mut req = submit(spec(&format!("k{i}"), b"x"), KEY_ACME);
        req.set_timeout(Duration::from_millis(4_000));
        let t = Instant::now();
        let err = client
            .submit_task(req)
            .await
            .expect_err("nothing can take it");
        if t.elapsed() >= Duration::from_millis(2_000) {
            slow += 1;
        }
        codes.push(err.code());
    }
    assert!(
        slow <= 4,
        "only the writes that open the breaker wait: {slow} slow, {codes:?}"
    );
    assert_eq!(
        codes.last(),
        Some(&Code::Unavailable),
        "refused at once once the breaker is open: {codes:?}"
    );
    assert!(
        codes.iter().all(|c| *c == Code::Unavailable),
        "a database that does not answer is UNAVAILABLE, within the caller's deadline: {codes:?}"
    );
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

/// A keyed submit checks its idempotency key in MySQL first; with MySQL gone that check takes
/// up to `idempotency.store_timeout_ms` of the caller's deadline, and the outbox write that
/// follows gets only what is left. When that write had a fair chance (at least
/// `outbox.write_reserve_ms`) and got no answer, the database failed, not the caller's deadline:
/// the answer is UNAVAILABLE (retry), not DEADLINE_EXCEEDED, and it comes before the deadline.
#[tokio::test]
async fn a_keyed_submit_whose_key_check_ate_the_deadline_is_refused_unavailable()
-> anyhow::Result<()> {
    use secrecy::ExposeSecret;
    let env = TestEnv::new().await?;
    let url = env.db.url.expose_secret().to_owned();
    let rest = url.split_once('@').map(|(_, r)| r).unwrap_or_default();
    let hostport = rest.split_once('/').map_or(rest, |(h, _)| h);
    let proxy = CuttableDb::start(hostport.to_owned()).await?;
    let mut s = stalled(&env).await?;
    s.database.url = url.replace(hostport, &proxy.addr).into();
    s.database.acquire_timeout_ms = 10_000;
    s.outbox.breaker_failures = 1;
    s.outbox.produce_timeout_ms = 200;
    s.idempotency.store_timeout_ms = 3_000;
    let gw = Gateway::spawn(s).await?;
    let mut client = gw.client().await?;
    proxy.cut();

    let mut spec = spec("keyed-outage", b"x");
    spec.idempotency_key = "keyed-outage-1".into();
    let mut req = submit(spec, KEY_ACME);
    let timeout = Duration::from_millis(5_000); // the load generator's deadline
    req.set_timeout(timeout);
    let t = Instant::now();
    let err = client
        .submit_task(req)
        .await
        .expect_err("nothing can make it durable");
    assert_eq!(
        err.code(),
        Code::Unavailable,
        "the outbox write had time and the database did not answer: {err:?}"
    );
    assert!(
        t.elapsed() < timeout,
        "answered within the caller's deadline: {:?}",
        t.elapsed()
    );
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}
