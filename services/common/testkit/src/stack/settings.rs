//! Each service's test settings over one [`TestEnv`], and [`StackSettings`] with all three.

use std::net::SocketAddr;

use crate::TestEnv;
use crate::auth::auth;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn kafka(env: &TestEnv) -> dispatch_runtime::settings::KafkaSettings {
    dispatch_runtime::settings::KafkaSettings {
        // TestEnv created the topics already.
        create_topics: false,
        ..env.kafka.clone()
    }
}

/// A gateway's settings for `env`: relay every 50 ms, probes every 200 ms.
pub fn gateway_settings(env: &TestEnv) -> dispatch_gateway::Settings {
    let mut s = dispatch_gateway::Settings {
        kafka: kafka(env),
        database: env.db.clone(),
        redis: env.redis.clone(),
        auth: auth(),
        ..dispatch_gateway::Settings::default()
    };
    s.grpc.listen = loopback();
    s.admin.listen = loopback();
    s.outbox.relay_interval_ms = 50;
    s.outbox.lock_retry_ms = 100;
    s.health.probe_interval_ms = 200;
    s.health.probe_timeout_ms = 1_000;
    s.shutdown.drain_timeout_ms = 5_000;
    s
}

/// A processor's settings for `env`: a consumer group of the env's own, lag every 500 ms, a 2 s
/// rebalance drain, the scheduler every 100 ms.
pub fn processor_settings(env: &TestEnv) -> dispatch_processor::Settings {
    let mut s = dispatch_processor::Settings {
        kafka: kafka(env),
        database: env.db.clone(),
        auth: auth(),
        ..dispatch_processor::Settings::default()
    };
    s.grpc.listen = loopback();
    s.admin.listen = loopback();
    s.consumer.group = format!("processor-{}", env.id);
    s.consumer.lag_interval_ms = 500;
    s.consumer.rebalance_drain_ms = 2_000;
    s.consumer.pause_sync_ms = 200;
    s.scheduler.interval_ms = 100;
    s.shutdown.drain_timeout_ms = 5_000;
    s
}

/// A reader's settings for `env`.
pub fn reader_settings(env: &TestEnv) -> dispatch_reader::Settings {
    let mut s = dispatch_reader::Settings {
        kafka: kafka(env),
        database: env.db.clone(),
        redis: env.redis.clone(),
        auth: auth(),
        ..dispatch_reader::Settings::default()
    };
    s.grpc.listen = loopback();
    s.admin.listen = loopback();
    s.shutdown.drain_timeout_ms = 5_000;
    s
}

/// Settings of the three services over one env. Tests tweak the fields before starting.
#[derive(Debug, Clone)]
pub struct StackSettings {
    /// The gateway's.
    pub gateway: dispatch_gateway::Settings,
    /// The processor's.
    pub processor: dispatch_processor::Settings,
    /// The reader's.
    pub reader: dispatch_reader::Settings,
}

impl StackSettings {
    /// [`gateway_settings`], [`processor_settings`] and [`reader_settings`] of `env`.
    pub fn for_env(env: &TestEnv) -> Self {
        Self {
            gateway: gateway_settings(env),
            processor: processor_settings(env),
            reader: reader_settings(env),
        }
    }
}
