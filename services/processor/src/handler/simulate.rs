//! The `simulate` handler, for load and fault tests: latency, failures and panics come from the
//! payload, and every execution is recorded in the `handler_executions` ledger (instance, start,
//! finish, outcome) before the handler returns, so tests can count how often each task really
//! ran, on which processor, and whether two executions of one task overlapped.
//!
//! Payload (JSON, every field optional; an empty payload means "succeed at once"):
//! `{"latency_ms": 10, "fail_rate": 0.1, "permanent": false, "fail_attempts": 2,
//!   "fail_generations": 1, "panic": false, "panic_attempts": 0}`:
//! attempts `<= fail_attempts` fail, attempts of generations `< fail_generations` fail (a redrive
//! starts generation 1, so `fail_generations: 1` dies once and succeeds when redriven), later
//! ones fail with probability `fail_rate`; failures are permanent when `permanent` is true,
//! retryable otherwise. `panic` panics on every attempt, `panic_attempts` on the first that many
//! (after the ledger row is written, so the panicking execution is counted).
//!
//! A successful execution's result names it: `{"instance":"<host>:<pid>","started_at":"<RFC 3339>"}`.
//! With `"with_dependencies": true` (a workflow node) it also carries what the node read of its
//! dependencies when it ran: `"dependencies":[{"name":..,"state":..,"result":<their result text>}]`.
//! Two executions of one task therefore leave different results, so a committed outcome that a
//! later execution overwrote shows in the task's events (the audit's `terminal_changed`), even
//! when both wrote the same state and version.
//!
//! Ledger rows of concurrent executions are inserted together (a [`Coalescer`] gathering for up
//! to 250 µs): one autocommit insert per execution made the ledger, not the simulated
//! latency, the limit of every simulate benchmark. Each execution still waits for its own row.
//! A handler stopped by its cancellation token records its row (outcome `cancelled`) on a best
//! effort basis: the pool may already be closing when the processor stops.

use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::Envelope;
use rand::Rng;
use serde::Deserialize;

use dispatch_store::ledger::{Execution, ExecutionOutcome};

use super::{Handler, HandlerContext, HandlerError, Outcome};
use crate::coalesce::Coalescer;

/// Ledger rows per insert, at most.
const LEDGER_BATCH: usize = 256;
/// How long the first execution of a ledger batch waits for others.
const LEDGER_WINDOW: Duration = Duration::from_micros(250);

/// What the payload asks for.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Plan {
    /// Sleep this long.
    pub latency_ms: u64,
    /// Failure probability of attempts after `fail_attempts`.
    pub fail_rate: f64,
    /// Failures are permanent.
    pub permanent: bool,
    /// The first this-many attempts fail.
    pub fail_attempts: u32,
    /// Every attempt of generations below this fails (0: none).
    pub fail_generations: u32,
    /// Panic on every attempt.
    pub panic: bool,
    /// Panic on the first this-many attempts.
    pub panic_attempts: u32,
    /// Put the node's dependencies (names, states, results) into the result.
    pub with_dependencies: bool,
}

impl Plan {
    /// Parses a payload.
    ///
    /// # Errors
    /// The payload is not empty and not a JSON plan.
    pub fn parse(payload: &[u8]) -> Result<Self, String> {
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        serde_json::from_slice(payload).map_err(|e| format!("simulate payload is not a plan: {e}"))
    }

    /// Whether `attempt` of `generation` fails (`roll` in [0, 1)).
    pub fn fails(&self, generation: u32, attempt: u32, roll: f64) -> bool {
        generation < self.fail_generations || attempt <= self.fail_attempts || roll < self.fail_rate
    }

    /// Whether `attempt` panics.
    pub fn panics(&self, attempt: u32) -> bool {
        self.panic || attempt <= self.panic_attempts
    }
}

/// The built-in `simulate` handler.
#[derive(Clone, Default)]
pub struct SimulateHandler {
    /// Started on first use, on the processor's pool.
    ledger: OnceLock<Coalescer<Execution, ()>>,
}

/// `<hostname>:<pid>` of this process, computed once.
fn instance() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(dispatch_store::ledger::instance_id)
}

