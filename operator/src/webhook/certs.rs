//! The webhook's TLS certificate: issuing and rotating it (managed mode,
//! leader only), and serving whatever the Secret holds (every replica).
//!
//! The Secret (`kubernetes.io/tls`, labelled
//! `app.kubernetes.io/managed-by: sidekey`) holds `tls.crt` and `tls.key`
//! (the serving certificate and its key), `ca.crt` (the CA bundle the API
//! server must trust, newest CA first) and, in managed mode only, `ca.key`
//! (the newest CA's key). In provided mode an installer such as
//! cert-manager writes the same layout and the operator only reads it.
//!
//! Managed mode keeps one invariant: a serving certificate is only ever
//! written signed by a CA that is already in the stored `ca.crt`, and that
//! bundle is published to the webhook configuration right before. So a new
//! CA takes two writes: first it joins the bundle (the serving certificate
//! is left as it is, still signed by a CA the API server trusts), then,
//! after the bundle is published, the serving certificate is reissued by
//! it. Every bundle published is one some version of the Secret holds, so
//! two replicas racing publish the same bundle and never leave the API
//! server trusting a CA that did not win.
//!
//! What to do is decided by [`plan`], a pure function of the Secret, the
//! configuration and the time, so the policy is tested without a cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use futures::future::BoxFuture;
use futures::{StreamExt, future};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sidekey_crds::names::{FIELD_MANAGER, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

const DAY_SECONDS: u64 = 24 * 60 * 60;

/// How long a CA made by the operator is valid: 10 years.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * DAY_SECONDS);
/// A new CA is made when the newest has less than this left: 2 years. The
/// old one stays in the bundle until it expires, so serving certificates it
/// signed (1 year at most) keep being trusted until they are replaced.
pub const CA_RENEW_BEFORE: Duration = Duration::from_secs(2 * 365 * DAY_SECONDS);
/// How long a serving certificate is valid: 1 year.
pub const SERVING_VALIDITY: Duration = Duration::from_secs(365 * DAY_SECONDS);
/// A serving certificate is renewed when less than 1/3 of its lifetime is
/// left (about 4 months), so hourly rounds have months to succeed.
pub const SERVING_RENEW_DIVISOR: u32 = 3;
/// Certificates start this long before they are made, so an API server or
/// replica whose clock is somewhat behind still accepts a fresh one.
pub const BACKDATE: Duration = Duration::from_secs(60 * 60);
/// `rotate_loop` retries a failed round after this, doubling...
pub const RETRY_MIN: Duration = Duration::from_secs(5);
/// ...up to this (and never later than the next regular round).
pub const RETRY_MAX: Duration = Duration::from_secs(5 * 60);
/// Rounds of read, decide, write that `ensure` makes before giving up: a
/// fresh issue takes three, each lost race one more.
const MAX_ROUNDS: usize = 10;

/// The Secret's type and keys.
pub const SECRET_TYPE: &str = "kubernetes.io/tls";
pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const CA_CRT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
/// ALPN protocols the webhook server offers.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Subject of the serving certificate (clients check the SANs, not this).
const SERVING_COMMON_NAME: &str = "sidekey-webhook";
/// Subject of a CA: `sidekey-webhook-ca@<unix time>`, as kube's own
/// self-signed CAs, so that CAs in one bundle are told apart.
const CA_COMMON_NAME: &str = "sidekey-webhook-ca";

/// Who makes the certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The operator makes the CA and the serving certificate.
    Managed,
    /// An installer (cert-manager) writes the Secret; the operator reads it.
    Provided,
}

/// Where the certificate lives and what it must be valid for.
#[derive(Clone, Debug)]
pub struct CertConfig {
    /// The operator's namespace, where the Secret lives.
    pub namespace: String,
    /// The Secret, e.g. `sidekey-webhook-tls`.
    pub secret_name: String,
    pub mode: Mode,
    /// DNS SANs of the serving certificate (`svc.ns.svc`, ...).
    pub dns_names: Vec<String>,
    /// IP SANs (127.0.0.1 when the API server calls https://127.0.0.1:PORT).
    pub ip_addresses: Vec<IpAddr>,
}

impl CertConfig {
    fn check(&self) -> Result<(), CertError> {
        let bad = |why: String| Err(CertError::Config(why));
        if self.namespace.is_empty() || self.secret_name.is_empty() {
            return bad("the Secret's namespace and name must not be empty".into());
        }
        if self.dns_names.is_empty() && self.ip_addresses.is_empty() {
            return bad("the serving certificate needs at least one DNS name or IP address".into());
        }
        if let Some(name) = self
            .dns_names
            .iter()
            .find(|n| n.is_empty() || !n.is_ascii() || n.contains(char::is_whitespace))
        {
            return bad(format!("{name:?} is not a DNS name"));
        }
        Ok(())
    }

    fn secret_ref(&self) -> String {
        format!("{}/{}", self.namespace, self.secret_name)
    }
}

/// What went wrong with the webhook certificate. Messages name the Secret
/// and key; they never carry key material.
#[derive(Debug, Error)]
pub enum CertError {
    #[error("webhook certificate configuration: {0}")]
    Config(String),

    #[error("{action} Secret {secret}: {source}")]
    Kube {
        action: &'static str,
        secret: String,
        #[source]
        source: kube::Error,
    },

    #[error(
        "Secret {secret} does not exist: in provided mode the installer (cert-manager) must \
         create it"
    )]
    NotFound { secret: String },

    #[error(
        "Secret {secret} has type {found:?}, not {SECRET_TYPE}: the type cannot be changed, \
         delete the Secret and the operator will issue a new one"
    )]
    WrongType { secret: String, found: String },

    #[error("Secret {secret} key {key:?}: {detail}")]
    Invalid {
        secret: String,
        key: &'static str,
        detail: String,
    },

    #[error("Secret {secret} holds no serving certificate yet")]
    NotIssued { secret: String },

    #[error("the serving certificate in Secret {secret} expired at {not_after}")]
    Expired { secret: String, not_after: String },

    #[error("generating the webhook {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },

    #[error("Secret {secret} kept changing under us: gave up after {rounds} rounds")]
    Contended { secret: String, rounds: usize },

    #[error("publishing the CA bundle to {target}: {source}")]
    Publish {
        target: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl CertError {
    fn kube(action: &'static str, config: &CertConfig, source: kube::Error) -> Self {
        Self::Kube {
            action,
            secret: config.secret_ref(),
            source,
        }
    }

    fn invalid(secret: &str, key: &'static str, detail: impl Into<String>) -> Self {
        Self::Invalid {
            secret: secret.to_owned(),
            key,
            detail: detail.into(),
        }
    }
}

/// Publishes a CA bundle (PEM) into the MutatingWebhookConfiguration's
/// `caBundle`. Must be idempotent: it is called again with the same bundle.
pub type Publish = Arc<dyn Fn(Vec<u8>) -> BoxFuture<'static, Result<(), CertError>> + Send + Sync>;

// ---------------------------------------------------------------------------
// Serving: every replica.

/// The certificate the webhook's TLS server presents, swappable at run
/// time: the server config resolves it per handshake, so a swap applies to
/// new connections at once.
#[derive(Clone)]
pub struct ServingCert {
    inner: Arc<ServingInner>,
}

struct ServingInner {
    provider: Arc<CryptoProvider>,
    current: ArcSwapOption<Loaded>,
}

struct Loaded {
    key: Arc<CertifiedKey>,
    ca_bundle: Option<Vec<u8>>,
    /// What was loaded, to tell a new version from a repeated one.
    tls_crt: Vec<u8>,
    tls_key_digest: u64,
}

impl fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServingCert")
            .field("loaded", &self.is_loaded())
            .finish_non_exhaustive()
    }
}

