//! The operator's one error type. Each variant is either a problem with the
//! user's `ApiDatasource` (reported in its status, fixed by the user) or a
//! failure of the operator itself (retried with backoff by the error policy).

use std::net::SocketAddr;

use sidekey_crds::SpecError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    // ---- problems with the datasource: status reasons, never retried ----
    /// The spec itself is wrong (URL, authentication block, header name).
    #[error("{0}")]
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

    // ---- failures of the operator: retried with backoff ----
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },

    #[error("the ApiDatasource has no {0}")]
    MissingMetadata(&'static str),

    #[error("invalid flags: {0}")]
    InvalidFlags(String),

    #[error("no Kubernetes client configuration (KUBECONFIG or in-cluster): {0}")]
    ClientConfig(#[source] kube::Error),

    #[error("admin server cannot listen on {addr}: {source}")]
    AdminListen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("webhook cannot listen on {addr}: {source}")]
    WebhookListen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("webhook certificate: {0}")]
    Certificate(#[source] crate::webhook::certs::CertError),

    #[error("leader election on Lease {namespace}/{name}: {source}")]
    LeaderElection {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("lost leadership of Lease {namespace}/{name}")]
    LostLeadership { namespace: String, name: String },
}

impl Error {
    /// Wraps a Kubernetes API error with what the operator was doing.
    pub fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            action: action.into(),
            source,
        }
    }

    /// True for problems the user fixes in the datasource or its Secrets;
    /// false for failures of the operator, which are retried.
    pub fn is_invalid_datasource(&self) -> bool {
        matches!(
            self,
            Self::Spec(_)
                | Self::SecretNotFound { .. }
                | Self::SecretKeyNotFound { .. }
                | Self::SignatureKeyTooShort { .. }
                | Self::InvalidCertificate { .. }
        )
    }

    /// The CamelCase name of what happened: the `Ready` condition's reason
    /// for datasource problems, the metric label for every error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Spec(e) => e.reason(),
            Self::SecretNotFound { .. } => "SecretNotFound",
            Self::SecretKeyNotFound { .. } => "SecretKeyNotFound",
            Self::SignatureKeyTooShort { .. } => "SignatureKeyTooShort",
            Self::InvalidCertificate { .. } => "InvalidCertificate",
            Self::Kube { .. } => "KubeApiError",
            Self::MissingMetadata(_) => "MissingMetadata",
            Self::InvalidFlags(_) => "InvalidFlags",
            Self::ClientConfig(_) => "ClientConfig",
            Self::AdminListen { .. } => "AdminListen",
            Self::WebhookListen { .. } => "WebhookListen",
            Self::Certificate(_) => "WebhookCertificate",
            Self::LeaderElection { .. } => "LeaderElection",
            Self::LostLeadership { .. } => "LostLeadership",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datasource_problems_are_told_apart_from_operator_failures() {
        let missing = Error::SecretNotFound {
            namespace: "shop".into(),
            secret: "payments-oauth".into(),
            field: "spec.authentication.oauth2.clientSecretRef",
        };
        assert!(missing.is_invalid_datasource());
        assert_eq!(missing.reason(), "SecretNotFound");
        let msg = missing.to_string();
        assert!(
            msg.contains("\"payments-oauth\"") && msg.contains("\"shop\""),
            "{msg}"
        );
        assert!(!Error::MissingMetadata("namespace").is_invalid_datasource());
    }

    #[test]
    fn short_signature_key_message_names_the_length_needed() {
        let e = Error::SignatureKeyTooShort {
            secret: "signing".into(),
            key: "key".into(),
            min: 32,
        };
        assert_eq!(e.reason(), "SignatureKeyTooShort");
        assert!(e.to_string().contains("at least 32 characters"), "{e}");
    }
}
