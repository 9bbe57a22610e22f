//! AdminService: the operator API, served on the processor's gRPC port.
//!
//! Served by the processor because it already owns what operators act on: the consumer to pause
//! and resume ([`Control`]), the producer a redrive writes with, and the store; a separate
//! deployable would have to reach into a running processor for the first anyway.
//!
//! - here: [`Admin`] (the operations' dependencies), [`AdminError`] and its one mapping to
//!   `tonic::Status` (store, Kafka and internal errors through `dispatch_runtime::server::status`:
//!   the detail is logged, the caller reads a generic message), [`GRPC`], what the processor's gRPC
//!   server serves (the server, its RPC metrics and spans: `dispatch_runtime::server`), and
//!   [`AdminApi`], the gRPC adapter (the admin key check, and the audit log: every call that
//!   changes something is logged under the target [`AUDIT_TARGET`] with the admin key's id,
//!   the filters used and the outcome; reads are logged the same way at debug).
//! - [`dlq`]: list, inspect, purge, redrive.
//! - [`outbox`]: list outbox rows, requeue dead ones.
//! - [`reader`]: reading dead letters back from `dispatch.dlq` by their coordinates.
//! - [`convert`]: requests parsed into domain values, replies built.
//!
//! (Over 400 lines: nine RPC adapters, each with its parsing and its audit line; the operations
//! themselves live in the submodules.)

pub mod convert;
pub mod dlq;
pub mod outbox;
pub mod reader;

use std::sync::Arc;

use dispatch_core::{TaskId, Topics, Violations};
use dispatch_proto::v1 as pb;
use dispatch_proto::v1::admin_service_server::{AdminService, AdminServiceServer};
use dispatch_runtime::server::auth::{AdminCaller, Authenticator};
use dispatch_runtime::server::metrics::code_name;
use dispatch_runtime::server::{Rpcs, Spec, status};
use dispatch_runtime::settings::KafkaSettings;
use dispatch_store::{MySqlPool, StoreError};
use tonic::{Code, Request, Response, Status};

use self::dlq::RedriveRequest;
use crate::control::Control;
use crate::produce::Producer;

/// The RPC names (metric `method` labels).
pub const METHODS: [&str; 9] = [
    "ListDeadLetters",
    "GetDeadLetter",
    "RedriveDeadLetters",
    "PurgeDeadLetters",
    "PauseConsumption",
    "ResumeConsumption",
    "GetStats",
    "ListOutbox",
    "RequeueOutbox",
];

/// What the processor's gRPC server serves.
pub const GRPC: Spec = Spec {
    label: "processor",
    services: &[Rpcs {
        service: dispatch_proto::v1::admin_service_server::SERVICE_NAME,
        methods: &METHODS,
    }],
};

/// Why an admin operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request is invalid.
    #[error("{0}")]
    Invalid(Violations),
    /// The dead letter does not exist.
    #[error("{0}")]
    NotFound(String),
    /// MySQL failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Kafka failed.
    #[error("kafka: {0}")]
    Kafka(String),
    /// A bug or a broken runtime.
    #[error("{0}")]
    Internal(String),
}

impl From<AdminError> for Status {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Invalid(v) => v.to_status(),
            AdminError::NotFound(m) => Status::not_found(m),
            AdminError::Store(e) => status::store_error(&e),
            AdminError::Kafka(m) => status::hidden(
                Code::Unavailable,
                status::KAFKA_UNAVAILABLE,
                &format!("kafka: {m}"),
            ),
            AdminError::Internal(m) => status::internal(&m),
        }
    }
}

/// What the admin operations work with.
#[derive(Clone)]
pub struct Admin {
    /// MySQL (dead letters, outbox backlog).
    pub pool: MySqlPool,
    /// The processor's producer (redrives).
    pub producer: Producer,
    /// Topic names.
    pub topics: Topics,
    /// Brokers (the DLQ reader).
    pub kafka: KafkaSettings,
    /// Pauses and stats.
    pub control: Control,
}

/// The gRPC service: checks the admin key, then calls [`Admin`].
#[derive(Clone)]
pub struct AdminApi {
    admin: Arc<Admin>,
    auth: Arc<Authenticator>,
}

impl AdminApi {
    /// A server for `admin`, callable with the admin key of `auth`.
    pub fn server(admin: Admin, auth: Authenticator, max_bytes: usize) -> AdminServiceServer<Self> {
        crate::metrics::init_redrives();
        AdminServiceServer::new(Self {
            admin: Arc::new(admin),
            auth: Arc::new(auth),
        })
        .max_decoding_message_size(max_bytes)
    }

    /// PauseConsumption and ResumeConsumption: the same target rules, audit and answer.
    async fn switch_consumption(
        &self,
        req: Request<pb::PauseRequest>,
        switch: Switch,
    ) -> Result<Response<pb::PauseResponse>, Status> {
        let caller = self.auth.admin(req.metadata())?;
        let target = convert::target(req.into_inner()).map_err(AdminError::Invalid)?;
        let filters = format!("{target:?}");
        let control = &self.admin.control;
        let (action, p) = match switch {
            Switch::Pause => ("PauseConsumption", control.pause(&target).await),
            Switch::Resume => ("ResumeConsumption", control.resume(&target).await),
        };
        let p = p.map_err(AdminError::from).map_err(Status::from);
        audit(&caller, action, true, &filters, &p, |p| format!("{p:?}"));
        Ok(Response::new(convert::paused(&p?)))
    }
}

