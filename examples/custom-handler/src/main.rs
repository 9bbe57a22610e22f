//! `invoice-processor`: the dispatch processor with the invoice handler built in.
//!
//! ```sh
//! source deploy/local/env.sh                      # or DISPATCH_CONFIG=processor.toml, DISPATCH_*
//! INVOICE_CONFIG=invoice.toml INVOICE_MS_PER_LINE=5 cargo run -p dispatch-example-custom-handler
//! ```
//!
//! The processor's settings load as the stock processor's (`--config`, `DISPATCH_CONFIG`,
//! `DISPATCH_<SECTION>__<KEY>`; `--print-config`); the handler's from `INVOICE_CONFIG` and
//! `INVOICE_*`. SIGTERM or Ctrl-C stops it gracefully (see `dispatch_processor::App`).

use dispatch_example_custom_handler::{ConfiguredRates, InvoiceSettings, builder};
use dispatch_processor::Settings;
use dispatch_runtime::cli::ServiceArgs;
use dispatch_runtime::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: ServiceArgs = dispatch_runtime::service_flags!();
    let invoice_file = std::env::var_os("INVOICE_CONFIG").map(std::path::PathBuf::from);
    // Loaded first, so that --print-config also fails on bad invoice settings.
    let invoice = InvoiceSettings::load(invoice_file.as_deref())?;
    let Some(settings) = args.settings::<Settings>()? else {
        return Ok(());
    };
    let _telemetry = telemetry::init("invoice-processor", &settings.telemetry)?;
    let rates = ConfiguredRates::new(&invoice);
    let app = builder(settings, invoice, rates).build().await?;
    tracing::info!(admin = %app.admin_addr()?, "invoice-processor started");
    // Until SIGTERM/SIGINT, then: stop fetching, let running invoices finish (bounded by
    // shutdown.drain_timeout_ms), cancel the rest, flush, commit offsets, leave the group.
    app.run_until_stopped(shutdown::on_signals()).await
}
