//! Workflows: tasks with dependencies between them, accepted all or nothing.
//!
//! [`parse_graph`] checks the shape of a `SubmitWorkflowRequest` (names, edges, no cycle, the
//! node bound) and answers every violation with its field path; the gateway validates each
//! node's `TaskSpec` beside it. What a node does when a dependency fails is [`OnFailure`].
//!
//! Over 400 lines because of its tests: the code ends where `mod tests` starts, near line 285;
//! every rule of the shape has its case.

use std::collections::HashMap;

use prost::Message;
use sha2::{Digest, Sha256};

use dispatch_proto::v1 as pb;

use crate::error::Violations;

/// Longest node name.
pub const NAME_MAX_LEN: usize = 64;

/// The default bound on nodes per workflow (the gateway's `limits.max_workflow_nodes`).
pub const DEFAULT_MAX_NODES: usize = 2_000;

/// The default bound on dependencies per workflow, all nodes' together (the gateway's
/// `limits.max_workflow_edges`): the store writes them in the submit's transaction and the
/// advancer reads a node's on every pass over its workflow.
pub const DEFAULT_MAX_EDGES: usize = 10_000;

/// What a node does when a task it depends on ends DEAD or CANCELLED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnFailure {
    /// The node ends CANCELLED.
    Cancel,
    /// The node runs anyway once every dependency has finished.
    Run,
}

impl OnFailure {
    /// As stored in MySQL.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cancel => "cancel",
            Self::Run => "run",
        }
    }

    /// Parses [`OnFailure::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Cancel, Self::Run]
            .into_iter()
            .find(|o| o.as_str() == s)
    }

    /// To the protobuf enum.
    pub fn to_proto(self) -> pb::DependencyFailure {
        match self {
            Self::Cancel => pb::DependencyFailure::Cancel,
            Self::Run => pb::DependencyFailure::Run,
        }
    }

    /// From the protobuf enum's number (UNSPECIFIED is CANCEL).
    ///
    /// # Errors
    /// A number the enum does not know.
    pub fn from_proto_i32(v: i32) -> Result<Self, String> {
        match pb::DependencyFailure::try_from(v) {
            Ok(pb::DependencyFailure::Unspecified | pb::DependencyFailure::Cancel) => {
                Ok(Self::Cancel)
            }
            Ok(pb::DependencyFailure::Run) => Ok(Self::Run),
            Err(_) => Err(format!("{v} is not a DependencyFailure")),
        }
    }
}

/// One edge of a parsed workflow, by node index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// The node that waits.
    pub node: usize,
    /// The node it waits for.
    pub depends_on: usize,
    /// What `node` does if `depends_on` fails.
    pub on_failure: OnFailure,
}

/// The shape of a valid workflow: names and edges by node index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    /// Node names, in the request's order.
    pub names: Vec<String>,
    /// Every edge, in the request's order.
    pub edges: Vec<Edge>,
}

impl Graph {
    /// Whether node `i` waits for nothing (it is SCHEDULED at once).
    pub fn is_root(&self, i: usize) -> bool {
        !self.edges.iter().any(|e| e.node == i)
    }
}

fn valid_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is required".into());
    }
    if name.len() > NAME_MAX_LEN {
        return Err(format!(
            "is {} bytes long; at most {NAME_MAX_LEN}",
            name.len()
        ));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(format!("contains {c:?}; only [A-Za-z0-9._-] are allowed")),
        None => Ok(()),
    }
}

