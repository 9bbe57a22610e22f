//! The mixed load's deterministic choices: a roll per (sequence number, salt), the flags' shares
//! ([`Mix`]), priorities, payloads, and the fingerprint that tells a conflicting reuse of an
//! idempotency key from an exact duplicate.

use dispatch_proto::v1 as pb;

use crate::RunArgs;

/// A number in [0, 1) from `seq` and `salt` (splitmix64): the same run flags always make the same
/// choices for the same sequence number.
pub fn roll(seq: u64, salt: u64) -> f64 {
    let mut z = seq
        .wrapping_add(salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

pub(super) const SALT_NOOP: u64 = 1;
pub(super) const SALT_LATENCY: u64 = 2;
pub(super) const SALT_KIND: u64 = 3;
pub(super) const SALT_IDEM: u64 = 4;
pub(super) const SALT_CONFLICT: u64 = 5;
pub(super) const SALT_RUN_AT: u64 = 6;
pub(super) const SALT_CANCEL: u64 = 7;
pub(super) const SALT_CANCEL_DELAY: u64 = 8;
pub(super) const SALT_FOREIGN: u64 = 9;
pub(super) const SALT_FOREIGN_AFTER: u64 = 10;
pub(super) const SALT_FOREIGN_DELAY: u64 = 11;
pub(super) const SALT_PRIORITY: u64 = 12;

/// Parses `--priority-mix` (`critical=6,default=3,low=1`) into (wire priority, cumulative
/// share) pairs whose last share is 1. Empty: no pairs (no priority set).
///
/// # Errors
/// An unknown name, a pair without `=`, a weight that is not a non-negative number, or weights
/// that sum to zero.
pub fn parse_priority_mix(s: &str) -> anyhow::Result<Vec<(i32, f64)>> {
    let mut pairs = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = part
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--priority-mix: `{part}` is not name=weight"))?;
        let p = match name.trim() {
            "critical" => pb::Priority::Critical,
            "default" => pb::Priority::Default,
            "low" => pb::Priority::Low,
            other => {
                anyhow::bail!("--priority-mix: unknown priority `{other}` (critical, default, low)")
            }
        };
        let w: f64 = weight
            .trim()
            .parse()
            .ok()
            .filter(|w: &f64| w.is_finite() && *w >= 0.0)
            .ok_or_else(|| anyhow::anyhow!("--priority-mix: bad weight in `{part}`"))?;
        pairs.push((p as i32, w));
    }
    if pairs.is_empty() {
        return Ok(pairs);
    }
    let total: f64 = pairs.iter().map(|(_, w)| w).sum();
    anyhow::ensure!(total > 0.0, "--priority-mix: the weights sum to zero");
    // The last pair with a weight closes at exactly 1 (no rounding gap after it).
    let last = pairs.iter().rposition(|(_, w)| *w > 0.0).unwrap_or(0);
    let mut acc = 0.0;
    for (i, (_, w)) in pairs.iter_mut().enumerate() {
        acc += *w / total;
        *w = if i >= last { 1.0 } else { acc };
    }
    Ok(pairs)
}

/// The priority of a roll `r` in [0, 1) under a parsed `--priority-mix` (0, unspecified, when
/// the mix is empty).
pub fn pick_priority(mix: &[(i32, f64)], r: f64) -> i32 {
    mix.iter()
        .find(|(_, upto)| r < *upto)
        .map_or(0, |(p, _)| *p)
}

/// FNV-1a, 64 bits: a stable fingerprint of what a submit asked for (the audit compares the
/// fingerprints of submits that share an idempotency key).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The fingerprint of a spec: business key, type, priority, payload, run_at.
pub fn fingerprint(s: &pb::TaskSpec) -> u64 {
    let run_at = s
        .run_at
        .map(|t| format!("{}.{}", t.seconds, t.nanos))
        .unwrap_or_default();
    fnv1a(&[
        s.business_key.as_bytes(),
        s.task_type.as_bytes(),
        &s.priority.to_le_bytes(),
        &s.payload,
        run_at.as_bytes(),
    ])
}

#[derive(Debug, Clone, Default)]
pub(super) struct Mix {
    pub(super) on: bool,
    pub(super) noop_share: f64,
    pub(super) latency_ms: u64,
    pub(super) latency_max_ms: u64,
    pub(super) fail_rate: f64,
    pub(super) permanent_share: f64,
    pub(super) redrivable_share: f64,
    pub(super) panic_share: f64,
    pub(super) idempotency_share: f64,
    pub(super) conflict_share: f64,
    pub(super) run_at_share: f64,
    pub(super) run_at_ms: u64,
    pub(super) run_at_unix_ms: Option<i64>,
    pub(super) cancel_share: f64,
    pub(super) cancel_delay_max_ms: u64,
    pub(super) foreign_cancel_share: f64,
    pub(super) foreign_cancel_after_share: f64,
    pub(super) foreign_cancel_delay_max_ms: u64,
    pub(super) max_attempts: u32,
    pub(super) initial_backoff_ms: u32,
}

impl Mix {
    pub(super) fn from_args(a: &RunArgs) -> Self {
        let mut m = Self {
            on: false,
            noop_share: a.noop_share,
            latency_ms: a.sim_latency_ms,
            latency_max_ms: a.sim_latency_max_ms.max(a.sim_latency_ms),
            fail_rate: a.sim_fail_rate,
            permanent_share: a.sim_permanent_share,
            redrivable_share: a.sim_redrivable_share,
            panic_share: a.sim_panic_share,
            idempotency_share: a.idempotency_share,
            conflict_share: a.idem_conflict_share,
            run_at_share: a.run_at_share,
            run_at_ms: a.run_at_ms,
            run_at_unix_ms: a.run_at_unix_ms,
            cancel_share: a.cancel_share,
            cancel_delay_max_ms: a.cancel_delay_max_ms,
            foreign_cancel_share: a.foreign_cancel_share,
            foreign_cancel_after_share: a.foreign_cancel_after_share,
            foreign_cancel_delay_max_ms: a.foreign_cancel_delay_max_ms,
            max_attempts: a.max_attempts,
            initial_backoff_ms: a.initial_backoff_ms,
        };
        m.on = m.noop_share > 0.0
            || m.latency_max_ms > m.latency_ms
            || m.permanent_share > 0.0
            || m.redrivable_share > 0.0
            || m.panic_share > 0.0
            || m.idempotency_share > 0.0
            || m.conflict_share > 0.0
            || m.run_at_share > 0.0
            || m.cancel_share > 0.0
            || m.foreign_cancel_share > 0.0
            || m.foreign_cancel_after_share > 0.0
            || m.max_attempts > 0
            || m.initial_backoff_ms > 0;
        m
    }
}

pub(super) fn payload(n: usize, latency_ms: u64, fail_rate: f64) -> Vec<u8> {
    plan_payload(
        n,
        &format!(r#""latency_ms":{latency_ms},"fail_rate":{fail_rate}"#),
    )
}

/// `{<fields>,"pad":"xxx"}` padded to about `n` bytes.
pub(super) fn plan_payload(n: usize, fields: &str) -> Vec<u8> {
    let bare = format!(r#"{{{fields},"pad":""}}"#);
    let pad = n.saturating_sub(bare.len());
    format!(r#"{{{fields},"pad":"{}"}}"#, "x".repeat(pad)).into_bytes()
}
