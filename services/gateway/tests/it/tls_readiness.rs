//! A TLS failure of a dependency turns the gateway's readiness down (`/readyz` and gRPC health)
//! until the dependency works again: MySQL's takes it down, Redis' only degrades it. The
//! failures are recorded as the probe records what it sees (no TLS stack here; the runtime's
//! tests/it/tls_failures.rs shows real failures of the real clients classified as such).

use std::time::Duration;

use dispatch_gateway::App;
use dispatch_runtime::Shutdown;
use dispatch_runtime::tls_failures::Dependency;
use dispatch_testkit::stack::tls_errors_counted;
use dispatch_testkit::{TestEnv, eventually};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::harness::settings;

async fn serving(h: &HealthClient<tonic::transport::Channel>) -> Option<bool> {
    let st = h
        .clone()
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?
        .into_inner()
        .status;
    Some(st == ServingStatus::Serving as i32)
}

async fn component(admin: std::net::SocketAddr, name: &str) -> Option<String> {
    let r: serde_json::Value = reqwest::get(format!("http://{admin}/readyz"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    r["components"][name]["status"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_failure_turns_readiness_down_until_the_dependency_works_again() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    let mut s = settings(&env);
    s.health.tls_hold_ms = 1_500;
    let app = App::build(s).await?;
    let tls = app.tls_failures();
    let (addr, admin) = (app.local_addr(), app.admin_addr());
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let health = HealthClient::new(
        tonic::transport::Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await?,
    );
    eventually("SERVING", Duration::from_secs(20), || async {
        serving(&health).await?.then_some(())
    })
    .await?;

    // Redis is optional: its TLS failure degrades, the gateway keeps serving.
    tls.record(Dependency::Redis, "invalid peer certificate: UnknownIssuer");
    eventually("redis_tls degraded", Duration::from_secs(10), || async {
        (component(admin, "redis_tls").await? == "degraded").then_some(())
    })
    .await?;
    assert_eq!(serving(&health).await, Some(true));

    // MySQL's: down, NOT_SERVING (although MySQL answers the probe's query and Kafka works).
    tls.record(Dependency::Mysql, "invalid peer certificate: Expired");
    eventually(
        "mysql_tls down, NOT_SERVING",
        Duration::from_secs(10),
        || async {
            (component(admin, "mysql_tls").await? == "down" && !serving(&health).await?)
                .then_some(())
        },
    )
    .await?;
    let counted = tls_errors_counted(admin, "gateway", Dependency::Mysql).await;
    assert!(
        counted.is_some_and(|n| n >= 1.0),
        "not counted: {counted:?}"
    );

    // MySQL works (the probe's query) and the hold has passed: ready again.
    eventually("mysql_tls up, SERVING", Duration::from_secs(15), || async {
        (component(admin, "mysql_tls").await? == "up" && serving(&health).await?).then_some(())
    })
    .await?;
    assert_eq!(component(admin, "redis_tls").await.as_deref(), Some("up"));

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(30), handle).await???;
    env.cleanup().await;
    Ok(())
}
