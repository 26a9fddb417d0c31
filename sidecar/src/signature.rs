//! The signature header: a short-lived JWT (`iss`, `iat`, `exp`) signed by
//! HMAC with the datasource's key, in the header existing verifiers read.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use http::header::{HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use sidekey_crds::{ResolvedSignature, SecretFile, SecretValue, SignatureAlgorithm, names};

use crate::error::{ConfigError, RequestError, SigningError};
use crate::outgoing::Outgoing;

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
    exp: u64,
}

/// A JWT signed for one second of `iat`; requests within that second share it.
struct Signed {
    iat: u64,
    value: HeaderValue,
}

pub struct Signer {
    header: HeaderName,
    issuer: String,
    ttl_seconds: u64,
    algorithm: Algorithm,
    key: EncodingKey,
    /// Where the key came from, for error messages.
    file: SecretFile,
    cache: ArcSwapOption<Signed>,
}

/// The HMAC algorithm for a key: the configured one, or for Auto the rule
/// existing senders follow (HS512 from 64 bytes, HS384 from 48, else HS256).
pub fn algorithm_for(configured: SignatureAlgorithm, key_len: usize) -> Algorithm {
    match configured {
        SignatureAlgorithm::Hs256 => Algorithm::HS256,
        SignatureAlgorithm::Hs384 => Algorithm::HS384,
        SignatureAlgorithm::Hs512 => Algorithm::HS512,
        SignatureAlgorithm::Auto if key_len >= 64 => Algorithm::HS512,
        SignatureAlgorithm::Auto if key_len >= 48 => Algorithm::HS384,
        SignatureAlgorithm::Auto => Algorithm::HS256,
    }
}

impl Signer {
    pub fn new(spec: &ResolvedSignature, key: &SecretValue) -> Result<Self, ConfigError> {
        let length = key.char_len();
        if length < names::MIN_SIGNATURE_KEY_LEN {
            return Err(ConfigError::SignatureKeyTooShort {
                secret: spec.secret.secret.clone(),
                key: spec.secret.key.clone(),
                length,
                min: names::MIN_SIGNATURE_KEY_LEN,
            });
        }
        let invalid = |source| key_refused(&spec.secret, source);
        let header = HeaderName::from_bytes(spec.header_name.as_bytes()).map_err(|source| {
            invalid(SigningError::HeaderName {
                name: spec.header_name.clone(),
                source,
            })
        })?;
        let signing_key =
            EncodingKey::from_secret(key.expose()).map_err(|e| invalid(SigningError::Key(e)))?;
        let signer = Self {
            header,
            issuer: spec.issuer.clone(),
            ttl_seconds: u64::from(spec.ttl_seconds),
            algorithm: algorithm_for(spec.algorithm, key.len()),
            key: signing_key,
            file: spec.secret.clone(),
            cache: ArcSwapOption::empty(),
        };
        // Fail at load time, not on the first request.
        signer.sign(now_seconds()).map_err(invalid)?;
        Ok(signer)
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Sets the signature header, replacing any the app sent.
    pub fn apply(&self, outgoing: &mut Outgoing) -> Result<(), RequestError> {
        let iat = now_seconds();
        let cached = self.cache.load();
        let value = match cached.as_deref() {
            Some(signed) if signed.iat == iat => signed.value.clone(),
            _ => {
                let value = self
                    .sign(iat)
                    .map_err(|e| RequestError::Signing(key_refused(&self.file, e)))?;
                self.cache.store(Some(Arc::new(Signed {
                    iat,
                    value: value.clone(),
                })));
                value
            }
        };
        outgoing.set_header(&self.header, &value);
        Ok(())
    }

    fn sign(&self, iat: u64) -> Result<HeaderValue, SigningError> {
        let claims = Claims {
            iss: &self.issuer,
            iat,
            exp: iat + self.ttl_seconds,
        };
        let jwt = jsonwebtoken::encode(&Header::new(self.algorithm), &claims, &self.key)
            .map_err(SigningError::Sign)?;
        let mut value = HeaderValue::try_from(jwt).map_err(SigningError::HeaderValue)?;
        value.set_sensitive(true);
        Ok(value)
    }
}

/// The key in `file` cannot sign, for `source`'s reason.
fn key_refused(file: &SecretFile, source: SigningError) -> ConfigError {
    ConfigError::SignatureKey {
        secret: file.secret.clone(),
        key: file.key.clone(),
        source,
    }
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(algorithm: SignatureAlgorithm) -> ResolvedSignature {
        ResolvedSignature {
            secret: SecretFile {
                secret: "signing".into(),
                key: "key".into(),
                path: "signing/key".into(),
            },
            header_name: names::DEFAULT_SIGNATURE_HEADER.into(),
            issuer: names::DEFAULT_SIGNATURE_ISSUER.into(),
            ttl_seconds: 600,
            algorithm,
        }
    }

    #[test]
    fn auto_picks_by_key_length() {
        let auto = SignatureAlgorithm::Auto;
        assert_eq!(algorithm_for(auto, 32), Algorithm::HS256);
        assert_eq!(algorithm_for(auto, 47), Algorithm::HS256);
        assert_eq!(algorithm_for(auto, 48), Algorithm::HS384);
        assert_eq!(algorithm_for(auto, 63), Algorithm::HS384);
        assert_eq!(algorithm_for(auto, 64), Algorithm::HS512);
        assert_eq!(
            algorithm_for(SignatureAlgorithm::Hs384, 100),
            Algorithm::HS384
        );
    }

    #[test]
    fn short_key_is_refused_with_its_length_and_not_its_value() {
        let key = SecretValue::new("k".repeat(31));
        let err = Signer::new(&spec(SignatureAlgorithm::Auto), &key)
            .err()
            .expect("too short");
        let text = err.to_string();
        assert!(
            text.contains("31 characters") && text.contains("at least 32"),
            "{text}"
        );
        assert!(!text.contains(&"k".repeat(31)), "{text}");
    }

    #[test]
    fn key_of_32_characters_signs() {
        let key = SecretValue::new("k".repeat(32));
        let signer = Signer::new(&spec(SignatureAlgorithm::Auto), &key).expect("ok");
        assert_eq!(signer.algorithm(), Algorithm::HS256);
    }
}
