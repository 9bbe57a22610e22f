//! A processor with a handler of its own: an invoice renderer.
//!
//! dispatch runs the handler for every task of type `invoice.render` (configurable): the task's
//! payload is an [`Invoice`] (JSON), the handler looks up the region's tax rate (a stand-in for
//! a remote service: [`TaxRates`]), "renders" the invoice (a stand-in for slow work: it takes
//! `ms_per_line` per line) and stores the totals as the task's result.
//!
//! What it shows, with the public API of `dispatch-processor`:
//! - **settings**: the handler's own ([`InvoiceSettings`]: defaults < TOML file < `INVOICE_*`
//!   variables) next to the processor's (`DISPATCH_CONFIG`, `DISPATCH_*`), and the type's bounds
//!   in the processor's `[handlers.types.invoice.render]` (`kind = "custom"`, `timeout_ms`,
//!   `concurrency`; [`configure`] sets defaults for them);
//! - **registration**: [`builder`] calls [`AppBuilder::handler`];
//! - **errors**: a malformed invoice or an unknown region is [`HandlerError::Permanent`] (the task
//!   goes to the DLQ at once), a tax service outage is [`HandlerError::Retryable`] (retried with
//!   backoff, then dead-lettered as `exhausted`);
//! - **timeout**: rendering longer than the type's (or the task's own) timeout is stopped by the
//!   processor, which drops the handler's future and fires `ctx.cancel`, and retries the task;
//! - **graceful stop**: on SIGTERM the processor stops fetching and lets running handlers finish
//!   for `shutdown.drain_timeout_ms`, then fires `ctx.cancel`; the handler returns at once then.
//!
//! Over 400 lines because it is a complete example meant to be read top to bottom in one file, and
//! its tests (from near line 270) show how to test a handler; the tax-rate stand-in ([`TaxRates`],
//! [`ConfiguredRates`]) would move to a module of its own first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::Envelope;
use dispatch_processor::settings::TypeSettings;
use dispatch_processor::{AppBuilder, Handler, HandlerContext, HandlerError, Outcome, Settings};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The handler's own settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InvoiceSettings {
    /// The task type the handler runs.
    pub task_type: String,
    /// Rendering time per invoice line (the stand-in for a real renderer).
    pub ms_per_line: u64,
    /// Largest invoice accepted, in lines; more is a permanent error.
    pub max_lines: usize,
    /// Tax rate by region (0.2 is 20 %).
    pub tax_rates: BTreeMap<String, f64>,
    /// Regions whose tax service is down (a simulated outage: a retryable error).
    pub unavailable_regions: BTreeSet<String>,
}

impl Default for InvoiceSettings {
    fn default() -> Self {
        Self {
            task_type: "invoice.render".into(),
            ms_per_line: 2,
            max_lines: 10_000,
            tax_rates: [("eu".to_string(), 0.2), ("us".to_string(), 0.07)].into(),
            unavailable_regions: BTreeSet::new(),
        }
    }
}

impl InvoiceSettings {
    /// Defaults < the TOML `file` < `INVOICE_<KEY>` variables (`INVOICE_TAX_RATES__EU=0.21`).
    ///
    /// # Errors
    /// An unreadable file, an unknown key or a value of the wrong type.
    pub fn load(file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let mut fig = Figment::from(Serialized::defaults(Self::default()));
        if let Some(f) = file {
            fig = fig.merge(Toml::file_exact(f));
        }
        Ok(fig.merge(Env::prefixed("INVOICE_").split("__")).extract()?)
    }
}

/// What an `invoice.render` task carries (its JSON payload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invoice {
    /// Who is billed.
    pub customer: String,
    /// Where (picks the tax rate).
    pub region: String,
    /// What.
    pub lines: Vec<Line>,
}

/// One invoice line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    /// Article.
    pub sku: String,
    /// How many (at least 1).
    pub qty: u32,
    /// Price of one, in cents.
    pub unit_cents: u64,
}

/// What a rendered invoice stores as the task's result (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendered {
    /// Who is billed.
    pub customer: String,
    /// Sum of the lines.
    pub subtotal_cents: u64,
    /// Tax on it (rounded to the cent).
    pub tax_cents: u64,
    /// Subtotal plus tax.
    pub total_cents: u64,
    /// The attempt that rendered it.
    pub attempt: u32,
}

