//! `list` asks for the BASIC view (no payload, no result) unless `--full`; `get` shows both.

use dispatch_core::TaskState;

use crate::harness::{ECHO_TYPE, Services, Stack};

const PAYLOAD: &str = r#"{"view":"full-only"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_leaves_payload_and_result_out_unless_full() -> anyhow::Result<()> {
    let stack = Stack::start(Services::ALL).await?;
    // The echo handler stores the payload as the result: the task has both.
    let sub = stack.submit("view-1", ECHO_TYPE, PAYLOAD).await?;
    assert_eq!(sub.code, 0, "{sub:?}");
    let id = sub.task_id()?;
    stack.await_state(&id, TaskState::Succeeded).await?;

    // The default: the task, without payload or result, in JSON and in the table.
    let basic = stack.ctl(&["-o", "json", "list"]).await?;
    assert_eq!(basic.code, 0, "{basic:?}");
    let b = basic.json()?;
    let t = &b["tasks"][0];
    assert_eq!(
        (t["task_id"].as_str(), t["state"].as_str()),
        (Some(id.as_str()), Some("succeeded")),
        "{b}"
    );
    let keys: Vec<&String> = t
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    for absent in ["payload", "payload_base64", "result", "result_base64"] {
        assert!(t.get(absent).is_none(), "BASIC list has {absent}: {keys:?}");
    }
    let table = stack.ctl(&["list"]).await?;
    assert_eq!(table.code, 0, "{table:?}");
    assert!(table.stdout.contains(&id), "{}", table.stdout);
    for absent in ["PAYLOAD", "RESULT", "full-only"] {
        assert!(
            !table.stdout.contains(absent),
            "BASIC table shows {absent}: {}",
            table.stdout
        );
    }

    // --full: both, in JSON and in the table.
    let full = stack.ctl(&["-o", "json", "list", "--full"]).await?;
    assert_eq!(full.code, 0, "{full:?}");
    let f = full.json()?;
    let t = &f["tasks"][0];
    assert_eq!(t["task_id"].as_str(), Some(id.as_str()), "{f}");
    assert_eq!(t["payload"].as_str(), Some(PAYLOAD), "{f}");
    assert_eq!(t["result"].as_str(), Some(PAYLOAD), "{f}");
    let table = stack.ctl(&["list", "--full"]).await?;
    assert_eq!(table.code, 0, "{table:?}");
    for present in ["PAYLOAD", "RESULT", "full-only"] {
        assert!(
            table.stdout.contains(present),
            "FULL table lacks {present}: {}",
            table.stdout
        );
    }

    // GetTask answers the whole task: get shows both without a flag.
    let get = stack.ctl(&["-o", "json", "get", &id]).await?;
    assert_eq!(get.code, 0, "{get:?}");
    let g = get.json()?;
    assert_eq!(
        (g["payload"].as_str(), g["result"].as_str()),
        (Some(PAYLOAD), Some(PAYLOAD)),
        "{g}"
    );
    stack.stop().await
}
