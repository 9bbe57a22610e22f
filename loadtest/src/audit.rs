//! The audit: after a load run (with `--record-ids`) and a quiet period, prove from MySQL
//! (`tasks`, `task_attempts`), the simulate handler's execution ledger (`handler_executions`:
//! instance, start, finish, outcome of every execution) and the events topic that the guarantees
//! held. [`audit`] gathers a [`History`]; [`judge`] turns it into a [`Verdict`] and is a pure
//! function, so every check is unit-tested on a broken history.
//!
//! A verdict FAILS, with one reason per broken check, when:
//! - the run is empty (no accepted task), or accepted fewer submits than `--floor` of those
//!   offered (`--load` reports; rejected submits are reported by gRPC code), or the ids files
//!   hold fewer accepted submits than the load reports counted;
//! - `missing`: an accepted id has no row in `tasks` (a lost task);
//! - `not_terminal`: a row is not SUCCEEDED/DEAD/CANCELLED after the wait;
//! - the events topic was not read to its end in time (`events_complete = false`: never a silent
//!   partial count);
//! - `terminal_changed`: after a task's first terminal event, an event with another state or
//!   version (equal versions included; a redrive, a higher generation after DEAD, is the one
//!   exception) or the same state and version with another result; or the MySQL row differs from
//!   the first terminal event of its generation;
//! - `events_reordered` (reported, not a failure): an event with a lower version than one before
//!   it. One task's events come from several producers (the instance that ran attempt 1, the one
//!   that ran its retry, the scheduler), so an older event can land after a newer one; consumers
//!   apply an event only if it is newer than what they hold, and every publisher re-publishes the
//!   current row after its events are acknowledged, so the topic always *ends* with the row;
//! - `last_event_mismatch`: a task's last event differs from its MySQL state and version (a lost
//!   or reordered event), after the audit waited `--settle-s` for late events;
//! - `ran_after_terminal`: an execution (ledger, or a `task_attempts` row, which also covers
//!   handlers without a ledger) that started after the task's terminal state was committed; the
//!   commit time is the Kafka timestamp of the first terminal event (stamped when the writer
//!   produced it, after the MySQL commit);
//! - `reran_after_commit`: an execution of an attempt that started after that attempt's outcome
//!   (RETRYING, SUCCEEDED or DEAD at its version) was committed;
//! - `concurrent_runs`: two executions of one task overlapping in time (start..finish), unless the
//!   first one's processor was frozen (`--frozen`: SIGSTOP windows) between the two starts: a
//!   frozen process loses its partitions and cannot be told to stop, so its overlap is a zombie
//!   (`zombie_overlaps`, reported) whose commit the other checks judge;
//! - `order_violations`: keys whose first attempts did not start in submission order. Submission
//!   order is the Kafka offset among Kafka-accepted records of one topic, the outbox id among
//!   outbox-accepted ones, and, across both paths and both gateways, "accepted before the other
//!   was sent" (the load generator records both times). Tasks with a `run_at` are left out (they
//!   run when due), and so are tasks without ledger rows (noop) and keyed tasks one of whose
//!   submits went unanswered (refused or past the client's deadline: it may have reached Kafka
//!   ahead of the accepted one, whose position the audit would otherwise use);
//! - `idempotency_conflicts_accepted`: one (tenant, idempotency key) accepted for submits that
//!   asked for different things (business key, type, priority, payload, run_at);
//!   `idempotency_split`: one key answered with two task ids;
//! - `key_mismatch` / `tenant_mismatch`: a stored row whose business key or tenant is not what
//!   the accepted submit asked for;
//! - `foreign_cancels_applied`: a task CANCELLED although only another tenant cancelled it.
//!
//! `duplicate_runs_before_commit` counts re-executions of an attempt before its outcome was
//! committed (at-least-once after a crash or a lost partition); they are reported, not failures.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::time::Duration;

use dispatch_core::{TaskId, TaskState};
use serde::{Deserialize, Serialize};
use sqlx::{MySqlPool, Row};

/// Kafka timestamps have millisecond resolution: an execution counts as started after an event
/// only when it started at least this long after the event's timestamp.
const TS_SLACK_US: i64 = 1_000;
/// Examples kept per check.
const EXAMPLES_PER_CHECK: usize = 3;

/// One accepted submit, as recorded by the load generator (one line of an ids file).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Accepted {
    /// Task id.
    pub task_id: TaskId,
    /// Business key.
    pub key: String,
    /// `kafka` or `outbox`.
    pub via: String,
    /// Topic (the target topic for outbox; empty when the answer had no coordinates).
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset (outbox id for outbox).
    pub offset: i64,
    /// When the submit was sent (µs since the epoch; 0 unknown).
    pub sent_us: i64,
    /// When it was answered.
    pub acked_us: i64,
    /// Tenant of the submitting key, when the generator knew it.
    pub tenant: Option<String>,
    /// Idempotency key.
    pub idem: Option<String>,
    /// Fingerprint of what was asked for.
    pub fp: Option<String>,
    /// Had a `run_at`.
    pub scheduled: bool,
    /// Answered as a duplicate.
    pub duplicate: bool,
    /// The ids file it came from (its name without `.ids`), for the per-load timing.
    pub source: String,
}

