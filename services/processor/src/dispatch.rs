//! Dispatch and key-ordered lanes.
//!
//! **Dispatch.** The poll thread feeds one channel per priority; the dispatcher drains them (in
//! weighted order, default 6 critical : 3 default : 1 low) into lanes at once. Nothing here waits
//! for an execution slot: a record asks for one only when it is ready to run ([`crate::slots`]),
//! and the slots are granted by priority weight, then round-robin across tenants. The in-flight
//! bound (`consumer.max_in_flight`, enforced by pausing partitions) bounds what waits.
//!
//! **Lanes** (the Confluent Parallel Consumer idea). Records fan out by record key: each record
//! runs in its own task, chained after the previous record of the same key, so one key is
//! strictly sequential in offset order while different keys run in parallel far beyond the
//! partition count. A lane is just the map entry of its last record; it disappears when that
//! record releases it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::FutureExt;
use futures::future::Shared;
use parking_lot::Mutex;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::consumer::Delivery;
use crate::process::Processor;

type Done = Shared<oneshot::Receiver<()>>;

/// Per-key chains of records.
#[derive(Default)]
pub struct Lanes {
    map: Mutex<HashMap<Vec<u8>, (u64, Done)>>,
    seq: AtomicU64,
}

/// A record's place in its lane: dropping (or [`LaneTicket::release`]) lets the next record of
/// the key start.
pub struct LaneTicket {
    lanes: Arc<Lanes>,
    key: Vec<u8>,
    id: u64,
    done: Option<oneshot::Sender<()>>,
}

impl LaneTicket {
    /// Releases the lane now.
    pub fn release(&mut self) {
        if let Some(tx) = self.done.take() {
            let _ = tx.send(());
            let mut map = self.lanes.map.lock();
            if map.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
                map.remove(&self.key);
            }
        }
    }
}

impl Drop for LaneTicket {
    fn drop(&mut self) {
        self.release();
    }
}

impl Lanes {
    /// Enters the lane of `key`: returns the ticket and what to wait for first.
    pub fn enter(self: &Arc<Self>, key: Vec<u8>) -> (LaneTicket, Option<Done>) {
        let (tx, rx) = oneshot::channel();
        let id = self.seq.fetch_add(1, Ordering::Relaxed);
        let prev = self
            .map
            .lock()
            .insert(key.clone(), (id, rx.shared()))
            .map(|(_, d)| d);
        (
            LaneTicket {
                lanes: self.clone(),
                key,
                id,
                done: Some(tx),
            },
            prev,
        )
    }

    /// Keys with work queued or running.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// Whether no lane is active.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The weighted round-robin order of channel indexes, spread out (e.g. 6/3/1 ->
/// `0 1 0 0 1 0 2 0 1 0`-like), so a low-weight channel is not served in bursts.
pub fn weighted_order(weights: [u32; 3]) -> Vec<usize> {
    let total: u32 = weights.iter().sum();
    let mut credit = [0i64; 3];
    let mut order = Vec::with_capacity(total as usize);
    // Smooth weighted round-robin (as in nginx).
    for _ in 0..total {
        for (c, w) in credit.iter_mut().zip(weights) {
            *c += i64::from(w);
        }
        let best = (0..3)
            .max_by_key(|&i| (credit[i], -(i as i64)))
            .unwrap_or(0);
        credit[best] -= i64::from(total);
        order.push(best);
    }
    order
}

/// The dispatcher task.
pub struct Dispatcher {
    /// Critical, default, low.
    pub rx: [UnboundedReceiver<Delivery>; 3],
    /// Weighted order of channels.
    pub order: Vec<usize>,
    /// Key lanes.
    pub lanes: Arc<Lanes>,
    /// The record processor.
    pub processor: Arc<Processor>,
    /// Stops dispatching.
    pub stop: CancellationToken,
}

impl Dispatcher {
    /// Dispatches until `stop`, then abandons whatever is still queued.
    pub async fn run(mut self) {
        let mut next = 0usize;
        loop {
            if self.stop.is_cancelled() {
                break;
            }
            let mut picked = None;
            for k in 0..self.order.len() {
                let ch = self.order[(next + k) % self.order.len()];
                if let Ok(d) = self.rx[ch].try_recv() {
                    next = (next + k + 1) % self.order.len();
                    picked = Some(d);
                    break;
                }
            }
            let d = match picked {
                Some(d) => d,
                None => {
                    let [c, d, l] = &mut self.rx;
                    let got = tokio::select! {
                        biased;
                        () = self.stop.cancelled() => None,
                        Some(x) = c.recv() => Some(x),
                        Some(x) = d.recv() => Some(x),
                        Some(x) = l.recv() => Some(x),
                        else => None,
                    };
                    match got {
                        Some(d) => d,
                        None => break,
                    }
                }
            };
            self.dispatch(d);
        }
        for rx in &mut self.rx {
            rx.close();
            while let Ok(d) = rx.try_recv() {
                self.processor.abandon(&d.lease);
            }
        }
        tracing::info!("dispatcher stopped");
    }

    fn dispatch(&self, d: Delivery) {
        let p = self.processor.clone();
        match &d.envelope {
            Ok(e) if e.kind == dispatch_core::EnvelopeKind::Cancel => {
                // Cancels bypass the lanes so they reach a queued or running submit of the task.
                tokio::spawn(async move { p.cancel(d).await });
            }
            Ok(_) => {
                let (ticket, prev) = self.lanes.enter(d.key.clone());
                tokio::spawn(async move { p.in_lane(d, prev, ticket).await });
            }
            Err(_) => {
                tokio::spawn(async move { p.poison(d).await });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_order_matches_the_weights_and_interleaves() {
        let o = weighted_order([6, 3, 1]);
        assert_eq!(o.len(), 10);
        assert_eq!(o.iter().filter(|&&c| c == 0).count(), 6);
        assert_eq!(o.iter().filter(|&&c| c == 1).count(), 3);
        assert_eq!(o.iter().filter(|&&c| c == 2).count(), 1);
        assert!(o.windows(4).all(|w| w.iter().any(|&c| c != 0)), "{o:?}");
    }

    #[tokio::test]
    async fn lanes_chain_same_keys_only() {
        let lanes = Arc::new(Lanes::default());
        let (mut a, prev_a) = lanes.enter(b"k".to_vec());
        assert!(prev_a.is_none());
        let (_b, prev_b) = lanes.enter(b"k".to_vec());
        let (_c, prev_c) = lanes.enter(b"other".to_vec());
        assert!(prev_c.is_none());
        let prev_b = prev_b.expect("chained");
        assert!(prev_b.clone().now_or_never().is_none(), "waits for a");
        a.release();
        assert!(prev_b.now_or_never().is_some());
        assert_eq!(lanes.len(), 2);
    }
}
