//! Dependency probes behind gRPC health and `/readyz`.
//!
//! gRPC health starts NOT_SERVING and turns SERVING once Kafka metadata is reachable (topics are
//! created first when `kafka.create_topics` is set). After that the gateway stays SERVING while
//! Kafka *or* MySQL works (the outbox covers a Kafka outage) and reports NOT_SERVING only when
//! both are down. `/readyz` components: `kafka` and `mysql` are Degraded when the other one still
//! works and Down when both fail; `redis` is at worst Degraded (only the idempotency fast path).
//!
//! A TLS failure is another matter: a certificate that does not verify or a refused handshake
//! does not heal by waiting, and it is this pod's trust or credentials that are wrong. The probe
//! records what it sees of them (MySQL's and Redis' errors) in the app's [`TlsFailures`], and
//! `dispatch_runtime::tls_failures` turns them into the components `mysql_tls` (Down:
//! NOT_SERVING, whatever Kafka does) and `redis_tls` (Degraded, like `redis`), held for
//! `health.tls_hold_ms` and until the dependency works again.
//!
//! Kafka's TLS failures reach the same [`TlsFailures`] from the producer's librdkafka context
//! (`dispatch_runtime::tls_failures::kafka_error`) and are cleared the same way by the probe's
//! metadata answers, but `kafka_tls` is only Degraded while MySQL works: accepted records then go
//! to the outbox, as in any Kafka outage, and the relay publishes them once Kafka takes them
//! again. Turning the gateway NOT_SERVING would not get the records to Kafka any sooner; with
//! every replica sharing the same trust and credentials it would refuse every submit instead
//! of queueing them. When MySQL fails too nothing covers for Kafka, and `kafka_tls` is Down
//! (NOT_SERVING) until Kafka has worked again and the hold has passed: a metadata answer on a
//! connection made before the failure proves little.

use std::time::Duration;

use dispatch_runtime::admin::{ComponentStatus, Health};
use dispatch_runtime::server::Serving;
use dispatch_runtime::settings::KafkaSettings;
use dispatch_runtime::tls_failures::{Dependency, TlsFailures};
use tokio_util::sync::CancellationToken;

use crate::idempotency::Idempotency;
use crate::metrics;
use crate::producer::Producer;
use crate::settings::HealthSettings;

/// What the probe loop watches.
pub struct Probe {
    /// Kafka.
    pub producer: Producer,
    /// MySQL.
    pub pool: sqlx::MySqlPool,
    /// Pool size for the pool gauge.
    pub pool_max: u32,
    /// Redis.
    pub idempotency: Idempotency,
    /// `/readyz`.
    pub health: Health,
    /// grpc.health.v1: the server as a whole and each service it serves (the gRPC server's own
    /// [`Serving`], which knows every service name).
    pub serving: Serving,
    /// Topic bootstrap.
    pub kafka: KafkaSettings,
    /// Period, timeout and TLS hold.
    pub settings: HealthSettings,
    /// TLS failures of Kafka, MySQL and Redis (shared with whatever else sees them).
    pub tls: TlsFailures,
}

fn status(result: &Result<(), String>, other_ok: bool) -> ComponentStatus {
    match result {
        Ok(()) => ComponentStatus::Up,
        Err(e) if other_ok => ComponentStatus::Degraded(e.clone()),
        Err(e) => ComponentStatus::Down(e.clone()),
    }
}

/// The dependencies whose TLS failures only degrade the gateway (see the module docs): Redis, and
/// Kafka while the outbox covers for it (MySQL works).
fn tls_optional(mysql_ok: bool) -> &'static [Dependency] {
    if mysql_ok {
        &[Dependency::Redis, Dependency::Kafka]
    } else {
        &[Dependency::Redis]
    }
}

impl Probe {
    /// Probes until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let timeout = Duration::from_millis(self.settings.probe_timeout_ms.max(1));
        let period = Duration::from_millis(self.settings.probe_interval_ms.max(1));
        let tls_hold = Duration::from_millis(self.settings.tls_hold_ms);
        let mut serving = false;
        let mut topics_ready = !self.kafka.create_topics;
        let probe_topic = self.kafka.topics().tasks(dispatch_core::Priority::Default);
        while !stop.is_cancelled() {
            let (kafka, mysql, redis) = tokio::join!(
                self.producer.check_metadata(probe_topic.clone(), timeout),
                async {
                    match tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(&self.pool))
                        .await
                    {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => {
                            self.tls.observe(Dependency::Mysql, &e);
                            Err(e.to_string())
                        }
                        Err(_) => Err("timeout".to_string()),
                    }
                },
                self.idempotency.ping(),
            );
            for (dep, ok) in [
                (Dependency::Kafka, kafka.is_ok()),
                (Dependency::Mysql, mysql.is_ok()),
            ] {
                if ok {
                    self.tls.succeeded(dep);
                }
            }
            match &redis {
                Ok(()) => self.tls.succeeded(Dependency::Redis),
                Err(e) => {
                    self.tls.observe_text(Dependency::Redis, e);
                }
            }
            let tls_down = self
                .tls
                .sync(&self.health, tls_hold, tls_optional(mysql.is_ok()));
            self.health.set("kafka", status(&kafka, mysql.is_ok()));
            self.health.set("mysql", status(&mysql, kafka.is_ok()));
            self.health.set(
                "redis",
                redis.map_or_else(ComponentStatus::Degraded, |()| ComponentStatus::Up),
            );
            metrics::pool(&self.pool, self.pool_max);
            if kafka.is_ok() && !topics_ready {
                let specs = dispatch_runtime::kafka::dispatch_topics(&self.kafka);
                match dispatch_runtime::kafka::ensure_topics(&self.kafka, &specs).await {
                    Ok(()) => topics_ready = true,
                    Err(e) => tracing::warn!(error = %e, "cannot create topics"),
                }
            }
            let next = !tls_down
                && if serving {
                    kafka.is_ok() || mysql.is_ok()
                } else {
                    kafka.is_ok() && topics_ready
                };
            if next != serving && !stop.is_cancelled() {
                self.serving.set(next).await;
                tracing::info!(serving = next, "grpc health changed");
                serving = next;
            }
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(period) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kafka_tls_failure_degrades_while_the_outbox_covers_and_is_down_without_it() {
        let tls = TlsFailures::new("gateway-probe-unit", &[Dependency::Kafka]);
        let health = Health::new();
        tls.record(
            Dependency::Kafka,
            "SSL handshake failed: certificate verify failed",
        );
        // MySQL works: Degraded, still serving.
        assert!(!tls.sync(&health, Duration::ZERO, tls_optional(true)));
        let r = health.readiness();
        assert!(
            matches!(&r.components["kafka_tls"], ComponentStatus::Degraded(why) if why.contains("certificate verify failed")),
            "{r:?}"
        );
        assert!(r.down.is_empty(), "{r:?}");
        // MySQL fails too: Down, NOT_SERVING.
        assert!(tls.sync(&health, Duration::ZERO, tls_optional(false)));
        assert_eq!(health.readiness().down, vec!["kafka_tls".to_string()]);
        // Redis stays optional either way; MySQL never is.
        for mysql_ok in [true, false] {
            assert!(tls_optional(mysql_ok).contains(&Dependency::Redis));
            assert!(!tls_optional(mysql_ok).contains(&Dependency::Mysql));
        }
    }
}