/// Audit flags.
#[derive(Debug, clap::Args, Clone)]
pub struct AuditArgs {
    /// Files written by `run --record-ids` (repeatable).
    #[arg(long = "ids", required = true)]
    pub ids: Vec<std::path::PathBuf>,
    /// JSON reports of the load runs (`run --json`, repeatable): offered, accepted and rejected
    /// submits for the floor.
    #[arg(long = "load")]
    pub loads: Vec<std::path::PathBuf>,
    /// Accepted submits must be at least this share of those offered (0 disables the check).
    #[arg(long, default_value_t = 0.9)]
    pub floor: f64,
    /// Files written by `run/cancel --record-cancels` (repeatable).
    #[arg(long = "cancels")]
    pub cancels: Vec<std::path::PathBuf>,
    /// Files of SIGSTOP windows (`pid \t stopped_us \t continued_us`, repeatable).
    #[arg(long = "frozen")]
    pub frozen: Vec<std::path::PathBuf>,
    /// MySQL URL of the dispatch database.
    #[arg(
        long,
        env = "DISPATCH_DATABASE__URL",
        default_value = "mysql://dispatch:dispatch@127.0.0.1:3306/dispatch"
    )]
    pub database_url: String,
    /// Kafka brokers (the events checks; empty fails the audit: it cannot see events).
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Events topic.
    #[arg(long, default_value = "dispatch.task-events")]
    pub events_topic: String,
    /// Wait up to this long for every task to be terminal.
    #[arg(long, default_value_t = 120.0)]
    pub wait_s: f64,
    /// Read the events topic to its end within this long, or FAIL.
    #[arg(long, default_value_t = 120.0)]
    pub events_timeout_s: f64,
    /// While a task's last event differs from MySQL, read late events for up to this long.
    #[arg(long, default_value_t = 20.0)]
    pub settle_s: f64,
    /// Write the verdict as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// What a load run reported (`run --json`); fields of older reports default.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct LoadSummary {
    /// Label.
    pub label: String,
    /// Successful calls (measured window).
    pub ok: u64,
    /// Failed calls (measured window).
    pub errors: u64,
    /// Items per call.
    pub items_per_call: usize,
    /// Failed calls by code.
    pub errors_by_code: BTreeMap<String, u64>,
    /// Tasks offered (whole run).
    pub items_offered: u64,
    /// Tasks accepted (whole run).
    pub items_accepted: u64,
    /// Tasks refused by code (whole run).
    pub items_rejected_by_code: BTreeMap<String, u64>,
}

impl LoadSummary {
    /// (offered, accepted, rejected by code), from the item counts or, in older reports, calls.
    fn items(&self) -> (u64, u64, BTreeMap<String, u64>) {
        if self.items_offered > 0 {
            return (
                self.items_offered,
                self.items_accepted,
                self.items_rejected_by_code.clone(),
            );
        }
        let n = self.items_per_call.max(1) as u64;
        (
            (self.ok + self.errors) * n,
            self.ok * n,
            self.errors_by_code
                .iter()
                .map(|(k, v)| (k.clone(), v * n))
                .collect(),
        )
    }
}

/// One cancel sent by the load generator.
#[derive(Debug, Clone, PartialEq)]
pub struct CancelRecord {
    /// The id cancelled.
    pub task_id: TaskId,
    /// Sent by a tenant that does not own the task (a cross-tenant cancel).
    pub foreign: bool,
    /// `accepted`, `finished` or a gRPC code.
    pub outcome: String,
}

/// A window in which a processor process was stopped (SIGSTOP .. SIGCONT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frozen {
    /// Its pid.
    pub pid: u32,
    /// Stopped at (µs since the epoch).
    pub from_us: i64,
    /// Continued at.
    pub to_us: i64,
}

/// A task's row in MySQL.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    /// State.
    pub state: TaskState,
    /// Version.
    pub version: u64,
    /// Generation.
    pub generation: u32,
    /// `finished_at` (µs since the epoch).
    pub finished_us: Option<i64>,
    /// Tenant.
    pub tenant: String,
    /// Business key.
    pub business_key: String,
}

/// One ledger row.
#[derive(Debug, Clone, PartialEq)]
pub struct Exec {
    /// Row id (grows in insert order).
    pub id: u64,
    /// Generation.
    pub generation: u32,
    /// Attempt.
    pub attempt: u32,
    /// `<host>:<pid>` ('' before the ledger recorded it).
    pub instance: String,
    /// Start (None before the ledger recorded it).
    pub started_us: Option<i64>,
    /// Finish (`executed_at`).
    pub finished_us: i64,
    /// ok, failed, cancelled, panic ('' before the ledger recorded it).
    pub outcome: String,
}

impl Exec {
    fn start(&self) -> (i64, u64) {
        (self.started_us.unwrap_or(self.finished_us), self.id)
    }
    fn pid(&self) -> Option<u32> {
        self.instance
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
    }
}

/// One `task_attempts` row.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRec {
    /// Generation.
    pub generation: u32,
    /// Attempt.
    pub attempt: u32,
    /// Outcome.
    pub outcome: String,
    /// Handler start (of the last run that wrote the row).
    pub started_us: i64,
}

/// One event of a task, in topic order.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRec {
    /// State.
    pub state: TaskState,
    /// Version.
    pub version: u64,
    /// Kafka timestamp in µs (ms resolution), if the record had one.
    pub ts_us: Option<i64>,
    /// The snapshot's result.
    pub result: Vec<u8>,
}

/// Everything the audit judges.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Every accepted submit (ids-file lines).
    pub accepted: Vec<Accepted>,
    /// Tasks of keyed submits that were also sent without an OK answer ([`UNANSWERED`]): such a
    /// submit may have been made durable before the accepted one, so the task's place in its
    /// key's order is unknown and the order check leaves it out.
    pub unanswered: HashSet<TaskId>,
    /// Load reports.
    pub loads: Vec<LoadSummary>,
    /// The floor (share of offered submits that must be accepted; 0 disables).
    pub floor: f64,
    /// Cancels sent.
    pub cancels: Vec<CancelRecord>,
    /// SIGSTOP windows.
    pub frozen: Vec<Frozen>,
    /// Rows by task.
    pub rows: HashMap<TaskId, StoredRow>,
    /// Ledger rows by task, in id order.
    pub execs: HashMap<TaskId, Vec<Exec>>,
    /// `task_attempts` rows by task.
    pub attempts: HashMap<TaskId, Vec<AttemptRec>>,
    /// Events by task, in topic order.
    pub events: HashMap<TaskId, Vec<EventRec>>,
    /// None when the events topic was read to its end; else why not.
    pub events_incomplete: Option<String>,
    /// Events of audited tasks read.
    pub events_checked: u64,
}