impl SimulateHandler {
    fn ledger(&self, ctx: &HandlerContext) -> &Coalescer<Execution, ()> {
        self.ledger.get_or_init(|| {
            let pool = ctx.pool.clone();
            Coalescer::spawn(LEDGER_BATCH, LEDGER_WINDOW, move |rows: Vec<Execution>| {
                let pool = pool.clone();
                async move {
                    let n = rows.len();
                    dispatch_store::ledger::record_many(&pool, &rows)
                        .await
                        .map(|()| vec![(); n])
                        .map_err(|e| e.to_string())
                }
            })
        })
    }

    async fn record(
        &self,
        ctx: &HandlerContext,
        task: &Envelope,
        started_at: chrono::DateTime<chrono::Utc>,
        outcome: ExecutionOutcome,
    ) -> Result<(), String> {
        let execution = Execution {
            task_id: task.task_id,
            generation: ctx.generation,
            attempt: ctx.attempt,
            instance: instance().to_owned(),
            started_at,
            executed_at: chrono::Utc::now(),
            outcome,
            claimed: ctx.claimed,
        };
        self.ledger(ctx).call(execution).await
    }
}

#[async_trait]
impl Handler for SimulateHandler {
    async fn handle(&self, ctx: HandlerContext, task: &Envelope) -> Result<Outcome, HandlerError> {
        let started_at = chrono::Utc::now();
        let plan = Plan::parse(&task.payload).map_err(HandlerError::Permanent)?;
        if plan.latency_ms > 0 {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(plan.latency_ms)) => {}
                () = ctx.cancel.cancelled() => {
                    let _ = self.record(&ctx, task, started_at, ExecutionOutcome::Cancelled).await;
                    return Err(HandlerError::Retryable("cancelled".into()));
                }
            }
        }
        let dependencies = if plan.with_dependencies {
            let deps = ctx
                .dependencies(task)
                .await
                .map_err(|e| HandlerError::Retryable(format!("reading dependencies: {e}")))?;
            Some(deps)
        } else {
            None
        };
        let roll: f64 = rand::rng().random();
        let fails = plan.fails(ctx.generation, ctx.attempt, roll);
        let panics = plan.panics(ctx.attempt);
        let outcome = if panics {
            ExecutionOutcome::Panic
        } else if fails {
            ExecutionOutcome::Failed
        } else {
            ExecutionOutcome::Ok
        };
        self.record(&ctx, task, started_at, outcome)
            .await
            .map_err(|e| HandlerError::Retryable(format!("ledger write failed: {e}")))?;
        if panics {
            panic!(
                "simulated panic on attempt {} of task {}",
                ctx.attempt, task.task_id
            );
        }
        if fails {
            let msg = format!("simulated failure on attempt {}", ctx.attempt);
            return Err(if plan.permanent {
                HandlerError::Permanent(msg)
            } else {
                HandlerError::Retryable(msg)
            });
        }
        Ok(Outcome {
            result: Some(result_of(started_at, dependencies.as_deref())),
        })
    }
}

