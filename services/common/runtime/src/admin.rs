//! The admin HTTP server: `/metrics`, `/healthz` (alive) and `/readyz` (dependencies), and, when
//! `admin.profiling` is on, CPU profiles at `/debug/pprof/profile` behind the admin key.
//!
//! Every request has a deadline ([`REQUEST_TIMEOUT`]; a profile its own length plus that), so a
//! scrape that hangs on a wedged handler is answered 503 instead of holding a connection.
//!
//! Over 400 lines because of its tests (from near line 369) and the CPU profiling endpoint (its
//! query, the admin key check and the capture: about 100 lines); the profiling endpoint would move
//! out first.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::server::auth::{AuthSettings, Authenticator};
use crate::settings::AdminSettings;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The state of one dependency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "lowercase")]
pub enum ComponentStatus {
    /// Working.
    Up,
    /// Failing, but the service still answers correctly (e.g. a cache tier skipped).
    Degraded(String),
    /// Failing and required: the service is not ready.
    Down(String),
}

/// Named dependency states, shared by the service and the admin server.
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<RwLock<BTreeMap<String, ComponentStatus>>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        }
    }
}

/// The `/readyz` body.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Readiness {
    /// `ready`, `degraded` or `not_ready`.
    pub status: &'static str,
    /// Every component and its state.
    pub components: BTreeMap<String, ComponentStatus>,
    /// Names of components that are down (what makes the service not ready).
    pub down: Vec<String>,
}

impl Health {
    /// An empty registry (ready).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a component's state; logs transitions.
    pub fn set(&self, name: &str, status: ComponentStatus) {
        let prev = self.inner.write().insert(name.to_owned(), status.clone());
        if prev.as_ref() != Some(&status) {
            match &status {
                ComponentStatus::Up => tracing::info!(component = name, "component up"),
                ComponentStatus::Degraded(r) => {
                    tracing::warn!(component = name, reason = %r, "component degraded")
                }
                ComponentStatus::Down(r) => {
                    tracing::warn!(component = name, reason = %r, "component down")
                }
            }
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// Shorthand: `Up` if `ok`, else `Down(reason)`.
    pub fn set_up_or_down(&self, name: &str, result: Result<(), String>) {
        self.set(
            name,
            result.map_or_else(ComponentStatus::Down, |()| ComponentStatus::Up),
        );
    }

    /// The current readiness.
    pub fn readiness(&self) -> Readiness {
        let components = self.inner.read().clone();
        let down: Vec<String> = components
            .iter()
            .filter(|(_, s)| matches!(s, ComponentStatus::Down(_)))
            .map(|(n, _)| n.clone())
            .collect();
        let degraded = components
            .values()
            .any(|s| matches!(s, ComponentStatus::Degraded(_)));
        let status = if !down.is_empty() {
            "not_ready"
        } else if degraded {
            "degraded"
        } else {
            "ready"
        };
        Readiness {
            status,
            components,
            down,
        }
    }

    /// Whether no component is down.
    pub fn is_ready(&self) -> bool {
        self.readiness().down.is_empty()
    }

    /// A receiver that changes whenever a component's state changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::metrics::render(),
    )
}

async fn healthz() -> impl IntoResponse {
    (
        StatusCode::OK,
        Json(serde_json::json!({ "status": "alive" })),
    )
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    let r = health.readiness();
    let code = if r.down.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(r))
}

/// How long `/metrics`, `/healthz` and `/readyz` may take before the server answers 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest profile `/debug/pprof/profile?seconds=N` takes.
pub const MAX_PROFILE_SECONDS: u64 = 60;

/// Sampling frequency of a CPU profile (Hz): not a multiple of common timer frequencies.
const PROFILE_HZ: i32 = 99;

/// Answers 503 when the wrapped handler takes longer than `limit`.
async fn deadline(limit: Duration, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if let Ok(r) = tokio::time::timeout(limit, next.run(req)).await {
        r
    } else {
        tracing::warn!(
            path,
            timeout_ms = limit.as_millis() as u64,
            "admin request timed out"
        );
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{path} did not answer within {limit:?}\n"),
        )
            .into_response()
    }
}

/// What a profile request may ask for.
#[derive(Debug, Deserialize)]
struct ProfileQuery {
    /// 1..=[`MAX_PROFILE_SECONDS`]; 10 when absent.
    seconds: Option<u64>,
    /// `pb` (pprof protobuf, default) or `svg` (flame graph).
    format: Option<String>,
}

#[derive(Clone)]
struct Profiler {
    auth: Arc<Authenticator>,
    /// One profile at a time (the sampler is process-wide).
    busy: Arc<tokio::sync::Mutex<()>>,
}

