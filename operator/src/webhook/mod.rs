//! The mutating admission webhook: it injects the sidecar into pods that
//! ask for it.
//!
//! Every replica, leader or standby, serves admissions ([`Webhook::start`]):
//! the decision needs only the datasources (a watch cache) and the serving
//! certificate (read from its Secret). The leader alone writes: it issues
//! and rotates the certificate (managed mode) and keeps the
//! MutatingWebhookConfiguration in shape ([`Webhook::lead`]).

pub mod annotation;
pub mod certs;
pub mod configuration;
pub mod error;
pub mod inject;
pub mod review;
pub mod server;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use sidekey_crds::ApiDatasource;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::{CertificateMode, NativeSidecars, WebhookArgs};
use crate::error::{Chain, StartupError};
use crate::metrics::Metrics;
use certs::{CertConfig, Mode, ServingCert};
use configuration::{Endpoint, WebhookConfig};
use inject::SidecarSettings;

/// How often the leader re-checks the certificate and the configuration
/// when nothing changed them.
const MAINTAIN_INTERVAL: Duration = Duration::from_secs(3600);
/// Pause after a failed round of maintenance.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// A running webhook.
pub struct Webhook {
    pub addr: SocketAddr,
    serving: ServingCert,
    cache: Store<ApiDatasource>,
    certs: CertConfig,
    configuration: WebhookConfig,
}

/// Everything the flags decide, checked before anything starts.
pub struct Settings {
    pub listen: SocketAddr,
    pub certs: CertConfig,
    pub configuration: WebhookConfig,
    pub sidecar: SidecarSettings,
}

impl Settings {
    /// Reads the webhook flags; `None` without `--webhook-listen`.
    /// `operator_namespace` holds the certificate Secret; `watch_namespace`
    /// (the operator's `--namespace`) narrows the pods sent to it.
    pub fn from_args(
        args: &WebhookArgs,
        operator_namespace: &str,
        watch_namespace: Option<&str>,
        native: bool,
    ) -> Result<Option<Self>, StartupError> {
        let Some(listen) = args.webhook_listen else {
            return Ok(None);
        };
        let endpoint = match (&args.webhook_url, &args.webhook_service) {
            (Some(url), None) => Endpoint::url(url),
            (None, Some(service)) => Endpoint::service(service),
            _ => Err(
                "--webhook-listen needs --webhook-url (outside a cluster) or \
                      --webhook-service (in one): where the API server reaches the webhook"
                    .to_owned(),
            ),
        }
        .map_err(StartupError::InvalidFlags)?;
        let (dns_names, ip_addresses) = endpoint.names();
        let mut excluded = vec![operator_namespace.to_owned()];
        if operator_namespace != "kube-system" {
            excluded.push("kube-system".to_owned());
        }
        let quantity = |flag: &str, value: &str| -> Result<Quantity, StartupError> {
            // The API server checks the syntax; refuse only the obviously empty.
            if value.trim().is_empty() {
                return Err(StartupError::InvalidFlags(format!("{flag} is empty")));
            }
            Ok(Quantity(value.trim().to_owned()))
        };
        let resources = ResourceRequirements {
            requests: Some(BTreeMap::from([
                (
                    "cpu".to_owned(),
                    quantity("--sidecar-cpu-request", &args.sidecar_cpu_request)?,
                ),
                (
                    "memory".to_owned(),
                    quantity("--sidecar-memory-request", &args.sidecar_memory_request)?,
                ),
            ])),
            limits: Some(BTreeMap::from([
                (
                    "cpu".to_owned(),
                    quantity("--sidecar-cpu-limit", &args.sidecar_cpu_limit)?,
                ),
                (
                    "memory".to_owned(),
                    quantity("--sidecar-memory-limit", &args.sidecar_memory_limit)?,
                ),
            ])),
            ..Default::default()
        };
        Ok(Some(Self {
            listen,
            certs: CertConfig {
                namespace: operator_namespace.to_owned(),
                secret_name: args.webhook_tls_secret.clone(),
                mode: match args.webhook_certificates {
                    CertificateMode::Managed => Mode::Managed,
                    CertificateMode::Provided => Mode::Provided,
                },
                dns_names,
                ip_addresses,
            },
            configuration: WebhookConfig {
                name: args.webhook_configuration.clone(),
                endpoint,
                timeout_seconds: args.webhook_timeout,
                only_namespace: watch_namespace.map(str::to_owned),
                excluded_namespaces: excluded,
            },
            sidecar: SidecarSettings {
                image: args.sidecar_image.clone(),
                image_pull_policy: Some(args.sidecar_image_pull_policy.clone()),
                resources,
                admin_port: args.sidecar_admin_port,
                log_level: args.sidecar_log_level.clone(),
                native,
            },
        }))
    }
}

/// Whether to inject native sidecars, given the flag and the API server.
pub async fn native_sidecars(client: &Client, flag: NativeSidecars) -> Result<bool, StartupError> {
    match flag {
        NativeSidecars::Always => Ok(true),
        NativeSidecars::Never => Ok(false),
        NativeSidecars::Auto => {
            let info = client
                .apiserver_version()
                .await
                .map_err(StartupError::ServerVersion)?;
            Ok(supports_native_sidecars(&info.major, &info.minor))
        }
    }
}

