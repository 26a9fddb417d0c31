//! The Secret `<datasource>-sidekey-oauth`: the state of a datasource's
//! authorization-code grant, and the only state. Restarts and leader
//! changes lose nothing because every replica reads it here.
//!
//! Sidecars get two keys of it mounted, `access-token` and `expires-at`.
//! The others are the operator's alone: `refresh-token`, `refresh-at`, and
//! the authorization in progress (the link's nonce hash, the pending
//! state's hash with its PKCE verifier, the last failure). Writes carry the
//! `resourceVersion` they read, so two replicas cannot both use one link
//! or one refresh token.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Resource};
use sidekey_crds::names::{
    ACCESS_TOKEN_KEY, DATASOURCE_LABEL, EXPIRES_AT_KEY, MANAGED_BY_LABEL, MANAGED_BY_VALUE,
    REFRESH_TOKEN_KEY, oauth_token_secret_name,
};
use sidekey_crds::{ApiDatasource, SecretValue};

const REFRESH_AT_KEY: &str = "refresh-at";
const LINK_NONCE_KEY: &str = "authorization-link-nonce-sha256";
const LINK_EXPIRES_KEY: &str = "authorization-link-expires-at";
const STATE_KEY: &str = "authorization-state-sha256";
const VERIFIER_KEY: &str = "authorization-pkce-verifier";
const STATE_EXPIRES_KEY: &str = "authorization-state-expires-at";
const FAILURE_REASON_KEY: &str = "authorization-failure-reason";
const FAILURE_MESSAGE_KEY: &str = "authorization-failure-message";

/// The authorization link in `status.authorizationUrl`: only its nonce's
/// hash is kept, so the Secret never holds a usable link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub nonce_sha256: String,
    pub expires_at: Timestamp,
}

/// An authorization a person started: the hash of the `state` sent to the
/// provider and the PKCE verifier of its challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub state_sha256: String,
    pub pkce_verifier: SecretValue,
    pub expires_at: Timestamp,
}

/// Why the last authorization or refresh failed, for the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    pub message: String,
}

/// Everything the Secret holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    pub access_token: Option<SecretValue>,
    pub expires_at: Option<Timestamp>,
    pub refresh_token: Option<SecretValue>,
    pub refresh_at: Option<Timestamp>,
    pub link: Option<Link>,
    pub pending: Option<Pending>,
    pub failure: Option<Failure>,
}

