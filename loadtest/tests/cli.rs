//! Bad input to `dispatch-loadgen`: a clear message naming the problem, never a panic. (Being an
//! integration test, this also makes `cargo test` build the binary the live stages of the test
//! command run.)

use std::process::Command;

fn loadgen(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dispatch-loadgen"))
        .args(args)
        .output()
        .expect("dispatch-loadgen runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_unknown_scenario_is_refused_with_the_known_ones() {
    let (code, err) = loadgen(&["run", "--scenario", "nope"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("invalid value 'nope'"), "{err}");
    assert!(err.contains("--scenario"), "{err}");
    for known in ["submit", "batch", "get", "e2e"] {
        assert!(err.contains(known), "{known} not listed: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn an_unknown_subcommand_is_refused_with_the_known_ones() {
    let (code, err) = loadgen(&["soak"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unrecognized subcommand 'soak'"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