/// Which way [`AdminApi::switch_consumption`] turns consumption.
#[derive(Clone, Copy)]
enum Switch {
    Pause,
    Resume,
}

/// The log target of admin actions (route it to an audit sink with a target filter).
pub const AUDIT_TARGET: &str = "dispatch_audit";

/// Logs one admin action: who (the admin key's id, never the key), what, with which filters,
/// and how it ended. `changes`: the action changes state (logged at info; reads at debug).
fn audit<T>(
    caller: &AdminCaller,
    action: &'static str,
    changes: bool,
    filters: &str,
    out: &Result<T, Status>,
    outcome: impl FnOnce(&T) -> String,
) {
    match out {
        Ok(r) if changes => tracing::info!(
            target: AUDIT_TARGET,
            key_id = %caller.key_id,
            action,
            filters,
            outcome = %outcome(r),
            "admin action"
        ),
        Ok(r) => tracing::debug!(
            target: AUDIT_TARGET,
            key_id = %caller.key_id,
            action,
            filters,
            outcome = %outcome(r),
            "admin read"
        ),
        Err(e) => tracing::warn!(
            target: AUDIT_TARGET,
            key_id = %caller.key_id,
            action,
            filters,
            code = code_name(e.code()),
            error = e.message(),
            "admin action failed"
        ),
    }
}

