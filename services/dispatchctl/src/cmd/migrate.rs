//! `dispatchctl migrate up|down|status`: versioned schema migrations.

use clap::Subcommand;
use secrecy::SecretString;
use serde::Serialize;

use crate::{CliError, Format, output};

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// MySQL URL (`mysql://user:pass@host:port/db`).
    #[arg(
        long,
        env = "DISPATCH_DATABASE__URL",
        default_value = "mysql://dispatch:dispatch@127.0.0.1:3306/dispatch",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Give up connecting after this many milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// Migration actions.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Apply every pending migration.
    Up,
    /// Revert the latest migrations.
    Down {
        /// How many to revert.
        #[arg(long, default_value_t = 1)]
        steps: usize,
    },
    /// List migrations and whether each is applied.
    Status,
}

#[derive(Serialize)]
struct Row {
    version: i64,
    description: String,
    applied: bool,
}

/// Runs the command.
///
/// # Errors
/// Unreachable database or a failing script.
pub async fn run(a: Args, format: Format) -> anyhow::Result<()> {
    let settings = dispatch_store::DbSettings {
        url: SecretString::from(a.database_url.clone()),
        max_connections: 2,
        min_connections: 0,
        connect_timeout_ms: a.connect_timeout_ms,
        ..Default::default()
    };
    let pool = dispatch_store::connect(&settings)
        .await
        .map_err(|e| match e {
            e @ sqlx::Error::Configuration(_) => {
                anyhow::Error::new(CliError::Invalid(format!("invalid --database-url: {e}")))
            }
            other => anyhow::Error::new(CliError::Unreachable(format!(
                "cannot reach the database: {other}"
            ))),
        })?;
    match a.action {
        Action::Up => dispatch_store::migrate::up(&pool).await?,
        Action::Down { steps } => dispatch_store::migrate::down(&pool, steps).await?,
        Action::Status => {}
    }
    let rows: Vec<Row> = dispatch_store::migrate::status(&pool)
        .await?
        .into_iter()
        .map(|m| Row {
            version: m.version,
            description: m.description,
            applied: m.applied,
        })
        .collect();
    let table = rows
        .iter()
        .map(|r| {
            vec![
                r.version.to_string(),
                r.description.clone(),
                if r.applied { "applied" } else { "pending" }.into(),
            ]
        })
        .collect();
    output::print(format, &["VERSION", "DESCRIPTION", "STATE"], table, &rows);
    Ok(())
}
