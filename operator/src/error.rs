//! The operator's errors, one type per place they surface, each with its
//! one mapping:
//!
//! | type | surfaces in | mapped by | to |
//! | --- | --- | --- | --- |
//! | [`DatasourceError`] | a reconcile, the user's to fix | [`DatasourceError::reason`] | the `Ready=False` reason and a Warning Event; never retried fast |
//! | [`ReconcileError`] | a reconcile, the operator's failure | [`ReconcileError::reason`] | the `reconcile_errors` metric label; retried with backoff |
//! | [`StartupError`] | [`crate::run`]: flags, listeners, the election | [`StartupError::exit_code`] | the process's exit code |
//!
//! The webhook's refusals ([`crate::webhook::error::InjectError`], the
//! answer to an admission request) and its certificate errors
//! ([`crate::webhook::certs::CertError`]) have types of their own.
//!
//! A wrapped error is a `#[source]`, not part of the message: log with
//! [`Chain`] to see the whole chain.

use std::net::SocketAddr;

use sidekey_crds::SpecError;
use thiserror::Error;

/// A problem with the user's `ApiDatasource` or its Secrets. Its message is
/// the `Ready` condition's message and the Event's note: it names what to
/// fix.
#[derive(Debug, Error)]
pub enum DatasourceError {
    /// The spec itself is wrong (URL, authentication block, header name).
    #[error(transparent)]
    Spec(#[from] SpecError),

    #[error(
        "Secret {secret:?} (named in {field}) does not exist in namespace {namespace:?}: \
         create it, or point {field}.name at an existing Secret"
    )]
    SecretNotFound {
        namespace: String,
        secret: String,
        field: &'static str,
    },

    #[error(
        "Secret {secret:?} in namespace {namespace:?} has no key {key:?} (named in {field}): \
         add the key to the Secret, or point {field}.key at an existing key"
    )]
    SecretKeyNotFound {
        namespace: String,
        secret: String,
        key: String,
        field: &'static str,
    },

    #[error(
        "the signature key in Secret {secret:?} key {key:?} is too short: it needs at least \
         {min} characters"
    )]
    SignatureKeyTooShort {
        secret: String,
        key: String,
        min: usize,
    },

    #[error("Secret {secret:?} key {key:?} (named in {field}) cannot be the credential: {detail}")]
    InvalidSecretValue {
        secret: String,
        key: String,
        field: &'static str,
        detail: String,
    },

    #[error(
        "Secret {secret:?} key {key:?} (named in spec.tls.caCertificateSecretRef) holds no \
         usable CA certificate: {detail}; put one or more PEM certificates \
         (-----BEGIN CERTIFICATE-----) in it"
    )]
    InvalidCertificate {
        secret: String,
        key: String,
        detail: String,
    },
}

impl DatasourceError {
    /// The `Ready` condition's reason (CamelCase), also the Event's.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Spec(e) => e.reason(),
            Self::SecretNotFound { .. } => "SecretNotFound",
            Self::SecretKeyNotFound { .. } => "SecretKeyNotFound",
            Self::SignatureKeyTooShort { .. } => "SignatureKeyTooShort",
            Self::InvalidSecretValue { .. } => "InvalidSecretValue",
            Self::InvalidCertificate { .. } => "InvalidCertificate",
        }
    }
}

/// Why a reconcile did not finish. `Invalid` is written into the status
/// by the reconcile itself; the others reach the error policy, which
/// retries them with backoff.
#[derive(Debug, Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Invalid(#[from] DatasourceError),

    /// `action` says what the operator was doing.
    #[error("{action}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },

    #[error("the ApiDatasource has no {0}")]
    MissingMetadata(&'static str),

    /// The provider did not answer a refresh; retried with backoff while
    /// the access token is still valid.
    #[error("refreshing the access token of ApiDatasource {datasource:?}: {reason}")]
    TokenEndpoint { datasource: String, reason: String },

    /// Writing the token Secret failed, or lost a race with another write.
    #[error("storing the tokens")]
    TokenSecret(#[source] crate::oauth::tokens::SaveError),
}

impl ReconcileError {
    /// Wraps a Kubernetes API error with what the operator was doing.
    pub fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            action: action.into(),
            source,
        }
    }

    /// The CamelCase name of what happened: the metric label of a failed
    /// reconcile, and for `Invalid` the `Ready` condition's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid(e) => e.reason(),
            Self::Kube { .. } => "KubeApiError",
            Self::MissingMetadata(_) => "MissingMetadata",
            Self::TokenEndpoint { .. } => "TokenEndpointUnavailable",
            Self::TokenSecret(_) => "TokenSecretWriteFailed",
        }
    }
}

