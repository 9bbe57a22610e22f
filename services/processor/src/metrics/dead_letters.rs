//! Retry and dead-letter records: sent to a retry topic, to the DLQ, and moved back from it by
//! the operator's redrives.

use std::sync::LazyLock;

pub use dispatch_core::ErrorClass;
use dispatch_core::topics::RETRY_LEVELS;
use prometheus::{IntCounter, IntCounterVec};

use super::{counter, counter_vec};

/// `dispatch_retries_total{level}`.
static RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_retries_total",
        "Records sent to a retry topic.",
        &["level"],
    )
});
/// [`RETRIES`] of levels 1 to `RETRY_LEVELS`, resolved once.
static RETRIES_BY_LEVEL: LazyLock<Vec<IntCounter>> = LazyLock::new(|| {
    (1..=RETRY_LEVELS)
        .map(|l| RETRIES.with_label_values(&[&l.to_string()]))
        .collect()
});
/// `dispatch_dlq_records_total{error_class}`.
static DLQ: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_dlq_records_total",
        "Records sent to the DLQ.",
        &["error_class"],
    )
});
/// [`DLQ`] per [`ErrorClass`], resolved once.
static DLQ_BY_CLASS: LazyLock<[IntCounter; 5]> =
    LazyLock::new(|| ErrorClass::ALL.map(|c| DLQ.with_label_values(&[c.as_str()])));
/// `dispatch_dlq_redriven_total`.
static REDRIVEN: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dispatch_dlq_redriven_total",
        "Dead letters moved back to the first retry level by operator redrives.",
    )
});

/// Pre-creates the series.
pub(super) fn init() {
    LazyLock::force(&RETRIES_BY_LEVEL);
    LazyLock::force(&DLQ_BY_CLASS);
    init_redrives();
}

/// Registers `dispatch_dlq_redriven_total` (part of [`init`](super::init); the operator API's
/// server calls it too, so that it is exported wherever the API is served).
pub fn init_redrives() {
    LazyLock::force(&REDRIVEN);
}

/// A record was sent to the retry topic of `level`.
pub fn retry_scheduled(level: u32) {
    match level
        .checked_sub(1)
        .and_then(|i| RETRIES_BY_LEVEL.get(i as usize))
    {
        Some(c) => c.inc(),
        None => RETRIES.with_label_values(&[&level.to_string()]).inc(),
    }
}

/// A record was sent to the DLQ for `class`.
pub fn dead_lettered(class: ErrorClass) {
    DLQ_BY_CLASS[class as usize].inc();
}

/// An operator redrive moved `n` dead letters back to the first retry level.
pub fn dead_letters_redriven(n: usize) {
    REDRIVEN.inc_by(n as u64);
}
