//! An open-loop gRPC load generator.
//!
//! Requests are scheduled at fixed intended times (`start + i / rate`) whether or not earlier ones
//! finished, and latency is measured from the *intended* send time, so a stalled server shows up in
//! the percentiles instead of silently lowering the offered rate (no coordinated omission).
//!
//! - [`Cli`]: flags; [`run`] dispatches to a scenario or to the baseline server.
//! - [`scenario`]: request makers (submit, batch, get, end-to-end, workflow).
//! - [`report`]: HdrHistogram percentiles, achieved vs offered rate, errors by gRPC code, JSON.
//! - [`audit`]: after a run with `--record-ids`, prove the guarantees from MySQL, the ledger and the
//!   events topic, and print a one-line verdict.
//! - [`noop`]: a no-op tonic server implementing TaskService and TaskQueryService, the baseline
//!   "what does the same generator get from a server that does nothing".
//! - [`cancel`]: cancel a chosen share of recorded tasks (redriven, retrying, live, any).
//! - [`k6schema`]: the API's schema from the compiled descriptor set, for the k6 checks.

pub mod audit;
pub mod cancel;
pub mod k6schema;
pub mod noop;
pub mod proxy;
pub mod report;
pub mod scenario;
pub mod upsert;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::Semaphore;

use crate::report::Recorder;
use crate::scenario::Scenario;

/// Load generator flags.
#[derive(Debug, Parser, Clone)]
#[command(
    name = "dispatch-loadgen",
    about = "Open-loop load generator for dispatch"
)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand, Clone)]
pub enum Command {
    /// Drive load. A flag given twice takes its last value (scripts add flags after a mix).
    #[command(args_override_self = true)]
    Run(Box<RunArgs>),
    /// A TCP fault proxy (latency, connection resets) between loopback addresses, for a bounded time.
    FaultProxy(proxy::ProxyArgs),
    /// The database baseline: plain multi-row upserts into a copy of `tasks`.
    UpsertBaseline(upsert::UpsertArgs),
    /// Audit a finished run (see the `audit` module); exits non-zero when a guarantee failed.
    Audit(audit::AuditArgs),
    /// Cancel a share of the tasks recorded by `run --record-ids` (chosen by their state in MySQL).
    Cancel(cancel::CancelArgs),
    /// Write the API's schema (services, messages, enums; from the compiled descriptor set) as
    /// JSON for the k6 checks (scripts/check-k6.sh).
    ProtoSchema {
        /// Output file (`-`: standard output).
        #[arg(long, default_value = "-")]
        out: String,
    },
    /// Serve the no-op baseline server (TaskService + TaskQueryService) until Ctrl-C.
    NoopServer {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:50059")]
        listen: std::net::SocketAddr,
    },
}

/// Which requests to send.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Kind {
    /// Unary SubmitTask.
    Submit,
    /// SubmitTasks with `--batch` items per call.
    Batch,
    /// GetTask over a set of existing tasks (`--get-set`).
    Get,
    /// SubmitTask, then the time until the reader shows a terminal state (WatchTask).
    E2e,
    /// SubmitWorkflow of chains, fan-outs and diamonds of simulate nodes (one workflow a call;
    /// the `--wf-*` flags, `--sim-latency-ms` ..= `--sim-latency-max-ms`).
    Workflow,
}

