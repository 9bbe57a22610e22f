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
///
/// ```
/// use dispatch_processor::Outcome;
///
/// let done = Outcome { result: Some(br#"{"rows":42}"#.to_vec()) };
/// assert_eq!(Outcome::default().result, None); // success without a result
/// # let _ = done;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Stored as the task's result: at most 65,535 bytes are kept (the `result` column), a
    /// longer one is cut.
    pub result: Option<Vec<u8>>,
}

/// A failed run: the variant decides what happens to the task.
///
/// A [`Retryable`](HandlerError::Retryable) failure is retried with the task's backoff until its
/// `max_attempts` are used up, then dead-lettered (error class `exhausted`); a
/// [`Permanent`](HandlerError::Permanent) one is dead-lettered at once (error class
/// `permanent`). A timeout (the type's `timeout_ms` or the task's own) counts as retryable, and
/// so does a panic. The text is stored as the task's `last_error` and the attempt's error.
///
/// ```
/// use dispatch_processor::HandlerError;
///
/// fn classify(http_status: u16) -> HandlerError {
///     match http_status {
///         429 | 500..=599 => HandlerError::Retryable(format!("upstream answered {http_status}")),
///         _ => HandlerError::Permanent(format!("upstream refused: {http_status}")),
///     }
/// }
/// assert!(matches!(classify(503), HandlerError::Retryable(_)));
/// assert_eq!(classify(404).to_string(), "permanent: upstream refused: 404");
/// ```
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
///
/// Built by the processor for every attempt; a test builds one itself to call a handler
/// directly (a lazy pool never connects unless the handler uses it):
///
/// ```
/// use dispatch_processor::HandlerContext;
/// use tokio_util::sync::CancellationToken;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let ctx = HandlerContext {
///     cancel: CancellationToken::new(),
///     attempt: 1,
///     generation: 0,
///     claimed: false,
///     pool: sqlx::mysql::MySqlPoolOptions::new()
///         .connect_lazy("mysql://unused@127.0.0.1/unused")
///         .expect("a lazy pool"),
/// };
/// assert!(!ctx.cancel.is_cancelled());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct HandlerContext {
    /// Fires when the task is cancelled, the handler times out or the processor stops: return soon.
    pub cancel: CancellationToken,
    /// 1-based attempt being run.
    pub attempt: u32,
    /// Redrive generation.
    pub generation: u32,
    /// This attempt's RUNNING was committed before the handler started (awaited, and not fenced
    /// out: no other instance had finished or cancelled the task). Always so for retries and
    /// redrives; a first attempt's RUNNING is written beside its run (false) unless the
    /// processor may have stood still since it read the task. A cancel committed by another
    /// instance after the claim does not stop the handler (its outcome is dropped).
    pub claimed: bool,
    /// The processor's MySQL pool (for ledgers and other side tables).
    pub pool: MySqlPool,
}

impl HandlerContext {
    /// The finished dependencies of `task` when it is a workflow node (empty otherwise), by
    /// name, with their states and results: what a node reads of the work it waited for.
    ///
    /// A node runs only after every dependency finished, so each is SUCCEEDED, or DEAD or
    /// CANCELLED behind an edge whose `on_failure` is RUN. One query on the pool; call it once.
    ///
    /// ```no_run
    /// # use dispatch_processor::{HandlerContext, HandlerError};
    /// # async fn f(ctx: &HandlerContext, task: &dispatch_core::Envelope) -> Result<(), HandlerError> {
    /// let deps = ctx
    ///     .dependencies(task)
    ///     .await
    ///     .map_err(|e| HandlerError::Retryable(format!("reading dependencies: {e}")))?;
    /// for d in &deps {
    ///     println!("{} ended {}: {:?}", d.name, d.state, d.result);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// Database errors (worth a retry).
    pub async fn dependencies(
        &self,
        task: &Envelope,
    ) -> Result<Vec<DependencyResult>, dispatch_store::StoreError> {
        if task.workflow_id.is_none() {
            return Ok(Vec::new());
        }
        dispatch_store::workflows::dependency_results(&self.pool, task.task_id).await
    }
}

pub use dispatch_store::workflows::DependencyResult;

