//! `dispatchctl outbox list|requeue`: the submit outbox through the processor's AdminService.

use clap::Subcommand;
use dispatch_proto::v1 as pb;
use dispatch_proto::v1::admin_service_client::AdminServiceClient;
use serde_json::json;

use crate::client::{Conn, status_error};
use crate::output::time;
use crate::{CliError, Format, output};

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// Outbox actions.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// List outbox rows, oldest first (pending and dead ones unless --state is given).
    List {
        /// Only rows in this state.
        #[arg(long, value_parser = ["pending", "dead", "published"])]
        state: Option<String>,
        /// Page size (1..=1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Rows after this id (the previous page's "next page" id).
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Make dead rows pending again; the gateways' relay publishes them in id order.
    Requeue {
        /// Dead row ids (from `outbox list --state dead`).
        ids: Vec<u64>,
        /// Requeue every dead row (instead of ids).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Count what would be requeued; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn row_json(r: &pb::OutboxRow) -> serde_json::Value {
    json!({
        "id": r.id, "task_id": r.task_id, "topic": r.topic, "business_key": r.business_key,
        "state": r.state, "attempts": r.attempts, "last_error": r.last_error,
        "created_at": time(r.created_at.as_ref()),
        "next_attempt_at": time(r.next_attempt_at.as_ref()),
        "published_at": time(r.published_at.as_ref()),
    })
}

/// Runs an outbox command.
///
/// # Errors
/// Invalid input, unreachable processor, auth.
pub async fn run(a: Args, conn: &Conn, format: Format) -> anyhow::Result<()> {
    let mut c = AdminServiceClient::new(conn.channel(&conn.admin).await?);
    match a.action {
        Action::List {
            state,
            limit,
            after,
        } => {
            if !(1..=1000).contains(&limit) {
                return Err(CliError::Invalid(format!("--limit {limit}: must be 1..=1000")).into());
            }
            let req = conn.admin_request(pb::ListOutboxRequest {
                state: state.unwrap_or_default(),
                page_size: limit,
                after_id: after,
            })?;
            let r = c
                .list_outbox(req)
                .await
                .map_err(|s| status_error("outbox list", s))?
                .into_inner();
            let json = json!({
                "rows": r.rows.iter().map(row_json).collect::<Vec<_>>(),
                "next_after_id": r.next_after_id, "pending": r.pending, "dead": r.dead,
            });
            let rows = r
                .rows
                .iter()
                .map(|o| {
                    vec![
                        o.id.to_string(),
                        o.task_id.clone(),
                        o.business_key.clone(),
                        o.state.clone(),
                        o.attempts.to_string(),
                        time(o.created_at.as_ref()),
                        o.last_error.chars().take(60).collect(),
                    ]
                })
                .collect();
            output::print(
                format,
                &[
                    "ID",
                    "TASK",
                    "KEY",
                    "STATE",
                    "ATTEMPTS",
                    "CREATED",
                    "LAST ERROR",
                ],
                rows,
                &json,
            );
            if format == Format::Table {
                println!("pending {}, dead {} in all", r.pending, r.dead);
                if r.next_after_id > 0 {
                    println!("next page: --after {}", r.next_after_id);
                }
            }
            Ok(())
        }
        Action::Requeue { ids, all, dry_run } => {
            if ids.is_empty() && !all {
                return Err(CliError::Invalid(
                    "name the dead rows to requeue (ids from `outbox list --state dead`), or pass --all"
                        .into(),
                )
                .into());
            }
            let req = conn.admin_request(pb::RequeueOutboxRequest { ids, all, dry_run })?;
            let r = c
                .requeue_outbox(req)
                .await
                .map_err(|s| status_error("outbox requeue", s))?
                .into_inner();
            output::print(
                format,
                &["REQUEUED", "DRY RUN"],
                vec![vec![r.requeued.to_string(), r.dry_run.to_string()]],
                &json!({"requeued": r.requeued, "dry_run": r.dry_run}),
            );
            Ok(())
        }
    }
}
