//! Trust for the upstream and the token endpoint: the standard public roots
//! (Mozilla's, compiled in so the sidecar needs no CA files in its image),
//! plus every certificate of the datasource's PEM bundle, or the bundle
//! alone. Verification is always on.
//!
//! Built by [`sidekey_oauth::tls`], which the operator's token endpoint
//! client uses too; its errors become [`ConfigError::Tls`](crate::error::ConfigError::Tls).

pub use sidekey_oauth::tls::{CaBundle, client_config};