/// Runs tasks of one or more types: the extension point for work of your own.
///
/// Implement it (with [`async_trait`](https://docs.rs/async-trait)), register the handler for a
/// task type with [`AppBuilder::handler`](crate::AppBuilder::handler), and give the type its
/// bounds in the settings (`[handlers.types.<type>]` with `kind = "custom"`, `timeout_ms`,
/// `concurrency`). One handler value serves every task of its types, concurrently (`&self`).
///
/// What the processor guarantees around [`handle`](Handler::handle): tasks of one business key
/// run one at a time, in submission order; a task whose terminal state is committed never runs
/// again; but an attempt may run more than once (a crash before its outcome is stored re-runs it),
/// so side effects should be idempotent (key them by `task.task_id` and `ctx.attempt`). At the
/// timeout the processor drops the handler's future and fires `ctx.cancel`; work the handler
/// spawned must watch that token. At shutdown running handlers get `shutdown.drain_timeout_ms`
/// to finish, then `ctx.cancel` fires.
///
/// A complete program with settings, errors, a timeout, graceful stop and tests against the real
/// stack is `examples/custom-handler` in the repository.
///
/// ```no_run
/// use std::time::Duration;
///
/// use async_trait::async_trait;
/// use dispatch_core::Envelope;
/// use dispatch_processor::settings::TypeSettings;
/// use dispatch_processor::{App, Handler, HandlerContext, HandlerError, Outcome, Settings};
///
/// /// Uppercases its payload, slowly.
/// struct Shout;
///
/// #[async_trait]
/// impl Handler for Shout {
///     async fn handle(&self, ctx: HandlerContext, task: &Envelope) -> Result<Outcome, HandlerError> {
///         let text = std::str::from_utf8(&task.payload)
///             .map_err(|e| HandlerError::Permanent(format!("payload is not text: {e}")))?;
///         tokio::select! {
///             // Cancelled, timed out or stopping: give up this attempt.
///             () = ctx.cancel.cancelled() => Err(HandlerError::Retryable("stopped".into())),
///             () = tokio::time::sleep(Duration::from_millis(100)) => Ok(Outcome {
///                 result: Some(text.to_uppercase().into_bytes()),
///             }),
///         }
///     }
/// }
///
/// #[tokio::main]
/// async fn main() -> anyhow::Result<()> {
///     // DISPATCH_CONFIG and DISPATCH_<SECTION>__<KEY>, as the stock processor.
///     let mut settings: Settings = dispatch_runtime::settings::load(None)?;
///     settings.handlers.types.insert(
///         "text.shout".into(),
///         TypeSettings { kind: "custom".into(), timeout_ms: Some(2_000), concurrency: Some(8) },
///     );
///     let app = App::builder(settings).handler("text.shout", Shout).build().await?;
///     // Until SIGTERM/SIGINT, then the graceful stop (see App::run_until_stopped).
///     app.run_until_stopped(dispatch_runtime::shutdown::on_signals()).await
/// }
/// ```
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt of `task` (`task.payload` holds the submitted bytes; `ctx.attempt`
    /// counts from 1).
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
    /// The type's handler metrics, resolved once.
    pub series: Arc<crate::metrics::TaskTypeSeries>,
}

/// Task type -> handler.
#[derive(Clone)]
pub struct Registry {
    by_type: foldhash::HashMap<String, Registered>,
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
                let series = Arc::new(crate::metrics::TaskTypeSeries::of(&ty));
                (
                    ty,
                    Registered {
                        handler,
                        timeout,
                        limit,
                        series,
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

    /// The task types the stock binary has a handler for with settings `s`, sorted: the registry
    /// [`Registry::build`] makes from them with no handlers registered in code (what
    /// `dispatch-processor --print-task-types` prints).
    ///
    /// # Errors
    /// As [`Registry::build`].
    pub fn stock_task_types(s: &HandlersSettings) -> anyhow::Result<Vec<String>> {
        Ok(Self::build(s, Vec::new())?.task_types())
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

    #[test]
    fn stock_task_types_are_the_built_ins_plus_configured_types_with_a_built_in_kind() {
        let mut s = HandlersSettings::default();
        assert_eq!(
            Registry::stock_task_types(&s).expect("types"),
            vec!["noop", "simulate"]
        );
        for (ty, kind) in [
            ("email.send", "http"),
            ("report", "simulate"),
            ("mine", "custom"),
        ] {
            s.types.insert(
                ty.into(),
                TypeSettings {
                    kind: kind.into(),
                    timeout_ms: None,
                    concurrency: None,
                },
            );
        }
        s.http.insert(
            "email.send".into(),
            serde_json::from_str(r#"{"url": "http://127.0.0.1:9/send"}"#).expect("endpoint"),
        );
        // `custom` needs a handler registered in code, which the stock binary has not.
        assert_eq!(
            Registry::stock_task_types(&s).expect("types"),
            vec!["email.send", "noop", "report", "simulate"]
        );
    }
}
