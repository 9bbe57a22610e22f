//! SubmitTask and GetTask latency and throughput, and the processor's drain, with and without
//! TLS (docs/benchmarks.md). Ignored by default; run with
//! `cargo test -p dispatch-e2e --test it tls_bench -- --ignored --nocapture`
//! (the plain stack and `deploy/local/stack.sh tls-up` running).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dispatch_proto::v1 as pb;
use dispatch_proto::v1::task_query_service_client::TaskQueryServiceClient;
use dispatch_proto::v1::task_service_client::TaskServiceClient;
use dispatch_testkit::auth::{KEY_ACME, authed};
use dispatch_testkit::stack::{Gateway, Processor, Stack, StackSettings};
use dispatch_testkit::{TestEnv, TlsStack, eventually};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::support::spec;

const CALLS: usize = 2_000;
const CONCURRENCY: usize = 8;
/// Tasks queued (the processor not running yet) and then drained.
const DRAIN_TASKS: i64 = 10_000;

async fn channel(addr: SocketAddr, ca: Option<&[u8]>) -> anyhow::Result<Channel> {
    let ep = match ca {
        Some(ca) => Channel::from_shared(format!("https://localhost:{}", addr.port()))?
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))?,
        None => Channel::from_shared(format!("http://{addr}"))?,
    };
    Ok(ep.connect().await?)
}

fn summary(what: &str, mut lat: Vec<Duration>, wall: Duration) -> String {
    lat.sort();
    let pct = |p: f64| {
        let i = ((lat.len() as f64 * p) as usize).min(lat.len() - 1);
        lat[i].as_secs_f64() * 1_000.0
    };
    format!(
        "{what}: {} calls, {CONCURRENCY} concurrent: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
        lat.len(),
        lat.len() as f64 / wall.as_secs_f64(),
        pct(0.50),
        pct(0.99),
    )
}

/// Runs `CALLS` calls of `call` split over `CONCURRENCY` workers; per-call latencies and the wall.
async fn run<F, Fut>(call: F) -> anyhow::Result<(Vec<Duration>, Duration)>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..CONCURRENCY {
        let call = call.clone();
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for i in (w..CALLS).step_by(CONCURRENCY) {
                let t = Instant::now();
                call(i).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await??);
    }
    Ok((all, start.elapsed()))
}

async fn measure(label: &str, stack: &Stack, ca: Option<&[u8]>) -> anyhow::Result<Vec<String>> {
    let tasks = TaskServiceClient::new(channel(stack.gateway.addr, ca).await?);
    let queries = TaskQueryServiceClient::new(channel(stack.reader.addr, ca).await?);
    let ids = std::sync::Arc::new(parking_lot_free::Ids::default());
    let submit = {
        let ids = ids.clone();
        move |_| {
            let mut c = tasks.clone();
            let ids = ids.clone();
            async move {
                let r = c
                    .submit_task(authed(
                        pb::SubmitTaskRequest {
                            task: Some(spec("noop", b"bench")),
                        },
                        KEY_ACME,
                    ))
                    .await?
                    .into_inner();
                ids.push(r.task_id);
                Ok(())
            }
        }
    };
    let (lat, wall) = run(submit).await?;
    let mut out = vec![summary(&format!("{label} SubmitTask"), lat, wall)];
    // Let the tasks settle so GetTask reads finished tasks.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ids = ids.all();
    let get = move |i: usize| {
        let mut q = queries.clone();
        let id = ids[i % ids.len()].clone();
        async move {
            q.get_task(authed(
                pb::GetTaskRequest {
                    task_id: id,
                    min_version: 0,
                },
                KEY_ACME,
            ))
            .await?;
            Ok(())
        }
    };
    let (lat, wall) = run(get).await?;
    out.push(summary(&format!("{label} GetTask"), lat, wall));
    Ok(out)
}

