//! Exit codes scripts rely on: 2 invalid input, 3 not found, 4 auth, 5 unreachable; with clear
//! messages.

use crate::harness::{KEY_ACME, KEY_ADMIN, Services, Stack, ctl};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_messages_scripts_can_rely_on() -> anyhow::Result<()> {
    // 5: nothing listens on port 1.
    let down = ctl(&["--admin", "http://127.0.0.1:1", "stats"]).await?;
    assert_eq!(down.code, 5, "{down:?}");
    assert!(
        down.stderr.contains("cannot connect to http://127.0.0.1:1"),
        "{}",
        down.stderr
    );
    let down = ctl(&["--reader", "http://127.0.0.1:1", "get", "x"]).await?;
    assert_eq!(down.code, 5, "{down:?}");

    let stack = Stack::start(Services::ALL).await?;
    let admin = stack.admin.clone();

    // 4: a wrong admin key, and a tenant key used as an admin key.
    for key in ["wrong-key", KEY_ACME] {
        let out = ctl(&["--admin", &admin, "--admin-key", key, "stats"]).await?;
        assert_eq!(out.code, 4, "{out:?}");
        assert!(
            out.stderr.contains("authentication failed"),
            "{}",
            out.stderr
        );
    }
    // The admin key may come from --api-key alone.
    let out = ctl(&["--admin", &admin, "--api-key", KEY_ADMIN, "stats"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    // ...or from the config file, with flags still winning.
    let cfg = std::env::temp_dir().join(format!("dispatchctl-{}.toml", stack.env.id));
    std::fs::write(
        &cfg,
        format!("admin = \"{admin}\"\nadmin_key = \"{KEY_ADMIN}\"\n"),
    )?;
    let cfg_s = cfg.to_string_lossy().into_owned();
    let out = ctl(&["--config", &cfg_s, "stats"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    let out = ctl(&["--config", &cfg_s, "--admin-key", "wrong-key", "stats"]).await?;
    assert_eq!(out.code, 4, "{out:?}");
    let _ = std::fs::remove_file(&cfg);

    // 3: not found.
    let missing = dispatch_core::TaskId::new().to_string();
    let out = stack.ctl(&["dlq", "show", &missing]).await?;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("no dead letter"), "{}", out.stderr);
    let out = stack.ctl(&["get", &missing]).await?;
    assert_eq!(out.code, 3, "{out:?}");

    // 2: invalid input, caught locally, by clap, or by the server.
    let invalid: [&[&str]; 10] = [
        &["dlq", "show", "not-a-task-id"],
        &["dlq", "list", "--since", "yesterday"],
        &["dlq", "list", "--tenant", "bad tenant!"],
        &["dlq", "list", "--error-class", "nope"],
        &["dlq", "redrive"],
        &["pause"],
        &["pause", "--priority", "urgent"],
        &["submit", "--key", "k", "--type", "bad type!"],
        &[
            "submit",
            "--key",
            "k",
            "--type",
            "noop",
            "--timeout",
            "soon",
        ],
        &["submit", "--key", "k", "--type", "noop", "--timeout", "2h"],
    ];
    for args in invalid {
        let out = stack.ctl(args).await?;
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(!out.stderr.trim().is_empty(), "{args:?} explains itself");
    }
    let out = stack.ctl(&["dlq", "redrive"]).await?;
    assert!(
        out.stderr.contains("refusing to redrive every dead letter"),
        "{}",
        out.stderr
    );
    // A per-task timeout above the gateway's maximum (1 h): the server names the field and limit.
    let out = stack
        .ctl(&["submit", "--key", "k", "--type", "noop", "--timeout", "2h"])
        .await?;
    assert!(
        out.stderr.contains("task.timeout_ms") && out.stderr.contains("3600000"),
        "{}",
        out.stderr
    );
    let out = stack
        .ctl(&["submit", "--key", "k", "--type", "noop", "--timeout", "30s"])
        .await?;
    assert_eq!(out.code, 0, "{out:?}");
    let out = ctl(&["--config", "/nonexistent/dispatchctl.toml", "stats"]).await?;
    assert_eq!(out.code, 2, "{out:?}");
    stack.stop().await
}
