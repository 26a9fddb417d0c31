//! Command-line flags (each also read from an environment variable).

use std::net::{Ipv4Addr, SocketAddr};

use clap::{Parser, ValueEnum};
use sidekey_crds::names::OPERATOR_ADMIN_PORT;

use crate::leader::LeaseConfig;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Reconciles each ApiDatasource into the ConfigMap its sidecars read.
///
/// Runs in a cluster with its service account, or outside one with a
/// kubeconfig (KUBECONFIG, as kubectl does).
#[derive(Clone, Debug, Parser)]
#[command(name = "sidekey-operator", version)]
pub struct Args {
    /// Address of the admin server (/healthz, /readyz, /metrics).
    #[arg(long, env = "SIDEKEY_ADMIN_LISTEN",
          default_value_t = SocketAddr::from((Ipv4Addr::UNSPECIFIED, OPERATOR_ADMIN_PORT)))]
    pub admin_listen: SocketAddr,

    /// Name of the coordination.k8s.io Lease replicas elect a leader on.
    #[arg(long, env = "SIDEKEY_LEASE_NAME", default_value = "sidekey-operator")]
    pub lease_name: String,

    /// Namespace of the Lease; in a cluster, the operator's own.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// This replica's name in the election [default: POD_NAME, else
    /// hostname-pid].
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Seconds a leader's claim lasts without renewal; a standby takes over
    /// at most this long after the leader stops.
    #[arg(long, env = "SIDEKEY_LEASE_DURATION", default_value_t = 15)]
    pub lease_duration: u64,

    /// Seconds before expiry the leader renews its claim; a leader that
    /// has not renewed with half of this left stops leading.
    #[arg(long, env = "SIDEKEY_LEASE_GRACE", default_value_t = 5)]
    pub lease_grace: u64,

    /// Watch only this namespace instead of the whole cluster.
    #[arg(long, env = "SIDEKEY_WATCH_NAMESPACE")]
    pub namespace: Option<String>,

    /// Datasources reconciled at the same time, at most.
    #[arg(long, env = "SIDEKEY_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,

    /// Log line format.
    #[arg(long, env = "SIDEKEY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Args {
    /// This replica's identity in the election and in Events.
    pub fn identity(&self) -> String {
        if let Some(id) = self.identity.as_ref().filter(|s| !s.is_empty()) {
            return id.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "sidekey-operator".to_owned());
        format!("{host}-{}", std::process::id())
    }

    pub fn lease(&self) -> LeaseConfig {
        LeaseConfig {
            name: self.lease_name.clone(),
            namespace: self.lease_namespace.clone(),
            identity: self.identity(),
            duration_seconds: self.lease_duration,
            grace_seconds: self.lease_grace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_with_their_defaults() {
        let args = Args::try_parse_from(["sidekey-operator", "--identity", "me"]).expect("parse");
        assert_eq!(args.admin_listen.port(), OPERATOR_ADMIN_PORT);
        assert_eq!(args.lease().identity, "me");
        assert_eq!(args.log_format, LogFormat::Text);
        assert!(args.lease().check().is_ok());
        let json = Args::try_parse_from(["x", "--log-format", "json", "--namespace", "shop"])
            .expect("parse");
        assert_eq!(json.log_format, LogFormat::Json);
        assert_eq!(json.namespace.as_deref(), Some("shop"));
    }
}