fn plain(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, format!("{}\n", msg.into())).into_response()
}

async fn profile(
    State(p): State<Profiler>,
    headers: HeaderMap,
    Query(q): Query<ProfileQuery>,
) -> Response {
    let caller = match p
        .auth
        .admin(&tonic::metadata::MetadataMap::from_headers(headers))
    {
        Ok(c) => c,
        Err(s) if s.code() == tonic::Code::PermissionDenied => {
            return plain(StatusCode::FORBIDDEN, s.message());
        }
        Err(s) => return plain(StatusCode::UNAUTHORIZED, s.message()),
    };
    let seconds = q.seconds.unwrap_or(10);
    if !(1..=MAX_PROFILE_SECONDS).contains(&seconds) {
        return plain(
            StatusCode::BAD_REQUEST,
            format!("seconds must be 1..={MAX_PROFILE_SECONDS}, got {seconds}"),
        );
    }
    let svg = match q.format.as_deref() {
        None | Some("pb" | "proto" | "pprof") => false,
        Some("svg" | "flamegraph") => true,
        Some(other) => {
            return plain(
                StatusCode::BAD_REQUEST,
                format!("format must be pb or svg, got {other:?}"),
            );
        }
    };
    let Ok(_busy) = p.busy.try_lock() else {
        return plain(StatusCode::CONFLICT, "another profile is being taken");
    };
    tracing::info!(target: "dispatch_audit", key_id = %caller.key_id, seconds, svg, "cpu profile");
    let taken =
        tokio::task::spawn_blocking(move || take_profile(Duration::from_secs(seconds), svg))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
    match taken {
        Ok(body) if svg => ([(header::CONTENT_TYPE, "image/svg+xml")], body).into_response(),
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"profile.pb\"",
                ),
            ],
            body,
        )
            .into_response(),
        Err(e) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("profiling failed: {e}"),
        ),
    }
}

