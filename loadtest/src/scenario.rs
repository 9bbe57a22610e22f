//! Request makers: what one scheduled call does in each scenario.
//!
//! Submits are built per sequence number from the run's flags. Without any `--*-share` flag every
//! task is the same (`--task-type`, one payload). With them the load is mixed, deterministically
//! per sequence number (a hash of it, so a run is reproducible): noop and simulate tasks,
//! simulate plans with a latency range, failures, permanent failures, failures that a redrive
//! cures, panics; some idempotency keys, some conflicting reuses of a key (a different business
//! key, priority or payload, or an exact duplicate), some `run_at`, some cancels after a delay,
//! and some cancels by another tenant of the id an idempotency key will produce, sent before
//! the submit.
//!
//! Every accepted submit is appended to `--record-ids` (see [`crate::audit::read_ids`] for the
//! columns), every cancel to `--record-cancels`. The workflow scenario (SubmitWorkflow of chains,
//! fan-outs and diamonds) is in `workflow`; it also writes `--record-workflows`.
//! The deterministic choices of a mixed load are in `mix`, the cancels' log and worker in
//! `cancel`.
//!
//! Over 400 lines because every request kind's maker (`Scenario`'s methods) reads the one mix
//! of flags and shares the connections and the recording state; the workflow load, the mix and
//! the cancels are modules already.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::{StreamExt as _, TryStreamExt as _};

use dispatch_proto::v1 as pb;
use dispatch_proto::v1::task_query_service_client::TaskQueryServiceClient;
use dispatch_proto::v1::task_service_client::TaskServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

/// A JSON-lines file the load generator appends to (ids, cancels, workflows), shared by its
/// workers.
type AppendLog = Mutex<std::io::BufWriter<std::fs::File>>;

/// Opens `path` for appending (created when missing).
fn append_log(path: &std::path::Path) -> std::io::Result<AppendLog> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    Ok(Mutex::new(std::io::BufWriter::new(file)))
}

use crate::{Kind, RunArgs};

mod cancel;
mod mix;
mod workflow;

use cancel::{CancelJob, cancel_worker};
pub use cancel::{CancelLog, send_cancel};
use mix::*;
pub use mix::{fingerprint, parse_priority_mix, pick_priority, roll};
pub use workflow::WorkflowLog;
use workflow::WorkflowMix;

/// Microseconds since the Unix epoch (the clock the ids and cancels files use).
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Counts of one run's items (tasks offered in submits) and cancels, for the report.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Tasks offered (items of submit calls, warm-up included).
    pub offered: u64,
    /// Tasks accepted.
    pub accepted: u64,
    /// Tasks refused, by gRPC code.
    pub rejected: BTreeMap<String, u64>,
    /// Cancels by `own|foreign:outcome`.
    pub cancels: BTreeMap<String, u64>,
}

/// One planned submit.
struct Item {
    spec: pb::TaskSpec,
    scheduled: bool,
    cancel_after: Option<Duration>,
    foreign_cancel: bool,
    /// Another tenant cancels the accepted task after this delay.
    foreign_cancel_after: Option<Duration>,
}

/// A connected scenario.
pub struct Scenario {
    kind: Kind,
    gateways: Vec<TaskServiceClient<Channel>>,
    readers: Vec<TaskQueryServiceClient<Channel>>,
    auth: MetadataValue<Ascii>,
    foreign_auth: Option<MetadataValue<Ascii>>,
    payload: Vec<u8>,
    keys: usize,
    key_prefix: String,
    batch: usize,
    task_type: String,
    ids: Vec<String>,
    timeout: Duration,
    idempotency: Option<String>,
    label: String,
    tenant: String,
    mix: Mix,
    t0: SystemTime,
    interval: Duration,
    record: Option<AppendLog>,
    cancels: Arc<CancelLog>,
    cancel_tx: Mutex<Option<tokio::sync::mpsc::UnboundedSender<CancelJob>>>,
    cancel_worker: Mutex<Option<tokio::task::JoinHandle<()>>>,
    counts: Mutex<Counts>,
    /// `--priority-mix`, parsed.
    priorities: Vec<(i32, f64)>,
    /// The workflow load's knobs.
    wf: WorkflowMix,
    /// `--record-workflows`.
    workflows: Arc<WorkflowLog>,
}

