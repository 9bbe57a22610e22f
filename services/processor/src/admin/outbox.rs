//! The outbox operations: list rows, requeue dead ones.
//!
//! The outbox belongs to the gateway (it writes the rows and its relay leader publishes them);
//! operators reach it here because AdminService is where every other operator action lives and
//! the processor shares the database. A requeue only flips rows back to `pending`: the relay
//! publishes them in id order, and the gateways' sticky routing sends new submits to the outbox
//! until it has drained, so per-key order holds across a requeue too.

use dispatch_core::Violations;
use dispatch_core::time::to_proto;
use dispatch_proto::v1 as pb;
use dispatch_store::outbox_admin::{self as store, OutboxRow};

use super::convert::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use super::{Admin, AdminError};

/// Most ids one requeue may name.
pub const MAX_REQUEUE_IDS: usize = 10_000;

fn row(r: OutboxRow) -> pb::OutboxRow {
    pb::OutboxRow {
        id: r.id,
        task_id: r.task_id.to_string(),
        topic: r.topic,
        business_key: String::from_utf8_lossy(&r.key).into_owned(),
        state: r.state,
        attempts: r.attempts,
        last_error: r.last_error,
        created_at: Some(to_proto(r.created_at)),
        next_attempt_at: Some(to_proto(r.next_attempt_at)),
        published_at: r.published_at.map(to_proto),
    }
}

impl Admin {
    /// One page of outbox rows.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for an unknown state or page size; store errors.
    pub async fn list_outbox(
        &self,
        r: pb::ListOutboxRequest,
    ) -> Result<pb::ListOutboxResponse, AdminError> {
        let mut v = Violations::default();
        let states: Vec<&str> = match r.state.as_str() {
            "" => vec!["pending", "dead"],
            s => match store::STATES.iter().find(|k| **k == s) {
                Some(k) => vec![*k],
                None => {
                    v.add(
                        "state",
                        format!("must be one of {}, or empty", store::STATES.join(", ")),
                    );
                    Vec::new()
                }
            },
        };
        if r.page_size > MAX_PAGE_SIZE {
            v.add("page_size", format!("must be at most {MAX_PAGE_SIZE}"));
        }
        if !v.is_empty() {
            return Err(AdminError::Invalid(v));
        }
        let size = if r.page_size == 0 {
            DEFAULT_PAGE_SIZE
        } else {
            r.page_size
        };
        // One more than the page tells whether there is a next page.
        let (mut rows, backlog) = tokio::try_join!(
            store::list(&self.pool, &states, r.after_id, size + 1),
            dispatch_store::outbox::backlog(&self.pool),
        )?;
        let more = rows.len() > size as usize;
        rows.truncate(size as usize);
        let next_after_id = if more {
            rows.last().map_or(0, |r| r.id)
        } else {
            0
        };
        Ok(pb::ListOutboxResponse {
            rows: rows.into_iter().map(row).collect(),
            next_after_id,
            pending: backlog.pending,
            dead: backlog.dead,
        })
    }

    /// Requeues dead rows.
    ///
    /// # Errors
    /// INVALID_ARGUMENT without ids and without `all`, with both, or with too many ids; store
    /// errors.
    pub async fn requeue_outbox(
        &self,
        r: pb::RequeueOutboxRequest,
    ) -> Result<pb::RequeueOutboxResponse, AdminError> {
        let mut v = Violations::default();
        match (r.ids.is_empty(), r.all) {
            (true, false) => v.add("ids", "name the dead rows to requeue, or set all"),
            (false, true) => v.add("all", "cannot be combined with ids"),
            _ => {}
        }
        if r.ids.len() > MAX_REQUEUE_IDS {
            v.add("ids", format!("at most {MAX_REQUEUE_IDS} per call"));
        }
        if !v.is_empty() {
            return Err(AdminError::Invalid(v));
        }
        let ids = (!r.all).then_some(r.ids.as_slice());
        let n = store::requeue_dead(&self.pool, ids, r.dry_run).await?;
        if !r.dry_run {
            tracing::info!(requeued = n, "dead outbox rows requeued");
        }
        Ok(pb::RequeueOutboxResponse {
            requeued: n,
            dry_run: r.dry_run,
        })
    }
}