/// The outcome.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Verdict {
    /// Distinct accepted ids.
    pub accepted: u64,
    /// Accepted submits recorded in the ids files (resubmits included).
    pub recorded: u64,
    /// Submits offered (load reports).
    pub offered: u64,
    /// Submits accepted (load reports).
    pub accepted_submits: u64,
    /// Submits refused, by gRPC code (load reports).
    pub rejected_by_code: BTreeMap<String, u64>,
    /// Rows found.
    pub stored: u64,
    /// Terminal rows by state.
    pub terminal: BTreeMap<String, u64>,
    /// Lost.
    pub missing: u64,
    /// Still live after the wait.
    pub not_terminal: u64,
    /// Tasks with an execution that started after their terminal commit.
    pub ran_after_terminal: u64,
    /// Tasks with an attempt executed again after its outcome was committed.
    pub reran_after_commit: u64,
    /// Tasks run twice at once by live processors.
    pub concurrent_runs: u64,
    /// Tasks run twice at once because a frozen processor resumed (reported, allowed).
    pub zombie_overlaps: u64,
    /// Extra executions before a commit (allowed).
    pub duplicate_runs_before_commit: u64,
    /// Tasks whose committed terminal state changed.
    pub terminal_changed: u64,
    /// Tasks with an event older than one before it.
    pub events_reordered: u64,
    /// Tasks whose last event is not their MySQL state and version.
    pub last_event_mismatch: u64,
    /// Events read for the audited tasks.
    pub events_checked: u64,
    /// The events topic was read to its end.
    pub events_complete: bool,
    /// Keys with first attempts out of submission order.
    pub order_violations: u64,
    /// Keys whose order was checked.
    pub keys_checked: u64,
    /// Idempotency keys accepted for submits that asked for different things.
    pub idempotency_conflicts_accepted: u64,
    /// Idempotency keys answered with more than one task id.
    pub idempotency_split: u64,
    /// Tasks stored with another business key than submitted.
    pub key_mismatch: u64,
    /// Tasks stored with another tenant than submitted.
    pub tenant_mismatch: u64,
    /// Tasks CANCELLED by another tenant's cancel alone.
    pub foreign_cancels_applied: u64,
    /// Why the verdict is FAIL (empty: PASS).
    pub reasons: Vec<String>,
    /// A few failing tasks per check, with their evidence.
    pub examples: Vec<String>,
    /// Per ids file (its name without `.ids`): time to start and retry delays, measured, not
    /// judged (fault scenarios bound them).
    pub timing: BTreeMap<String, Timing>,
}

/// Time to start and retry delays of one load's tasks (milliseconds).
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Timing {
    /// Tasks with a measured start: not scheduled (`run_at`), sent time known, attempt 1 of
    /// generation 0 seen in the ledger or `task_attempts`.
    pub started: u64,
    /// Submit sent .. attempt 1's first start: median.
    pub start_p50_ms: f64,
    /// 99th percentile.
    pub start_p99_ms: f64,
    /// Largest.
    pub start_max_ms: f64,
    /// Retries measured (ledger): the end of attempt n's last execution .. attempt n+1's first
    /// start, generation 0.
    pub retries: u64,
    /// Retry delay: median.
    pub retry_p50_ms: f64,
    /// 99th percentile.
    pub retry_p99_ms: f64,
    /// Largest.
    pub retry_max_ms: f64,
    /// Submits answered OK after a produce to Kafka (sent and answered times known).
    pub submits_kafka: u64,
    /// Their latency (sent .. answered): median.
    pub submit_kafka_p50_ms: f64,
    /// 99th percentile.
    pub submit_kafka_p99_ms: f64,
    /// Submits answered OK after an outbox write (a Kafka outage, or their key behind one).
    pub submits_outbox: u64,
    /// Their latency: median.
    pub submit_outbox_p50_ms: f64,
    /// 99th percentile.
    pub submit_outbox_p99_ms: f64,
    /// Largest.
    pub submit_outbox_max_ms: f64,
}

impl Timing {
    /// One line.
    pub fn line(&self) -> String {
        format!(
            "started={} start_p50_ms={:.0} start_p99_ms={:.0} start_max_ms={:.0} retries={} retry_p50_ms={:.0} retry_p99_ms={:.0} retry_max_ms={:.0} submits_kafka={} submit_kafka_p50_ms={:.0} submit_kafka_p99_ms={:.0} submits_outbox={} submit_outbox_p50_ms={:.0} submit_outbox_p99_ms={:.0} submit_outbox_max_ms={:.0}",
            self.started,
            self.start_p50_ms,
            self.start_p99_ms,
            self.start_max_ms,
            self.retries,
            self.retry_p50_ms,
            self.retry_p99_ms,
            self.retry_max_ms,
            self.submits_kafka,
            self.submit_kafka_p50_ms,
            self.submit_kafka_p99_ms,
            self.submits_outbox,
            self.submit_outbox_p50_ms,
            self.submit_outbox_p99_ms,
            self.submit_outbox_max_ms
        )
    }
}

