//! The writer's events: one `TaskEvent` per landed write, enqueued in batch order, and the
//! waiters of a batch released once all of its events are acknowledged.

use dispatch_core::Headers;
use dispatch_core::TaskState;
use dispatch_core::envelope::header;
use dispatch_proto::v1 as pb;
use dispatch_store::MySqlPool;
use prost::Message;
use tokio_util::sync::CancellationToken;

use std::collections::HashMap;

use super::Batch;
use super::owed::{Owed, Publisher, left_to_later};
use crate::metrics;
use crate::produce::{Out, Producer};

/// An enqueued event: its acknowledgement, and what a re-send needs.
pub(super) struct PendingEvent {
    ack: futures::future::BoxFuture<
        'static,
        Result<crate::produce::Delivered, rdkafka::error::KafkaError>,
    >,
    key: String,
    version: u64,
    headers: Headers,
    /// Handed to the client at once, in batch order (not the full-queue fallback).
    direct: bool,
}

/// Enqueues the event of every landed write of `batch`, in order: the row as the write left it.
/// A cancel's placeholder (a row ahead of its task's first write) is no task and has no event.
pub(super) fn enqueue_events(
    producer: &Producer,
    topic: &str,
    batch: &Batch,
    landed: Vec<Option<pb::Task>>,
) -> (Vec<PendingEvent>, u64) {
    // Read before the first hand-over: a rebuild after it shows in the count at settle time.
    let rebuilds = producer.rebuilds();
    let pending = batch
        .entries
        .iter()
        .zip(landed)
        .filter_map(|(e, task)| Some((task?, &e.trace)))
        .filter(|(task, _)| !task.task_type.is_empty())
        .filter(|(task, _)| !(cfg!(feature = "fault-drop-event") && dropped(task)))
        .map(|(task, trace)| {
            let ev = snapshot_event(task);
            if let Some(st) = TaskState::from_proto(ev.state()).filter(|s| s.is_terminal()) {
                metrics::task_finished(st);
                observe_completion(ev.task.as_ref(), st);
            }
            let key = ev.task_id.clone();
            let headers = event_headers(trace, &key);
            let version = ev.version;
            let value = ev.encode_to_vec();
            let (ack, direct) =
                producer.enqueue("events", Out::new(topic, key.as_bytes(), &value, &headers));
            PendingEvent {
                ack,
                key,
                version,
                headers,
                direct,
            }
        })
        .collect();
    (pending, rebuilds)
}

/// `dispatch_task_completion_seconds` of a terminal write.
fn observe_completion(task: Option<&pb::Task>, st: TaskState) {
    let Some(t) = task else { return };
    let time =
        |ts: Option<&dispatch_proto::Timestamp>| ts.and_then(dispatch_core::time::from_proto);
    let (Some(created), Some(finished)) = (
        time(t.created_at.as_ref()),
        time(t.finished_at.as_ref()).or_else(|| time(t.updated_at.as_ref())),
    ) else {
        return;
    };
    let priority = dispatch_core::Priority::from_proto_i32(t.priority).unwrap_or_default();
    metrics::task_completed(priority, st, created, time(t.run_at.as_ref()), finished);
}

/// The fault build's choice of events to drop: one task in 50, by id.
fn dropped(task: &pb::Task) -> bool {
    task.task_id.bytes().map(u32::from).sum::<u32>() % 50 == 0
}

/// The headers of a task's event: its trace context and its id (the record key).
pub(crate) fn event_headers(trace: &[(String, String)], task_id: &str) -> Headers {
    let mut headers = Headers::default();
    for (k, v) in trace {
        headers.set(k, v.as_bytes());
    }
    headers.set(header::TASK_ID, task_id);
    headers
}

