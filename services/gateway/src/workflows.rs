//! Workflows: SubmitWorkflow and CancelWorkflow, the gateway's side. Takes the caller's tenant
//! and the request; knows nothing of gRPC transport (service.rs adapts).
//!
//! A workflow is accepted in MySQL only (`dispatch_store::workflows::insert`, one transaction):
//! its nodes wait there for their dependencies, and the processor's scheduler publishes each one
//! once it is SCHEDULED. So there is no Kafka or outbox route here, and no Redis claim: the
//! workflow's id is derived from `(tenant, idempotency_key)` and the store's primary key is the
//! dedupe.
//!
//! Over 400 lines because of its tests: the code ends where `mod tests` starts, near line 295.

use chrono::{DateTime, Utc};
use dispatch_core::validate::{SpecLimits, parse_task_spec_with};
use dispatch_core::workflow::{Graph, parse_graph};
use dispatch_core::{IdempotencyKey, NewTask, TaskId, Tenant, Violations};
use dispatch_proto::v1 as pb;
use dispatch_store::StoreError;
use dispatch_store::workflows::{self as store, CancelRequest, Inserted, NewNode, NewWorkflow};

use crate::error::GatewayError;
use crate::metrics;
use crate::tasks::CANCEL_REASON_MAX_BYTES;

/// The workflow side of the gateway, shared by every request.
pub struct Workflows {
    pool: sqlx::MySqlPool,
    spec_limits: SpecLimits,
    max_nodes: usize,
    max_edges: usize,
}

/// A validated SubmitWorkflowRequest, ready to store.
#[derive(Debug)]
pub struct Parsed {
    /// What [`dispatch_store::workflows::insert`] writes.
    pub workflow: NewWorkflow,
    /// Node names in the request's order.
    pub names: Vec<String>,
}

impl Workflows {
    /// Over `pool`, validating node specs under `spec_limits` and at most `max_nodes` nodes per
    /// workflow (`limits.max_workflow_nodes`).
    pub fn new(
        pool: sqlx::MySqlPool,
        spec_limits: SpecLimits,
        max_nodes: usize,
        max_edges: usize,
    ) -> Self {
        Self {
            pool,
            spec_limits,
            max_nodes,
            max_edges,
        }
    }

    /// The largest workflow accepted.
    pub fn max_nodes(&self) -> usize {
        self.max_nodes
    }

    /// Validates a request: the graph (`parse_graph`), every node's TaskSpec as SubmitTask
    /// validates one (under `nodes[i].task`), no node idempotency key, and the request's key.
    ///
    /// # Errors
    /// Every violation found.
    pub fn parse(
        &self,
        tenant: &Tenant,
        req: pb::SubmitWorkflowRequest,
        now: DateTime<Utc>,
    ) -> Result<Parsed, Violations> {
        let mut v = Violations::default();
        let key = if req.idempotency_key.is_empty() {
            None
        } else {
            v.check(
                "idempotency_key",
                IdempotencyKey::parse(&req.idempotency_key),
            )
        };
        let fingerprint = dispatch_core::workflow::fingerprint(&req.nodes);
        let graph = match parse_graph(&req.nodes, self.max_nodes, self.max_edges) {
            Ok(g) => Some(g),
            Err(g) => {
                // An empty or oversized workflow is answered on its size alone: its nodes are
                // not worth validating one by one.
                let edges: usize = req.nodes.iter().map(|n| n.depends_on.len()).sum();
                let sized = req.nodes.is_empty()
                    || req.nodes.len() > self.max_nodes
                    || edges > self.max_edges;
                v.0.extend(g.0);
                if sized {
                    return Err(v);
                }
                None
            }
        };
        let workflow_id = match &key {
            Some(k) => TaskId::workflow_from_idempotency_key(tenant.as_str(), k.as_str()),
            None => TaskId::new(),
        };
        let mut tasks: Vec<Option<NewTask>> = Vec::with_capacity(req.nodes.len());
        for (i, node) in req.nodes.into_iter().enumerate() {
            let prefix = format!("nodes[{i}].task");
            let Some(mut spec) = node.task else {
                v.add(prefix, "is required");
                tasks.push(None);
                continue;
            };
            if !spec.idempotency_key.is_empty() {
                v.add(
                    format!("{prefix}.idempotency_key"),
                    "must be empty: a node's identity comes from the workflow \
                     (SubmitWorkflowRequest.idempotency_key) and its name",
                );
                spec.idempotency_key.clear();
            }
            match parse_task_spec_with(&prefix, tenant, spec, now, &self.spec_limits) {
                Ok(mut t) => {
                    t.task_id = TaskId::workflow_node(workflow_id, &node.name);
                    t.idempotency_key = None;
                    tasks.push(Some(t));
                }
                Err(e) => {
                    v.0.extend(e.0);
                    tasks.push(None);
                }
            }
        }
        let (Some(graph), true) = (graph, v.is_empty()) else {
            return Err(v);
        };
        let waits = waiting_nodes(&graph);
        let nodes = graph
            .names
            .iter()
            .zip(tasks)
            .zip(waits)
            .filter_map(|((name, task), waits)| {
                task.map(|task| NewNode {
                    name: name.clone(),
                    task,
                    root: !waits,
                })
            })
            .collect();
        Ok(Parsed {
            workflow: NewWorkflow {
                workflow_id,
                tenant: tenant.as_str().to_owned(),
                idempotency_key: key.map(|k| k.as_str().to_owned()),
                nodes,
                edges: graph
                    .edges
                    .iter()
                    .map(|e| (e.node, e.depends_on, e.on_failure))
                    .collect(),
                fingerprint,
            },
            names: graph.names,
        })
    }

