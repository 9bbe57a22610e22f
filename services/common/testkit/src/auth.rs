//! The keys every test stack uses, and requests that carry them.
//!
//! Two tenants (`acme`, `globex`) and two admin keys with ids, both accepted at once as during a
//! rotation. [`auth`] is the `[auth]` section that accepts them; [`authed`] and [`with_key`] put
//! a key on a request; [`bad_fields`] reads the fields an INVALID_ARGUMENT names.

use dispatch_runtime::server::auth::{AdminKeyEntry, ApiKeyEntry, AuthSettings, hash_key};

/// API key of tenant `acme`.
pub const KEY_ACME: &str = "test-acme-key-7f3a91c4d2";
/// API key of tenant `globex`.
pub const KEY_GLOBEX: &str = "test-globex-key-b85e02aa61";
/// The admin key (AdminService only; not a tenant key), id [`KEY_ADMIN_ID`].
pub const KEY_ADMIN: &str = "test-admin-key-4c19d7e03b";
/// The id of [`KEY_ADMIN`] (what admin actions are logged with).
pub const KEY_ADMIN_ID: &str = "ops-current";
/// A second admin key, id [`KEY_ADMIN_NEXT_ID`]: both work at once, as during a rotation.
pub const KEY_ADMIN_NEXT: &str = "test-admin-next-key-91d3b6f2a7";
/// The id of [`KEY_ADMIN_NEXT`].
pub const KEY_ADMIN_NEXT_ID: &str = "ops-next";

/// The `[auth]` section of every service a test starts: the `acme` and `globex` tenant keys and
/// both admin keys.
pub fn auth() -> AuthSettings {
    AuthSettings {
        api_keys: vec![
            ApiKeyEntry {
                tenant: "acme".into(),
                key_sha256: hash_key(KEY_ACME),
            },
            ApiKeyEntry {
                tenant: "globex".into(),
                key_sha256: hash_key(KEY_GLOBEX),
            },
        ],
        admin_keys: vec![
            AdminKeyEntry {
                id: KEY_ADMIN_ID.into(),
                key_sha256: hash_key(KEY_ADMIN),
            },
            AdminKeyEntry {
                id: KEY_ADMIN_NEXT_ID.into(),
                key_sha256: hash_key(KEY_ADMIN_NEXT),
            },
        ],
        ..AuthSettings::default()
    }
}

/// `msg` with `authorization: Bearer <key>`.
pub fn authed<T>(msg: T, key: &str) -> tonic::Request<T> {
    with_key(msg, Some(key))
}

/// `msg` with `authorization: Bearer <key>` when `key` is given, without it otherwise.
pub fn with_key<T>(msg: T, key: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(Ok(v)) = key.map(|k| format!("Bearer {k}").parse()) {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// `msg` with the admin key ([`KEY_ADMIN`]).
pub fn admin<T>(msg: T) -> tonic::Request<T> {
    authed(msg, KEY_ADMIN)
}

/// The field names of a status's BadRequest details (empty when it has none).
pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt as _;
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}