/// The tax service could not answer: a later attempt may succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tax service unavailable: {0}")]
pub struct RatesUnavailable(pub String);

/// Where tax rates come from (a remote service in a real deployment).
#[async_trait]
pub trait TaxRates: Send + Sync + 'static {
    /// The rate of `region`; `None` when the region is unknown.
    ///
    /// # Errors
    /// The service cannot answer now.
    async fn rate(&self, region: &str) -> Result<Option<f64>, RatesUnavailable>;
}

/// Rates from [`InvoiceSettings`], with its simulated outages.
#[derive(Debug, Clone)]
pub struct ConfiguredRates {
    rates: BTreeMap<String, f64>,
    down: BTreeSet<String>,
}

impl ConfiguredRates {
    /// From `s.tax_rates` and `s.unavailable_regions`.
    pub fn new(s: &InvoiceSettings) -> Self {
        Self {
            rates: s.tax_rates.clone(),
            down: s.unavailable_regions.clone(),
        }
    }
}

#[async_trait]
impl TaxRates for ConfiguredRates {
    async fn rate(&self, region: &str) -> Result<Option<f64>, RatesUnavailable> {
        if self.down.contains(region) {
            return Err(RatesUnavailable(format!("region {region} is down")));
        }
        Ok(self.rates.get(region).copied())
    }
}

/// The handler: one instance serves every task of its type, concurrently.
pub struct InvoiceHandler<R> {
    settings: InvoiceSettings,
    rates: R,
}

impl<R: TaxRates> InvoiceHandler<R> {
    /// A handler with `settings`, asking `rates` for tax rates.
    pub fn new(settings: InvoiceSettings, rates: R) -> Self {
        Self { settings, rates }
    }

    /// Checks and totals `invoice`, without the tax (a permanent error when it is invalid).
    fn subtotal(&self, invoice: &Invoice) -> Result<u64, HandlerError> {
        let bad = |why: String| Err(HandlerError::Permanent(format!("invalid invoice: {why}")));
        if invoice.lines.is_empty() {
            return bad("no lines".into());
        }
        if invoice.lines.len() > self.settings.max_lines {
            return bad(format!(
                "{} lines, more than {}",
                invoice.lines.len(),
                self.settings.max_lines
            ));
        }
        let mut sum: u64 = 0;
        for (i, l) in invoice.lines.iter().enumerate() {
            if l.qty == 0 {
                return bad(format!("lines[{i}].qty is 0"));
            }
            let amount = l.unit_cents.checked_mul(u64::from(l.qty));
            match amount.and_then(|a| sum.checked_add(a)) {
                Some(s) => sum = s,
                None => return bad(format!("lines[{i}] overflows the total")),
            }
        }
        Ok(sum)
    }
}

#[async_trait]
impl<R: TaxRates> Handler for InvoiceHandler<R> {
    async fn handle(&self, ctx: HandlerContext, task: &Envelope) -> Result<Outcome, HandlerError> {
        // A payload that does not parse never will: permanent.
        let invoice: Invoice = serde_json::from_slice(&task.payload)
            .map_err(|e| HandlerError::Permanent(format!("invalid invoice: {e}")))?;
        let subtotal = self.subtotal(&invoice)?;
        // An outage may be over at the next attempt: retryable. An unknown region is not.
        let rate = self
            .rates
            .rate(&invoice.region)
            .await
            .map_err(|e| HandlerError::Retryable(e.to_string()))?
            .ok_or_else(|| {
                HandlerError::Permanent(format!("unknown region {:?}", invoice.region))
            })?;
        // The slow part. The processor bounds it by the type's timeout (and the task's own):
        // past it, it drops this future and fires `ctx.cancel`. `ctx.cancel` also fires when the
        // task is cancelled or the processor stops after its drain period: return promptly.
        let work = Duration::from_millis(
            self.settings
                .ms_per_line
                .saturating_mul(invoice.lines.len() as u64),
        );
        tokio::select! {
            () = ctx.cancel.cancelled() => {
                return Err(HandlerError::Retryable("stopped while rendering".into()));
            }
            () = tokio::time::sleep(work) => {}
        }
        let tax_cents = (subtotal as f64 * rate).round() as u64;
        let rendered = Rendered {
            customer: invoice.customer,
            subtotal_cents: subtotal,
            tax_cents,
            total_cents: subtotal.saturating_add(tax_cents),
            attempt: ctx.attempt,
        };
        let result = serde_json::to_vec(&rendered)
            .map_err(|e| HandlerError::Permanent(format!("encoding the result: {e}")))?;
        Ok(Outcome {
            result: Some(result),
        })
    }
}

