//! Recording and reporting.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;
use tonic::Code;

use crate::RunArgs;
use crate::scenario::Counts;

/// Collects latencies (microseconds, from the intended send time) and outcomes.
pub struct Recorder {
    hist: Mutex<Histogram<u64>>,
    service_hist: Mutex<Histogram<u64>>,
    ok: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3)
        .unwrap_or_else(|e| unreachable!("static bounds: {e}"))
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self {
            hist: Mutex::new(new_hist()),
            service_hist: Mutex::new(new_hist()),
            ok: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records one call: `latency` from the intended time, `service` from the actual send.
    pub fn record(&self, latency: Duration, service: Duration, result: Result<(), Code>) {
        let us = |d: Duration| (d.as_micros() as u64).clamp(1, 120_000_000);
        if let Ok(mut h) = self.hist.lock() {
            let _ = h.record(us(latency));
        }
        if let Ok(mut h) = self.service_hist.lock() {
            let _ = h.record(us(service));
        }
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(code) => {
                if let Ok(mut e) = self.errors.lock() {
                    *e.entry(format!("{code:?}")).or_default() += 1;
                }
            }
        }
    }

    fn snapshot(&self) -> (u64, u64, f64) {
        let ok = self.ok.load(Ordering::Relaxed);
        let err: u64 = self.errors.lock().map(|e| e.values().sum()).unwrap_or(0);
        let p99 = self
            .hist
            .lock()
            .map(|h| h.value_at_quantile(0.99) as f64 / 1000.0)
            .unwrap_or(0.0);
        (ok, err, p99)
    }

    /// The final report.
    pub fn report(
        &self,
        args: &RunArgs,
        elapsed: Duration,
        items_per_call: usize,
        counts: Counts,
    ) -> Report {
        let (ok, err, _) = self.snapshot();
        let h = self
            .hist
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| new_hist());
        let sh = self
            .service_hist
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| new_hist());
        let ms = |v: u64| v as f64 / 1000.0;
        let secs = elapsed.as_secs_f64();
        Report {
            label: args.label.clone(),
            scenario: format!("{:?}", args.scenario).to_lowercase(),
            offered_rate: args.rate,
            achieved_rate: (ok + err) as f64 / secs,
            ok_rate: ok as f64 / secs,
            items_per_second: ok as f64 * items_per_call as f64 / secs,
            items_per_call,
            duration_s: secs,
            ok,
            errors: err,
            errors_by_code: self.errors.lock().map(|e| e.clone()).unwrap_or_default(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            service_p99_ms: ms(sh.value_at_quantile(0.99)),
            payload_bytes: args.payload_bytes,
            concurrency: args.concurrency,
            items_offered: counts.offered,
            items_accepted: counts.accepted,
            items_rejected_by_code: counts.rejected,
            cancels: counts.cancels,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Free label.
    pub label: String,
    /// Scenario name.
    pub scenario: String,
    /// Calls per second offered.
    pub offered_rate: f64,
    /// Calls per second completed (ok or error).
    pub achieved_rate: f64,
    /// Successful calls per second.
    pub ok_rate: f64,
    /// Successful items (tasks) per second.
    pub items_per_second: f64,
    /// Items per call.
    pub items_per_call: usize,
    /// Measured seconds.
    pub duration_s: f64,
    /// Successful calls.
    pub ok: u64,
    /// Failed calls.
    pub errors: u64,
    /// Failed calls by gRPC code.
    pub errors_by_code: BTreeMap<String, u64>,
    /// Latency percentiles from the intended send time, in ms.
    pub p50_ms: f64,
    /// p90.
    pub p90_ms: f64,
    /// p99.
    pub p99_ms: f64,
    /// p99.9.
    pub p999_ms: f64,
    /// Max.
    pub max_ms: f64,
    /// p99 from the actual send time (service time only), for comparison.
    pub service_p99_ms: f64,
    /// Payload size.
    pub payload_bytes: usize,
    /// In-flight bound.
    pub concurrency: usize,
    /// Tasks offered in submits over the whole run (warm-up included: every accepted one is
    /// recorded by `--record-ids`).
    pub items_offered: u64,
    /// Tasks accepted (warm-up included).
    pub items_accepted: u64,
    /// Tasks refused, by gRPC code (warm-up included).
    pub items_rejected_by_code: BTreeMap<String, u64>,
    /// Cancels sent, by `own|foreign:outcome`.
    pub cancels: BTreeMap<String, u64>,
}

impl Report {
    /// A human summary.
    pub fn human(&self) -> String {
        format!(
            "{} {}: offered {:.0}/s achieved {:.0}/s ok {} errors {} {:?}\n  latency ms p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} (service p99 {:.3}); items/s {:.0}",
            self.label,
            self.scenario,
            self.offered_rate,
            self.achieved_rate,
            self.ok,
            self.errors,
            self.errors_by_code,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms,
            self.service_p99_ms,
            self.items_per_second
        ) + &if self.cancels.is_empty() {
            String::new()
        } else {
            format!("\n  cancels {:?}", self.cancels)
        }
    }
}

/// Prints a progress line every second until aborted.
pub async fn progress(r: std::sync::Arc<Recorder>, from: tokio::time::Instant, total: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = tokio::time::Instant::now();
        if now < from {
            eprintln!("warming up...");
            continue;
        }
        let (ok, err, p99) = r.snapshot();
        eprintln!(
            "t={:>4.0}s/{:.0}s ok={ok} err={err} p99={p99:.2}ms",
            (now - from).as_secs_f64(),
            total.as_secs_f64()
        );
    }
}
