//! docs/metrics.md names every metric the processor registers, with its type and labels, and the
//! processor registers every metric its section lists (dispatch_testkit::catalogue).

#[test]
fn the_metric_catalogue_matches_what_the_processor_registers() {
    dispatch_processor::metrics::init(&["noop".to_owned()]);
    dispatch_runtime::metrics::register_runtime_metrics("processor");
    dispatch_testkit::catalogue::assert_matches("Processor");
}
