//! API-key authentication of gRPC callers: `[auth]` settings, tenant keys and admin keys with ids,
//! digests compared in constant time, and the `mode = "none"` guard (loopback only unless
//! explicitly allowed; a gauge and a periodic warning while it runs).
//!
//! (Over 400 lines because of its tests: the code ends where `mod tests` starts, near line 360.)

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use dispatch_core::Tenant;
use prometheus::IntGauge;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::Status;

use crate::metrics::register;

/// `[auth]`: who may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// `api_keys` (default) or `none` (local development only: every caller is `dev_tenant`
    /// and every caller is admin).
    pub mode: String,
    /// With `mode = "none"`, serve on listeners that are not loopback-only anyway. Without it,
    /// `mode = "none"` refuses to start unless every listener is bound to a loopback address.
    pub allow_unauthenticated: bool,
    /// Tenant keys: the SHA-256 (hex) of each key, never the key itself.
    pub api_keys: Vec<ApiKeyEntry>,
    /// SHA-256 (hex) of one admin key (AdminService), separate from tenant keys. Kept for
    /// compatibility: it acts as the admin key with id [`LEGACY_ADMIN_KEY_ID`]; prefer
    /// `admin_keys`.
    pub admin_key_sha256: Option<String>,
    /// Admin keys with ids, so a new key can be added before the old one is removed (rotation
    /// with overlap); admin actions are logged with the id of the key that made them.
    pub admin_keys: Vec<AdminKeyEntry>,
    /// The tenant of every caller when `mode = "none"`.
    pub dev_tenant: String,
}

/// One tenant API key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    /// The tenant this key acts for.
    pub tenant: String,
    /// Hex SHA-256 of the key.
    pub key_sha256: String,
}

/// One admin key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminKeyEntry {
    /// Names the key in logs (`key_id`): 1..=64 of `[A-Za-z0-9._-]`, unique.
    pub id: String,
    /// Hex SHA-256 of the key.
    pub key_sha256: String,
}

/// The key id of `auth.admin_key_sha256` (the single admin key of older configurations).
pub const LEGACY_ADMIN_KEY_ID: &str = "admin_key_sha256";

/// The key id admin actions carry when `mode = "none"` (no key was checked).
pub const UNAUTHENTICATED_KEY_ID: &str = "unauthenticated";

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            mode: "api_keys".into(),
            allow_unauthenticated: false,
            api_keys: Vec::new(),
            admin_key_sha256: None,
            admin_keys: Vec::new(),
            dev_tenant: "dev".into(),
        }
    }
}

/// Hex SHA-256 of an API key (what settings store).
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Who called AdminService.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminCaller {
    /// The id of the admin key presented ([`UNAUTHENTICATED_KEY_ID`] with `mode = "none"`).
    pub key_id: String,
}

/// 1 while a service runs with `auth.mode = "none"` (the number of live authenticators in that
/// mode: one per service process).
static UNAUTHENTICATED: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "dispatch_auth_unauthenticated",
            "1 while the service runs with auth.mode = \"none\" (every caller is a tenant and admin).",
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Registers `dispatch_auth_unauthenticated` (0 until an authenticator runs without keys), so
/// every service exports it and an alert on `== 1` sees the healthy value too.
pub(crate) fn init_metrics() {
    LazyLock::force(&UNAUTHENTICATED);
}

/// How often a service without authentication says so.
pub const UNAUTHENTICATED_WARNING_INTERVAL: std::time::Duration =
    std::time::Duration::from_secs(60);

/// Maps bearer tokens to tenants and admin key ids. Digests are compared in constant time.
#[derive(Debug, Clone)]
pub struct Authenticator {
    none_tenant: Option<Tenant>,
    tenant_keys: Vec<([u8; 32], Tenant)>,
    admin_keys: Vec<([u8; 32], String)>,
    /// With `mode = "none"` accepted by [`Self::for_listeners`]: holds the gauge up while any
    /// clone lives; the warning loop stops when it is gone.
    unauthenticated: Option<Arc<UnauthenticatedGuard>>,
}

/// Counts one live unauthenticated authenticator in `dispatch_auth_unauthenticated`.
#[derive(Debug)]
struct UnauthenticatedGuard;

impl UnauthenticatedGuard {
    fn new() -> Self {
        UNAUTHENTICATED.inc();
        Self
    }
}

