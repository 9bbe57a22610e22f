//! Run-time TLS and authentication failures of the dependencies: a certificate that does not
//! verify (an unknown CA, an expired or renamed certificate), a TLS handshake the other side
//! refuses (our client certificate), a wrong SASL password. Start-up refuses such a
//! configuration ([`crate::tls::check_dependencies`]); this is for what goes wrong afterwards
//! (a certificate expires, a CA or a password is rotated on one side only).
//!
//! - Counted, by everything that sees dependency errors: `dispatch_tls_errors_total{service,
//!   dependency}` (`kafka`, `mysql`, `redis`). The librdkafka contexts count through
//!   [`kafka_error`], the rate limiter its Redis errors through [`count_if_tls`].
//! - Heard by a [`TlsFailures`] made with [`Dependency::Kafka`]: [`kafka_error`] also records
//!   the failure in every live one of its service, so the contexts of a service's long-lived
//!   Kafka clients (`runtime::producer`'s, `kafka::StatisticsContext`, the processor's group
//!   consumer) feed its readiness without holding it. (One service per process: in a test
//!   process running several instances of a service, each hears all of them.)
//! - Turned into readiness by a service that owns a [`TlsFailures`]: its health loop records the
//!   failures it sees and the successes, and [`TlsFailures::sync`] sets the readiness component
//!   `<dependency>_tls` Down (with the error; Degraded for a dependency the service works
//!   without) while the dependency is failing that way, Up afterwards. "Failing" lasts until the
//!   dependency has worked since the last TLS failure and at least `hold` has passed since it (librdkafka repeats an identical error at most every
//!   30 s, and pools keep using connections made before the failure, so one success proves
//!   little).
//!
//! What counts as a TLS failure: librdkafka's `SSL`, `Authentication` (SASL) and
//! `SaslAuthenticationFailed` codes, not a disconnect during the handshake (librdkafka itself
//! calls that a transport error: a broker restarting); for the Rust clients (sqlx, redis) a
//! rustls error anywhere in the error's chain, or its text ([`is_tls_text`]).
//!
//! Over 400 lines because of its tests, which start near line 341 and feed it the error texts each
//! client library produces; the classification of errors (`is_kafka_failure`, `is_tls_text`,
//! `is_tls_error`) would move out first.

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::IntCounterVec;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
// tokio's clock (the std clock outside a runtime, and off librdkafka's threads): tests can pause it.
use tokio::time::Instant;

use crate::admin::{ComponentStatus, Health};

/// The hold a service uses by default ([`TlsFailures::failing`]): twice the 30 s for which
/// librdkafka holds back a repeated identical error, so a failure that persists keeps its
/// component failing between two reports of it.
pub const DEFAULT_HOLD_MS: u64 = 60_000;

/// A dependency whose connections may use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dependency {
    /// Kafka (TLS and SASL).
    Kafka,
    /// MySQL.
    Mysql,
    /// Redis (`rediss://`).
    Redis,
}

impl Dependency {
    /// The `dependency` label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Kafka => "kafka",
            Self::Mysql => "mysql",
            Self::Redis => "redis",
        }
    }

    /// The readiness component a [`TlsFailures`] sets: `<dependency>_tls`.
    pub const fn component(self) -> &'static str {
        match self {
            Self::Kafka => "kafka_tls",
            Self::Mysql => "mysql_tls",
            Self::Redis => "redis_tls",
        }
    }
}

