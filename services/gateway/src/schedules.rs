//! `dispatch.v1.ScheduleService` over tonic: a tenant's schedules, stored in MySQL
//! (`dispatch_store::schedules`) and fired by the processors' schedule loop.
//!
//! Same authentication and per-tenant rate limit as TaskService. Every request is validated in
//! full before anything is written (INVALID_ARGUMENT with a BadRequest naming each field), and
//! each write is one statement or one transaction: nothing partial is stored. A name the tenant
//! already uses is ALREADY_EXISTS naming `schedule.name`. Another tenant's schedule is NOT_FOUND,
//! like an unknown one. TriggerSchedule writes its fire's task row in the same way the loop does
//! (a SCHEDULED row due now, published by the processors' scheduler).
//!
//! Over 400 lines because every RPC validates its request in full before one statement or
//! transaction, and the tests start near line 549; the request parsing and reply building
//! ([`parse_spec`], [`to_proto`]) would move to a `convert` module first, as in the processor's
//! admin.

use std::collections::HashMap;
use std::sync::Arc;

use dispatch_core::schedule::{self, Catchup, Overlap, ScheduleId, Timing};
use dispatch_core::validate::SpecLimits;
use dispatch_core::{Tenant, Violations, time};
use dispatch_proto::v1 as pb;
use dispatch_proto::v1::schedule_service_server::{ScheduleService, ScheduleServiceServer};
use dispatch_runtime::server::auth::Authenticator;
use dispatch_runtime::server::status;
use dispatch_store::StoreError;
use dispatch_store::schedules::{self as store, Created, Fired, ScheduleRow};
use prost::Message as _;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::GatewayError;
use crate::limits::Limits;

/// The service's methods.
pub const METHODS: [&str; 7] = [
    "CreateSchedule",
    "GetSchedule",
    "ListSchedules",
    "PauseSchedule",
    "ResumeSchedule",
    "TriggerSchedule",
    "DeleteSchedule",
];

/// `google.rpc.ErrorInfo.reason` of a name the tenant already uses.
pub const NAME_TAKEN_REASON: &str = "SCHEDULE_NAME_TAKEN";
/// `google.rpc.ErrorInfo.domain` of the service's errors.
pub const ERROR_DOMAIN: &str = "dispatch.v1.ScheduleService";

/// Largest page of ListSchedules.
const PAGE_MAX: u32 = 1_000;
const PAGE_DEFAULT: u32 = 100;

/// The ScheduleService implementation.
#[derive(Clone)]
pub struct ScheduleApi {
    pool: sqlx::MySqlPool,
    auth: Arc<Authenticator>,
    limits: Arc<Limits>,
    spec_limits: SpecLimits,
}

impl ScheduleApi {
    /// Over the gateway's pool, authenticator, rate limits and task limits.
    pub fn new(
        pool: sqlx::MySqlPool,
        auth: Arc<Authenticator>,
        limits: Arc<Limits>,
        spec_limits: SpecLimits,
    ) -> Self {
        Self {
            pool,
            auth,
            limits,
            spec_limits,
        }
    }

    /// The caller's tenant, within its rate limit.
    async fn caller(&self, md: &tonic::metadata::MetadataMap) -> Result<Tenant, Status> {
        let tenant = self.auth.tenant(md)?;
        self.limits
            .check(&tenant, 1)
            .await
            .map_err(|l| Status::from(GatewayError::Limited(l)))?;
        Ok(tenant)
    }
}

/// The ScheduleService server over the gateway's `pool` and `settings` (its own authenticator
/// and per-tenant rate limits, configured as TaskService's).
///
/// # Errors
/// Invalid `[auth]` settings.
pub async fn server(
    pool: &sqlx::MySqlPool,
    settings: &crate::Settings,
) -> anyhow::Result<ScheduleServiceServer<ScheduleApi>> {
    let auth = Authenticator::from_settings(&settings.auth)?;
    let limits = Limits::new(&settings.limits, Some(&settings.redis)).await;
    let api = ScheduleApi::new(
        pool.clone(),
        Arc::new(auth),
        Arc::new(limits),
        settings.limits.spec_limits(),
    );
    Ok(ScheduleServiceServer::new(api).max_decoding_message_size(settings.grpc.max_request_bytes))
}