    /// Stores a parsed workflow, or answers the one its idempotency key already names.
    ///
    /// # Errors
    /// [`GatewayError::WorkflowConflict`] when the key's workflow has other nodes;
    /// [`GatewayError::StoreUnavailable`] (or `Internal` for a stored row that does not decode).
    pub async fn submit(&self, p: Parsed) -> Result<pb::SubmitWorkflowResponse, GatewayError> {
        let wf = &p.workflow;
        let inserted = store::insert(&self.pool, wf, Utc::now())
            .await
            .map_err(|e| {
                metrics::workflow_submit("unavailable");
                store_error(e)
            })?;
        let (duplicate, nodes) = match inserted {
            Inserted::New => {
                metrics::workflow_submit("accepted");
                metrics::workflow_nodes_accepted(wf.nodes.len());
                tracing::info!(workflow_id = %wf.workflow_id, nodes = wf.nodes.len(), edges = wf.edges.len(), "workflow accepted");
                let ids: Vec<TaskId> = wf.nodes.iter().map(|n| n.task.task_id).collect();
                (false, p.names.into_iter().zip(ids).collect::<Vec<_>>())
            }
            Inserted::Duplicate {
                nodes: stored,
                fingerprint,
            } => {
                let same = match fingerprint {
                    Some(f) => f == wf.fingerprint,
                    // Stored before fingerprints were: its names are all there is to compare.
                    None => {
                        stored.len() == p.names.len()
                            && stored.iter().zip(&p.names).all(|((s, _), n)| s == n)
                    }
                };
                if !same {
                    metrics::workflow_submit("conflict");
                    tracing::info!(workflow_id = %wf.workflow_id, "workflow idempotency key reused with other nodes");
                    return Err(GatewayError::WorkflowConflict {
                        workflow_id: wf.workflow_id,
                        idempotency_key: wf.idempotency_key.clone().unwrap_or_default(),
                    });
                }
                metrics::workflow_submit("duplicate");
                (true, stored)
            }
        };
        Ok(pb::SubmitWorkflowResponse {
            workflow_id: wf.workflow_id.to_string(),
            duplicate,
            nodes: nodes
                .into_iter()
                .map(|(name, id)| pb::WorkflowNodeRef {
                    name,
                    task_id: id.to_string(),
                })
                .collect(),
        })
    }

    /// Records a CancelWorkflow; the processor cancels the unfinished nodes.
    ///
    /// # Errors
    /// INVALID_ARGUMENT (the id, the reason's length), NOT_FOUND (unknown or another tenant's
    /// workflow), UNAVAILABLE.
    pub async fn cancel(
        &self,
        tenant: &Tenant,
        req: pb::CancelWorkflowRequest,
    ) -> Result<pb::CancelWorkflowResponse, GatewayError> {
        let mut v = Violations::default();
        let id = v.check(
            "workflow_id",
            TaskId::parse(&req.workflow_id).map_err(|e| e.to_string()),
        );
        if req.reason.len() > CANCEL_REASON_MAX_BYTES {
            v.add(
                "reason",
                format!("must be at most {CANCEL_REASON_MAX_BYTES} bytes"),
            );
        }
        let (Some(id), true) = (id, v.is_empty()) else {
            metrics::workflow_cancel("invalid");
            return Err(GatewayError::Invalid(v));
        };
        let r = store::request_cancel(&self.pool, tenant.as_str(), id, &req.reason, Utc::now())
            .await
            .map_err(|e| {
                metrics::workflow_cancel("unavailable");
                store_error(e)
            })?;
        let accepted = match r {
            CancelRequest::NotFound => {
                metrics::workflow_cancel("not_found");
                return Err(GatewayError::NotFound(format!("workflow {id} not found")));
            }
            CancelRequest::Finished => {
                metrics::workflow_cancel("finished");
                false
            }
            CancelRequest::Accepted(unfinished) => {
                metrics::workflow_cancel("accepted");
                tracing::info!(workflow_id = %id, unfinished, "workflow cancel requested");
                true
            }
        };
        Ok(pb::CancelWorkflowResponse {
            workflow_id: id.to_string(),
            accepted,
        })
    }
}

