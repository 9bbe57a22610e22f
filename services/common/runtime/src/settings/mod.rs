//! Layered, typed settings.
//!
//! Order (later wins): `T::default()` < the TOML file named by `DISPATCH_CONFIG` (or passed in) <
//! environment variables `DISPATCH_<SECTION>__<KEY>` (e.g. `DISPATCH_KAFKA__BROKERS`,
//! `DISPATCH_DATABASE__MAX_CONNECTIONS`). Every settings struct uses `deny_unknown_fields`, so a
//! typo in a file or an env var fails start-up with a message naming the key.
//!
//! - this module: the loader ([`load`], [`load_from`]) and its errors;
//! - [`sections`]: the sections every service shares (`[kafka]`, `[redis]`, `[telemetry]`,
//!   `[admin]`, `[grpc]`, `[shutdown]`, `[health]`; `[database]` is the store's [`DbSettings`]),
//!   re-exported here;
//! - [`redact`]: the rendering `--print-config` prints, secrets redacted ([`render_redacted`]).

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub mod redact;
pub mod sections;

pub use dispatch_store::DbSettings;
pub use redact::render_redacted;
pub use sections::{
    AdminSettings, GrpcSettings, HealthSettings, KafkaSettings, RedisSettings, ShutdownSettings,
    TelemetrySettings,
};

/// A settings problem, with the offending key and where it came from.
#[derive(Debug, thiserror::Error)]
#[error("invalid settings: {0}")]
pub struct SettingsError(pub String);

/// Loads `T` from its defaults, the optional file and the environment.
///
/// # Errors
/// Unknown keys, wrong types, an unreadable file; the message names the key and its source.
pub fn load<T>(file: Option<&Path>) -> Result<T, SettingsError>
where
    T: DeserializeOwned + Serialize + Default,
{
    load_from(file, std::env::vars())
}

/// [`load`] with an explicit environment (for tests).
///
/// # Errors
/// As [`load`].
pub fn load_from<T>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, SettingsError>
where
    T: DeserializeOwned + Serialize + Default,
{
    let env: Vec<(String, String)> = env.into_iter().collect();
    let file: Option<PathBuf> = file.map(Path::to_path_buf).or_else(|| {
        env.iter()
            .find(|(k, _)| k == "DISPATCH_CONFIG")
            .map(|(_, v)| PathBuf::from(v))
    });
    let mut fig = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = &file {
        if !path.exists() {
            return Err(SettingsError(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        fig = fig.merge(Toml::file_exact(path));
    }
    // Only DISPATCH_<SECTION>__<KEY> variables are settings; other DISPATCH_* variables (such as
    // DISPATCH_CONFIG or test harness variables) are not keys and are ignored.
    let vars: Vec<(String, String)> = env
        .into_iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix("DISPATCH_")?;
            rest.contains("__").then(|| (rest.to_owned(), v))
        })
        .collect();
    // Figment's own Env provider reads the process environment; building the dict ourselves lets
    // tests pass an explicit environment.
    let env_dict = toml_table_from_env(&vars)?;
    if !env_dict.is_empty() {
        fig = fig.merge(Serialized::defaults(env_dict));
    }
    fig.extract::<T>().map_err(|e| SettingsError(describe(e)))
}

/// Turns `KAFKA__BROKERS=a` into `{ kafka: { brokers: "a" } }`, parsing each value as a TOML
/// scalar/array when possible (so `8`, `true`, `[1, 2]` get their types) and as a string otherwise.
fn toml_table_from_env(vars: &[(String, String)]) -> Result<figment::value::Dict, SettingsError> {
    use figment::value::{Dict, Value};
    let mut root = Dict::new();
    for (key, raw) in vars {
        let path: Vec<String> = key.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.iter().any(String::is_empty) {
            return Err(SettingsError(format!(
                "environment variable DISPATCH_{key} has an empty key segment"
            )));
        }
        let value: Value = raw
            .parse::<Value>()
            .ok()
            .filter(|v| !matches!(v, Value::String(..)))
            .unwrap_or_else(|| Value::from(raw.clone()));
        let mut dict = &mut root;
        for seg in &path[..path.len() - 1] {
            let entry = dict
                .entry(seg.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            match entry {
                Value::Dict(_, d) => dict = d,
                _ => {
                    return Err(SettingsError(format!(
                        "DISPATCH_{key}: {seg} is not a section"
                    )));
                }
            }
        }
        dict.insert(path[path.len() - 1].clone(), value);
    }
    Ok(root)
}

fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let path = e.path.join(".");
            let kind = e.kind.to_string();
            if path.is_empty() {
                kind
            } else {
                format!("{kind} (at `{path}`)")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct S {
        kafka: KafkaSettings,
        admin: AdminSettings,
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_overrides_file_overrides_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[kafka]\nbrokers = \"file:9092\"\npartitions = 3\n").expect("write");
        let s: S =
            load_from(Some(&path), env(&[("DISPATCH_KAFKA__PARTITIONS", "12")])).expect("load");
        assert_eq!(s.kafka.brokers, "file:9092");
        assert_eq!(s.kafka.partitions, 12);
        assert_eq!(s.kafka.linger_ms, KafkaSettings::default().linger_ms);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = load_from::<S>(None, env(&[("DISPATCH_KAFKA__BROKRES", "x")])).expect_err("typo");
        assert!(err.to_string().contains("brokres"), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[nope]\nx = 1\n").expect("write");
        let err = load_from::<S>(Some(&path), env(&[])).expect_err("unknown section");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn wrong_types_and_missing_files_are_reported() {
        let err =
            load_from::<S>(None, env(&[("DISPATCH_KAFKA__PARTITIONS", "many")])).expect_err("type");
        assert!(err.to_string().contains("partitions"), "{err}");
        let err = load_from::<S>(Some(Path::new("/nonexistent.toml")), env(&[])).expect_err("file");
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn non_setting_dispatch_vars_are_ignored() {
        let s: S = load_from(
            None,
            env(&[
                ("DISPATCH_TEST_KAFKA", "x"),
                ("DISPATCH_CONFIG_UNUSED", "y"),
            ]),
        )
        .expect("load");
        assert_eq!(s, S::default());
    }
}
