//! Execution slots, handed out fairly.
//!
//! A record asks for a slot only once it is ready to run: its key's lane is free, its type is not
//! paused and it holds its type's concurrency permit. Waiting for any of those holds no slot, so a
//! hot key, a limited type or a paused type can never take the slots other work needs.
//!
//! Free slots go to waiters in two levels of order:
//! 1. **Priority**: smooth weighted round-robin over the priorities that have waiters (6/3/1 by
//!    default), so under saturation the executions per priority follow the weights, an idle
//!    priority costs nothing, and a critical record waits behind at most one round of others.
//! 2. **Tenant**, within a priority: round-robin over the tenants that have waiters, so one
//!    tenant flooding a priority delays another tenant's next record of that priority by at most
//!    one grant per other waiting tenant, whatever the size of its backlog.

use std::collections::VecDeque;

use foldhash::HashMap;
use std::sync::Arc;

use dispatch_core::Priority;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::lanes::weighted_order;

/// The execution slots of one processor.
pub struct Slots {
    inner: Mutex<Inner>,
}

struct Inner {
    free: usize,
    /// Per priority (critical, default, low): tenants in round-robin order, each with its FIFO.
    queues: [Fair; 3],
    order: Vec<usize>,
    next: usize,
}

#[derive(Default)]
struct Fair {
    ring: VecDeque<Arc<str>>,
    waiters: HashMap<Arc<str>, VecDeque<oneshot::Sender<()>>>,
}

impl Fair {
    fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    fn push(&mut self, tenant: &str, tx: oneshot::Sender<()>) {
        // The fault build serves every tenant from one queue: first come, first served.
        let tenant = if cfg!(feature = "fault-fifo-tenants") {
            ""
        } else {
            tenant
        };
        match self.waiters.get_mut(tenant) {
            Some(q) => q.push_back(tx),
            None => {
                let t: Arc<str> = Arc::from(tenant);
                self.ring.push_back(t.clone());
                self.waiters.insert(t, VecDeque::from([tx]));
            }
        }
    }

    /// The next waiter: the front tenant's oldest, then that tenant goes to the back.
    fn pop(&mut self) -> Option<oneshot::Sender<()>> {
        let t = self.ring.pop_front()?;
        let q = self.waiters.get_mut(&t)?;
        let tx = q.pop_front();
        if q.is_empty() {
            self.waiters.remove(&t);
        } else {
            self.ring.push_back(t);
        }
        tx
    }

    fn len(&self) -> usize {
        self.waiters.values().map(VecDeque::len).sum()
    }
}

fn index(p: Priority) -> usize {
    match p {
        Priority::Critical => 0,
        Priority::Default => 1,
        Priority::Low => 2,
    }
}

/// A held execution slot; dropping it hands the slot to the next waiter.
pub struct Slot {
    slots: Arc<Slots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release();
    }
}

/// A pending [`Slots::acquire`]: if it is dropped after a slot was granted to it but before it was
/// taken, the slot goes back.
struct Waiting {
    rx: Option<oneshot::Receiver<()>>,
    slots: Arc<Slots>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if rx.try_recv().is_ok() {
                self.slots.release();
            }
        }
    }
}

impl Slots {
    /// `n` slots, granted by priority `weights` (critical, default, low).
    pub fn new(n: usize, weights: [u32; 3]) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                free: n,
                queues: Default::default(),
                order: weighted_order(weights),
                next: 0,
            }),
        })
    }

    /// Waits for a slot for a record of `priority` and `tenant`. Cancel-safe: dropping the future
    /// gives up the place (and a slot granted meanwhile).
    pub async fn acquire(self: &Arc<Self>, priority: Priority, tenant: &str) -> Slot {
        let rx = {
            let mut g = self.inner.lock();
            if g.free > 0 && g.queues.iter().all(Fair::is_empty) {
                g.free -= 1;
                return Slot {
                    slots: self.clone(),
                };
            }
            let (tx, rx) = oneshot::channel();
            g.queues[index(priority)].push(tenant, tx);
            rx
        };
        // A slot may have been free while others waited (their grant raced with us): hand it on.
        self.grant_free();
        let mut w = Waiting {
            rx: Some(rx),
            slots: self.clone(),
        };
        let granted = match w.rx.as_mut() {
            Some(rx) => rx.await.is_ok(),
            None => false,
        };
        w.rx = None;
        debug_assert!(granted, "the sender is only dropped after a grant");
        Slot {
            slots: self.clone(),
        }
    }

    /// Slots free right now.
    pub fn available(&self) -> usize {
        self.inner.lock().free
    }

    /// Records waiting for a slot, per priority (critical, default, low).
    pub fn waiting(&self) -> [usize; 3] {
        let g = self.inner.lock();
        [g.queues[0].len(), g.queues[1].len(), g.queues[2].len()]
    }

    fn release(&self) {
        self.inner.lock().free += 1;
        self.grant_free();
    }

    /// Hands free slots to waiters, in weighted priority then tenant order.
    fn grant_free(&self) {
        let mut g = self.inner.lock();
        while g.free > 0 {
            let Some(tx) = g.next_waiter() else {
                return;
            };
            g.free -= 1;
            if tx.send(()).is_err() {
                // That waiter gave up: the slot stays free for the next one.
                g.free += 1;
            }
        }
    }
}

