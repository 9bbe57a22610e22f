//! The workflow load (`--scenario workflow`): one SubmitWorkflow per call, its shape and plans
//! drawn from the sequence number like the mixed load's tasks, so a run is reproducible.
//!
//! Shapes: chains (`--wf-chain-max`, at least 5 nodes), fan-outs (a root, 20 ..=
//! `--wf-fanout-max` leaves, a sink that waits for every leaf) and stacks of one to three
//! diamonds. Every node is a `simulate` task of `--sim-latency-ms ..= --sim-latency-max-ms`;
//! `--wf-fail-share` of them fail permanently (DEAD at once), `--wf-run-edge-share` of the edges
//! run their node anyway when the dependency fails (the rest cancel it), `--wf-with-deps-share`
//! of the non-root nodes put what they read of their dependencies into their result, and
//! `--wf-cancel-share` of the accepted workflows are cancelled with CancelWorkflow
//! 0 ..= `--cancel-delay-max-ms` after the accept.
//!
//! Every node of an accepted workflow is an ids-file line (via `workflow`, no coordinates, flags
//! `wf=<workflow id>,node=<name>`), so the task checks cover it. The `--record-workflows` file
//! holds what the workflow checks need (see [`crate::audit::read_workflows`]):
//! `workflow \t id \t shape \t sent_us \t acked_us \t new|dup`, then per node
//! `node \t id \t task_id \t name \t with_deps \t fails` and per edge
//! `edge \t id \t task_id \t depends_on_task_id \t cancel|run`; a CancelWorkflow is
//! `cancel \t id \t outcome \t sent_us`, a refused submit `# refused \t code \t sent_us`.
//!
//! Just over 400 lines with its tests (from `mod tests`, near line 350).

use std::time::Duration;

use dispatch_proto::v1 as pb;
use dispatch_proto::v1::task_service_client::TaskServiceClient;
use tonic::Code;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use super::{CancelJob, Scenario, now_us, plan_payload, roll};

const SALT_SHAPE: u64 = 101;
const SALT_SIZE: u64 = 102;
const SALT_NODE_LATENCY: u64 = 103;
const SALT_NODE_FAIL: u64 = 104;
const SALT_NODE_DEPS: u64 = 105;
const SALT_EDGE: u64 = 106;
const SALT_WF_CANCEL: u64 = 107;
const SALT_WF_CANCEL_DELAY: u64 = 108;

/// The workflow knobs of `run`.
#[derive(Debug, Clone, Default)]
pub(super) struct WorkflowMix {
    pub chain_max: usize,
    pub fanout_max: usize,
    pub fail_share: f64,
    pub run_edge_share: f64,
    pub with_deps_share: f64,
    pub cancel_share: f64,
}

/// One planned node.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedNode {
    /// Its name.
    pub name: String,
    /// Simulated latency.
    pub latency_ms: u64,
    /// Fails permanently.
    pub fails: bool,
    /// Puts its dependencies into its result.
    pub with_deps: bool,
    /// `(index of the dependency, runs when it fails)`.
    pub deps: Vec<(usize, bool)>,
}

/// One planned workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// `chain`, `fanout` or `diamond`.
    pub shape: &'static str,
    /// Nodes, roots first.
    pub nodes: Vec<PlannedNode>,
}

/// A number in `lo ..= hi` from a roll.
fn pick(lo: usize, hi: usize, r: f64) -> usize {
    lo + ((hi.max(lo) - lo + 1) as f64 * r) as usize
}

/// The workflow of `seq` (latencies in `lat_min ..= lat_max`).
pub(super) fn plan(m: &WorkflowMix, seq: u64, lat_min: u64, lat_max: u64) -> Plan {
    let r = roll(seq, SALT_SHAPE);
    let size = roll(seq, SALT_SIZE);
    let mut deps: Vec<Vec<usize>> = Vec::new();
    let shape = if r < 0.4 {
        let n = pick(5, m.chain_max.max(5), size);
        for i in 0..n {
            deps.push(if i == 0 { vec![] } else { vec![i - 1] });
        }
        "chain"
    } else if r < 0.7 {
        let leaves = pick(20, m.fanout_max.max(20), size);
        deps.push(vec![]);
        for _ in 0..leaves {
            deps.push(vec![0]);
        }
        deps.push((1..=leaves).collect());
        "fanout"
    } else {
        let stacked = pick(1, 3, size);
        deps.push(vec![]);
        for _ in 0..stacked {
            let top = deps.len() - 1;
            deps.push(vec![top]);
            deps.push(vec![top]);
            deps.push(vec![top + 1, top + 2]);
        }
        "diamond"
    };
    // Per node and per edge rolls: seq spread so workflows do not share them.
    let key = |i: usize| seq.wrapping_mul(1 << 16).wrapping_add(i as u64);
    let mut edge = 0usize;
    let mut nodes: Vec<PlannedNode> = Vec::with_capacity(deps.len());
    for (i, ds) in deps.into_iter().enumerate() {
        let k = key(i);
        let deps = ds
            .into_iter()
            .map(|d| {
                edge += 1;
                (d, roll(key(edge), SALT_EDGE) < m.run_edge_share)
            })
            .collect::<Vec<_>>();
        // A node reading a dependency that read its own would carry that result JSON-escaped
        // once more per level (past the result column's 64 KiB in a chain): one level only.
        let with_deps = !deps.is_empty()
            && roll(k, SALT_NODE_DEPS) < m.with_deps_share
            && deps.iter().all(|&(d, _)| !nodes[d].with_deps);
        nodes.push(PlannedNode {
            name: format!("{shape}-{i}"),
            latency_ms: lat_min
                + ((lat_max.max(lat_min) - lat_min) as f64 * roll(k, SALT_NODE_LATENCY)) as u64,
            fails: roll(k, SALT_NODE_FAIL) < m.fail_share,
            with_deps,
            deps,
        });
    }
    Plan { shape, nodes }
}