/// The `q` quantile (nearest rank) of sorted values, 0 when empty.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Per source: time to start (sent .. attempt 1's first start), retry delays (attempt n's end
/// .. attempt n+1's first start), generation 0, and submit latency by the path that made the
/// submit durable (Kafka or the outbox).
fn timing(h: &History) -> BTreeMap<String, Timing> {
    let mut starts: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut retries: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut submits: BTreeMap<(&str, bool), Vec<f64>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for a in &h.accepted {
        if a.duplicate || !seen.insert(a.task_id) {
            continue;
        }
        if a.sent_us > 0 && a.acked_us >= a.sent_us {
            submits
                .entry((a.source.as_str(), a.via == "outbox"))
                .or_default()
                .push((a.acked_us - a.sent_us) as f64 / 1000.0);
        }
        let execs: Vec<&Exec> = h
            .execs
            .get(&a.task_id)
            .map(|v| v.iter().filter(|e| e.generation == 0).collect())
            .unwrap_or_default();
        let first_of = |attempt: u32| {
            let ledger = execs
                .iter()
                .filter(|e| e.attempt == attempt)
                .map(|e| e.start().0)
                .min();
            let stored = h.attempts.get(&a.task_id).and_then(|v| {
                v.iter()
                    .filter(|r| r.generation == 0 && r.attempt == attempt)
                    .map(|r| r.started_us)
                    .min()
            });
            ledger.into_iter().chain(stored).min()
        };
        if !a.scheduled
            && a.sent_us > 0
            && let Some(start) = first_of(1)
        {
            starts
                .entry(a.source.as_str())
                .or_default()
                .push((start - a.sent_us) as f64 / 1000.0);
        }
        let mut attempts: Vec<u32> = execs.iter().map(|e| e.attempt).collect();
        attempts.sort_unstable();
        attempts.dedup();
        for w in attempts.windows(2) {
            if w[1] != w[0] + 1 {
                continue;
            }
            let end = execs
                .iter()
                .filter(|e| e.attempt == w[0])
                .map(|e| e.finished_us)
                .max();
            let next = execs
                .iter()
                .filter(|e| e.attempt == w[1])
                .map(|e| e.start().0)
                .min();
            if let (Some(end), Some(next)) = (end, next) {
                retries
                    .entry(a.source.as_str())
                    .or_default()
                    .push((next - end) as f64 / 1000.0);
            }
        }
    }
    let mut out = BTreeMap::new();
    let sources: HashSet<&str> = h.accepted.iter().map(|a| a.source.as_str()).collect();
    for src in sources {
        let mut s = starts.remove(src).unwrap_or_default();
        let mut r = retries.remove(src).unwrap_or_default();
        let mut k = submits.remove(&(src, false)).unwrap_or_default();
        let mut o = submits.remove(&(src, true)).unwrap_or_default();
        for v in [&mut s, &mut r, &mut k, &mut o] {
            v.sort_by(f64::total_cmp);
        }
        out.insert(
            src.to_owned(),
            Timing {
                started: s.len() as u64,
                start_p50_ms: quantile(&s, 0.5),
                start_p99_ms: quantile(&s, 0.99),
                start_max_ms: s.last().copied().unwrap_or(0.0),
                retries: r.len() as u64,
                retry_p50_ms: quantile(&r, 0.5),
                retry_p99_ms: quantile(&r, 0.99),
                retry_max_ms: r.last().copied().unwrap_or(0.0),
                submits_kafka: k.len() as u64,
                submit_kafka_p50_ms: quantile(&k, 0.5),
                submit_kafka_p99_ms: quantile(&k, 0.99),
                submits_outbox: o.len() as u64,
                submit_outbox_p50_ms: quantile(&o, 0.5),
                submit_outbox_p99_ms: quantile(&o, 0.99),
                submit_outbox_max_ms: o.last().copied().unwrap_or(0.0),
            },
        );
    }
    out
}

impl Verdict {
    /// Whether every guarantee held.
    pub fn passed(&self) -> bool {
        self.reasons.is_empty()
    }

    /// The one-line verdict.
    pub fn line(&self) -> String {
        let head = if self.passed() {
            "audit PASS".to_owned()
        } else {
            format!("audit FAIL ({})", self.reasons.join("; "))
        };
        format!(
            "{head}: accepted={} recorded={} offered={} accepted_submits={} rejected={:?} stored={} terminal={:?} missing={} not_terminal={} terminal_changed={} events_reordered={} last_event_mismatch={} (events {}{}) ran_after_terminal={} reran_after_commit={} concurrent_runs={} zombie_overlaps={} duplicate_runs_before_commit={} order_violations={} (keys {}) idempotency_conflicts_accepted={} idempotency_split={} key_mismatch={} tenant_mismatch={} foreign_cancels_applied={}",
            self.accepted,
            self.recorded,
            self.offered,
            self.accepted_submits,
            self.rejected_by_code,
            self.stored,
            self.terminal,
            self.missing,
            self.not_terminal,
            self.terminal_changed,
            self.events_reordered,
            self.last_event_mismatch,
            self.events_checked,
            if self.events_complete {
                ""
            } else {
                ", INCOMPLETE"
            },
            self.ran_after_terminal,
            self.reran_after_commit,
            self.concurrent_runs,
            self.zombie_overlaps,
            self.duplicate_runs_before_commit,
            self.order_violations,
            self.keys_checked,
            self.idempotency_conflicts_accepted,
            self.idempotency_split,
            self.key_mismatch,
            self.tenant_mismatch,
            self.foreign_cancels_applied,
        )
    }
}

fn parse_line(line: &str) -> Result<Accepted, String> {
    let c: Vec<&str> = line.split('\t').collect();
    if c.len() != 6 && c.len() != 9 {
        return Err(format!("expected 6 or 9 columns, found {}", c.len()));
    }
    let num = |i: usize| -> Result<i64, String> {
        c[i].parse::<i64>()
            .map_err(|e| format!("column {}: {e}", i + 1))
    };
    let mut a = Accepted {
        task_id: TaskId::parse(c[0]).map_err(|e| e.to_string())?,
        key: c[1].into(),
        via: c[2].into(),
        topic: c[3].into(),
        partition: num(4)? as i32,
        offset: num(5)?,
        ..Default::default()
    };
    if c.len() == 9 {
        a.sent_us = num(6)?;
        a.acked_us = num(7)?;
        for f in c[8].split(',').filter(|f| !f.is_empty()) {
            let (k, v) = f.split_once('=').unwrap_or((f, ""));
            match k {
                "tenant" => a.tenant = Some(v.into()),
                "idem" => a.idem = Some(v.into()),
                "fp" => a.fp = Some(v.into()),
                "run_at" => a.scheduled = true,
                "dup" => a.duplicate = true,
                _ => {}
            }
        }
    }
    Ok(a)
}

/// Reads id files, one accepted submit a line, in file order:
/// `task_id \t key \t via \t topic \t partition \t offset [\t sent_us \t acked_us \t flags]`,
/// flags being comma-separated `tenant=`, `idem=`, `fp=`, `run_at`, `dup`, `prio=`. An id
/// recorded more than once (an idempotent resubmit) is one task.
///
/// # Errors
/// Unreadable or malformed files.
pub fn read_ids(paths: &[std::path::PathBuf]) -> anyhow::Result<Vec<Accepted>> {
    read_ids_from(paths, false)
}

/// As [`read_ids`], skipping lines that do not parse: for reading a file a running load is
/// still writing (its last line may be partial).
///
/// # Errors
/// Unreadable files.
pub fn read_ids_while_written(paths: &[std::path::PathBuf]) -> anyhow::Result<Vec<Accepted>> {
    read_ids_from(paths, true)
}

/// The first column of a keyed submit that was not answered OK:
/// `# unanswered \t task_id \t code \t sent_us`. Readers of accepted submits skip it.
pub const UNANSWERED: &str = "# unanswered";