/// A store failure, through the runtime's one rule: the detail is logged, the caller reads
/// UNAVAILABLE (INTERNAL for a row that does not decode) with a generic message.
fn db(e: impl Into<StoreError>) -> Status {
    status::store_error(&e.into())
}

/// A stored schedule that no longer parses: INTERNAL with a generic message; the detail is logged.
fn corrupt(detail: &dyn std::fmt::Display) -> Status {
    status::hidden(Code::Internal, status::STORE_CORRUPT, detail)
}

fn not_found(name: &str) -> Status {
    Status::not_found(format!("schedule {name:?} not found"))
}

/// Checks a `name` field of a request.
fn check_name(field: &str, name: &str) -> Result<(), Status> {
    let mut v = Violations::default();
    v.check(field, schedule::check_name(name));
    if v.is_empty() {
        Ok(())
    } else {
        Err(v.to_status())
    }
}

/// ALREADY_EXISTS naming `schedule.name`.
fn name_taken(name: &str) -> Status {
    let mut details = ErrorDetails::with_error_info(
        NAME_TAKEN_REASON,
        ERROR_DOMAIN,
        HashMap::from([("name".to_owned(), name.to_owned())]),
    );
    details.add_bad_request_violation("schedule.name", "is already used by another schedule");
    Status::with_error_details(
        Code::AlreadyExists,
        format!("a schedule named {name:?} exists already; pick another name or delete it first"),
        details,
    )
}