impl Default for ServingCert {
    fn default() -> Self {
        Self::new()
    }
}

impl ServingCert {
    /// Nothing loaded yet: handshakes fail until [`load`](Self::load).
    pub fn new() -> Self {
        Self {
            inner: Arc::new(ServingInner {
                provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
                current: ArcSwapOption::empty(),
            }),
        }
    }

    /// A TLS server configuration presenting the current certificate.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(self.inner.provider.clone())
            .with_safe_default_protocol_versions()
            // Cannot fail: aws-lc-rs has cipher suites for TLS 1.2 and 1.3.
            .expect("the aws-lc-rs provider supports the default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// Readiness: a certificate has been loaded.
    pub fn is_loaded(&self) -> bool {
        self.inner.current.load().is_some()
    }

    /// The PEM of `ca.crt` of the loaded Secret, if it had one.
    pub fn ca_bundle(&self) -> Option<Vec<u8>> {
        self.inner.current.load().as_ref()?.ca_bundle.clone()
    }

    /// Loads `tls.crt`, `tls.key` and `ca.crt` (optional) from the Secret.
    /// On error the previous certificate stays.
    pub fn load(&self, secret: &Secret) -> Result<(), CertError> {
        self.load_at(secret, SystemTime::now()).map(|_| ())
    }

    /// As `load`; `Ok(true)` when the certificate differs from the one
    /// loaded before.
    fn load_at(&self, secret: &Secret, now: SystemTime) -> Result<bool, CertError> {
        let name = format!(
            "{}/{}",
            secret.metadata.namespace.as_deref().unwrap_or_default(),
            secret.metadata.name.as_deref().unwrap_or_default()
        );
        let get = |key| secret_value(secret, key);
        let (Some(tls_crt), Some(tls_key)) = (get(TLS_CRT), get(TLS_KEY)) else {
            return Err(CertError::NotIssued { secret: name });
        };
        let key_digest = digest(tls_key);
        if let Some(loaded) = self.inner.current.load().as_ref()
            && loaded.tls_crt == tls_crt
            && loaded.tls_key_digest == key_digest
            && loaded.ca_bundle.as_deref() == get(CA_CRT)
        {
            return Ok(false);
        }

        let chain = CertificateDer::pem_slice_iter(tls_crt)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CertError::invalid(&name, TLS_CRT, format!("not PEM: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(CertError::invalid(&name, TLS_CRT, "no PEM certificate"));
        };
        let leaf = parse_leaf(leaf).map_err(|e| CertError::invalid(&name, TLS_CRT, e))?;
        if leaf.not_after <= unix(now) {
            return Err(CertError::Expired {
                secret: name,
                not_after: leaf.not_after_text,
            });
        }
        // The PEM parser's errors can quote the input: say nothing of it.
        let key = PrivateKeyDer::from_pem_slice(tls_key).map_err(|_| {
            CertError::invalid(
                &name,
                TLS_KEY,
                "no PEM private key (PKCS#8, SEC1 or PKCS#1)",
            )
        })?;
        let certified = CertifiedKey::from_der(chain, key, &self.inner.provider).map_err(|e| {
            CertError::invalid(&name, TLS_KEY, format!("unusable with {TLS_CRT}: {e}"))
        })?;
        let ca_bundle = match get(CA_CRT) {
            None => None,
            Some(bundle) => {
                parse_bundle(bundle).map_err(|e| CertError::invalid(&name, CA_CRT, e))?;
                Some(bundle.to_vec())
            }
        };
        self.inner.current.store(Some(Arc::new(Loaded {
            key: Arc::new(certified),
            ca_bundle,
            tls_crt: tls_crt.to_vec(),
            tls_key_digest: key_digest,
        })));
        Ok(true)
    }
}

#[derive(Debug)]
struct Resolver(ServingCert);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.inner.current.load().as_ref()?.key.clone())
    }
}

/// Tells a changed key apart without keeping a copy of it.
fn digest(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Every replica, both modes: loads each version of the Secret into
/// `serving` until `shutdown`. A version that does not load is logged and
/// the previous certificate keeps serving; so does a deleted Secret.
pub async fn load_loop(
    client: Client,
    config: CertConfig,
    serving: ServingCert,
    shutdown: CancellationToken,
) {
    let secret = config.secret_ref();
    let mut events = std::pin::pin!(watch_secret(client, &config));
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.next() => event,
        };
        match event {
            Some(Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s))) => {
                match serving.load_at(&s, SystemTime::now()) {
                    Ok(true) => tracing::info!(
                        %secret,
                        resource_version = s.metadata.resource_version.as_deref().unwrap_or_default(),
                        "loaded the webhook serving certificate"
                    ),
                    Ok(false) => {}
                    Err(e @ CertError::NotIssued { .. }) => tracing::debug!(error = %e, "waiting"),
                    Err(e) => tracing::warn!(
                        error = %e,
                        serving_previous = serving.is_loaded(),
                        "cannot load the webhook serving certificate"
                    ),
                }
            }
            Some(Ok(watcher::Event::Delete(_))) => tracing::warn!(
                %secret,
                serving_previous = serving.is_loaded(),
                "the webhook certificate Secret was deleted"
            ),
            Some(Ok(watcher::Event::InitDone)) if !serving.is_loaded() => {
                tracing::info!(%secret, "waiting for the webhook certificate Secret");
            }
            Some(Ok(_)) => {}
            // The watcher backs off and resumes by itself.
            Some(Err(e)) => {
                tracing::warn!(%secret, error = %e, "watching the webhook certificate Secret failed");
            }
            None => return,
        }
    }
}

/// Watches the one Secret: a field selector on its name, in its namespace.
fn watch_secret(
    client: Client,
    config: &CertConfig,
) -> impl futures::Stream<Item = Result<watcher::Event<Secret>, watcher::Error>> + Send + use<> {
    let api: Api<Secret> = Api::namespaced(client, &config.namespace);
    let selector = format!("metadata.name={}", config.secret_name);
    watcher(api, watcher::Config::default().fields(&selector)).default_backoff()
}

// ---------------------------------------------------------------------------
// Issuing and rotating: managed mode, leader only.

/// Managed mode: makes sure the Secret holds a CA and a serving
/// certificate valid for `config`, issuing or rotating them, and returns
/// the CA bundle (PEM) now in force. See the module documentation for the
/// order of writes and publishes. Writes are conditional; after losing a
/// race it re-reads and adopts what won. Provided mode: reads only, and
/// returns the Secret's `ca.crt`.
pub async fn ensure(
    client: &Client,
    config: &CertConfig,
    publish: &Publish,
) -> Result<Vec<u8>, CertError> {
    ensure_tracked(client, config, publish)
        .await
        .map(|e| e.bundle)
}

struct Ensured {
    bundle: Vec<u8>,
    /// The last bundle this call published, if any.
    published: Option<Vec<u8>>,
}

