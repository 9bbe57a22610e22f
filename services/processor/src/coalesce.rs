//! Coalescing of concurrent small requests into one batch call.
//!
//! Hundreds of records run at once, and several of them ask MySQL one small thing each (their
//! task's stored state; a ledger row). One statement per ask would cost a round trip and a pool
//! connection each; a [`Coalescer`] gathers the asks that arrive within `max_delay` (or until
//! `max_items`) and answers all of them from one call. Calls for successive batches run
//! concurrently (bounded by the pool) while the next batch gathers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

type Reply<R> = oneshot::Sender<Result<R, String>>;

/// Sends asks to a coalescing task. Cloning is cheap; the task ends when every clone is dropped.
pub struct Coalescer<T, R> {
    tx: mpsc::Sender<(T, Reply<R>)>,
}

impl<T, R> Clone for Coalescer<T, R> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T, R> Coalescer<T, R>
where
    T: Send + 'static,
    R: Send + 'static,
{
    /// Spawns the task. `call` gets a batch and must answer each item, in order: its result has
    /// exactly as many entries as the batch (anything else fails every item of the batch).
    pub fn spawn<F, Fut>(max_items: usize, max_delay: Duration, call: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<R>, String>> + Send + 'static,
    {
        let max_items = max_items.max(1);
        let (tx, rx) = mpsc::channel(max_items * 4);
        tokio::spawn(run(rx, max_items, max_delay, Arc::new(call)));
        Self { tx }
    }

    /// Asks, and waits for the answer of the batch this ask landed in.
    ///
    /// # Errors
    /// The batch call failed (its message), or the task is gone.
    pub async fn call(&self, item: T) -> Result<R, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((item, tx))
            .await
            .map_err(|_| "coalescer stopped".to_string())?;
        rx.await.map_err(|_| "coalescer stopped".to_string())?
    }
}

async fn run<T, R, F, Fut>(
    mut rx: mpsc::Receiver<(T, Reply<R>)>,
    max_items: usize,
    max_delay: Duration,
    call: Arc<F>,
) where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<R>, String>> + Send + 'static,
{
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + max_delay;
        while batch.len() < max_items {
            tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => batch.push(r),
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let (items, replies): (Vec<T>, Vec<Reply<R>>) = batch.into_iter().unzip();
        let call = call.clone();
        tokio::spawn(async move {
            let n = items.len();
            match call(items).await {
                Ok(results) if results.len() == n => {
                    for (reply, r) in replies.into_iter().zip(results) {
                        let _ = reply.send(Ok(r));
                    }
                }
                Ok(results) => {
                    let msg = format!("batch of {n} answered with {} results", results.len());
                    for reply in replies {
                        let _ = reply.send(Err(msg.clone()));
                    }
                }
                Err(msg) => {
                    for reply in replies {
                        let _ = reply.send(Err(msg.clone()));
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_asks_share_one_call_and_each_gets_its_own_answer() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let co = Coalescer::spawn(100, Duration::from_millis(20), move |xs: Vec<u32>| {
            c.fetch_add(1, Ordering::SeqCst);
            async move { Ok(xs.into_iter().map(|x| x * 2).collect()) }
        });
        let answers = futures::future::join_all((0..50u32).map(|i| {
            let co = co.clone();
            async move { co.call(i).await }
        }))
        .await;
        for (i, a) in answers.into_iter().enumerate() {
            assert_eq!(a, Ok(i as u32 * 2));
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "50 asks within the window: one call"
        );
    }

    #[tokio::test]
    async fn batches_are_capped_and_failures_reach_every_ask_of_their_batch() {
        let co = Coalescer::spawn(4, Duration::from_millis(50), |xs: Vec<u32>| async move {
            if xs.contains(&13) {
                Err("unlucky".to_string())
            } else if xs.contains(&7) {
                Ok(vec![0; xs.len() + 1])
            } else {
                Ok(vec![xs.len() as u32; xs.len()])
            }
        });
        let sizes = futures::future::join_all((0..6u32).map(|i| {
            let co = co.clone();
            async move { co.call(i).await }
        }))
        .await;
        assert!(
            sizes.iter().all(|s| matches!(s, Ok(n) if *n <= 4)),
            "{sizes:?}"
        );
        assert_eq!(co.call(13).await, Err("unlucky".to_string()));
        let wrong = co
            .call(7)
            .await
            .expect_err("a miscounted answer fails the batch");
        assert!(wrong.contains("answered with 2 results"), "{wrong}");
    }

    // Paused clock: tokio moves time forward only when every task waits, so a window is
    // exactly its length, with no sleeping and no slack for a slow machine.

    #[tokio::test(start_paused = true)]
    async fn an_ask_waits_the_window_for_company_and_no_longer() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let co = Coalescer::spawn(100, Duration::from_millis(20), move |xs: Vec<u32>| {
            c.fetch_add(1, Ordering::SeqCst);
            async move { Ok(xs) }
        });
        let t0 = tokio::time::Instant::now();
        let first = {
            let co = co.clone();
            tokio::spawn(async move { (co.call(1).await, t0.elapsed()) })
        };
        // 15 ms into the first ask's window: the second joins its call.
        tokio::time::sleep(Duration::from_millis(15)).await;
        let second = co.call(2).await;
        assert_eq!(second, Ok(2));
        assert_eq!(
            t0.elapsed(),
            Duration::from_millis(20),
            "answered when the window closed"
        );
        let (first, waited) = first.await.expect("task");
        assert_eq!((first, waited), (Ok(1), Duration::from_millis(20)));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // An ask after the window opens a window of its own.
        let t1 = tokio::time::Instant::now();
        assert_eq!(co.call(3).await, Ok(3));
        assert_eq!(t1.elapsed(), Duration::from_millis(20));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_without_waiting_out_the_window() {
        let co = Coalescer::spawn(
            4,
            Duration::from_secs(60),
            |xs: Vec<u32>| async move { Ok(xs) },
        );
        let t0 = tokio::time::Instant::now();
        let answers = futures::future::join_all((0..4u32).map(|i| {
            let co = co.clone();
            async move { co.call(i).await }
        }))
        .await;
        assert_eq!(answers, vec![Ok(0), Ok(1), Ok(2), Ok(3)]);
        assert_eq!(
            t0.elapsed(),
            Duration::ZERO,
            "four asks fill the batch: no wait"
        );
    }
}
