//! The sidecar's errors, one type for each place they surface:
//!
//! - [`ConfigError`]: a datasource file, or a secret, TLS setting or
//!   signature key it names, cannot be used. At startup it stops the
//!   process (as a [`StartupError::Config`]); on a reload it is logged with
//!   its [`code`](ConfigError::code), counted, and the previous
//!   configuration keeps serving.
//! - [`StartupError`]: the process cannot start: bad flags, a port that
//!   cannot be bound, a worker thread that cannot be started, or a
//!   [`ConfigError`]. [`exit_code`](StartupError::exit_code) is the
//!   process's exit code.
//! - [`RequestError`]: one request cannot be served. The app sees an HTTP
//!   [`status`](RequestError::status) and a JSON body `{"error": code,
//!   "reason": sentence}`.
//!
//! - [`BodyError`]: the upstream's response body failed after its head
//!   was passed to the app. The app's response body ends with it (the app
//!   cannot take the cut body for a whole one); it is logged and counted
//!   by its [`reason`](BodyError::reason).
//!
//! Each error's message names files, secrets and keys, never secret
//! values, and leaves out the error it wraps: that is its `source()`, and
//! [`chain`] gives the whole sentence, as logs and error bodies show it.

use std::error::Error as StdError;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use sidekey_crds::SpecError;
use sidekey_oauth::{EndpointError, TlsError};
use thiserror::Error;

