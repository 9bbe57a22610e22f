//! Retrying what must eventually succeed (a produce, a write, an index row) until it does or the
//! caller gives up: exponential delays from 100 ms to 5 s, each jittered (so instances that
//! failed together do not retry together), never giving up on their own.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// First delay.
pub const MIN_DELAY: Duration = Duration::from_millis(100);
/// Longest delay (before jitter).
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// The delays: `MIN_DELAY` doubling up to `MAX_DELAY`, each plus a random jitter of up to
/// itself; endless.
pub fn backoff() -> impl Iterator<Item = Duration> + Send {
    ExponentialBuilder::default()
        .with_min_delay(MIN_DELAY)
        .with_max_delay(MAX_DELAY)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Runs `op` until it succeeds (`Some`) or `give_up` fires (`None`), waiting [`backoff`]
/// between failures; each failure is logged as `what` with the delay before the next try.
pub async fn until_ok<T, E, F, Fut>(what: &str, give_up: &CancellationToken, mut op: F) -> Option<T>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delays = backoff();
    loop {
        if give_up.is_cancelled() {
            return None;
        }
        let e = match op().await {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        let delay = delays.next().unwrap_or(MAX_DELAY);
        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "{what} failed; retrying");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = give_up.cancelled() => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_and_never_end() {
        let d: Vec<Duration> = backoff().take(40).collect();
        assert_eq!(d.len(), 40, "endless");
        assert!(d[0] >= MIN_DELAY && d[0] <= MIN_DELAY * 2, "{:?}", d[0]);
        assert!(d.iter().all(|x| *x <= MAX_DELAY * 2), "{d:?}");
        assert!(
            d[20..].iter().all(|x| *x >= MAX_DELAY),
            "capped at the maximum: {d:?}"
        );
        let again: Vec<Duration> = backoff().take(40).collect();
        assert_ne!(d, again, "jittered");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_it_succeeds_or_the_caller_gives_up() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = Arc::clone(&calls);
        let never = CancellationToken::new();
        let got = until_ok("op", &never, || {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move { if n < 3 { Err("not yet") } else { Ok(n) } }
        })
        .await;
        assert_eq!(got, Some(3));
        assert_eq!(calls.load(Ordering::SeqCst), 4);

        let give_up = CancellationToken::new();
        let g = give_up.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            g.cancel();
        });
        let got: Option<()> = until_ok("op", &give_up, || async { Err("down") }).await;
        assert_eq!(got, None, "gave up when told to");
    }
}
