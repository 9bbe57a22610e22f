//! TLS shared by every service.
//!
//! - Certificate and key files are read and checked at start-up ([`read_certs`], [`read_key`]):
//!   a missing, unreadable, non-PEM, expired or not-yet-valid file stops start-up with one line
//!   naming the setting, the file and the cause.
//! - [`check_dependencies`]: with TLS or SASL configured, one connection to Kafka, MySQL and
//!   Redis each at start-up, so a certificate that does not verify or a wrong SASL password stops
//!   start-up with one line naming the setting (an unreachable dependency does not: the services
//!   degrade and their readiness says so).
//! - [`ServerTls`]: the gRPC server's rustls config. Its certificate is re-read when the files
//!   change (checked at most once a second, on handshakes), so a rotated certificate (a renewed
//!   Kubernetes secret, cert-manager) is served without a restart.

mod dependencies;

pub use dependencies::{check_at_start, check_dependencies};

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::{Stream, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::SettingsError;
use crate::settings::GrpcSettings;

/// How often the server certificate files are checked for a change (on handshakes only).
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);
/// Longest TLS handshake a gRPC server waits for.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once per listener.
const MAX_HANDSHAKES: usize = 256;

/// Makes ring the process's rustls provider (idempotent). Every rustls user in the tree is built
/// with ring; installing it explicitly keeps that so if another provider is ever compiled in.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn file_error(setting: &str, path: &Path, cause: impl std::fmt::Display) -> SettingsError {
    SettingsError(format!("{setting} ({}): {cause}", path.display()))
}

/// The PEM certificates of `path` (setting `setting`), checked: at least one, each parsable, and
/// the first (the leaf of a chain) valid now; of a CA bundle, at least one valid now.
///
/// # Errors
/// Missing or unreadable file, no certificate, not X.509, expired or not yet valid.
pub fn read_certs(
    setting: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, SettingsError> {
    let bytes = std::fs::read(path).map_err(|e| file_error(setting, path, e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(setting, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(setting, path, "no PEM certificate in the file"));
    }
    let mut first_problem = None;
    for cert in &certs {
        match validity_problem(cert) {
            Ok(None) => return Ok(certs),
            Ok(Some(problem)) => {
                first_problem.get_or_insert(problem);
            }
            Err(e) => return Err(file_error(setting, path, e)),
        }
        if !setting.contains("ca") {
            // A chain: the leaf (first) is the one that must be valid.
            break;
        }
    }
    Err(file_error(
        setting,
        path,
        first_problem.unwrap_or_else(|| "no valid certificate".into()),
    ))
}

/// `None` when `cert` is valid now, else why not.
fn validity_problem(cert: &CertificateDer<'_>) -> Result<Option<String>, String> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default();
    let v = x.validity();
    Ok(if now > v.not_after.timestamp() {
        Some(format!(
            "certificate {} expired at {}",
            x.subject(),
            v.not_after
        ))
    } else if now < v.not_before.timestamp() {
        Some(format!(
            "certificate {} is not valid before {}",
            x.subject(),
            v.not_before
        ))
    } else {
        None
    })
}

/// The PEM private key of `path` (setting `setting`).
///
/// # Errors
/// Missing or unreadable file, or no PEM private key in it.
pub fn read_key(setting: &str, path: &Path) -> Result<PrivateKeyDer<'static>, SettingsError> {
    let bytes = std::fs::read(path).map_err(|e| file_error(setting, path, e))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| file_error(setting, path, format!("no PEM private key: {e}")))
}

