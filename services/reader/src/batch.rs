//! BatchGetTasks: per-id lookups through L1, one Redis round trip for the L1 misses and one MySQL
//! query (`get_many`) for what neither cache knows.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{TaskId, Tenant, Violations};
use dispatch_proto::v1 as pb;

use crate::error::ReadError;
use crate::l1::{Cached, Replace};
use crate::l2::{self, L2Lookup};
use crate::lookup::Reader;
use crate::metrics::{self, CacheResult, Tier};

/// Most ids in one request.
pub const MAX_IDS: usize = 100;

/// Parses the request's ids (1..=100, each a task id), deduplicated in request order.
///
/// # Errors
/// INVALID_ARGUMENT naming every bad field.
pub fn parse_ids(raw: &[String]) -> Result<Vec<TaskId>, ReadError> {
    let mut v = Violations::default();
    if raw.is_empty() || raw.len() > MAX_IDS {
        v.add(
            "task_ids",
            format!("must hold 1 to {MAX_IDS} ids, not {}", raw.len()),
        );
        return Err(ReadError::Invalid(v));
    }
    let mut seen = HashSet::new();
    let mut ids = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        match TaskId::parse(s) {
            Ok(id) => {
                if seen.insert(id) {
                    ids.push(id);
                }
            }
            Err(e) => v.add(format!("task_ids[{i}]"), e.to_string()),
        }
    }
    if v.is_empty() {
        Ok(ids)
    } else {
        Err(ReadError::Invalid(v))
    }
}

impl Reader {
    /// BatchGetTasks for already parsed ids.
    ///
    /// # Errors
    /// Unavailable when MySQL fails for an id no cache knows.
    pub async fn batch_get(
        &self,
        tenant: &Tenant,
        ids: &[TaskId],
    ) -> Result<pb::BatchGetTasksResponse, ReadError> {
        self.batch_get_view(tenant, ids, true, usize::MAX).await
    }

    /// BatchGetTasks in a view: without `full`, payload and result are left out; found tasks
    /// past `max_bytes` of encoded answer go to `omitted`.
    ///
    /// # Errors
    /// Unavailable when MySQL fails for an id no cache knows.
    pub async fn batch_get_view(
        &self,
        tenant: &Tenant,
        ids: &[TaskId],
        full: bool,
        max_bytes: usize,
    ) -> Result<pb::BatchGetTasksResponse, ReadError> {
        let mut known: HashMap<TaskId, Cached> = HashMap::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in ids {
            match self.l1.get(id).await {
                Some(e) => {
                    let result = match e.value {
                        Cached::Found(_) => CacheResult::Hit,
                        Cached::Missing => CacheResult::NegativeHit,
                    };
                    metrics::cache_request(Tier::L1, result);
                    known.insert(*id, e.value.clone());
                }
                None => {
                    if self.l1.enabled() {
                        metrics::cache_request(Tier::L1, CacheResult::Miss);
                    }
                    missing.push(*id);
                }
            }
        }
        let mut from_store = Vec::new();
        if !missing.is_empty() {
            for (id, got) in missing.iter().zip(self.l2.get_many(&missing).await) {
                let value = match got {
                    L2Lookup::Hit(t) => {
                        self.l1.remember(*id, &t).await;
                        Cached::Found(t)
                    }
                    L2Lookup::NegativeHit => Cached::Missing,
                    L2Lookup::Miss | L2Lookup::Unavailable => {
                        from_store.push(*id);
                        continue;
                    }
                };
                let entry = self
                    .l1
                    .entry(value.clone(), Duration::ZERO, pb::ServedFrom::L2);
                self.l1.offer(*id, entry, Replace::IfNotOlder).await;
                known.insert(*id, value);
            }
        }
        if !from_store.is_empty() {
            self.load_many(&from_store, &mut known).await?;
        }
        let mut out = pb::BatchGetTasksResponse::default();
        let mut size = 0usize;
        for id in ids {
            match known.get(id) {
                Some(Cached::Found(t)) if t.tenant == tenant.as_str() => {
                    let mut t = pb::Task::clone(t);
                    if !full {
                        t.payload = Vec::new();
                        t.result = Vec::new();
                    }
                    // The field's tag and length prefix: at most 1 + 5 bytes.
                    size += prost::Message::encoded_len(&t) + 6;
                    if size > max_bytes && !out.tasks.is_empty() {
                        out.omitted.push(id.to_string());
                    } else {
                        out.tasks.push(t);
                    }
                }
                _ => out.not_found.push(id.to_string()),
            }
        }
        Ok(out)
    }

    /// One MySQL query for `ids`; found tasks and negative entries go back into the caches. When
    /// MySQL fails, last known copies answer; an id without one fails the request.
    async fn load_many(
        &self,
        ids: &[TaskId],
        known: &mut HashMap<TaskId, Cached>,
    ) -> Result<(), ReadError> {
        match self.store.get_many(ids).await {
            Ok(rows) => {
                let mut found = Vec::with_capacity(rows.len());
                for t in rows {
                    let Ok(id) = TaskId::parse(&t.task_id) else {
                        continue;
                    };
                    let t = Arc::new(t);
                    self.keep_read(id, &t).await;
                    known.insert(id, Cached::Found(Arc::clone(&t)));
                    found.push(t);
                }
                for id in ids {
                    if !known.contains_key(id) {
                        let entry =
                            self.l1
                                .entry(Cached::Missing, Duration::ZERO, pb::ServedFrom::Store);
                        self.l1.offer(*id, entry, Replace::IfNotOlder).await;
                        self.l2.put_negative(id).await;
                        known.insert(*id, Cached::Missing);
                    }
                }
                l2::put_in_background(&self.l2, found, l2::Fill::Always);
                Ok(())
            }
            Err(e) => {
                for id in ids {
                    let Some(t) = self.l1.last_known(id).await else {
                        return Err(e.into());
                    };
                    crate::metrics::Stats::bump(&self.stats.stale_reads);
                    metrics::stale_read();
                    known.insert(*id, Cached::Found(t));
                }
                tracing::warn!(error = %e, ids = ids.len(), "store failing; batch served from stale copies");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bounded_parsed_and_deduplicated() {
        let a = TaskId::new().to_string();
        let b = TaskId::new().to_string();
        let ids = parse_ids(&[a.clone(), b.clone(), a.clone()]).expect("valid");
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0].to_string(), a);
        assert!(matches!(parse_ids(&[]), Err(ReadError::Invalid(_))));
        let many = vec![a.clone(); 101];
        assert!(matches!(parse_ids(&many), Err(ReadError::Invalid(_))));
        let Err(ReadError::Invalid(v)) = parse_ids(&[a, "nope".into()]) else {
            panic!("expected a violation");
        };
        assert_eq!(v.0[0].field, "task_ids[1]");
    }
}
