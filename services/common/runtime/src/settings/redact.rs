//! `--print-config`: settings rendered as TOML (or JSON, for tools) with their secrets redacted.

use serde::Serialize;

use super::SettingsError;

/// Renders settings as TOML with secrets redacted (`--print-config`): URL passwords and any key
/// whose name contains `secret`, `password`, `token`, `key_hash`, `api_key` or `key_sha256`
/// (API key digests: `auth.api_keys[].key_sha256`, `auth.admin_key_sha256`,
/// `auth.admin_keys[].key_sha256`; a digest of a short key can be brute-forced).
///
/// # Errors
/// The settings do not serialize to TOML.
pub fn render_redacted<T: Serialize>(settings: &T) -> Result<String, SettingsError> {
    let mut value = toml::Value::try_from(settings).map_err(|e| SettingsError(e.to_string()))?;
    redact_toml(&mut value, "");
    toml::to_string_pretty(&value).map_err(|e| SettingsError(e.to_string()))
}

/// As [`render_redacted`], as JSON (`--print-config=json`), for tools: unlike TOML, JSON shows an
/// unset optional key (`null`), so the output names every key the settings accept.
///
/// # Errors
/// The settings do not serialize to JSON.
pub fn render_redacted_json<T: Serialize>(settings: &T) -> Result<String, SettingsError> {
    let mut value = serde_json::to_value(settings).map_err(|e| SettingsError(e.to_string()))?;
    redact_json(&mut value, "");
    serde_json::to_string_pretty(&value).map_err(|e| SettingsError(e.to_string()))
}

fn redact_toml(v: &mut toml::Value, key: &str) {
    match v {
        toml::Value::Table(t) => {
            for (k, child) in t.iter_mut() {
                redact_toml(child, k);
            }
        }
        toml::Value::Array(a) => a.iter_mut().for_each(|c| redact_toml(c, key)),
        toml::Value::String(s) => redact_string(s, key),
        _ => {}
    }
}

fn redact_json(v: &mut serde_json::Value, key: &str) {
    match v {
        serde_json::Value::Object(o) => {
            for (k, child) in o.iter_mut() {
                redact_json(child, k);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|c| redact_json(c, key)),
        serde_json::Value::String(s) => redact_string(s, key),
        _ => {}
    }
}

/// The rule both renderings apply to a string value under `key`.
fn redact_string(s: &mut String, key: &str) {
    let k = key.to_ascii_lowercase();
    if [
        "secret",
        "password",
        "token",
        "key_hash",
        "api_key",
        "key_sha256",
    ]
    .iter()
    .any(|w| k.contains(w))
    {
        *s = "<redacted>".into();
    } else if let Some((scheme, rest)) = s.split_once("://")
        && let Some((creds, host)) = rest.rsplit_once('@')
    {
        let user = creds.split(':').next().unwrap_or_default();
        *s = format!("{scheme}://{user}:<redacted>@{host}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::DbSettings;

    #[test]
    fn secrets_are_redacted() {
        use crate::server::auth::{AdminKeyEntry, ApiKeyEntry, AuthSettings, hash_key};
        #[derive(Serialize)]
        struct S {
            database: DbSettings,
            auth: AuthSettings,
        }
        // The real `[auth]` section, with every field that holds a key digest.
        let (tenant, legacy, named) = (hash_key("t"), hash_key("l"), hash_key("n"));
        let settings = S {
            database: DbSettings::default(),
            auth: AuthSettings {
                api_keys: vec![ApiKeyEntry {
                    tenant: "acme".into(),
                    key_sha256: tenant.clone(),
                }],
                admin_key_sha256: Some(legacy.clone()),
                admin_keys: vec![AdminKeyEntry {
                    id: "ops-2026".into(),
                    key_sha256: named.clone(),
                }],
                ..AuthSettings::default()
            },
        };
        for out in [
            render_redacted(&settings).expect("toml"),
            render_redacted_json(&settings).expect("json"),
        ] {
            assert!(!out.contains("dispatch:dispatch@"), "{out}");
            assert!(
                out.contains("mysql://dispatch:<redacted>@127.0.0.1:3306/dispatch"),
                "{out}"
            );
            for (field, digest) in [
                ("auth.api_keys[0].key_sha256", &tenant),
                ("auth.admin_key_sha256", &legacy),
                ("auth.admin_keys[0].key_sha256", &named),
            ] {
                assert!(!out.contains(digest.as_str()), "{field} printed:\n{out}");
            }
            let json_form = out.starts_with('{');
            let redacted = if json_form {
                "\"admin_key_sha256\": \"<redacted>\""
            } else {
                "admin_key_sha256 = \"<redacted>\""
            };
            assert!(out.contains(redacted), "{out}");
            // What is not secret stays readable.
            assert!(out.contains("acme") && out.contains("ops-2026"), "{out}");
        }
        // JSON names the optional keys TOML leaves out.
        let json = render_redacted_json(&settings).expect("json");
        assert!(json.contains("\"ssl_ca\": null"), "{json}");
    }
}
