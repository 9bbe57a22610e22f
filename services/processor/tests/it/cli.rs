//! The `dispatch-processor` binary's command line: --help, --version, both --config spellings,
//! --print-config, and an unknown flag that stops start-up; --print-task-types.

#[test]
fn the_binary_behaves_like_a_cli() {
    dispatch_testkit::cli::assert_behaves_like_a_cli(
        env!("CARGO_BIN_EXE_dispatch-processor"),
        "dispatch-processor",
        env!("CARGO_PKG_VERSION"),
    );
}

/// `--print-task-types`: the built-ins plus the types the config file and the environment map to a
/// built-in kind (not `custom`, which only code registers), without connecting to anything.
#[test]
fn print_task_types_lists_the_registry_of_the_effective_settings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("processor.toml");
    std::fs::write(
        &config,
        "[handlers.types.\"email.send\"]\nkind = \"noop\"\n\
         [handlers.types.mine]\nkind = \"custom\"\n",
    )
    .expect("write config");
    let run = |format: &str| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dispatch-processor"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("DISPATCH_") {
                cmd.env_remove(k);
            }
        }
        let out = cmd
            .env("DISPATCH_HANDLERS__TYPES__REPORT__KIND", "simulate")
            .arg(format!("--config={}", config.display()))
            .arg(format)
            .output()
            .expect("run dispatch-processor");
        assert!(out.status.success(), "{format}: {out:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let want = ["email.send", "noop", "report", "simulate"];
    assert_eq!(run("--print-task-types").lines().collect::<Vec<_>>(), want);
    let json: Vec<String> =
        serde_json::from_str(&run("--print-task-types=json")).expect("a JSON array");
    assert_eq!(json, want);
}