/// Validates a ScheduleSpec in full into a row to store (first fire after `now`).
///
/// # Errors
/// Every field violation found.
pub fn parse_spec(
    tenant: &Tenant,
    spec: Option<pb::ScheduleSpec>,
    now: chrono::DateTime<chrono::Utc>,
    limits: &SpecLimits,
) -> Result<ScheduleRow, Violations> {
    let mut v = Violations::default();
    let Some(spec) = spec else {
        v.add("schedule", "is required");
        return Err(v);
    };
    v.check("schedule.name", schedule::check_name(&spec.name));
    let time_zone = v.check(
        "schedule.time_zone",
        schedule::parse_time_zone(&spec.time_zone).map(|_| ()),
    );
    let (cron_expr, interval_ms, timing) = match &spec.timing {
        None => {
            v.add("schedule.cron", "one of cron and interval_ms is required");
            (None, None, None)
        }
        Some(pb::schedule_spec::Timing::Cron(c)) => {
            let parsed = v.check("schedule.cron", schedule::parse_cron(c));
            let timing = match (parsed, time_zone) {
                (Some(_), Some(())) => Timing::cron(c, &spec.time_zone).ok(),
                _ => None,
            };
            (Some(c.trim().to_owned()), None, timing)
        }
        Some(pb::schedule_spec::Timing::IntervalMs(ms)) => {
            let t = v.check("schedule.interval_ms", Timing::every(*ms, now));
            (None, Some(*ms), t)
        }
    };
    let overlap = match pb::OverlapPolicy::try_from(spec.overlap_policy) {
        Ok(pb::OverlapPolicy::Unspecified | pb::OverlapPolicy::Skip) => Some(Overlap::Skip),
        Ok(pb::OverlapPolicy::Allow) => Some(Overlap::Allow),
        Err(_) => {
            v.add(
                "schedule.overlap_policy",
                format!("unknown value {}", spec.overlap_policy),
            );
            None
        }
    };
    let limit = if spec.catchup_limit == 0 {
        schedule::CATCHUP_LIMIT_DEFAULT
    } else {
        spec.catchup_limit
    };
    if limit > schedule::CATCHUP_LIMIT_MAX {
        v.add(
            "schedule.catchup_limit",
            format!(
                "is {limit}; must be at most {}",
                schedule::CATCHUP_LIMIT_MAX
            ),
        );
    }
    let catchup = match pb::CatchupPolicy::try_from(spec.catchup_policy) {
        Ok(pb::CatchupPolicy::Unspecified | pb::CatchupPolicy::One) => Some(Catchup::One),
        Ok(pb::CatchupPolicy::All) => Some(Catchup::All(limit)),
        Ok(pb::CatchupPolicy::Skip) => Some(Catchup::Skip),
        Err(_) => {
            v.add(
                "schedule.catchup_policy",
                format!("unknown value {}", spec.catchup_policy),
            );
            None
        }
    };
    if spec.jitter_ms > schedule::JITTER_MAX_MS {
        v.add(
            "schedule.jitter_ms",
            format!(
                "is {} ms; must be at most {} ms (1 h)",
                spec.jitter_ms,
                schedule::JITTER_MAX_MS
            ),
        );
    }
    match &spec.template {
        None => v.add("schedule.template", "is required"),
        Some(t) => {
            if let Err(more) = schedule::check_template("schedule.template", tenant, t, now, limits)
            {
                v.0.extend(more.0);
            }
        }
    }
    let (Some(timing), Some(overlap), Some(catchup), true) =
        (timing, overlap, catchup, v.is_empty())
    else {
        return Err(v);
    };
    let template = spec.template.unwrap_or_default().encode_to_vec();
    Ok(ScheduleRow {
        schedule_id: ScheduleId::new(),
        tenant: tenant.as_str().to_owned(),
        name: spec.name,
        cron_expr,
        interval_ms,
        anchor_at: now,
        time_zone: if spec.time_zone.is_empty() {
            "UTC".into()
        } else {
            spec.time_zone
        },
        template,
        overlap: overlap.as_str().into(),
        catchup: catchup.as_str().into(),
        catchup_limit: limit,
        jitter_ms: spec.jitter_ms,
        paused: spec.paused,
        next_fire_at: timing.next_after(now),
        last_fire_at: None,
        last_task_id: None,
        fires: 0,
        overlap_skipped: 0,
        missed: 0,
        version: 1,
        created_at: now,
        updated_at: now,
    })
}

/// A stored schedule as the API shows it.
pub fn to_proto(s: &ScheduleRow) -> pb::Schedule {
    let template = pb::TaskSpec::decode(s.template.as_slice()).ok();
    let timing = match (&s.cron_expr, s.interval_ms) {
        (Some(c), _) => Some(pb::schedule_spec::Timing::Cron(c.clone())),
        (None, Some(ms)) => Some(pb::schedule_spec::Timing::IntervalMs(ms)),
        (None, None) => None,
    };
    let overlap = match Overlap::parse(&s.overlap) {
        Ok(Overlap::Skip) => pb::OverlapPolicy::Skip,
        Ok(Overlap::Allow) => pb::OverlapPolicy::Allow,
        Err(_) => pb::OverlapPolicy::Unspecified,
    };
    let catchup = match Catchup::parse(&s.catchup, s.catchup_limit) {
        Ok(Catchup::One) => pb::CatchupPolicy::One,
        Ok(Catchup::All(_)) => pb::CatchupPolicy::All,
        Ok(Catchup::Skip) => pb::CatchupPolicy::Skip,
        Err(_) => pb::CatchupPolicy::Unspecified,
    };
    pb::Schedule {
        schedule_id: s.schedule_id.to_string(),
        spec: Some(pb::ScheduleSpec {
            name: s.name.clone(),
            timing,
            time_zone: s.time_zone.clone(),
            template,
            overlap_policy: overlap as i32,
            catchup_policy: catchup as i32,
            catchup_limit: s.catchup_limit,
            jitter_ms: s.jitter_ms,
            paused: s.paused,
        }),
        next_fire_at: s.next_fire_at.map(time::to_proto),
        last_fire_at: s.last_fire_at.map(time::to_proto),
        last_task_id: s.last_task_id.map(|t| t.to_string()).unwrap_or_default(),
        fires: s.fires,
        overlap_skipped: s.overlap_skipped,
        missed: s.missed,
        created_at: Some(time::to_proto(s.created_at)),
        updated_at: Some(time::to_proto(s.updated_at)),
        version: s.version,
    }
}