/// The mixed-load knobs of `run` (all off by default).
async fn channels(addrs: &[String], n: usize) -> anyhow::Result<Vec<Channel>> {
    // Interleaved (a, b, a, b, ...): consecutive calls go to different endpoints.
    let mut per_addr = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let ch = Endpoint::from_shared(addr.clone())?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .connect()
                .await
                .map_err(|e| anyhow::anyhow!("cannot connect to {addr}: {e}"))?;
            v.push(ch);
        }
        per_addr.push(v);
    }
    let mut out = Vec::with_capacity(addrs.len() * n);
    for i in 0..n {
        for v in &per_addr {
            out.push(v[i].clone());
        }
    }
    Ok(out)
}

/// A JSON payload of about `n` bytes: a `simulate` plan (the `noop` handler ignores it) padded out.
fn auth_value(key: &str, flag: &str) -> anyhow::Result<MetadataValue<Ascii>> {
    format!("Bearer {key}")
        .parse()
        .map_err(|_| anyhow::anyhow!("{flag} must be ASCII"))
}

impl Scenario {
    /// Connects and, for `get`, seeds the task set.
    ///
    /// # Errors
    /// Unreachable servers or a failing seed.
    pub async fn connect(a: &RunArgs) -> anyhow::Result<Self> {
        let needs_reader = matches!(a.scenario, Kind::Get | Kind::E2e);
        let gateways: Vec<TaskServiceClient<Channel>> = channels(&a.gateway, a.connections)
            .await?
            .into_iter()
            .map(TaskServiceClient::new)
            .collect();
        let readers = if needs_reader {
            channels(&a.reader, a.connections)
                .await?
                .into_iter()
                .map(TaskQueryServiceClient::new)
                .collect()
        } else {
            Vec::new()
        };
        anyhow::ensure!(!gateways.is_empty(), "--gateway needs at least one address");
        let mix = Mix::from_args(a);
        anyhow::ensure!(
            mix.foreign_cancel_share == 0.0
                || (a.foreign_api_key.is_some() && !a.tenant.is_empty()),
            "--foreign-cancel-share needs --foreign-api-key and --tenant (to compute the ids the tenant's idempotency keys produce)"
        );
        anyhow::ensure!(
            mix.foreign_cancel_after_share == 0.0 || a.foreign_api_key.is_some(),
            "--foreign-cancel-after-share needs --foreign-api-key"
        );
        let foreign_auth = a
            .foreign_api_key
            .as_deref()
            .map(|k| auth_value(k, "--foreign-api-key"))
            .transpose()?;
        let cancels = Arc::new(CancelLog::open(a.record_cancels.as_deref())?);
        let workflows = Arc::new(WorkflowLog::open(a.record_workflows.as_deref())?);
        let auth = auth_value(&a.api_key, "--api-key")?;
        let timeout = Duration::from_millis(a.timeout_ms);
        let (cancel_tx, cancel_rx) = tokio::sync::mpsc::unbounded_channel::<CancelJob>();
        let worker = tokio::spawn(cancel_worker(
            cancel_rx,
            gateways.clone(),
            auth.clone(),
            foreign_auth.clone(),
            timeout,
            (cancels.clone(), workflows.clone()),
            a.tenant.clone(),
        ));
        let label = if a.label.is_empty() {
            "run".to_owned()
        } else {
            a.label.clone()
        };
        let mut s = Self {
            kind: a.scenario,
            gateways,
            readers,
            auth,
            foreign_auth,
            payload: payload(a.payload_bytes, a.sim_latency_ms, a.sim_fail_rate),
            keys: a.keys.max(1),
            key_prefix: a.key_prefix.clone(),
            batch: a.batch.clamp(1, 1000),
            task_type: a.task_type.clone(),
            ids: Vec::new(),
            timeout,
            idempotency: a.idempotency.then(|| label.clone()),
            label,
            tenant: a.tenant.clone(),
            mix,
            t0: SystemTime::now(),
            interval: Duration::from_secs_f64(1.0 / a.rate.max(1e-9)),
            record: a
                .record_ids
                .as_deref()
                .map(|p| {
                    append_log(p).map_err(|e| anyhow::anyhow!("--record-ids {}: {e}", p.display()))
                })
                .transpose()?,
            cancels,
            cancel_tx: Mutex::new(Some(cancel_tx)),
            cancel_worker: Mutex::new(Some(worker)),
            counts: Mutex::new(Counts::default()),
            priorities: parse_priority_mix(&a.priority_mix)?,
            wf: WorkflowMix {
                chain_max: a.wf_chain_max,
                fanout_max: a.wf_fanout_max,
                fail_share: a.wf_fail_share,
                run_edge_share: a.wf_run_edge_share,
                with_deps_share: a.wf_with_deps_share,
                cancel_share: a.wf_cancel_share,
            },
            workflows,
        };
        if a.scenario == Kind::Get {
            s.ids = s.seed(a.get_set.max(1)).await?;
        }
        Ok(s)
    }

