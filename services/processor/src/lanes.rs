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
//! record releases it. A record that leaves without running (its partition was revoked while it
//! waited) hands the lane on only once the records ahead of it have: records of one key come from
//! several partitions (the task topic and the retry topics), which are revoked independently.

use foldhash::HashMap;
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
/// the key start, once every record before it in the lane has released too.
pub struct LaneTicket {
    lanes: Arc<Lanes>,
    key: Vec<u8>,
    id: u64,
    done: Option<oneshot::Sender<()>>,
    /// The previous record's release (what this one waited for, or would have).
    prev: Option<Done>,
}

impl LaneTicket {
    /// Releases the lane now, or, when this record leaves before the one ahead of it released
    /// (its partition was revoked while it waited: a retry record's partition moves on its own),
    /// as soon as that one does. A lane is a chain: a record leaving early must not let the
    /// records behind it, or a record entering later, overtake the ones still ahead of it.
    pub fn release(&mut self) {
        let Some(tx) = self.done.take() else {
            return;
        };
        let pending = self
            .prev
            .take()
            .filter(|p| p.peek().is_none() && !cfg!(feature = "fault-lane-release-early"));
        let key = std::mem::take(&mut self.key);
        match (pending, tokio::runtime::Handle::try_current()) {
            (Some(prev), Ok(rt)) => {
                let (lanes, id) = (self.lanes.clone(), self.id);
                rt.spawn(async move {
                    let _ = prev.await;
                    lanes.leave(&key, id, tx);
                });
            }
            // No runtime: the process is stopping and nothing runs any more.
            _ => self.lanes.leave(&key, self.id, tx),
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
                prev: prev.clone(),
            },
            prev,
        )
    }

    /// Record `id` of `key` is done: the next one may start; the lane goes when it was the last.
    fn leave(&self, key: &[u8], id: u64, done: oneshot::Sender<()>) {
        let _ = done.send(());
        let mut map = self.map.lock();
        if map.get(key).is_some_and(|(last, _)| *last == id) {
            map.remove(key);
        }
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
            Ok(e) => {
                let (ticket, prev) = self.lanes.enter(lane_key(e.tenant.as_str(), &d.key));
                tokio::spawn(async move { p.in_lane(d, prev, ticket).await });
            }
            Err(_) => {
                tokio::spawn(async move { p.poison(d).await });
            }
        }
    }
}

/// A lane per (tenant, business key): per-key order is one tenant's, so another tenant's task on
/// the same business key (same record key, same partition) never waits behind it. A tenant has no
/// NUL byte (`Tenant::parse`), so the two parts cannot run into each other.
fn lane_key(tenant: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + 1 + key.len());
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_are_per_tenant_and_key() {
        assert_ne!(lane_key("acme", b"order-1"), lane_key("globex", b"order-1"));
        assert_eq!(lane_key("acme", b"order-1"), lane_key("acme", b"order-1"));
    }

    #[test]
    fn weighted_order_matches_the_weights_and_interleaves() {
        let o = weighted_order([6, 3, 1]);
        assert_eq!(o.len(), 10);
        assert_eq!(o.iter().filter(|&&c| c == 0).count(), 6);
        assert_eq!(o.iter().filter(|&&c| c == 1).count(), 3);
        assert_eq!(o.iter().filter(|&&c| c == 2).count(), 1);
        assert!(o.windows(4).all(|w| w.iter().any(|&c| c != 0)), "{o:?}");
    }

    /// A record that leaves its lane before its predecessor finished (its partition was revoked
    /// while it waited: a retry record, whose partition moves on its own) must not let the records
    /// behind it, or a record entering later, start ahead of that predecessor.
    #[tokio::test]
    async fn a_record_leaving_early_keeps_its_successors_behind_its_predecessor() {
        let lanes = Arc::new(Lanes::default());
        let (mut a, _) = lanes.enter(b"k".to_vec());
        let (b, prev_b) = lanes.enter(b"k".to_vec());
        let (_c, prev_c) = lanes.enter(b"k".to_vec());
        let prev_c = prev_c.expect("chained behind b");
        drop(prev_b);
        drop(b); // abandoned while a still runs
        tokio::task::yield_now().await;
        assert!(
            prev_c.clone().now_or_never().is_none(),
            "c still waits for a"
        );
        let (_d, prev_d) = lanes.enter(b"k".to_vec());
        let prev_d = prev_d.expect("d is chained");
        a.release();
        tokio::time::timeout(std::time::Duration::from_secs(5), prev_c)
            .await
            .expect("c runs once a is done")
            .expect("released");
        assert!(prev_d.now_or_never().is_none(), "d waits for c");

        // The last record of a chain leaving early: a later entrant still waits for the rest.
        let (mut x, _) = lanes.enter(b"j".to_vec());
        let (y, _) = lanes.enter(b"j".to_vec());
        drop(y);
        tokio::task::yield_now().await;
        let (_z, prev_z) = lanes.enter(b"j".to_vec());
        let prev_z = prev_z.expect("z waits for x");
        assert!(prev_z.clone().now_or_never().is_none());
        x.release();
        tokio::time::timeout(std::time::Duration::from_secs(5), prev_z)
            .await
            .expect("z runs once x is done")
            .expect("released");
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