/// The Secret as read: its tokens and the version a write must replace.
#[derive(Clone, Debug, Default)]
pub struct Stored {
    pub tokens: Tokens,
    resource_version: Option<String>,
}

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// Someone else (another replica, another click) wrote first.
    #[error("Secret {0:?} changed since it was read")]
    Conflict(String),
    #[error("writing Secret {name:?}")]
    Kube {
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl Stored {
    /// Reads datasource `name`'s token Secret; an absent one holds nothing.
    pub async fn load(api: &Api<Secret>, datasource: &str) -> Result<Self, kube::Error> {
        let name = oauth_token_secret_name(datasource);
        Ok(match api.get_opt(&name).await? {
            Some(secret) => Self {
                resource_version: secret.metadata.resource_version.clone(),
                tokens: Tokens::from_data(secret.data.unwrap_or_default()),
            },
            None => Self::default(),
        })
    }

    /// Writes `tokens` over what was read: creates the Secret (owned by
    /// the datasource, so it goes with it) or replaces the version read.
    pub async fn save(
        &self,
        api: &Api<Secret>,
        ds: &ApiDatasource,
        tokens: &Tokens,
    ) -> Result<(), SaveError> {
        let name = oauth_token_secret_name(&ds.metadata.name.clone().unwrap_or_default());
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: ds.metadata.namespace.clone(),
                resource_version: self.resource_version.clone(),
                owner_references: ds.controller_owner_ref(&()).map(|o| vec![o]),
                labels: Some(BTreeMap::from([
                    (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
                    (
                        DATASOURCE_LABEL.to_owned(),
                        ds.metadata.name.clone().unwrap_or_default(),
                    ),
                ])),
                ..Default::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(tokens.to_data()),
            ..Default::default()
        };
        let params = PostParams {
            field_manager: Some(sidekey_crds::names::FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        let written = match &self.resource_version {
            Some(_) => api.replace(&name, &params, &secret).await,
            None => api.create(&params, &secret).await,
        };
        match written {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Err(SaveError::Conflict(name)),
            Err(source) => Err(SaveError::Kube { name, source }),
        }
    }
}

impl Stored {
    /// Saves newly issued tokens, which must not be lost: the provider has
    /// already spent the code or rotated the refresh token. When someone
    /// else wrote the Secret meanwhile (a stray request recording a
    /// failure, the leader renewing a link), the tokens go onto the Secret
    /// as it is now, up to three times.
    pub async fn save_issued(
        &self,
        api: &Api<Secret>,
        ds: &ApiDatasource,
        tokens: &Tokens,
    ) -> Result<(), SaveError> {
        self.save_onto_fresh(api, ds, tokens, |fresh| fresh.with_issued(tokens))
            .await
    }

    /// Records `failure` over what was read; when someone else wrote the
    /// Secret meanwhile (the leader renewing an expired link, say), onto
    /// the Secret as it is now, up to three times: the status must come to
    /// say what the person's page said.
    pub async fn save_failure(
        &self,
        api: &Api<Secret>,
        ds: &ApiDatasource,
        failure: Failure,
    ) -> Result<(), SaveError> {
        let with_failure = |mut tokens: Tokens| {
            tokens.failure = Some(failure.clone());
            tokens
        };
        let tokens = with_failure(self.tokens.clone());
        self.save_onto_fresh(api, ds, &tokens, with_failure).await
    }

    /// Saves `tokens` over what was read; on a conflict, reloads the
    /// Secret and saves `onto(what it holds now)`, up to three times.
    async fn save_onto_fresh(
        &self,
        api: &Api<Secret>,
        ds: &ApiDatasource,
        tokens: &Tokens,
        onto: impl Fn(Tokens) -> Tokens,
    ) -> Result<(), SaveError> {
        let mut result = self.save(api, ds, tokens).await;
        for _ in 0..3 {
            let Err(SaveError::Conflict(name)) = &result else {
                break;
            };
            let fresh = Self::load(api, &ds.metadata.name.clone().unwrap_or_default())
                .await
                .map_err(|source| SaveError::Kube {
                    name: name.clone(),
                    source,
                })?;
            let merged = onto(fresh.tokens.clone());
            result = fresh.save(api, ds, &merged).await;
        }
        result
    }
}

impl Tokens {
    /// `self` with the issued tokens of `from` (access token, expiry,
    /// refresh token, next refresh), and no authorization in progress or
    /// failure left.
    pub fn with_issued(mut self, from: &Tokens) -> Self {
        self.access_token.clone_from(&from.access_token);
        self.expires_at = from.expires_at;
        self.refresh_token.clone_from(&from.refresh_token);
        self.refresh_at = from.refresh_at;
        self.link = None;
        self.pending = None;
        self.failure = None;
        self
    }

    fn from_data(mut data: BTreeMap<String, ByteString>) -> Self {
        let mut take = |key: &str| data.remove(key).map(|v| SecretValue::new(v.0));
        let text = |v: Option<SecretValue>| v.and_then(|v| v.expose_str().map(str::to_owned));
        let time = |v: Option<SecretValue>| text(v).and_then(|t| t.trim().parse().ok());
        let access_token = take(ACCESS_TOKEN_KEY);
        let expires_at = time(take(EXPIRES_AT_KEY));
        let refresh_token = take(REFRESH_TOKEN_KEY);
        let refresh_at = time(take(REFRESH_AT_KEY));
        let link = match (text(take(LINK_NONCE_KEY)), time(take(LINK_EXPIRES_KEY))) {
            (Some(nonce_sha256), Some(expires_at)) => Some(Link {
                nonce_sha256,
                expires_at,
            }),
            _ => None,
        };
        let pending = match (
            text(take(STATE_KEY)),
            take(VERIFIER_KEY),
            time(take(STATE_EXPIRES_KEY)),
        ) {
            (Some(state_sha256), Some(pkce_verifier), Some(expires_at)) => Some(Pending {
                state_sha256,
                pkce_verifier,
                expires_at,
            }),
            _ => None,
        };
        let failure = match (
            text(take(FAILURE_REASON_KEY)),
            text(take(FAILURE_MESSAGE_KEY)),
        ) {
            (Some(reason), Some(message)) => Some(Failure { reason, message }),
            _ => None,
        };
        Self {
            access_token,
            expires_at,
            refresh_token,
            refresh_at,
            link,
            pending,
            failure,
        }
    }

    fn to_data(&self) -> BTreeMap<String, ByteString> {
        let mut data = BTreeMap::new();
        let mut put = |key: &str, value: &[u8]| {
            data.insert(key.to_owned(), ByteString(value.to_vec()));
        };
        if let Some(v) = &self.access_token {
            put(ACCESS_TOKEN_KEY, v.expose());
        }
        if let Some(t) = &self.expires_at {
            put(EXPIRES_AT_KEY, t.to_string().as_bytes());
        }
        if let Some(v) = &self.refresh_token {
            put(REFRESH_TOKEN_KEY, v.expose());
        }
        if let Some(t) = &self.refresh_at {
            put(REFRESH_AT_KEY, t.to_string().as_bytes());
        }
        if let Some(link) = &self.link {
            put(LINK_NONCE_KEY, link.nonce_sha256.as_bytes());
            put(LINK_EXPIRES_KEY, link.expires_at.to_string().as_bytes());
        }
        if let Some(p) = &self.pending {
            put(STATE_KEY, p.state_sha256.as_bytes());
            put(VERIFIER_KEY, p.pkce_verifier.expose());
            put(STATE_EXPIRES_KEY, p.expires_at.to_string().as_bytes());
        }
        if let Some(f) = &self.failure {
            put(FAILURE_REASON_KEY, f.reason.as_bytes());
            put(FAILURE_MESSAGE_KEY, f.message.as_bytes());
        }
        data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_survives_the_secret() {
        let t = |s: i64| Timestamp::from_second(s).expect("time");
        let tokens = Tokens {
            access_token: Some(SecretValue::new(b"at".to_vec())),
            expires_at: Some(t(1_800_000_000)),
            refresh_token: Some(SecretValue::new(b"rt".to_vec())),
            refresh_at: Some(t(1_799_999_000)),
            link: Some(Link {
                nonce_sha256: "n".into(),
                expires_at: t(1_800_000_100),
            }),
            pending: Some(Pending {
                state_sha256: "s".into(),
                pkce_verifier: SecretValue::new(b"v".to_vec()),
                expires_at: t(1_800_000_200),
            }),
            failure: Some(Failure {
                reason: "RefreshFailed".into(),
                message: "m".into(),
            }),
        };
        let data = tokens.to_data();
        assert_eq!(
            data.get(EXPIRES_AT_KEY).map(|v| v.0.as_slice()),
            Some(b"2027-01-15T08:00:00Z".as_slice())
        );
        assert_eq!(Tokens::from_data(data), tokens);
        assert_eq!(Tokens::from_data(BTreeMap::new()), Tokens::default());
    }

    #[test]
    fn issued_tokens_go_onto_a_secret_someone_else_changed() {
        let t = |s: i64| Timestamp::from_second(s).expect("time");
        let issued = Tokens {
            access_token: Some(SecretValue::new("new-access")),
            expires_at: Some(t(2_000)),
            refresh_token: Some(SecretValue::new("rotated")),
            refresh_at: Some(t(1_500)),
            ..Default::default()
        };
        // Meanwhile a stray request recorded a failure, the leader a link.
        let now = Tokens {
            refresh_token: Some(SecretValue::new("spent")),
            link: Some(Link {
                nonce_sha256: "n".into(),
                expires_at: t(1_900),
            }),
            failure: Some(Failure {
                reason: "AuthorizationLinkExpired".into(),
                message: "m".into(),
            }),
            ..Default::default()
        };
        assert_eq!(now.with_issued(&issued), issued);
    }
}
