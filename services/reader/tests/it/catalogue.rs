//! docs/metrics.md names every metric the reader registers, with its type and labels, and the
//! reader registers every metric its section lists (dispatch_testkit::catalogue).

#[test]
fn the_metric_catalogue_matches_what_the_reader_registers() {
    dispatch_reader::metrics::init();
    dispatch_runtime::metrics::register_runtime_metrics("reader");
    dispatch_testkit::catalogue::assert_matches("Reader");
}
