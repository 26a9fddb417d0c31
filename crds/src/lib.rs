//! The foundation sidekey's operator and sidecar both stand on: the
//! `ApiDatasource` custom resource, the resolved spec the operator writes
//! into a ConfigMap for the sidecar, the redacting secret type, and every
//! name (group, label, annotation, path, key, port) the two parts share.

pub mod datasource;
pub mod names;
pub mod resolved;
pub mod secret;

pub use datasource::*;
pub use resolved::{
    OAuthTokenFiles, ResolvedAuthentication, ResolvedDatasource, ResolvedOAuth2, ResolvedSignature,
    ResolvedTls, SecretFile, SecretPurpose, SecretUse, SpecError,
};
pub use secret::SecretValue;
