//! The dispatch-processor binary: flags, settings, telemetry, then the library's [`App`].
//!
//! `--config PATH` names a TOML file (also `DISPATCH_CONFIG`); `DISPATCH_<SECTION>__<KEY>`
//! variables override it; `--print-config` prints the effective settings (secrets redacted).

use dispatch_processor::{App, Settings};
use dispatch_runtime::cli::ServiceArgs;
use dispatch_runtime::{shutdown, telemetry};

/// Consuming, decoding and persisting allocate many small buffers per record; mimalloc costs
/// less CPU per task than glibc's malloc (docs/benchmarks.md has the drain figures).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = ServiceArgs::parse(
        env!("CARGO_BIN_NAME"),
        env!("CARGO_PKG_VERSION"),
        env!("CARGO_PKG_DESCRIPTION"),
    );
    let settings: Settings = args.load()?;
    if args.print_config(&settings)? {
        return Ok(());
    }
    settings.validate()?;
    let _telemetry = telemetry::init("dispatch-processor", &settings.telemetry)?;
    let app = App::build(settings).await?;
    tracing::info!(
        grpc = %app.local_addr()?,
        admin = %app.admin_addr()?,
        "dispatch-processor started"
    );
    app.run_until_stopped(shutdown::on_signals()).await
}