/// `dispatch_tls_errors_total{service, dependency}`.
static TLS_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    crate::metrics::register(
        IntCounterVec::new(
            prometheus::Opts::new(
                "dispatch_tls_errors_total",
                "Dependency errors that were TLS or authentication failures (a certificate that does not verify, a refused handshake, a wrong SASL password), by dependency: kafka, mysql, redis.",
            ),
            &["service", "dependency"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Creates `service`'s series for `deps` (zeros until the first failure).
pub fn init(service: &str, deps: &[Dependency]) {
    for d in deps {
        TLS_ERRORS.with_label_values(&[service, d.as_str()]);
    }
}

/// Counts one TLS failure of `dep` for `service`.
pub fn count(service: &str, dep: Dependency) {
    TLS_ERRORS.with_label_values(&[service, dep.as_str()]).inc();
}

/// The count so far (tests).
pub fn counted(service: &str, dep: Dependency) -> u64 {
    TLS_ERRORS.with_label_values(&[service, dep.as_str()]).get()
}

/// Whether a librdkafka error is a TLS or authentication failure: by code, or, for a code that
/// says nothing, by its text. A disconnect during the TLS handshake is not one: librdkafka
/// reports it as a transport failure (a broker going away looks the same).
pub fn is_kafka_failure(code: Option<RDKafkaErrorCode>, text: &str) -> bool {
    match code {
        Some(
            RDKafkaErrorCode::SSL
            | RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed,
        ) => true,
        Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown) => false,
        _ => {
            let t = text.to_ascii_lowercase();
            ["certificate verify failed", "sasl authentication"]
                .iter()
                .any(|p| t.contains(p))
        }
    }
}

/// For a librdkafka context's `error` callback: counts `error` under (`service`, kafka) when it
/// is a TLS or authentication failure ([`is_kafka_failure`]), records it in the [`TlsFailures`]
/// of `service` that hear Kafka (see the module docs) and says whether it was one.
pub fn kafka_error(service: &str, error: &KafkaError, reason: &str) -> bool {
    let tls = is_kafka_failure(error.rdkafka_error_code(), &format!("{error} {reason}"));
    if tls {
        count(service, Dependency::Kafka);
        let hearing: Vec<Arc<Failures>> = KAFKA_LISTENERS
            .lock()
            .iter()
            .filter(|(s, _)| *s == service)
            .filter_map(|(_, f)| f.upgrade())
            .collect();
        let text = format!("{error}: {reason}");
        for f in hearing {
            remember(&f, Dependency::Kafka, &text);
        }
    }
    tls
}

/// Whether an error message reads like a TLS failure: rustls' verification and alert
/// messages, OpenSSL's, sqlx's TLS error and MySQL's refusal of an insecure connection.
pub fn is_tls_text(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "invalid peer certificate",
        "received fatal alert",
        "peer sent no certificates",
        "peer is incompatible",
        "certificate verify failed",
        "certificate has expired",
        "establish a tls connection",
        "tls handshake",
        "ssl handshake",
        "ssl connection error",
        "server does not support tls",
        "insecure transport",
    ]
    .iter()
    .any(|p| t.contains(p))
}

/// Whether `e` (a sqlx or redis error, ...) is a TLS failure: a rustls error anywhere in its
/// chain (directly or inside an `io::Error`), or a message that reads like one.
pub fn is_tls_error(e: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        if is_tls_text(&err.to_string()) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Counts `e` under (`service`, `dep`) when it is a TLS failure ([`is_tls_error`]); says whether
/// it was. For code that sees dependency errors but owns no readiness (the rate limiter).
pub fn count_if_tls(service: &str, dep: Dependency, e: &(dyn StdError + 'static)) -> bool {
    let tls = is_tls_error(e);
    if tls {
        count(service, dep);
    }
    tls
}

#[derive(Debug, Clone)]
struct State {
    last_failure: Instant,
    reason: String,
    worked_since: bool,
}

/// One [`TlsFailures`]' state.
type Failures = Mutex<BTreeMap<Dependency, State>>;

/// A [`TlsFailures`] that hears its service's librdkafka failures: (service, its state).
type Listener = (&'static str, Weak<Failures>);

/// The [`TlsFailures`] that hear their service's librdkafka failures ([`kafka_error`]).
static KAFKA_LISTENERS: LazyLock<Mutex<Vec<Listener>>> = LazyLock::new(Mutex::default);

/// Remembers a TLS failure of `dep` (not counted here).
fn remember(failures: &Failures, dep: Dependency, reason: &str) {
    let first = failures
        .lock()
        .insert(
            dep,
            State {
                last_failure: Instant::now(),
                reason: reason.to_owned(),
                worked_since: false,
            },
        )
        .is_none_or(|s| s.worked_since);
    if first {
        tracing::warn!(
            dependency = dep.as_str(),
            error = reason,
            "TLS failure of a dependency; its readiness component is down until it works again"
        );
    }
}

/// One service instance's TLS failures per dependency, for its readiness (see the module docs).
/// Cheap to clone; clones share the state.
#[derive(Debug, Clone)]
pub struct TlsFailures {
    service: &'static str,
    state: Arc<Failures>,
}

impl TlsFailures {
    /// Failures of `service`'s dependencies, counted under that service; creates its series for
    /// `deps`. With [`Dependency::Kafka`] among them it hears the librdkafka failures the
    /// service's client contexts report through [`kafka_error`] (for as long as a clone lives).
    pub fn new(service: &'static str, deps: &[Dependency]) -> Self {
        init(service, deps);
        let state = Arc::<Failures>::default();
        if deps.contains(&Dependency::Kafka) {
            let mut listeners = KAFKA_LISTENERS.lock();
            listeners.retain(|(_, f)| f.strong_count() > 0);
            listeners.push((service, Arc::downgrade(&state)));
        }
        Self { service, state }
    }

    /// A TLS failure of `dep`: counted, and remembered with its text.
    pub fn record(&self, dep: Dependency, reason: &str) {
        count(self.service, dep);
        remember(&self.state, dep, reason);
    }

    /// Records `e` when it is a TLS failure of `dep` ([`is_tls_error`]); says whether it was.
    pub fn observe(&self, dep: Dependency, e: &(dyn StdError + 'static)) -> bool {
        let tls = is_tls_error(e);
        if tls {
            self.record(dep, &e.to_string());
        }
        tls
    }

    /// Records `text` (an error already turned into a message) when it reads like a TLS failure
    /// of `dep` ([`is_tls_text`]); says whether it did.
    pub fn observe_text(&self, dep: Dependency, text: &str) -> bool {
        let tls = is_tls_text(text);
        if tls {
            self.record(dep, text);
        }
        tls
    }

    /// For a librdkafka context's `error` callback that holds this (instead of counting through
    /// [`kafka_error`]): records `error` when it is a TLS or authentication failure
    /// ([`is_kafka_failure`]); says whether it was.
    pub fn observe_kafka(&self, error: &KafkaError, reason: &str) -> bool {
        let tls = is_kafka_failure(error.rdkafka_error_code(), &format!("{error} {reason}"));
        if tls {
            self.record(Dependency::Kafka, &format!("{error}: {reason}"));
        }
        tls
    }

    /// `dep` worked (a query, a command, a metadata answer).
    pub fn succeeded(&self, dep: Dependency) {
        if let Some(s) = self.state.lock().get_mut(&dep) {
            s.worked_since = true;
        }
    }

    /// The last TLS failure's text while `dep` counts as failing: until it has worked since that
    /// failure and `hold` has passed since it.
    pub fn failing(&self, dep: Dependency, hold: Duration) -> Option<String> {
        let state = self.state.lock();
        let s = state.get(&dep)?;
        (!s.worked_since || s.last_failure.elapsed() < hold).then(|| s.reason.clone())
    }

    /// Sets the readiness component `<dependency>_tls` of every dependency that ever failed:
    /// while it is [`Self::failing`], Down (naming the failure), or Degraded for a dependency in
    /// `optional` (one the service works without); Up afterwards. Returns whether any is Down.
    /// Components of dependencies that never failed are not created.
    pub fn sync(&self, health: &Health, hold: Duration, optional: &[Dependency]) -> bool {
        let deps: Vec<Dependency> = self.state.lock().keys().copied().collect();
        let mut down = false;
        for dep in deps {
            let status = match self.failing(dep, hold) {
                None => ComponentStatus::Up,
                Some(reason) if optional.contains(&dep) => {
                    ComponentStatus::Degraded(format!("TLS failure: {reason}"))
                }
                Some(reason) => {
                    down = true;
                    ComponentStatus::Down(format!("TLS failure: {reason}"))
                }
            };
            health.set(dep.component(), status);
        }
        down
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafka_tls_and_sasl_failures_count_and_transport_failures_do_not() {
        use RDKafkaErrorCode as C;
        let verify = "ssl://127.0.0.1:19093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured or root CA certificates are installed (install ca-certificates package) (after 3ms in state SSL_HANDSHAKE)";
        let sasl = "sasl_ssl://127.0.0.1:19094/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 (after 310ms in state AUTH_REQ)";
        let disconnect = "ssl://127.0.0.1:9092/bootstrap: SSL handshake failed: Disconnected: connecting to a PLAINTEXT broker listener? (after 1ms in state SSL_HANDSHAKE)";
        assert!(is_kafka_failure(Some(C::SSL), verify));
        assert!(is_kafka_failure(Some(C::Authentication), sasl));
        // By code alone, whatever the text.
        assert!(is_kafka_failure(
            Some(C::SSL),
            "Broker did not provide a certificate"
        ));
        assert!(is_kafka_failure(
            Some(C::Authentication),
            "Authentication failed"
        ));
        assert!(is_kafka_failure(
            Some(C::SaslAuthenticationFailed),
            "broker said no"
        ));
        assert!(!is_kafka_failure(
            Some(C::BrokerTransportFailure),
            disconnect
        ));
        assert!(!is_kafka_failure(
            Some(C::AllBrokersDown),
            "3/3 brokers are down"
        ));
        assert!(!is_kafka_failure(
            Some(C::BrokerTransportFailure),
            "Connection refused"
        ));
        assert!(!is_kafka_failure(
            Some(C::MessageTimedOut),
            "Message timed out"
        ));
        // A code that says nothing: the text decides.
        assert!(is_kafka_failure(Some(C::Fail), verify));
        assert!(is_kafka_failure(None, sasl));
        assert!(!is_kafka_failure(None, "Local: Timed out"));
    }

    #[test]
    fn sqlx_and_redis_tls_errors_are_told_from_other_errors() {
        let unknown_ca =
            || rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        // sqlx: the TLS variant, and a handshake failure (an io::Error around rustls').
        let tls = sqlx::Error::Tls("server does not support TLS".into());
        assert!(is_tls_error(&tls));
        let handshake = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            unknown_ca(),
        ));
        assert!(is_tls_error(&handshake));
        let expired = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Expired),
        ));
        assert!(is_tls_error(&expired));
        let refused = sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into());
        assert!(!is_tls_error(&refused));
        assert!(!is_tls_error(&sqlx::Error::PoolTimedOut));
        assert!(!is_tls_error(&sqlx::Error::RowNotFound));
        // redis: its io errors keep the inner error behind an Arc (no downcast): the text.
        let r = redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            unknown_ca(),
        ));
        assert!(is_tls_error(&r), "{r}");
        let alert = redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate),
        ));
        assert!(is_tls_error(&alert), "{alert}");
        let r = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(!is_tls_error(&r), "{r}");
        let r = redis::RedisError::from((redis::ErrorKind::Io, "broken pipe"));
        assert!(!is_tls_error(&r), "{r}");
        // MySQL refusing a client without TLS.
        assert!(is_tls_text(
            "error returned from database: 3159 (HY000): Connections using insecure transport are prohibited while --require_secure_transport=ON."
        ));
        assert!(!is_tls_text(
            "error returned from database: 1045 (28000): Access denied for user 'dispatch'@'localhost'"
        ));
    }

    #[test]
    fn a_tls_failure_is_counted_and_holds_the_component_down_until_the_dependency_works_again() {
        let svc = "tls-failures-unit";
        let f = TlsFailures::new(svc, &[Dependency::Mysql, Dependency::Redis]);
        let health = Health::new();
        assert_eq!(counted(svc, Dependency::Mysql), 0);
        // Nothing failed: no component, ready.
        assert!(!f.sync(&health, Duration::ZERO, &[]));
        assert!(health.readiness().components.is_empty());

        // Not TLS: neither counted nor down.
        assert!(!f.observe(
            Dependency::Mysql,
            &sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into())
        ));
        assert!(!f.sync(&health, Duration::ZERO, &[]));
        assert_eq!(counted(svc, Dependency::Mysql), 0);

        let e = sqlx::Error::Tls("invalid peer certificate: UnknownIssuer".into());
        assert!(f.observe(Dependency::Mysql, &e));
        assert!(f.observe(Dependency::Mysql, &e));
        assert_eq!(counted(svc, Dependency::Mysql), 2);
        assert_eq!(counted(svc, Dependency::Redis), 0);
        assert!(f.sync(&health, Duration::ZERO, &[]));
        let r = health.readiness();
        assert_eq!(r.down, vec!["mysql_tls".to_string()]);
        assert!(
            matches!(&r.components["mysql_tls"], ComponentStatus::Down(why) if why.contains("UnknownIssuer")),
            "{r:?}"
        );
        // Worked since: up again (no hold).
        f.succeeded(Dependency::Mysql);
        assert!(!f.sync(&health, Duration::ZERO, &[]));
        assert!(health.is_ready());
        assert_eq!(
            health.readiness().components["mysql_tls"],
            ComponentStatus::Up
        );

        // With a hold, working again is not enough before the hold has passed since the last
        // failure (MySQL's was just now too).
        assert!(f.observe_text(Dependency::Redis, "invalid peer certificate: Expired"));
        f.succeeded(Dependency::Redis);
        let hour = Duration::from_secs(3600);
        assert!(f.sync(&health, hour, &[]));
        assert_eq!(
            health.readiness().down,
            vec!["mysql_tls".to_string(), "redis_tls".to_string()]
        );
        assert!(f.failing(Dependency::Redis, Duration::ZERO).is_none());
        assert!(!f.sync(&health, Duration::ZERO, &[]));
        // A failure after the success starts over: down until the next success.
        f.record(Dependency::Redis, "received fatal alert: BadCertificate");
        assert!(f.sync(&health, Duration::ZERO, &[]));
        f.succeeded(Dependency::Redis);
        assert!(!f.sync(&health, Duration::ZERO, &[]));
        assert_eq!(counted(svc, Dependency::Redis), 2);

        // An optional dependency's failure degrades, it does not take readiness down.
        f.record(Dependency::Redis, "invalid peer certificate: UnknownIssuer");
        assert!(!f.sync(&health, Duration::ZERO, &[Dependency::Redis]));
        let r = health.readiness();
        assert!(r.down.is_empty(), "{r:?}");
        assert!(
            matches!(&r.components["redis_tls"], ComponentStatus::Degraded(why) if why.contains("UnknownIssuer")),
            "{r:?}"
        );
    }

    #[test]
    fn a_kafka_failure_a_context_reports_reaches_its_services_tls_failures_that_hear_kafka() {
        use RDKafkaErrorCode as C;
        let svc = "tls-failures-hook-unit";
        let hears = TlsFailures::new(svc, &[Dependency::Kafka, Dependency::Mysql]);
        let deaf = TlsFailures::new(svc, &[Dependency::Mysql]);
        let other = TlsFailures::new("tls-failures-hook-other", &[Dependency::Kafka]);
        let verify =
            "ssl://127.0.0.1:19093/bootstrap: SSL handshake failed: certificate verify failed";

        // A transport failure: neither counted nor heard.
        assert!(!kafka_error(
            svc,
            &KafkaError::Global(C::BrokerTransportFailure),
            "Connection refused"
        ));
        assert!(hears.failing(Dependency::Kafka, Duration::ZERO).is_none());

        assert!(kafka_error(svc, &KafkaError::Global(C::SSL), verify));
        // Counted once, however many hear it.
        assert_eq!(counted(svc, Dependency::Kafka), 1);
        let why = hears.failing(Dependency::Kafka, Duration::ZERO);
        assert!(
            why.as_deref()
                .is_some_and(|w| w.contains("certificate verify failed")),
            "{why:?}"
        );
        // A clone hears it too (shared state); the others do not.
        assert!(
            hears
                .clone()
                .failing(Dependency::Kafka, Duration::ZERO)
                .is_some()
        );
        assert!(deaf.failing(Dependency::Kafka, Duration::ZERO).is_none());
        assert!(other.failing(Dependency::Kafka, Duration::ZERO).is_none());
        assert_eq!(counted("tls-failures-hook-other", Dependency::Kafka), 0);
        let health = Health::new();
        assert!(hears.sync(&health, Duration::ZERO, &[]));
        assert_eq!(health.readiness().down, vec!["kafka_tls".to_string()]);

        // Gone: still counted, nothing left to hear it.
        drop(hears);
        assert!(kafka_error(
            svc,
            &KafkaError::Global(C::Authentication),
            "SASL authentication error"
        ));
        assert_eq!(counted(svc, Dependency::Kafka), 2);
        assert!(
            KAFKA_LISTENERS
                .lock()
                .iter()
                .filter(|(s, _)| *s == svc)
                .all(|(_, f)| f.upgrade().is_none())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_hold_runs_on_tokios_clock() {
        let f = TlsFailures::new("tls-failures-clock-unit", &[Dependency::Mysql]);
        let hold = Duration::from_secs(60);
        f.record(Dependency::Mysql, "invalid peer certificate: Expired");
        f.succeeded(Dependency::Mysql);
        tokio::time::advance(hold - Duration::from_millis(1)).await;
        assert!(f.failing(Dependency::Mysql, hold).is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(f.failing(Dependency::Mysql, hold).is_none());
        // Another failure starts the hold over.
        f.record(Dependency::Mysql, "invalid peer certificate: Expired");
        f.succeeded(Dependency::Mysql);
        tokio::time::advance(hold / 2).await;
        assert!(f.failing(Dependency::Mysql, hold).is_some());
    }
}
