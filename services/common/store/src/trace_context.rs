//! `tasks.trace_context`: the W3C trace context a task was submitted with, kept while it waits
//! SCHEDULED so the scheduler publishes it within the submit's trace. Stored as a JSON object of
//! `traceparent` (required) and `tracestate`.

use dispatch_core::TaskId;
use sqlx::{MySql, QueryBuilder};

use crate::Result;

/// Keeps the trace context of tasks stored `scheduled`, for the scheduler to publish them in
/// their submit's trace. `traces` pairs a task with its `traceparent`/`tracestate` pairs; rows
/// that are no longer `scheduled` are left alone. Call in the transaction of their upsert.
///
/// # Errors
/// Database errors.
pub async fn set(
    conn: &mut sqlx::MySqlConnection,
    traces: &[(TaskId, &[(String, String)])],
) -> Result<()> {
    let encoded: Vec<(TaskId, String)> = traces
        .iter()
        .filter_map(|(id, pairs)| encode(pairs).map(|t| (*id, t)))
        .collect();
    if encoded.is_empty() {
        return Ok(());
    }
    let mut qb: QueryBuilder<MySql> =
        QueryBuilder::new("UPDATE tasks SET trace_context = CASE task_id");
    for (id, trace) in &encoded {
        qb.push(" WHEN ")
            .push_bind(id.as_bytes().to_vec())
            .push(" THEN ")
            .push_bind(trace.clone());
    }
    qb.push(" END WHERE state = 'scheduled' AND task_id IN (");
    let mut sep = qb.separated(", ");
    for (id, _) in &encoded {
        sep.push_bind(id.as_bytes().to_vec());
    }
    qb.push(")");
    qb.build().execute(&mut *conn).await?;
    Ok(())
}

/// The longest trace context kept (the column's size); a longer `tracestate` is dropped.
const TRACE_CONTEXT_MAX: usize = 1024;

/// `traceparent`/`tracestate` pairs as stored: a JSON object, `None` without a `traceparent`.
pub fn encode(pairs: &[(String, String)]) -> Option<String> {
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let parent = get("traceparent")?;
    let mut obj = serde_json::Map::new();
    obj.insert("traceparent".into(), parent.into());
    if let Some(state) = get("tracestate") {
        obj.insert("tracestate".into(), state.into());
    }
    let full = serde_json::Value::Object(obj).to_string();
    if full.len() <= TRACE_CONTEXT_MAX {
        return Some(full);
    }
    let only_parent = serde_json::json!({ "traceparent": parent }).to_string();
    (only_parent.len() <= TRACE_CONTEXT_MAX).then_some(only_parent)
}

/// The pairs of a stored trace context; nothing for a missing or unreadable one.
pub fn decode(stored: Option<&str>) -> Vec<(String, String)> {
    let Some(Ok(serde_json::Value::Object(obj))) = stored.map(serde_json::from_str) else {
        return Vec::new();
    };
    ["traceparent", "tracestate"]
        .iter()
        .filter_map(|k| {
            obj.get(*k)
                .and_then(|v| v.as_str())
                .map(|v| ((*k).to_owned(), v.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    fn pairs(kv: &[(&str, &str)]) -> Vec<(String, String)> {
        kv.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    #[test]
    fn trace_context_round_trips_and_needs_a_traceparent() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let both = pairs(&[("traceparent", tp), ("tracestate", "a=1,b=2")]);
        let stored = super::encode(&both);
        assert_eq!(super::decode(stored.as_deref()), both);
        assert_eq!(super::encode(&pairs(&[("tracestate", "a=1")])), None);
        assert!(super::decode(Some("not json")).is_empty());
        assert!(super::decode(None).is_empty());
    }

    #[test]
    fn an_oversized_tracestate_is_dropped_not_the_trace() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let big = "x".repeat(2_000);
        let stored = super::encode(&pairs(&[("traceparent", tp), ("tracestate", &big)]));
        assert!(stored.as_ref().is_some_and(|s| s.len() <= 1024));
        assert_eq!(
            super::decode(stored.as_deref()),
            pairs(&[("traceparent", tp)])
        );
    }
}
