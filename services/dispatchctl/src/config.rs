//! The optional config file: endpoints and keys, so they need not be repeated on every command.
//!
//! Looked up at `--config` / `$DISPATCHCTL_CONFIG`, else `$XDG_CONFIG_HOME/dispatchctl.toml`, else
//! `~/.config/dispatchctl.toml` (a missing default file is fine; a missing explicit one is an
//! error). Flags win over environment variables, which win over the file, which wins over the
//! defaults.
//!
//! ```toml
//! gateway = "http://127.0.0.1:50051"
//! reader = "http://127.0.0.1:50052"
//! admin = "http://127.0.0.1:50053"
//! api_key = "dev-key-acme"
//! admin_key = "dev-admin-key"
//! timeout_ms = 10000
//! # https:// addresses: the CA (system roots when unset) and, for mTLS, a client certificate
//! ca = "/etc/dispatch/ca.pem"
//! cert = "/etc/dispatch/client.pem"
//! key = "/etc/dispatch/client.key"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::CliError;
use crate::client::{Conn, ConnArgs};

/// The file's contents; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Gateway gRPC address.
    pub gateway: Option<String>,
    /// Reader gRPC address.
    pub reader: Option<String>,
    /// AdminService gRPC address.
    pub admin: Option<String>,
    /// Tenant API key.
    pub api_key: Option<String>,
    /// Admin key.
    pub admin_key: Option<String>,
    /// Per-request timeout.
    pub timeout_ms: Option<u64>,
    /// CA bundle for https:// addresses.
    pub ca: Option<PathBuf>,
    /// Client certificate (mTLS).
    pub cert: Option<PathBuf>,
    /// Client key (mTLS).
    pub key: Option<PathBuf>,
}

/// The default location, if a home or XDG directory is known.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("dispatchctl.toml"))
}

/// Reads `path`; `Ok(None)` when it does not exist and `required` is false.
///
/// # Errors
/// [`CliError::Invalid`] for an unreadable, missing (when required) or malformed file.
pub fn read(path: &Path, required: bool) -> anyhow::Result<Option<FileConfig>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(None),
        Err(e) => {
            return Err(
                CliError::Invalid(format!("cannot read config {}: {e}", path.display())).into(),
            );
        }
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| CliError::Invalid(format!("config {}: {e}", path.display())).into())
}

/// Flags/env over the file over the defaults.
///
/// # Errors
/// As [`read`].
pub fn resolve(args: ConnArgs) -> anyhow::Result<Conn> {
    let file = match &args.config {
        Some(p) => read(p, true)?,
        None => match default_path() {
            Some(p) => read(&p, false)?,
            None => None,
        },
    }
    .unwrap_or_default();
    let d = Conn::default();
    Ok(Conn {
        gateway: args.gateway.or(file.gateway).unwrap_or(d.gateway),
        reader: args.reader.or(file.reader).unwrap_or(d.reader),
        admin: args.admin.or(file.admin).unwrap_or(d.admin),
        api_key: args.api_key.or(file.api_key).unwrap_or(d.api_key),
        admin_key: args.admin_key.or(file.admin_key).unwrap_or(d.admin_key),
        timeout_ms: args.timeout_ms.or(file.timeout_ms).unwrap_or(d.timeout_ms),
        ca: args.ca.or(file.ca),
        cert: args.cert.or(file.cert),
        key: args.client_key.or(file.key),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let dir = std::env::temp_dir().join(format!("dispatchctl-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "admin = \"http://file:1\"\napi_key = \"file-key\"\ntimeout_ms = 5\n",
        )
        .expect("write");
        let c = resolve(ConnArgs {
            api_key: Some("flag-key".into()),
            config: Some(path.clone()),
            ..ConnArgs::default()
        })
        .expect("resolve");
        assert_eq!(c.admin, "http://file:1");
        assert_eq!(c.api_key, "flag-key");
        assert_eq!(c.timeout_ms, 5);
        assert_eq!(c.gateway, crate::client::DEFAULT_GATEWAY);
        std::fs::write(&path, "nope = 1\n").expect("write");
        let e = resolve(ConnArgs {
            config: Some(path),
            ..ConnArgs::default()
        })
        .expect_err("unknown key");
        assert_eq!(crate::exit_code(&e), 2);
        let e = resolve(ConnArgs {
            config: Some(dir.join("missing.toml")),
            ..ConnArgs::default()
        })
        .expect_err("missing explicit file");
        assert_eq!(crate::exit_code(&e), 2);
        let _ = std::fs::remove_dir_all(dir);
    }
}
