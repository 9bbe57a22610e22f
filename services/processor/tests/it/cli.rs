//! The `dispatch-processor` binary's command line: --help, --version, both --config spellings,
//! --print-config, and an unknown flag that stops start-up.

#[test]
fn the_binary_behaves_like_a_cli() {
    dispatch_testkit::cli::assert_behaves_like_a_cli(
        env!("CARGO_BIN_EXE_dispatch-processor"),
        "dispatch-processor",
        env!("CARGO_PKG_VERSION"),
    );
}