    /// Items per call (batch size for `batch`, else 1).
    pub fn items_per_call(&self) -> usize {
        if self.kind == Kind::Batch {
            self.batch
        } else {
            1
        }
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut().insert("authorization", self.auth.clone());
        r.set_timeout(self.timeout);
        r
    }

    fn idem_key(&self, seq: u64) -> String {
        format!("{}-{seq}", self.label)
    }

    /// Whether item `seq` reuses the idempotency key of item `seq - 1` (never two in a row).
    fn conflicts(&self, seq: u64) -> bool {
        let share = self.mix.conflict_share;
        share > 0.0
            && seq > 0
            && roll(seq, SALT_CONFLICT) < share
            && roll(seq - 1, SALT_CONFLICT) >= share
    }

    fn retry_policy(&self) -> Option<pb::RetryPolicy> {
        (self.mix.max_attempts > 0 || self.mix.initial_backoff_ms > 0).then_some(pb::RetryPolicy {
            max_attempts: self.mix.max_attempts,
            initial_backoff_ms: self.mix.initial_backoff_ms,
            max_backoff_ms: 0,
        })
    }

    /// The item of `seq` without conflicts.
    fn base_item(&self, seq: u64) -> Item {
        let m = &self.mix;
        let business_key = format!("{}{}", self.key_prefix, seq % self.keys as u64);
        if !m.on {
            return Item {
                spec: pb::TaskSpec {
                    business_key,
                    task_type: self.task_type.clone(),
                    payload: self.payload.clone(),
                    idempotency_key: self
                        .idempotency
                        .as_ref()
                        .map(|p| format!("{p}-{seq}"))
                        .unwrap_or_default(),
                    priority: pick_priority(&self.priorities, roll(seq, SALT_PRIORITY)),
                    ..Default::default()
                },
                scheduled: false,
                cancel_after: None,
                foreign_cancel: false,
                foreign_cancel_after: None,
            };
        }
        let task_type = if roll(seq, SALT_NOOP) < m.noop_share {
            "noop".to_owned()
        } else {
            self.task_type.clone()
        };
        let payload = if task_type == "simulate" {
            let latency = m.latency_ms
                + ((m.latency_max_ms - m.latency_ms) as f64 * roll(seq, SALT_LATENCY)) as u64;
            let mut fields = format!(r#""latency_ms":{latency},"fail_rate":{}"#, m.fail_rate);
            let r = roll(seq, SALT_KIND);
            if r < m.panic_share {
                fields.push_str(r#","panic":true"#);
            } else if r < m.panic_share + m.redrivable_share {
                fields.push_str(r#","permanent":true,"fail_generations":1"#);
            } else if r < m.panic_share + m.redrivable_share + m.permanent_share {
                fields.push_str(r#","permanent":true"#);
            }
            plan_payload(self.payload.len(), &fields)
        } else {
            self.payload.clone()
        };
        let idem = self.idempotency.is_some()
            || roll(seq, SALT_IDEM) < m.idempotency_share
            || self.conflicts(seq + 1);
        let scheduled = roll(seq, SALT_RUN_AT) < m.run_at_share;
        let run_at = scheduled.then(|| {
            let at = match m.run_at_unix_ms {
                Some(ms) => SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64),
                None => {
                    self.t0 + self.interval.mul_f64(seq as f64) + Duration::from_millis(m.run_at_ms)
                }
            };
            let d = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            dispatch_proto::Timestamp {
                seconds: d.as_secs() as i64,
                nanos: d.subsec_nanos() as i32,
            }
        });
        let cancel_after = (roll(seq, SALT_CANCEL) < m.cancel_share).then(|| {
            Duration::from_millis(
                (m.cancel_delay_max_ms as f64 * roll(seq, SALT_CANCEL_DELAY)) as u64,
            )
        });
        Item {
            spec: pb::TaskSpec {
                business_key,
                task_type,
                payload,
                idempotency_key: if idem {
                    self.idem_key(seq)
                } else {
                    String::new()
                },
                run_at,
                retry_policy: self.retry_policy(),
                priority: pick_priority(&self.priorities, roll(seq, SALT_PRIORITY)),
                ..Default::default()
            },
            scheduled,
            cancel_after,
            foreign_cancel: idem && roll(seq, SALT_FOREIGN) < m.foreign_cancel_share,
            foreign_cancel_after: (roll(seq, SALT_FOREIGN_AFTER) < m.foreign_cancel_after_share)
                .then(|| {
                    Duration::from_millis(
                        (m.foreign_cancel_delay_max_ms as f64 * roll(seq, SALT_FOREIGN_DELAY))
                            as u64,
                    )
                }),
        }
    }

    /// The item of `seq`: a conflicting reuse of `seq - 1`'s idempotency key (by `seq % 4`: another
    /// business key, another priority, another payload, or an exact duplicate), or its own.
    fn item(&self, seq: u64) -> Item {
        if !self.conflicts(seq) {
            return self.base_item(seq);
        }
        let mut it = self.base_item(seq - 1);
        it.cancel_after = None;
        it.foreign_cancel = false;
        it.foreign_cancel_after = None;
        match seq % 4 {
            0 => {
                it.spec.business_key = if self.keys > 1 {
                    format!(
                        "{}{}",
                        self.key_prefix,
                        (seq - 1 + self.keys as u64 / 2) % self.keys as u64
                    )
                } else {
                    "key-conflict".into()
                };
            }
            1 => it.spec.priority = pb::Priority::Critical as i32,
            2 => {
                it.spec.payload = plan_payload(0, &format!(r#""latency_ms":1,"conflict":{seq}"#));
            }
            _ => {}
        }
        it
    }

    /// Appends an accepted task to the `--record-ids` file.
    fn note(&self, it: &Item, a: &pb::SubmitTaskResponse, sent_us: i64, acked_us: i64) {
        use std::io::Write as _;
        let Some(w) = &self.record else { return };
        let via = if a.accepted_via == pb::AcceptedVia::Outbox as i32 {
            "outbox"
        } else {
            "kafka"
        };
        let offset = if via == "outbox" {
            a.outbox_id as i64
        } else {
            a.offset
        };
        let s = &it.spec;
        let mut flags = vec![format!("fp={:016x}", fingerprint(s))];
        if !self.tenant.is_empty() {
            flags.push(format!("tenant={}", self.tenant));
        }
        if !s.idempotency_key.is_empty() {
            flags.push(format!("idem={}", s.idempotency_key));
        }
        if it.scheduled {
            flags.push("run_at".into());
        }
        if a.duplicate {
            flags.push("dup".into());
        }
        if s.priority != 0 {
            flags.push(format!("prio={}", s.priority));
        }
        if let Ok(mut w) = w.lock() {
            let _ = writeln!(
                w,
                "{}\t{}\t{via}\t{}\t{}\t{offset}\t{sent_us}\t{acked_us}\t{}",
                a.task_id,
                s.business_key,
                a.topic,
                a.partition,
                flags.join(",")
            );
        }
    }

    fn count(&self, result: Result<(), Code>) {
        if let Ok(mut c) = self.counts.lock() {
            c.offered += 1;
            match result {
                Ok(()) => c.accepted += 1,
                Err(code) => *c.rejected.entry(format!("{code:?}")).or_default() += 1,
            }
        }
    }

    /// What was offered, accepted and cancelled so far.
    pub fn counts(&self) -> Counts {
        let mut c = self.counts.lock().map(|c| c.clone()).unwrap_or_default();
        c.cancels = self.cancels.counts();
        c
    }

    /// Waits for the cancels still due, then flushes the `--record-ids` and `--record-cancels`
    /// files.
    pub async fn finish(&self) {
        use std::io::Write as _;
        drop(self.cancel_tx.lock().ok().and_then(|mut t| t.take()));
        let worker = self.cancel_worker.lock().ok().and_then(|mut w| w.take());
        if let Some(w) = worker {
            let _ = w.await;
        }
        if let Some(w) = &self.record
            && let Ok(mut w) = w.lock()
        {
            let _ = w.flush();
        }
        self.cancels.flush();
        self.workflows.flush();
    }

    /// After an accepted submit: schedule its cancels (its tenant's, through the gateway that
    /// accepted it; another tenant's, through the other one), if the mix asks for them.
    fn after_accept(&self, pick: usize, it: &Item, task_id: &str) {
        let Ok(tx) = self.cancel_tx.lock() else {
            return;
        };
        let Some(tx) = tx.as_ref() else { return };
        let jobs = [
            (it.cancel_after, pick, false),
            (it.foreign_cancel_after, pick + 1, true),
        ];
        for (d, gateway, foreign) in jobs {
            if let Some(d) = d {
                let _ = tx.send(CancelJob {
                    gateway,
                    foreign,
                    workflow: false,
                    task_id: task_id.to_owned(),
                    key: it.spec.business_key.clone(),
                    at: tokio::time::Instant::now() + d,
                });
            }
        }
    }

    /// Before a submit: another tenant cancels the id this submit's idempotency key will
    /// produce, if the mix asks for it.
    async fn before_submit(&self, pick: usize, it: &Item) {
        let Some(foreign) = &self.foreign_auth else {
            return;
        };
        if !it.foreign_cancel {
            return;
        }
        let id =
            dispatch_core::TaskId::from_idempotency_key(&self.tenant, &it.spec.idempotency_key)
                .to_string();
        let mut c = self.gateways[pick % self.gateways.len()].clone();
        send_cancel(
            &mut c,
            foreign,
            self.timeout,
            &self.cancels,
            (&id, &it.spec.business_key, "foreign", true),
        )
        .await;
    }

    /// Submits `n` tasks and waits until the reader serves each (so `get` measures reads only).
    async fn seed(&self, n: usize) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::with_capacity(n);
        let mut gw = self.gateways[0].clone();
        for chunk in (0..n as u64).collect::<Vec<_>>().chunks(500) {
            let tasks = chunk.iter().map(|i| self.base_item(*i).spec).collect();
            let resp = gw
                .submit_tasks(self.request(pb::SubmitTasksRequest { tasks }))
                .await?
                .into_inner();
            for r in resp.results {
                match r.outcome {
                    Some(pb::submit_result::Outcome::Accepted(a)) => ids.push(a.task_id),
                    other => anyhow::bail!("seeding failed: {other:?}"),
                }
            }
        }
        // Wait until every seeded task is visible on the reader, 64 lookups at a time (one at a
        // time, a large set took minutes on a busy machine).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let visible = |id: String| {
            let mut reader = self.readers[0].clone();
            async move {
                loop {
                    let r = reader
                        .get_task(self.request(pb::GetTaskRequest {
                            task_id: id.clone(),
                            min_version: 1,
                        }))
                        .await;
                    match r {
                        Ok(_) => return Ok(()),
                        Err(_) if tokio::time::Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(50)).await
                        }
                        Err(e) => {
                            anyhow::bail!("seeded task {id} not visible on the reader: {e}")
                        }
                    }
                }
            }
        };
        futures::stream::iter(ids.clone())
            .map(visible)
            .buffer_unordered(64)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(ids)
    }

    /// One SubmitTask of item `seq`: the accepted answer, recorded and counted.
    async fn submit_one(&self, seq: u64) -> Result<pb::SubmitTaskResponse, Code> {
        let pick = seq as usize;
        let it = self.item(seq);
        self.before_submit(pick, &it).await;
        let mut c = self.gateways[pick % self.gateways.len()].clone();
        let sent = now_us();
        let r = c
            .submit_task(self.request(pb::SubmitTaskRequest {
                task: Some(it.spec.clone()),
            }))
            .await;
        let acked = now_us();
        match r {
            Ok(a) => {
                let a = a.into_inner();
                self.count(Ok(()));
                self.note(&it, &a, sent, acked);
                self.after_accept(pick, &it, &a.task_id);
                Ok(a)
            }
            Err(s) => {
                self.count(Err(s.code()));
                self.note_unanswered(&it, s.code(), sent);
                Err(s.code())
            }
        }
    }

    /// Records a keyed submit that was not answered OK (refused, or past the client's deadline):
    /// it may still have been made durable and run, so its task's place in its key's order is
    /// unknown to the audit (`# unanswered` lines of `--record-ids`).
    fn note_unanswered(&self, it: &Item, code: Code, sent_us: i64) {
        use std::io::Write as _;
        let Some(w) = &self.record else { return };
        if it.spec.idempotency_key.is_empty() {
            return; // its task id is unknown: nothing of it is audited
        }
        let id =
            dispatch_core::TaskId::from_idempotency_key(&self.tenant, &it.spec.idempotency_key);
        if let Ok(mut w) = w.lock() {
            let _ = writeln!(w, "{}\t{id}\t{code:?}\t{sent_us}", crate::audit::UNANSWERED);
        }
    }

    /// One scheduled call.
    pub async fn call(&self, seq: u64) -> Result<(), Code> {
        let pick = seq as usize;
        match self.kind {
            Kind::Submit => self.submit_one(seq).await.map(|_| ()),
            Kind::Workflow => self.submit_workflow(seq).await,
            Kind::Batch => {
                let mut c = self.gateways[pick % self.gateways.len()].clone();
                let base = seq * self.batch as u64;
                let items: Vec<Item> = (0..self.batch as u64)
                    .map(|i| self.item(base + i))
                    .collect();
                for it in &items {
                    self.before_submit(pick, it).await;
                }
                let tasks: Vec<pb::TaskSpec> = items.iter().map(|it| it.spec.clone()).collect();
                let sent = now_us();
                let resp = c
                    .submit_tasks(self.request(pb::SubmitTasksRequest { tasks }))
                    .await;
                let acked = now_us();
                let resp = match resp {
                    Ok(r) => r.into_inner(),
                    Err(s) => {
                        for it in &items {
                            self.count(Err(s.code()));
                            self.note_unanswered(it, s.code(), sent);
                        }
                        return Err(s.code());
                    }
                };
                let mut first_error = None;
                let mut answered = vec![false; items.len()];
                for r in &resp.results {
                    let it = items.get(r.index as usize);
                    if let Some(flag) = answered.get_mut(r.index as usize) {
                        *flag = true;
                    }
                    match &r.outcome {
                        Some(pb::submit_result::Outcome::Accepted(a)) => {
                            self.count(Ok(()));
                            if let Some(it) = it {
                                self.note(it, a, sent, acked);
                                self.after_accept(pick, it, &a.task_id);
                            }
                        }
                        Some(pb::submit_result::Outcome::Error(e)) => {
                            let code = Code::from_i32(e.code);
                            self.count(Err(code));
                            if let Some(it) = it {
                                self.note_unanswered(it, code, sent);
                            }
                            first_error.get_or_insert(code);
                        }
                        None => {
                            self.count(Err(Code::Unknown));
                            first_error.get_or_insert(Code::Unknown);
                        }
                    }
                }
                for _ in answered.iter().filter(|a| !**a) {
                    self.count(Err(Code::Unknown));
                    first_error.get_or_insert(Code::Unknown);
                }
                first_error.map_or(Ok(()), Err)
            }
            Kind::Get => {
                let mut c = self.readers[pick % self.readers.len()].clone();
                let id = self.ids[(seq as usize * 7919) % self.ids.len()].clone();
                c.get_task(self.request(pb::GetTaskRequest {
                    task_id: id,
                    min_version: 0,
                }))
                .await
                .map(|_| ())
                .map_err(|s| s.code())
            }
            Kind::E2e => {
                let mut r = self.readers[pick % self.readers.len()].clone();
                let accepted = self.submit_one(seq).await?;
                let mut stream = r
                    .watch_task(self.request(pb::WatchTaskRequest {
                        task_id: accepted.task_id.clone(),
                        min_version: accepted.version,
                    }))
                    .await
                    .map_err(|s| s.code())?
                    .into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(ev)) => {
                            let st = pb::TaskState::try_from(ev.state)
                                .unwrap_or(pb::TaskState::Unspecified);
                            if matches!(
                                st,
                                pb::TaskState::Succeeded
                                    | pb::TaskState::Dead
                                    | pb::TaskState::Cancelled
                            ) {
                                return Ok(());
                            }
                        }
                        Ok(None) => return Err(Code::Aborted),
                        Err(s) => return Err(s.code()),
                    }
                }
            }
        }
    }
}