async fn ensure_tracked(
    client: &Client,
    config: &CertConfig,
    publish: &Publish,
) -> Result<Ensured, CertError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
    let read = || async {
        api.get_opt(&config.secret_name)
            .await
            .map_err(|e| CertError::kube("reading", config, e))
    };
    let mut current = read().await?;
    if config.mode == Mode::Provided {
        return provided_bundle(current.as_ref(), config).map(|bundle| Ensured {
            bundle,
            published: None,
        });
    }

    config.check()?;
    let mut published: Option<Vec<u8>> = None;
    for _ in 0..MAX_ROUNDS {
        let write = match plan(current.as_ref(), config, SystemTime::now())? {
            Plan::Keep { bundle } => {
                // We published, then adopted another replica's write: the
                // webhook configuration must trust what is in force.
                if published.as_ref().is_some_and(|p| *p != bundle) {
                    publish_once(publish, &mut published, &bundle).await?;
                }
                return Ok(Ensured { bundle, published });
            }
            Plan::Write(write) => write,
        };
        if let Some(s) = &current {
            let found = s.type_.as_deref().unwrap_or("Opaque");
            if found != SECRET_TYPE {
                return Err(CertError::WrongType {
                    secret: config.secret_ref(),
                    found: found.to_owned(),
                });
            }
        }
        if let Some(bundle) = &write.publish_first {
            publish_once(publish, &mut published, bundle).await?;
        }
        let secret = secret_for(current.as_ref(), config, &write.contents);
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        let written = match &current {
            None => api.create(&params, &secret).await,
            // Carries the resourceVersion read: fails if anyone wrote since.
            Some(_) => api.replace(&config.secret_name, &params, &secret).await,
        };
        match written {
            Ok(written) => {
                tracing::info!(
                    secret = %config.secret_ref(),
                    reason = %write.reason,
                    "wrote the webhook certificate Secret"
                );
                let old_bundle = current.as_ref().and_then(|s| secret_value(s, CA_CRT));
                let new_bundle = write.contents.ca_crt.as_slice();
                // A CA joined (no serving certificate uses it yet) or an
                // expired one left: the webhook configuration follows.
                if old_bundle != Some(new_bundle) {
                    publish_once(publish, &mut published, new_bundle).await?;
                }
                current = Some(written);
            }
            Err(e) if is_stale_write(&e) => {
                tracing::debug!(
                    secret = %config.secret_ref(),
                    "the webhook certificate Secret changed meanwhile; re-reading"
                );
                current = read().await?;
            }
            Err(e) => return Err(CertError::kube("writing", config, e)),
        }
    }
    Err(CertError::Contended {
        secret: config.secret_ref(),
        rounds: MAX_ROUNDS,
    })
}

/// Publishes `bundle` unless it is the last one published.
async fn publish_once(
    publish: &Publish,
    published: &mut Option<Vec<u8>>,
    bundle: &[u8],
) -> Result<(), CertError> {
    if published.as_deref() != Some(bundle) {
        publish(bundle.to_vec()).await?;
        *published = Some(bundle.to_vec());
    }
    Ok(())
}

/// A conditional write lost to another (409) or aimed at a Secret deleted
/// meanwhile (404).
fn is_stale_write(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409 || status.code == 404)
}

fn provided_bundle(current: Option<&Secret>, config: &CertConfig) -> Result<Vec<u8>, CertError> {
    let secret = config.secret_ref();
    let Some(current) = current else {
        return Err(CertError::NotFound { secret });
    };
    let Some(bundle) = secret_value(current, CA_CRT) else {
        return Err(CertError::invalid(&secret, CA_CRT, "missing or empty"));
    };
    parse_bundle(bundle).map_err(|e| CertError::invalid(&secret, CA_CRT, e))?;
    Ok(bundle.to_vec())
}

/// Managed mode, leader only: [`ensure`] now, then every `interval`, and at
/// once when the Secret is deleted, until `shutdown`. After each good round
/// the bundle in force is published (idempotent), so a webhook
/// configuration an installer reset is repaired within one interval. A
/// failed round is logged and retried after [`RETRY_MIN`] doubling to
/// [`RETRY_MAX`]. Provided mode has nothing to rotate: it only waits.
pub async fn rotate_loop(
    client: Client,
    config: CertConfig,
    publish: Publish,
    interval: Duration,
    shutdown: CancellationToken,
) {
    if config.mode == Mode::Provided {
        shutdown.cancelled().await;
        return;
    }
    let secret = config.secret_ref();
    let mut deletions =
        std::pin::pin!(
            watch_secret(client.clone(), &config).filter_map(|event| future::ready(
                matches!(event, Ok(watcher::Event::Delete(_))).then_some(())
            ))
        );
    let mut retry = RETRY_MIN;
    loop {
        let round = async {
            let ensured = ensure_tracked(&client, &config, &publish).await?;
            if ensured.published.as_ref() != Some(&ensured.bundle) {
                publish(ensured.bundle).await?;
            }
            Ok::<_, CertError>(())
        };
        let wait = tokio::select! {
            _ = shutdown.cancelled() => return,
            done = round => match done {
                Ok(()) => {
                    retry = RETRY_MIN;
                    interval
                }
                Err(e) => {
                    let wait = retry.min(interval);
                    tracing::warn!(%secret, error = %e, retry_in = ?wait, "webhook certificate round failed");
                    retry = (retry * 2).min(RETRY_MAX);
                    wait
                }
            },
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            Some(()) = deletions.next() => {
                tracing::info!(%secret, "the webhook certificate Secret was deleted; issuing anew");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The decision: pure.

/// Bytes of a private key: `Debug` never shows them.
#[derive(Clone, PartialEq, Eq, Default)]
pub(crate) struct KeyBytes(Vec<u8>);

impl fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyBytes(<{} bytes redacted>)", self.0.len())
    }
}

/// The four values of a managed Secret.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub(crate) struct Contents {
    pub(crate) ca_crt: Vec<u8>,
    pub(crate) ca_key: KeyBytes,
    pub(crate) tls_crt: Vec<u8>,
    pub(crate) tls_key: KeyBytes,
}

impl Contents {
    fn of(secret: Option<&Secret>) -> Self {
        let get = |key| {
            secret
                .and_then(|s| secret_value(s, key))
                .unwrap_or_default()
                .to_vec()
        };
        Self {
            ca_crt: get(CA_CRT),
            ca_key: KeyBytes(get(CA_KEY)),
            tls_crt: get(TLS_CRT),
            tls_key: KeyBytes(get(TLS_KEY)),
        }
    }
}

/// What [`plan`] decided.
#[derive(Debug)]
pub(crate) enum Plan {
    /// The Secret is good as it is; `bundle` is its `ca.crt`.
    Keep { bundle: Vec<u8> },
    /// One write, then decide again.
    Write(Write),
}

#[derive(Debug)]
pub(crate) struct Write {
    pub(crate) reason: Reason,
    pub(crate) contents: Contents,
    /// Publish this bundle before writing: the new serving certificate is
    /// signed by a CA the current one was not signed by.
    pub(crate) publish_first: Option<Vec<u8>>,
}

/// Why a write is needed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    NoSecret,
    /// `ca.crt` missing or not PEM certificates.
    NoCa(String),
    /// `ca.key` missing, not a key, or not the newest CA's.
    CaUnusable(String),
    CaExpiring,
    /// This many expired CAs left the bundle.
    ExpiredCaDropped(usize),
    NoServingCert,
    ServingCertUnusable(String),
    ServingCertExpiring,
    ServingCertNotYetValid,
    ServingCertSansDiffer,
    ServingCertNotFromNewestCa(String),
    Unlabelled,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSecret => write!(f, "no Secret: new CA"),
            Self::NoCa(why) => write!(f, "no usable {CA_CRT} ({why}): new CA"),
            Self::CaUnusable(why) => write!(f, "{CA_KEY} unusable ({why}): new CA"),
            Self::CaExpiring => write!(f, "the CA expires soon: new CA added to the bundle"),
            Self::ExpiredCaDropped(n) => write!(f, "{n} expired CA(s) removed from the bundle"),
            Self::NoServingCert => write!(f, "no serving certificate: issued"),
            Self::ServingCertUnusable(why) => {
                write!(f, "serving certificate unusable ({why}): reissued")
            }
            Self::ServingCertExpiring => write!(f, "serving certificate expires soon: renewed"),
            Self::ServingCertNotYetValid => {
                write!(f, "serving certificate not valid yet: reissued")
            }
            Self::ServingCertSansDiffer => {
                write!(
                    f,
                    "serving certificate names differ from the configuration: reissued"
                )
            }
            Self::ServingCertNotFromNewestCa(why) => {
                write!(
                    f,
                    "serving certificate not signed by the newest CA ({why}): reissued"
                )
            }
            Self::Unlabelled => write!(f, "{MANAGED_BY_LABEL} label added"),
        }
    }
}

