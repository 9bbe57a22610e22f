//! The submits checks: `idempotency_split`, `idempotency_conflicts_accepted`, `key_mismatch`,
//! `tenant_mismatch` and `foreign_cancels_applied`.

use std::collections::{HashMap, HashSet};

use dispatch_core::{TaskId, TaskState};

use super::history::{Accepted, History};
use super::verdict::{Examples, Verdict};

pub(super) fn check_submits(h: &History, v: &mut Verdict, ex: &mut Examples<'_>) {
    // Idempotency: one (tenant, key), one task, one request.
    let mut by_key: HashMap<(String, &str), Vec<&Accepted>> = HashMap::new();
    for a in &h.accepted {
        if let Some(k) = &a.idem {
            by_key
                .entry((a.tenant.clone().unwrap_or_default(), k))
                .or_default()
                .push(a);
        }
    }
    for ((_, k), ls) in &by_key {
        let ids: HashSet<TaskId> = ls.iter().map(|a| a.task_id).collect();
        if ids.len() > 1 {
            v.idempotency_split += 1;
            ex.add("idempotency_split", || format!("key {k}: ids {ids:?}"));
        }
        let fps: HashSet<&str> = ls.iter().filter_map(|a| a.fp.as_deref()).collect();
        if fps.len() > 1 {
            v.idempotency_conflicts_accepted += 1;
            ex.add("idempotency_conflicts_accepted", || {
                format!(
                    "key {k}: accepted for {} different requests: {}",
                    fps.len(),
                    ls.iter()
                        .map(|a| format!(
                            "{} key={} fp={}",
                            a.task_id,
                            a.key,
                            a.fp.as_deref().unwrap_or("")
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            });
        }
    }
    // The stored row is what was submitted.
    let mut key_bad = HashSet::new();
    let mut tenant_bad = HashSet::new();
    for a in &h.accepted {
        let Some(r) = h.rows.get(&a.task_id) else {
            continue;
        };
        if r.business_key != a.key && key_bad.insert(a.task_id) {
            ex.add("key_mismatch", || {
                format!(
                    "{}: submitted with key {:?}, stored with {:?}",
                    a.task_id, a.key, r.business_key
                )
            });
        }
        if let Some(t) = &a.tenant
            && &r.tenant != t
            && tenant_bad.insert(a.task_id)
        {
            ex.add("tenant_mismatch", || {
                format!(
                    "{}: submitted by {t:?}, stored for {:?}",
                    a.task_id, r.tenant
                )
            });
        }
    }
    v.key_mismatch = key_bad.len() as u64;
    v.tenant_mismatch = tenant_bad.len() as u64;
    // Another tenant's cancel never applies.
    let own: HashSet<TaskId> = h
        .cancels
        .iter()
        .filter(|c| !c.foreign)
        .map(|c| c.task_id)
        .collect();
    let accepted: HashSet<TaskId> = h.accepted.iter().map(|a| a.task_id).collect();
    let foreign: HashSet<TaskId> = h
        .cancels
        .iter()
        .filter(|c| c.foreign && !own.contains(&c.task_id) && accepted.contains(&c.task_id))
        .map(|c| c.task_id)
        .collect();
    for id in foreign {
        if h.rows
            .get(&id)
            .is_some_and(|r| r.state == TaskState::Cancelled)
        {
            v.foreign_cancels_applied += 1;
            ex.add("foreign_cancels_applied", || {
                format!("{id}: CANCELLED, and only another tenant cancelled it")
            });
        }
    }
}