/// Sends the scheduled cancels, each at its time, until the sender is dropped and all are done.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolls_are_uniform_enough_and_reproducible() {
        let n = 100_000u64;
        let below: usize = (0..n).filter(|s| roll(*s, SALT_CANCEL) < 0.1).count();
        assert!((9_000..11_000).contains(&below), "{below}");
        assert_eq!(roll(42, 1), roll(42, 1));
        assert_ne!(roll(42, 1), roll(42, 2));
        assert!((0..n).all(|s| (0.0..1.0).contains(&roll(s, 3))));
    }

    #[test]
    fn priority_mixes_parse_and_pick_in_proportion() {
        assert!(parse_priority_mix("").expect("empty").is_empty());
        assert_eq!(pick_priority(&[], 0.3), 0);
        let one = parse_priority_mix("low=2").expect("one");
        assert_eq!(one, vec![(pb::Priority::Low as i32, 1.0)]);
        assert_eq!(pick_priority(&one, 0.999), pb::Priority::Low as i32);
        let mix = parse_priority_mix("critical=6, default=3,low=1").expect("three");
        let n = 100_000u64;
        let mut seen = [0usize; 4];
        for seq in 0..n {
            seen[pick_priority(&mix, roll(seq, SALT_PRIORITY)) as usize] += 1;
        }
        assert_eq!(seen[0], 0, "every task gets a priority");
        for (p, want) in [(1, 60_000), (2, 30_000), (3, 10_000)] {
            assert!(seen[p].abs_diff(want) < 1_000, "priority {p}: {seen:?}");
        }
        // A zero weight never picks its priority.
        let no_default = parse_priority_mix("critical=1,default=0,low=1").expect("zero");
        assert!((0..n).all(|s| pick_priority(&no_default, roll(s, SALT_PRIORITY)) != 2));
        let no_low = parse_priority_mix("critical=1,default=2,low=0").expect("last zero");
        assert_eq!(
            pick_priority(&no_low, 1.0 - f64::EPSILON),
            pb::Priority::Default as i32
        );
        for bad in [
            "urgent=1",
            "critical",
            "critical=-1",
            "critical=x",
            "critical=0,low=0",
        ] {
            assert!(parse_priority_mix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fingerprints_tell_specs_apart() {
        let a = pb::TaskSpec {
            business_key: "k".into(),
            task_type: "noop".into(),
            ..Default::default()
        };
        let mut b = a.clone();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        b.priority = pb::Priority::Critical as i32;
        assert_ne!(fingerprint(&a), fingerprint(&b));
        let mut c = a.clone();
        c.payload = b"x".to_vec();
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }

    #[test]
    fn payloads_are_padded_plans() {
        let p = payload(300, 2, 0.05);
        assert_eq!(p.len(), 300);
        let v: serde_json::Value = serde_json::from_slice(&p).expect("json");
        assert_eq!(v["latency_ms"], 2);
        let q = plan_payload(0, r#""panic":true"#);
        let v: serde_json::Value = serde_json::from_slice(&q).expect("json");
        assert_eq!(v["panic"], true);
    }
}
