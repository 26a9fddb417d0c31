//! What the schema cannot check: the spec resolves, every referenced Secret
//! and key exists, the signature key is long enough, the CA bundle holds
//! certificates. Secrets are read with GET when a datasource is reconciled,
//! only their referenced keys are kept, each wrapped in `SecretValue` at once.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sidekey_crds::names::MIN_SIGNATURE_KEY_LEN;
use sidekey_crds::{
    ApiDatasource, ResolvedDatasource, SecretFile, SecretPurpose, SecretUse, SecretValue,
};

use crate::error::{DatasourceError, ReconcileError};

/// The referenced keys of the referenced Secrets, as read now: `None` for
/// a Secret that does not exist. Keys nobody references are not kept.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FetchedSecrets {
    secrets: HashMap<String, Option<BTreeMap<String, SecretValue>>>,
}

impl FetchedSecrets {
    /// Records a Secret as read: only `keys` are kept, as `SecretValue`s.
    pub fn insert(&mut self, name: &str, secret: Option<Secret>, keys: &[&str]) {
        let values = secret.map(|s| {
            let mut data = s.data.unwrap_or_default();
            keys.iter()
                .filter_map(|k| {
                    data.remove(*k)
                        .map(|v| ((*k).to_owned(), SecretValue::new(v.0)))
                })
                .collect()
        });
        self.secrets.insert(name.to_owned(), values);
    }

    /// The value of one referenced key, if its Secret and key exist.
    pub fn value(&self, file: &SecretFile) -> Option<&SecretValue> {
        self.get(&file.secret)?.as_ref()?.get(&file.key)
    }

    fn get(&self, secret: &str) -> Option<&Option<BTreeMap<String, SecretValue>>> {
        self.secrets.get(secret)
    }

    /// Reads every Secret the uses name, once each, with GET.
    pub async fn fetch(api: &Api<Secret>, uses: &[SecretUse<'_>]) -> Result<Self, ReconcileError> {
        let mut by_secret: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for u in uses {
            by_secret
                .entry(u.file.secret.as_str())
                .or_default()
                .push(u.file.key.as_str());
        }
        let mut fetched = Self::default();
        for (name, keys) in by_secret {
            let secret = api
                .get_opt(name)
                .await
                .map_err(|e| ReconcileError::kube(format!("reading Secret {name:?}"), e))?;
            fetched.insert(name, secret, &keys);
        }
        Ok(fetched)
    }
}

/// A datasource that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    pub resolved: ResolvedDatasource,
    /// How many certificates the CA bundle holds, when one is referenced.
    pub ca_certificates: Option<usize>,
    /// The referenced keys as read, for what the reconcile does next (a
    /// token request needs the client secret and the CA bundle).
    pub secrets: FetchedSecrets,
}

/// Resolves the datasource and reads its Secrets: `Ok` when it is valid,
/// `Err` with a datasource problem ([`ReconcileError::Invalid`]) or an API
/// failure.
pub async fn validate(
    ds: &ApiDatasource,
    secrets: &Api<Secret>,
) -> Result<Validated, ReconcileError> {
    let resolved = ds.resolve().map_err(DatasourceError::from)?;
    let fetched = FetchedSecrets::fetch(secrets, &resolved.secret_uses()).await?;
    Ok(check(resolved, fetched)?)
}

