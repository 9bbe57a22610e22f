//! The dispatch-processor binary: settings, telemetry, then the library's [`App`].

use dispatch_processor::{App, Settings};
use dispatch_runtime::{settings, shutdown, telemetry};

/// Consuming, decoding and persisting allocate many small buffers per record; mimalloc costs
/// less CPU per task than glibc's malloc (docs/benchmarks.md has the drain figures).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let file = settings::config_arg(&args);
    let settings: Settings = dispatch_runtime::load(file.as_deref())?;
    if settings::maybe_print(&args, &settings)? {
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
