//! The `dispatch-reader` binary: settings → telemetry → [`App`] → serve until SIGTERM/SIGINT.
//!
//! `--config PATH` names a TOML file (also `DISPATCH_CONFIG`); `DISPATCH_<SECTION>__<KEY>`
//! variables override it; `--print-config` prints the effective settings (secrets redacted).

use dispatch_reader::{App, Settings};
use dispatch_runtime::settings::{config_arg, maybe_print};
use dispatch_runtime::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let file = config_arg(&args);
    let settings: Settings = dispatch_runtime::load(file.as_deref())?;
    if maybe_print(&args, &settings)? {
        return Ok(());
    }
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
