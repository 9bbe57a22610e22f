//! The operator CLI, as a library (so tests drive it in-process).
//!
//! - [`Cli`]: arguments (clap); endpoints and keys from flags, `DISPATCH_*` env vars or the
//!   config file ([`config`]), in that order.
//! - [`client`]: connections and keys; gRPC statuses mapped to exit codes.
//! - [`cmd`]: one module per command group: `submit`, `tasks` (get/watch/list/cancel), `dlq`
//!   (list/show/redrive/purge), `ops` (pause/resume/stats), `outbox` (list/requeue), `schedule`
//!   (create/get/list/pause/resume/trigger/delete), `workflow` (submit/get/cancel), `migrate`,
//!   `topics`.
//! - [`output`]: human tables or `--output json`.
//! - [`units`]: numbers with a unit in flags (`30s`, `5m`, `2d`).
//!
//! Keys: task commands send `--api-key` (a tenant key); admin commands (`dlq`, `pause`, `resume`,
//! `stats`, `outbox`) send `--admin-key` (`DISPATCH_ADMIN_KEY`), or `--api-key` when no admin key is set.
//!
//! Exit codes scripts can rely on: 0 ok, 1 other failure, 2 invalid input (also usage errors),
//! 3 not found, 4 authentication failed, 5 service unreachable.

pub mod client;
pub mod cmd;
pub mod config;
pub mod output;
pub mod units;

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
    pub conn: client::ConnArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit a task (flags) or many (--file, JSON array or NDJSON).
    Submit(cmd::submit::SubmitArgs),
    /// Show a task, with its payload and result (GetTask always answers the whole task).
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
    /// List tasks, newest first: without payload and result (the BASIC view) unless --full.
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
    /// Dead letters: list, show, redrive, purge (admin key).
    Dlq(cmd::dlq::Args),
    /// The submit outbox: list rows, requeue dead ones (admin key).
    Outbox(cmd::outbox::Args),
    /// Workflows: tasks with dependencies (submit from a JSON file, get, cancel).
    Workflow(cmd::workflow::Args),
    /// Schedules: periodic tasks by cron expression or interval (create, get, list, pause, resume,
    /// trigger, delete).
    Schedule(cmd::schedule::Args),
    /// Pause consumption of a priority topic or a task type on every processor instance (admin key).
    Pause(cmd::ops::TargetArgs),
    /// Resume a paused priority topic or task type on every processor instance (admin key).
    Resume(cmd::ops::TargetArgs),
    /// The processor group: lag of every partition and its owner, every instance, the pauses in
    /// force (since when), retry depths, DLQ size, outbox backlog; in-flight and breakers of the
    /// answering instance (admin key).
    Stats,
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
    let out = cli.output;
    // Commands that talk to no dispatch service need no endpoints (nor a readable config file).
    let needs_conn = !matches!(
        cli.command,
        Command::Migrate(_) | Command::Topics(_) | Command::Completions { .. }
    );
    let conn = &if needs_conn {
        config::resolve(cli.conn)?
    } else {
        client::Conn::default()
    };
    match cli.command {
        Command::Submit(a) => cmd::submit::submit(a, conn, out).await,
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
        Command::Dlq(a) => cmd::dlq::run(a, conn, out).await,
        Command::Outbox(a) => cmd::outbox::run(a, conn, out).await,
        Command::Schedule(a) => cmd::schedule::run(a, conn, out).await,
        Command::Workflow(a) => cmd::workflow::run(a, conn, out).await,
        Command::Pause(t) => cmd::ops::pause(t, false, conn, out).await,
        Command::Resume(t) => cmd::ops::pause(t, true, conn, out).await,
        Command::Stats => cmd::ops::stats(conn, out).await,
        Command::Migrate(a) => cmd::migrate::run(a, out).await,
        Command::Topics(a) => cmd::topics::run(a, out).await,
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
