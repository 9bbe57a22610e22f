//! The dispatch-processor binary: flags, settings, telemetry, then the library's [`App`].
//!
//! `--config PATH` names a TOML file (also `DISPATCH_CONFIG`); `DISPATCH_<SECTION>__<KEY>`
//! variables override it; `--print-config` prints the effective settings (secrets redacted);
//! `--print-task-types` prints the task types the handler registry has a handler for with those
//! settings (the built-ins plus `[handlers.types.<type>]`), without connecting to anything.

use dispatch_processor::handler::Registry;
use dispatch_processor::{App, Settings};
use dispatch_runtime::cli::ServiceArgs;
use dispatch_runtime::{shutdown, telemetry};

/// Consuming, decoding and persisting allocate many small buffers per record; mimalloc costs
/// less CPU per task than glibc's malloc (docs/benchmarks.md has the drain figures).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The processor's flags: the shared ones plus its own.
#[derive(Debug, clap::Args)]
struct Flags {
    #[command(flatten)]
    service: ServiceArgs,
    /// Print the task types the handler registry has a handler for with the effective settings
    /// (built-ins plus configured types) and exit: one a line, or a JSON array for tools.
    #[arg(long, value_name = "FORMAT", value_enum, num_args = 0..=1, require_equals = true,
          default_missing_value = "text", conflicts_with = "print_config")]
    print_task_types: Option<ListFormat>,
}

/// The format of `--print-task-types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ListFormat {
    /// One task type a line.
    Text,
    /// A JSON array of strings.
    Json,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags: Flags = dispatch_runtime::service_flags!();
    let Some(settings) = flags.service.settings::<Settings>()? else {
        return Ok(());
    };
    settings.validate()?;
    if let Some(format) = flags.print_task_types {
        let types = Registry::stock_task_types(&settings.handlers)?;
        match format {
            ListFormat::Text => types.iter().for_each(|t| println!("{t}")),
            ListFormat::Json => println!("{}", serde_json::to_string(&types)?),
        }
        return Ok(());
    }
    let _telemetry = telemetry::init("dispatch-processor", &settings.telemetry)?;
    let app = App::build(settings).await?;
    tracing::info!(
        grpc = %app.local_addr()?,
        admin = %app.admin_addr()?,
        "dispatch-processor started"
    );
    app.run_until_stopped(shutdown::on_signals()).await
}