/// Decides the next write, if any, for the managed Secret `current` at
/// time `now`. Errors only when generating keys or certificates fails.
pub(crate) fn plan(
    current: Option<&Secret>,
    config: &CertConfig,
    now: SystemTime,
) -> Result<Plan, CertError> {
    config.check()?;
    let now = unix(now);
    let existing = Contents::of(current);
    let get = |key| current.and_then(|s| secret_value(s, key));

    // 1. The CA.
    let cas = match (current, get(CA_CRT)) {
        (None, _) => Err(Reason::NoSecret),
        (Some(_), None) => Err(Reason::NoCa("missing".into())),
        (Some(_), Some(bundle)) => parse_bundle(bundle).map_err(Reason::NoCa),
    };
    let cas = match cas {
        Ok(cas) => cas,
        Err(reason) => return new_ca(existing, &[], reason, now),
    };
    let live: Vec<&Ca> = cas.iter().filter(|ca| ca.not_after > now).collect();
    let newest = &cas[0];
    let ca_key = match usable_ca_key(newest, get(CA_KEY)) {
        Ok(key) => key,
        Err(why) => return new_ca(existing, &live, Reason::CaUnusable(why), now),
    };
    if newest.not_after - now < seconds(CA_RENEW_BEFORE) {
        return new_ca(existing, &live, Reason::CaExpiring, now);
    }
    if live.len() < cas.len() {
        let contents = Contents {
            ca_crt: join(&live),
            ..existing
        };
        return Ok(Plan::Write(Write {
            reason: Reason::ExpiredCaDropped(cas.len() - live.len()),
            contents,
            publish_first: None,
        }));
    }

    // 2. The serving certificate.
    let (problem, signed_by_newest) =
        match check_serving(get(TLS_CRT), get(TLS_KEY), newest, config, now) {
            Ok(()) => {
                let labelled = current
                    .and_then(|s| s.metadata.labels.as_ref()?.get(MANAGED_BY_LABEL))
                    .is_some_and(|v| v == MANAGED_BY_VALUE);
                return Ok(if labelled {
                    Plan::Keep {
                        bundle: existing.ca_crt,
                    }
                } else {
                    Plan::Write(Write {
                        reason: Reason::Unlabelled,
                        contents: existing,
                        publish_first: None,
                    })
                });
            }
            Err(found) => found,
        };
    let (tls_crt, tls_key) = issue_serving(newest, &ca_key, config, now)?;
    let publish_first = (!signed_by_newest).then(|| existing.ca_crt.clone());
    Ok(Plan::Write(Write {
        reason: problem,
        contents: Contents {
            tls_crt,
            tls_key,
            ..existing
        },
        publish_first,
    }))
}

/// Adds a new CA in front of `keep`; the serving certificate stays as it is
/// (see the module documentation).
fn new_ca(existing: Contents, keep: &[&Ca], reason: Reason, now: i64) -> Result<Plan, CertError> {
    let (ca_crt, ca_key) = issue_ca(now)?;
    let mut bundle = ca_crt.into_bytes();
    bundle.extend(join(keep));
    Ok(Plan::Write(Write {
        reason,
        contents: Contents {
            ca_crt: bundle,
            ca_key,
            ..existing
        },
        publish_first: None,
    }))
}

/// The newest CA's key, if `ca.key` holds it and we can sign as that CA.
fn usable_ca_key(newest: &Ca, ca_key: Option<&[u8]>) -> Result<KeyPair, String> {
    let key = parse_key(ca_key.ok_or("missing")?)?;
    if key.public_key_raw() != newest.public_key.as_slice() {
        return Err("not the key of the newest CA in the bundle".into());
    }
    if newest.common_name.is_none() {
        return Err("the newest CA's subject is not one UTF-8 common name".into());
    }
    Ok(key)
}

/// `Err((why, signed_by_newest))` when the serving certificate must be
/// reissued; `signed_by_newest` says whether the current one is signed by
/// the newest CA (then the bundle need not be published first).
fn check_serving(
    tls_crt: Option<&[u8]>,
    tls_key: Option<&[u8]>,
    newest: &Ca,
    config: &CertConfig,
    now: i64,
) -> Result<(), (Reason, bool)> {
    let Some(tls_crt) = tls_crt else {
        return Err((Reason::NoServingCert, false));
    };
    let unusable = |why: String| (Reason::ServingCertUnusable(why), false);
    let der = CertificateDer::pem_slice_iter(tls_crt)
        .next()
        .ok_or_else(|| unusable("no PEM certificate".into()))?
        .map_err(|e| unusable(format!("not PEM: {e}")))?;
    let leaf = parse_leaf(&der).map_err(unusable)?;
    let signed = signed_by(&der, &leaf, newest);
    let key = tls_key
        .ok_or_else(|| "no key".to_owned())
        .and_then(parse_key)
        .map_err(|why| {
            (
                Reason::ServingCertUnusable(format!("{TLS_KEY}: {why}")),
                signed.is_ok(),
            )
        })?;
    if key.public_key_raw() != leaf.public_key.as_slice() {
        let why = format!("{TLS_KEY} does not match {TLS_CRT}");
        return Err((Reason::ServingCertUnusable(why), signed.is_ok()));
    }
    if leaf.not_before > now {
        return Err((Reason::ServingCertNotYetValid, signed.is_ok()));
    }
    let lifetime = leaf.not_after - leaf.not_before;
    if leaf.not_after - now < lifetime / i64::from(SERVING_RENEW_DIVISOR) {
        return Err((Reason::ServingCertExpiring, signed.is_ok()));
    }
    if leaf.sans != Sans::of_config(config) {
        return Err((Reason::ServingCertSansDiffer, signed.is_ok()));
    }
    signed.map_err(|why| (Reason::ServingCertNotFromNewestCa(why), false))
}

