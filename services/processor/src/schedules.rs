//! The schedule loop: fires due schedules (ScheduleService) as `scheduled` tasks.
//!
//! Every `schedules.interval_ms`, one short transaction reads the database's clock, claims due
//! schedules (`FOR UPDATE SKIP LOCKED`: several processor instances claim disjoint rows), and for
//! each: plans the due times (`dispatch_core::schedule::Timing::plan`: on-time fires, missed times
//! per the catch-up policy), skips a fire while the previous fire's task is unfinished (overlap
//! SKIP), inserts each fire as a SCHEDULED task row whose id is derived from (schedule, fire time),
//! and advances `next_fire_at`; then commits. Nothing is published here: the scheduler
//! ([`crate::scheduler`]) publishes the rows once their `run_at` (fire time plus jitter) is due,
//! as it does for any submit with a future `run_at`, so a fire survives this instance dying right
//! after the commit. A claim that dies before its commit leaves the schedule as it was for the
//! next instance; a fire attempted twice anyway (a schedule's `next_fire_at` set back) is refused
//! by the tasks primary key and counted `duplicate`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use dispatch_core::Tenant;
use dispatch_core::schedule::{self, Catchup, Overlap, Timing};
use dispatch_store::MySqlPool;
use dispatch_store::schedules::{self as store, Fired, Pass, ScheduleRow};
use tokio_util::sync::CancellationToken;

use crate::metrics::{self, FireOutcome};

/// The loop's wiring.
pub struct ScheduleLoop {
    /// Pool.
    pub pool: MySqlPool,
    /// Pause between passes.
    pub interval: Duration,
    /// Schedules claimed per transaction.
    pub batch_size: u32,
    /// Due times older than this when a pass looks at them were missed (the catch-up policy
    /// decides); younger ones fire.
    pub misfire_grace: Duration,
    /// Stops the loop.
    pub stop: CancellationToken,
}

/// What one pass did, summed over its schedules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tick {
    /// Schedules claimed.
    pub claimed: usize,
    /// Tasks submitted.
    pub fired: u64,
    /// Missed times not fired.
    pub missed: u64,
    /// Fires skipped by the overlap policy.
    pub overlap_skipped: u64,
    /// Fires whose task existed already.
    pub duplicate: u64,
    /// Fires (or schedules) that no longer parse.
    pub invalid: u64,
}

/// The timing of a stored schedule.
///
/// # Errors
/// A row that no longer parses.
pub fn timing(s: &ScheduleRow) -> Result<Timing, String> {
    match (&s.cron_expr, s.interval_ms) {
        (Some(c), None) => Timing::cron(c, &s.time_zone),
        (None, Some(ms)) => Timing::every(ms, s.anchor_at),
        _ => Err("exactly one of cron_expr and interval_ms must be set".into()),
    }
}

impl ScheduleLoop {
    /// Runs until `stop`.
    pub async fn run(self) {
        loop {
            let full = match self.tick().await {
                Ok(t) => t.claimed >= self.batch_size as usize,
                Err(e) => {
                    tracing::warn!(error = %e, "schedule pass failed");
                    false
                }
            };
            if self.stop.is_cancelled() {
                break;
            }
            // A full batch means more may be due: go again at once.
            if !full {
                tokio::select! {
                    () = tokio::time::sleep(self.interval) => {}
                    () = self.stop.cancelled() => break,
                }
            }
        }
        tracing::info!("schedule loop stopped");
    }

