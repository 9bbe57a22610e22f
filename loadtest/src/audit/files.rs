//! Reading the load generator's files: ids files (accepted and unanswered submits), cancels
//! files and SIGSTOP windows.

use std::collections::{HashMap, HashSet};
use std::io::BufRead;

use dispatch_core::TaskId;

use super::history::{Accepted, CancelRecord, Frozen, NodeRec, WorkflowRec, Workflows};

pub(super) fn parse_line(line: &str) -> Result<Accepted, String> {
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

/// Reads `--record-workflows` files (the line kinds are in the load generator's
/// `scenario::workflow` module): accepted workflows with their nodes, edges and CancelWorkflow
/// calls, and refused submits by code.
///
/// # Errors
/// Unreadable or malformed files, or a node, edge or cancel of a workflow not recorded before it.
pub fn read_workflows(paths: &[std::path::PathBuf]) -> anyhow::Result<Workflows> {
    let mut out = Workflows::default();
    let mut index: HashMap<TaskId, usize> = HashMap::new();
    for p in paths {
        for (n, l) in read_lines(p)?.iter().enumerate() {
            let at = || format!("{} line {}", p.display(), n + 1);
            let c: Vec<&str> = l.split('\t').collect();
            let id = |i: usize| -> anyhow::Result<TaskId> {
                TaskId::parse(c.get(i).copied().unwrap_or_default())
                    .map_err(|e| anyhow::anyhow!("{}: column {}: {e}", at(), i + 1))
            };
            let want = |k: usize| -> anyhow::Result<()> {
                anyhow::ensure!(c.len() >= k, "{}: {k} columns", at());
                Ok(())
            };
            if c[0] == "# refused" {
                want(2)?;
                *out.refused.entry(c[1].to_owned()).or_default() += 1;
                continue;
            }
            if c[0] == "workflow" {
                want(3)?;
                let wf = id(1)?;
                if let std::collections::hash_map::Entry::Vacant(e) = index.entry(wf) {
                    e.insert(out.accepted.len());
                    out.accepted.push(WorkflowRec {
                        id: wf,
                        shape: c[2].to_owned(),
                        ..Default::default()
                    });
                }
                continue;
            }
            let wf = id(1)?;
            let Some(&w) = index.get(&wf) else {
                anyhow::bail!("{}: workflow {wf} not recorded before", at());
            };
            let rec = &mut out.accepted[w];
            match c[0] {
                "node" => {
                    want(6)?;
                    let task_id = id(2)?;
                    if rec.nodes.iter().all(|x| x.task_id != task_id) {
                        rec.nodes.push(NodeRec {
                            task_id,
                            name: c[3].to_owned(),
                            with_deps: c[4] == "1",
                            fails: c[5] == "1",
                            deps: Vec::new(),
                        });
                    }
                }
                "edge" => {
                    want(5)?;
                    let (task_id, dep) = (id(2)?, id(3)?);
                    let Some(node) = rec.nodes.iter_mut().find(|x| x.task_id == task_id) else {
                        anyhow::bail!("{}: edge of node {task_id} not recorded before", at());
                    };
                    if node.deps.iter().all(|d| d.0 != dep) {
                        node.deps.push((dep, c[4] == "run"));
                    }
                }
                "cancel" => {
                    want(4)?;
                    rec.cancels.push((
                        c[2].to_owned(),
                        c[3].parse()
                            .map_err(|e| anyhow::anyhow!("{}: sent_us: {e}", at()))?,
                    ));
                }
                other => anyhow::bail!("{}: unknown line kind {other:?}", at()),
            }
        }
    }
    Ok(out)
}
