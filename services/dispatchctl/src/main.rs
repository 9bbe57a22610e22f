//! `dispatchctl`: the operator CLI. Thin: parse arguments, run one command, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = dispatchctl::Cli::parse();
    match dispatchctl::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(dispatchctl::exit_code(&e))
        }
    }
}