impl ScheduleApi {
    /// Pauses or resumes (a resume fires from the first time after now).
    async fn set_paused(
        &self,
        tenant: &Tenant,
        name: &str,
        paused: bool,
    ) -> Result<pb::Schedule, Status> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let s = store::lock(&mut tx, tenant.as_str(), name)
            .await
            .map_err(db)?
            .ok_or_else(|| not_found(name))?;
        let now = store::db_now(&mut *tx).await.map_err(db)?;
        let next = if paused || !s.paused {
            s.next_fire_at
        } else {
            timing_of(&s)?.next_after(now)
        };
        store::set_paused(&mut tx, s.schedule_id, paused, next, now)
            .await
            .map_err(db)?;
        let s = store::get(&mut *tx, tenant.as_str(), name)
            .await
            .map_err(db)?
            .ok_or_else(|| not_found(name))?;
        tx.commit().await.map_err(db)?;
        tracing::info!(tenant = %tenant, schedule = name, paused, "schedule paused state set");
        Ok(to_proto(&s))
    }
}

/// The timing of a stored row (INTERNAL when it no longer parses).
fn timing_of(s: &ScheduleRow) -> Result<Timing, Status> {
    let t = match (&s.cron_expr, s.interval_ms) {
        (Some(c), None) => Timing::cron(c, &s.time_zone),
        (None, Some(ms)) => Timing::every(ms, s.anchor_at),
        _ => Err("exactly one of cron_expr and interval_ms must be set".into()),
    };
    t.map_err(|e| corrupt(&format!("stored schedule {:?} does not parse: {e}", s.name)))
}

#[tonic::async_trait]
impl ScheduleService for ScheduleApi {
    async fn create_schedule(
        &self,
        request: Request<pb::CreateScheduleRequest>,
    ) -> Result<Response<pb::CreateScheduleResponse>, Status> {
        (async move {
            let tenant = self.caller(request.metadata()).await?;
            let now = store::db_now(&self.pool).await.map_err(db)?;
            let row = parse_spec(&tenant, request.into_inner().schedule, now, &self.spec_limits)
                .map_err(|v| v.to_status())?;
            match store::insert(&self.pool, &row).await.map_err(db)? {
                Created::Created => {
                    tracing::info!(tenant = %tenant, schedule = %row.name, id = %row.schedule_id, "schedule created");
                    Ok(pb::CreateScheduleResponse {
                        schedule: Some(to_proto(&row)),
                    })
                }
                Created::NameTaken => Err(name_taken(&row.name)),
            }
        })
        .await
        .map(Response::new)
    }

    async fn get_schedule(
        &self,
        request: Request<pb::GetScheduleRequest>,
    ) -> Result<Response<pb::GetScheduleResponse>, Status> {
        (async move {
            let tenant = self.caller(request.metadata()).await?;
            let name = request.into_inner().name;
            check_name("name", &name)?;
            let s = store::get(&self.pool, tenant.as_str(), &name)
                .await
                .map_err(db)?
                .ok_or_else(|| not_found(&name))?;
            Ok(pb::GetScheduleResponse {
                schedule: Some(to_proto(&s)),
            })
        })
        .await
        .map(Response::new)
    }

