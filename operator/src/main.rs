use std::process::ExitCode;

use clap::Parser;
use sidekey_operator::{Args, logging};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    logging::init(args.log_format);
    match sidekey_operator::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "sidekey-operator stopped");
            ExitCode::FAILURE
        }
    }
}
