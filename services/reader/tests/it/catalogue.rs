//! docs/metrics.md names every metric the reader registers, with its type and labels, and the
//! reader registers every metric its section lists (dispatch_testkit::catalogue).

#[test]
fn the_metric_catalogue_matches_what_the_reader_registers() {
    dispatch_reader::metrics::init();
    dispatch_runtime::metrics::register_runtime_metrics("reader");
    let wrong = dispatch_testkit::catalogue::mismatches(
        &dispatch_testkit::catalogue::read(),
        "Reader",
        &dispatch_runtime::metrics::families(),
    );
    assert!(
        wrong.is_empty(),
        "docs/metrics.md is out of date:\n{}",
        wrong.join("\n")
    );
}
