//! A run-time TLS failure of a dependency shows in the reader's readiness until the dependency
//! works again: MySQL's takes it down (`/readyz` 503 with `mysql_tls` Down, gRPC health
//! NOT_SERVING: what the kubelet asks), Redis' and Kafka's only degrade it (`redis_tls`,
//! `kafka_tls`), as their other failures do. Each is held for `health.tls_hold_ms` although the
//! dependency answers the probe throughout, then it is Up again by itself. The failures are
//! recorded as the store, L2 and the events consumer's context record them (no TLS stack here:
//! the runtime's `tls_failures` tests show the context's reports arriving and real failures of
//! the real clients classified as such).

use std::net::SocketAddr;
use std::time::Duration;

use dispatch_runtime::tls_failures::Dependency;
use dispatch_testkit::stack::{
    TlsFailureCase, readyz_component, tls_errors_counted, tls_failure_is_held_then_clears,
};
use dispatch_testkit::{TestEnv, eventually};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::common::{query_health, reader_with, stop};

/// Whether gRPC health says SERVING for the query service (`None`: no answer).
async fn serving(addr: SocketAddr) -> Option<bool> {
    Some(query_health(addr).await? == ServingStatus::Serving as i32)
}

/// `dispatch_tls_errors_total{dependency, service="reader"}` as `/metrics` shows it.
async fn counted(admin: SocketAddr, dep: Dependency) -> Option<f64> {
    tls_errors_counted(admin, "reader", dep).await
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
        (serving(addr).await? && readyz_component(admin, "mysql").await == Some((200, "up".into())))
            .then_some(())
    })
    .await
    .expect("ready");
    // No failure yet: no component, and the series exist at zero.
    assert_eq!(
        readyz_component(admin, "mysql_tls").await,
        Some((200, "absent".into()))
    );
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
        let case = TlsFailureCase {
            dep,
            reason,
            failing: (if ready { 200 } else { 503 }, failing),
            serving: ready,
        };
        tls_failure_is_held_then_clears("reader", &tls, admin, hold, || serving(addr), case)
            .await
            .expect("held, then cleared");
    }

    stop(r, env).await;
}