/// Whether `ca` signed `der`: webpki's own path validation, at a time
/// inside both validities so that expiry and clock skew are judged
/// elsewhere.
fn signed_by(der: &CertificateDer<'_>, leaf: &Leaf, ca: &Ca) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca.der.clone())
        .map_err(|e| format!("CA not usable as a trust anchor: {e}"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .map_err(|e| e.to_string())?;
    let name = leaf
        .sans
        .ips
        .first()
        .map(|ip| ServerName::IpAddress((*ip).into()))
        .or_else(|| {
            let dns = leaf.sans.dns.first()?;
            ServerName::try_from(dns.clone()).ok()
        })
        .ok_or("the certificate names no host")?;
    let at = leaf
        .not_before
        .max(ca.not_before)
        .min(leaf.not_after.min(ca.not_after));
    let at = u64::try_from(at).unwrap_or(0);
    verifier
        .verify_server_cert(
            der,
            &[],
            &name,
            &[],
            UnixTime::since_unix_epoch(Duration::from_secs(at)),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The Secret to write: the current one (labels, annotations, other keys
/// and resourceVersion kept) with our label, type and four values.
pub(crate) fn secret_for(
    current: Option<&Secret>,
    config: &CertConfig,
    contents: &Contents,
) -> Secret {
    let mut secret = current.cloned().unwrap_or_else(|| Secret {
        metadata: ObjectMeta {
            name: Some(config.secret_name.clone()),
            namespace: Some(config.namespace.clone()),
            ..Default::default()
        },
        ..Default::default()
    });
    secret.metadata.managed_fields = None;
    secret
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned());
    secret.type_ = Some(SECRET_TYPE.to_owned());
    secret.string_data = None;
    let data = secret.data.get_or_insert_with(BTreeMap::new);
    for (key, value) in [
        (CA_CRT, &contents.ca_crt),
        (CA_KEY, &contents.ca_key.0),
        (TLS_CRT, &contents.tls_crt),
        (TLS_KEY, &contents.tls_key.0),
    ] {
        data.insert(key.to_owned(), ByteString(value.clone()));
    }
    secret
}

// ---------------------------------------------------------------------------
// Parsing and issuing.

/// A value of the Secret; `None` when missing or empty.
fn secret_value<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    let value = secret.data.as_ref()?.get(key)?.0.as_slice();
    (!value.is_empty()).then_some(value)
}

/// One CA of a bundle.
struct Ca {
    /// Its PEM block, written back as it was.
    pem: String,
    der: CertificateDer<'static>,
    not_before: i64,
    not_after: i64,
    public_key: Vec<u8>,
    /// The subject when it is one UTF-8 common name, as our CAs have: the
    /// only subject rcgen reproduces byte for byte when signing as it.
    common_name: Option<String>,
}

/// The CAs of a PEM bundle, in its order: newest first, as written. (Not
/// sorted by expiry: a foreign CA outliving ours would then stay "newest"
/// without a key, and each round would add another CA.)
fn parse_bundle(bundle: &[u8]) -> Result<Vec<Ca>, String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let text = std::str::from_utf8(bundle).map_err(|_| "not PEM text".to_owned())?;
    let mut cas = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            return Err(format!("certificate {} has no END line", cas.len() + 1));
        };
        let block = &rest[start..start + len + END.len()];
        rest = &rest[start + len + END.len()..];
        let which = cas.len() + 1;
        let der = CertificateDer::from_pem_slice(block.as_bytes())
            .map_err(|e| format!("certificate {which}: {e}"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| format!("certificate {which}: {e}"))?;
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        let public_key = cert.public_key().subject_public_key.data.to_vec();
        let common_name = single_common_name(&cert);
        cas.push(Ca {
            pem: format!("{block}\n"),
            der: der.clone(),
            not_before,
            not_after,
            public_key,
            common_name,
        });
    }
    if cas.is_empty() {
        return Err("no PEM certificate".into());
    }
    Ok(cas)
}

fn single_common_name(cert: &X509Certificate<'_>) -> Option<String> {
    let mut attributes = cert.subject().iter_attributes();
    let attribute = attributes.next()?;
    let only = attributes.next().is_none();
    let utf8 = attribute.attr_value().tag() == x509_parser::asn1_rs::Tag::Utf8String;
    let cn = attribute.attr_type() == &x509_parser::oid_registry::OID_X509_COMMON_NAME;
    (only && utf8 && cn)
        .then(|| attribute.as_str().ok().map(str::to_owned))
        .flatten()
}

fn join(cas: &[&Ca]) -> Vec<u8> {
    cas.iter().flat_map(|ca| ca.pem.bytes()).collect()
}

/// A serving certificate, as far as the policy looks at it.
struct Leaf {
    not_before: i64,
    not_after: i64,
    not_after_text: String,
    public_key: Vec<u8>,
    sans: Sans,
}

fn parse_leaf(der: &CertificateDer<'_>) -> Result<Leaf, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let validity = cert.validity();
    Ok(Leaf {
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        not_after_text: validity.not_after.to_string(),
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        sans: Sans::of_cert(&cert)?,
    })
}

/// Subject alternative names, compared as sets (DNS names lower-cased).
#[derive(Debug, PartialEq, Eq)]
struct Sans {
    dns: Vec<String>,
    ips: Vec<IpAddr>,
}

impl Sans {
    fn new(dns: impl IntoIterator<Item = String>, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        let dns: BTreeSet<String> = dns.into_iter().map(|d| d.to_ascii_lowercase()).collect();
        let ips: BTreeSet<IpAddr> = ips.into_iter().collect();
        Self {
            dns: dns.into_iter().collect(),
            ips: ips.into_iter().collect(),
        }
    }

    fn of_config(config: &CertConfig) -> Self {
        Self::new(
            config.dns_names.iter().cloned(),
            config.ip_addresses.iter().copied(),
        )
    }

    fn of_cert(cert: &X509Certificate<'_>) -> Result<Self, String> {
        let names = cert
            .subject_alternative_name()
            .map_err(|e| format!("subject alternative names: {e}"))?
            .map(|ext| ext.value.general_names.clone())
            .unwrap_or_default();
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for name in names {
            match name {
                GeneralName::DNSName(d) => dns.push(d.to_owned()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(b).unwrap_or_default())),
                    16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(b).unwrap_or_default())),
                    n => return Err(format!("an IP address of {n} bytes")),
                },
                _ => {}
            }
        }
        Ok(Self::new(dns, ips))
    }
}

/// A private key from PEM (PKCS#8, SEC1 or PKCS#1). Errors never quote it.
fn parse_key(pem: &[u8]) -> Result<KeyPair, String> {
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|_| "no PEM private key".to_owned())?;
    KeyPair::try_from(&der).map_err(|_| "not a usable private key".to_owned())
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    // Signs serving certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Sets the validity from `from` to `to`, in seconds since the epoch.
/// (rcgen's time type is reached from its own epoch date, so that this
/// crate need not name the `time` crate.)
fn set_validity(params: &mut CertificateParams, from: i64, to: i64) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(u64::try_from(from).unwrap_or(0));
    params.not_after = epoch + Duration::from_secs(u64::try_from(to).unwrap_or(0));
}

/// A new self-signed CA (ECDSA P-256): (certificate PEM, key PEM).
fn issue_ca(now: i64) -> Result<(String, KeyBytes), CertError> {
    let generate = |source| CertError::Generate { what: "CA", source };
    let key = KeyPair::generate().map_err(generate)?;
    let mut params = ca_params(&format!("{CA_COMMON_NAME}@{now}"));
    set_validity(
        &mut params,
        now - seconds(BACKDATE),
        now + seconds(CA_VALIDITY),
    );
    let cert = params.self_signed(&key).map_err(generate)?;
    Ok((cert.pem(), KeyBytes(key.serialize_pem().into_bytes())))
}