/// Reads the tasks of keyed submits that were not answered OK (see [`UNANSWERED`]).
///
/// # Errors
/// Unreadable files, or a malformed task id.
pub fn read_unanswered(paths: &[std::path::PathBuf]) -> anyhow::Result<HashSet<TaskId>> {
    let mut out = HashSet::new();
    for p in paths {
        for l in read_lines(p)? {
            let mut c = l.split('\t');
            if c.next() != Some(UNANSWERED) {
                continue;
            }
            let id = c.next().unwrap_or_default();
            out.insert(TaskId::parse(id).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?);
        }
    }
    Ok(out)
}

fn read_ids_from(paths: &[std::path::PathBuf], skip_bad: bool) -> anyhow::Result<Vec<Accepted>> {
    let mut out = Vec::new();
    for p in paths {
        let f = std::fs::File::open(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line?;
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_line(&line) {
                Ok(mut a) => {
                    a.source = source_name(p);
                    out.push(a);
                }
                Err(_) if skip_bad => {}
                Err(e) => anyhow::bail!("{} line {}: {e}", p.display(), n + 1),
            }
        }
    }
    Ok(out)
}

/// An ids file's name without its `.ids` extension.
fn source_name(p: &std::path::Path) -> String {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(".ids").map(str::to_owned).unwrap_or(name)
}

fn read_lines(p: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let f = std::fs::File::open(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    Ok(std::io::BufReader::new(f)
        .lines()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|l| !l.is_empty())
        .collect())
}

/// Reads cancels files (`task_id \t tenant \t own|foreign \t outcome \t sent_us`).
///
/// # Errors
/// Unreadable or malformed files.
pub fn read_cancels(paths: &[std::path::PathBuf]) -> anyhow::Result<Vec<CancelRecord>> {
    let mut out = Vec::new();
    for p in paths {
        for (n, l) in read_lines(p)?.iter().enumerate() {
            let c: Vec<&str> = l.split('\t').collect();
            anyhow::ensure!(c.len() >= 4, "{} line {}: 5 columns", p.display(), n + 1);
            out.push(CancelRecord {
                task_id: TaskId::parse(c[0])
                    .map_err(|e| anyhow::anyhow!("{} line {}: {e}", p.display(), n + 1))?,
                foreign: c[2] == "foreign",
                outcome: c[3].into(),
            });
        }
    }
    Ok(out)
}

/// Reads SIGSTOP windows (`pid \t stopped_us \t continued_us`).
///
/// # Errors
/// Unreadable or malformed files.
pub fn read_frozen(paths: &[std::path::PathBuf]) -> anyhow::Result<Vec<Frozen>> {
    let mut out = Vec::new();
    for p in paths {
        for (n, l) in read_lines(p)?.iter().enumerate() {
            let c: Vec<&str> = l.split('\t').collect();
            let bad = || {
                anyhow::anyhow!(
                    "{} line {}: pid, stopped_us, continued_us",
                    p.display(),
                    n + 1
                )
            };
            anyhow::ensure!(c.len() == 3, bad());
            out.push(Frozen {
                pid: c[0].parse().map_err(|_| bad())?,
                from_us: c[1].parse().map_err(|_| bad())?,
                to_us: c[2].parse().map_err(|_| bad())?,
            });
        }
    }
    Ok(out)
}

/// (generation, attempt) of a version; attempt None for CANCELLED.
fn decode(version: u64) -> (u32, Option<u32>) {
    let generation = (version >> 32) as u32;
    let low = version & 0xFFFF_FFFF;
    if low == 0xFFFF_FFFF {
        (generation, None)
    } else {
        (generation, Some((low >> 3) as u32))
    }
}

struct Examples<'a> {
    out: &'a mut Vec<String>,
    per: HashMap<&'static str, usize>,
}

impl Examples<'_> {
    fn add(&mut self, check: &'static str, text: impl FnOnce() -> String) {
        let n = self.per.entry(check).or_default();
        if *n < EXAMPLES_PER_CHECK {
            *n += 1;
            self.out.push(format!("{check}: {}", text()));
        }
    }
}

fn fmt_events(evs: &[EventRec]) -> String {
    evs.iter()
        .map(|e| format!("{}@{:#x}", e.state, e.version))
        .collect::<Vec<_>>()
        .join(" ")
}

/// When each (generation, attempt) outcome and each generation's terminal state was first
/// committed, from the events' timestamps.
struct Commits {
    outcomes: HashMap<(u32, u32), i64>,
    /// (generation, state, committed at), first terminal event per generation.
    terminals: Vec<(u32, TaskState, i64)>,
}

fn commits(evs: &[EventRec], row: Option<&StoredRow>) -> Commits {
    let mut outcomes = HashMap::new();
    let mut terminals: Vec<(u32, TaskState, i64)> = Vec::new();
    for e in evs {
        let Some(ts) = e.ts_us else { continue };
        let (g, a) = decode(e.version);
        if matches!(
            e.state,
            TaskState::Retrying | TaskState::Succeeded | TaskState::Dead
        ) && let Some(a) = a
        {
            outcomes.entry((g, a)).or_insert(ts);
        }
        if e.state.is_terminal() && !terminals.iter().any(|t| t.0 == g) {
            terminals.push((g, e.state, ts));
        }
    }
    // No terminal event (lost): the row's finished_at, which the writer sets just before its
    // commit (the missing event fails the audit on its own).
    if terminals.is_empty()
        && let Some(r) = row
        && r.state.is_terminal()
        && let Some(f) = r.finished_us
    {
        terminals.push((r.generation, r.state, f));
    }
    Commits {
        outcomes,
        terminals,
    }
}

/// Whether an execution of `generation` starting at `start_us` started after a committed
/// terminal state that it may not follow (a redrive of DEAD in a later generation may).
fn after_terminal(c: &Commits, generation: u32, start_us: i64) -> Option<(u32, TaskState, i64)> {
    c.terminals.iter().copied().find(|&(g, st, ts)| {
        start_us > ts + TS_SLACK_US && (generation <= g || st != TaskState::Dead)
    })
}