/// Kubernetes 1.29 turned native sidecars on by default. Minor versions
/// may carry a suffix (`29+` on some providers).
pub fn supports_native_sidecars(major: &str, minor: &str) -> bool {
    let number = |s: &str| -> u32 {
        s.trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .unwrap_or(0)
    };
    let major = number(major);
    major > 1 || (major == 1 && number(minor) >= 29)
}

impl Webhook {
    /// Binds the listener and starts serving: the datasource cache, the
    /// certificate loader and the HTTPS server, until `shutdown`.
    pub async fn start(
        client: Client,
        settings: Settings,
        watch_namespace: Option<&str>,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Result<Self, StartupError> {
        let listener = TcpListener::bind(settings.listen).await.map_err(|source| {
            StartupError::WebhookListen {
                addr: settings.listen,
                source,
            }
        })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StartupError::WebhookListen {
                addr: settings.listen,
                source,
            })?;

        let api: Api<ApiDatasource> = match watch_namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let (cache, writer) = reflector::store();
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            // Only the spec and status matter here.
            .modify(|ds| ds.managed_fields_mut().clear())
            .reflect(writer)
            .applied_objects();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream.take_until(stop.cancelled_owned()));
            while let Some(event) = stream.next().await {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "webhook: watching ApiDatasources failed; retrying");
                }
            }
        });

        let serving = ServingCert::new();
        tokio::spawn(certs::load_loop(
            client.clone(),
            settings.certs.clone(),
            serving.clone(),
            shutdown.clone(),
        ));

        let admission = Arc::new(review::Admission {
            datasources: review::Datasources {
                client,
                cache: cache.clone(),
                timeout: review::lookup_timeout(Duration::from_secs(
                    u64::try_from(settings.configuration.timeout_seconds).unwrap_or(10),
                )),
            },
            settings: settings.sidecar,
            metrics,
        });
        tokio::spawn(server::serve(
            listener,
            serving.server_config(),
            admission,
            shutdown,
        ));
        Ok(Self {
            addr,
            serving,
            cache,
            certs: settings.certs,
            configuration: settings.configuration,
        })
    }

    /// Completes once the webhook can answer: a certificate is loaded and
    /// the datasource cache has its first full list.
    pub async fn ready(&self) {
        let _ = self.cache.wait_until_ready().await;
        while !self.serving.is_loaded() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The leader's share, until `shutdown`: the certificate (managed mode)
    /// and the MutatingWebhookConfiguration, at once, every hour, and
    /// whenever someone else changes or deletes the configuration.
    pub async fn lead(&self, client: Client, shutdown: CancellationToken) {
        let configuration = self.configuration.clone();
        let publish: certs::Publish = {
            let client = client.clone();
            let configuration = configuration.clone();
            Arc::new(move |bundle: Vec<u8>| {
                let client = client.clone();
                let configuration = configuration.clone();
                async move {
                    configuration
                        .apply(&client, Some(&bundle))
                        .await
                        .map_err(|e| certs::CertError::Publish {
                            target: format!("MutatingWebhookConfiguration {}", configuration.name),
                            source: Box::new(e),
                        })
                }
                .boxed()
            })
        };
        let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        let changes = watcher(
            api,
            watcher::Config::default().fields(&format!("metadata.name={}", configuration.name)),
        )
        .default_backoff()
        .touched_objects();
        let mut changes = std::pin::pin!(changes);
        loop {
            // Cancelled mid-write too: a leader that lost the Lease stops
            // at once, as its controller does.
            let maintained = tokio::select! {
                _ = shutdown.cancelled() => return,
                maintained = self.maintain(&client, &publish) => maintained,
            };
            let wait = match maintained {
                Ok(()) => MAINTAIN_INTERVAL,
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), "webhook: keeping the configuration failed; retrying");
                    RETRY_AFTER
                }
            };
            let deadline = tokio::time::sleep(wait);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = deadline => {}
                _ = changes.next() => {}
            }
        }
    }

    async fn maintain(
        &self,
        client: &Client,
        publish: &certs::Publish,
    ) -> Result<(), MaintainError> {
        let bundle = match self.certs.mode {
            Mode::Managed => Some(certs::ensure(client, &self.certs, publish).await?),
            // cert-manager's CA injector owns caBundle.
            Mode::Provided => None,
        };
        self.configuration
            .apply(client, bundle.as_deref())
            .await
            .map_err(|source| MaintainError::Configuration {
                name: self.configuration.name.clone(),
                source,
            })
    }
}

/// Why a round of the leader's webhook maintenance failed; logged, and
/// the round is tried again.
#[derive(Debug, thiserror::Error)]
enum MaintainError {
    #[error("webhook certificate")]
    Certificate(#[from] certs::CertError),

    #[error("applying MutatingWebhookConfiguration {name}")]
    Configuration {
        name: String,
        #[source]
        source: kube::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_sidecars_from_1_29() {
        assert!(!supports_native_sidecars("1", "20"));
        assert!(!supports_native_sidecars("1", "28"));
        assert!(supports_native_sidecars("1", "29"));
        assert!(supports_native_sidecars("1", "31+"));
        assert!(supports_native_sidecars("2", "0"));
        assert!(!supports_native_sidecars("", ""));
    }
}