/// An error of any type, for sources that come in several.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// A datasource, or something it names, cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read datasource file {path}")]
    ReadDatasource {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("datasource file {path}")]
    Spec {
        path: PathBuf,
        #[source]
        source: SpecError,
    },
    #[error(
        "datasource file {path} now names {to:?} instead of {from:?}: a datasource cannot be renamed while it is served; restart the sidecar"
    )]
    DatasourceRenamed {
        path: PathBuf,
        from: String,
        to: String,
    },
    #[error("secret {secret:?} key {key:?}: cannot read {path}")]
    ReadSecret {
        secret: String,
        key: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A secret file the datasource names was not read with it: a bug.
    #[error("secret {secret:?} key {key:?}: cannot read {path}: not read")]
    SecretNotRead {
        secret: String,
        key: String,
        path: PathBuf,
    },
    #[error("secret {secret:?} key {key:?}: the path {path:?} leaves the secrets directory")]
    SecretPathEscapes {
        secret: String,
        key: String,
        path: String,
    },
    #[error("secret {secret:?} key {key:?} is not valid UTF-8 text")]
    SecretNotText { secret: String, key: String },
    #[error("secret {secret:?} key {key:?} is not an RFC 3339 time")]
    InvalidTokenExpiry {
        secret: String,
        key: String,
        #[source]
        source: jiff::Error,
    },
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
    #[error("signature key (secret {secret:?} key {key:?}) cannot be used")]
    SignatureKey {
        secret: String,
        key: String,
        #[source]
        source: SigningError,
    },
    #[error("{field} {name:?}: the value is not a valid HTTP header value")]
    InvalidHeaderValue { field: &'static str, name: String },
    #[error("{field}")]
    InvalidUrl {
        field: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("{field}: {reason}")]
    InvalidSetting { field: &'static str, reason: String },
    /// The datasource's TLS trust cannot be built: a CA bundle that is not
    /// one, or nothing at all to trust.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The OAuth 2.0 settings cannot make a token endpoint client.
    #[error(transparent)]
    TokenEndpoint(#[from] EndpointError),
}

/// Why a signature key cannot sign (the source of
/// [`ConfigError::SignatureKey`]).
#[derive(Debug, Error)]
pub enum SigningError {
    #[error("header name {name:?}")]
    HeaderName {
        name: String,
        #[source]
        source: http::header::InvalidHeaderName,
    },
    #[error(transparent)]
    Key(jsonwebtoken::errors::Error),
    #[error("signing failed")]
    Sign(#[source] jsonwebtoken::errors::Error),
    #[error(transparent)]
    HeaderValue(http::header::InvalidHeaderValue),
}

impl ConfigError {
    /// A short, stable name for the error, the label a log line carries.
    pub fn code(&self) -> &'static str {
        match self {
            Self::ReadDatasource { .. } => "datasource_unreadable",
            Self::Spec { .. } | Self::InvalidHeaderValue { .. } => "invalid_datasource",
            Self::InvalidUrl { .. } | Self::InvalidSetting { .. } => "invalid_datasource",
            Self::DatasourceRenamed { .. } => "datasource_renamed",
            Self::ReadSecret { .. } | Self::SecretNotRead { .. } => "secret_unreadable",
            Self::SecretPathEscapes { .. } => "secret_unreadable",
            Self::SecretNotText { .. }
            | Self::SecretEmpty { .. }
            | Self::InvalidTokenExpiry { .. } => "invalid_secret",
            Self::SignatureKeyTooShort { .. } => "signature_key_too_short",
            Self::SignatureKey { .. } => "invalid_signature_key",
            Self::Tls(TlsError::InvalidCertificate { .. }) => "invalid_certificate",
            Self::Tls(TlsError::NoRoots) => "invalid_datasource",
            Self::TokenEndpoint(
                EndpointError::Missing { .. } | EndpointError::InvalidUrl { .. },
            ) => "invalid_datasource",
            Self::Tls(TlsError::Setup(_)) | Self::TokenEndpoint(EndpointError::Client(_)) => {
                "tls_setup_failed"
            }
        }
    }
}

/// The process cannot start.
#[derive(Debug, Error)]
pub enum StartupError {
    #[error(
        "--listen {addr} is not a loopback address: the proxy carries credentials and must listen on 127.0.0.1 or [::1] only"
    )]
    NonLoopbackListen { addr: SocketAddr },
    #[error("no --datasource given: name at least one datasource file")]
    NoDatasource,
    #[error(
        "{datasources} --datasource but {listens} --listen given: each datasource needs its own --listen, the i-th --listen serving the i-th --datasource"
    )]
    ListenCountMismatch { datasources: usize, listens: usize },
    #[error(
        "--listen {addr} is given to two datasources: each datasource needs an address of its own"
    )]
    DuplicateListen { addr: SocketAddr },
    #[error(
        "datasource files {first} and {second} are both named {name:?}: the datasources one sidecar serves need distinct names"
    )]
    DuplicateDatasourceName {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error(
        "{addr} is already in use by another process (another sidecar?): two proxies on one \
         port would split the app's connections between them; pick another port"
    )]
    AddressInUse { addr: SocketAddr },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the runtime")]
    Runtime(#[source] io::Error),
    #[error("cannot start worker thread {index}")]
    Worker {
        index: usize,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl StartupError {
    /// A short, stable name for the error, the label the log line carries.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NonLoopbackListen { .. } => "non_loopback_listen",
            Self::NoDatasource
            | Self::ListenCountMismatch { .. }
            | Self::DuplicateListen { .. } => "invalid_options",
            Self::DuplicateDatasourceName { .. } => "duplicate_datasource_name",
            Self::AddressInUse { .. } => "address_in_use",
            Self::Bind { .. } => "bind_failed",
            Self::Runtime(_) => "runtime_failed",
            Self::Worker { .. } => "worker_failed",
            Self::Config(e) => e.code(),
        }
    }

    /// The process's exit code: 2 for flags that do not go together (as
    /// for flags that do not parse), 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::NonLoopbackListen { .. }
            | Self::NoDatasource
            | Self::ListenCountMismatch { .. }
            | Self::DuplicateListen { .. }
            | Self::DuplicateDatasourceName { .. } => 2,
            Self::AddressInUse { .. }
            | Self::Bind { .. }
            | Self::Runtime(_)
            | Self::Worker { .. }
            | Self::Config(_) => 1,
        }
    }
}

