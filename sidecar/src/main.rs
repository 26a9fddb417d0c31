//! `sidekey-sidecar`: parses flags, sets up logging and the runtime, runs.

use std::process::ExitCode;

use clap::Parser;
use sidekey_plumbing::logging::{Logs, Output};
use sidekey_plumbing::signal;
use sidekey_sidecar::Options;

fn main() -> ExitCode {
    let options = Options::parse();
    Logs {
        format: options.log_format,
        output: Output::Stderr,
        filter: &options.log_level,
        filter_from: "--log-level",
    }
    .init();
    // The main thread's runtime runs reloads and the admin server; proxied
    // requests get worker threads of their own (see the lib).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sidekey_sidecar::run(&options, signal::shutdown())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = e.code(), reason = %e, "sidekey-sidecar stopped");
            ExitCode::FAILURE
        }
    }
}
