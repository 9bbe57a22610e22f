//! The order check: `order_violations`, per (tenant, business key) and topic.

use std::collections::{HashMap, HashSet};

use dispatch_core::TaskId;

use super::history::{Accepted, Exec, History};
use super::verdict::{Examples, Verdict};

/// A task's position on one path (None: not on that path alone).
type Coord = fn(&Ordered) -> Option<i64>;

/// One task as the order check sees it.
struct Ordered {
    id: TaskId,
    kafka: Option<i64>,
    outbox: Option<i64>,
    sent: i64,
    acked: i64,
    start: (i64, u64),
}

pub(super) fn check_order(h: &History, v: &mut Verdict, ex: &mut Examples<'_>) {
    let mut lines: HashMap<TaskId, Vec<&Accepted>> = HashMap::new();
    for a in &h.accepted {
        lines.entry(a.task_id).or_default().push(a);
    }
    // Order is per (tenant, business key): two tenants' tasks on one key are unrelated.
    let mut groups: HashMap<(String, String, String), Vec<Ordered>> = HashMap::new();
    for (id, ls) in &lines {
        if ls.iter().any(|l| l.scheduled) || h.unanswered.contains(id) {
            continue;
        }
        let key = &ls[0].key;
        if ls.iter().any(|l| &l.key != key) {
            continue;
        }
        let topics: HashSet<&str> = ls
            .iter()
            .map(|l| l.topic.as_str())
            .filter(|t| !t.is_empty())
            .collect();
        if topics.len() != 1 {
            continue;
        }
        let topic = topics.into_iter().next().unwrap_or_default();
        let Some(first) = h.execs.get(id).and_then(|es| {
            es.iter()
                .filter(|e| e.generation == 0 && e.attempt == 1)
                .map(Exec::start)
                .min()
        }) else {
            continue;
        };
        let kafka = ls
            .iter()
            .filter(|l| l.via == "kafka" && !l.topic.is_empty())
            .map(|l| l.offset)
            .min();
        let outbox = ls
            .iter()
            .filter(|l| l.via == "outbox")
            .map(|l| l.offset)
            .min();
        let earliest = ls
            .iter()
            .filter(|l| l.acked_us > 0)
            .min_by_key(|l| l.acked_us);
        // The stored row's tenant (what the processor's lanes go by), else the generator's.
        let Some(tenant) = h
            .rows
            .get(id)
            .map(|r| r.tenant.clone())
            .or_else(|| ls[0].tenant.clone())
        else {
            continue;
        };
        groups
            .entry((tenant, key.clone(), topic.to_owned()))
            .or_default()
            .push(Ordered {
                id: *id,
                kafka,
                outbox,
                sent: ls
                    .iter()
                    .filter(|l| l.sent_us > 0)
                    .map(|l| l.sent_us)
                    .min()
                    .unwrap_or(0),
                acked: earliest.map_or(0, |l| l.acked_us),
                start: first,
            });
    }
    for ((tenant, key, topic), tasks) in &mut groups {
        if tasks.len() < 2 {
            continue;
        }
        let key = format!("{tenant}/{key}");
        v.keys_checked += 1;
        let mut bad: Option<String> = None;
        // One path: its own sequence (Kafka offsets; outbox ids, which the relay keeps).
        let paths: [(&str, Coord); 2] = [
            ("kafka offset", |t| t.kafka.filter(|_| t.outbox.is_none())),
            ("outbox id", |t| t.outbox.filter(|_| t.kafka.is_none())),
        ];
        for (path, coord) in paths {
            let mut seq: Vec<(i64, &Ordered)> = tasks
                .iter()
                .filter_map(|t| coord(t).map(|c| (c, t)))
                .collect();
            seq.sort_by_key(|x| x.0);
            if let Some(w) = seq.windows(2).find(|w| w[0].1.start > w[1].1.start) {
                bad.get_or_insert_with(|| {
                    format!(
                        "{key} on {topic}: {} at {path} {} started at {} us, after {} at {path} {} ({} us)",
                        w[0].1.id, w[0].0, w[0].1.start.0, w[1].1.id, w[1].0, w[1].1.start.0
                    )
                });
            }
        }
        // Across paths and gateways: accepted before the other was sent => runs first.
        let mut by_ack: Vec<&Ordered> = tasks.iter().filter(|t| t.acked > 0).collect();
        by_ack.sort_by_key(|t| t.acked);
        let mut prefix_max: Vec<(i64, u64, usize)> = Vec::with_capacity(by_ack.len());
        for (i, t) in by_ack.iter().enumerate() {
            let m = match prefix_max.last() {
                Some(&(s, id, j)) if (s, id) >= t.start => (s, id, j),
                _ => (t.start.0, t.start.1, i),
            };
            prefix_max.push(m);
        }
        for b in tasks.iter().filter(|t| t.sent > 0) {
            let n = by_ack.partition_point(|a| a.acked < b.sent);
            if n == 0 {
                continue;
            }
            let (s, rid, j) = prefix_max[n - 1];
            if (s, rid) > b.start {
                let a = by_ack[j];
                bad.get_or_insert_with(|| {
                    format!(
                        "{key} on {topic}: {} was accepted at {} us, before {} was sent ({} us), but started {} us after it",
                        a.id,
                        a.acked,
                        b.id,
                        b.sent,
                        s - b.start.0
                    )
                });
            }
        }
        if let Some(b) = bad {
            v.order_violations += 1;
            ex.add("order_violations", || b);
        }
    }
}
