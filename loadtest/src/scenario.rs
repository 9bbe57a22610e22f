//! Request makers: what one scheduled call does in each scenario.

use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};

use dispatch_proto::v1 as pb;
use dispatch_proto::v1::task_query_service_client::TaskQueryServiceClient;
use dispatch_proto::v1::task_service_client::TaskServiceClient;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

use crate::{Kind, RunArgs};

/// A connected scenario.
pub struct Scenario {
    kind: Kind,
    gateways: Vec<TaskServiceClient<Channel>>,
    readers: Vec<TaskQueryServiceClient<Channel>>,
    auth: MetadataValue<tonic::metadata::Ascii>,
    payload: Vec<u8>,
    keys: usize,
    batch: usize,
    task_type: String,
    ids: Vec<String>,
    timeout: Duration,
    idempotency: Option<String>,
    record: Option<std::sync::Mutex<std::io::BufWriter<std::fs::File>>>,
}

async fn channels(addr: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let ch = Endpoint::from_shared(addr.to_owned())?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {addr}: {e}"))?;
        out.push(ch);
    }
    Ok(out)
}

/// A JSON payload of about `n` bytes: a `simulate` plan (the `noop` handler ignores it) padded out.
fn payload(n: usize, latency_ms: u64, fail_rate: f64) -> Vec<u8> {
    let plan = format!(r#"{{"latency_ms":{latency_ms},"fail_rate":{fail_rate},"pad":""}}"#);
    let pad = n.saturating_sub(plan.len());
    format!(
        r#"{{"latency_ms":{latency_ms},"fail_rate":{fail_rate},"pad":"{}"}}"#,
        "x".repeat(pad)
    )
    .into_bytes()
}

impl Scenario {
    /// Connects and, for `get`, seeds the task set.
    ///
    /// # Errors
    /// Unreachable servers or a failing seed.
    pub async fn connect(a: &RunArgs) -> anyhow::Result<Self> {
        let needs_gateway = true;
        let needs_reader = matches!(a.scenario, Kind::Get | Kind::E2e);
        let gateways = if needs_gateway {
            channels(&a.gateway, a.connections)
                .await?
                .into_iter()
                .map(TaskServiceClient::new)
                .collect()
        } else {
            Vec::new()
        };
        let readers = if needs_reader {
            channels(&a.reader, a.connections)
                .await?
                .into_iter()
                .map(TaskQueryServiceClient::new)
                .collect()
        } else {
            Vec::new()
        };
        let auth = format!("Bearer {}", a.api_key)
            .parse()
            .map_err(|_| anyhow::anyhow!("--api-key must be ASCII"))?;
        let mut s = Self {
            kind: a.scenario,
            gateways,
            readers,
            auth,
            payload: payload(a.payload_bytes, a.sim_latency_ms, a.sim_fail_rate),
            keys: a.keys.max(1),
            batch: a.batch.clamp(1, 1000),
            task_type: a.task_type.clone(),
            ids: Vec::new(),
            timeout: Duration::from_millis(a.timeout_ms),
            idempotency: a.idempotency.then(|| {
                if a.label.is_empty() {
                    "run".to_owned()
                } else {
                    a.label.clone()
                }
            }),
            record: match &a.record_ids {
                Some(p) => Some(std::sync::Mutex::new(std::io::BufWriter::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .map_err(|e| anyhow::anyhow!("--record-ids {}: {e}", p.display()))?,
                ))),
                None => None,
            },
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

    fn spec(&self, seq: u64) -> pb::TaskSpec {
        pb::TaskSpec {
            business_key: format!("key-{}", seq % self.keys as u64),
            task_type: self.task_type.clone(),
            payload: self.payload.clone(),
            idempotency_key: self
                .idempotency
                .as_ref()
                .map(|p| format!("{p}-{seq}"))
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    /// Appends an accepted task to the `--record-ids` file.
    fn note(&self, key: &str, a: &pb::SubmitTaskResponse) {
        use std::io::Write as _;
        if let Some(w) = &self.record {
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
            if let Ok(mut w) = w.lock() {
                let _ = writeln!(
                    w,
                    "{}\t{key}\t{via}\t{}\t{}\t{offset}",
                    a.task_id, a.topic, a.partition
                );
            }
        }
    }

    /// Flushes the `--record-ids` file.
    pub fn flush(&self) {
        use std::io::Write as _;
        if let Some(w) = &self.record
            && let Ok(mut w) = w.lock()
        {
            let _ = w.flush();
        }
    }

    /// Submits `n` tasks and waits until the reader serves each (so `get` measures reads only).
    async fn seed(&self, n: usize) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::with_capacity(n);
        let mut gw = self.gateways[0].clone();
        for chunk in (0..n as u64).collect::<Vec<_>>().chunks(500) {
            let tasks = chunk.iter().map(|i| self.spec(*i)).collect();
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

    /// One scheduled call.
    pub async fn call(&self, seq: u64) -> Result<(), Code> {
        let pick = seq as usize;
        match self.kind {
            Kind::Submit => {
                let mut c = self.gateways[pick % self.gateways.len()].clone();
                let spec = self.spec(seq);
                let key = spec.business_key.clone();
                let a = c
                    .submit_task(self.request(pb::SubmitTaskRequest { task: Some(spec) }))
                    .await
                    .map_err(|s| s.code())?
                    .into_inner();
                self.note(&key, &a);
                Ok(())
            }
            Kind::Batch => {
                let mut c = self.gateways[pick % self.gateways.len()].clone();
                let base = seq * self.batch as u64;
                let tasks: Vec<pb::TaskSpec> = (0..self.batch as u64)
                    .map(|i| self.spec(base + i))
                    .collect();
                let keys: Vec<String> = tasks.iter().map(|t| t.business_key.clone()).collect();
                let resp = c
                    .submit_tasks(self.request(pb::SubmitTasksRequest { tasks }))
                    .await
                    .map_err(|s| s.code())?
                    .into_inner();
                let mut first_error = None;
                for r in &resp.results {
                    match &r.outcome {
                        Some(pb::submit_result::Outcome::Accepted(a)) => {
                            if let Some(k) = keys.get(r.index as usize) {
                                self.note(k, a);
                            }
                        }
                        Some(pb::submit_result::Outcome::Error(e)) => {
                            first_error.get_or_insert(Code::from_i32(e.code));
                        }
                        None => {
                            first_error.get_or_insert(Code::Unknown);
                        }
                    }
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
                let mut g = self.gateways[pick % self.gateways.len()].clone();
                let mut r = self.readers[pick % self.readers.len()].clone();
                let spec = self.spec(seq);
                let key = spec.business_key.clone();
                let accepted = g
                    .submit_task(self.request(pb::SubmitTaskRequest { task: Some(spec) }))
                    .await
                    .map_err(|s| s.code())?
                    .into_inner();
                self.note(&key, &accepted);
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
