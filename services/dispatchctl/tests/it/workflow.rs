//! `dispatchctl workflow` against a gateway, a reader and a processor: submit from a file and
//! from standard input, a repeated submit, get until it finished (table and JSON), cancel; bad
//! documents exit 2 naming the JSON path or the server's field, an unknown workflow exits 3.

use std::time::Duration;

use dispatch_testkit::eventually;

use crate::harness::{ECHO_TYPE, Services, Stack, ctl};

/// A diamond of echo tasks: a; b and c after a (c runs even if a fails); d after b and c.
fn diamond(idempotency_key: &str) -> String {
    let task = |n: &str| format!(r#"{{"key": "wf-{n}", "type": "{ECHO_TYPE}", "payload": "{n}"}}"#);
    format!(
        r#"{{"idempotency_key": "{idempotency_key}", "nodes": [
            {{"name": "a", "task": {a}}},
            {{"name": "b", "task": {b}, "depends_on": [{{"name": "a"}}]}},
            {{"name": "c", "task": {c}, "depends_on": [{{"name": "a", "on_failure": "run"}}]}},
            {{"name": "d", "task": {d}, "depends_on": [{{"name": "b"}}, {{"name": "c", "on_failure": "cancel"}}]}}
        ]}}"#,
        a = task("a"),
        b = task("b"),
        c = task("c"),
        d = task("d"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_from_the_command_line() -> anyhow::Result<()> {
    let stack = Stack::start(Services::ALL).await?;
    let dir = std::env::temp_dir().join(format!("dispatchctl-wf-{}", stack.env.id));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("diamond.json");
    std::fs::write(&file, diamond("ctl-wf-1"))?;
    let path = file.to_string_lossy().into_owned();

    let out = stack
        .ctl(&["-o", "json", "workflow", "submit", "--file", &path])
        .await?;
    assert_eq!(out.code, 0, "{out:?}");
    let sub = out.json()?;
    assert_eq!(sub["duplicate"], false);
    let names: Vec<&str> = sub["nodes"]
        .as_array()
        .map(|n| n.iter().filter_map(|n| n["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["a", "b", "c", "d"]);
    let id = sub["workflow_id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        id,
        dispatch_core::TaskId::workflow_from_idempotency_key("acme", "ctl-wf-1").to_string()
    );

    // The same document again, from standard input: the same workflow, marked duplicate.
    let again = stack
        .ctl_stdin(&["workflow", "submit", "--file", "-"], &diamond("ctl-wf-1"))
        .await?;
    assert_eq!(again.code, 0, "{again:?}");
    assert!(
        again
            .stdout
            .starts_with(&format!("workflow {id} (duplicate)\n")),
        "{}",
        again.stdout
    );
    assert!(again.stdout.contains("NODE") && again.stdout.contains("TASK ID"));

    // The processor runs it; `get` shows every node.
    let got = eventually("the workflow succeeds", Duration::from_secs(60), || async {
        let out = stack
            .ctl(&["-o", "json", "workflow", "get", &id])
            .await
            .ok()?;
        let v = out.json().ok()?;
        (v["state"] == "succeeded").then_some(v)
    })
    .await?;
    assert_eq!(got["idempotency_key"], "ctl-wf-1");
    assert_eq!(got["nodes"][3]["name"], "d");
    assert_eq!(got["nodes"][3]["state"], "succeeded");
    assert_eq!(
        got["nodes"][2]["depends_on"],
        serde_json::json!([{"name": "a", "on_failure": "run"}])
    );
    let table = stack.ctl(&["workflow", "get", &id]).await?;
    assert_eq!(table.code, 0, "{table:?}");
    assert!(
        table
            .stdout
            .starts_with(&format!("workflow {id}  succeeded  created ")),
        "{}",
        table.stdout
    );
    for cell in ["DEPENDS ON", "a (run)", "b, c", "succeeded"] {
        assert!(table.stdout.contains(cell), "{cell}: {}", table.stdout);
    }

    // Finished: nothing left to cancel.
    let out = stack
        .ctl(&["-o", "json", "workflow", "cancel", &id, "--reason", "late"])
        .await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()?["accepted"], false);

    // A node held by a paused type: the cancel is accepted and recorded.
    let out = stack.ctl(&["pause", "--type", "held.type"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    let held = r#"{"nodes": [{"name": "h", "task": {"key": "h", "type": "held.type"}},
        {"name": "after", "task": {"key": "h", "type": "echo"}, "depends_on": [{"name": "h"}]}]}"#;
    let out = stack
        .ctl_stdin(&["-o", "json", "workflow", "submit", "--file", "-"], held)
        .await?;
    assert_eq!(out.code, 0, "{out:?}");
    let held_id = out.json()?["workflow_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let out = stack
        .ctl(&[
            "-o",
            "json",
            "workflow",
            "cancel",
            &held_id,
            "--reason",
            "not today",
        ])
        .await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()?["accepted"], true);
    let out = stack
        .ctl(&["-o", "json", "workflow", "get", &held_id])
        .await?;
    assert_eq!(out.json()?["cancel_requested"], true, "{out:?}");

    // Unknown: 3. Not an id: 2, before anything is sent (the endpoints are unreachable here).
    let missing = dispatch_core::TaskId::new().to_string();
    for action in ["get", "cancel"] {
        let out = stack.ctl(&["workflow", action, &missing]).await?;
        assert_eq!(out.code, 3, "{action}: {out:?}");
        let out = ctl(&[
            "--gateway",
            "http://127.0.0.1:1",
            "--reader",
            "http://127.0.0.1:1",
            "workflow",
            action,
            "not-an-id",
        ])
        .await?;
        assert_eq!(out.code, 2, "{action}: {out:?}");
        assert!(
            out.stderr.contains("\"not-an-id\" is not a workflow id"),
            "{}",
            out.stderr
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_workflow_documents_exit_2_naming_the_problem() -> anyhow::Result<()> {
    let stack = Stack::start(Services {
        gateway: true,
        reader: false,
        processor: false,
    })
    .await?;
    let node = |name: &str, deps: &str| {
        format!(
            r#"{{"name": "{name}", "task": {{"key": "k", "type": "echo"}}, "depends_on": [{deps}]}}"#
        )
    };
    let doc = |nodes: &[String]| format!(r#"{{"nodes": [{}]}}"#, nodes.join(", "));
    let cases = [
        // Caught locally, with the JSON path.
        ("not json".to_owned(), "standard input: not JSON"),
        (
            doc(&[node("a", r#"{"name": "x", "on_failure": "sometimes"}"#)]),
            "nodes[0].depends_on[0].on_failure: \"sometimes\" is neither",
        ),
        (
            doc(&[
                node("a", ""),
                r#"{"name": "b", "task": {"type": "echo"}}"#.to_owned(),
            ]),
            "nodes[1].task: missing field `key`",
        ),
        // Caught by the gateway, with its field path.
        (
            doc(&[node("a", r#"{"name": "b"}"#), node("b", r#"{"name": "a"}"#)]),
            "nodes[0].depends_on closes a cycle: a -> b -> a",
        ),
        (
            doc(&[node("a", r#"{"name": "nope"}"#)]),
            "nodes[0].depends_on[0].name \"nope\" names no node",
        ),
        (
            doc(&[
                node("a", ""),
                r#"{"name": "b", "task": {"key": "k", "type": "echo", "idempotency_key": "mine"}}"#
                    .to_owned(),
            ]),
            "nodes[1].task.idempotency_key must be empty",
        ),
    ];
    for (input, expected) in cases {
        let out = stack
            .ctl_stdin(&["workflow", "submit", "--file", "-"], &input)
            .await?;
        assert_eq!(out.code, 2, "{input}: {out:?}");
        assert!(out.stderr.contains(expected), "{input}: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
    let out = stack
        .ctl(&["workflow", "submit", "--file", "/nonexistent/wf.json"])
        .await?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("cannot read /nonexistent/wf.json"),
        "{}",
        out.stderr
    );
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM workflows")
        .fetch_one(&stack.env.pool)
        .await?;
    assert_eq!(stored, 0, "nothing was stored");
    stack.stop().await
}
