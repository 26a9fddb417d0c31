//! Command-line options, shared by the binary and by tests that start the
//! proxy in-process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
pub use sidekey_plumbing::logging::LogFormat;

use crate::error::StartupError;

/// A loopback proxy that adds an API datasource's credentials, default
/// headers and query parameters, and signature to every request; one
/// process serves several datasources, each on its own address.
#[derive(Parser, Debug, Clone)]
#[command(name = "sidekey-sidecar", version)]
pub struct Options {
    /// A datasource: an `ApiDatasource` manifest or the operator's resolved spec (YAML).
    /// Repeat it to serve several; the i-th `--listen` serves the i-th `--datasource`.
    #[arg(long, value_name = "FILE", env = "SIDEKEY_DATASOURCE", required = true)]
    pub datasource: Vec<PathBuf>,

    /// Directory holding secrets as `<secret-name>/<key>`, the layout of a Secret volume.
    #[arg(long, env = "SIDEKEY_SECRETS_DIR")]
    pub secrets_dir: PathBuf,

    /// Address for proxied traffic; loopback only (127.0.0.1:PORT or [::1]:PORT).
    /// One per `--datasource`, in the same order.
    #[arg(long, value_name = "ADDR", env = "SIDEKEY_LISTEN", required = true)]
    pub listen: Vec<SocketAddr>,

    /// Address of `/healthz`, `/readyz` and `/metrics` (no credentials pass there).
    /// Without it, no admin server runs.
    #[arg(long, env = "SIDEKEY_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "SIDEKEY_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Log filter, in `tracing` env-filter syntax (`info`, `debug`, `sidekey_sidecar=debug`).
    #[arg(long, default_value = "info", env = "SIDEKEY_LOG")]
    pub log_level: String,

    /// How long to wait for the upstream's response headers, in seconds
    /// (kept to within a tenth of it, a second at most).
    #[arg(long, default_value_t = 60.0, value_parser = positive_seconds)]
    pub upstream_timeout: f64,

    /// How long the upstream's response body may send nothing, in seconds: once
    /// its head is in, a body that stalls this long is cut, the app's response
    /// ends with an error (never as if complete) and the upstream connection
    /// is dropped. Counted from when the app is ready for more and the
    /// upstream has nothing, so a slow app does not count against it.
    #[arg(
        long,
        default_value_t = 60.0,
        value_parser = positive_seconds,
        env = "SIDEKEY_UPSTREAM_BODY_IDLE_TIMEOUT"
    )]
    pub upstream_body_idle_timeout: f64,

    /// How long to wait for a TCP connection and TLS handshake to the upstream, in seconds.
    #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
    pub connect_timeout: f64,

    /// How long a token request may take, in seconds.
    #[arg(long, default_value_t = 30.0, value_parser = positive_seconds)]
    pub token_timeout: f64,

    /// How often the datasource and secret files are checked for changes, in seconds.
    #[arg(long, default_value_t = 2.0, value_parser = positive_seconds)]
    pub reload_interval: f64,

    /// Threads serving proxied requests, each with its own listener on
    /// every `--listen` address (SO_REUSEPORT), event loop and upstream
    /// connections, like nginx's worker processes. One thread saturates
    /// one CPU at about 55,000 requests per second on a 2-CPU test machine;
    /// a second one helps only with a CPU of its own to run on (sharing
    /// CPUs with the app, it measured slower than one). Reloads, token
    /// renewal and the admin server run on the main thread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub worker_threads: u16,

    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, default_value_t = 20.0, value_parser = positive_seconds)]
    pub shutdown_grace: f64,
}

impl Options {
    /// Refuses what the flags' types cannot: no datasource, a `--listen`
    /// count that does not match the `--datasource` count, a proxy address
    /// off loopback, or one address given to two datasources.
    pub fn validate(&self) -> Result<(), StartupError> {
        if self.datasource.is_empty() {
            return Err(StartupError::NoDatasource);
        }
        if self.listen.len() != self.datasource.len() {
            return Err(StartupError::ListenCountMismatch {
                datasources: self.datasource.len(),
                listens: self.listen.len(),
            });
        }
        for (index, addr) in self.listen.iter().enumerate() {
            if !addr.ip().is_loopback() {
                return Err(StartupError::NonLoopbackListen { addr: *addr });
            }
            // Port 0 asks the kernel for a free port: never the same twice.
            if addr.port() != 0 && self.listen[..index].contains(addr) {
                return Err(StartupError::DuplicateListen { addr: *addr });
            }
        }
        Ok(())
    }

