//! The `http` handler: POSTs the payload to the endpoint configured for the task type.
//!
//! 2xx is success (the body becomes the result), 429, 5xx, timeouts and connection errors are
//! retryable, any other status is permanent. Each endpoint host has a circuit breaker (failsafe:
//! consecutive failures open it with exponential backoff; an open breaker fails attempts as
//! retryable without calling) and an optional rate limit (governor), shared by every task type
//! that targets the host. Breaker state is exported as `dispatch_circuit_breaker_open{breaker="http:<host>"}`
//! (`dispatch_runtime::breaker`).

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::Envelope;
use dispatch_runtime::breaker::{Breaker, BreakerSettings};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;

use super::{Handler, HandlerContext, HandlerError, Outcome};
use crate::settings::{HttpEndpointSettings, HttpHostSettings};

/// Largest result stored (the `result` column's size).
const MAX_RESULT_BYTES: usize = dispatch_store::tasks::RESULT_MAX_BYTES;

/// Protection of one host.
struct Host {
    breaker: Breaker,
    limiter: Option<DefaultDirectRateLimiter>,
}

/// Per-host breakers and rate limiters, shared by every `http` handler.
#[derive(Clone)]
pub struct Hosts {
    settings: HttpHostSettings,
    by_host: Arc<Mutex<HashMap<String, Arc<Host>>>>,
}

impl Hosts {
    /// No hosts yet.
    pub fn new(settings: HttpHostSettings) -> Self {
        Self {
            settings,
            by_host: Arc::default(),
        }
    }

    fn get(&self, host: &str) -> Arc<Host> {
        let mut map = self.by_host.lock();
        map.entry(host.to_owned())
            .or_insert_with(|| {
                let s = &self.settings;
                let breaker = Breaker::new(
                    "processor",
                    format!("http:{host}"),
                    BreakerSettings::from_ms(
                        s.breaker_failures,
                        s.breaker_open_ms,
                        s.breaker_max_open_ms,
                    ),
                );
                let limiter = NonZeroU32::new(s.rate_per_second).map(|rate| {
                    let burst = NonZeroU32::new(s.burst).unwrap_or(rate);
                    RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
                });
                Arc::new(Host { breaker, limiter })
            })
            .clone()
    }

    /// `http:<host>` -> `open` / `closed`.
    pub fn states(&self) -> BTreeMap<String, String> {
        self.by_host
            .lock()
            .iter()
            .map(|(h, s)| {
                let st = if s.breaker.is_open() {
                    "open"
                } else {
                    "closed"
                };
                (format!("http:{h}"), st.to_string())
            })
            .collect()
    }
}

/// POSTs payloads to one endpoint.
pub struct HttpHandler {
    client: reqwest::Client,
    url: reqwest::Url,
    host: String,
    hosts: Hosts,
}