    /// One pass: claims due schedules, fires them and advances them, in one transaction.
    ///
    /// # Errors
    /// Database errors (the transaction is rolled back: nothing of the pass happened).
    pub async fn tick(&self) -> anyhow::Result<Tick> {
        let mut tx = self.pool.begin().await?;
        let now = store::db_now(&mut *tx).await?;
        let due = store::claim_due(&mut tx, now, self.batch_size).await?;
        let mut tick = Tick {
            claimed: due.len(),
            ..Tick::default()
        };
        if due.is_empty() {
            tx.rollback().await?;
            self.observe_lag(now).await;
            return Ok(tick);
        }
        for s in &due {
            let pass = self.pass(&mut tx, s, now, &mut tick).await?;
            store::record_pass(&mut tx, s.schedule_id, &pass, now).await?;
        }
        tx.commit().await?;
        for (outcome, n) in [
            (FireOutcome::Fired, tick.fired),
            (FireOutcome::Missed, tick.missed),
            (FireOutcome::OverlapSkipped, tick.overlap_skipped),
            (FireOutcome::Duplicate, tick.duplicate),
            (FireOutcome::Invalid, tick.invalid),
        ] {
            if n > 0 {
                metrics::schedule_fires(outcome, n);
            }
        }
        if tick.fired > 0 {
            tracing::debug!(fired = tick.fired, "schedules fired");
        }
        self.observe_lag(now).await;
        Ok(tick)
    }

    /// Plans and fires one claimed schedule inside the pass's transaction.
    async fn pass(
        &self,
        tx: &mut sqlx::MySqlConnection,
        s: &ScheduleRow,
        now: DateTime<Utc>,
        tick: &mut Tick,
    ) -> anyhow::Result<Pass> {
        let parsed = timing(s).and_then(|t| {
            let overlap = Overlap::parse(&s.overlap)?;
            let catchup = Catchup::parse(&s.catchup, s.catchup_limit)?;
            let tenant = Tenant::parse(&s.tenant)?;
            Ok((t, overlap, catchup, tenant))
        });
        let (timing, overlap, catchup, tenant) = match parsed {
            Ok(p) => p,
            Err(e) => {
                // Never again: a row that cannot be planned must not spin every pass.
                tracing::error!(schedule = %s.name, tenant = %s.tenant, error = %e, "schedule no longer parses; it stops firing");
                tick.invalid += 1;
                return Ok(Pass::default());
            }
        };
        let Some(from) = s.next_fire_at else {
            return Ok(Pass::default());
        };
        let grace = chrono::Duration::from_std(self.misfire_grace).unwrap_or_default();
        let plan = timing.plan(from, now, grace, catchup);
        let mut pass = Pass {
            next_fire_at: plan.next,
            missed: plan.missed,
            ..Pass::default()
        };
        if plan.missed > 0 {
            tracing::warn!(
                schedule = %s.name, tenant = %s.tenant, missed = plan.missed,
                catchup = catchup.as_str(), caught_up = plan.fire.len(),
                "schedule fire times were missed"
            );
        }
        tick.missed += plan.missed;
        let mut last = s.last_task_id;
        for fire_at in plan.fire {
            if overlap == Overlap::Skip
                && let Some(id) = last
                && store::unfinished(tx, id).await?
            {
                tracing::info!(schedule = %s.name, tenant = %s.tenant, %fire_at, previous = %id, "fire skipped: the previous fire's task has not finished");
                pass.overlap_skipped += 1;
                tick.overlap_skipped += 1;
                continue;
            }
            let task = match schedule::fire_task(
                &s.template,
                &tenant,
                &s.schedule_id,
                fire_at,
                false,
                s.jitter_ms,
                now,
            ) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(schedule = %s.name, tenant = %s.tenant, error = %e, "fire skipped: the template no longer parses");
                    tick.invalid += 1;
                    continue;
                }
            };
            let id = task.task_id;
            match store::insert_fire(tx, &store::scheduled_write(&task, now)).await? {
                Fired::Inserted => {
                    pass.fired += 1;
                    tick.fired += 1;
                    pass.last_fire = Some((fire_at, id));
                }
                Fired::Duplicate => {
                    tracing::info!(schedule = %s.name, tenant = %s.tenant, %fire_at, task_id = %id, "fire happened before; not again");
                    tick.duplicate += 1;
                }
            }
            last = Some(id);
        }
        Ok(pass)
    }

    async fn observe_lag(&self, now: DateTime<Utc>) {
        match store::oldest_due(&self.pool).await {
            Ok(oldest) => {
                let lag = oldest.map_or(0.0, |o| {
                    ((now - o).num_milliseconds().max(0) as f64) / 1000.0
                });
                metrics::schedule_lag(lag);
            }
            Err(e) => tracing::debug!(error = %e, "schedule lag not read"),
        }
    }
}