impl Drop for UnauthenticatedGuard {
    fn drop(&mut self) {
        UNAUTHENTICATED.dec();
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The value of the entry whose digest equals `d`. Every entry is compared, each in constant
/// time, so the time taken does not depend on how much of a digest matched.
fn lookup<'a, T>(entries: &'a [([u8; 32], T)], d: &[u8; 32]) -> Option<&'a T> {
    let mut found = None;
    for (h, v) in entries {
        if bool::from(h.ct_eq(d)) {
            found = Some(v);
        }
    }
    found
}

fn parse_digest(h: &str, setting: &str) -> Result<[u8; 32], crate::SettingsError> {
    let bad = || crate::SettingsError(format!("{setting} must be 64 hex characters"));
    if h.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(h, &mut out).map_err(|_| bad())?;
    Ok(out)
}

impl Authenticator {
    /// Builds from settings.
    ///
    /// # Errors
    /// An unknown mode, an invalid tenant name, a malformed hash, a bad or repeated admin key
    /// id, or a digest that is both a tenant key and an admin key, naming the setting.
    pub fn from_settings(s: &AuthSettings) -> Result<Self, crate::SettingsError> {
        let bad = |m: String| crate::SettingsError(m);
        let none_tenant = match s.mode.as_str() {
            "api_keys" => None,
            "none" => Some(
                Tenant::parse(&s.dev_tenant).map_err(|e| bad(format!("auth.dev_tenant {e}")))?,
            ),
            other => {
                return Err(bad(format!(
                    "auth.mode must be \"api_keys\" or \"none\", not {other:?}"
                )));
            }
        };
        let mut tenant_keys = Vec::with_capacity(s.api_keys.len());
        for (i, e) in s.api_keys.iter().enumerate() {
            let d = parse_digest(&e.key_sha256, &format!("auth.api_keys[{i}].key_sha256"))?;
            let t = Tenant::parse(&e.tenant)
                .map_err(|err| bad(format!("auth.api_keys[{i}].tenant {err}")))?;
            // MySQL compares tenant columns without letter case: two such tenants would see,
            // cancel and purge each other's rows.
            if let Some((_, other)) = tenant_keys.iter().find(|(_, o): &&([u8; 32], Tenant)| {
                o.as_str() != t.as_str() && o.as_str().eq_ignore_ascii_case(t.as_str())
            }) {
                return Err(bad(format!(
                    "auth.api_keys[{i}].tenant {:?} differs from tenant {:?} only in letter case; \
                     the store compares tenant names without case, so they would share their \
                     tasks: rename one",
                    t.as_str(),
                    other.as_str()
                )));
            }
            tenant_keys.push((d, t));
        }
        let mut admin_keys: Vec<([u8; 32], String)> = Vec::new();
        if let Some(h) = &s.admin_key_sha256 {
            admin_keys.push((
                parse_digest(h, "auth.admin_key_sha256")?,
                LEGACY_ADMIN_KEY_ID.to_owned(),
            ));
        }
        for (i, e) in s.admin_keys.iter().enumerate() {
            let valid_id = !e.id.is_empty()
                && e.id.len() <= 64
                && e.id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !valid_id {
                return Err(bad(format!(
                    "auth.admin_keys[{i}].id must be 1 to 64 of [A-Za-z0-9._-], not {:?}",
                    e.id
                )));
            }
            if admin_keys.iter().any(|(_, id)| *id == e.id) {
                return Err(bad(format!(
                    "auth.admin_keys[{i}].id {:?} is used twice",
                    e.id
                )));
            }
            let d = parse_digest(&e.key_sha256, &format!("auth.admin_keys[{i}].key_sha256"))?;
            admin_keys.push((d, e.id.clone()));
        }
        for (d, id) in &admin_keys {
            if lookup(&tenant_keys, d).is_some() {
                return Err(bad(format!(
                    "admin key {id:?} is also a tenant key in auth.api_keys: a tenant key must \
                     never be an admin key"
                )));
            }
        }
        Ok(Self {
            none_tenant,
            tenant_keys,
            admin_keys,
            unauthenticated: None,
        })
    }

    /// [`Self::from_settings`] for a service whose listeners are `listeners` (setting name,
    /// address): `mode = "none"` is refused unless every listener is loopback-only or
    /// `auth.allow_unauthenticated = true`; when it is accepted, the gauge
    /// `dispatch_auth_unauthenticated` is 1 and a warning is logged at once and every
    /// [`UNAUTHENTICATED_WARNING_INTERVAL`] while the authenticator lives.
    ///
    /// # Errors
    /// What [`Self::from_settings`] refuses, and an unauthenticated exposed listener, naming it.
    pub fn for_listeners(
        s: &AuthSettings,
        listeners: &[(&str, SocketAddr)],
    ) -> Result<Self, crate::SettingsError> {
        Self::for_listeners_every(s, listeners, UNAUTHENTICATED_WARNING_INTERVAL)
    }