/// Flags of `run`.
#[derive(Debug, clap::Args, Clone)]
pub struct RunArgs {
    /// Scenario.
    #[arg(long, value_enum)]
    pub scenario: Kind,
    /// Gateway addresses (submit, batch, e2e, and seeding get), comma-separated: calls alternate
    /// between them.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:50051")]
    pub gateway: Vec<String>,
    /// Reader addresses (get, e2e), comma-separated: calls alternate between them.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:50052")]
    pub reader: Vec<String>,
    /// Bearer API key.
    #[arg(long, env = "DISPATCH_API_KEY", default_value = "dev-key-acme")]
    pub api_key: String,
    /// The tenant of `--api-key`, recorded with each accepted id (the audit checks the stored
    /// tenant) and used to compute the ids its idempotency keys produce.
    #[arg(long, default_value = "")]
    pub tenant: String,
    /// Offered calls per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Measured duration in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,
    /// Warm-up seconds before measuring (same rate, not recorded).
    #[arg(long, default_value_t = 2.0)]
    pub warmup_s: f64,
    /// Maximum requests in flight; beyond it requests wait (and that wait counts as latency).
    #[arg(long, default_value_t = 512)]
    pub concurrency: usize,
    /// gRPC connections (HTTP/2 channels) used round-robin.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Payload bytes per task.
    #[arg(long, default_value_t = 300)]
    pub payload_bytes: usize,
    /// `simulate` handler plan: latency per execution in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub sim_latency_ms: u64,
    /// `simulate` handler plan: failure probability of each attempt (retried).
    #[arg(long, default_value_t = 0.0)]
    pub sim_fail_rate: f64,
    /// Distinct business keys.
    #[arg(long, default_value_t = 1000)]
    pub keys: usize,
    /// Business keys are `<prefix><n>` (separate key spaces for loads that run side by side).
    #[arg(long, default_value = "key-")]
    pub key_prefix: String,
    /// Items per SubmitTasks call (batch).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Task type submitted.
    #[arg(long, default_value = "noop")]
    pub task_type: String,
    /// Number of tasks read by `get` (small = hot L1 set, large = colder).
    #[arg(long, default_value_t = 1000)]
    pub get_set: usize,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Write the JSON report here ("-" for stdout).
    #[arg(long)]
    pub json: Option<String>,
    /// Append every accepted task (id, key, via, topic, partition, offset) to this file, for `audit`.
    #[arg(long)]
    pub record_ids: Option<std::path::PathBuf>,
    /// Give every task an idempotency key (`<label>-<seq>`), so resubmits dedupe.
    #[arg(long)]
    pub idempotency: bool,
    /// Label for the report (e.g. "gateway" or "noop"); also the prefix of idempotency keys.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Mixed load: share of tasks of type `noop` (the rest are `--task-type`).
    #[arg(long, default_value_t = 0.0)]
    pub noop_share: f64,
    /// Mixed load: simulate latencies are drawn from `--sim-latency-ms ..= this` (0: fixed).
    #[arg(long, default_value_t = 0)]
    pub sim_latency_max_ms: u64,
    /// Mixed load: share of simulate tasks whose failures are permanent (DEAD at once).
    #[arg(long, default_value_t = 0.0)]
    pub sim_permanent_share: f64,
    /// Mixed load: share of simulate tasks that fail permanently in generation 0 only (a DLQ
    /// redrive cures them).
    #[arg(long, default_value_t = 0.0)]
    pub sim_redrivable_share: f64,
    /// Mixed load: share of simulate tasks whose handler panics on every attempt.
    #[arg(long, default_value_t = 0.0)]
    pub sim_panic_share: f64,
    /// Retry policy of every task: attempts (0: server default).
    #[arg(long, default_value_t = 0)]
    pub max_attempts: u32,
    /// Retry policy of every task: first backoff in ms (0: server default).
    #[arg(long, default_value_t = 0)]
    pub initial_backoff_ms: u32,
    /// Mixed load: share of tasks with an idempotency key (`<label>-<seq>`).
    #[arg(long, default_value_t = 0.0)]
    pub idempotency_share: f64,
    /// Mixed load: share of submits that reuse the previous submit's idempotency key with another
    /// business key, priority or payload, or as an exact duplicate (consecutive submits go to
    /// different gateways, and sit in one SubmitTasks call).
    #[arg(long, default_value_t = 0.0)]
    pub idem_conflict_share: f64,
    /// Mixed load: share of tasks with a `run_at`.
    #[arg(long, default_value_t = 0.0)]
    pub run_at_share: f64,
    /// `run_at` this long after the submit's intended time.
    #[arg(long, default_value_t = 3_000)]
    pub run_at_ms: u64,
    /// `run_at` at this Unix time in ms for every scheduled task (a burst due at once).
    #[arg(long)]
    pub run_at_unix_ms: Option<i64>,
    /// Mixed load: share of accepted tasks cancelled by their tenant after a delay.
    #[arg(long, default_value_t = 0.0)]
    pub cancel_share: f64,
    /// Cancel delays are drawn from 0 ..= this many ms after the accept.
    #[arg(long, default_value_t = 1_000)]
    pub cancel_delay_max_ms: u64,
    /// Mixed load: share of idempotent submits whose id another tenant (`--foreign-api-key`)
    /// cancels just before the submit.
    #[arg(long, default_value_t = 0.0)]
    pub foreign_cancel_share: f64,
    /// Mixed load: share of accepted submits that another tenant (`--foreign-api-key`) cancels
    /// 0 ..= `--foreign-cancel-delay-max-ms` after the accept, through the other gateway and
    /// naming the task's business key (so a gateway that has not seen the task yet routes it:
    /// the processor and the store must refuse it).
    #[arg(long, default_value_t = 0.0)]
    pub foreign_cancel_after_share: f64,
    /// Delays of `--foreign-cancel-after-share` cancels are drawn from 0 ..= this many ms.
    #[arg(long, default_value_t = 200)]
    pub foreign_cancel_delay_max_ms: u64,
    /// API key of the other tenant for `--foreign-cancel-share`.
    #[arg(long)]
    pub foreign_api_key: Option<String>,
    /// Append every cancel (id, tenant, own|foreign, outcome, sent at) to this file, for `audit`.
    #[arg(long)]
    pub record_cancels: Option<std::path::PathBuf>,
    /// Priorities of the submitted tasks as `name=weight` pairs (`critical`, `default`, `low`),
    /// drawn per sequence number in proportion to the weights: `critical=1,default=1,low=1` is a
    /// third of each. Empty: no priority is set (the server's default).
    #[arg(long, default_value = "")]
    pub priority_mix: String,
    /// Workflow load: append every accepted workflow (its nodes and edges), refused submit and
    /// CancelWorkflow to this file, for `audit --workflows`.
    #[arg(long)]
    pub record_workflows: Option<std::path::PathBuf>,
    /// Workflow load: the longest chain (chains have 5 ..= this many nodes).
    #[arg(long, default_value_t = 20)]
    pub wf_chain_max: usize,
    /// Workflow load: the most leaves of a fan-out (20 ..= this many, between a root and a sink).
    #[arg(long, default_value_t = 100)]
    pub wf_fanout_max: usize,
    /// Workflow load: share of nodes that fail permanently.
    #[arg(long, default_value_t = 0.03)]
    pub wf_fail_share: f64,
    /// Workflow load: share of edges whose node runs anyway when the dependency fails.
    #[arg(long, default_value_t = 0.25)]
    pub wf_run_edge_share: f64,
    /// Workflow load: share of non-root nodes that put their dependencies into their result.
    #[arg(long, default_value_t = 0.3)]
    pub wf_with_deps_share: f64,
    /// Workflow load: share of accepted workflows cancelled (CancelWorkflow) 0 ..=
    /// `--cancel-delay-max-ms` after the accept.
    #[arg(long, default_value_t = 0.0)]
    pub wf_cancel_share: f64,
}