/// Why the process stops with an error: before it serves (flags, client
/// configuration, listeners, joining the election) or later, when it loses
/// leadership and must not reconcile any more.
#[derive(Debug, Error)]
pub enum StartupError {
    #[error("invalid flags: {0}")]
    InvalidFlags(String),

    #[error("no Kubernetes client configuration (KUBECONFIG or in-cluster)")]
    ClientConfig(#[source] kube::Error),

    #[error("cannot read the API server's version (for --native-sidecars auto)")]
    ServerVersion(#[source] kube::Error),

    #[error("admin server cannot listen on {addr}")]
    AdminListen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("the authorization endpoint cannot listen on {addr}")]
    OAuthListen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("webhook cannot listen on {addr}")]
    WebhookListen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot join the leader election on Lease {namespace}/{name}")]
    LeaderElection {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("lost leadership of Lease {namespace}/{name}")]
    LostLeadership { namespace: String, name: String },
}

impl StartupError {
    /// The process's exit code: 2 for flags that cannot work (as clap
    /// exits for flags it cannot parse), 1 for the rest. Losing leadership
    /// is 1 too: a fresh process rejoins the election.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::InvalidFlags(_) => 2,
            Self::ClientConfig(_)
            | Self::ServerVersion(_)
            | Self::AdminListen { .. }
            | Self::WebhookListen { .. }
            | Self::OAuthListen { .. }
            | Self::LeaderElection { .. }
            | Self::LostLeadership { .. } => 1,
        }
    }
}