    async fn list_schedules(
        &self,
        request: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        (async move {
            let tenant = self.caller(request.metadata()).await?;
            let req = request.into_inner();
            let mut v = Violations::default();
            if req.page_size > PAGE_MAX {
                v.add(
                    "page_size",
                    format!("is {}; must be at most {PAGE_MAX}", req.page_size),
                );
            }
            if !req.page_token.is_empty() && schedule::check_name(&req.page_token).is_err() {
                v.add("page_token", "is not a token from a previous page");
            }
            if !v.is_empty() {
                return Err(v.to_status());
            }
            let size = if req.page_size == 0 {
                PAGE_DEFAULT
            } else {
                req.page_size
            };
            let rows = store::list(&self.pool, tenant.as_str(), &req.page_token, size + 1)
                .await
                .map_err(db)?;
            let more = rows.len() > size as usize;
            let page: Vec<_> = rows.into_iter().take(size as usize).collect();
            let next_page_token = if more {
                page.last().map(|s| s.name.clone()).unwrap_or_default()
            } else {
                String::new()
            };
            Ok(pb::ListSchedulesResponse {
                schedules: page.iter().map(to_proto).collect(),
                next_page_token,
            })
        })
        .await
        .map(Response::new)
    }

    async fn pause_schedule(
        &self,
        request: Request<pb::PauseScheduleRequest>,
    ) -> Result<Response<pb::PauseScheduleResponse>, Status> {
        (async move {
            let tenant = self.caller(request.metadata()).await?;
            let name = request.into_inner().name;
            check_name("name", &name)?;
            let s = self.set_paused(&tenant, &name, true).await?;
            Ok(pb::PauseScheduleResponse { schedule: Some(s) })
        })
        .await
        .map(Response::new)
    }

    async fn resume_schedule(
        &self,
        request: Request<pb::ResumeScheduleRequest>,
    ) -> Result<Response<pb::ResumeScheduleResponse>, Status> {
        (async move {
            let tenant = self.caller(request.metadata()).await?;
            let name = request.into_inner().name;
            check_name("name", &name)?;
            let s = self.set_paused(&tenant, &name, false).await?;
            Ok(pb::ResumeScheduleResponse { schedule: Some(s) })
        })
        .await
        .map(Response::new)
    }

    async fn trigger_schedule(
        &self,
        request: Request<pb::TriggerScheduleRequest>,
    ) -> Result<Response<pb::TriggerScheduleResponse>, Status> {
        (async move {
            let tenant = self.caller(request.metadata()).await?;
            let name = request.into_inner().name;
            check_name("name", &name)?;
            let mut tx = self.pool.begin().await.map_err(db)?;
            let s = store::lock(&mut tx, tenant.as_str(), &name)
                .await
                .map_err(db)?
                .ok_or_else(|| not_found(&name))?;
            let now = store::db_now(&mut *tx).await.map_err(db)?;
            let task = schedule::fire_task(&s.template, &tenant, &s.schedule_id, now, true, 0, now)
                .map_err(|e| {
                    corrupt(&format!("stored template of {name:?} does not parse: {e}"))
                })?;
            let id = task.task_id;
            let fired = store::insert_fire(&mut tx, &store::scheduled_write(&task, now))
                .await
                .map_err(db)?;
            if fired == Fired::Inserted {
                let pass = store::Pass {
                    next_fire_at: s.next_fire_at,
                    last_fire: Some((now, id)),
                    fired: 1,
                    ..store::Pass::default()
                };
                store::record_pass(&mut tx, s.schedule_id, &pass, now)
                    .await
                    .map_err(db)?;
            }
            tx.commit().await.map_err(db)?;
            tracing::info!(tenant = %tenant, schedule = %name, task_id = %id, "schedule triggered");
            Ok(pb::TriggerScheduleResponse {
                task_id: id.to_string(),
                fire_at: Some(time::to_proto(now)),
            })
        })
        .await
        .map(Response::new)
    }