    /// [`Self::for_listeners`] for a service's two listeners, `grpc.listen` and `admin.listen`.
    ///
    /// # Errors
    /// As [`Self::for_listeners`].
    pub fn for_service(
        s: &AuthSettings,
        grpc: &crate::settings::GrpcSettings,
        admin: &crate::settings::AdminSettings,
    ) -> Result<Self, crate::SettingsError> {
        Self::for_listeners(
            s,
            &[("grpc.listen", grpc.listen), ("admin.listen", admin.listen)],
        )
    }

    /// [`Self::for_listeners`] with the warning every `every` (tests).
    ///
    /// # Errors
    /// As [`Self::for_listeners`].
    pub fn for_listeners_every(
        s: &AuthSettings,
        listeners: &[(&str, SocketAddr)],
        every: std::time::Duration,
    ) -> Result<Self, crate::SettingsError> {
        let mut a = Self::from_settings(s)?;
        LazyLock::force(&UNAUTHENTICATED);
        if a.none_tenant.is_none() {
            return Ok(a);
        }
        let exposed: Vec<String> = listeners
            .iter()
            .filter(|(_, addr)| !addr.ip().is_loopback())
            .map(|(name, addr)| format!("{name} = {addr}"))
            .collect();
        if !exposed.is_empty() && !s.allow_unauthenticated {
            return Err(crate::SettingsError(format!(
                "auth.mode = \"none\" refuses to serve without authentication on {} (not \
                 loopback): bind every listener to 127.0.0.1 or ::1, use auth.mode = \
                 \"api_keys\", or set auth.allow_unauthenticated = true",
                exposed.join(", ")
            )));
        }
        let guard = Arc::new(UnauthenticatedGuard::new());
        let alive = Arc::downgrade(&guard);
        a.unauthenticated = Some(guard);
        let listening: Vec<String> = listeners
            .iter()
            .map(|(name, addr)| format!("{name} = {addr}"))
            .collect();
        let warn = async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if alive.strong_count() == 0 {
                    break;
                }
                tracing::warn!(
                    listeners = %listening.join(", "),
                    "auth.mode = \"none\": every caller is a tenant and an admin, without a key"
                );
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(warn);
            }
            Err(_) => tracing::warn!(
                "auth.mode = \"none\": every caller is a tenant and an admin, without a key"
            ),
        }
        Ok(a)
    }

    fn bearer(md: &tonic::metadata::MetadataMap) -> Result<&str, Status> {
        let raw = md.get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing authorization metadata (expected `Bearer <api key>`)")
        })?;
        let raw = raw
            .to_str()
            .map_err(|_| Status::unauthenticated("authorization metadata is not ASCII"))?;
        raw.strip_prefix("Bearer ")
            .or_else(|| raw.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <api key>`"))
    }

    /// The tenant of the caller.
    ///
    /// # Errors
    /// UNAUTHENTICATED for a missing, malformed or unknown key (an admin key is not a tenant
    /// key).
    pub fn tenant(&self, md: &tonic::metadata::MetadataMap) -> Result<Tenant, Status> {
        if let Some(t) = &self.none_tenant {
            return Ok(t.clone());
        }
        let d = digest(Self::bearer(md)?);
        lookup(&self.tenant_keys, &d)
            .cloned()
            .ok_or_else(|| Status::unauthenticated("unknown api key"))
    }

    /// Checks for an admin key; with `mode = "none"` every caller is admin.
    ///
    /// # Errors
    /// UNAUTHENTICATED for a missing, malformed or unknown key; PERMISSION_DENIED for a tenant
    /// key (it is a known caller, but not an admin).
    pub fn admin(&self, md: &tonic::metadata::MetadataMap) -> Result<AdminCaller, Status> {
        if self.none_tenant.is_some() {
            return Ok(AdminCaller {
                key_id: UNAUTHENTICATED_KEY_ID.to_owned(),
            });
        }
        let d = digest(Self::bearer(md)?);
        if let Some(id) = lookup(&self.admin_keys, &d) {
            return Ok(AdminCaller { key_id: id.clone() });
        }
        if lookup(&self.tenant_keys, &d).is_some() {
            return Err(Status::permission_denied(
                "a tenant api key cannot call AdminService; use an admin key",
            ));
        }
        Err(Status::unauthenticated("admin api key required"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn md(v: &str) -> tonic::metadata::MetadataMap {
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert("authorization", v.parse().expect("ascii"));
        m
    }

    fn auth() -> Authenticator {
        Authenticator::from_settings(&AuthSettings {
            api_keys: vec![ApiKeyEntry {
                tenant: "acme".into(),
                key_sha256: hash_key("k1"),
            }],
            admin_key_sha256: Some(hash_key("root")),
            ..AuthSettings::default()
        })
        .expect("valid")
    }

    #[test]
    fn keys_map_to_tenants() {
        let a = auth();
        assert_eq!(a.tenant(&md("Bearer k1")).expect("ok").as_str(), "acme");
        assert_eq!(
            a.tenant(&md("Bearer nope")).expect_err("bad").code(),
            Code::Unauthenticated
        );
        assert_eq!(
            a.tenant(&md("k1")).expect_err("no scheme").code(),
            Code::Unauthenticated
        );
        assert_eq!(
            a.tenant(&tonic::metadata::MetadataMap::new())
                .expect_err("missing")
                .code(),
            Code::Unauthenticated
        );
        assert_eq!(
            a.admin(&md("Bearer root")).expect("admin").key_id,
            LEGACY_ADMIN_KEY_ID
        );
        assert_eq!(
            a.admin(&md("Bearer k1")).expect_err("tenant key").code(),
            Code::PermissionDenied,
            "a tenant key is a known caller, but not an admin"
        );
        assert_eq!(
            a.admin(&md("Bearer nope")).expect_err("unknown").code(),
            Code::Unauthenticated
        );
        assert_eq!(
            a.tenant(&md("Bearer root")).expect_err("admin key").code(),
            Code::Unauthenticated,
            "the admin key is not a tenant key"
        );
    }

    #[test]
    fn admin_keys_with_ids_overlap_during_rotation() {
        let s = |keys: &[(&str, &str)]| AuthSettings {
            api_keys: vec![ApiKeyEntry {
                tenant: "acme".into(),
                key_sha256: hash_key("k1"),
            }],
            admin_keys: keys
                .iter()
                .map(|(id, k)| AdminKeyEntry {
                    id: (*id).into(),
                    key_sha256: hash_key(k),
                })
                .collect(),
            ..AuthSettings::default()
        };
        // Old and new key both work while the rotation overlaps, each under its own id.
        let a = Authenticator::from_settings(&s(&[("ops-2025", "old"), ("ops-2026", "new")]))
            .expect("valid");
        assert_eq!(a.admin(&md("Bearer old")).expect("old").key_id, "ops-2025");
        assert_eq!(a.admin(&md("Bearer new")).expect("new").key_id, "ops-2026");
        // Once the old key is removed it is refused.
        let a = Authenticator::from_settings(&s(&[("ops-2026", "new")])).expect("valid");
        assert_eq!(
            a.admin(&md("Bearer old")).expect_err("removed").code(),
            Code::Unauthenticated
        );
        // The legacy single key still works next to named keys.
        let mut legacy = s(&[("ops-2026", "new")]);
        legacy.admin_key_sha256 = Some(hash_key("root"));
        let a = Authenticator::from_settings(&legacy).expect("valid");
        assert_eq!(
            a.admin(&md("Bearer root")).expect("legacy").key_id,
            LEGACY_ADMIN_KEY_ID
        );
        for (bad, want) in [
            (s(&[("a", "x"), ("a", "y")]), "used twice"),
            (s(&[("has space", "x")]), "auth.admin_keys[0].id"),
            (s(&[("", "x")]), "auth.admin_keys[0].id"),
            (s(&[("tenant", "k1")]), "also a tenant key"),
        ] {
            let err = Authenticator::from_settings(&bad)
                .expect_err(want)
                .to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn digest_lookup_compares_every_entry() {
        let entries: Vec<([u8; 32], u32)> = (0..5).map(|i| (digest(&format!("k{i}")), i)).collect();
        for i in 0..5 {
            assert_eq!(lookup(&entries, &digest(&format!("k{i}"))), Some(&i));
        }
        assert_eq!(lookup(&entries, &digest("k5")), None);
        // A digest differing only in its last byte does not match.
        let mut near = entries[2].0;
        near[31] ^= 1;
        assert_eq!(lookup(&entries, &near), None);
    }

    fn none_mode(allow: bool) -> AuthSettings {
        AuthSettings {
            mode: "none".into(),
            allow_unauthenticated: allow,
            ..AuthSettings::default()
        }
    }

    /// Serializes the tests that set the process-wide gauge.
    static GAUGE: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn mode_none_refuses_listeners_beyond_loopback() {
        let _g = GAUGE.lock();
        let lo: SocketAddr = "127.0.0.1:50051".parse().expect("addr");
        let lo6: SocketAddr = "[::1]:9601".parse().expect("addr");
        let any: SocketAddr = "0.0.0.0:9601".parse().expect("addr");
        assert!(
            Authenticator::for_listeners(
                &none_mode(false),
                &[("grpc.listen", lo), ("admin.listen", lo6)]
            )
            .is_ok(),
            "loopback only"
        );
        let err = Authenticator::for_listeners(
            &none_mode(false),
            &[("grpc.listen", lo), ("admin.listen", any)],
        )
        .expect_err("exposed")
        .to_string();
        assert!(err.contains("admin.listen = 0.0.0.0:9601"), "{err}");
        assert!(err.contains("auth.allow_unauthenticated"), "{err}");
        assert!(
            Authenticator::for_listeners(&none_mode(true), &[("grpc.listen", any)]).is_ok(),
            "explicitly allowed"
        );
        // With keys, any address is fine.
        assert!(
            Authenticator::for_listeners(&AuthSettings::default(), &[("grpc.listen", any)]).is_ok()
        );
    }

    #[test]
    fn mode_none_warns_periodically_and_exports_a_gauge() {
        use std::sync::Mutex;
        let _g = GAUGE.lock();
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, d: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("lock").extend_from_slice(d);
                Ok(d.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let any: SocketAddr = "0.0.0.0:0".parse().expect("addr");
        tracing::subscriber::with_default(subscriber, || {
            rt.block_on(async {
                let before = UNAUTHENTICATED.get();
                let a = Authenticator::for_listeners_every(
                    &none_mode(true),
                    &[("grpc.listen", any)],
                    std::time::Duration::from_millis(40),
                )
                .expect("allowed");
                assert_eq!(UNAUTHENTICATED.get(), before + 1);
                Authenticator::for_listeners(&AuthSettings::default(), &[]).expect("keys");
                assert_eq!(UNAUTHENTICATED.get(), before + 1, "keys do not touch it");
                tokio::time::sleep(std::time::Duration::from_millis(150)).await;
                drop(a);
                assert_eq!(UNAUTHENTICATED.get(), before);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            });
        });
        let text = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf8");
        let warnings = text.matches("auth.mode = \"none\"").count();
        assert!((3..=5).contains(&warnings), "{warnings} warnings:\n{text}");
        assert!(text.contains("0.0.0.0:0"), "{text}");
    }

    #[test]
    fn settings_are_validated() {
        let bad = AuthSettings {
            mode: "open".into(),
            ..AuthSettings::default()
        };
        assert!(
            Authenticator::from_settings(&bad)
                .expect_err("mode")
                .to_string()
                .contains("auth.mode")
        );
        let bad = AuthSettings {
            api_keys: vec![ApiKeyEntry {
                tenant: "acme".into(),
                key_sha256: "plain-key".into(),
            }],
            ..AuthSettings::default()
        };
        assert!(
            Authenticator::from_settings(&bad)
                .expect_err("hash")
                .to_string()
                .contains("key_sha256")
        );
        let entry = |tenant: &str, key: &str| ApiKeyEntry {
            tenant: tenant.into(),
            key_sha256: hash_key(key),
        };
        let cased = AuthSettings {
            api_keys: vec![entry("acme", "k1"), entry("ACME", "k2")],
            ..AuthSettings::default()
        };
        let err = Authenticator::from_settings(&cased)
            .expect_err("tenants differing in case")
            .to_string();
        assert!(err.contains("auth.api_keys[1].tenant \"ACME\""), "{err}");
        // One tenant under several keys (a rotation) is fine.
        let rotated = AuthSettings {
            api_keys: vec![entry("acme", "k1"), entry("acme", "k2")],
            ..AuthSettings::default()
        };
        assert!(Authenticator::from_settings(&rotated).is_ok());
        let none = AuthSettings {
            mode: "none".into(),
            ..AuthSettings::default()
        };
        let a = Authenticator::from_settings(&none).expect("none");
        assert_eq!(
            a.tenant(&tonic::metadata::MetadataMap::new())
                .expect("dev")
                .as_str(),
            "dev"
        );
    }
}
