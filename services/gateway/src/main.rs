//! `dispatch-gateway`: loads settings, starts telemetry, runs the [`App`] until SIGTERM/SIGINT.
//!
//! Usage: `dispatch-gateway [--config PATH] [--print-config]` (or `DISPATCH_CONFIG=PATH`;
//! any key can be overridden with `DISPATCH_<SECTION>__<KEY>`).

use dispatch_gateway::{App, Settings};
use dispatch_runtime::settings::{config_arg, maybe_print};
use dispatch_runtime::{shutdown, telemetry};

/// The submit path allocates a few dozen small buffers per record (envelope, headers, delivery
/// futures, librdkafka's message copies); glibc's malloc took about a third of the gateway's
/// CPU in a SubmitTasks profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let settings: Settings = dispatch_runtime::load(config_arg(&args).as_deref())?;
    if maybe_print(&args, &settings)? {
        return Ok(());
    }
    let _telemetry = telemetry::init("gateway", &settings.telemetry)?;
    let app = App::build(settings).await?;
    tracing::info!(
        grpc = %app.local_addr(),
        admin = %app.admin_addr(),
        "gateway listening"
    );
    app.run_until_stopped(shutdown::on_signals()).await
}
