//! The `simulate` handler, for load and fault tests: latency and failures come from the payload,
//! and every completed execution is recorded in the `handler_executions` ledger before the
//! handler returns, so tests can count how often each task really ran.
//!
//! Payload (JSON, every field optional; an empty payload means "succeed at once"):
//! `{"latency_ms": 10, "fail_rate": 0.1, "permanent": false, "fail_attempts": 2}`:
//! attempts `<= fail_attempts` fail, later ones fail with probability `fail_rate`; failures are
//! permanent when `permanent` is true, retryable otherwise.
//!
//! Ledger rows of concurrent executions are inserted together (a [`Coalescer`] gathering for up
//! to 250 µs): one autocommit insert per execution made the ledger, not the simulated
//! latency, the limit of every simulate benchmark. Each execution still waits for its own row.

use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::Envelope;
use rand::Rng;
use serde::Deserialize;

use dispatch_store::ledger::Execution;

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

    /// Whether `attempt` fails (`roll` in [0, 1)).
    pub fn fails(&self, attempt: u32, roll: f64) -> bool {
        attempt <= self.fail_attempts || roll < self.fail_rate
    }
}

/// The built-in `simulate` handler.
#[derive(Clone, Default)]
pub struct SimulateHandler {
    /// Started on first use, on the processor's pool.
    ledger: OnceLock<Coalescer<Execution, ()>>,
}

#[async_trait]
impl Handler for SimulateHandler {
    async fn handle(&self, ctx: HandlerContext, task: &Envelope) -> Result<Outcome, HandlerError> {
        let plan = Plan::parse(&task.payload).map_err(HandlerError::Permanent)?;
        if plan.latency_ms > 0 {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(plan.latency_ms)) => {}
                () = ctx.cancel.cancelled() => {
                    return Err(HandlerError::Retryable("cancelled".into()));
                }
            }
        }
        let ledger = self.ledger.get_or_init(|| {
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
        });
        let execution = Execution {
            task_id: task.task_id,
            generation: ctx.generation,
            attempt: ctx.attempt,
            executed_at: chrono::Utc::now(),
        };
        ledger
            .call(execution)
            .await
            .map_err(|e| HandlerError::Retryable(format!("ledger write failed: {e}")))?;
        let roll: f64 = rand::rng().random();
        if plan.fails(ctx.attempt, roll) {
            let msg = format!("simulated failure on attempt {}", ctx.attempt);
            return Err(if plan.permanent {
                HandlerError::Permanent(msg)
            } else {
                HandlerError::Retryable(msg)
            });
        }
        Ok(Outcome::default())
    }
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
        assert!(p.fails(1, 0.99) && p.fails(2, 0.99));
        assert!(!p.fails(3, 0.5) && p.fails(3, 0.49));
        assert!(Plan::parse(b"{nope").is_err());
    }
}
