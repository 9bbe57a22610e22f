//! Readiness from run-time TLS failures of MySQL and Kafka: a certificate that stops verifying
//! (expired, or a CA rotated on one side only), a handshake the other side refuses, a wrong SASL
//! password, after start-up (start-up refuses them: `dispatch_runtime::tls::check_dependencies`).
//!
//! - Kafka's are heard from the librdkafka contexts of the group consumer
//!   ([`crate::consumer::Ctx`]) and of the producer (`dispatch_runtime::producer`), through
//!   `dispatch_runtime::tls_failures::kafka_error`: the app's [`TlsFailures`] hears Kafka.
//! - MySQL's are seen by this probe's `SELECT 1` and by the batch writer's failed commits
//!   (`crate::writer`), the pool's heaviest user.
//!
//! All are counted in `dispatch_tls_errors_total{service="processor"}`. The probe turns them into
//! the `/readyz` components `mysql_tls` and `kafka_tls`, **Down** (the processor does nothing
//! without either; unlike the gateway's outbox, nothing covers for Kafka), and gRPC health
//! NOT_SERVING, which is what the kubelet's readiness probe asks. A component stays Down for
//! `health.tls_hold_ms` after the last failure and until the dependency has worked since: a
//! `SELECT 1`, or for Kafka a metadata answer to the producer, asked only while a Kafka failure
//! waits for one. Then it turns Up and the processor SERVING again, by itself.
//!
//! Processing goes on meanwhile (whatever still connects keeps working): an unready processor
//! leaves the AdminService's endpoints and holds a rollout whose new pods cannot handshake.

use std::time::Duration;

use dispatch_runtime::admin::Health;
use dispatch_runtime::producer::ProducerCore;
use dispatch_runtime::server::Serving;
use dispatch_runtime::tls_failures::{Dependency, TlsFailures};
use dispatch_store::MySqlPool;
use tokio_util::sync::CancellationToken;

use crate::settings::HealthSettings;

/// The probe loop (see the module docs).
pub struct TlsProbe {
    /// The app's TLS failures (heard from the Kafka contexts, recorded by the writer).
    pub tls: TlsFailures,
    /// `/readyz`.
    pub health: Health,
    /// gRPC health.
    pub serving: Serving,
    /// MySQL.
    pub pool: MySqlPool,
    /// Kafka: the producer's metadata answers clear a Kafka failure.
    pub producer: ProducerCore,
    /// The topic of the metadata request (one topic keeps it cheap).
    pub topic: String,
    /// Period, timeout, hold.
    pub settings: HealthSettings,
}

impl TlsProbe {
    /// Probes until `stop`. Leaves gRPC health alone until the first failure and never changes
    /// it once `stop` fired (shutdown owns it then).
    pub async fn run(self, stop: CancellationToken) {
        let period = Duration::from_millis(self.settings.probe_interval_ms.max(1));
        let timeout = Duration::from_millis(self.settings.probe_timeout_ms.max(1));
        let hold = Duration::from_millis(self.settings.tls_hold_ms);
        let mut ready = true;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.check(timeout) => {}
            }
            let now_ready = !self.tls.sync(&self.health, hold, &[]);
            if now_ready != ready {
                if stop.is_cancelled() {
                    return;
                }
                self.serving.set(now_ready).await;
                tracing::info!(
                    serving = now_ready,
                    "grpc health changed (TLS failures of the dependencies)"
                );
                ready = now_ready;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
        }
    }

    /// One round: MySQL always, Kafka while a failure waits for it to work again.
    async fn check(&self, timeout: Duration) {
        let mysql = async {
            match tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(&self.pool)).await {
                Ok(Ok(_)) => self.tls.succeeded(Dependency::Mysql),
                Ok(Err(e)) => {
                    self.tls.observe(Dependency::Mysql, &e);
                }
                Err(_) => {}
            }
        };
        let kafka = async {
            if self
                .tls
                .failing(Dependency::Kafka, Duration::ZERO)
                .is_some()
                && self
                    .producer
                    .check_metadata(self.topic.clone(), timeout)
                    .await
                    .is_ok()
            {
                self.tls.succeeded(Dependency::Kafka);
            }
        };
        tokio::join!(mysql, kafka);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rdkafka::ClientContext;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::producer::Producer as _;

    use super::*;
    use crate::consumer::{Ctx, Shared};

    /// What the app's probe sees: the TLS failures the group consumer's and the producer's
    /// librdkafka contexts report reach the app's [`TlsFailures`] and take `kafka_tls` down;
    /// their other errors do not.
    #[tokio::test]
    async fn the_kafka_clients_contexts_feed_the_apps_tls_failures() {
        let tls = TlsFailures::new("processor", &[Dependency::Kafka, Dependency::Mysql]);
        let health = Health::new();
        let consumer = Ctx::new(Arc::new(Shared::new(
            dispatch_core::Topics::new("tls-readiness"),
            Duration::from_secs(1),
        )));
        let mut cfg = rdkafka::ClientConfig::new();
        cfg.set("bootstrap.servers", "127.0.0.1:1");
        let producer = ProducerCore::new("processor", cfg).expect("producer");
        let before = dispatch_runtime::tls_failures::counted("processor", Dependency::Kafka);

        consumer.error(
            KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
            "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused",
        );
        assert!(tls.failing(Dependency::Kafka, Duration::ZERO).is_none());
        assert!(!tls.sync(&health, Duration::ZERO, &[]));

        consumer.error(
            KafkaError::Global(RDKafkaErrorCode::SSL),
            "ssl://broker:9093/1: SSL handshake failed: certificate verify failed",
        );
        assert!(tls.sync(&health, Duration::ZERO, &[]));
        assert_eq!(health.readiness().down, vec!["kafka_tls".to_string()]);
        tls.succeeded(Dependency::Kafka);
        assert!(!tls.sync(&health, Duration::ZERO, &[]));

        producer.client().context().error(
            KafkaError::Global(RDKafkaErrorCode::Authentication),
            "sasl_ssl://broker:9094/1: SASL authentication error: Authentication failed",
        );
        let why = tls.failing(Dependency::Kafka, Duration::ZERO);
        assert!(
            why.as_deref().is_some_and(|w| w.contains("SASL")),
            "{why:?}"
        );
        assert!(tls.sync(&health, Duration::ZERO, &[]));
        assert_eq!(
            dispatch_runtime::tls_failures::counted("processor", Dependency::Kafka),
            before + 2
        );
    }
}