/// The `--record-workflows` file.
pub struct WorkflowLog {
    file: Option<super::AppendLog>,
}

impl WorkflowLog {
    /// A log appending to `path`, if given.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub fn open(path: Option<&std::path::Path>) -> anyhow::Result<Self> {
        Ok(Self {
            file: path
                .map(|p| {
                    super::append_log(p)
                        .map_err(|e| anyhow::anyhow!("--record-workflows {}: {e}", p.display()))
                })
                .transpose()?,
        })
    }

    /// Appends lines (together, so another writer's lines do not interleave).
    fn write(&self, lines: &str) {
        use std::io::Write as _;
        if let Some(f) = &self.file
            && let Ok(mut f) = f.lock()
        {
            let _ = f.write_all(lines.as_bytes());
        }
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

/// Sends one CancelWorkflow and logs its answer.
pub(super) async fn send_cancel_workflow(
    client: &mut TaskServiceClient<Channel>,
    auth: &MetadataValue<Ascii>,
    timeout: Duration,
    log: &WorkflowLog,
    workflow_id: &str,
) {
    let mut r = tonic::Request::new(pb::CancelWorkflowRequest {
        workflow_id: workflow_id.to_owned(),
        reason: "fault suite: workflow cancel".into(),
    });
    r.metadata_mut().insert("authorization", auth.clone());
    r.set_timeout(timeout);
    let sent = now_us();
    let outcome = match client.cancel_workflow(r).await {
        Ok(a) if a.get_ref().accepted => "accepted".to_owned(),
        Ok(_) => "finished".to_owned(),
        Err(s) => format!("{:?}", s.code()),
    };
    log.write(&format!("cancel\t{workflow_id}\t{outcome}\t{sent}\n"));
}

impl Scenario {
    /// One SubmitWorkflow of workflow `seq`: recorded, counted, and maybe cancelled later.
    pub(super) async fn submit_workflow(&self, seq: u64) -> Result<(), Code> {
        let m = &self.mix;
        let p = plan(&self.wf, seq, m.latency_ms, m.latency_max_ms);
        let keys = self.keys as u64;
        let spec = |i: usize, n: &PlannedNode| {
            let mut fields = format!(r#""latency_ms":{}"#, n.latency_ms);
            if n.fails {
                fields.push_str(r#","fail_rate":1,"permanent":true"#);
            }
            if n.with_deps {
                fields.push_str(r#","with_dependencies":true"#);
            }
            pb::TaskSpec {
                business_key: format!(
                    "{}{}",
                    self.key_prefix,
                    seq.wrapping_mul(7919).wrapping_add(i as u64) % keys
                ),
                task_type: "simulate".into(),
                payload: plan_payload(0, &fields),
                retry_policy: self.retry_policy(),
                ..Default::default()
            }
        };
        let nodes = p
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| pb::WorkflowNode {
                name: n.name.clone(),
                task: Some(spec(i, n)),
                depends_on: n
                    .deps
                    .iter()
                    .map(|&(d, run)| pb::WorkflowDependency {
                        name: p.nodes[d].name.clone(),
                        on_failure: if run {
                            pb::DependencyFailure::Run
                        } else {
                            pb::DependencyFailure::Cancel
                        } as i32,
                    })
                    .collect(),
            })
            .collect();
        let pick = seq as usize;
        let mut c = self.gateways[pick % self.gateways.len()].clone();
        let sent = now_us();
        let r = c
            .submit_workflow(self.request(pb::SubmitWorkflowRequest {
                nodes,
                idempotency_key: String::new(),
            }))
            .await;
        let acked = now_us();
        let a = match r {
            Ok(a) => a.into_inner(),
            Err(s) => {
                self.count(Err(s.code()));
                self.workflows
                    .write(&format!("# refused\t{:?}\t{sent}\n", s.code()));
                return Err(s.code());
            }
        };
        if a.nodes.len() != p.nodes.len() {
            // Not what was asked for: counted as refused, so the audit's floor sees it.
            self.count(Err(Code::Internal));
            self.workflows.write(&format!(
                "# refused\tnodes {} of {}\t{sent}\n",
                a.nodes.len(),
                p.nodes.len()
            ));
            return Err(Code::Internal);
        }
        self.count(Ok(()));
        let wf = &a.workflow_id;
        let mut out = format!(
            "workflow\t{wf}\t{}\t{sent}\t{acked}\t{}\n",
            p.shape,
            if a.duplicate { "dup" } else { "new" }
        );
        let mut ids = String::new();
        for (i, (n, r)) in p.nodes.iter().zip(&a.nodes).enumerate() {
            out.push_str(&format!(
                "node\t{wf}\t{}\t{}\t{}\t{}\n",
                r.task_id,
                n.name,
                u8::from(n.with_deps),
                u8::from(n.fails)
            ));
            for &(d, run) in &n.deps {
                out.push_str(&format!(
                    "edge\t{wf}\t{}\t{}\t{}\n",
                    r.task_id,
                    a.nodes[d].task_id,
                    if run { "run" } else { "cancel" }
                ));
            }
            let tenant = if self.tenant.is_empty() {
                String::new()
            } else {
                format!("tenant={},", self.tenant)
            };
            ids.push_str(&format!(
                "{}\t{}\tworkflow\t\t-1\t-1\t{sent}\t{acked}\t{tenant}wf={wf},node={}\n",
                r.task_id,
                spec(i, n).business_key,
                n.name
            ));
        }
        self.workflows.write(&out);
        if let Some(w) = &self.record
            && let Ok(mut w) = w.lock()
        {
            use std::io::Write as _;
            let _ = w.write_all(ids.as_bytes());
        }
        if roll(seq, SALT_WF_CANCEL) < self.wf.cancel_share
            && let Ok(tx) = self.cancel_tx.lock()
            && let Some(tx) = tx.as_ref()
        {
            let d = Duration::from_millis(
                (m.cancel_delay_max_ms as f64 * roll(seq, SALT_WF_CANCEL_DELAY)) as u64,
            );
            let _ = tx.send(CancelJob {
                gateway: pick,
                foreign: false,
                workflow: true,
                task_id: wf.clone(),
                key: String::new(),
                at: tokio::time::Instant::now() + d,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix() -> WorkflowMix {
        WorkflowMix {
            chain_max: 20,
            fanout_max: 100,
            fail_share: 0.05,
            run_edge_share: 0.25,
            with_deps_share: 0.3,
            cancel_share: 0.1,
        }
    }

    #[test]
    fn plans_are_dags_of_the_three_shapes_in_their_sizes() {
        let mut shapes = std::collections::BTreeMap::new();
        let (mut fails, mut runs, mut edges, mut with_deps) = (0, 0, 0, 0);
        for seq in 0..2_000 {
            let p = plan(&mix(), seq, 50, 500);
            *shapes.entry(p.shape).or_insert(0) += 1;
            let n = p.nodes.len();
            match p.shape {
                "chain" => assert!((5..=20).contains(&n), "{n}"),
                "fanout" => {
                    assert!((22..=102).contains(&n), "{n}");
                    assert_eq!(
                        p.nodes[n - 1].deps.len(),
                        n - 2,
                        "the sink waits for every leaf"
                    );
                }
                _ => assert!([4, 7, 10].contains(&n), "{n}"),
            }
            for (i, node) in p.nodes.iter().enumerate() {
                assert!(node.deps.iter().all(|&(d, _)| d < i), "edges point back");
                assert!((50..=500).contains(&node.latency_ms));
                assert!(!node.with_deps || !node.deps.is_empty());
                assert!(
                    !node.with_deps || node.deps.iter().all(|&(d, _)| !p.nodes[d].with_deps),
                    "one level of dependency results"
                );
                fails += u32::from(node.fails);
                with_deps += u32::from(node.with_deps);
                edges += node.deps.len();
                runs += node.deps.iter().filter(|d| d.1).count();
            }
            assert_eq!(p, plan(&mix(), seq, 50, 500), "reproducible");
        }
        assert_eq!(shapes.len(), 3, "{shapes:?}");
        assert!(fails > 0 && with_deps > 0);
        let share = runs as f64 / edges as f64;
        assert!((0.2..0.3).contains(&share), "{share}");
    }
}
