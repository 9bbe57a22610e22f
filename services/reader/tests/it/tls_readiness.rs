//! A run-time TLS failure of a dependency shows in the reader's readiness until the dependency
//! works again: MySQL's takes it down (`/readyz` 503 with `mysql_tls` Down, gRPC health
//! NOT_SERVING: what the kubelet asks), Redis' and Kafka's only degrade it (`redis_tls`,
//! `kafka_tls`), as their other failures do. Each is held for `health.tls_hold_ms` although the
//! dependency answers the probe throughout, then it is Up again by itself. The failures are
//! recorded as the store, L2 and the events consumer's context record them (no TLS stack here:
//! the runtime's `tls_failures` tests show the context's reports arriving and real failures of
//! the real clients classified as such).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dispatch_runtime::tls_failures::{self, Dependency};
use dispatch_testkit::{TestEnv, eventually};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::common::{query_health, reader_with};
use crate::invalid::http_get;

/// Whether gRPC health says SERVING for the query service (`None`: no answer).
async fn serving(addr: SocketAddr) -> Option<bool> {
    Some(query_health(addr).await? == ServingStatus::Serving as i32)
}

/// `/readyz`: the HTTP status and `component`'s status (`absent` when it has none).
async fn readyz(admin: SocketAddr, component: &str) -> (u16, String) {
    let raw = http_get(admin, "/readyz").await;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    // Compact JSON: `"components":{"mysql":{"status":"up"},"mysql_tls":{"status":"down",...`
    let key = format!("\"{component}\":{{\"status\":\"");
    let status = body
        .split_once(key.as_str())
        .and_then(|(_, rest)| rest.split('"').next())
        .unwrap_or("absent")
        .to_owned();
    (code, status)
}

/// `dispatch_tls_errors_total{dependency, service="reader"}` as `/metrics` shows it.
async fn counted(admin: SocketAddr, dep: Dependency) -> Option<f64> {
    let prefix = format!(
        "dispatch_tls_errors_total{{dependency=\"{}\",service=\"reader\"}} ",
        dep.as_str()
    );
    http_get(admin, "/metrics")
        .await
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_failure_shows_in_readiness_for_the_hold_then_it_recovers() {
    let env = TestEnv::new().await.expect("env");
    let hold = Duration::from_millis(1_500);
    let r = reader_with(&env, |s| {
        s.cache.probe_interval_ms = 100;
        s.health.tls_hold_ms = u64::try_from(hold.as_millis()).expect("ms");
    })
    .await;
    let (addr, admin) = (r.addr, r.admin);
    let tls = r.handle.tls_failures().clone();
    eventually("SERVING and ready", Duration::from_secs(15), || async {
        (serving(addr).await? && readyz(admin, "mysql").await == (200, "up".into())).then_some(())
    })
    .await
    .expect("ready");
    // No failure yet: no component, and the series exist at zero.
    assert_eq!(readyz(admin, "mysql_tls").await, (200, "absent".into()));
    for dep in [Dependency::Mysql, Dependency::Redis, Dependency::Kafka] {
        assert_eq!(counted(admin, dep).await, Some(0.0), "{dep:?}");
    }

    for (dep, reason, failing, ready) in [
        (
            Dependency::Mysql,
            "error communicating with database: invalid peer certificate: Expired",
            "down",
            false,
        ),
        (
            Dependency::Redis,
            "invalid peer certificate: UnknownIssuer",
            "degraded",
            true,
        ),
        (
            Dependency::Kafka,
            "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed",
            "degraded",
            true,
        ),
    ] {
        let component = dep.component();
        let code = if ready { 200 } else { 503 };
        let before = tls_failures::counted("reader", dep);
        let at = Instant::now();
        tls.record(dep, reason);
        eventually(
            &format!("{component} {failing}, {code}, SERVING {ready}"),
            Duration::from_secs(10),
            || async {
                (readyz(admin, component).await == (code, failing.to_owned())
                    && serving(addr).await? == ready)
                    .then_some(())
            },
        )
        .await
        .expect("failing");
        let n = counted(admin, dep).await;
        assert!(
            n.is_some_and(|n| n >= (before + 1) as f64),
            "{component}: not counted: {n:?}"
        );
        eventually(
            &format!("{component} up, 200, SERVING"),
            Duration::from_secs(15),
            || async {
                (readyz(admin, component).await == (200, "up".to_owned()) && serving(addr).await?)
                    .then_some(())
            },
        )
        .await
        .expect("recovered");
        // Not before the hold had passed since the failure.
        assert!(
            at.elapsed() >= hold,
            "{component} up after {:?}",
            at.elapsed()
        );
    }

    r.stop().await.expect("clean shutdown");
    env.cleanup().await;
}