fn invalid_if_any(v: Violations) -> Result<(), Status> {
    if v.is_empty() {
        Ok(())
    } else {
        Err(AdminError::Invalid(v).into())
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn list_dead_letters(
        &self,
        req: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let caller = self.auth.admin(req.metadata())?;
        let r = req.into_inner();
        let mut v = Violations::default();
        let filter = convert::filter(r.filter, &mut v);
        let filters = format!(
            "{filter:?} page_size={} page_token={:?}",
            r.page_size, r.page_token
        );
        let size = convert::bounded(
            "page_size",
            r.page_size,
            convert::DEFAULT_PAGE_SIZE,
            convert::MAX_PAGE_SIZE,
            &mut v,
        );
        let before = convert::page_token(&r.page_token, &mut v);
        invalid_if_any(v)?;
        let page =
            dispatch_store::dead_letters_admin::list(&self.admin.pool, &filter, before, size)
                .await
                .map_err(AdminError::from)
                .map_err(Status::from);
        audit(&caller, "ListDeadLetters", false, &filters, &page, |p| {
            format!("rows={} total={}", p.rows.len(), p.total)
        });
        let page = page?;
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters: page.rows.iter().map(convert::dead_letter).collect(),
            next_page_token: page
                .next_before_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            total: page.total,
        }))
    }

    async fn get_dead_letter(
        &self,
        req: Request<pb::GetDeadLetterRequest>,
    ) -> Result<Response<pb::DeadLetter>, Status> {
        let caller = self.auth.admin(req.metadata())?;
        let id = req.into_inner().task_id;
        let filters = format!("task_id={id:?}");
        let mut v = Violations::default();
        let id = v.check(
            "task_id",
            TaskId::parse(&id).map_err(|_| format!("{id:?} is not a task id")),
        );
        let Some(id) = id else {
            return Err(AdminError::Invalid(v).into());
        };
        let got = self.admin.dead_letter(id).await.map_err(Status::from);
        audit(&caller, "GetDeadLetter", false, &filters, &got, |_| {
            "found".into()
        });
        let (d, payload) = got?;
        let mut out = convert::dead_letter(&d);
        out.payload = payload.unwrap_or_default();
        Ok(Response::new(out))
    }

    async fn redrive_dead_letters(
        &self,
        req: Request<pb::RedriveDeadLettersRequest>,
    ) -> Result<Response<pb::RedriveDeadLettersResponse>, Status> {
        let caller = self.auth.admin(req.metadata())?;
        let r = req.into_inner();
        let mut v = Violations::default();
        let request = RedriveRequest {
            filter: convert::filter(r.filter, &mut v),
            dry_run: r.dry_run,
            max_count: convert::bounded(
                "max_count",
                r.max_count,
                convert::DEFAULT_REDRIVE,
                convert::MAX_REDRIVE,
                &mut v,
            ),
            rate_per_second: convert::bounded(
                "rate_per_second",
                r.rate_per_second,
                convert::DEFAULT_RATE,
                convert::MAX_REDRIVE,
                &mut v,
            ),
        };
        invalid_if_any(v)?;
        let filters = format!(
            "{:?} dry_run={} max_count={} rate_per_second={}",
            request.filter, request.dry_run, request.max_count, request.rate_per_second
        );
        // Runs to the end even if the caller goes away, so a batch is never cut between
        // its produce and its mark.
        let admin = self.admin.clone();
        let o = tokio::spawn(async move { admin.redrive(request).await })
            .await
            .map_err(|e| AdminError::Internal(e.to_string()))
            .and_then(|r| r)
            .map_err(Status::from);
        audit(&caller, "RedriveDeadLetters", true, &filters, &o, |o| {
            format!(
                "redrive_id={} matched={} redriven={}",
                o.redrive_id, o.matched, o.redriven
            )
        });
        let o = o?;
        Ok(Response::new(pb::RedriveDeadLettersResponse {
            redrive_id: o.redrive_id,
            matched: o.matched,
            redriven: o.redriven,
            dry_run: r.dry_run,
        }))
    }

    async fn purge_dead_letters(
        &self,
        req: Request<pb::PurgeDeadLettersRequest>,
    ) -> Result<Response<pb::PurgeDeadLettersResponse>, Status> {
        let caller = self.auth.admin(req.metadata())?;
        let r = req.into_inner();
        let mut v = Violations::default();
        let filter = convert::filter(r.filter, &mut v);
        invalid_if_any(v)?;
        let filters = format!("{filter:?} dry_run={}", r.dry_run);
        let n = dispatch_store::dead_letters_admin::purge(&self.admin.pool, &filter, r.dry_run)
            .await
            .map_err(AdminError::from)
            .map_err(Status::from);
        audit(&caller, "PurgeDeadLetters", true, &filters, &n, |n| {
            format!("purged={n}")
        });
        let n = n?;
        if !r.dry_run {
            tracing::info!(purged = n, "dead letters purged");
        }
        Ok(Response::new(pb::PurgeDeadLettersResponse {
            purged: n,
            dry_run: r.dry_run,
        }))
    }

    async fn pause_consumption(
        &self,
        req: Request<pb::PauseRequest>,
    ) -> Result<Response<pb::PauseResponse>, Status> {
        self.switch_consumption(req, Switch::Pause).await
    }

    async fn resume_consumption(
        &self,
        req: Request<pb::PauseRequest>,
    ) -> Result<Response<pb::PauseResponse>, Status> {
        self.switch_consumption(req, Switch::Resume).await
    }

    async fn get_stats(
        &self,
        req: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::Stats>, Status> {
        let caller = self.auth.admin(req.metadata())?;
        tracing::debug!(target: AUDIT_TARGET, key_id = %caller.key_id, action = "GetStats", "admin read");
        let a = &self.admin;
        let (stats, dlq, outbox) = tokio::join!(
            a.control.stats(),
            dispatch_store::dead_letters_admin::open_count(&a.pool),
            dispatch_store::outbox::backlog(&a.pool),
        );
        let stats = stats.map_err(|e| AdminError::Kafka(format!("{e:#}")))?;
        let dlq = dlq.map_err(AdminError::from)?;
        let outbox = outbox.map_err(AdminError::from)?;
        Ok(Response::new(convert::stats(stats, dlq, outbox.pending)))
    }

    async fn list_outbox(
        &self,
        req: Request<pb::ListOutboxRequest>,
    ) -> Result<Response<pb::ListOutboxResponse>, Status> {
        let caller = self.auth.admin(req.metadata())?;
        let r = req.into_inner();
        let filters = format!("{r:?}");
        let out = self.admin.list_outbox(r).await.map_err(Status::from);
        audit(&caller, "ListOutbox", false, &filters, &out, |r| {
            format!("rows={}", r.rows.len())
        });
        Ok(Response::new(out?))
    }

    async fn requeue_outbox(
        &self,
        req: Request<pb::RequeueOutboxRequest>,
    ) -> Result<Response<pb::RequeueOutboxResponse>, Status> {
        let caller = self.auth.admin(req.metadata())?;
        let r = req.into_inner();
        let filters = format!("ids={:?} all={} dry_run={}", r.ids, r.all, r.dry_run);
        let out = self.admin.requeue_outbox(r).await.map_err(Status::from);
        audit(&caller, "RequeueOutbox", true, &filters, &out, |r| {
            format!("requeued={} dry_run={}", r.requeued, r.dry_run)
        });
        Ok(Response::new(out?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_store_and_internal_detail_never_reaches_the_caller() {
        let detail = "sasl_ssl://kafka-0.internal:9094/1: SASL authentication error: \
                      Authentication failed for user 'dispatch-admin'";
        for (e, code, message) in [
            (
                AdminError::Kafka(format!("producing to dispatch.retry.1 failed: {detail}")),
                Code::Unavailable,
                status::KAFKA_UNAVAILABLE,
            ),
            (
                AdminError::Store(StoreError::Db(sqlx::Error::Protocol(detail.into()))),
                Code::Unavailable,
                status::STORE_UNAVAILABLE,
            ),
            (
                AdminError::Internal(detail.into()),
                Code::Internal,
                status::INTERNAL,
            ),
        ] {
            let s = Status::from(e);
            assert_eq!((s.code(), s.message()), (code, message));
            assert!(!format!("{s:?}").contains("kafka-0.internal"), "{s:?}");
        }
    }
}