/// Waits for the batch's events, then wakes its waiters. An event that failed is sent again as
/// the task's *current* row (read back from MySQL), never as the old value, until it is
/// acknowledged. Then [`settle`] makes sure no event of the batch became a task's stale last
/// event. Only a hard stop gives up, leaving the waiters unreleased so the records are read (and
/// their events published) again.
#[allow(clippy::too_many_arguments)]
pub(super) async fn release_after(
    producer: Producer,
    pool: MySqlPool,
    topic: String,
    batch: Batch,
    landed: Vec<bool>,
    pending: Vec<PendingEvent>,
    abort: CancellationToken,
    (owed, seq, rebuilds): (std::sync::Arc<Owed>, u64, u64),
) {
    let (producer_ref, pool_ref, topic_ref) = (&producer, &pool, topic.as_str());
    let acks = pending.into_iter().map(|p| {
        // Borrowed: only a failed event needs them, and they outlive the join below.
        let (producer, pool, topic) = (producer_ref, pool_ref, topic_ref);
        async move {
            let mut result = p.ack.await.map(|_| p.version).map_err(|e| e.to_string());
            let mut delays = dispatch_runtime::retry::backoff();
            let mut direct = p.direct;
            loop {
                match result {
                    Ok(version) => {
                        metrics::event_published();
                        return Published {
                            key: p.key,
                            version,
                            headers: p.headers,
                            direct,
                        };
                    }
                    Err(e) => {
                        direct = false;
                        tracing::warn!(error = %e, task_id = %p.key, "state-change event not delivered; sending the task's current row again");
                        let delay = delays.next().unwrap_or(dispatch_runtime::retry::MAX_DELAY);
                        tokio::time::sleep(delay).await;
                        result = resend_current(producer, pool, topic, &p.key, &p.headers).await;
                    }
                }
            }
        }
    });
    // The producer has no delivery timeout (Kafka down: it retries in order until Kafka is back),
    // so a hard stop must be able to give up waiting: the waiters are dropped unreleased and
    // their records are read again after the restart.
    // A write that did not land may still be the row's last change: a commit whose
    // acknowledgement was lost (MySQL went away mid-commit) is retried, and the retry finds the
    // row already written and lands nothing. Its event is owed all the same: publish those rows as
    // they are (rare: replays, zombies, ambiguous commits).
    let unlanded: Vec<Published> = batch
        .entries
        .iter()
        .zip(&landed)
        .filter(|(_, l)| !**l)
        .filter_map(|(e, _)| e.write.as_ref())
        .map(|w| {
            let key = w.task_id.to_string();
            // Nothing of this batch's was published for it, so nothing is out of order with a
            // later batch's event (it is fenced out when a later batch's write got there first:
            // concurrent transactions commit in any order).
            Published {
                headers: event_headers(&[], &key),
                key,
                version: 0,
                direct: true,
            }
        })
        .collect();
    let done = async {
        let mut published = futures::future::join_all(acks).await;
        published.extend(unlanded);
        settle(
            &producer,
            &pool,
            &topic,
            published,
            Publisher::Batch {
                owed: &owed,
                seq,
                rebuilds,
            },
        )
        .await;
    };
    tokio::select! {
        () = done => {}
        () = abort.cancelled() => {
            tracing::warn!(rows = batch.len(), "stopping before the batch's events were acknowledged; its records will be read again");
            return;
        }
    }
    owed.settled(seq);
    for (e, landed) in batch.entries.into_iter().zip(landed) {
        for w in e.waiters {
            let _ = w.send(landed);
        }
    }
}

/// An acknowledged event: the task (its id, the record key), the version it carried, and its
/// headers.
pub(crate) struct Published {
    /// Task id (the record key).
    pub key: String,
    /// Version the event carried.
    pub version: u64,
    /// Headers it was sent with.
    pub headers: Headers,
    /// Nothing of this publisher's for the task is out of order with a later batch's events:
    /// acknowledged from a batch's in-order hand-over, or a batch's write that did not land
    /// (nothing published); `false` for anything else (see [`Owed`]).
    pub direct: bool,
}

