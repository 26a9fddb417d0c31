//! Command-line flags (each also read from an environment variable).

use std::net::{Ipv4Addr, SocketAddr};

use clap::{Parser, ValueEnum};
use sidekey_crds::names::{OPERATOR_ADMIN_PORT, SIDECAR_ADMIN_PORT};

use crate::leader::LeaseConfig;

pub use sidekey_plumbing::logging::LogFormat;

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

    /// Seconds a leader keeps leading without a successful renewal (an
    /// API server that does not answer for that long costs the
    /// leadership); less than the lease duration.
    #[arg(long, env = "SIDEKEY_LEASE_RENEW_DEADLINE", default_value_t = 10)]
    pub lease_renew_deadline: u64,

    /// Seconds between the leader's renewals (and retries of a failed
    /// one); less than the renew deadline.
    #[arg(long, env = "SIDEKEY_LEASE_RETRY_PERIOD", default_value_t = 2)]
    pub lease_retry_period: u64,

    /// Watch only this namespace instead of the whole cluster.
    #[arg(long, env = "SIDEKEY_WATCH_NAMESPACE")]
    pub namespace: Option<String>,

    /// Datasources reconciled at the same time, at most.
    #[arg(long, env = "SIDEKEY_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,

    /// Log line format.
    #[arg(long, env = "SIDEKEY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Serve the authorization endpoint for grantType AuthorizationCode
    /// (plain HTTP, behind an Ingress or kubectl port-forward) on this
    /// address; without it, no one can authorize such a datasource.
    #[arg(long, env = "SIDEKEY_OAUTH_LISTEN")]
    pub oauth_listen: Option<SocketAddr>,

    /// The base URL people open the authorization endpoint at (an Ingress
    /// host, or http://127.0.0.1:PORT for a port-forward); the links in
    /// status.authorizationUrl start with it, and each datasource's
    /// redirectUrl must be <it>/oauth2/callback [default:
    /// http://<--oauth-listen>, 127.0.0.1 for an unspecified address].
    #[arg(long, env = "SIDEKEY_OAUTH_PUBLIC_URL", requires = "oauth_listen")]
    pub oauth_public_url: Option<url::Url>,

    #[command(flatten)]
    pub webhook: WebhookArgs,
}

impl Args {
    /// The authorization endpoint's settings, when it runs.
    pub fn oauth(&self) -> Option<crate::oauth::Settings> {
        let listen = self.oauth_listen?;
        let public_url = self.oauth_public_url.clone().unwrap_or_else(|| {
            let mut shown = listen;
            if shown.ip().is_unspecified() {
                shown.set_ip(Ipv4Addr::LOCALHOST.into());
            }
            // A socket address always makes a valid URL.
            url::Url::parse(&format!("http://{shown}/"))
                .unwrap_or_else(|_| url::Url::parse("http://127.0.0.1/").expect("a constant URL"))
        });
        Some(crate::oauth::Settings { listen, public_url })
    }
}

/// Where the operator's certificates for the webhook come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum CertificateMode {
    /// The operator makes a CA and a serving certificate, keeps them in
    /// the Secret --webhook-tls-secret, rotates them and writes the CA into
    /// the webhook configuration's caBundle.
    #[default]
    Managed,
    /// An installer (cert-manager) writes the Secret and the caBundle; the
    /// operator only reads the Secret.
    Provided,
}

/// When to inject the sidecar as a native sidecar (an init container with
/// `restartPolicy: Always`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum NativeSidecars {
    /// When the API server is Kubernetes 1.29 or later.
    #[default]
    Auto,
    Always,
    Never,
}

/// The admission webhook that injects the sidecar.
#[derive(Clone, Debug, clap::Args)]
pub struct WebhookArgs {
    /// Serve the admission webhook (HTTPS) on this address; without it, no
    /// webhook runs.
    #[arg(long, env = "SIDEKEY_WEBHOOK_LISTEN")]
    pub webhook_listen: Option<SocketAddr>,

    /// Base URL the API server reaches the webhook at, outside a cluster
    /// (https://127.0.0.1:9443).
    #[arg(long, env = "SIDEKEY_WEBHOOK_URL", conflicts_with = "webhook_service")]
    pub webhook_url: Option<String>,

