//! Real run-time TLS failures of the real clients, classified and counted: librdkafka (through
//! `kafka::StatisticsContext`'s error callback), the rate limiter's Redis connection and sqlx,
//! each against a server whose certificate it does not trust (a CA the client was not given).
//! The TLS server is a tokio-rustls listener with a certificate from a CA of its own, so no TLS
//! stack is needed; the MySQL case uses the local stack's MariaDB (`DISPATCH_TEST_MYSQL`), which
//! refuses such a client whether or not it offers TLS.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use dispatch_runtime::breaker::BreakerSettings;
use dispatch_runtime::kafka::StatisticsContext;
use dispatch_runtime::ratelimit::{LimiterConfig, Rate, SharedLimiter};
use dispatch_runtime::settings::RedisSettings;
use dispatch_runtime::tls_failures::{self, Dependency};
use dispatch_testkit::tls::tls_listener;

/// A CA of its own and a certificate for localhost / 127.0.0.1 signed by it.
fn server_config() -> rustls::ServerConfig {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("cert");
    let _ = rustls::crypto::ring::default_provider().install_default();
    rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("der"),
        )
        .expect("server config")
}

/// The PEM of another CA, in a file: what the clients trust instead.
fn other_ca(dir: &tempfile::TempDir) -> PathBuf {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().expect("key");
    let pem = ca.self_signed(&key).expect("ca").pem();
    let path = dir.path().join("other-ca.pem");
    std::fs::write(&path, pem).expect("write ca");
    path
}

/// A TLS listener on loopback that completes handshakes with clients that accept its
/// certificate (none here) and holds the connection; returns its port.
async fn tls_server() -> u16 {
    tls_listener(server_config(), |tls| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(tls);
    })
    .await
}

/// A Kafka client config for a broker at `port` over TLS, trusting only `ca`.
fn kafka_over_tls(port: u16, ca: &std::path::Path) -> rdkafka::ClientConfig {
    let mut cfg = rdkafka::ClientConfig::new();
    cfg.set("bootstrap.servers", format!("127.0.0.1:{port}"))
        .set("security.protocol", "ssl")
        .set("ssl.ca.location", ca.to_string_lossy())
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "200");
    cfg
}

/// Sends one record through `producer` (a record to send makes the client ask for metadata, i.e.
/// connect; the producer's own thread serves the error callback) and waits until a Kafka TLS
/// failure of `service` is counted.
async fn counts_kafka_failure<C: rdkafka::ClientContext + 'static>(
    producer: &rdkafka::producer::FutureProducer<C>,
    service: &str,
) -> bool {
    let send = producer.send_result(
        rdkafka::producer::FutureRecord::to("tls-it")
            .key("k")
            .payload("v"),
    );
    assert!(send.is_ok(), "enqueue");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if tls_failures::counted(service, Dependency::Kafka) > 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_counts_a_broker_certificate_that_does_not_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = other_ca(&dir);
    let port = tls_server().await;

    // A client on StatisticsContext (the reader's events consumer, ...).
    // librdkafka connects to the bootstrap broker as the client is created, so the counter is
    // read as zero before, never after, the client exists.
    let service = "tls-it-kafka";
    assert_eq!(tls_failures::counted(service, Dependency::Kafka), 0);
    let producer: rdkafka::producer::FutureProducer<StatisticsContext> = kafka_over_tls(port, &ca)
        .create_with_context(StatisticsContext::new(service))
        .expect("producer");
    assert!(
        counts_kafka_failure(&producer, service).await,
        "no TLS failure counted for the untrusted broker certificate"
    );
    let text = dispatch_runtime::metrics::render();
    assert!(
        text.lines().any(|l| l.starts_with(
            "dispatch_tls_errors_total{dependency=\"kafka\",service=\"tls-it-kafka\"}"
        )),
        "not exported"
    );

    // The gateway's and the processor's producer (runtime::producer's context).
    let service = "tls-it-producer";
    assert_eq!(tls_failures::counted(service, Dependency::Kafka), 0);
    let core = dispatch_runtime::producer::ProducerCore::new(service, kafka_over_tls(port, &ca))
        .expect("producer core");
    assert!(
        counts_kafka_failure(&core.client(), service).await,
        "the producer core's context counted no TLS failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limiter_counts_a_redis_certificate_that_does_not_verify() {
    let service = "tls-it-redis";
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = other_ca(&dir);
    let port = tls_server().await;
    let redis = RedisSettings {
        url: format!("rediss://localhost:{port}"),
        tls_ca_file: Some(ca),
        connect_timeout_ms: 2_000,
        command_timeout_ms: 500,
        ..RedisSettings::default()
    };
    // The error itself, as the rate limiter and the services see it.
    let e = dispatch_runtime::redis_client::connect(&redis)
        .await
        .map(|_| ())
        .expect_err("an untrusted certificate must not connect");
    assert!(tls_failures::is_tls_error(&e), "not classified as TLS: {e}");

    let limiter = SharedLimiter::new(
        LimiterConfig {
            service,
            name: "submit",
            tenant: Some(Rate {
                per_second: 10,
                burst: 10,
            }),
            global: None,
            replicas: 1,
            shared: true,
            redis_timeout: Duration::from_millis(50),
            lease: Duration::ZERO,
            breaker: BreakerSettings::from_ms(1, 50, 200),
        },
        Some(&redis),
    );
    assert_eq!(tls_failures::counted(service, Dependency::Redis), 0);
    limiter.connect().await;
    assert_eq!(tls_failures::counted(service, Dependency::Redis), 1);

    // A Redis that is merely down is not a TLS failure.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let down_port = closed.local_addr().expect("addr").port();
    drop(closed);
    let down = RedisSettings {
        url: format!("redis://127.0.0.1:{down_port}"),
        ..redis.clone()
    };
    let e = dispatch_runtime::redis_client::connect(&down)
        .await
        .map(|_| ())
        .expect_err("nothing listens");
    assert!(!tls_failures::is_tls_error(&e), "classified as TLS: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_tls_failures_are_told_from_other_connection_errors() {
    use sqlx::ConnectOptions as _;
    use sqlx::mysql::{MySqlConnectOptions, MySqlSslMode};
    let url = std::env::var("DISPATCH_TEST_MYSQL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "mysql://dispatch:dispatch@127.0.0.1:3306".into());
    let base = MySqlConnectOptions::from_str(&url).expect("DISPATCH_TEST_MYSQL");
    // The local MariaDB answers (else nothing below means anything).
    base.clone()
        .ssl_mode(MySqlSslMode::Disabled)
        .connect()
        .await
        .expect("the local MariaDB (deploy/local/stack.sh) must accept DISPATCH_TEST_MYSQL");

    let dir = tempfile::tempdir().expect("tempdir");
    let ca = other_ca(&dir);
    // Verified TLS with a CA that did not sign the server's certificate (or a server without
    // TLS): refused either way, and a TLS failure.
    let e = base
        .clone()
        .ssl_mode(MySqlSslMode::VerifyCa)
        .ssl_ca(&ca)
        .connect()
        .await
        .map(|_| ())
        .expect_err("an untrusted server certificate must not connect");
    assert!(tls_failures::is_tls_error(&e), "not classified as TLS: {e}");

    // A wrong password is not a TLS failure.
    let e = base
        .clone()
        .ssl_mode(MySqlSslMode::Disabled)
        .password("not-the-password")
        .connect()
        .await
        .map(|_| ())
        .expect_err("a wrong password must not connect");
    assert!(!tls_failures::is_tls_error(&e), "classified as TLS: {e}");
}
