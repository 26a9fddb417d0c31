//! What sidekey's two binaries both need of OAuth 2.0, written once: the
//! operator, which runs the authorization-code grant and is its single
//! refresher, and the sidecar, which requests client-credentials tokens
//! (and, in local mode, refreshes by itself).
//!
//! - [`tls`]: the TLS client configuration of a datasource: Mozilla's roots
//!   compiled in, plus or instead of the datasource's CA bundle.
//!   Verification is always on.
//! - [`endpoint`]: [`TokenEndpoint`], the token endpoint client (the
//!   client-credentials, refresh-token and authorization-code grants),
//!   with typed errors ([`TokenError`]) whose messages never hold a secret.
//! - [`authorize`]: the authorization request a person opens, with
//!   `state` and PKCE S256.
//!
//! It depends on `sidekey-crds` only, of ours, and on crates the sidecar
//! already had (`oauth2` over reqwest and rustls): nothing of kube.

pub mod authorize;
pub mod endpoint;
pub mod tls;

pub use authorize::{AuthorizationRequest, authorization_request};
pub use endpoint::{EndpointError, Grant, Issued, TokenEndpoint, TokenError};
pub use tls::{CaBundle, CaBundleError, TlsError, client_config};