/// One request cannot be served.
#[derive(Debug, Error)]
pub enum RequestError {
    #[error("{what}")]
    BadRequest {
        what: &'static str,
        #[source]
        source: BoxError,
    },
    /// The request as it would go upstream (with the credential, default
    /// headers and signature) is over the limit the app's side enforces.
    #[error(
        "the request's headers come to {size} bytes, counted as HTTP/2 does (32 more a field), over the limit of {limit}"
    )]
    HeadersTooLarge { size: usize, limit: usize },
    #[error("the upstream cannot be reached")]
    UpstreamUnreachable {
        #[source]
        source: BoxError,
    },
    /// `hint` is empty, or a parenthesised word on what to do.
    #[error("TLS with the upstream failed{hint}")]
    UpstreamTls {
        hint: &'static str,
        #[source]
        source: rustls::Error,
    },
    #[error("the upstream failed")]
    UpstreamFailed {
        #[source]
        source: BoxError,
    },
    #[error("the upstream did not answer within {}s", after.as_secs_f64())]
    UpstreamTimeout { after: Duration },
    /// The reason is the renewal task's, shared by every request waiting;
    /// `retry_after`: until its next token request, when one is scheduled.
    #[error("no valid access token: {reason}")]
    TokenUnavailable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The signature key, checked at load, failed on this request.
    #[error(transparent)]
    Signing(ConfigError),
}