fn check_events(h: &History, v: &mut Verdict, ex: &mut Examples<'_>) {
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
        if changed {
            v.terminal_changed += 1;
            ex.add("terminal_changed", || {
                format!(
                    "{id}: events {}; MySQL {}@{:#x}",
                    fmt_events(evs),
                    row.state,
                    row.version
                )
            });
        }
        // The last event is the row.
        let last = evs.last();
        if last.is_none_or(|e| e.state != row.state || e.version != row.version) {
            v.last_event_mismatch += 1;
            ex.add("last_event_mismatch", || {
                format!(
                    "{id}: events [{}]; MySQL {}@{:#x}",
                    fmt_events(evs),
                    row.state,
                    row.version
                )
            });
        }
    }
}

fn check_executions(h: &History, v: &mut Verdict, ex: &mut Examples<'_>) {
    let no_events: Vec<EventRec> = Vec::new();
    let ids: HashSet<&TaskId> = h.execs.keys().chain(h.attempts.keys()).collect();
    for id in ids {
        let execs = h.execs.get(id).map(Vec::as_slice).unwrap_or_default();
        let attempts = h.attempts.get(id).map(Vec::as_slice).unwrap_or_default();
        let evs = h.events.get(id).unwrap_or(&no_events);
        let c = commits(evs, h.rows.get(id));

        let mut per_attempt: HashMap<(u32, u32), u64> = HashMap::new();
        for e in execs {
            *per_attempt.entry((e.generation, e.attempt)).or_default() += 1;
        }
        v.duplicate_runs_before_commit += per_attempt.values().map(|n| n - 1).sum::<u64>();

        // Ran after terminal (ledger rows, then task_attempts rows).
        let late_exec = execs.iter().find_map(|e| {
            let s = e.started_us?;
            after_terminal(&c, e.generation, s).map(|t| (e, t))
        });
        let late_attempt = attempts
            .iter()
            .find_map(|a| after_terminal(&c, a.generation, a.started_us).map(|t| (a, t)));
        if late_exec.is_some() || late_attempt.is_some() {
            v.ran_after_terminal += 1;
            ex.add("ran_after_terminal", || match (late_exec, late_attempt) {
                (Some((e, t)), _) => format!(
                    "{id}: {} committed at {} us (generation {}); execution of generation {} attempt {} on {} started at {} us",
                    t.1, t.2, t.0, e.generation, e.attempt, e.instance, e.started_us.unwrap_or(0)
                ),
                (None, Some((a, t))) => format!(
                    "{id}: {} committed at {} us (generation {}); attempt {} of generation {} ({}) started at {} us (task_attempts)",
                    t.1, t.2, t.0, a.attempt, a.generation, a.outcome, a.started_us
                ),
                (None, None) => String::new(),
            });
        }

        // Re-run after its own outcome was committed.
        if let Some(e) = execs.iter().find(|e| {
            e.started_us.is_some_and(|s| {
                c.outcomes
                    .get(&(e.generation, e.attempt))
                    .is_some_and(|&ts| s > ts + TS_SLACK_US)
            })
        }) {
            v.reran_after_commit += 1;
            ex.add("reran_after_commit", || {
                format!(
                    "{id}: attempt {} of generation {} committed at {} us, run again on {} at {} us",
                    e.attempt,
                    e.generation,
                    c.outcomes[&(e.generation, e.attempt)],
                    e.instance,
                    e.started_us.unwrap_or(0)
                )
            });
        }

        // Two at once.
        let mut timed: Vec<&Exec> = execs.iter().filter(|e| e.started_us.is_some()).collect();
        timed.sort_by_key(|e| e.start());
        let mut concurrent: Option<(&Exec, &Exec)> = None;
        let mut zombie = false;
        for (i, a) in timed.iter().enumerate() {
            let a_start = a.start().0;
            for b in &timed[i + 1..] {
                let b_start = b.start().0;
                if b_start >= a.finished_us {
                    continue;
                }
                let frozen = a.pid().is_some_and(|pid| {
                    h.frozen
                        .iter()
                        .any(|f| f.pid == pid && f.from_us < b_start && f.to_us > a_start)
                });
                if frozen {
                    zombie = true;
                } else if concurrent.is_none() {
                    concurrent = Some((a, b));
                }
            }
        }
        if let Some((a, b)) = concurrent {
            v.concurrent_runs += 1;
            ex.add("concurrent_runs", || {
                format!(
                    "{id}: generation {} attempt {} on {} ran {}..{} us; generation {} attempt {} on {} started at {} us",
                    a.generation,
                    a.attempt,
                    a.instance,
                    a.start().0,
                    a.finished_us,
                    b.generation,
                    b.attempt,
                    b.instance,
                    b.start().0
                )
            });
        } else if zombie {
            v.zombie_overlaps += 1;
        }
    }
}

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