/// Samples every thread for `length` (blocking) and renders the profile.
fn take_profile(length: Duration, svg: bool) -> Result<Vec<u8>, String> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(PROFILE_HZ)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| e.to_string())?;
    std::thread::sleep(length);
    let report = guard.report().build().map_err(|e| e.to_string())?;
    drop(guard);
    let mut out = Vec::new();
    if svg {
        report.flamegraph(&mut out).map_err(|e| e.to_string())?;
    } else {
        use pprof::protos::Message as _;
        report
            .pprof()
            .map_err(|e| e.to_string())?
            .encode(&mut out)
            .map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// A bound admin server, not yet serving.
pub struct AdminServer {
    listener: TcpListener,
    router: Router,
}

impl AdminServer {
    /// Binds `addr` (port 0 picks one).
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn bind(addr: SocketAddr, health: Health) -> std::io::Result<Self> {
        let router = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(health)
            .layer(middleware::from_fn(|req, next| {
                deadline(REQUEST_TIMEOUT, req, next)
            }));
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
            router,
        })
    }

    /// Adds `/debug/pprof/profile` when `admin.profiling` is on (otherwise that path stays 404),
    /// callable with an admin key of `auth` (`Authorization: Bearer <key>`): 401 without a
    /// valid key, 403 for a tenant key.
    ///
    /// # Errors
    /// The `[auth]` settings are invalid.
    pub fn with_profiling(
        mut self,
        admin: &AdminSettings,
        auth: &AuthSettings,
    ) -> Result<Self, crate::SettingsError> {
        if !admin.profiling {
            return Ok(self);
        }
        let profiler = Profiler {
            auth: Arc::new(Authenticator::from_settings(auth)?),
            busy: Arc::default(),
        };
        let limit = Duration::from_secs(MAX_PROFILE_SECONDS) + REQUEST_TIMEOUT;
        self.router = self.router.merge(
            Router::new()
                .route("/debug/pprof/profile", get(profile))
                .with_state(profiler)
                .layer(middleware::from_fn(move |req, next| {
                    deadline(limit, req, next)
                })),
        );
        Ok(self)
    }

    /// The bound address.
    ///
    /// # Errors
    /// The socket has no local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` is cancelled.
    pub async fn serve(self, stop: CancellationToken) {
        let res = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "admin server failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::auth::{ApiKeyEntry, hash_key};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const ADMIN: &str = "profile-admin-key-0123456789";
    const TENANT: &str = "profile-tenant-key-0123456789";

    fn auth() -> AuthSettings {
        AuthSettings {
            api_keys: vec![ApiKeyEntry {
                tenant: "acme".into(),
                key_sha256: hash_key(TENANT),
            }],
            admin_key_sha256: Some(hash_key(ADMIN)),
            ..AuthSettings::default()
        }
    }

    /// Serves an admin server (profiling on or off) until the returned token is cancelled.
    async fn serve(profiling: bool) -> (SocketAddr, CancellationToken) {
        let admin = AdminSettings {
            profiling,
            ..AdminSettings::default()
        };
        let server = AdminServer::bind(admin.listen, Health::new())
            .await
            .expect("bind")
            .with_profiling(&admin, &auth())
            .expect("auth settings");
        let addr = server.local_addr().expect("addr");
        let stop = CancellationToken::new();
        tokio::spawn(server.serve(stop.clone()));
        (addr, stop)
    }

    /// One HTTP/1.1 GET: (status, body).
    async fn get(addr: SocketAddr, path: &str, key: Option<&str>) -> (u16, Vec<u8>) {
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let auth = key
            .map(|k| format!("Authorization: Bearer {k}\r\n"))
            .unwrap_or_default();
        c.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut raw = Vec::new();
        c.read_to_end(&mut raw).await.expect("read");
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a header block");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status line");
        (status, raw[split + 4..].to_vec())
    }

    /// Keeps a core busy (so a short profile has samples) until dropped.
    struct Spin(Arc<std::sync::atomic::AtomicBool>);
    impl Spin {
        fn start() -> Self {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let s = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !s.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            });
            Self(stop)
        }
    }
    impl Drop for Spin {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn an_admin_gets_a_cpu_profile_others_are_refused() {
        let (addr, stop) = serve(true).await;
        let path = "/debug/pprof/profile?seconds=1";
        assert_eq!(get(addr, path, None).await.0, 401);
        assert_eq!(get(addr, path, Some("not-a-key-0123456789")).await.0, 401);
        assert_eq!(get(addr, path, Some(TENANT)).await.0, 403);
        assert_eq!(
            get(addr, "/debug/pprof/profile?seconds=0", Some(ADMIN))
                .await
                .0,
            400
        );
        assert_eq!(
            get(
                addr,
                "/debug/pprof/profile?seconds=1&format=txt",
                Some(ADMIN)
            )
            .await
            .0,
            400
        );

        let spin = Spin::start();
        let (code, body) = get(addr, path, Some(ADMIN)).await;
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        use pprof::protos::Message as _;
        let p = pprof::protos::Profile::decode(body.as_slice()).expect("a pprof protobuf");
        assert!(!p.sample.is_empty(), "a busy second has samples");
        assert!(p.string_table.len() > 1, "with symbol names");
        let (code, svg) = get(addr, &format!("{path}&format=svg"), Some(ADMIN)).await;
        drop(spin);
        assert_eq!(code, 200);
        let svg = String::from_utf8_lossy(&svg);
        assert!(svg.contains("<svg"), "{}", &svg[..svg.len().min(200)]);
        // The rest of the admin port is unchanged and needs no key.
        assert_eq!(get(addr, "/healthz", None).await.0, 200);
        stop.cancel();
    }

    #[tokio::test]
    async fn profiling_off_is_not_found_even_for_an_admin() {
        let (addr, stop) = serve(false).await;
        assert_eq!(
            get(addr, "/debug/pprof/profile?seconds=1", Some(ADMIN))
                .await
                .0,
            404
        );
        assert_eq!(get(addr, "/metrics", None).await.0, 200);
        stop.cancel();
    }

    #[tokio::test]
    async fn a_request_past_its_deadline_is_answered_503() {
        let router = Router::new()
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .route("/fast", axum::routing::get(|| async { "ok" }))
            .layer(middleware::from_fn(|req, next| {
                deadline(Duration::from_millis(200), req, next)
            }));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let server = AdminServer { listener, router };
        let addr = server.local_addr().expect("addr");
        let stop = CancellationToken::new();
        tokio::spawn(server.serve(stop.clone()));
        let started = std::time::Instant::now();
        assert_eq!(get(addr, "/slow", None).await.0, 503);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(get(addr, "/fast", None).await.0, 200);
        stop.cancel();
    }

    #[test]
    fn readiness_reflects_components() {
        let h = Health::new();
        assert_eq!(h.readiness().status, "ready");
        h.set("kafka", ComponentStatus::Up);
        h.set("redis", ComponentStatus::Degraded("timeout".into()));
        assert_eq!(h.readiness().status, "degraded");
        assert!(h.is_ready());
        h.set("mysql", ComponentStatus::Down("refused".into()));
        let r = h.readiness();
        assert_eq!(r.status, "not_ready");
        assert_eq!(r.down, vec!["mysql".to_string()]);
        let body = serde_json::to_value(&r).expect("json");
        assert_eq!(body["components"]["mysql"]["status"], "down");
        assert_eq!(body["components"]["mysql"]["reason"], "refused");
    }
}
