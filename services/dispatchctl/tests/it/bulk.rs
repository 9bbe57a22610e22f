//! Bulk submit of 10k tasks from an NDJSON file: accepted / duplicate / failed counts.

use std::fmt::Write as _;

use crate::harness::{Services, Stack, assert_snapshot};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_submit_of_10k_tasks_reports_the_right_counts() -> anyhow::Result<()> {
    let stack = Stack::start(Services {
        gateway: true,
        reader: false,
        processor: false,
    })
    .await?;
    // 10_000 lines: lines 0..100 carry idempotency keys that lines 9_500..9_600 repeat with the
    // same parameters (100 duplicates, in a later batch; a key reused with other parameters is
    // refused); every 1_000th block ends with one malformed line (10, rejected by the CLI) and
    // one invalid task type (10, rejected by the gateway).
    let mut text = String::new();
    for i in 0..10_000u32 {
        let line = match i {
            i if i % 1_000 == 999 => "{\"key\": ".to_string(),
            i if i % 1_000 == 998 => format!(r#"{{"key":"bulk-{i}","type":"bad type!"}}"#),
            i if i < 100 => format!(
                r#"{{"key":"bulk-{i}","type":"noop","payload":{{"i":{i}}},"idempotency_key":"idem-{i}"}}"#
            ),
            i if (9_500..9_600).contains(&i) => {
                let j = i - 9_500;
                format!(
                    r#"{{"key":"bulk-{j}","type":"noop","payload":{{"i":{j}}},"idempotency_key":"idem-{j}"}}"#
                )
            }
            i => format!(
                r#"{{"key":"bulk-{}","type":"noop","payload":{{"i":{i}}},"priority":"low"}}"#,
                i % 50
            ),
        };
        writeln!(text, "{line}")?;
    }
    let path = std::env::temp_dir().join(format!("dispatchctl-bulk-{}.ndjson", stack.env.id));
    std::fs::write(&path, text)?;
    let file = path.to_string_lossy().into_owned();

    let out = stack
        .ctl(&["-o", "json", "submit", "--file", &file])
        .await?;
    assert_eq!(out.code, 2, "rejected items make the exit code 2: {out:?}");
    let s = out.json()?;
    assert_eq!(s["total"], 10_000);
    assert_eq!(s["accepted"], 9_880);
    assert_eq!(s["duplicate"], 100);
    assert_eq!(s["failed"], 20);
    assert_eq!(s["via_outbox"], 0);
    let failures = s["failures"].as_array().cloned().unwrap_or_default();
    assert_eq!(failures.len(), 20);
    assert!(
        failures
            .iter()
            .any(|f| f.as_str().is_some_and(|f| f.contains("item 1000:")))
    );
    assert!(
        failures
            .iter()
            .any(|f| f.as_str().is_some_and(|f| f.contains("item 999:")))
    );
    assert!(
        out.stderr.contains("20 of 10000 tasks were rejected"),
        "{}",
        out.stderr
    );

    // The same idempotency keys again, from a small file, as a table.
    let small: String = (0..3)
        .map(|i| {
            format!(r#"{{"key":"bulk-{i}","type":"noop","payload":{{"i":{i}}},"idempotency_key":"idem-{i}"}}"#)
                + "\n"
        })
        .collect();
    let small_path =
        std::env::temp_dir().join(format!("dispatchctl-bulk-{}-small.ndjson", stack.env.id));
    std::fs::write(&small_path, small)?;
    let again = stack
        .ctl(&["submit", "--file", &small_path.to_string_lossy()])
        .await?;
    assert_eq!(again.code, 0, "{again:?}");
    assert_snapshot("submit_bulk_duplicates.txt", &again.stdout);
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(small_path);
    stack.stop().await
}
