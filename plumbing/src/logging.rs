//! Structured logs, as text or JSON lines, on stdout or stderr.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// How log lines look (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Where log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Stdout,
    /// Leaves stdout to whatever else the process writes there.
    Stderr,
}

/// A log set-up: [`Logs::init`] installs it.
#[derive(Clone, Copy, Debug)]
pub struct Logs<'a> {
    pub format: LogFormat,
    pub output: Output,
    /// What is logged, in `tracing` env-filter syntax (`info`, `debug`,
    /// `sidekey_sidecar=debug`).
    pub filter: &'a str,
    /// Where `filter` came from (`--log-level`, `RUST_LOG`): the warning
    /// about an invalid one names it.
    pub filter_from: &'a str,
}

impl Logs<'_> {
    /// Installs the global subscriber. An invalid filter falls back to
    /// `info` with a warning rather than losing all logs. A second call
    /// (tests) keeps the first subscriber.
    pub fn init(self) {
        let (filter, bad) = match EnvFilter::try_new(self.filter) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new("info"), Some(e.to_string())),
        };
        // Colours only for a person at a terminal, never in collected logs.
        let (writer, ansi) = match self.output {
            Output::Stdout => (
                BoxMakeWriter::new(std::io::stdout),
                std::io::IsTerminal::is_terminal(&std::io::stdout()),
            ),
            Output::Stderr => (
                BoxMakeWriter::new(std::io::stderr),
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
            ),
        };
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(ansi)
            .with_writer(writer);
        let installed = match self.format {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder.json().flatten_event(true).try_init(),
        };
        if installed.is_ok()
            && let Some(reason) = bad
        {
            tracing::warn!(%reason, "invalid {}, using info", self.filter_from);
        }
    }
}
