//! The operator CLI, as a library (so tests drive it in-process).
//!
//! - [`Cli`]: arguments (clap); endpoints and keys from flags or `DISPATCH_*` env vars.
//! - [`cmd`]: one module per command group (`migrate`, `topics`, ...).
//! - [`output`]: human tables or `--output json`.
//!
//! Exit codes scripts can rely on: 0 ok, 1 other failure, 2 invalid input, 3 not found,
//! 4 authentication failed, 5 service unreachable.

pub mod client;
pub mod cmd;
pub mod output;

use clap::{Parser, Subcommand, ValueEnum};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    /// Human-readable tables.
    #[default]
    Table,
    /// JSON, one document per command.
    Json,
}

/// dispatchctl: operate a dispatch deployment.
#[derive(Debug, Parser)]
#[command(name = "dispatchctl", version, about)]
pub struct Cli {
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Format::Table, global = true)]
    pub output: Format,
    /// Endpoints and credentials.
    #[command(flatten)]
    pub conn: client::Conn,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit a task (flags) or many (--file, JSON array or NDJSON).
    Submit(cmd::tasks::SubmitArgs),
    /// Show a task.
    Get {
        /// Task id.
        task_id: String,
        /// Read-your-writes token (the version returned by submit).
        #[arg(long, default_value_t = 0)]
        min_version: u64,
    },
    /// Follow a task's state changes until it finishes.
    Watch {
        /// Task id.
        task_id: String,
    },
    /// List tasks.
    List(cmd::tasks::ListArgs),
    /// Cancel a task.
    Cancel {
        /// Task id.
        task_id: String,
        /// The task's business key (lets the cancel route before the task is stored).
        #[arg(long)]
        key: Option<String>,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Database migrations.
    Migrate(cmd::migrate::Args),
    /// Kafka topics.
    Topics(cmd::topics::Args),
    /// Print shell completions.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// A failure with a meaning scripts can rely on (see the crate docs for codes).
#[derive(Debug, thiserror_like::Error)]
pub enum CliError {
    /// Bad input from the user.
    #[error("{0}")]
    Invalid(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Credentials refused.
    #[error("{0}")]
    Auth(String),
    /// A service could not be reached.
    #[error("{0}")]
    Unreachable(String),
}

mod thiserror_like {
    pub use thiserror::Error;
}

/// The exit code for an error.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<CliError>() {
        Some(CliError::Invalid(_)) => 2,
        Some(CliError::NotFound(_)) => 3,
        Some(CliError::Auth(_)) => 4,
        Some(CliError::Unreachable(_)) => 5,
        None => 1,
    }
}

/// Runs a parsed command.
///
/// # Errors
/// Any failure, as a [`CliError`] where the cause is known.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let (conn, out) = (&cli.conn, cli.output);
    match cli.command {
        Command::Submit(a) => cmd::tasks::submit(a, conn, out).await,
        Command::Get {
            task_id,
            min_version,
        } => cmd::tasks::get(task_id, min_version, conn, out).await,
        Command::Watch { task_id } => cmd::tasks::watch(task_id, conn, out).await,
        Command::List(a) => cmd::tasks::list(a, conn, out).await,
        Command::Cancel {
            task_id,
            key,
            reason,
        } => cmd::tasks::cancel(task_id, key, reason, conn, out).await,
        Command::Migrate(a) => cmd::migrate::run(a, cli.output).await,
        Command::Topics(a) => cmd::topics::run(a, cli.output).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "dispatchctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}