impl RequestError {
    /// The HTTP status an app sees for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UpstreamUnreachable { .. }
            | Self::UpstreamTls { .. }
            | Self::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            Self::TokenUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Signing(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short, stable name for the error: the `error` field of the body
    /// and the label a log line carries.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "bad_request",
            Self::HeadersTooLarge { .. } => "headers_too_large",
            Self::UpstreamUnreachable { .. } => "upstream_unreachable",
            Self::UpstreamTls { .. } => "upstream_tls_failed",
            Self::UpstreamFailed { .. } => "upstream_failed",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::TokenUnavailable { .. } => "token_unavailable",
            Self::Signing(e) => e.code(),
        }
    }

    /// The JSON body `{"error": code, "reason": message}`, the message
    /// with every source's.
    pub fn body(&self) -> Bytes {
        let body = serde_json::json!({ "error": self.code(), "reason": chain(self) });
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
        if let Self::TokenUnavailable {
            retry_after: Some(after),
            ..
        } = self
        {
            // Whole seconds (RFC 9110), rounded up: a client that waits
            // this long finds the next attempt made.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

/// The upstream's response body failed part way; the app's response
/// body ends with this error.
#[derive(Debug, Error)]
pub enum BodyError {
    #[error("the upstream's response body failed")]
    Upstream(#[source] hyper::Error),
    #[error("the upstream's response body sent nothing for {}s", after.as_secs_f64())]
    IdleTimeout { after: Duration },
}

impl BodyError {
    /// Why, as the `reason` label of `sidekey_upstream_body_errors_total`:
    /// one of [`BODY_ERROR_REASONS`].
    pub fn reason(&self) -> &'static str {
        match self {
            Self::IdleTimeout { .. } => "idle_timeout",
            Self::Upstream(e) if e.is_incomplete_message() => "incomplete",
            Self::Upstream(e) => {
                let reset = crate::upstream::find::<io::Error>(e).is_some_and(|io| {
                    matches!(
                        io.kind(),
                        io::ErrorKind::ConnectionReset
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::BrokenPipe
                    )
                });
                if reset { "reset" } else { "failed" }
            }
        }
    }
}

/// Every [`BodyError::reason`]: `incomplete`, the connection closed before
/// the announced length; `reset`, it was reset; `idle_timeout`,
/// `--upstream-body-idle-timeout` passed without a byte; `failed`, any
/// other error (an HTTP/2 stream reset, a framing error).
pub const BODY_ERROR_REASONS: [&str; 4] = ["incomplete", "reset", "idle_timeout", "failed"];

pub use sidekey_plumbing::chain::chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_failure_is_a_503_with_a_json_body() {
        let e = RequestError::TokenUnavailable {
            reason: "the token endpoint refused the connection".into(),
            retry_after: Some(Duration::from_millis(2100)),
        };
        let response = e.to_response();
        assert_eq!(response.status(), 503);
        // Rounded up to whole seconds.
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        let unscheduled = RequestError::TokenUnavailable {
            reason: "no access token yet".into(),
            retry_after: None,
        };
        assert!(
            !unscheduled
                .to_response()
                .headers()
                .contains_key(header::RETRY_AFTER)
        );
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
        let e = RequestError::UpstreamTimeout {
            after: Duration::from_secs(3),
        };
        assert_eq!(e.status(), 504);
        assert_eq!(e.to_string(), "the upstream did not answer within 3s");
    }

    #[test]
    fn each_request_error_has_its_status() {
        let bad = RequestError::BadRequest {
            what: "the request path cannot be forwarded",
            source: "invalid uri character".into(),
        };
        let tls = RequestError::UpstreamTls {
            hint: "",
            source: rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        };
        let signing = RequestError::Signing(ConfigError::SignatureKey {
            secret: "signing".into(),
            key: "key".into(),
            source: SigningError::Key(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat.into()),
        });
        let large = RequestError::HeadersTooLarge {
            size: 70_000,
            limit: 65_536,
        };
        for (e, status, code) in [
            (bad, 400, "bad_request"),
            (large, 431, "headers_too_large"),
            (tls, 502, "upstream_tls_failed"),
            (signing, 500, "invalid_signature_key"),
        ] {
            assert_eq!(e.status(), status, "{e}");
            assert_eq!(e.code(), code, "{e}");
        }
    }

    #[test]
    fn the_body_carries_the_sources_too() {
        let e = RequestError::UpstreamTls {
            hint: " (the upstream's certificate was refused)",
            source: rustls::Error::InvalidCertificate(rustls::CertificateError::Expired),
        };
        let body: serde_json::Value = serde_json::from_slice(&e.body()).expect("json");
        let reason = body["reason"].as_str().expect("reason");
        assert!(
            reason.starts_with(
                "TLS with the upstream failed (the upstream's certificate was refused): "
            ) && reason.contains("Expired"),
            "{reason}"
        );
    }

    #[test]
    fn flags_that_do_not_go_together_exit_2_and_the_rest_1() {
        let addr: SocketAddr = "127.0.0.1:15000".parse().expect("addr");
        let usage = [
            StartupError::NoDatasource,
            StartupError::NonLoopbackListen { addr },
            StartupError::DuplicateListen { addr },
            StartupError::ListenCountMismatch {
                datasources: 2,
                listens: 1,
            },
        ];
        for e in usage {
            assert_eq!(e.exit_code(), 2, "{e}");
        }
        let other = [
            StartupError::AddressInUse { addr },
            StartupError::Worker {
                index: 0,
                source: io::Error::other("no threads"),
            },
            StartupError::from(ConfigError::SecretEmpty {
                secret: "crm".into(),
                key: "token".into(),
            }),
        ];
        for e in other {
            assert_eq!(e.exit_code(), 1, "{e}");
        }
    }

    #[test]
    fn a_startup_configuration_error_keeps_its_code_and_text() {
        let e = StartupError::from(ConfigError::SecretEmpty {
            secret: "crm".into(),
            key: "token".into(),
        });
        assert_eq!(e.code(), "invalid_secret");
        assert_eq!(e.to_string(), "secret \"crm\" key \"token\" is empty");
    }

    #[test]
    fn an_unreadable_secret_keeps_the_io_error_as_its_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("crm/token");
        let io = std::fs::read(&path).expect_err("no such file");
        let e = StartupError::from(ConfigError::ReadSecret {
            secret: "crm".into(),
            key: "token".into(),
            path: path.clone(),
            source: io,
        });
        assert_eq!(e.code(), "secret_unreadable");
        let source = e.source().expect("a source");
        assert!(source.downcast_ref::<io::Error>().is_some(), "{source:?}");
        let text = chain(&e);
        assert_eq!(
            text,
            format!(
                "secret \"crm\" key \"token\": cannot read {}: No such file or directory (os error 2)",
                path.display()
            )
        );
        // The message itself does not repeat its source.
        assert!(!e.to_string().contains("No such file"), "{e}");
    }
}