/// Runs the CLI.
///
/// # Errors
/// Connection or seeding failures.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::NoopServer { listen } => noop::serve(listen).await,
        Command::ProtoSchema { out } => {
            let json = serde_json::to_string_pretty(&k6schema::schema()?)?;
            if out == "-" {
                println!("{json}");
            } else {
                std::fs::write(&out, json).map_err(|e| anyhow::anyhow!("{out}: {e}"))?;
            }
            Ok(())
        }
        Command::FaultProxy(a) => proxy::run(a).await.map(|_| ()),
        Command::UpsertBaseline(a) => {
            let r = upsert::run(&a).await?;
            eprintln!(
                "upsert baseline: {} rows in {:.2}s = {:.0} rows/s (batch {}, {} table of ~{} rows)",
                r.rows, r.seconds, r.rows_per_second, r.batch, r.table, r.table_rows_before
            );
            Ok(())
        }
        Command::Audit(a) => {
            let v = audit::audit(&a).await?;
            println!("{}", v.line());
            for e in &v.examples {
                println!("  {e}");
            }
            for (source, t) in &v.timing {
                println!("timing {source}: {}", t.line());
            }
            anyhow::ensure!(v.passed(), "audit failed");
            Ok(())
        }
        Command::Cancel(a) => cancel::run(&a).await,
        Command::Run(args) => {
            let report = drive(&args).await?;
            eprintln!("{}", report.human());
            if let Some(path) = &args.json {
                let json = serde_json::to_string_pretty(&report)?;
                if path == "-" {
                    println!("{json}");
                } else {
                    std::fs::write(path, json)?;
                }
            }
            Ok(())
        }
    }
}

