//! Dependency probes behind gRPC health and `/readyz`.
//!
//! gRPC health starts NOT_SERVING and turns SERVING once Kafka metadata is reachable (topics are
//! created first when `kafka.create_topics` is set). After that the gateway stays SERVING while
//! Kafka *or* MySQL works (the outbox covers a Kafka outage) and reports NOT_SERVING only when
//! both are down. `/readyz` components: `kafka` and `mysql` are Degraded when the other one still
//! works and Down when both fail; `redis` is at worst Degraded (only the idempotency fast path).

use std::time::Duration;

use dispatch_proto::v1::task_service_server::TaskServiceServer;
use dispatch_runtime::admin::{ComponentStatus, Health};
use dispatch_runtime::settings::KafkaSettings;
use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;

use crate::idempotency::Idempotency;
use crate::metrics;
use crate::producer::Producer;
use crate::service::TaskApi;
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
    /// grpc.health.v1.
    pub reporter: HealthReporter,
    /// Topic bootstrap.
    pub kafka: KafkaSettings,
    /// Period and timeout.
    pub settings: HealthSettings,
}

fn status(result: &Result<(), String>, other_ok: bool) -> ComponentStatus {
    match result {
        Ok(()) => ComponentStatus::Up,
        Err(e) if other_ok => ComponentStatus::Degraded(e.clone()),
        Err(e) => ComponentStatus::Down(e.clone()),
    }
}

/// Sets the overall and TaskService serving status.
pub async fn set_serving(reporter: &HealthReporter, serving: bool) {
    let st = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    reporter.set_service_status("", st).await;
    reporter
        .set_service_status(
            <TaskServiceServer<TaskApi> as tonic::server::NamedService>::NAME,
            st,
        )
        .await;
}

impl Probe {
    /// Probes until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let timeout = Duration::from_millis(self.settings.probe_timeout_ms.max(1));
        let period = Duration::from_millis(self.settings.probe_interval_ms.max(1));
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
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("timeout".to_string()),
                    }
                },
                self.idempotency.ping(),
            );
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
            let next = if serving {
                kafka.is_ok() || mysql.is_ok()
            } else {
                kafka.is_ok() && topics_ready
            };
            if next != serving && !stop.is_cancelled() {
                set_serving(&self.reporter, next).await;
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
