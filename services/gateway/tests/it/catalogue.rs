//! docs/metrics.md names every metric the gateway registers, with its type and labels, and the
//! gateway registers every metric its section lists (dispatch_testkit::catalogue).

#[test]
fn the_metric_catalogue_matches_what_the_gateway_registers() {
    dispatch_gateway::metrics::init();
    dispatch_runtime::metrics::register_runtime_metrics("gateway");
    dispatch_testkit::catalogue::assert_matches("Gateway");
}
