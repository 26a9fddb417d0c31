//! The crate's one error type, and what each error looks like to the app:
//! an HTTP status and a JSON body `{"error": ..., "reason": ...}`.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use sidekey_crds::SpecError;
use thiserror::Error;

/// Everything that can go wrong, at startup, on reload or on a request.
/// Messages name files, secrets and keys, never secret values.
#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "--listen {addr} is not a loopback address: the proxy carries credentials and must listen on 127.0.0.1 or [::1] only"
    )]
    NonLoopbackListen { addr: std::net::SocketAddr },
    #[error("no --datasource given: name at least one datasource file")]
    NoDatasource,
    #[error(
        "{datasources} --datasource but {listens} --listen given: each datasource needs its own --listen, the i-th --listen serving the i-th --datasource"
    )]
    ListenCountMismatch { datasources: usize, listens: usize },
    #[error(
        "--listen {addr} is given to two datasources: each datasource needs an address of its own"
    )]
    DuplicateListen { addr: std::net::SocketAddr },
    #[error(
        "datasource files {first} and {second} are both named {name:?}: the datasources one sidecar serves need distinct names"
    )]
    DuplicateDatasourceName {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error(
        "datasource file {path} now names {to:?} instead of {from:?}: a datasource cannot be renamed while it is served; restart the sidecar"
    )]
    DatasourceRenamed {
        path: PathBuf,
        from: String,
        to: String,
    },
    #[error(
        "{addr} is already in use by another process (another sidecar?): two proxies on one \
         port would split the app's connections between them; pick another port"
    )]
    AddressInUse { addr: std::net::SocketAddr },
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        addr: std::net::SocketAddr,
        reason: String,
    },
    #[error("cannot start worker thread {index}: {reason}")]
    Worker { index: usize, reason: String },
    #[error("cannot read datasource file {path}: {reason}")]
    ReadDatasource { path: PathBuf, reason: String },
    #[error("datasource file {path}: {source}")]
    Spec { path: PathBuf, source: SpecError },
    #[error("secret {secret:?} key {key:?}: cannot read {path}: {reason}")]
    ReadSecret {
        secret: String,
        key: String,
        path: PathBuf,
        reason: String,
    },
    #[error("secret {secret:?} key {key:?}: the path {path:?} leaves the secrets directory")]
    SecretPathEscapes {
        secret: String,
        key: String,
        path: String,
    },
    #[error("secret {secret:?} key {key:?} is not valid UTF-8 text")]
    SecretNotText { secret: String, key: String },
    #[error("secret {secret:?} key {key:?} is empty")]
    SecretEmpty { secret: String, key: String },
    #[error(
        "signature key (secret {secret:?} key {key:?}) is {length} characters long; at least {min} are needed"
    )]
    SignatureKeyTooShort {
        secret: String,
        key: String,
        length: usize,
        min: usize,
    },
    #[error("signature key (secret {secret:?} key {key:?}) cannot be used: {reason}")]
    SignatureKey {
        secret: String,
        key: String,
        reason: String,
    },
    #[error("CA certificate (secret {secret:?} key {key:?}): {reason}")]
    InvalidCertificate {
        secret: String,
        key: String,
        reason: String,
    },
    #[error("{field} {name:?}: the value is not a valid HTTP header value")]
    InvalidHeaderValue { field: &'static str, name: String },
    #[error("{field}: {reason}")]
    InvalidSetting { field: &'static str, reason: String },
    #[error("cannot set up TLS: {reason}")]
    Tls { reason: String },

    #[error("{reason}")]
    BadRequest { reason: String },
    #[error("the upstream cannot be reached: {reason}")]
    UpstreamUnreachable { reason: String },
    #[error("TLS with the upstream failed: {reason}")]
    UpstreamTls { reason: String },
    #[error("the upstream failed: {reason}")]
    UpstreamFailed { reason: String },
    #[error("the upstream did not answer within {}s", after.as_secs_f64())]
    UpstreamTimeout { after: Duration },
    #[error("no valid access token: {reason}")]
    TokenUnavailable { reason: String },
}

impl Error {
    /// The HTTP status an app sees for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::UpstreamUnreachable { .. }
            | Self::UpstreamTls { .. }
            | Self::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            Self::TokenUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short, stable name for the error: the `error` field of the body
    /// and the label a log line carries.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NonLoopbackListen { .. } => "non_loopback_listen",
            Self::NoDatasource
            | Self::ListenCountMismatch { .. }
            | Self::DuplicateListen { .. } => "invalid_options",
            Self::DuplicateDatasourceName { .. } => "duplicate_datasource_name",
            Self::DatasourceRenamed { .. } => "datasource_renamed",
            Self::Bind { .. } => "bind_failed",
            Self::AddressInUse { .. } => "address_in_use",
            Self::Worker { .. } => "worker_failed",
            Self::ReadDatasource { .. } => "datasource_unreadable",
            Self::Spec { .. } => "invalid_datasource",
            Self::ReadSecret { .. } | Self::SecretPathEscapes { .. } => "secret_unreadable",
            Self::SecretNotText { .. } | Self::SecretEmpty { .. } => "invalid_secret",
            Self::SignatureKeyTooShort { .. } => "signature_key_too_short",
            Self::SignatureKey { .. } => "invalid_signature_key",
            Self::InvalidCertificate { .. } => "invalid_certificate",
            Self::InvalidHeaderValue { .. } | Self::InvalidSetting { .. } => "invalid_datasource",
            Self::Tls { .. } => "tls_setup_failed",
            Self::BadRequest { .. } => "bad_request",
            Self::UpstreamUnreachable { .. } => "upstream_unreachable",
            Self::UpstreamTls { .. } => "upstream_tls_failed",
            Self::UpstreamFailed { .. } => "upstream_failed",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::TokenUnavailable { .. } => "token_unavailable",
        }
    }

    /// The JSON body `{"error": code, "reason": message}`.
    pub fn body(&self) -> Bytes {
        let body = serde_json::json!({ "error": self.code(), "reason": self.to_string() });
        Bytes::from(body.to_string())
    }

    /// The response an app receives for this error.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.body()));
        *response.status_mut() = self.status();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// Every message in an error's chain, joined, with repeats dropped: hyper
/// wraps an `io::Error` that wraps a rustls error, and each level adds a word.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_failure_is_a_503_with_a_json_body() {
        let e = Error::TokenUnavailable {
            reason: "the token endpoint refused the connection".into(),
        };
        let response = e.to_response();
        assert_eq!(response.status(), 503);
        let body: serde_json::Value = serde_json::from_slice(&e.body()).expect("json");
        assert_eq!(body["error"], "token_unavailable");
        assert!(
            body["reason"]
                .as_str()
                .is_some_and(|r| r.contains("refused")),
            "{body}"
        );
    }

    #[test]
    fn timeout_is_a_504() {
        let e = Error::UpstreamTimeout {
            after: Duration::from_secs(3),
        };
        assert_eq!(e.status(), 504);
        assert_eq!(e.to_string(), "the upstream did not answer within 3s");
    }
}
