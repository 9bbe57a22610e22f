//! The `dispatch-reader` binary: settings → telemetry → [`App`] → serve until SIGTERM/SIGINT.
//!
//! `--config PATH` names a TOML file (also `DISPATCH_CONFIG`); `DISPATCH_<SECTION>__<KEY>`
//! variables override it; `--print-config` prints the effective settings (secrets redacted).

use dispatch_reader::{App, Settings};
use dispatch_runtime::cli::ServiceArgs;
use dispatch_runtime::{shutdown, telemetry};

/// glibc's malloc and free were about 12% of the reader's samples with GetTask saturated (every
/// call allocates its request, headers and a copy of the task to encode); mimalloc, as in the
/// gateway and the processor (docs/benchmarks.md, "Submit to visible at 1k/s").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: ServiceArgs = dispatch_runtime::service_flags!();
    let Some(settings) = args.settings::<Settings>()? else {
        return Ok(());
    };
    settings.validate()?;
    let _telemetry = telemetry::init("reader", &settings.telemetry)?;
    let app = match App::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "reader failed to start");
            return Err(e);
        }
    };
    tracing::info!(
        grpc = %app.local_addr()?,
        admin = %app.admin_addr()?,
        "reader started"
    );
    app.run_until_stopped(shutdown::on_signals()).await
}
