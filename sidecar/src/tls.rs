//! Trust for the upstream and the token endpoint: the standard public roots
//! (Mozilla's, compiled in so the sidecar needs no CA files in its image),
//! plus every certificate of the datasource's PEM bundle, or the bundle
//! alone. Verification is always on.

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sidekey_crds::{SecretFile, SecretValue};

use crate::error::Error;

/// A CA bundle as read from its Secret.
pub struct CaBundle<'a> {
    pub file: &'a SecretFile,
    pub pem: &'a SecretValue,
}

/// The TLS client configuration both HTTP clients use. ALPN is left to each.
pub fn client_config(
    bundle: Option<CaBundle<'_>>,
    trust_system_roots: bool,
) -> Result<Arc<ClientConfig>, Error> {
    let mut roots = RootCertStore::empty();
    if trust_system_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(bundle) = bundle {
        let invalid = |reason: String| Error::InvalidCertificate {
            secret: bundle.file.secret.clone(),
            key: bundle.file.key.clone(),
            reason,
        };
        let certs = CertificateDer::pem_slice_iter(bundle.pem.expose())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("not a PEM bundle: {e}")))?;
        if certs.is_empty() {
            return Err(invalid("the PEM bundle holds no CERTIFICATE block".into()));
        }
        for (i, cert) in certs.into_iter().enumerate() {
            roots
                .add(cert)
                .map_err(|e| invalid(format!("certificate {} of the bundle: {e}", i + 1)))?;
        }
    }
    if roots.is_empty() {
        return Err(Error::InvalidSetting {
            field: "tls",
            reason: "trustSystemRoots is false and no caCertificateSecretRef is given: \
                     no certificate could be trusted"
                .into(),
        });
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls {
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
        assert!(err.to_string().contains("\"ca.crt\""), "{err}");
    }

    #[test]
    fn no_roots_at_all_is_refused() {
        assert!(client_config(None, false).is_err());
    }

    #[test]
    fn system_roots_alone_are_enough() {
        assert!(client_config(None, true).is_ok());
    }
}