impl Inner {
    fn next_waiter(&mut self) -> Option<oneshot::Sender<()>> {
        let n = self.order.len();
        for k in 0..n {
            let ch = self.order[(self.next + k) % n];
            if let Some(tx) = self.queues[ch].pop() {
                self.next = (self.next + k + 1) % n;
                return Some(tx);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    /// Queues `n` waiters of each (priority, tenant) and returns who is granted, in order, as
    /// slots are released one at a time.
    async fn grant_order(
        slots: &Arc<Slots>,
        waiters: &[(Priority, &str, usize)],
        grants: usize,
    ) -> Vec<(Priority, String)> {
        let held = slots.acquire(Priority::Low, "holder").await;
        let mut futs = Vec::new();
        for (p, t, n) in waiters {
            for _ in 0..*n {
                let s = slots.clone();
                let (p, t) = (*p, (*t).to_owned());
                futs.push(
                    async move {
                        let slot = s.acquire(p, &t).await;
                        (p, t, slot)
                    }
                    .boxed(),
                );
            }
        }
        // Register every waiter before any slot frees.
        for f in &mut futs {
            assert!(f.as_mut().now_or_never().is_none());
        }
        drop(held);
        let mut out = Vec::new();
        let mut futs: Vec<_> = futs.into_iter().map(Some).collect();
        while out.len() < grants {
            let mut progressed = false;
            for f in futs.iter_mut() {
                if let Some((p, t, slot)) = f.as_mut().and_then(|fut| fut.as_mut().now_or_never()) {
                    out.push((p, t));
                    *f = None;
                    drop(slot);
                    progressed = true;
                    break;
                }
            }
            assert!(progressed, "a slot was free but nobody got it");
        }
        out
    }

    #[tokio::test]
    async fn grants_follow_the_priority_weights() {
        let slots = Slots::new(1, [6, 3, 1]);
        let out = grant_order(
            &slots,
            &[
                (Priority::Low, "a", 100),
                (Priority::Default, "a", 100),
                (Priority::Critical, "a", 100),
            ],
            100,
        )
        .await;
        let count = |p| out.iter().filter(|(q, _)| *q == p).count();
        assert_eq!(
            (
                count(Priority::Critical),
                count(Priority::Default),
                count(Priority::Low)
            ),
            (60, 30, 10)
        );
        // A critical record waits behind at most one round of others.
        let gaps = out
            .split(|(p, _)| *p == Priority::Critical)
            .map(<[_]>::len)
            .max();
        assert!(gaps <= Some(2), "{out:?}");
    }

    #[tokio::test]
    async fn a_flooding_tenant_does_not_push_another_back() {
        let slots = Slots::new(1, [6, 3, 1]);
        let out = grant_order(
            &slots,
            &[
                (Priority::Default, "noisy", 1000),
                (Priority::Default, "quiet", 5),
            ],
            12,
        )
        .await;
        let quiet: Vec<usize> = out
            .iter()
            .enumerate()
            .filter(|(_, (_, t))| t == "quiet")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(quiet, vec![1, 3, 5, 7, 9], "{out:?}");
    }

    #[tokio::test]
    async fn a_dropped_waiter_gives_its_grant_back() {
        let slots = Slots::new(1, [6, 3, 1]);
        let held = slots.acquire(Priority::Default, "a").await;
        let mut gone = slots.acquire(Priority::Default, "a").boxed();
        assert!(gone.as_mut().now_or_never().is_none());
        let mut next = slots.acquire(Priority::Default, "b").boxed();
        assert!(next.as_mut().now_or_never().is_none());
        drop(held);
        drop(gone);
        assert!(next.now_or_never().is_some(), "the slot moved on");
        assert_eq!(slots.available(), 1);
    }
}