/// A new serving certificate (ECDSA P-256) for `config`, signed by `ca`:
/// (certificate PEM, key PEM). It never outlives its CA.
fn issue_serving(
    ca: &Ca,
    ca_key: &KeyPair,
    config: &CertConfig,
    now: i64,
) -> Result<(Vec<u8>, KeyBytes), CertError> {
    let generate = |source| CertError::Generate {
        what: "serving certificate",
        source,
    };
    let common_name = ca.common_name.as_deref().unwrap_or(CA_COMMON_NAME);
    let issuer = Issuer::new(ca_params(common_name), ca_key);
    let key = KeyPair::generate().map_err(generate)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, SERVING_COMMON_NAME);
    params.distinguished_name = dn;
    params.subject_alt_names = config
        .dns_names
        .iter()
        .map(|d| Ok(SanType::DnsName(d.clone().try_into()?)))
        .chain(
            config
                .ip_addresses
                .iter()
                .map(|ip| Ok(SanType::IpAddress(*ip))),
        )
        .collect::<Result<_, rcgen::Error>>()
        .map_err(generate)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(
        &mut params,
        now - seconds(BACKDATE),
        (now + seconds(SERVING_VALIDITY)).min(ca.not_after),
    );
    let cert = params.signed_by(&key, &issuer).map_err(generate)?;
    Ok((
        cert.pem().into_bytes(),
        KeyBytes(key.serialize_pem().into_bytes()),
    ))
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => seconds(d),
        Err(e) => -seconds(e.duration()),
    }
}

