//! The `simulate` handler, for load and fault tests: latency and failures come from the payload,
//! and every completed execution is recorded in the `handler_executions` ledger before the
//! handler returns, so tests can count how often each task really ran.
//!
//! Payload (JSON, every field optional; an empty payload means "succeed at once"):
//! `{"latency_ms": 10, "fail_rate": 0.1, "permanent": false, "fail_attempts": 2}`:
//! attempts `<= fail_attempts` fail, later ones fail with probability `fail_rate`; failures are
//! permanent when `permanent` is true, retryable otherwise.

use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::Envelope;
use rand::Rng;
use serde::Deserialize;

use super::{Handler, HandlerContext, HandlerError, Outcome};

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
#[derive(Debug, Clone, Copy, Default)]
pub struct SimulateHandler;

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
        dispatch_store::ledger::record(
            &ctx.pool,
            task.task_id,
            ctx.generation,
            ctx.attempt,
            chrono::Utc::now(),
        )
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
