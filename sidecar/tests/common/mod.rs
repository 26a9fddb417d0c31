//! What the sidecar's integration tests share: certificates, a real HTTPS
//! upstream, the real sidecar binary, and the real OAuth 2.0 server.
#![allow(dead_code)]

pub mod oauth;
pub mod pki;
pub mod sidecar;
pub mod upstream;

pub use pki::Pki;
#[allow(unused_imports)]
pub use sidecar::{
    Workspace, authorization_sent, client, get_echo, get_echo_at, get_echo_with, get_text, header,
    readyz_status,
};
#[allow(unused_imports)]
pub use upstream::Upstream;

/// An `ApiDatasource` manifest for `url` with the given `spec` lines
/// (indented two spaces), trusting the test CA from secret `ca`/`ca.crt`.
pub fn manifest(url: &str, spec: &str) -> String {
    named_manifest("payments", "ca", url, spec)
}

/// The same for datasource `name`, trusting the CA in secret `ca`/`ca.crt`.
pub fn named_manifest(name: &str, ca: &str, url: &str, spec: &str) -> String {
    format!(
        "apiVersion: sidekey.dev/v1alpha1\nkind: ApiDatasource\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n  url: {url}\n  tls:\n    caCertificateSecretRef: {{ name: {ca}, key: ca.crt }}\n{spec}"
    )
}

/// A workspace whose CA secret is the test CA of `pki`.
pub fn workspace(pki: &Pki) -> Workspace {
    let ws = Workspace::new();
    ws.write_secret("ca", "ca.crt", &pki.ca_pem);
    ws
}