/// The checks on values, given the Secrets as read. Pure, so it is tested
/// without a cluster.
pub fn check(
    resolved: ResolvedDatasource,
    fetched: FetchedSecrets,
) -> Result<Validated, DatasourceError> {
    let namespace = resolved.namespace.clone().unwrap_or_default();
    let mut ca_certificates = None;
    for u in resolved.secret_uses() {
        let SecretFile { secret, key, .. } = u.file;
        let data = match fetched.get(secret) {
            Some(Some(data)) => data,
            // Not fetched is a bug of the caller; treat it as absent rather
            // than as valid.
            Some(None) | None => {
                return Err(DatasourceError::SecretNotFound {
                    namespace,
                    secret: secret.clone(),
                    field: u.field,
                });
            }
        };
        let Some(value) = data.get(key) else {
            return Err(DatasourceError::SecretKeyNotFound {
                namespace,
                secret: secret.clone(),
                key: key.clone(),
                field: u.field,
            });
        };
        // Checked as the sidecar reads every secret: without a trailing
        // newline.
        let value = value.clone().trim_trailing_newline();
        match u.purpose {
            SecretPurpose::Credential => {
                resolved
                    .authentication
                    .check_credential(&value)
                    .map_err(|detail| DatasourceError::InvalidSecretValue {
                        secret: secret.clone(),
                        key: key.clone(),
                        field: u.field,
                        detail,
                    })?;
            }
            SecretPurpose::SignatureKey => {
                let len = value.char_len();
                if len < MIN_SIGNATURE_KEY_LEN {
                    return Err(DatasourceError::SignatureKeyTooShort {
                        secret: secret.clone(),
                        key: key.clone(),
                        min: MIN_SIGNATURE_KEY_LEN,
                    });
                }
            }
            SecretPurpose::CaBundle => {
                let count = count_certificates(&value).map_err(|detail| {
                    DatasourceError::InvalidCertificate {
                        secret: secret.clone(),
                        key: key.clone(),
                        detail,
                    }
                })?;
                ca_certificates = Some(count);
            }
        }
    }
    Ok(Validated {
        resolved,
        ca_certificates,
        secrets: fetched,
    })
}