pub use sidekey_plumbing::chain::Chain;

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_not_found() -> DatasourceError {
        DatasourceError::SecretNotFound {
            namespace: "shop".into(),
            secret: "payments-oauth".into(),
            field: "spec.authentication.oauth2.clientSecretRef",
        }
    }

    #[test]
    fn each_datasource_problem_has_its_condition_reason() {
        let text = |s: &str| s.to_owned();
        let cases = [
            (
                DatasourceError::Spec(SpecError::InvalidUrl {
                    field: "spec.url",
                    url: text("nope"),
                    reason: text("relative URL without a base"),
                }),
                "InvalidUrl",
            ),
            (
                DatasourceError::Spec(SpecError::InvalidAuthentication(text("no block"))),
                "InvalidAuthentication",
            ),
            (
                DatasourceError::Spec(SpecError::InvalidHeaderName {
                    field: "spec.headers",
                    name: text("a b"),
                }),
                "InvalidHeader",
            ),
            (secret_not_found(), "SecretNotFound"),
            (
                DatasourceError::SecretKeyNotFound {
                    namespace: text("shop"),
                    secret: text("s"),
                    key: text("k"),
                    field: "spec.signature.secretRef",
                },
                "SecretKeyNotFound",
            ),
            (
                DatasourceError::SignatureKeyTooShort {
                    secret: text("signing"),
                    key: text("key"),
                    min: 32,
                },
                "SignatureKeyTooShort",
            ),
            (
                DatasourceError::InvalidSecretValue {
                    secret: text("token"),
                    key: text("token"),
                    field: "spec.authentication.bearerToken.tokenSecretRef",
                    detail: text("it is empty"),
                },
                "InvalidSecretValue",
            ),
            (
                DatasourceError::InvalidCertificate {
                    secret: text("ca"),
                    key: text("ca.crt"),
                    detail: text("no PEM block"),
                },
                "InvalidCertificate",
            ),
        ];
        for (problem, reason) in cases {
            assert_eq!(problem.reason(), reason, "{problem}");
            // A reconcile that met it reports the same reason.
            let wrapped = ReconcileError::from(problem);
            assert_eq!(wrapped.reason(), reason);
        }
    }

    #[test]
    fn datasource_messages_name_what_to_fix() {
        let msg = secret_not_found().to_string();
        assert!(
            msg.contains("\"payments-oauth\"") && msg.contains("\"shop\""),
            "{msg}"
        );
        let short = DatasourceError::SignatureKeyTooShort {
            secret: "signing".into(),
            key: "key".into(),
            min: 32,
        };
        assert!(
            short.to_string().contains("at least 32 characters"),
            "{short}"
        );
        // Wrapping it changes nothing the user reads.
        let wrapped = ReconcileError::from(secret_not_found());
        assert_eq!(wrapped.to_string(), msg);
    }

    #[test]
    fn operator_failures_have_their_metric_labels() {
        let serde = serde_json::from_str::<()>("x").expect_err("not JSON");
        let kube = ReconcileError::kube("reading Secret \"s\"", kube::Error::SerdeError(serde));
        assert_eq!(kube.reason(), "KubeApiError");
        assert_eq!(
            ReconcileError::MissingMetadata("uid").reason(),
            "MissingMetadata"
        );
    }

    #[test]
    fn a_kube_error_keeps_its_source_and_the_chain_shows_it_once() {
        let serde = serde_json::from_str::<()>("x").expect_err("not JSON");
        let detail = serde.to_string();
        let e = ReconcileError::kube(
            "applying ConfigMap \"a-sidekey\"",
            kube::Error::SerdeError(serde),
        );
        assert_eq!(e.to_string(), "applying ConfigMap \"a-sidekey\"");
        let source = std::error::Error::source(&e).expect("a source");
        assert!(
            matches!(
                source.downcast_ref::<kube::Error>(),
                Some(kube::Error::SerdeError(_))
            ),
            "{source:?}"
        );
        // kube's message repeats serde_json's: shown once.
        let chain = Chain(&e).to_string();
        assert_eq!(
            chain,
            format!("applying ConfigMap \"a-sidekey\": Error deserializing response: {detail}")
        );
    }

    #[test]
    fn invalid_flags_exit_2_every_other_stop_1() {
        let kube = || kube::Error::TlsRequired;
        let io = || std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let addr: SocketAddr = ([127, 0, 0, 1], 8080).into();
        let lease = || ("sidekey".to_owned(), "sidekey-operator".to_owned());
        let cases = [
            (StartupError::InvalidFlags("--concurrency is 0".into()), 2),
            (StartupError::ClientConfig(kube()), 1),
            (StartupError::ServerVersion(kube()), 1),
            (StartupError::AdminListen { addr, source: io() }, 1),
            (StartupError::WebhookListen { addr, source: io() }, 1),
            (
                StartupError::LeaderElection {
                    namespace: lease().0,
                    name: lease().1,
                    source: kube(),
                },
                1,
            ),
            (
                StartupError::LostLeadership {
                    namespace: lease().0,
                    name: lease().1,
                },
                1,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(e.exit_code(), code, "{e}");
        }
    }

    #[test]
    fn startup_errors_keep_their_source_out_of_the_message() {
        let e = StartupError::AdminListen {
            addr: ([127, 0, 0, 1], 8080).into(),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        let source = std::error::Error::source(&e).expect("a source").to_string();
        assert!(!e.to_string().contains(&source), "{e}");
        assert_eq!(Chain(&e).to_string(), format!("{e}: {source}"));
        // What the leader-election test looks for in the logs.
        let lost = StartupError::LostLeadership {
            namespace: "sidekey".into(),
            name: "sidekey-operator".into(),
        };
        assert!(lost.to_string().contains("lost leadership"), "{lost}");
    }
}