/// Makes sure the processor knows the type as `custom` (a handler registered in code), with a
/// timeout of 10 s and at most 16 invoices at once unless `[handlers.types.<type>]` says
/// otherwise.
pub fn configure(settings: &mut Settings, invoice: &InvoiceSettings) {
    settings
        .handlers
        .types
        .entry(invoice.task_type.clone())
        .or_insert_with(|| TypeSettings {
            kind: "custom".into(),
            timeout_ms: Some(10_000),
            concurrency: Some(16),
        });
}

/// The processor with the invoice handler registered for `invoice.task_type`.
pub fn builder<R: TaxRates>(
    mut settings: Settings,
    invoice: InvoiceSettings,
    rates: R,
) -> AppBuilder {
    configure(&mut settings, &invoice);
    let task_type = invoice.task_type.clone();
    AppBuilder::new(settings).handler(&task_type, InvoiceHandler::new(invoice, rates))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use dispatch_core::{
        BusinessKey, NewTask, Payload, Priority, RetryPolicy, TaskId, TaskType, Tenant,
    };
    use tokio_util::sync::CancellationToken;

    use super::*;

    fn envelope(payload: &str) -> Envelope {
        Envelope::submit(NewTask {
            task_id: TaskId::new(),
            tenant: Tenant::parse("acme").expect("tenant"),
            business_key: BusinessKey::parse("order-1").expect("key"),
            task_type: TaskType::parse("invoice.render").expect("type"),
            payload: Payload::parse(payload.as_bytes().to_vec()).expect("payload"),
            priority: Priority::Default,
            idempotency_key: None,
            run_at: None,
            deadline: None,
            retry: RetryPolicy {
                max_attempts: 3,
                initial_backoff_ms: 100,
                max_backoff_ms: 1_000,
            },
            timeout_ms: None,
            submitted_at: chrono::Utc::now(),
        })
    }

    fn ctx(cancel: CancellationToken, attempt: u32) -> HandlerContext {
        HandlerContext {
            cancel,
            attempt,
            generation: 0,
            claimed: attempt > 1,
            // Never connected: this handler does not use the database.
            pool: sqlx::mysql::MySqlPoolOptions::new()
                .connect_lazy("mysql://unused@127.0.0.1:9/unused")
                .expect("lazy pool"),
        }
    }

    /// Unavailable for the first `failures` calls, then the configured rates.
    struct Flaky {
        failures: u32,
        calls: AtomicU32,
        inner: ConfiguredRates,
    }

    #[async_trait]
    impl TaxRates for Flaky {
        async fn rate(&self, region: &str) -> Result<Option<f64>, RatesUnavailable> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
                return Err(RatesUnavailable("503 from the tax service".into()));
            }
            self.inner.rate(region).await
        }
    }

    fn handler() -> InvoiceHandler<ConfiguredRates> {
        let s = InvoiceSettings {
            ms_per_line: 0,
            max_lines: 3,
            ..InvoiceSettings::default()
        };
        InvoiceHandler::new(s.clone(), ConfiguredRates::new(&s))
    }

    const GOOD: &str = r#"{"customer":"acme","region":"eu","lines":[{"sku":"a","qty":2,"unit_cents":500},{"sku":"b","qty":1,"unit_cents":250}]}"#;

    #[tokio::test]
    async fn a_valid_invoice_is_rendered_with_its_region_s_tax() {
        let out = handler()
            .handle(ctx(CancellationToken::new(), 2), &envelope(GOOD))
            .await
            .expect("rendered");
        let r: Rendered = serde_json::from_slice(&out.result.expect("result")).expect("json");
        assert_eq!(
            r,
            Rendered {
                customer: "acme".into(),
                subtotal_cents: 1_250,
                tax_cents: 250,
                total_cents: 1_500,
                attempt: 2,
            }
        );
    }

    #[tokio::test]
    async fn bad_invoices_are_permanent_errors() {
        let h = handler();
        for (payload, why) in [
            ("not json", "invalid invoice"),
            (r#"{"customer":"a","region":"eu","lines":[]}"#, "no lines"),
            (
                r#"{"customer":"a","region":"eu","lines":[{"sku":"a","qty":0,"unit_cents":1}]}"#,
                "lines[0].qty is 0",
            ),
            (
                r#"{"customer":"a","region":"mars","lines":[{"sku":"a","qty":1,"unit_cents":1}]}"#,
                "unknown region \"mars\"",
            ),
            (
                r#"{"customer":"a","region":"eu","lines":[{"sku":"a","qty":1,"unit_cents":1},{"sku":"a","qty":1,"unit_cents":1},{"sku":"a","qty":1,"unit_cents":1},{"sku":"a","qty":1,"unit_cents":1}]}"#,
                "4 lines, more than 3",
            ),
        ] {
            match h
                .handle(ctx(CancellationToken::new(), 1), &envelope(payload))
                .await
            {
                Err(HandlerError::Permanent(e)) => assert!(e.contains(why), "{payload}: {e}"),
                other => panic!("{payload}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn an_outage_is_retryable_and_the_next_attempt_succeeds() {
        let s = InvoiceSettings {
            ms_per_line: 0,
            ..InvoiceSettings::default()
        };
        let h = InvoiceHandler::new(
            s.clone(),
            Flaky {
                failures: 1,
                calls: AtomicU32::new(0),
                inner: ConfiguredRates::new(&s),
            },
        );
        let task = envelope(GOOD);
        match h.handle(ctx(CancellationToken::new(), 1), &task).await {
            Err(HandlerError::Retryable(e)) => assert!(e.contains("503"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(
            h.handle(ctx(CancellationToken::new(), 2), &task)
                .await
                .is_ok()
        );

        // A configured outage too.
        let down = InvoiceSettings {
            unavailable_regions: ["eu".to_string()].into(),
            ..s
        };
        let h = InvoiceHandler::new(down.clone(), ConfiguredRates::new(&down));
        assert!(matches!(
            h.handle(ctx(CancellationToken::new(), 1), &task).await,
            Err(HandlerError::Retryable(_))
        ));
    }

    #[tokio::test]
    async fn a_cancelled_render_returns_at_once() {
        let s = InvoiceSettings {
            ms_per_line: 60_000,
            ..InvoiceSettings::default()
        };
        let h = InvoiceHandler::new(s.clone(), ConfiguredRates::new(&s));
        let cancel = CancellationToken::new();
        let task = envelope(GOOD);
        let run = h.handle(ctx(cancel.clone(), 1), &task);
        let fire = async {
            tokio::task::yield_now().await;
            cancel.cancel();
        };
        let started = std::time::Instant::now();
        let (r, ()) = tokio::join!(run, fire);
        assert!(matches!(r, Err(HandlerError::Retryable(ref e)) if e.contains("stopped")));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "did not wait for the render"
        );
    }

    #[test]
    fn settings_come_from_defaults_a_file_and_the_environment() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("invoice.toml");
        std::fs::write(&file, "ms_per_line = 7\n[tax_rates]\nch = 0.081\n").expect("write");
        let s = InvoiceSettings::load(Some(&file)).expect("load");
        assert_eq!(s.ms_per_line, 7);
        assert_eq!(s.tax_rates.get("ch"), Some(&0.081));
        assert_eq!(s.tax_rates.get("eu"), Some(&0.2), "defaults stay");
        std::fs::write(&file, "ms_per_lines = 7\n").expect("write");
        let err = InvoiceSettings::load(Some(&file)).expect_err("unknown key");
        assert!(err.to_string().contains("ms_per_lines"), "{err}");

        let mut p = Settings::default();
        configure(&mut p, &s);
        let t = p.handlers.types.get("invoice.render").expect("configured");
        assert_eq!(t.kind, "custom");
        assert_eq!(t.timeout_ms, Some(10_000));
        p.validate().expect("valid processor settings");
    }
}
