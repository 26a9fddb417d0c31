//! The authorization-code grant in a cluster: the operator alone holds the
//! refresh token and refreshes; it writes each access token with its expiry
//! into the Secret the webhook mounts here. The sidecar sends that token as
//! it is, picks up each new one when the files change (a reload), and never
//! makes a token request itself.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use sidekey_crds::{OAuthTokenFiles, ResolvedOAuth2, SecretFile, SecretValue};

use crate::auth::{Authenticate, Credential};
use crate::error::{ConfigError, RequestError};
use crate::sources::Sources;

/// A token stops being sent this long before its announced expiry, against
/// clock skew and the time a request takes to arrive.
const SKEW: Duration = Duration::from_secs(1);

pub struct Mounted {
    credential: Arc<Credential>,
    expires_at: SystemTime,
    /// When it expired, as written, for messages.
    expires_at_text: String,
    secret: String,
}

impl Mounted {
    /// The token the operator mounted, if both its files are there.
    pub fn from_sources(
        settings: &ResolvedOAuth2,
        files: &OAuthTokenFiles,
        sources: &Sources,
    ) -> Result<Option<Self>, ConfigError> {
        let tokens = &sources.operator_tokens;
        let (Some(token), Some(expiry)) = (&tokens.access_token, &tokens.expires_at) else {
            return Ok(None);
        };
        let expires_at_text = text(expiry, &files.expires_at)?;
        let expires_at = expires_at_text
            .parse::<jiff::Timestamp>()
            .map_err(|source| ConfigError::InvalidTokenExpiry {
                secret: files.expires_at.secret.clone(),
                key: files.expires_at.key.clone(),
                source,
            })?;
        let token = text(token, &files.access_token)?;
        let credential = super::credential(settings.add_token_to, &settings.header_prefix, token)
            .map_err(|reason| ConfigError::InvalidSetting {
            field: "the operator's access token",
            reason,
        })?;
        Ok(Some(Self {
            credential: Arc::new(credential),
            expires_at: SystemTime::from(expires_at),
            expires_at_text: expires_at_text.to_owned(),
            secret: files.access_token.secret.clone(),
        }))
    }

    fn expired(&self) -> String {
        format!(
            "the access token in Secret {:?} expired at {}: the sidekey operator renews it; \
             see the ApiDatasource's Authorized condition",
            self.secret, self.expires_at_text
        )
    }
}

/// The authorization-code grant before anyone authorized: no access token
/// is mounted, and no refresh token either (local mode). Not ready, and
/// says what to do.
pub struct Awaiting {
    reason: String,
}

impl Awaiting {
    pub fn new(files: &OAuthTokenFiles) -> Self {
        Self {
            reason: format!(
                "grantType AuthorizationCode has no token yet (Secret {:?} holds none): \
                 authorize the datasource through the sidekey operator, at the link in \
                 its status.authorizationUrl",
                files.access_token.secret
            ),
        }
    }
}

impl Authenticate for Awaiting {
    fn current(&self) -> Option<Arc<Credential>> {
        None
    }

    fn obtain(&self) -> BoxFuture<'_, Result<Arc<Credential>, RequestError>> {
        Box::pin(std::future::ready(Err(RequestError::TokenUnavailable {
            reason: self.reason.clone(),
            retry_after: None,
        })))
    }

    fn readiness(&self) -> Result<(), String> {
        Err(self.reason.clone())
    }
}

/// A token file's value as text, without the line end an editor may add.
fn text<'a>(value: &'a SecretValue, file: &SecretFile) -> Result<&'a str, ConfigError> {
    value
        .expose_str()
        .map(str::trim)
        .ok_or_else(|| ConfigError::SecretNotText {
            secret: file.secret.clone(),
            key: file.key.clone(),
        })
}

impl Authenticate for Mounted {
    fn current(&self) -> Option<Arc<Credential>> {
        let usable_until = self.expires_at.checked_sub(SKEW)?;
        (SystemTime::now() < usable_until).then(|| self.credential.clone())
    }

    fn obtain(&self) -> BoxFuture<'_, Result<Arc<Credential>, RequestError>> {
        let result = self
            .current()
            .ok_or_else(|| RequestError::TokenUnavailable {
                reason: self.expired(),
                retry_after: None,
            });
        Box::pin(std::future::ready(result))
    }

    fn readiness(&self) -> Result<(), String> {
        match self.current() {
            Some(_) => Ok(()),
            None => Err(self.expired()),
        }
    }

    fn expires_in(&self) -> Option<Duration> {
        Some(
            self.expires_at
                .duration_since(SystemTime::now())
                .unwrap_or_default(),
        )
    }
}
