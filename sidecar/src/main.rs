//! `sidekey-sidecar`: parses flags, sets up logging and the runtime, runs.

use std::process::ExitCode;

use clap::Parser;
use sidekey_sidecar::{Options, logging};

fn main() -> ExitCode {
    let options = Options::parse();
    logging::init(options.log_format, &options.log_level);
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
    match runtime.block_on(sidekey_sidecar::run(&options, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = e.code(), reason = %e, "sidekey-sidecar stopped");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM (what Kubernetes sends) or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