/// Counts the X.509 certificates of a PEM bundle; at least one is needed.
/// Each must decode as PEM, parse as X.509 whole, and be taken as a trust
/// anchor by the sidecar's TLS stack (rustls), which checks what the
/// parse does not (the two signature algorithms agree) and skips what it
/// checks (dates): the sidecar must never refuse a bundle the operator
/// let through. Other PEM sections (keys, parameters) and text between
/// them are ignored, as OpenSSL ignores them.
pub fn count_certificates(pem: &SecretValue) -> Result<usize, String> {
    let mut count = 0;
    for (i, cert) in CertificateDer::pem_slice_iter(pem.expose()).enumerate() {
        let cert = cert.map_err(|e| format!("PEM block {} does not decode: {e}", i + 1))?;
        x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|e| format!("certificate {} is not valid X.509: {e}", i + 1))?;
        rustls::RootCertStore::empty()
            .add(cert)
            .map_err(|e| format!("certificate {} cannot be a trust anchor: {e}", i + 1))?;
        count += 1;
    }
    if count == 0 {
        return Err("it has no PEM certificate".into());
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn resolved(yaml: &str) -> ResolvedDatasource {
        ResolvedDatasource::from_yaml(yaml).expect("valid manifest")
    }

    const SIGNED_BEARER: &str = r#"
kind: ApiDatasource
metadata: { name: payments, namespace: shop }
spec:
  url: https://payments.internal/v2
  signature: { secretRef: { name: signing, key: key } }
  tls: { caCertificateSecretRef: { name: ca, key: ca.crt } }
  authentication:
    type: BearerToken
    bearerToken: { tokenSecretRef: { name: token, key: token } }
"#;

    fn secret(pairs: &[(&str, &[u8])]) -> Secret {
        Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn ca_pem(n: usize) -> String {
        (0..n)
            .map(|i| {
                let key = rcgen::KeyPair::generate().expect("key");
                rcgen::CertificateParams::new(vec![format!("ca{i}.test")])
                    .expect("params")
                    .self_signed(&key)
                    .expect("cert")
                    .pem()
            })
            .collect()
    }

    fn fetched(signing_key: &[u8], ca: &[u8]) -> FetchedSecrets {
        let mut f = FetchedSecrets::default();
        f.insert("token", Some(secret(&[("token", b"t0k3n")])), &["token"]);
        f.insert("signing", Some(secret(&[("key", signing_key)])), &["key"]);
        f.insert("ca", Some(secret(&[("ca.crt", ca)])), &["ca.crt"]);
        f
    }

    const KEY_32: &[u8] = b"0123456789abcdef0123456789abcdef";

    /// Found by prop_ca_bundle_is_accepted_by_operator_and_sidecar_alike:
    /// a certificate whose outer signature algorithm differs from the one
    /// inside parses as X.509, but the sidecar's rustls refuses it.
    #[test]
    fn certificate_with_mismatched_signature_algorithms_is_refused() {
        use base64::Engine;
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["ca.test".into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let mut der = cert.der().to_vec();
        // ecdsa-with-SHA256, 1.2.840.10045.4.3.2; its last occurrence is
        // the outer signatureAlgorithm: make it ecdsa-with-SHA384.
        let oid = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
        let at = der
            .windows(oid.len())
            .rposition(|w| w == oid)
            .expect("the OID");
        der[at + oid.len() - 1] = 0x03;
        assert!(x509_parser::parse_x509_certificate(&der).is_ok());
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        let err = count_certificates(&SecretValue::new(pem)).expect_err("mismatch");
        assert!(
            err.contains("certificate 1 cannot be a trust anchor"),
            "{err}"
        );
    }

    #[test]
    fn text_between_certificates_is_ignored() {
        let pem = ca_pem(2).replacen(
            "-----END CERTIFICATE-----\n",
            "-----END CERTIFICATE-----\ngarbage \u{1} between\n\n-----\n",
            1,
        );
        assert_eq!(count_certificates(&SecretValue::new(pem)), Ok(2));
    }

    #[test]
    fn valid_datasource_reports_its_certificate_count() {
        let pem = ca_pem(2);
        let v = check(resolved(SIGNED_BEARER), fetched(KEY_32, pem.as_bytes())).expect("valid");
        assert_eq!(v.ca_certificates, Some(2));
    }

    #[test]
    fn missing_secret_is_named_with_its_field() {
        let pem = ca_pem(1);
        let mut f = fetched(KEY_32, pem.as_bytes());
        f.insert("token", None, &["token"]);
        let err = check(resolved(SIGNED_BEARER), f).expect_err("missing");
        assert_eq!(err.reason(), "SecretNotFound");
        let msg = err.to_string();
        assert!(msg.contains("\"token\""), "{msg}");
        assert!(msg.contains("bearerToken.tokenSecretRef"), "{msg}");
    }

    #[test]
    fn missing_key_names_secret_and_key() {
        let pem = ca_pem(1);
        let mut f = fetched(KEY_32, pem.as_bytes());
        f.insert("token", Some(secret(&[("other", b"x")])), &["token"]);
        let err = check(resolved(SIGNED_BEARER), f).expect_err("no key");
        assert_eq!(err.reason(), "SecretKeyNotFound");
        assert!(err.to_string().contains("no key \"token\""), "{err}");
    }

    #[test]
    fn signature_key_of_31_characters_is_refused_without_showing_it() {
        let pem = ca_pem(1);
        let short = &KEY_32[..31];
        let err =
            check(resolved(SIGNED_BEARER), fetched(short, pem.as_bytes())).expect_err("short");
        assert_eq!(err.reason(), "SignatureKeyTooShort");
        let msg = err.to_string();
        assert!(msg.contains("32"), "{msg}");
        assert!(
            !msg.contains(std::str::from_utf8(short).unwrap_or("?")),
            "{msg}"
        );
    }

    #[test]
    fn trailing_newline_does_not_count_toward_the_signature_key_length() {
        let pem = ca_pem(1);
        let mut short = KEY_32[..31].to_vec();
        short.push(b'\n');
        let err = check(resolved(SIGNED_BEARER), fetched(&short, pem.as_bytes()))
            .expect_err("31 plus newline");
        assert_eq!(err.reason(), "SignatureKeyTooShort");
    }

    #[test]
    fn bundle_without_certificate_is_invalid() {
        let err =
            check(resolved(SIGNED_BEARER), fetched(KEY_32, b"not a pem")).expect_err("no cert");
        assert_eq!(err.reason(), "InvalidCertificate");
    }

    #[test]
    fn certificate_block_that_is_not_x509_is_invalid() {
        let pem = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
        let err = check(resolved(SIGNED_BEARER), fetched(KEY_32, pem.as_bytes()))
            .expect_err("garbage cert");
        assert_eq!(err.reason(), "InvalidCertificate");
        assert!(err.to_string().contains("certificate 1"), "{err}");
    }

    #[test]
    fn only_referenced_keys_are_kept() {
        let mut f = FetchedSecrets::default();
        f.insert(
            "token",
            Some(secret(&[("token", b"a"), ("unrelated", b"b")])),
            &["token"],
        );
        let kept = f.get("token").and_then(|s| s.as_ref()).expect("present");
        assert_eq!(kept.keys().collect::<Vec<_>>(), vec!["token"]);
    }
}
