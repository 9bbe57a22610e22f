//! `dispatch-loadgen`: open-loop load against dispatch (or the no-op baseline server).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = dispatch_loadtest::Cli::parse();
    dispatch_loadtest::run(cli).await
}