impl HttpHandler {
    /// A handler for `endpoint`.
    ///
    /// # Errors
    /// An invalid URL or a client that cannot be built.
    pub fn new(endpoint: &HttpEndpointSettings, hosts: Hosts) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(&endpoint.url)
            .map_err(|e| anyhow::anyhow!("invalid handler url {}: {e}", endpoint.url))?;
        let host = format!(
            "{}:{}",
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or_default()
        );
        let mut client = reqwest::Client::builder()
            .timeout(Duration::from_millis(endpoint.timeout_ms))
            .use_rustls_tls();
        if let Some(ca) = &endpoint.ca_file {
            let setting = format!("ca_file of the http handler for {}", endpoint.url);
            dispatch_runtime::tls::read_certs(&setting, ca)?;
            let pem = std::fs::read(ca)
                .map_err(|e| anyhow::anyhow!("{setting} ({}): {e}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| anyhow::anyhow!("{setting} ({}): {e}", ca.display()))?
            {
                client = client.add_root_certificate(cert);
            }
        }
        let client = client.build()?;
        Ok(Self {
            client,
            url,
            host,
            hosts,
        })
    }

    async fn call(&self, ctx: &HandlerContext, task: &Envelope) -> Result<Outcome, HandlerError> {
        let req = self
            .client
            .post(self.url.clone())
            .header("content-type", "application/octet-stream")
            .header("idempotency-key", task.task_id.to_string())
            .header("x-dispatch-task-id", task.task_id.to_string())
            .header("x-dispatch-attempt", ctx.attempt.to_string())
            .body(task.payload.clone())
            .send();
        let resp = tokio::select! {
            r = req => r,
            () = ctx.cancel.cancelled() => return Err(HandlerError::Retryable("cancelled".into())),
        };
        let resp = resp.map_err(|e| {
            HandlerError::Retryable(if e.is_timeout() {
                "endpoint timed out".to_string()
            } else {
                format!("endpoint unreachable: {e}")
            })
        })?;
        let status = resp.status();
        if status.is_success() {
            let body = resp
                .bytes()
                .await
                .map_err(|e| HandlerError::Retryable(format!("reading response: {e}")))?;
            let result =
                (!body.is_empty()).then(|| body[..body.len().min(MAX_RESULT_BYTES)].to_vec());
            return Ok(Outcome { result });
        }
        let msg = format!("endpoint answered {status}");
        if status.as_u16() == 429 || status.is_server_error() {
            Err(HandlerError::Retryable(msg))
        } else {
            Err(HandlerError::Permanent(msg))
        }
    }
}

#[async_trait]
impl Handler for HttpHandler {
    async fn handle(&self, ctx: HandlerContext, task: &Envelope) -> Result<Outcome, HandlerError> {
        let host = self.hosts.get(&self.host);
        if !host.breaker.permits() {
            return Err(HandlerError::Retryable(format!(
                "circuit breaker open for {}",
                self.host
            )));
        }
        if let Some(l) = &host.limiter {
            tokio::select! {
                () = l.until_ready() => {}
                () = ctx.cancel.cancelled() => return Err(HandlerError::Retryable("cancelled".into())),
            }
        }
        let r = self.call(&ctx, task).await;
        match &r {
            // A 4xx says the host is healthy; only retryable failures count against it.
            Ok(_) | Err(HandlerError::Permanent(_)) => host.breaker.success(),
            Err(HandlerError::Retryable(_)) if ctx.cancel.is_cancelled() => {}
            Err(HandlerError::Retryable(_)) => host.breaker.failure(),
        }
        r
    }
}

#[cfg(test)]
mod tls_tests {

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An HTTPS server on loopback answering every request `200 ok`, with a certificate for
    /// localhost from a CA of its own; returns its port and the CA's PEM.
    async fn https_server() -> (u16, String) {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("cert");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("der"),
            )
            .expect("server config");
        let port = dispatch_testkit::tls::tls_listener(config, |mut tls| async move {
            let mut buf = vec![0_u8; 64 * 1024];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = tls
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await;
            let _ = tls.shutdown().await;
        })
        .await;
        (port, ca_cert.pem())
    }

    fn handler(port: u16, ca_file: Option<std::path::PathBuf>) -> anyhow::Result<HttpHandler> {
        HttpHandler::new(
            &HttpEndpointSettings {
                url: format!("https://localhost:{port}/hook"),
                timeout_ms: 5_000,
                ca_file,
            },
            Hosts::new(HttpHostSettings::default()),
        )
    }

    #[tokio::test]
    async fn https_endpoints_verify_against_the_configured_ca() {
        let (port, ca) = https_server().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca).expect("write");

        let h = handler(port, Some(ca_path)).expect("handler");
        let resp = h.client.post(h.url.clone()).body("x").send().await;
        let resp = resp.expect("https with the configured CA");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.expect("body"), "ok");

        // The system roots alone do not know the server's CA.
        let h = handler(port, None).expect("handler");
        let err = h
            .client
            .post(h.url.clone())
            .send()
            .await
            .expect_err("unknown CA");
        assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");

        // A missing CA file stops building the handler, naming the file.
        let err = handler(port, Some(dir.path().join("nope.pem")))
            .err()
            .expect("missing CA file");
        assert!(err.to_string().contains("nope.pem"), "{err}");
    }
}
