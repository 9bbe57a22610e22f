//! Probabilistic early refresh ("XFetch": Vattani, Chierichetti, Lowenstein, *Optimal Probabilistic
//! Cache Stampede Prevention*, VLDB 2015) and TTL jitter.
//!
//! A fixed TTL makes every reader of a hot key miss at the same instant. XFetch instead lets each
//! hit decide, independently, to recompute a little before the expiry: the chance grows as the
//! expiry approaches and with the cost of a recompute (`delta`, the time the last load took), so
//! one caller refreshes in the background while the others keep hitting.
//!
//! The decision is `now - delta * beta * ln(u) >= expiry` with `u` uniform in (0, 1]. It is a pure
//! function of its inputs so tests can drive it with a fixed `u` and clock.

use std::time::{Duration, Instant};

/// Whether a hit at `now` should refresh the entry early.
///
/// `u` is a uniform random number in (0, 1] (values outside are clamped); `beta` > 1 favours
/// earlier refreshes, 0 disables them.
pub fn should_refresh(now: Instant, expiry: Instant, delta: Duration, beta: f64, u: f64) -> bool {
    if beta <= 0.0 {
        return false;
    }
    let u = u.clamp(f64::MIN_POSITIVE, 1.0);
    // -ln(u) >= 0: how far ahead of `now` this caller looks, in units of delta * beta.
    let ahead = delta.as_secs_f64() * beta * -u.ln();
    let ahead = Duration::try_from_secs_f64(ahead).unwrap_or(Duration::MAX);
    now.checked_add(ahead).is_none_or(|t| t >= expiry)
}

/// [`should_refresh`] with a fresh random `u`.
pub fn should_refresh_now(expiry: Instant, delta: Duration, beta: f64) -> bool {
    // 1.0 - [0, 1) is (0, 1].
    let u = 1.0 - rand::random::<f64>();
    should_refresh(Instant::now(), expiry, delta, beta, u)
}

/// `base` scaled by a uniform factor in `[1 - ratio, 1 + ratio]`.
pub fn jittered(base: Duration, ratio: f64) -> Duration {
    if ratio <= 0.0 {
        return base;
    }
    let f = 1.0 + ratio * (2.0 * rand::random::<f64>() - 1.0);
    base.mul_f64(f.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn refreshes_only_near_expiry_and_more_eagerly_for_costly_loads() {
        let now = Instant::now();
        let expiry = now + 100 * MS;
        // u = 1/e: the caller looks ahead exactly delta * beta.
        let u = (-1.0f64).exp();
        assert!(!should_refresh(now, expiry, 10 * MS, 1.0, u));
        assert!(should_refresh(now, expiry, 100 * MS, 1.0, u));
        assert!(should_refresh(now, expiry, 50 * MS, 2.0, u), "beta scales");
        // u = 1: ln(1) = 0, no look-ahead; refresh only once expired.
        assert!(!should_refresh(now, expiry, 10_000 * MS, 1.0, 1.0));
        assert!(should_refresh(expiry, expiry, 10 * MS, 1.0, 1.0));
        // A tiny u looks far ahead.
        assert!(should_refresh(now, expiry, MS, 1.0, 1e-300));
        // beta = 0 disables.
        assert!(!should_refresh(now, expiry, 10_000 * MS, 0.0, 1e-9));
    }

    #[test]
    fn the_refresh_probability_follows_the_exponential() {
        // P(refresh) = P(-ln u >= gap / (delta * beta)) = exp(-gap / (delta * beta)).
        let now = Instant::now();
        let expiry = now + 20 * MS;
        let n = 10_000;
        let hits = (1..=n)
            .filter(|i| {
                let u = f64::from(*i) / f64::from(n);
                should_refresh(now, expiry, 10 * MS, 1.0, u)
            })
            .count();
        let expected = (-2.0f64).exp() * f64::from(n);
        assert!(
            (hits as f64 - expected).abs() < f64::from(n) * 0.01,
            "{hits} vs {expected}"
        );
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let base = Duration::from_secs(10);
        for _ in 0..1000 {
            let d = jittered(base, 0.2);
            assert!(
                d >= Duration::from_secs(8) && d <= Duration::from_secs(12),
                "{d:?}"
            );
        }
        assert_eq!(jittered(base, 0.0), base);
    }
}
