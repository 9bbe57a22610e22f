//! `dispatch-gateway`: loads settings, starts telemetry, runs the [`App`] until SIGTERM/SIGINT.
//!
//! Usage: `dispatch-gateway [--config PATH] [--print-config]` (or `DISPATCH_CONFIG=PATH`;
//! any key can be overridden with `DISPATCH_<SECTION>__<KEY>`); `--help` lists the flags.

use dispatch_gateway::{App, Settings};
use dispatch_runtime::cli::ServiceArgs;
use dispatch_runtime::{shutdown, telemetry};

/// The submit path allocates a few dozen small buffers per record (envelope, headers, delivery
/// futures, librdkafka's message copies); glibc's malloc took about a third of the gateway's
/// CPU in a SubmitTasks profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: ServiceArgs = dispatch_runtime::service_flags!();
    let Some(settings) = args.settings::<Settings>()? else {
        return Ok(());
    };
    let _telemetry = telemetry::init("gateway", &settings.telemetry)?;
    let app = App::build(settings).await?;
    tracing::info!(
        grpc = %app.local_addr(),
        admin = %app.admin_addr(),
        "gateway listening"
    );
    app.run_until_stopped(shutdown::on_signals()).await
}
