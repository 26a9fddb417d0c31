//! Trust for the upstream and the token endpoint: the standard public roots
//! (Mozilla's, compiled in so neither binary needs CA files in its image),
//! plus every certificate of the datasource's PEM bundle, or the bundle
//! alone. Verification is always on: there is no setting that turns it off.

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sidekey_crds::{SecretFile, SecretValue};
use thiserror::Error;

/// A CA bundle as read from its Secret.
pub struct CaBundle<'a> {
    pub file: &'a SecretFile,
    pub pem: &'a SecretValue,
}

/// Why no TLS client configuration could be built.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("CA certificate (secret {secret:?} key {key:?})")]
    InvalidCertificate {
        secret: String,
        key: String,
        #[source]
        source: CaBundleError,
    },
    #[error(
        "tls: trustSystemRoots is false and no caCertificateSecretRef is given: \
         no certificate could be trusted"
    )]
    NoRoots,
    #[error("cannot set up TLS")]
    Setup(#[source] rustls::Error),
}

/// What is wrong with a CA bundle (the source of
/// [`TlsError::InvalidCertificate`]).
#[derive(Debug, Error)]
pub enum CaBundleError {
    #[error("not a PEM bundle")]
    Pem(#[source] rustls_pki_types::pem::Error),
    #[error("the PEM bundle holds no CERTIFICATE block")]
    Empty,
    #[error("certificate {number} of the bundle")]
    Certificate {
        number: usize,
        #[source]
        source: rustls::Error,
    },
}

/// The TLS client configuration every HTTP client of a datasource uses
/// (the sidecar's upstream client, the token endpoint client of both
/// binaries). ALPN is left to each.
pub fn client_config(
    bundle: Option<CaBundle<'_>>,
    trust_system_roots: bool,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    if trust_system_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(bundle) = bundle {
        let invalid = |source: CaBundleError| TlsError::InvalidCertificate {
            secret: bundle.file.secret.clone(),
            key: bundle.file.key.clone(),
            source,
        };
        let certs = CertificateDer::pem_slice_iter(bundle.pem.expose())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(CaBundleError::Pem(e)))?;
        if certs.is_empty() {
            return Err(invalid(CaBundleError::Empty));
        }
        for (i, cert) in certs.into_iter().enumerate() {
            roots.add(cert).map_err(|source| {
                invalid(CaBundleError::Certificate {
                    number: i + 1,
                    source,
                })
            })?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidekey_plumbing::chain::chain;

    fn file() -> SecretFile {
        SecretFile {
            secret: "ca".into(),
            key: "ca.crt".into(),
            path: "ca/ca.crt".into(),
        }
    }

    #[test]
    fn bundle_without_certificates_is_refused_with_its_name() {
        let pem = SecretValue::new("hello");
        let f = file();
        let err = client_config(
            Some(CaBundle {
                file: &f,
                pem: &pem,
            }),
            true,
        )
        .expect_err("no certificate");
        let text = chain(&err);
        assert!(text.contains("no CERTIFICATE"), "{text}");
        assert!(text.contains("\"ca.crt\""), "{text}");
    }

    #[test]
    fn no_roots_at_all_is_refused() {
        assert!(matches!(client_config(None, false), Err(TlsError::NoRoots)));
    }

    #[test]
    fn system_roots_alone_are_enough() {
        assert!(client_config(None, true).is_ok());
    }
}