    async fn delete_schedule(
        &self,
        request: Request<pb::DeleteScheduleRequest>,
    ) -> Result<Response<pb::DeleteScheduleResponse>, Status> {
        (async move {
            let tenant = self.caller(request.metadata()).await?;
            let name = request.into_inner().name;
            check_name("name", &name)?;
            if !store::delete(&self.pool, tenant.as_str(), &name)
                .await
                .map_err(db)?
            {
                return Err(not_found(&name));
            }
            tracing::info!(tenant = %tenant, schedule = %name, "schedule deleted");
            Ok(pb::DeleteScheduleResponse {})
        })
        .await
        .map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> Tenant {
        Tenant::parse("acme").expect("tenant")
    }

    fn spec() -> pb::ScheduleSpec {
        pb::ScheduleSpec {
            name: "nightly".into(),
            timing: Some(pb::schedule_spec::Timing::Cron("0 0 3 * * *".into())),
            time_zone: "Europe/Berlin".into(),
            template: Some(pb::TaskSpec {
                business_key: "report".into(),
                task_type: "report.build".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn fields(s: pb::ScheduleSpec) -> Vec<String> {
        parse_spec(
            &tenant(),
            Some(s),
            chrono::Utc::now(),
            &SpecLimits::default(),
        )
        .expect_err("invalid")
        .0
        .into_iter()
        .map(|v| v.field)
        .collect()
    }

    #[test]
    fn a_valid_spec_gets_its_first_fire_time_and_defaults() {
        let now = chrono::Utc::now();
        let row = parse_spec(&tenant(), Some(spec()), now, &SpecLimits::default()).expect("valid");
        assert!(row.next_fire_at.is_some_and(|n| n > now));
        assert_eq!(row.overlap, "skip");
        assert_eq!(row.catchup, "one");
        assert_eq!(row.catchup_limit, schedule::CATCHUP_LIMIT_DEFAULT);
        let back = to_proto(&row);
        assert_eq!(back.spec.as_ref().map(|s| s.name.as_str()), Some("nightly"));
    }

    #[test]
    fn store_and_stored_row_detail_never_reaches_the_caller() {
        let detail = "error returned from database: 1045 (28000): Access denied for user \
                    'dispatch'@'10.0.0.7' (using password: YES)";
        for (s, code, message) in [
            (
                db(sqlx::Error::Protocol(detail.into())),
                Code::Unavailable,
                status::STORE_UNAVAILABLE,
            ),
            (
                db(StoreError::Corrupt(format!("schedules.template: {detail}"))),
                Code::Internal,
                status::STORE_CORRUPT,
            ),
            (
                corrupt(&format!(
                    "stored schedule \"nightly\" does not parse: {detail}"
                )),
                Code::Internal,
                status::STORE_CORRUPT,
            ),
        ] {
            assert_eq!((s.code(), s.message()), (code, message));
            assert!(!format!("{s:?}").contains("Access denied"), "{s:?}");
        }
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut s = spec();
        s.name = "no spaces allowed".into();
        s.timing = Some(pb::schedule_spec::Timing::Cron("61 * * * * *".into()));
        s.time_zone = "Mars/Olympus".into();
        s.catchup_limit = 101;
        s.jitter_ms = 3_600_001;
        s.overlap_policy = 9;
        s.template = Some(pb::TaskSpec {
            run_at: Some(time::to_proto(chrono::Utc::now())),
            ..Default::default()
        });
        assert_eq!(
            fields(s),
            [
                "schedule.name",
                "schedule.time_zone",
                "schedule.cron",
                "schedule.overlap_policy",
                "schedule.catchup_limit",
                "schedule.jitter_ms",
                "schedule.template.run_at",
                "schedule.template.business_key",
                "schedule.template.task_type",
            ]
        );
        let mut s = spec();
        s.timing = Some(pb::schedule_spec::Timing::IntervalMs(10));
        assert_eq!(fields(s), ["schedule.interval_ms"]);
        let mut s = spec();
        s.timing = None;
        s.template = None;
        assert_eq!(fields(s), ["schedule.cron", "schedule.template"]);
    }
}
