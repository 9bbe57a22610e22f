//! Cancels: sent by a worker at their due time, logged with their outcome (`--record-cancels`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dispatch_proto::v1 as pb;
use dispatch_proto::v1::task_service_client::TaskServiceClient;
use tonic::Request;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use super::now_us;
use super::workflow::{WorkflowLog, send_cancel_workflow};

/// Cancels sent and what they were answered, optionally appended to a file
/// (`task_id \t tenant \t own|foreign \t outcome \t sent_us`).
pub struct CancelLog {
    counts: Mutex<BTreeMap<String, u64>>,
    file: Option<super::AppendLog>,
}

impl CancelLog {
    /// A log writing to `path` (appending), if given.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub fn open(path: Option<&std::path::Path>) -> anyhow::Result<Self> {
        Ok(Self {
            counts: Mutex::new(BTreeMap::new()),
            file: path
                .map(|p| super::append_log(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display())))
                .transpose()?,
        })
    }

    /// Records one cancel.
    pub fn note(&self, task_id: &str, tenant: &str, foreign: bool, outcome: &str, sent_us: i64) {
        use std::io::Write as _;
        let who = if foreign { "foreign" } else { "own" };
        if let Ok(mut c) = self.counts.lock() {
            *c.entry(format!("{who}:{outcome}")).or_default() += 1;
        }
        if let Some(f) = &self.file
            && let Ok(mut f) = f.lock()
        {
            let _ = writeln!(f, "{task_id}\t{tenant}\t{who}\t{outcome}\t{sent_us}");
        }
    }

    /// Counts so far.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Flushes the file.
    pub fn flush(&self) {
        use std::io::Write as _;
        if let Some(f) = &self.file
            && let Ok(mut f) = f.lock()
        {
            let _ = f.flush();
        }
    }
}

/// Sends one cancel and logs its answer.
///
/// # Errors
/// Never: failures are logged as outcomes.
pub async fn send_cancel(
    client: &mut TaskServiceClient<Channel>,
    auth: &MetadataValue<Ascii>,
    timeout: Duration,
    log: &CancelLog,
    (task_id, business_key, tenant, foreign): (&str, &str, &str, bool),
) {
    let mut r = Request::new(pb::CancelTaskRequest {
        task_id: task_id.to_owned(),
        business_key: business_key.to_owned(),
        reason: if foreign {
            "fault suite: cross-tenant cancel".into()
        } else {
            "fault suite: cancel".into()
        },
    });
    r.metadata_mut().insert("authorization", auth.clone());
    r.set_timeout(timeout);
    let sent = now_us();
    let outcome = match client.cancel_task(r).await {
        Ok(a) if a.get_ref().accepted => "accepted".to_owned(),
        Ok(_) => "finished".to_owned(),
        Err(s) => format!("{:?}", s.code()),
    };
    log.note(task_id, tenant, foreign, &outcome, sent);
}

/// A cancel to send later.
pub(super) struct CancelJob {
    pub(super) gateway: usize,
    /// Sent by the other tenant (`--foreign-api-key`).
    pub(super) foreign: bool,
    /// A CancelWorkflow of the workflow `task_id`.
    pub(super) workflow: bool,
    pub(super) task_id: String,
    pub(super) key: String,
    pub(super) at: tokio::time::Instant,
}

pub(super) async fn cancel_worker(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<CancelJob>,
    gateways: Vec<TaskServiceClient<Channel>>,
    auth: MetadataValue<Ascii>,
    foreign_auth: Option<MetadataValue<Ascii>>,
    timeout: Duration,
    (log, workflows): (Arc<CancelLog>, Arc<WorkflowLog>),
    tenant: String,
) {
    let mut set = tokio::task::JoinSet::new();
    while let Some(job) = rx.recv().await {
        let mut c = gateways[job.gateway % gateways.len()].clone();
        let (auth, tenant) = match (&foreign_auth, job.foreign) {
            (Some(f), true) => (f.clone(), "foreign".to_owned()),
            (None, true) => continue,
            (_, false) => (auth.clone(), tenant.clone()),
        };
        let log = log.clone();
        if job.workflow {
            let workflows = workflows.clone();
            set.spawn(async move {
                tokio::time::sleep_until(job.at).await;
                send_cancel_workflow(&mut c, &auth, timeout, &workflows, &job.task_id).await;
            });
            continue;
        }
        set.spawn(async move {
            tokio::time::sleep_until(job.at).await;
            send_cancel(
                &mut c,
                &auth,
                timeout,
                &log,
                (&job.task_id, &job.key, &tenant, job.foreign),
            )
            .await;
        });
        while set.try_join_next().is_some() {}
    }
    while set.join_next().await.is_some() {}
}