    /// The Service in front of the webhook, in a cluster:
    /// NAMESPACE/NAME[:PORT] (port 443 by default).
    #[arg(long, env = "SIDEKEY_WEBHOOK_SERVICE")]
    pub webhook_service: Option<String>,

    /// Name of the MutatingWebhookConfiguration the operator keeps.
    #[arg(long, env = "SIDEKEY_WEBHOOK_CONFIGURATION", default_value = "sidekey")]
    pub webhook_configuration: String,

    /// Seconds the API server waits for the webhook (1 to 30).
    #[arg(long, env = "SIDEKEY_WEBHOOK_TIMEOUT", default_value_t = 10,
          value_parser = clap::value_parser!(i32).range(1..=30))]
    pub webhook_timeout: i32,

    /// Where the webhook's certificate comes from.
    #[arg(long, env = "SIDEKEY_WEBHOOK_CERTIFICATES", value_enum,
          default_value_t = CertificateMode::Managed)]
    pub webhook_certificates: CertificateMode,

    /// The Secret (in the operator's namespace, --lease-namespace) holding
    /// the webhook's certificate: tls.crt, tls.key, ca.crt.
    #[arg(
        long,
        env = "SIDEKEY_WEBHOOK_TLS_SECRET",
        default_value = "sidekey-webhook-tls"
    )]
    pub webhook_tls_secret: String,

    /// Image of the injected sidecar.
    #[arg(long, env = "SIDEKEY_SIDECAR_IMAGE", default_value = DEFAULT_SIDECAR_IMAGE)]
    pub sidecar_image: String,

    /// imagePullPolicy of the injected sidecar (Always, IfNotPresent, Never).
    #[arg(long, env = "SIDEKEY_SIDECAR_IMAGE_PULL_POLICY", default_value = "IfNotPresent",
          value_parser = ["Always", "IfNotPresent", "Never"])]
    pub sidecar_image_pull_policy: String,

    /// CPU the sidecar requests.
    #[arg(long, env = "SIDEKEY_SIDECAR_CPU_REQUEST", default_value = "10m")]
    pub sidecar_cpu_request: String,

    /// Memory the sidecar requests.
    #[arg(long, env = "SIDEKEY_SIDECAR_MEMORY_REQUEST", default_value = "16Mi")]
    pub sidecar_memory_request: String,

    /// CPU limit of the sidecar.
    #[arg(long, env = "SIDEKEY_SIDECAR_CPU_LIMIT", default_value = "1")]
    pub sidecar_cpu_limit: String,

    /// Memory limit of the sidecar.
    #[arg(long, env = "SIDEKEY_SIDECAR_MEMORY_LIMIT", default_value = "64Mi")]
    pub sidecar_memory_limit: String,

    /// Log level of the sidecar (its --log-level).
    #[arg(long, env = "SIDEKEY_SIDECAR_LOG_LEVEL", default_value = "info")]
    pub sidecar_log_level: String,

    /// The sidecar's admin port (/healthz, /readyz, /metrics) on the pod's
    /// address, where the kubelet probes.
    #[arg(long, env = "SIDEKEY_SIDECAR_ADMIN_PORT", default_value_t = SIDECAR_ADMIN_PORT,
          value_parser = clap::value_parser!(u16).range(1024..))]
    pub sidecar_admin_port: u16,

    /// Inject a native sidecar (Kubernetes 1.29+).
    #[arg(long, env = "SIDEKEY_NATIVE_SIDECARS", value_enum, default_value_t = NativeSidecars::Auto)]
    pub native_sidecars: NativeSidecars,
}

/// The sidecar image of this release.
pub const DEFAULT_SIDECAR_IMAGE: &str = concat!(
    "ghcr.io/sidekey/sidekey-sidecar:",
    env!("CARGO_PKG_VERSION")
);

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
            renew_deadline_seconds: self.lease_renew_deadline,
            retry_period_seconds: self.lease_retry_period,
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
        assert!(json.webhook.webhook_listen.is_none());
        assert_eq!(json.webhook.webhook_configuration, "sidekey");
    }

    #[test]
    fn webhook_url_and_service_exclude_each_other() {
        let both = Args::try_parse_from([
            "x",
            "--webhook-url",
            "https://127.0.0.1:9443",
            "--webhook-service",
            "ns/svc",
        ]);
        assert!(both.is_err());
    }
}