/// Whether each node waits for another, in one pass over the edges (`Graph::is_root` asks for
/// one node and reads every edge).
fn waiting_nodes(g: &Graph) -> Vec<bool> {
    let mut waits = vec![false; g.names.len()];
    for e in &g.edges {
        waits[e.node] = true;
    }
    debug_assert!(waits.iter().enumerate().all(|(i, w)| *w != g.is_root(i)));
    waits
}

fn store_error(e: StoreError) -> GatewayError {
    match e {
        StoreError::Corrupt(_) => GatewayError::Internal(e.to_string()),
        other => GatewayError::StoreUnavailable(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, deps: &[&str], task: Option<pb::TaskSpec>) -> pb::WorkflowNode {
        pb::WorkflowNode {
            name: name.into(),
            task,
            depends_on: deps.iter().map(|d| (*d).into()).collect(),
        }
    }

    fn spec() -> Option<pb::TaskSpec> {
        Some(pb::TaskSpec {
            business_key: "k".into(),
            task_type: "noop".into(),
            ..Default::default()
        })
    }

    fn workflows(max: usize) -> Workflows {
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .connect_lazy("mysql://nobody@127.0.0.1:1/none")
            .expect("lazy pool");
        Workflows::new(
            pool,
            SpecLimits::default(),
            max,
            dispatch_core::workflow::DEFAULT_MAX_EDGES,
        )
    }

    fn fields(r: Result<Parsed, Violations>) -> Vec<String> {
        r.expect_err("invalid")
            .0
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    #[tokio::test]
    async fn ids_roots_and_edges_follow_the_graph() {
        let w = workflows(10);
        let tenant = Tenant::parse("acme").expect("tenant");
        let req = pb::SubmitWorkflowRequest {
            nodes: vec![
                node("a", &[], spec()),
                node("b", &["a"], spec()),
                node("c", &["a"], spec()),
                node("d", &["b", "c"], spec()),
            ],
            idempotency_key: "wf-1".into(),
        };
        let p = w.parse(&tenant, req, Utc::now()).expect("valid");
        let id = TaskId::workflow_from_idempotency_key("acme", "wf-1");
        assert_eq!(p.workflow.workflow_id, id);
        let roots: Vec<bool> = p.workflow.nodes.iter().map(|n| n.root).collect();
        assert_eq!(roots, [true, false, false, false]);
        assert_eq!(
            p.workflow.nodes[3].task.task_id,
            TaskId::workflow_node(id, "d")
        );
        assert!(
            p.workflow
                .nodes
                .iter()
                .all(|n| n.task.idempotency_key.is_none())
        );
        assert_eq!(p.workflow.edges.len(), 4);
        assert_eq!(p.workflow.idempotency_key.as_deref(), Some("wf-1"));
    }

    #[tokio::test]
    async fn every_violation_is_collected() {
        let w = workflows(10);
        let tenant = Tenant::parse("acme").expect("tenant");
        let mut keyed = spec();
        if let Some(s) = keyed.as_mut() {
            s.idempotency_key = "mine".into();
        }
        let req = pb::SubmitWorkflowRequest {
            nodes: vec![
                node("a", &["zz"], spec()),
                node("b", &[], None),
                node("c", &[], keyed),
                node(
                    "d",
                    &[],
                    Some(pb::TaskSpec {
                        priority: 9,
                        ..spec().unwrap_or_default()
                    }),
                ),
            ],
            idempotency_key: "has space".into(),
        };
        assert_eq!(
            fields(w.parse(&tenant, req, Utc::now())),
            [
                "idempotency_key",
                "nodes[0].depends_on[0].name",
                "nodes[1].task",
                "nodes[2].task.idempotency_key",
                "nodes[3].task.priority",
            ]
        );
        let many = pb::SubmitWorkflowRequest {
            nodes: (0..11).map(|i| node(&format!("n{i}"), &[], None)).collect(),
            idempotency_key: String::new(),
        };
        assert_eq!(fields(w.parse(&tenant, many, Utc::now())), ["nodes"]);
    }
}