/// Checks the shape of a workflow of `nodes` (at most `max_nodes`, with at most `max_edges`
/// dependencies in all): every name valid and unique, every dependency naming another node once,
/// and no cycle.
///
/// # Errors
/// Every violation found, with paths such as `nodes[3].depends_on[0].name`.
pub fn parse_graph(
    nodes: &[pb::WorkflowNode],
    max_nodes: usize,
    max_edges: usize,
) -> Result<Graph, Violations> {
    let mut v = Violations::default();
    if nodes.is_empty() {
        v.add("nodes", "is required: a workflow has at least one node");
        return Err(v);
    }
    if nodes.len() > max_nodes {
        v.add(
            "nodes",
            format!(
                "has {} nodes; at most {max_nodes} (limits.max_workflow_nodes)",
                nodes.len()
            ),
        );
        return Err(v);
    }
    let edges_total: usize = nodes.iter().map(|n| n.depends_on.len()).sum();
    if edges_total > max_edges {
        v.add(
            "nodes",
            format!(
                "have {edges_total} dependencies in all; at most {max_edges} \
                 (limits.max_workflow_edges)"
            ),
        );
        return Err(v);
    }
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(nodes.len());
    for (i, n) in nodes.iter().enumerate() {
        let field = format!("nodes[{i}].name");
        if v.check(&field, valid_name(&n.name)).is_none() {
            continue;
        }
        if let Some(first) = index.insert(n.name.as_str(), i) {
            index.insert(n.name.as_str(), first);
            v.add(
                field,
                format!("{:?} is also the name of nodes[{first}]", n.name),
            );
        }
    }
    let mut edges = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let mut seen = HashMap::new();
        for (j, d) in n.depends_on.iter().enumerate() {
            let field = format!("nodes[{i}].depends_on[{j}]");
            let on_failure = v.check(
                &format!("{field}.on_failure"),
                OnFailure::from_proto_i32(d.on_failure),
            );
            let Some(&target) = index.get(d.name.as_str()) else {
                v.add(
                    format!("{field}.name"),
                    format!("{:?} names no node of this workflow", d.name),
                );
                continue;
            };
            if target == i {
                v.add(format!("{field}.name"), "a node cannot depend on itself");
                continue;
            }
            if let Some(first) = seen.insert(target, j) {
                v.add(
                    format!("{field}.name"),
                    format!("{:?} is already depends_on[{first}]", d.name),
                );
                continue;
            }
            if let Some(on_failure) = on_failure {
                edges.push(Edge {
                    node: i,
                    depends_on: target,
                    on_failure,
                });
            }
        }
    }
    if !v.is_empty() {
        return Err(v);
    }
    if let Some(cycle) = find_cycle(nodes.len(), &edges) {
        let path = cycle
            .iter()
            .map(|&i| nodes[i].name.as_str())
            .collect::<Vec<_>>()
            .join(" -> ");
        v.add(
            format!("nodes[{}].depends_on", cycle[0]),
            format!("closes a cycle: {path}; a workflow is a DAG"),
        );
        return Err(v);
    }
    Ok(Graph {
        names: nodes.iter().map(|n| n.name.clone()).collect(),
        edges,
    })
}

/// What a workflow was submitted with: SHA-256 of its nodes as sent (protobuf encoding, which
/// is deterministic for one message), so a repeated submit with the same idempotency key is told
/// apart from another workflow under that key, whatever differs (a name, a task field, an edge).
pub fn fingerprint(nodes: &[pb::WorkflowNode]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"dispatch.v1/workflow-fingerprint\0");
    for n in nodes {
        let bytes = n.encode_to_vec();
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(&bytes);
    }
    hasher.finalize().into()
}

