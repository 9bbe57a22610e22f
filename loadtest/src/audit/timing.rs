//! Time to start, retry delays and submit latency per load ([`Timing`]): measured, not judged.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use super::history::{Exec, History};

/// Time to start and retry delays of one load's tasks (milliseconds).
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Timing {
    /// Tasks with a measured start: not scheduled (`run_at`), sent time known, attempt 1 of
    /// generation 0 seen in the ledger or `task_attempts`.
    pub started: u64,
    /// Submit sent .. attempt 1's first start: median.
    pub start_p50_ms: f64,
    /// 99th percentile.
    pub start_p99_ms: f64,
    /// Largest.
    pub start_max_ms: f64,
    /// Retries measured (ledger): the end of attempt n's last execution .. attempt n+1's first
    /// start, generation 0.
    pub retries: u64,
    /// Retry delay: median.
    pub retry_p50_ms: f64,
    /// 99th percentile.
    pub retry_p99_ms: f64,
    /// Largest.
    pub retry_max_ms: f64,
    /// Submits answered OK after a produce to Kafka (sent and answered times known).
    pub submits_kafka: u64,
    /// Their latency (sent .. answered): median.
    pub submit_kafka_p50_ms: f64,
    /// 99th percentile.
    pub submit_kafka_p99_ms: f64,
    /// Submits answered OK after an outbox write (a Kafka outage, or their key behind one).
    pub submits_outbox: u64,
    /// Their latency: median.
    pub submit_outbox_p50_ms: f64,
    /// 99th percentile.
    pub submit_outbox_p99_ms: f64,
    /// Largest.
    pub submit_outbox_max_ms: f64,
}

impl Timing {
    /// One line.
    pub fn line(&self) -> String {
        format!(
            "started={} start_p50_ms={:.0} start_p99_ms={:.0} start_max_ms={:.0} retries={} retry_p50_ms={:.0} retry_p99_ms={:.0} retry_max_ms={:.0} submits_kafka={} submit_kafka_p50_ms={:.0} submit_kafka_p99_ms={:.0} submits_outbox={} submit_outbox_p50_ms={:.0} submit_outbox_p99_ms={:.0} submit_outbox_max_ms={:.0}",
            self.started,
            self.start_p50_ms,
            self.start_p99_ms,
            self.start_max_ms,
            self.retries,
            self.retry_p50_ms,
            self.retry_p99_ms,
            self.retry_max_ms,
            self.submits_kafka,
            self.submit_kafka_p50_ms,
            self.submit_kafka_p99_ms,
            self.submits_outbox,
            self.submit_outbox_p50_ms,
            self.submit_outbox_p99_ms,
            self.submit_outbox_max_ms
        )
    }
}

/// The `q` quantile (nearest rank) of sorted values, 0 when empty.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Per source: time to start (sent .. attempt 1's first start), retry delays (attempt n's end
/// .. attempt n+1's first start), generation 0, and submit latency by the path that made the
/// submit durable (Kafka or the outbox).
pub(super) fn timing(h: &History) -> BTreeMap<String, Timing> {
    let mut starts: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut retries: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut submits: BTreeMap<(&str, bool), Vec<f64>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for a in &h.accepted {
        if a.duplicate || !seen.insert(a.task_id) {
            continue;
        }
        if a.sent_us > 0 && a.acked_us >= a.sent_us {
            submits
                .entry((a.source.as_str(), a.via == "outbox"))
                .or_default()
                .push((a.acked_us - a.sent_us) as f64 / 1000.0);
        }
        let execs: Vec<&Exec> = h
            .execs
            .get(&a.task_id)
            .map(|v| v.iter().filter(|e| e.generation == 0).collect())
            .unwrap_or_default();
        let first_of = |attempt: u32| {
            let ledger = execs
                .iter()
                .filter(|e| e.attempt == attempt)
                .map(|e| e.start().0)
                .min();
            let stored = h.attempts.get(&a.task_id).and_then(|v| {
                v.iter()
                    .filter(|r| r.generation == 0 && r.attempt == attempt)
                    .map(|r| r.started_us)
                    .min()
            });
            ledger.into_iter().chain(stored).min()
        };
        if !a.scheduled
            && a.sent_us > 0
            && let Some(start) = first_of(1)
        {
            starts
                .entry(a.source.as_str())
                .or_default()
                .push((start - a.sent_us) as f64 / 1000.0);
        }
        let mut attempts: Vec<u32> = execs.iter().map(|e| e.attempt).collect();
        attempts.sort_unstable();
        attempts.dedup();
        for w in attempts.windows(2) {
            if w[1] != w[0] + 1 {
                continue;
            }
            let end = execs
                .iter()
                .filter(|e| e.attempt == w[0])
                .map(|e| e.finished_us)
                .max();
            let next = execs
                .iter()
                .filter(|e| e.attempt == w[1])
                .map(|e| e.start().0)
                .min();
            if let (Some(end), Some(next)) = (end, next) {
                retries
                    .entry(a.source.as_str())
                    .or_default()
                    .push((next - end) as f64 / 1000.0);
            }
        }
    }
    let mut out = BTreeMap::new();
    let sources: HashSet<&str> = h.accepted.iter().map(|a| a.source.as_str()).collect();
    for src in sources {
        let mut s = starts.remove(src).unwrap_or_default();
        let mut r = retries.remove(src).unwrap_or_default();
        let mut k = submits.remove(&(src, false)).unwrap_or_default();
        let mut o = submits.remove(&(src, true)).unwrap_or_default();
        for v in [&mut s, &mut r, &mut k, &mut o] {
            v.sort_by(f64::total_cmp);
        }
        out.insert(
            src.to_owned(),
            Timing {
                started: s.len() as u64,
                start_p50_ms: quantile(&s, 0.5),
                start_p99_ms: quantile(&s, 0.99),
                start_max_ms: s.last().copied().unwrap_or(0.0),
                retries: r.len() as u64,
                retry_p50_ms: quantile(&r, 0.5),
                retry_p99_ms: quantile(&r, 0.99),
                retry_max_ms: r.last().copied().unwrap_or(0.0),
                submits_kafka: k.len() as u64,
                submit_kafka_p50_ms: quantile(&k, 0.5),
                submit_kafka_p99_ms: quantile(&k, 0.99),
                submits_outbox: o.len() as u64,
                submit_outbox_p50_ms: quantile(&o, 0.5),
                submit_outbox_p99_ms: quantile(&o, 0.99),
                submit_outbox_max_ms: o.last().copied().unwrap_or(0.0),
            },
        );
    }
    out
}
