//! docs/metrics.md names every metric the processor registers, with its type and labels, and the
//! processor registers every metric its section lists (dispatch_testkit::catalogue).

#[test]
fn the_metric_catalogue_matches_what_the_processor_registers() {
    dispatch_processor::metrics::init(&["noop".to_owned()]);
    dispatch_runtime::metrics::register_runtime_metrics("processor");
    let wrong = dispatch_testkit::catalogue::mismatches(
        &dispatch_testkit::catalogue::read(),
        "Processor",
        &dispatch_runtime::metrics::families(),
    );
    assert!(
        wrong.is_empty(),
        "docs/metrics.md is out of date:\n{}",
        wrong.join("\n")
    );
}
