//! The writer's events: one `TaskEvent` per landed write, enqueued in batch order, and the
//! waiters of a batch released once all of its events are acknowledged.

use std::time::Duration;

use dispatch_core::Headers;
use dispatch_core::envelope::header;
use dispatch_proto::v1 as pb;
use dispatch_store::tasks::TaskWrite;
use prost::Message;
use tokio_util::sync::CancellationToken;

use super::Batch;
use crate::metrics::{EVENTS, FINISHED};
use crate::produce::Producer;

/// An enqueued event: its acknowledgement, and what a re-send needs.
pub(super) struct PendingEvent {
    ack: futures::future::BoxFuture<
        'static,
        Result<crate::produce::Delivered, rdkafka::error::KafkaError>,
    >,
    key: String,
    value: Vec<u8>,
    headers: Headers,
}

/// Enqueues the event of every landed write of `batch`, in order.
pub(super) fn enqueue_events(
    producer: &Producer,
    topic: &str,
    batch: &Batch,
    landed: &[bool],
) -> Vec<PendingEvent> {
    batch
        .entries
        .iter()
        .zip(landed)
        .filter(|(_, l)| **l)
        .filter_map(|(e, _)| e.write.as_ref().map(|w| (w, &e.trace)))
        .map(|(w, trace)| {
            if w.state.is_terminal() {
                FINISHED.with_label_values(&[w.state.as_str()]).inc();
            }
            let key = w.task_id.to_string();
            let headers = event_headers(trace, &key);
            let value = event(w).encode_to_vec();
            let ack = producer.enqueue("events", topic, key.as_bytes(), &value, &headers);
            PendingEvent {
                ack,
                key,
                value,
                headers,
            }
        })
        .collect()
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

/// Waits for the batch's events (re-sending a failed one a few times), then wakes its waiters.
pub(super) async fn release_after(
    producer: Producer,
    topic: String,
    batch: Batch,
    pending: Vec<PendingEvent>,
    abort: CancellationToken,
) {
    let acks = pending.into_iter().map(|p| {
        let (producer, topic) = (producer.clone(), topic.clone());
        async move {
            let mut result = p.ack.await;
            for attempt in 1..5u32 {
                if result.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                result = producer
                    .send("events", &topic, p.key.as_bytes(), &p.value, &p.headers)
                    .await;
            }
            match result {
                Ok(_) => EVENTS.inc(),
                Err(e) => tracing::error!(error = %e, task_id = %p.key, "state-change event lost"),
            }
        }
    });
    // The producer has no delivery timeout (Kafka down: it retries in order until Kafka is back),
    // so a hard stop must be able to give up waiting: the waiters are dropped unreleased and
    // their records are read again after the restart.
    tokio::select! {
        _ = futures::future::join_all(acks) => {}
        () = abort.cancelled() => {
            tracing::warn!(rows = batch.len(), "stopping before the batch's events were acknowledged; its records will be read again");
            return;
        }
    }
    for e in batch.entries {
        for w in e.waiters {
            let _ = w.send(());
        }
    }
}

/// The event of a landed write; the snapshot is built from the write itself (no read).
pub fn event(w: &TaskWrite) -> pb::TaskEvent {
    let ts = |t| dispatch_core::time::to_proto(t);
    let task = pb::Task {
        task_id: w.task_id.to_string(),
        tenant: w.tenant.clone(),
        business_key: w.business_key.clone(),
        task_type: w.task_type.clone(),
        payload: w.payload.clone(),
        priority: w.priority.to_proto() as i32,
        state: w.state.to_proto() as i32,
        attempts: w.attempts,
        max_attempts: w.max_attempts,
        run_at: w.run_at.map(ts),
        deadline: w.deadline_at.map(ts),
        last_error: w.last_error.chars().take(1024).collect(),
        result: w.result.clone().unwrap_or_default(),
        version: w.version,
        created_at: Some(ts(w.created_at)),
        updated_at: Some(ts(w.updated_at)),
        finished_at: w.state.is_terminal().then(|| ts(w.updated_at)),
        idempotency_key: w.idempotency_key.clone().unwrap_or_default(),
    };
    pb::TaskEvent {
        task_id: w.task_id.to_string(),
        state: w.state.to_proto() as i32,
        version: w.version,
        occurred_at: Some(ts(w.updated_at)),
        task: Some(task),
    }
}