/// Drives one scenario and returns its report.
///
/// # Errors
/// Connection or seeding failures.
pub async fn drive(args: &RunArgs) -> anyhow::Result<report::Report> {
    anyhow::ensure!(
        args.rate > 0.0 && args.rate.is_finite(),
        "--rate must be positive"
    );
    anyhow::ensure!(args.duration_s > 0.0, "--duration-s must be positive");
    anyhow::ensure!(
        args.connections > 0 && args.concurrency > 0,
        "--connections and --concurrency must be positive"
    );
    let scenario = Arc::new(Scenario::connect(args).await?);
    let recorder = Arc::new(Recorder::new());
    let permits = Arc::new(Semaphore::new(args.concurrency));
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let warmup = Duration::from_secs_f64(args.warmup_s.max(0.0));
    let total = warmup + Duration::from_secs_f64(args.duration_s);
    let start = tokio::time::Instant::now();
    let measure_from = start + warmup;
    let mut handles = Vec::new();
    let progress = tokio::spawn(report::progress(
        recorder.clone(),
        measure_from,
        total - warmup,
    ));
    // Pacing runs on its own thread: tokio's timer has a 1 ms resolution, so at 5k/s calls left
    // in bursts of five per tick and each carried up to a millisecond of the generator's own lag.
    // A thread sleeping on the OS's high-resolution timer releases each call at its time.
    let (due_tx, mut due_rx) = tokio::sync::mpsc::unbounded_channel();
    let pacer = std::thread::spawn({
        let start = start.into_std();
        move || {
            let mut i: u64 = 0;
            loop {
                let intended = start + interval.mul_f64(i as f64);
                if intended >= start + total {
                    break;
                }
                let now = std::time::Instant::now();
                if intended > now {
                    std::thread::sleep(intended - now);
                }
                if due_tx.send((i, intended)).is_err() {
                    break;
                }
                i += 1;
            }
        }
    });
    while let Some((i, intended)) = due_rx.recv().await {
        let intended = tokio::time::Instant::from_std(intended);
        let (scenario, recorder, permits) = (scenario.clone(), recorder.clone(), permits.clone());
        let measured = intended >= measure_from;
        let seq = i;
        handles.push(tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            let sent = Instant::now();
            let result = scenario.call(seq).await;
            if measured {
                // Latency from the intended time: waiting for a permit counts.
                let late = tokio::time::Instant::now().saturating_duration_since(intended);
                recorder.record(late, sent.elapsed(), result);
            }
        }));
        if handles.len() >= 50_000 {
            handles.retain(|h| !h.is_finished());
        }
    }
    let _ = pacer.join();
    for h in handles {
        let _ = h.await;
    }
    progress.abort();
    scenario.finish().await;
    let elapsed = start
        .elapsed()
        .saturating_sub(warmup)
        .max(Duration::from_millis(1));
    Ok(recorder.report(args, elapsed, scenario.items_per_call(), scenario.counts()))
}
