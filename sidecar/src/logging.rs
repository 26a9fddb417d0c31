//! Structured logs on stderr, as text or JSON lines.

use tracing_subscriber::EnvFilter;

use crate::options::LogFormat;

/// Installs the global subscriber. `filter` uses env-filter syntax; a bad
/// filter falls back to `info` with a warning rather than losing all logs.
pub fn init(format: LogFormat, filter: &str) {
    let (filter, bad) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e.to_string())),
    };
    // Colours only for a person at a terminal, never in collected logs.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if installed.is_ok()
        && let Some(reason) = bad
    {
        tracing::warn!(%reason, "invalid --log-level, using info");
    }
}
