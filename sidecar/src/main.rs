//! `sidekey-sidecar`: parses flags, sets up logging and the runtime, runs.
//! It exits with [`StartupError::exit_code`] when it cannot start.

use std::process::ExitCode;

use clap::Parser;
use sidekey_plumbing::logging::{Logs, Output};
use sidekey_plumbing::signal;
use sidekey_sidecar::error::chain;
use sidekey_sidecar::{Options, StartupError};

fn main() -> ExitCode {
    let options = Options::parse();
    Logs {
        format: options.log_format,
        output: Output::Stderr,
        filter: &options.log_level,
        filter_from: "--log-level",
    }
    .init();
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = e.code(), reason = %chain(&e), "sidekey-sidecar stopped");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(options: &Options) -> Result<(), StartupError> {
    // The main thread's runtime runs reloads and the admin server; proxied
    // requests get worker threads of their own (see the lib).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartupError::Runtime)?;
    runtime.block_on(sidekey_sidecar::run(options, signal::shutdown()))
}
