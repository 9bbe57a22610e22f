//! The events checks: `events_reordered`, `terminal_changed` and `last_event_mismatch`.

use dispatch_core::TaskState;

use super::history::{EventRec, History, decode};
use super::verdict::{Examples, Verdict};

fn fmt_events(evs: &[EventRec]) -> String {
    evs.iter()
        .map(|e| format!("{}@{:#x}", e.state, e.version))
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) fn check_events(h: &History, v: &mut Verdict, ex: &mut Examples<'_>) {
    for (id, row) in &h.rows {
        let evs = h.events.get(id).map(Vec::as_slice).unwrap_or_default();
        // Reordered: an event older than one before it.
        let mut max = 0u64;
        let mut reordered = false;
        for e in evs {
            if e.version < max {
                reordered = true;
            }
            max = max.max(e.version);
        }
        if reordered {
            v.events_reordered += 1;
            ex.add("events_reordered", || format!("{id}: {}", fmt_events(evs)));
        }
        // Terminal changed: after the first terminal event (per generation), anything but an
        // identical repeat, a redrive of DEAD, or an older (reordered) event.
        let mut changed = false;
        let mut term: Option<&EventRec> = None;
        for e in evs {
            match term {
                None => {
                    if e.state.is_terminal() {
                        term = Some(e);
                    }
                }
                Some(t) => {
                    let same = e.state == t.state && e.version == t.version;
                    if same && e.result == t.result {
                        continue;
                    }
                    if t.state == TaskState::Dead && decode(e.version).0 > decode(t.version).0 {
                        // A redrive: a new generation starts.
                        term = e.state.is_terminal().then_some(e);
                        continue;
                    }
                    if e.version < t.version {
                        continue;
                    }
                    changed = true;
                }
            }
        }
        // The row against the first terminal event of its generation.
        let first_in_gen = evs
            .iter()
            .find(|e| e.state.is_terminal() && decode(e.version).0 == row.generation);
        if let Some(f) = first_in_gen
            && (f.state != row.state || f.version != row.version)
        {
            changed = true;
        }
        // An example of either check below: the events (as `shown`) against the row.
        let against_row = |shown: String| {
            format!(
                "{id}: events {shown}; MySQL {}@{:#x}",
                row.state, row.version
            )
        };
        if changed {
            v.terminal_changed += 1;
            ex.add("terminal_changed", || against_row(fmt_events(evs)));
        }
        // The last event is the row.
        let last = evs.last();
        if last.is_none_or(|e| e.state != row.state || e.version != row.version) {
            v.last_event_mismatch += 1;
            ex.add("last_event_mismatch", || {
                against_row(format!("[{}]", fmt_events(evs)))
            });
        }
    }
}