/// Makes the last event of each task in `published` equal its row. Several processes publish
/// one task's events (the instance that ran attempt 1, the one that ran its retry, the
/// scheduler), so an acknowledged event may have landed after a newer one. After its events are
/// acknowledged, a publisher reads the rows; where a row is newer than what it published, it
/// publishes the row as it is now and checks again. Every publisher does this after every
/// acknowledgement, so whichever event lands last, its publisher sees the latest row afterwards,
/// and the topic ends with it. A row that a later batch of the same writer committed is left to
/// that batch (see [`Owed`]). An event of a final version (SUCCEEDED, CANCELLED: no write replaces
/// such a row) needs no read: its row can only be the same or gone.
pub(crate) async fn settle(
    producer: &Producer,
    pool: &MySqlPool,
    topic: &str,
    mut published: Vec<Published>,
    by: Publisher<'_>,
) {
    let mut delays = dispatch_runtime::retry::backoff();
    loop {
        // A final version (SUCCEEDED, CANCELLED) is never replaced, so an event that carried one
        // is its task's last for good: only the others need their rows read. Most events of a
        // busy processor are final, and this read was one of the three row lookups per task.
        published.retain(|p| !dispatch_core::version::is_final(p.version));
        if published.is_empty() {
            break;
        }
        let ids: Vec<dispatch_core::TaskId> = published
            .iter()
            .filter_map(|p| p.key.parse().ok())
            .collect();
        let stored = match dispatch_store::tasks::states(pool, &ids).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read back the rows of published events; retrying");
                let delay = delays.next().unwrap_or(dispatch_runtime::retry::MAX_DELAY);
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        let rebuilds_now = producer.rebuilds();
        let direct: std::collections::HashSet<&str> = published
            .iter()
            .filter(|p| p.direct)
            .map(|p| p.key.as_str())
            .collect();
        let newer: HashMap<String, u64> = stored
            .into_iter()
            .filter(|(_, s)| !s.placeholder)
            .filter_map(|(id, s)| {
                let key = id.to_string();
                let in_order = direct.contains(key.as_str());
                (!left_to_later(by, rebuilds_now, in_order, id, s.stamp()))
                    .then_some((key, s.version))
            })
            .collect();
        drop(direct);
        published.retain(|p| newer.get(&p.key).is_some_and(|v| *v != p.version));
        for p in &mut published {
            metrics::event_republished();
            // A re-send is in no order with the later batches' events.
            p.direct = false;
            match resend_current(producer, pool, topic, &p.key, &p.headers).await {
                Ok(v) => p.version = v,
                Err(e) => {
                    tracing::warn!(error = %e, task_id = %p.key, "cannot publish the task's current row; retrying");
                    let delay = delays.next().unwrap_or(dispatch_runtime::retry::MAX_DELAY);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// Publishes the task's row as it is now, waits for the acknowledgement and returns the version
/// it carried.
async fn resend_current(
    producer: &Producer,
    pool: &MySqlPool,
    topic: &str,
    key: &str,
    headers: &Headers,
) -> Result<u64, String> {
    let id: dispatch_core::TaskId = key.parse().map_err(|e| format!("{e}"))?;
    let snap = dispatch_store::tasks::snapshots(pool, &[id])
        .await
        .map_err(|e| e.to_string())?;
    let Some(task) = snap.into_iter().next().map(|s| s.task) else {
        return Ok(0);
    };
    let version = task.version;
    let value = snapshot_event(task).encode_to_vec();
    producer
        .send("events", Out::new(topic, key.as_bytes(), &value, headers))
        .await
        .map(|_| version)
        .map_err(|e| e.to_string())
}

/// The event of a task's row as stored (see `dispatch_store::tasks::snapshots`).
pub fn snapshot_event(task: pb::Task) -> pb::TaskEvent {
    pb::TaskEvent {
        task_id: task.task_id.clone(),
        state: task.state,
        version: task.version,
        occurred_at: task.updated_at,
        task: Some(task),
    }
}
