//! Handlers: what runs a task, by task type.
//!
//! A [`Handler`] returns an [`Outcome`] or a [`HandlerError`] that says whether a retry may help.
//! The [`Registry`] maps task types to handlers with a per-type timeout and concurrency limit;
//! built-ins are [`noop`](NoopHandler), [`simulate`](simulate::SimulateHandler) and
//! [`http`](http::HttpHandler). Embedders register their own through
//! [`AppBuilder::handler`](crate::AppBuilder::handler).

pub mod http;
pub mod simulate;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::Envelope;
use sqlx::MySqlPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::settings::HandlersSettings;

/// A successful run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Stored as the task's result (at most 64 KiB is kept).
    pub result: Option<Vec<u8>>,
}

/// A failed run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// A later attempt may succeed (timeouts, 5xx, 429, a dependency down).
    #[error("retryable: {0}")]
    Retryable(String),
    /// No attempt will succeed (bad input, 4xx): the task goes to the DLQ now.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// What a handler gets besides the task.
#[derive(Debug, Clone)]
pub struct HandlerContext {
    /// Fires when the task is cancelled, the handler times out or the processor stops: return soon.
    pub cancel: CancellationToken,
    /// 1-based attempt being run.
    pub attempt: u32,
    /// Redrive generation.
    pub generation: u32,
    /// The processor's MySQL pool (for ledgers and other side tables).
    pub pool: MySqlPool,
}

/// Runs tasks of one or more types.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt of `task`.
    ///
    /// # Errors
    /// [`HandlerError::Retryable`] or [`HandlerError::Permanent`].
    async fn handle(&self, ctx: HandlerContext, task: &Envelope) -> Result<Outcome, HandlerError>;
}

/// The built-in `noop` handler: succeeds at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopHandler;

#[async_trait]
impl Handler for NoopHandler {
    async fn handle(&self, _: HandlerContext, _: &Envelope) -> Result<Outcome, HandlerError> {
        Ok(Outcome::default())
    }
}

/// A handler with its bounds.
#[derive(Clone)]
pub struct Registered {
    /// The handler.
    pub handler: Arc<dyn Handler>,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Concurrency bound of the type, if any.
    pub limit: Option<Arc<Semaphore>>,
}

/// Task type -> handler.
#[derive(Clone)]
pub struct Registry {
    by_type: HashMap<String, Registered>,
    hosts: http::Hosts,
}

impl Registry {
    /// Builds the registry from settings plus handlers registered in code (which win).
    ///
    /// # Errors
    /// An `http` handler whose client cannot be built.
    pub fn build(
        s: &HandlersSettings,
        custom: Vec<(String, Arc<dyn Handler>)>,
    ) -> anyhow::Result<Self> {
        let mut kinds: HashMap<String, String> = HashMap::from([
            ("noop".to_string(), "noop".to_string()),
            ("simulate".to_string(), "simulate".to_string()),
        ]);
        for (ty, t) in &s.types {
            kinds.insert(ty.clone(), t.kind.clone());
        }
        let hosts = http::Hosts::new(s.http_host.clone());
        let mut handlers: HashMap<String, Arc<dyn Handler>> = HashMap::new();
        for (ty, kind) in kinds {
            let h: Arc<dyn Handler> = match kind.as_str() {
                "noop" => Arc::new(NoopHandler),
                "simulate" => Arc::new(simulate::SimulateHandler::default()),
                "http" => match s.http.get(&ty) {
                    Some(ep) => Arc::new(http::HttpHandler::new(ep, hosts.clone())?),
                    None => anyhow::bail!("handlers.http.{ty}: an http handler needs a url"),
                },
                // `custom` (or anything else validated away): must come from code.
                _ => continue,
            };
            handlers.insert(ty, h);
        }
        handlers.extend(custom);
        let by_type = handlers
            .into_iter()
            .map(|(ty, handler)| {
                let t = s.types.get(&ty);
                let timeout = Duration::from_millis(
                    t.and_then(|t| t.timeout_ms).unwrap_or(s.default_timeout_ms),
                );
                let concurrency = t
                    .and_then(|t| t.concurrency)
                    .unwrap_or(s.default_concurrency);
                let limit = (concurrency > 0).then(|| Arc::new(Semaphore::new(concurrency)));
                (
                    ty,
                    Registered {
                        handler,
                        timeout,
                        limit,
                    },
                )
            })
            .collect();
        Ok(Self { by_type, hosts })
    }

    /// The handler of `task_type`.
    pub fn get(&self, task_type: &str) -> Option<&Registered> {
        self.by_type.get(task_type)
    }

    /// The per-host state of `http` handlers.
    pub fn hosts(&self) -> &http::Hosts {
        &self.hosts
    }

    /// Registered task types, sorted.
    pub fn task_types(&self) -> Vec<String> {
        let mut v: Vec<String> = self.by_type.keys().cloned().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::TypeSettings;

    #[test]
    fn defaults_custom_and_configured_types() {
        let mut s = HandlersSettings::default();
        s.types.insert(
            "email.send".into(),
            TypeSettings {
                kind: "noop".into(),
                timeout_ms: Some(50),
                concurrency: Some(2),
            },
        );
        let r =
            Registry::build(&s, vec![("my.type".into(), Arc::new(NoopHandler))]).expect("registry");
        assert_eq!(
            r.task_types(),
            vec!["email.send", "my.type", "noop", "simulate"]
        );
        let e = r.get("email.send").expect("configured");
        assert_eq!(e.timeout, Duration::from_millis(50));
        assert_eq!(e.limit.as_ref().map(|l| l.available_permits()), Some(2));
        assert!(r.get("noop").expect("noop").limit.is_none());
        assert!(r.get("unknown").is_none());
    }
}