/// The processor's drain over `env`'s dependencies: [`DRAIN_TASKS`] noop tasks queued through a
/// gateway while no processor runs, then a processor started; tasks/s from its partition
/// assignment until every task is SUCCEEDED (counted in `env`'s own database).
async fn drain(label: &str, env: &TestEnv, s: StackSettings) -> anyhow::Result<String> {
    let gateway = Gateway::start(s.gateway).await?;
    let mut c = TaskServiceClient::new(dispatch_testkit::stack::channel(gateway.addr).await?);
    for _ in 0..DRAIN_TASKS / 500 {
        let tasks = (0..500).map(|_| spec("noop", b"bench")).collect();
        let r = c
            .submit_tasks(authed(pb::SubmitTasksRequest { tasks }, KEY_ACME))
            .await?
            .into_inner();
        anyhow::ensure!(
            r.results
                .iter()
                .all(|r| matches!(r.outcome, Some(pb::submit_result::Outcome::Accepted(_)))),
            "a queued task was refused"
        );
    }
    gateway.stop().await?;
    let succeeded = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM tasks WHERE state = 'succeeded'")
            .fetch_one(&env.pool)
            .await
            .unwrap_or(0)
    };
    let processor = Processor::start(dispatch_processor::App::builder(s.processor)).await?;
    let (t0, done0) = (Instant::now(), succeeded().await);
    eventually("drained", Duration::from_secs(600), || async {
        (succeeded().await >= DRAIN_TASKS).then_some(())
    })
    .await?;
    let wall = t0.elapsed();
    processor.stop().await?;
    Ok(format!(
        "{label} drain: {DRAIN_TASKS} noop tasks ({done0} done before the assignment): {:.0} tasks/s",
        (DRAIN_TASKS - done0) as f64 / wall.as_secs_f64()
    ))
}

mod parking_lot_free {
    /// Task ids collected by the submit workers.
    #[derive(Default)]
    pub struct Ids(std::sync::Mutex<Vec<String>>);
    impl Ids {
        pub fn push(&self, id: String) {
            if let Ok(mut v) = self.0.lock() {
                v.push(id);
            }
        }
        pub fn all(&self) -> Vec<String> {
            self.0.lock().map(|v| v.clone()).unwrap_or_default()
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement, not a check: docs/benchmarks.md"]
async fn tls_bench() -> anyhow::Result<()> {
    let tls = TlsStack::from_env().ok_or_else(|| anyhow::anyhow!("source deploy/local/env.sh"))?;
    let ca = std::fs::read(tls.file("ca.pem"))?;
    let mut lines = Vec::new();

    // 1. Everything plaintext (the plain stack).
    let stack = Stack::start().await?;
    lines.extend(measure("plain", &stack, None).await?);
    stack.stop().await?;

    // 2. The plain stack's dependencies, gRPC over TLS (the cost of the API's TLS alone).
    let env = TestEnv::new().await?;
    let mut s = StackSettings::for_env(&env);
    for grpc in [&mut s.gateway.grpc, &mut s.reader.grpc] {
        grpc.tls_cert_path = Some(tls.file("server.pem"));
        grpc.tls_key_path = Some(tls.file("server.key"));
    }
    let stack = Stack::start_on(env, s.clone()).await?;
    lines.extend(measure("grpc-tls", &stack, Some(&ca)).await?);
    stack.stop().await?;

    // 3. Everything over TLS: the TLS stack (SASL_SSL, MySQL verify_identity, rediss://) and gRPC.
    let env = TestEnv::on_tls_stack(&tls).await?;
    let mut s = StackSettings::for_env(&env);
    for grpc in [&mut s.gateway.grpc, &mut s.reader.grpc] {
        grpc.tls_cert_path = Some(tls.file("server.pem"));
        grpc.tls_key_path = Some(tls.file("server.key"));
    }
    let stack = Stack::start_on(env, s).await?;
    lines.extend(measure("all-tls", &stack, Some(&ca)).await?);
    stack.stop().await?;

    // 4. The drain, plain and over the TLS stack, each twice, alternated.
    for round in 1..=2 {
        let env = TestEnv::new().await?;
        let s = StackSettings::for_env(&env);
        lines.push(drain(&format!("plain ({round})"), &env, s).await?);
        env.cleanup().await;
        let env = TestEnv::on_tls_stack(&tls).await?;
        let s = StackSettings::for_env(&env);
        lines.push(drain(&format!("all-tls ({round})"), &env, s).await?);
        env.cleanup().await;
    }

    for l in lines {
        println!("{l}");
    }
    Ok(())
}
