use std::process::ExitCode;

use clap::Parser;
use sidekey_operator::Args;
use sidekey_operator::error::Chain;
use sidekey_plumbing::logging::{Logs, Output};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Filtered by RUST_LOG, `info` without it.
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    Logs {
        format: args.log_format,
        output: Output::Stdout,
        filter: &filter,
        filter_from: "RUST_LOG",
    }
    .init();
    match sidekey_operator::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %Chain(&e), "sidekey-operator stopped");
            ExitCode::from(e.exit_code())
        }
    }
}