fn check_order(h: &History, v: &mut Verdict, ex: &mut Examples<'_>) {
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

fn check_submits(h: &History, v: &mut Verdict, ex: &mut Examples<'_>) {
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

/// Judges a history.
pub fn judge(h: &History) -> Verdict {
    let mut v = Verdict::default();
    let mut examples = Vec::new();
    let mut ex = Examples {
        out: &mut examples,
        per: HashMap::new(),
    };
    let ids: HashSet<TaskId> = h.accepted.iter().map(|a| a.task_id).collect();
    v.accepted = ids.len() as u64;
    v.recorded = h.accepted.len() as u64;
    for l in &h.loads {
        let (o, a, r) = l.items();
        v.offered += o;
        v.accepted_submits += a;
        for (k, n) in r {
            *v.rejected_by_code.entry(k).or_default() += n;
        }
    }
    v.stored = ids.iter().filter(|id| h.rows.contains_key(id)).count() as u64;
    v.missing = v.accepted - v.stored;
    for id in &ids {
        if let Some(r) = h.rows.get(id) {
            if r.state.is_terminal() {
                *v.terminal.entry(r.state.as_str().to_owned()).or_default() += 1;
            } else {
                v.not_terminal += 1;
            }
        }
    }
    for id in ids.iter().filter(|id| !h.rows.contains_key(id)) {
        ex.add("missing", || id.to_string());
    }
    v.events_checked = h.events_checked;
    v.events_complete = h.events_incomplete.is_none();

    // (Rows, ledger rows and events are read for the accepted ids only.)
    check_events(h, &mut v, &mut ex);
    check_executions(h, &mut v, &mut ex);
    check_order(h, &mut v, &mut ex);
    check_submits(h, &mut v, &mut ex);

    let mut r = Vec::new();
    if v.accepted == 0 {
        r.push("empty run: no accepted task to audit".to_owned());
    }
    if h.floor > 0.0 {
        if h.loads.is_empty() {
            r.push("no load report (--load): the floor of accepted work was not checked".into());
        } else if (v.accepted_submits as f64) < h.floor * v.offered as f64 {
            r.push(format!(
                "too little work: {} of {} offered submits accepted, below the floor of {:.0}% (rejected {:?})",
                v.accepted_submits,
                v.offered,
                h.floor * 100.0,
                v.rejected_by_code
            ));
        }
    }
    if !h.loads.is_empty() && v.recorded < v.accepted_submits {
        r.push(format!(
            "the ids files hold {} accepted submits, the load reports {}",
            v.recorded, v.accepted_submits
        ));
    }
    if let Some(why) = &h.events_incomplete {
        r.push(format!("events topic not read to its end: {why}"));
    }
    let counts = [
        (v.missing, "tasks missing"),
        (v.not_terminal, "tasks not terminal"),
        (
            v.terminal_changed,
            "tasks changed a committed terminal state",
        ),
        (
            v.last_event_mismatch,
            "tasks whose last event differs from MySQL",
        ),
        (
            v.ran_after_terminal,
            "tasks executed after their terminal commit",
        ),
        (
            v.reran_after_commit,
            "tasks with an attempt re-run after its outcome was committed",
        ),
        (v.concurrent_runs, "tasks run by two executions at once"),
        (v.order_violations, "keys out of submission order"),
        (
            v.idempotency_conflicts_accepted,
            "idempotency keys accepted for different requests",
        ),
        (
            v.idempotency_split,
            "idempotency keys with several task ids",
        ),
        (
            v.key_mismatch,
            "tasks stored with another business key than submitted",
        ),
        (
            v.tenant_mismatch,
            "tasks stored with another tenant than submitted",
        ),
        (
            v.foreign_cancels_applied,
            "tasks cancelled by another tenant",
        ),
    ];
    for (n, what) in counts {
        if n > 0 {
            r.push(format!("{n} {what}"));
        }
    }
    v.reasons = r;
    v.examples = examples;
    v.timing = timing(h);
    v
}

fn ts_us(t: Option<chrono::DateTime<chrono::Utc>>) -> Option<i64> {
    t.map(|t| t.timestamp_micros())
}

async fn rows(pool: &MySqlPool, ids: &[TaskId]) -> anyhow::Result<HashMap<TaskId, StoredRow>> {
    let mut out = HashMap::new();
    for chunk in ids.chunks(1000) {
        let mut qb = sqlx::QueryBuilder::new(
            "SELECT task_id, state, version, generation, finished_at, tenant, business_key FROM tasks WHERE task_id IN (",
        );
        let mut sep = qb.separated(", ");
        for id in chunk {
            sep.push_bind(id.as_bytes().to_vec());
        }
        qb.push(")");
        for r in qb.build().fetch_all(pool).await? {
            let id = TaskId::from_slice(&r.try_get::<Vec<u8>, _>(0)?)?;
            let st: String = r.try_get(1)?;
            let state =
                TaskState::parse(&st).ok_or_else(|| anyhow::anyhow!("unknown state {st}"))?;
            out.insert(
                id,
                StoredRow {
                    state,
                    version: r.try_get(2)?,
                    generation: r.try_get(3)?,
                    finished_us: ts_us(r.try_get(4)?),
                    tenant: r.try_get(5)?,
                    // utf8mb4_bin: the driver sees a binary string.
                    business_key: String::from_utf8_lossy(&r.try_get::<Vec<u8>, _>(6)?)
                        .into_owned(),
                },
            );
        }
    }
    Ok(out)
}

async fn ledger(pool: &MySqlPool, ids: &[TaskId]) -> anyhow::Result<HashMap<TaskId, Vec<Exec>>> {
    let mut out: HashMap<TaskId, Vec<Exec>> = HashMap::new();
    for chunk in ids.chunks(1000) {
        let mut qb = sqlx::QueryBuilder::new(
            "SELECT id, task_id, generation, attempt, executed_at, instance, started_at, outcome FROM handler_executions WHERE task_id IN (",
        );
        let mut sep = qb.separated(", ");
        for id in chunk {
            sep.push_bind(id.as_bytes().to_vec());
        }
        qb.push(") ORDER BY id");
        for r in qb.build().fetch_all(pool).await? {
            let id = TaskId::from_slice(&r.try_get::<Vec<u8>, _>(1)?)?;
            let finished: chrono::DateTime<chrono::Utc> = r.try_get(4)?;
            out.entry(id).or_default().push(Exec {
                id: r.try_get(0)?,
                generation: r.try_get(2)?,
                attempt: r.try_get(3)?,
                finished_us: finished.timestamp_micros(),
                instance: r.try_get(5)?,
                started_us: ts_us(r.try_get(6)?),
                outcome: r.try_get(7)?,
            });
        }
    }
    Ok(out)
}

async fn attempts(
    pool: &MySqlPool,
    ids: &[TaskId],
) -> anyhow::Result<HashMap<TaskId, Vec<AttemptRec>>> {
    let mut out: HashMap<TaskId, Vec<AttemptRec>> = HashMap::new();
    for chunk in ids.chunks(1000) {
        let mut qb = sqlx::QueryBuilder::new(
            "SELECT task_id, generation, attempt, outcome, started_at FROM task_attempts WHERE task_id IN (",
        );
        let mut sep = qb.separated(", ");
        for id in chunk {
            sep.push_bind(id.as_bytes().to_vec());
        }
        qb.push(")");
        for r in qb.build().fetch_all(pool).await? {
            let id = TaskId::from_slice(&r.try_get::<Vec<u8>, _>(0)?)?;
            let started: chrono::DateTime<chrono::Utc> = r.try_get(4)?;
            out.entry(id).or_default().push(AttemptRec {
                generation: r.try_get(1)?,
                attempt: r.try_get(2)?,
                outcome: r.try_get(3)?,
                started_us: started.timestamp_micros(),
            });
        }
    }
    Ok(out)
}

/// Reads the events topic from its beginning, and on demand further to its current end.
struct EventsReader {
    consumer: rdkafka::consumer::BaseConsumer,
    topic: String,
    partitions: Vec<i32>,
    /// Next offset to read, per partition (from the records seen).
    next: HashMap<i32, i64>,
    wanted: HashSet<TaskId>,
    events: HashMap<TaskId, Vec<EventRec>>,
    checked: u64,
}

impl EventsReader {
    fn open(brokers: &str, topic: &str, wanted: HashSet<TaskId>) -> anyhow::Result<Self> {
        use rdkafka::consumer::Consumer;
        use rdkafka::{ClientConfig, Offset, TopicPartitionList};
        let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("audit-{}", uuid::Uuid::now_v7()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create()?;
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
            partitions,
            next: HashMap::new(),
            wanted,
            events: HashMap::new(),
            checked: 0,
        })
    }

    /// Reads up to the current end of every partition. `Ok(None)` when it got there within
    /// `timeout`, `Ok(Some(why))` when not.
    fn catch_up(&mut self, timeout: Duration) -> anyhow::Result<Option<String>> {
        use prost::Message as _;
        use rdkafka::Message;
        use rdkafka::consumer::Consumer;
        let deadline = std::time::Instant::now() + timeout;
        let mut ends: HashMap<i32, (i64, i64)> = HashMap::new();
        for p in &self.partitions {
            let (lo, hi) =
                self.consumer
                    .fetch_watermarks(&self.topic, *p, Duration::from_secs(10))?;
            ends.insert(*p, (lo, hi));
        }
        let behind = |next: &HashMap<i32, i64>, p: i32, (lo, hi): (i64, i64)| {
            hi > (*next.get(&p).unwrap_or(&0)).max(lo)
        };
        loop {
            let remaining: Vec<i32> = ends
                .iter()
                .filter(|(p, e)| behind(&self.next, **p, **e))
                .map(|(p, _)| *p)
                .collect();
            if remaining.is_empty() {
                return Ok(None);
            }
            if std::time::Instant::now() >= deadline {
                let why = remaining
                    .iter()
                    .map(|p| {
                        format!(
                            "partition {p} read to offset {} of {}",
                            self.next.get(p).copied().unwrap_or(ends[p].0),
                            ends[p].1
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                return Ok(Some(format!(
                    "{} after {:.0} s: {why}",
                    self.topic,
                    timeout.as_secs_f64()
                )));
            }
            let Some(msg) = self.consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let msg = msg?;
            self.next.insert(msg.partition(), msg.offset() + 1);
            let Some(value) = msg.payload() else { continue };
            let Ok(ev) = dispatch_proto::v1::TaskEvent::decode(value) else {
                continue;
            };
            let Ok(id) = TaskId::parse(&ev.task_id) else {
                continue;
            };
            if !self.wanted.contains(&id) {
                continue;
            }
            let Some(state) = dispatch_proto::v1::TaskState::try_from(ev.state)
                .ok()
                .and_then(TaskState::from_proto)
            else {
                continue;
            };
            self.checked += 1;
            self.events.entry(id).or_default().push(EventRec {
                state,
                version: ev.version,
                ts_us: msg.timestamp().to_millis().map(|ms| ms * 1000),
                result: ev.task.map(|t| t.result).unwrap_or_default(),
            });
        }
    }
}

/// Runs the audit.
///
/// # Errors
/// Unreachable database or unreadable files (a failed *guarantee* is a verdict, not an error).
pub async fn audit(a: &AuditArgs) -> anyhow::Result<Verdict> {
    let accepted = read_ids(&a.ids)?;
    let mut loads = Vec::new();
    for p in &a.loads {
        let text =
            std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        loads.push(
            serde_json::from_str::<LoadSummary>(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        );
    }
    let mut h = History {
        unanswered: read_unanswered(&a.ids)?,
        cancels: read_cancels(&a.cancels)?,
        frozen: read_frozen(&a.frozen)?,
        loads,
        floor: a.floor,
        ..Default::default()
    };
    let mut ids: Vec<TaskId> = accepted.iter().map(|x| x.task_id).collect();
    ids.sort();
    ids.dedup();
    h.accepted = accepted;
    let pool = MySqlPool::connect(&a.database_url).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(a.wait_s);
    h.rows = loop {
        let stored = rows(&pool, &ids).await?;
        let done = stored.len() == ids.len() && stored.values().all(|r| r.state.is_terminal());
        if done || tokio::time::Instant::now() >= deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    h.execs = ledger(&pool, &ids).await?;
    h.attempts = attempts(&pool, &ids).await?;

    let mut reader = if a.brokers.is_empty() {
        h.events_incomplete = Some("no --brokers: the events were not read".into());
        None
    } else {
        let wanted: HashSet<TaskId> = ids.iter().copied().collect();
        let (brokers, topic) = (a.brokers.clone(), a.events_topic.clone());
        let timeout = Duration::from_secs_f64(a.events_timeout_s);
        let r = tokio::task::spawn_blocking(
            move || -> anyhow::Result<(EventsReader, Option<String>)> {
                let mut r = EventsReader::open(&brokers, &topic, wanted)?;
                let why = r.catch_up(timeout)?;
                Ok((r, why))
            },
        )
        .await??;
        h.events_incomplete = r.1;
        Some(r.0)
    };
    let take = |h: &mut History, r: &EventsReader| {
        h.events = r.events.clone();
        h.events_checked = r.checked;
    };
    if let Some(r) = &reader {
        take(&mut h, r);
    }
    let mut v = judge(&h);
    // Events are produced after their MySQL commit: a last event that differs from MySQL may
    // still be on its way. Read on (and re-read the rows) for up to settle_s.
    let settle = tokio::time::Instant::now() + Duration::from_secs_f64(a.settle_s);
    while v.last_event_mismatch > 0
        && h.events_incomplete.is_none()
        && tokio::time::Instant::now() < settle
        && let Some(r) = reader.take()
    {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (r, why) = tokio::task::spawn_blocking(move || {
            let mut r = r;
            let why = r.catch_up(Duration::from_secs(30));
            (r, why)
        })
        .await?;
        h.events_incomplete = why?;
        take(&mut h, &r);
        reader = Some(r);
        h.rows = rows(&pool, &ids).await?;
        v = judge(&h);
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&v)?)?;
    }
    Ok(v)
}

#[cfg(test)]
mod tests;