fn seconds(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::ClientConfig;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const DAY: Duration = Duration::from_secs(DAY_SECONDS);

    fn config() -> CertConfig {
        CertConfig {
            namespace: "sidekey".into(),
            secret_name: "sidekey-webhook-tls".into(),
            mode: Mode::Managed,
            dns_names: vec!["localhost".into(), "sidekey-webhook.sidekey.svc".into()],
            ip_addresses: vec!["127.0.0.1".parse().expect("ip")],
        }
    }

    /// A fixed start, so that thresholds are exact.
    fn day(n: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000) + DAY * u32::try_from(n).expect("days")
    }

    fn value<'a>(s: &'a Secret, key: &str) -> &'a [u8] {
        secret_value(s, key).unwrap_or_default()
    }

    #[derive(Debug, PartialEq)]
    enum Step {
        Publish(Vec<u8>),
        Write(Reason),
    }

    /// What `ensure` would write, by plan alone: (final Secret, steps).
    fn settle(
        mut current: Option<Secret>,
        config: &CertConfig,
        now: SystemTime,
    ) -> (Secret, Vec<Step>) {
        let mut steps = Vec::new();
        for _ in 0..MAX_ROUNDS {
            match plan(current.as_ref(), config, now).expect("plan") {
                Plan::Keep { bundle } => {
                    let secret = current.expect("kept a Secret");
                    assert_eq!(bundle, value(&secret, CA_CRT));
                    return (secret, steps);
                }
                Plan::Write(w) => {
                    if let Some(b) = w.publish_first.clone() {
                        steps.push(Step::Publish(b));
                    }
                    steps.push(Step::Write(w.reason.clone()));
                    current = Some(secret_for(current.as_ref(), config, &w.contents));
                }
            }
        }
        panic!("no fixpoint after {MAX_ROUNDS} rounds: {steps:?}");
    }

    fn write(current: &Secret, config: &CertConfig, now: SystemTime) -> Write {
        match plan(Some(current), config, now).expect("plan") {
            Plan::Write(w) => w,
            Plan::Keep { .. } => panic!("expected a write"),
        }
    }

    fn apply(current: &Secret, config: &CertConfig, w: &Write) -> Secret {
        secret_for(Some(current), config, &w.contents)
    }

    fn certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .expect("PEM")
    }

    /// Verifies the serving certificate against `trust` for `name` at `now`,
    /// as the API server would.
    fn verify(secret: &Secret, trust: &[u8], name: &str, now: SystemTime) -> Result<(), String> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in certs(trust) {
            roots.add(ca).map_err(|e| e.to_string())?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .map_err(|e| e.to_string())?;
        let leaf = certs(value(secret, TLS_CRT)).remove(0);
        let name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
        let now = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).expect("after 1970"));
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], now)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn fresh(now: SystemTime) -> Secret {
        settle(None, &config(), now).0
    }

    #[test]
    fn fresh_issue_writes_the_ca_then_publishes_it_then_the_serving_certificate() {
        let config = config();
        let first = match plan(None, &config, day(0)).expect("plan") {
            Plan::Write(w) => w,
            Plan::Keep { .. } => panic!("nothing to keep"),
        };
        assert_eq!(first.reason, Reason::NoSecret);
        assert!(first.contents.tls_crt.is_empty() && first.contents.tls_key.0.is_empty());
        assert!(first.publish_first.is_none());

        let (secret, steps) = settle(None, &config, day(0));
        let bundle = value(&secret, CA_CRT).to_vec();
        assert_eq!(
            steps,
            [
                Step::Write(Reason::NoSecret),
                Step::Publish(bundle.clone()),
                Step::Write(Reason::NoServingCert),
            ]
        );
        assert_eq!(certs(&bundle).len(), 1);
        assert_eq!(secret.type_.as_deref(), Some(SECRET_TYPE));
        assert_eq!(
            secret
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(MANAGED_BY_LABEL))
                .map(String::as_str),
            Some(MANAGED_BY_VALUE)
        );
        assert_eq!(secret.metadata.name.as_deref(), Some("sidekey-webhook-tls"));
        assert_eq!(secret.metadata.namespace.as_deref(), Some("sidekey"));
        for key in [TLS_CRT, TLS_KEY, CA_CRT, CA_KEY] {
            assert!(!value(&secret, key).is_empty(), "{key} empty");
        }
        for name in ["localhost", "sidekey-webhook.sidekey.svc", "127.0.0.1"] {
            verify(&secret, &bundle, name, day(0)).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(verify(&secret, &bundle, "other.sidekey.svc", day(0)).is_err());

        let der = certs(value(&secret, TLS_CRT)).remove(0);
        let leaf = parse_leaf(&der).expect("leaf");
        assert_eq!(leaf.not_before, unix(day(0)) - seconds(BACKDATE));
        assert_eq!(leaf.not_after, unix(day(0)) + seconds(SERVING_VALIDITY));
        let ca = &parse_bundle(&bundle).expect("bundle")[0];
        assert_eq!(ca.not_after, unix(day(0)) + seconds(CA_VALIDITY));
    }

    #[test]
    fn a_valid_secret_is_kept_without_a_write() {
        let config = config();
        let secret = fresh(day(0));
        for now in [day(0), day(30), day(243)] {
            match plan(Some(&secret), &config, now).expect("plan") {
                Plan::Keep { bundle } => assert_eq!(bundle, value(&secret, CA_CRT)),
                Plan::Write(w) => panic!("wrote at {now:?}: {}", w.reason),
            }
        }
    }

    #[test]
    fn a_serving_certificate_near_expiry_is_renewed_by_the_same_ca_without_publishing() {
        let config = config();
        let secret = fresh(day(0));
        // 365 days + 1 h of lifetime: renewed with less than ~121.7 days left.
        let w = write(&secret, &config, day(244));
        assert_eq!(w.reason, Reason::ServingCertExpiring);
        assert!(w.publish_first.is_none(), "the bundle did not change");
        assert_eq!(w.contents.ca_crt, value(&secret, CA_CRT));
        assert_eq!(w.contents.ca_key.0, value(&secret, CA_KEY));
        assert_ne!(w.contents.tls_crt, value(&secret, TLS_CRT));
        assert_ne!(w.contents.tls_key.0, value(&secret, TLS_KEY));
        let renewed = apply(&secret, &config, &w);
        verify(&renewed, value(&secret, CA_CRT), "localhost", day(400)).expect("renewed");
        let (_, steps) = settle(Some(renewed), &config, day(244));
        assert!(steps.is_empty(), "{steps:?}");
    }

    #[test]
    fn a_ca_near_expiry_joins_a_new_ca_to_the_bundle_published_before_it_signs() {
        let config = config();
        let old = fresh(day(0));
        let old_bundle = value(&old, CA_CRT).to_vec();
        // Day 2820: 830 days of CA left, so only the serving cert is renewed.
        let (old, steps) = settle(Some(old), &config, day(2820));
        assert_eq!(steps, [Step::Write(Reason::ServingCertExpiring)]);

        // Day 2921: 729 days left, under the 2 years: a new CA.
        let w = write(&old, &config, day(2921));
        assert_eq!(w.reason, Reason::CaExpiring);
        assert!(w.publish_first.is_none());
        assert_eq!(
            w.contents.tls_crt,
            value(&old, TLS_CRT),
            "serving cert kept for now"
        );
        assert_ne!(w.contents.ca_key.0, value(&old, CA_KEY));
        let bundle = w.contents.ca_crt.clone();
        let cas = certs(&bundle);
        assert_eq!(cas.len(), 2);
        assert_eq!(cas[1], certs(&old_bundle)[0], "old CA second");
        assert!(bundle.ends_with(&old_bundle));
        let with_new_ca = apply(&old, &config, &w);
        // Still served: signed by the old CA, which the bundle keeps.
        verify(&with_new_ca, &bundle, "localhost", day(2921)).expect("old serving cert");

        let w = write(&with_new_ca, &config, day(2921));
        assert!(
            matches!(w.reason, Reason::ServingCertNotFromNewestCa(_)),
            "{}",
            w.reason
        );
        assert_eq!(w.publish_first.as_deref(), Some(bundle.as_slice()));
        let rotated = apply(&with_new_ca, &config, &w);
        verify(&rotated, &bundle, "localhost", day(2921)).expect("against the bundle");
        let new_only = &bundle[..bundle.len() - old_bundle.len()];
        verify(&rotated, new_only, "localhost", day(2921)).expect("against the new CA");
        assert!(verify(&rotated, &old_bundle, "localhost", day(2921)).is_err());
        let (rotated, steps) = settle(Some(rotated), &config, day(2921));
        assert!(steps.is_empty(), "{steps:?}");

        // Once the old CA expired (day 3650) it leaves the bundle.
        let (dropped, steps) = settle(Some(rotated), &config, day(3651));
        assert_eq!(
            steps,
            [
                Step::Write(Reason::ExpiredCaDropped(1)),
                Step::Write(Reason::ServingCertExpiring),
            ]
        );
        assert_eq!(value(&dropped, CA_CRT), new_only);
        verify(&dropped, new_only, "localhost", day(3651)).expect("after the drop");
    }

    #[test]
    fn serving_certificate_names_other_than_configured_are_reissued() {
        let secret = fresh(day(0));
        for change in [
            |c: &mut CertConfig| {
                c.dns_names
                    .push("sidekey-webhook.sidekey.svc.cluster.local".into())
            },
            |c: &mut CertConfig| c.ip_addresses = vec!["::1".parse().expect("ip")],
            |c: &mut CertConfig| c.dns_names.truncate(1),
        ] {
            let mut config = config();
            change(&mut config);
            let w = write(&secret, &config, day(1));
            assert_eq!(w.reason, Reason::ServingCertSansDiffer);
            assert!(w.publish_first.is_none());
            assert_eq!(w.contents.ca_crt, value(&secret, CA_CRT));
            let reissued = apply(&secret, &config, &w);
            let der = certs(value(&reissued, TLS_CRT)).remove(0);
            assert_eq!(
                parse_leaf(&der).expect("leaf").sans,
                Sans::of_config(&config)
            );
        }
        // Order and case do not count.
        let mut config = config();
        config.dns_names.reverse();
        config.dns_names[0] = config.dns_names[0].to_uppercase();
        assert!(matches!(
            plan(Some(&secret), &config, day(1)),
            Ok(Plan::Keep { .. })
        ));
    }

    #[test]
    fn a_garbage_secret_is_reissued() {
        let config = config();
        let mut garbage = Secret {
            type_: Some(SECRET_TYPE.into()),
            ..Default::default()
        };
        garbage.data = Some(
            [TLS_CRT, TLS_KEY, CA_CRT, CA_KEY]
                .into_iter()
                .map(|k| (k.to_owned(), ByteString(b"garbage".to_vec())))
                .collect(),
        );
        let w = write(&garbage, &config, day(0));
        assert!(matches!(w.reason, Reason::NoCa(_)), "{}", w.reason);
        let (secret, steps) = settle(Some(garbage), &config, day(0));
        assert_eq!(steps.len(), 3, "{steps:?}");
        verify(&secret, value(&secret, CA_CRT), "localhost", day(0)).expect("reissued");

        // A good CA with a broken serving cert: reissued, bundle published
        // first since nothing it signed was served.
        let mut broken = secret.clone();
        broken.data.as_mut().expect("data").insert(
            TLS_CRT.into(),
            ByteString(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec()),
        );
        let w = write(&broken, &config, day(0));
        assert!(
            matches!(w.reason, Reason::ServingCertUnusable(_)),
            "{}",
            w.reason
        );
        assert_eq!(w.publish_first.as_deref(), Some(value(&secret, CA_CRT)));

        // A key that is not the serving cert's.
        let mut mismatched = secret.clone();
        let other = fresh(day(0));
        mismatched
            .data
            .as_mut()
            .expect("data")
            .insert(TLS_KEY.into(), ByteString(value(&other, TLS_KEY).to_vec()));
        let w = write(&mismatched, &config, day(0));
        assert!(
            matches!(&w.reason, Reason::ServingCertUnusable(why) if why.contains("does not match")),
            "{}",
            w.reason
        );
        assert!(
            w.publish_first.is_none(),
            "the served cert was signed by the newest CA"
        );

        // A CA key that is not the CA's: a new CA, the old one kept while
        // it is valid (the served cert may still be signed by it).
        let mut foreign = secret.clone();
        foreign
            .data
            .as_mut()
            .expect("data")
            .insert(CA_KEY.into(), ByteString(value(&other, CA_KEY).to_vec()));
        let w = write(&foreign, &config, day(0));
        assert!(matches!(w.reason, Reason::CaUnusable(_)), "{}", w.reason);
        assert_eq!(certs(&w.contents.ca_crt).len(), 2);
        assert!(w.contents.ca_crt.ends_with(value(&secret, CA_CRT)));
    }

    #[test]
    fn a_foreign_ca_that_outlives_ours_stays_behind_it_without_new_cas_each_round() {
        let config = config();
        // As cert-manager might leave it when switching to managed mode: a
        // 20-year CA in ca.crt, no ca.key.
        let key = KeyPair::generate().expect("key");
        let mut params = ca_params("someone else's CA");
        set_validity(&mut params, unix(day(0)), unix(day(20 * 365)));
        let foreign = params.self_signed(&key).expect("CA").pem();
        let secret = Secret {
            data: Some(
                [(CA_CRT.to_owned(), ByteString(foreign.clone().into_bytes()))]
                    .into_iter()
                    .collect(),
            ),
            ..Default::default()
        };
        let (secret, steps) = settle(Some(secret), &config, day(0));
        assert!(
            matches!(&steps[0], Step::Write(Reason::CaUnusable(_))),
            "{steps:?}"
        );
        let bundle = value(&secret, CA_CRT).to_vec();
        assert_eq!(certs(&bundle).len(), 2);
        assert!(bundle.ends_with(foreign.as_bytes()), "ours first");
        for later in [day(1), day(100)] {
            let (_, steps) = settle(Some(secret.clone()), &config, later);
            assert!(steps.is_empty(), "{steps:?}");
        }
    }

    #[test]
    fn a_secret_without_the_label_is_labelled() {
        let config = config();
        let mut secret = fresh(day(0));
        secret.metadata.labels = None;
        let w = write(&secret, &config, day(0));
        assert_eq!(w.reason, Reason::Unlabelled);
        assert_eq!(w.contents, Contents::of(Some(&secret)));
    }

    #[test]
    fn configuration_without_names_is_refused() {
        let mut config = config();
        config.dns_names.clear();
        config.ip_addresses.clear();
        assert!(matches!(
            plan(None, &config, day(0)),
            Err(CertError::Config(_))
        ));
        let mut config = self::config();
        config.dns_names.push("bad name".into());
        assert!(matches!(
            plan(None, &config, day(0)),
            Err(CertError::Config(_))
        ));
    }

    #[test]
    fn debug_output_never_shows_a_private_key() {
        let config = config();
        let secret = fresh(day(0));
        let keys: Vec<String> = [CA_KEY, TLS_KEY]
            .iter()
            .map(|k| String::from_utf8(value(&secret, k).to_vec()).expect("PEM"))
            .collect();
        // Every base64 line of both keys.
        let secrets: Vec<&str> = keys
            .iter()
            .flat_map(|k| k.lines())
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let mut shown = Vec::new();
        let w = write(&secret, &config, day(300));
        shown.push(format!("{w:?}"));
        shown.push(format!("{:?}", plan(None, &config, day(0))));
        shown.push(format!("{:?}", Contents::of(Some(&secret))));
        let serving = ServingCert::new();
        serving.load_at(&secret, day(1)).expect("load");
        shown.push(format!("{serving:?}"));
        shown.push(format!("{:?}", serving.server_config()));
        // A key with its header mangled must not be echoed by the error.
        let mut bad = secret.clone();
        let mangled = keys[1].replace("PRIVATE KEY", "PRIVATE KEX");
        bad.data
            .as_mut()
            .expect("data")
            .insert(TLS_KEY.into(), ByteString(mangled.into_bytes()));
        let e = ServingCert::new()
            .load_at(&bad, day(1))
            .expect_err("bad key");
        shown.push(format!("{e} {e:?}"));
        for text in shown {
            assert!(!text.contains("PRIVATE KEY"), "{text}");
            for line in &secrets {
                assert!(!text.contains(line), "key material in: {text}");
            }
        }
    }

    #[test]
    fn load_keeps_the_previous_certificate_when_a_version_is_bad() {
        let first = fresh(day(0));
        let serving = ServingCert::new();
        assert!(!serving.is_loaded() && serving.ca_bundle().is_none());
        assert!(serving.load_at(&first, day(1)).expect("load"));
        assert!(
            !serving.load_at(&first, day(1)).expect("reload"),
            "same version"
        );
        assert_eq!(serving.ca_bundle().as_deref(), Some(value(&first, CA_CRT)));

        let other = fresh(day(0));
        let mut mismatched = first.clone();
        mismatched
            .data
            .as_mut()
            .expect("data")
            .insert(TLS_KEY.into(), ByteString(value(&other, TLS_KEY).to_vec()));
        let e = serving.load_at(&mismatched, day(1)).expect_err("mismatch");
        assert!(matches!(e, CertError::Invalid { key: TLS_KEY, .. }), "{e}");
        let e = serving.load_at(&other, day(400)).expect_err("expired");
        assert!(matches!(e, CertError::Expired { .. }), "{e}");
        let mut empty = first.clone();
        empty
            .data
            .as_mut()
            .expect("data")
            .insert(TLS_CRT.into(), ByteString(Vec::new()));
        assert!(matches!(
            serving.load_at(&empty, day(1)),
            Err(CertError::NotIssued { .. })
        ));
        assert_eq!(serving.ca_bundle().as_deref(), Some(value(&first, CA_CRT)));

        // cert-manager's layout without ca.crt loads too.
        let mut no_ca = other.clone();
        no_ca.data.as_mut().expect("data").remove(CA_CRT);
        assert!(serving.load_at(&no_ca, day(1)).expect("load"));
        assert!(serving.ca_bundle().is_none());
    }

    /// One TLS handshake and a round trip: the client trusts only `trust`.
    async fn handshake(
        server: Arc<ServerConfig>,
        trust: &[u8],
        name: &str,
    ) -> Result<Vec<u8>, String> {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let served = tokio::spawn(async move {
            let mut tls = acceptor.accept(server_io).await?;
            let mut ping = [0; 4];
            tls.read_exact(&mut ping).await?;
            tls.write_all(b"pong").await?;
            tls.shutdown().await
        });
        let mut roots = rustls::RootCertStore::empty();
        for ca in certs(trust) {
            roots.add(ca).map_err(|e| e.to_string())?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
        let result = async {
            let mut tls = connector
                .connect(name, client_io)
                .await
                .map_err(|e| e.to_string())?;
            let alpn = tls
                .get_ref()
                .1
                .alpn_protocol()
                .map(<[u8]>::to_vec)
                .unwrap_or_default();
            tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
            let mut pong = [0; 4];
            tls.read_exact(&mut pong).await.map_err(|e| e.to_string())?;
            assert_eq!(&pong, b"pong");
            Ok(alpn)
        }
        .await;
        if result.is_ok() {
            served
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        } else {
            served.abort();
        }
        result
    }

    #[tokio::test]
    async fn tls_clients_trusting_the_bundle_connect_before_and_after_a_swap() {
        let config = config();
        let now = SystemTime::now();
        let serving = ServingCert::new();
        let server = serving.server_config();
        let first = fresh(now);
        let first_bundle = value(&first, CA_CRT).to_vec();
        assert!(
            handshake(server.clone(), &first_bundle, "localhost")
                .await
                .is_err(),
            "nothing loaded"
        );

        serving.load(&first).expect("load");
        let alpn = handshake(server.clone(), &first_bundle, "localhost")
            .await
            .expect("before");
        assert_eq!(alpn, b"http/1.1");
        handshake(server.clone(), &first_bundle, "127.0.0.1")
            .await
            .expect("by IP");
        assert!(
            handshake(server.clone(), &first_bundle, "elsewhere.test")
                .await
                .is_err()
        );

        // A new CA (the old key lost): the bundle holds both, the serving
        // cert is signed by the new one.
        let mut lost_key = first.clone();
        lost_key.data.as_mut().expect("data").remove(CA_KEY);
        let (rotated, _) = settle(Some(lost_key), &config, now);
        let rotated_bundle = value(&rotated, CA_CRT).to_vec();
        assert_eq!(certs(&rotated_bundle).len(), 2);
        serving.load(&rotated).expect("swap");
        assert_eq!(serving.ca_bundle(), Some(rotated_bundle.clone()));
        // Same server config: the swap applies to new handshakes.
        handshake(server.clone(), &rotated_bundle, "localhost")
            .await
            .expect("after");
        assert!(
            handshake(server.clone(), &first_bundle, "localhost")
                .await
                .is_err(),
            "the new serving cert is not signed by the old CA"
        );
        let new_ca_only = &rotated_bundle[..rotated_bundle.len() - first_bundle.len()];
        handshake(server, new_ca_only, "localhost")
            .await
            .expect("new CA alone");
    }
}