/// The gRPC server's TLS: rustls with a certificate re-read when its files change, and client
/// certificates required (mTLS) when `grpc.tls_client_ca_path` is set.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// `None` when `tls_cert_path`/`tls_key_path` are unset. The files are read now, so a bad
    /// path or certificate fails start-up rather than the first handshake.
    ///
    /// # Errors
    /// Only one of cert/key set; a file missing, unreadable, not PEM, expired; a key that does
    /// not match the certificate. The message names the setting.
    pub fn from_settings(s: &GrpcSettings) -> Result<Option<Self>, SettingsError> {
        let (cert, key) = match (&s.tls_cert_path, &s.tls_key_path) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            _ => {
                return Err(SettingsError(
                    "grpc.tls_cert_path and grpc.tls_key_path must be set together".into(),
                ));
            }
        };
        install_crypto_provider();
        let resolver = Arc::new(ReloadingCert::new(cert, key)?);
        let builder = rustls::ServerConfig::builder();
        let mut config = match &s.tls_client_ca_path {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in read_certs("grpc.tls_client_ca_path", ca)? {
                    roots
                        .add(c)
                        .map_err(|e| file_error("grpc.tls_client_ca_path", ca, e))?;
                }
                let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .map_err(|e| file_error("grpc.tls_client_ca_path", ca, e))?;
                builder
                    .with_client_cert_verifier(verifier)
                    .with_cert_resolver(resolver)
            }
            None => builder.with_no_client_auth().with_cert_resolver(resolver),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Some(Self {
            config: Arc::new(config),
        }))
    }

    /// TLS connections over `tcp` (the listener's accepted connections): handshakes run
    /// concurrently (a slow client does not hold the others up) with a time limit; a failed
    /// handshake is logged at debug and dropped.
    pub fn incoming(
        &self,
        tcp: tonic::transport::server::TcpIncoming,
    ) -> Pin<Box<dyn Stream<Item = std::io::Result<TlsStream<TcpStream>>> + Send>> {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&self.config));
        tcp.map(move |conn| {
            let acceptor = acceptor.clone();
            async move {
                let conn = match conn {
                    Ok(c) => c,
                    Err(e) => return Some(Err(e)),
                };
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn)).await {
                    Ok(Ok(tls)) => Some(Ok(tls)),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "grpc tls handshake failed");
                        None
                    }
                    Err(_) => {
                        tracing::debug!("grpc tls handshake timed out");
                        None
                    }
                }
            }
        })
        .buffer_unordered(MAX_HANDSHAKES)
        .filter_map(futures::future::ready)
        .boxed()
    }
}

/// The server certificate, re-read when the files' modification times or sizes change.
#[derive(Debug)]
struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    state: parking_lot::Mutex<CertState>,
}

#[derive(Debug)]
struct CertState {
    stamp: Option<Stamp>,
    checked: Instant,
    current: Arc<CertifiedKey>,
}

type Stamp = [(SystemTime, u64); 2];

fn stamp(cert: &Path, key: &Path) -> Option<Stamp> {
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    Some([one(cert)?, one(key)?])
}

fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, SettingsError> {
    let certs = read_certs("grpc.tls_cert_path", cert)?;
    let private = read_key("grpc.tls_key_path", key)?;
    CertifiedKey::from_der(certs, private, &rustls::crypto::ring::default_provider()).map_err(|e| {
        file_error(
            "grpc.tls_key_path",
            key,
            format!("{e} (with grpc.tls_cert_path)"),
        )
    })
}

impl ReloadingCert {
    fn new(cert: PathBuf, key: PathBuf) -> Result<Self, SettingsError> {
        let current = Arc::new(load_certified_key(&cert, &key)?);
        let state = CertState {
            stamp: stamp(&cert, &key),
            checked: Instant::now(),
            current,
        };
        Ok(Self {
            cert,
            key,
            state: parking_lot::Mutex::new(state),
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut st = self.state.lock();
        if st.checked.elapsed() >= RELOAD_CHECK {
            st.checked = Instant::now();
            let now = stamp(&self.cert, &self.key);
            if now.is_some() && now != st.stamp {
                st.stamp = now;
                match load_certified_key(&self.cert, &self.key) {
                    Ok(k) => {
                        st.current = Arc::new(k);
                        tracing::info!(cert = %self.cert.display(), "grpc tls certificate reloaded");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "grpc tls certificate not reloaded; serving the previous one");
                    }
                }
            }
        }
        Arc::clone(&st.current)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn certificate_files_are_checked_naming_the_setting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = read_certs("kafka.ssl_ca_file", &dir.path().join("nope.pem"))
            .expect_err("missing")
            .to_string();
        assert!(
            err.contains("kafka.ssl_ca_file") && err.contains("nope.pem"),
            "{err}"
        );
        let junk = write(dir.path(), "junk.pem", "not a certificate\n");
        let err = read_certs("database.ssl_ca", &junk)
            .expect_err("junk")
            .to_string();
        assert!(
            err.contains("database.ssl_ca") && err.contains("no PEM certificate"),
            "{err}"
        );
        let err = read_key("grpc.tls_key_path", &junk)
            .expect_err("no key")
            .to_string();
        assert!(err.contains("grpc.tls_key_path"), "{err}");
    }
}