    /// Each datasource file with the address that serves it, in flag order.
    pub fn datasources(&self) -> impl Iterator<Item = (&PathBuf, SocketAddr)> {
        self.datasource.iter().zip(self.listen.iter().copied())
    }

    /// How many proxy worker threads to run.
    pub fn workers(&self) -> usize {
        usize::from(self.worker_threads)
    }

    pub fn upstream_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.upstream_timeout)
    }
    pub fn upstream_body_idle_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.upstream_body_idle_timeout)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.connect_timeout)
    }
    pub fn token_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.token_timeout)
    }
    pub fn reload_interval(&self) -> Duration {
        Duration::from_secs_f64(self.reload_interval)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_grace)
    }
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if value.is_finite() && value > 0.0 && value < 1e9 {
        Ok(value)
    } else {
        Err("must be a positive number of seconds".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(listen: &str) -> Options {
        Options::parse_from([
            "sidekey-sidecar",
            "--datasource",
            "ds.yaml",
            "--secrets-dir",
            "secrets",
            "--listen",
            listen,
        ])
    }

    fn parse_args(args: &[&str]) -> Options {
        Options::parse_from(
            ["sidekey-sidecar", "--secrets-dir", "secrets"]
                .iter()
                .chain(args),
        )
    }

    #[test]
    fn loopback_listen_is_accepted() {
        assert!(parse("127.0.0.1:15000").validate().is_ok());
        assert!(parse("[::1]:15000").validate().is_ok());
    }

    #[test]
    fn wildcard_listen_is_refused() {
        let err = parse("0.0.0.0:15000").validate().expect_err("not loopback");
        assert!(err.to_string().contains("not a loopback address"), "{err}");
    }

    #[test]
    fn repeated_flags_pair_up_in_order() {
        let o = parse_args(&[
            "--datasource",
            "payments.yaml",
            "--listen",
            "127.0.0.1:15000",
            "--datasource",
            "crm.yaml",
            "--listen",
            "127.0.0.1:15001",
        ]);
        assert!(o.validate().is_ok());
        let pairs: Vec<_> = o
            .datasources()
            .map(|(p, a)| (p.as_path(), a.port()))
            .collect();
        assert_eq!(
            pairs,
            [
                (std::path::Path::new("payments.yaml"), 15000),
                (std::path::Path::new("crm.yaml"), 15001)
            ]
        );
    }

    #[test]
    fn listen_count_must_match_datasource_count() {
        let o = parse_args(&[
            "--datasource",
            "a.yaml",
            "--datasource",
            "b.yaml",
            "--listen",
            "127.0.0.1:15000",
        ]);
        let err = o.validate().expect_err("one --listen for two datasources");
        assert!(
            matches!(
                err,
                StartupError::ListenCountMismatch {
                    datasources: 2,
                    listens: 1
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn one_address_for_two_datasources_is_refused_but_port_zero_is_not() {
        let twice = |listen: &str| {
            parse_args(&[
                "--datasource",
                "a.yaml",
                "--listen",
                listen,
                "--datasource",
                "b.yaml",
                "--listen",
                listen,
            ])
        };
        let err = twice("127.0.0.1:15000")
            .validate()
            .expect_err("same address");
        assert!(matches!(err, StartupError::DuplicateListen { .. }), "{err}");
        assert!(err.to_string().contains("127.0.0.1:15000"), "{err}");
        assert!(twice("127.0.0.1:0").validate().is_ok());
    }

    #[test]
    fn every_listen_address_must_be_loopback() {
        let o = parse_args(&[
            "--datasource",
            "a.yaml",
            "--listen",
            "127.0.0.1:15000",
            "--datasource",
            "b.yaml",
            "--listen",
            "0.0.0.0:15001",
        ]);
        assert!(matches!(
            o.validate(),
            Err(StartupError::NonLoopbackListen { .. })
        ));
    }
}