/// A cycle among `n` nodes, as the node indexes along it (first repeated at the end), if any.
fn find_cycle(n: usize, edges: &[Edge]) -> Option<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); n];
    for e in edges {
        out[e.node].push(e.depends_on);
    }
    // Iterative depth-first search: 0 unvisited, 1 on the stack, 2 done.
    let mut mark = vec![0u8; n];
    for start in 0..n {
        if mark[start] != 0 {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        mark[start] = 1;
        while let Some(top) = stack.last_mut() {
            let (node, next) = *top;
            if let Some(&to) = out[node].get(next) {
                top.1 += 1;
                match mark[to] {
                    0 => {
                        mark[to] = 1;
                        stack.push((to, 0));
                    }
                    1 => {
                        let from = stack.iter().position(|(s, _)| *s == to).unwrap_or(0);
                        let mut cycle: Vec<usize> = stack[from..].iter().map(|(s, _)| *s).collect();
                        cycle.push(to);
                        return Some(cycle);
                    }
                    _ => {}
                }
            } else {
                mark[node] = 2;
                stack.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, deps: &[&str]) -> pb::WorkflowNode {
        pb::WorkflowNode {
            name: name.into(),
            task: None,
            depends_on: deps.iter().map(|d| (*d).into()).collect(),
        }
    }

    fn fields(r: Result<Graph, Violations>) -> Vec<String> {
        r.expect_err("invalid")
            .0
            .into_iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect()
    }

    #[test]
    fn a_diamond_parses_with_its_edges() {
        let g = parse_graph(
            &[
                node("a", &[]),
                node("b", &["a"]),
                node("c", &["a"]),
                node("d", &["b", "c"]),
            ],
            10,
            DEFAULT_MAX_EDGES,
        )
        .expect("valid");
        assert_eq!(g.edges.len(), 4);
        assert!(g.is_root(0));
        assert!(!g.is_root(3));
        assert_eq!(
            g.edges[2],
            Edge {
                node: 3,
                depends_on: 1,
                on_failure: OnFailure::Cancel
            }
        );
    }

    #[test]
    fn cycles_are_refused_with_their_path() {
        let f = fields(parse_graph(
            &[node("a", &["c"]), node("b", &["a"]), node("c", &["b"])],
            10,
            DEFAULT_MAX_EDGES,
        ));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].contains("closes a cycle: a -> c -> b -> a"), "{f:?}");
        let f = fields(parse_graph(&[node("a", &["a"])], 10, DEFAULT_MAX_EDGES));
        assert!(f[0].starts_with("nodes[0].depends_on[0].name: a node cannot depend on itself"));
    }

    #[test]
    fn names_and_edges_are_checked_with_paths() {
        let f = fields(parse_graph(
            &[
                node("a", &[]),
                node("a", &["zz"]),
                node("bad name", &[]),
                node("", &[]),
                node("e", &["a", "a"]),
            ],
            10,
            DEFAULT_MAX_EDGES,
        ));
        assert_eq!(
            f,
            [
                "nodes[1].name: \"a\" is also the name of nodes[0]",
                "nodes[2].name: contains ' '; only [A-Za-z0-9._-] are allowed",
                "nodes[3].name: is required",
                "nodes[1].depends_on[0].name: \"zz\" names no node of this workflow",
                "nodes[4].depends_on[1].name: \"a\" is already depends_on[0]",
            ]
        );
        let mut bad = node("x", &["a"]);
        bad.depends_on[0].on_failure = 9;
        let f = fields(parse_graph(&[node("a", &[]), bad], 10, DEFAULT_MAX_EDGES));
        assert_eq!(
            f,
            ["nodes[1].depends_on[0].on_failure: 9 is not a DependencyFailure"]
        );
    }

    #[test]
    fn size_bounds() {
        assert!(
            fields(parse_graph(&[], 10, DEFAULT_MAX_EDGES))[0].starts_with("nodes: is required")
        );
        let many: Vec<_> = (0..11).map(|i| node(&format!("n{i}"), &[])).collect();
        assert!(fields(parse_graph(&many, 10, DEFAULT_MAX_EDGES))[0].contains("at most 10"));
        let star: Vec<_> = std::iter::once(node("hub", &[]))
            .chain((0..4).map(|i| node(&format!("s{i}"), &["hub"])))
            .collect();
        assert!(parse_graph(&star, 10, 4).is_ok());
        let f = fields(parse_graph(&star, 10, 3));
        assert_eq!(
            f,
            ["nodes: have 4 dependencies in all; at most 3 (limits.max_workflow_edges)"]
        );
        // A chain as long as the bound: the search is iterative, no recursion depth.
        let chain: Vec<_> = (0..5_000)
            .map(|i| {
                if i == 0 {
                    node("n0", &[])
                } else {
                    node(&format!("n{i}"), &[&format!("n{}", i - 1)])
                }
            })
            .collect();
        assert_eq!(
            parse_graph(&chain, 5_000, DEFAULT_MAX_EDGES)
                .expect("chain")
                .edges
                .len(),
            4_999
        );
    }

    #[test]
    fn fingerprints_follow_every_field() {
        let base = vec![node("a", &[]), node("b", &["a"])];
        let f = fingerprint(&base);
        assert_eq!(f, fingerprint(&base.clone()));
        let mut renamed = base.clone();
        renamed[1].name = "c".into();
        let mut task = base.clone();
        task[0].task = Some(pb::TaskSpec {
            business_key: "k".into(),
            ..Default::default()
        });
        let mut edge = base.clone();
        edge[1].depends_on[0].on_failure = pb::DependencyFailure::Run as i32;
        let mut split = base.clone();
        split.truncate(1);
        for other in [renamed, task, edge, split] {
            assert_ne!(fingerprint(&other), f, "{other:?}");
        }
    }

    #[test]
    fn on_failure_round_trips() {
        for o in [OnFailure::Cancel, OnFailure::Run] {
            assert_eq!(OnFailure::parse(o.as_str()), Some(o));
            assert_eq!(OnFailure::from_proto_i32(o.to_proto() as i32), Ok(o));
        }
        assert_eq!(OnFailure::from_proto_i32(0), Ok(OnFailure::Cancel));
    }
}
