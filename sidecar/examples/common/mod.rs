//! What the benchmark floors (`minimal_proxy`, `framing_floor`) share: the
//! command line and the upstream's TLS trust, set as the sidecar sets it.

use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

pub type Failed = Box<dyn std::error::Error + Send + Sync>;

/// `LISTEN UPSTREAM_URL CA_FILE TOKEN`, the arguments bench/run.sh passes:
/// the listen address, the upstream's URL, a TLS setup that trusts the CA
/// file, the bearer token.
pub fn args(program: &str) -> Result<(String, http::Uri, rustls::ClientConfig, String), Failed> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, ca, token] = args.as_slice() else {
        return Err(format!("usage: {program} LISTEN UPSTREAM_URL CA_FILE TOKEN").into());
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((listen.clone(), upstream.parse()?, tls, token.clone()))
}
