//! ListTasks: filters parsed at the boundary into `store::tasks::ListFilter`, keyset pagination on
//! the task id (newest first), always straight from MySQL (lists are not cached).
//!
//! The page token is the URL-safe base64 of the last returned id. Rows inserted while a client
//! pages never shift a later page: the next page is "ids below the cursor", whatever was added.
//!
//! The BASIC view (the default) reads neither payload nor result from MySQL; a FULL page ends
//! early, with a next page token, when it would pass the response size bound.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dispatch_core::{TaskId, TaskState, Tenant, Violations};
use dispatch_proto::v1 as pb;
use dispatch_store::tasks::ListFilter;

use crate::error::ReadError;
use crate::lookup::Reader;

/// Page size when the request says 0.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest page.
pub const MAX_PAGE_SIZE: u32 = 500;

/// Encodes the cursor after `id`.
pub fn page_token(id: TaskId) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

fn parse_token(token: &str) -> Result<TaskId, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| "is not a page token from a previous response".to_string())?;
    TaskId::from_slice(&bytes).map_err(|_| "is not a page token from a previous response".into())
}

/// Whether `view` (a `TaskView`) asks for payload and result; a value that is not a view is
/// named as `view` in `v`.
pub fn full_view(view: i32, v: &mut Violations) -> bool {
    match pb::TaskView::try_from(view) {
        Ok(pb::TaskView::Full) => true,
        Ok(pb::TaskView::Unspecified | pb::TaskView::Basic) => false,
        Err(_) => {
            v.add("view", "is not a task view (BASIC or FULL)");
            false
        }
    }
}

/// Parses a request into a filter for `tenant` (the limit is the page size).
///
/// # Errors
/// INVALID_ARGUMENT naming every bad field.
pub fn parse_request(tenant: &Tenant, r: &pb::ListTasksRequest) -> Result<ListFilter, ReadError> {
    let mut v = Violations::default();
    let limit = match r.page_size {
        0 => DEFAULT_PAGE_SIZE,
        n if n > MAX_PAGE_SIZE => {
            v.add("page_size", format!("must be at most {MAX_PAGE_SIZE}"));
            0
        }
        n => n,
    };
    let mut states = Vec::with_capacity(r.states.len());
    for (i, s) in r.states.iter().enumerate() {
        match pb::TaskState::try_from(*s)
            .ok()
            .and_then(TaskState::from_proto)
        {
            Some(st) => states.push(st),
            None => v.add(format!("states[{i}]"), "is not a task state"),
        }
    }
    let mut time = |field: &str, t: &Option<prost_types::Timestamp>| {
        t.as_ref().and_then(|t| {
            let parsed = dispatch_core::time::from_proto(t);
            if parsed.is_none() {
                v.add(field, "is not a valid timestamp");
            }
            parsed
        })
    };
    let created_after = time("created_after", &r.created_after);
    let created_before = time("created_before", &r.created_before);
    if let (Some(a), Some(b)) = (created_after, created_before)
        && a >= b
    {
        v.add("created_before", "must be after created_after");
    }
    let before_id = if r.page_token.is_empty() {
        None
    } else {
        v.check("page_token", parse_token(&r.page_token))
    };
    let full = full_view(r.view, &mut v);
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    if !v.is_empty() {
        return Err(ReadError::Invalid(v));
    }
    Ok(ListFilter {
        tenant: tenant.as_str().to_owned(),
        business_key: non_empty(&r.business_key),
        states,
        task_type: non_empty(&r.task_type),
        created_after,
        created_before,
        before_id,
        limit,
        full,
    })
}

impl Reader {
    /// ListTasks for a parsed filter, the page cut short (at least one task) when its encoded
    /// size would pass `max_bytes`.
    ///
    /// # Errors
    /// Unavailable when MySQL fails.
    pub async fn list(
        &self,
        mut filter: ListFilter,
        max_bytes: usize,
    ) -> Result<pb::ListTasksResponse, ReadError> {
        let mut page = filter.limit as usize;
        // One extra row tells whether another page exists.
        filter.limit += 1;
        let mut tasks = self.store.list(&filter).await?;
        page = page.min(fitting(&tasks, max_bytes));
        let next_page_token = if tasks.len() > page {
            tasks.truncate(page);
            tasks
                .last()
                .and_then(|t| TaskId::parse(&t.task_id).ok())
                .map(page_token)
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListTasksResponse {
            tasks,
            next_page_token,
        })
    }
}

/// How many of `tasks`, from the first, fit in `max_bytes` encoded (at least one, so a page
/// always makes progress).
pub fn fitting(tasks: &[pb::Task], max_bytes: usize) -> usize {
    use prost::Message;
    let mut total = 0usize;
    for (i, t) in tasks.iter().enumerate() {
        // The field's tag and length prefix: at most 1 + 5 bytes.
        total += t.encoded_len() + 6;
        if total > max_bytes {
            return i.max(1);
        }
    }
    tasks.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> Tenant {
        Tenant::parse("acme").expect("tenant")
    }

    #[test]
    fn defaults_and_tokens() {
        let f = parse_request(&tenant(), &pb::ListTasksRequest::default()).expect("valid");
        assert_eq!(f.limit, DEFAULT_PAGE_SIZE);
        assert!(f.business_key.is_none() && f.before_id.is_none());
        let id = TaskId::new();
        let f = parse_request(
            &tenant(),
            &pb::ListTasksRequest {
                page_token: page_token(id),
                page_size: 500,
                states: vec![pb::TaskState::Running as i32],
                ..Default::default()
            },
        )
        .expect("valid");
        assert_eq!(f.before_id, Some(id));
        assert_eq!(f.limit, 500);
    }

    #[test]
    fn every_state_filters_waiting_included() {
        let f = parse_request(
            &tenant(),
            &pb::ListTasksRequest {
                states: TaskState::ALL.iter().map(|s| s.to_proto() as i32).collect(),
                ..Default::default()
            },
        )
        .expect("valid");
        assert_eq!(f.states, TaskState::ALL);
        assert!(f.states.contains(&TaskState::Waiting));
    }

    #[test]
    fn bad_fields_are_all_named() {
        let Err(ReadError::Invalid(v)) = parse_request(
            &tenant(),
            &pb::ListTasksRequest {
                page_size: 501,
                page_token: "!!".into(),
                states: vec![0, 42],
                ..Default::default()
            },
        ) else {
            panic!("expected violations");
        };
        let fields: Vec<&str> = v.0.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            ["page_size", "states[0]", "states[1]", "page_token"]
        );
    }
}