/// The result of a successful execution: which one it was, and what it read of its dependencies.
fn result_of(
    started_at: chrono::DateTime<chrono::Utc>,
    dependencies: Option<&[super::DependencyResult]>,
) -> Vec<u8> {
    let mut result = serde_json::json!({
        "instance": instance(),
        "started_at": started_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    });
    if let Some(deps) = dependencies {
        result["dependencies"] = deps
            .iter()
            .map(|d| {
                serde_json::json!({
                    "name": d.name,
                    "task_id": d.task_id.to_string(),
                    "state": d.state.as_str(),
                    "result": d.result.as_deref().map(String::from_utf8_lossy),
                })
            })
            .collect();
    }
    result.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_decide() {
        assert_eq!(Plan::parse(b"").expect("empty"), Plan::default());
        let p =
            Plan::parse(br#"{"latency_ms":10,"fail_attempts":2,"fail_rate":0.5}"#).expect("plan");
        assert_eq!(p.latency_ms, 10);
        assert!(p.fails(0, 1, 0.99) && p.fails(0, 2, 0.99));
        assert!(!p.fails(0, 3, 0.5) && p.fails(0, 3, 0.49));
        assert!(!p.panics(1));
        assert!(Plan::parse(b"{nope").is_err());

        let redrivable = Plan::parse(br#"{"fail_generations":1,"permanent":true}"#).expect("plan");
        assert!(redrivable.fails(0, 1, 0.99) && redrivable.fails(0, 7, 0.99));
        assert!(!redrivable.fails(1, 1, 0.0));

        let panicky = Plan::parse(br#"{"panic_attempts":2}"#).expect("plan");
        assert!(panicky.panics(1) && panicky.panics(2) && !panicky.panics(3));
        assert!(Plan::parse(br#"{"panic":true}"#).expect("plan").panics(9));
    }

    fn envelope(payload: &str) -> Envelope {
        Envelope::submit(dispatch_testkit::new_task(
            "simulate",
            "k",
            payload.as_bytes(),
        ))
    }

    /// Every way an execution ends leaves one ledger row naming this process, with its start no
    /// later than its finish: what the fault audit needs to see overlapping runs.
    #[tokio::test]
    async fn every_execution_is_recorded_with_instance_start_and_outcome() {
        use sqlx::Row as _;
        let env = dispatch_testkit::TestEnv::new().await.expect("test env");
        let h = SimulateHandler::default();
        let ctx = |cancel: tokio_util::sync::CancellationToken| HandlerContext {
            cancel,
            attempt: 1,
            generation: 0,
            claimed: false,
            pool: env.pool.clone(),
        };
        let live = tokio_util::sync::CancellationToken::new;

        let ok = envelope(r#"{"latency_ms":5}"#);
        let first = h.handle(ctx(live()), &ok).await.expect("ok").result;
        let again = h
            .handle(ctx(live()), &envelope(r#"{"latency_ms":5}"#))
            .await
            .expect("ok")
            .result;
        assert_ne!(first, again, "each execution leaves its own result");
        assert!(
            String::from_utf8(first.expect("a result"))
                .expect("utf-8")
                .contains(instance()),
            "the result names the instance"
        );
        let failed = envelope(r#"{"fail_attempts":1,"permanent":true}"#);
        // A claimed attempt (a retry's, say) says so in its row.
        let claimed = HandlerContext {
            claimed: true,
            ..ctx(live())
        };
        assert!(matches!(
            h.handle(claimed, &failed).await,
            Err(HandlerError::Permanent(_))
        ));
        let cancelled = envelope(r#"{"latency_ms":60000}"#);
        let token = live();
        token.cancel();
        assert!(matches!(
            h.handle(ctx(token), &cancelled).await,
            Err(HandlerError::Retryable(_))
        ));
        let panicky = envelope(r#"{"panic":true}"#);
        let joined = tokio::spawn({
            let (h, c, e) = (h.clone(), ctx(live()), panicky.clone());
            async move { h.handle(c, &e).await }
        })
        .await;
        assert!(joined.expect_err("the handler panics").is_panic());

        let me = format!(":{}", std::process::id());
        for (task, outcome) in [
            (&ok, "ok"),
            (&failed, "failed"),
            (&cancelled, "cancelled"),
            (&panicky, "panic"),
        ] {
            let rows = sqlx::query(
                "SELECT instance, started_at, executed_at, outcome, generation, attempt, claimed \
                 FROM handler_executions WHERE task_id = ?",
            )
            .bind(task.task_id.as_bytes().as_slice())
            .fetch_all(&env.pool)
            .await
            .expect("ledger");
            assert_eq!(rows.len(), 1, "{outcome}: one row");
            let r = &rows[0];
            let instance: String = r.get(0);
            let started: chrono::DateTime<chrono::Utc> = r.get(1);
            let finished: chrono::DateTime<chrono::Utc> = r.get(2);
            assert!(instance.ends_with(&me), "{outcome}: instance {instance}");
            assert!(started <= finished, "{outcome}: {started} > {finished}");
            assert_eq!(r.get::<String, _>(3), outcome);
            assert_eq!((r.get::<u32, _>(4), r.get::<u32, _>(5)), (0, 1));
            assert_eq!(
                r.get::<bool, _>(6),
                outcome == "failed",
                "{outcome}: claimed"
            );
        }
        let ok_rows: (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
            sqlx::query_as(
                "SELECT started_at, executed_at FROM handler_executions WHERE task_id = ?",
            )
            .bind(ok.task_id.as_bytes().as_slice())
            .fetch_one(&env.pool)
            .await
            .expect("ok row");
        assert!(
            ok_rows.1 - ok_rows.0 >= chrono::Duration::milliseconds(5),
            "the ok execution slept 5 ms between start and finish: {ok_rows:?}"
        );
        env.cleanup().await;
    }
}
