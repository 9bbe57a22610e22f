//! Runs a service binary as an operator does and checks it behaves like a CLI: `--help` and
//! `--version` answer and exit 0, `--config=PATH` and `--config PATH` both name the settings
//! file (seen through `--print-config`), `--print-config` redacts API key digests, and an
//! unknown flag stops start-up with status 2 and a message naming it.

use std::path::Path;
use std::process::{Command, Output};

/// A brokers value no default or environment has, so seeing it printed proves the file was read.
const MARKER_BROKERS: &str = "cli-check.invalid:9092";

/// Runs `bin` with `args` and no `DISPATCH_*` variables of the test's environment, pointing
/// `DISPATCH_CONFIG` at a file that does not exist: a binary that ignored its flags and went on
/// to start fails at once instead of serving on the local stack.
fn run(bin: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("DISPATCH_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("DISPATCH_CONFIG", "/nonexistent/dispatch-cli-check.toml")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Checks every promise of the module doc on binary `bin` (from `env!("CARGO_BIN_EXE_<name>")`),
/// whose `--version` must read `<name> <version>`.
///
/// # Panics
/// On the first broken promise, with the binary's output.
pub fn assert_behaves_like_a_cli(bin: &str, name: &str, version: &str) {
    let bin = Path::new(bin);

    let help = run(bin, &["--help"]);
    let out = text(&help.stdout);
    assert!(help.status.success(), "--help: {help:?}");
    for word in [
        &format!("Usage: {name}"),
        "--config <PATH>",
        "--print-config",
        "--version",
    ] {
        assert!(out.contains(word), "--help lacks {word:?}:\n{out}");
    }

    let v = run(bin, &["--version"]);
    assert!(v.status.success(), "--version: {v:?}");
    assert_eq!(text(&v.stdout).trim(), format!("{name} {version}"));

    let unknown = run(bin, &["--no-such-flag"]);
    let err = text(&unknown.stderr);
    assert_eq!(
        unknown.status.code(),
        Some(2),
        "an unknown flag: {unknown:?}"
    );
    assert!(
        err.contains("--no-such-flag"),
        "the message names the flag:\n{err}"
    );

    let dir = std::env::temp_dir().join(format!("dispatch-cli-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let file = dir.join("settings.toml");
    // Key digests in every `[auth]` field that holds one: `--print-config` must not show them.
    let digests = [
        ("auth.admin_key_sha256", "a".repeat(64)),
        ("auth.admin_keys[0].key_sha256", "b".repeat(64)),
        ("auth.api_keys[0].key_sha256", "c".repeat(64)),
    ];
    std::fs::write(
        &file,
        format!(
            "[kafka]\nbrokers = \"{MARKER_BROKERS}\"\n\n[auth]\nadmin_key_sha256 = \"{}\"\n\
             admin_keys = [{{ id = \"ops-1\", key_sha256 = \"{}\" }}]\n\
             api_keys = [{{ tenant = \"acme\", key_sha256 = \"{}\" }}]\n",
            digests[0].1, digests[1].1, digests[2].1
        ),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let path = file.to_string_lossy().into_owned();
    let joined = format!("--config={path}");
    for args in [
        vec!["--config", path.as_str(), "--print-config"],
        vec![joined.as_str(), "--print-config"],
        vec![joined.as_str(), "--print-config=json"],
    ] {
        let printed = run(bin, &args);
        let out = text(&printed.stdout);
        assert!(printed.status.success(), "{args:?}: {printed:?}");
        assert!(
            out.contains(MARKER_BROKERS),
            "{args:?} did not read the file:\n{out}"
        );
        for (field, digest) in &digests {
            assert!(
                !out.contains(digest.as_str()),
                "--print-config shows {field}:\n{out}"
            );
        }
        assert!(out.contains("ops-1"), "the admin key id is shown:\n{out}");
        if args.contains(&"--print-config=json") {
            // For tools: JSON, naming the optional keys left unset (TOML cannot).
            let v: serde_json::Value = serde_json::from_str(&out)
                .unwrap_or_else(|e| panic!("--print-config=json is not JSON ({e}):\n{out}"));
            assert_eq!(
                v.pointer("/kafka/ssl_ca_file"),
                Some(&serde_json::Value::Null),
                "{out}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
