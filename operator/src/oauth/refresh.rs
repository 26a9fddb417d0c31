//! The leader's part, run by every reconcile of an authorization-code
//! datasource: keep a valid authorization link while no one has
//! authorized, refresh the access token at half its lifetime once someone
//! has, and say which in the `Authorized` condition.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{Api, Client, ResourceExt};
use sidekey_crds::{ApiDatasource, ResolvedDatasource, ResolvedOAuth2};
use sidekey_oauth::endpoint::{Grant, Issued};

use super::link::{self, LIFETIME};
use super::tokens::{Failure, Link, Stored, Tokens};
use super::{Settings, token_endpoint};
use crate::error::ReconcileError;
use crate::metrics::Metrics;
use crate::validate::FetchedSecrets;

/// Reasons of the `Authorized` condition.
pub const AUTHORIZED: &str = "Authorized";
pub const AWAITING: &str = "AwaitingAuthorization";
pub const REFRESH_FAILED: &str = "RefreshFailed";
pub const ENDPOINT_DISABLED: &str = "AuthorizationEndpointDisabled";

/// What the `Authorized` condition and `status.authorizationUrl` say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    pub authorized: bool,
    pub reason: String,
    pub message: String,
    pub url: Option<String>,
    /// When this datasource needs the next look: a refresh, or a link
    /// that expires.
    pub recheck_in: Duration,
}

/// The refresh happens at this fraction of the token's lifetime, early
/// enough for a Secret volume to reach the pods (about a minute).
const REFRESH_AT: f64 = 0.5;
/// Looked at again at least this often.
const RECHECK: Duration = Duration::from_secs(10 * 60);

pub async fn reconcile(
    client: &Client,
    oauth: Option<&Settings>,
    metrics: &Metrics,
    ds: &ApiDatasource,
    resolved: &ResolvedDatasource,
    settings: &ResolvedOAuth2,
    fetched: &FetchedSecrets,
) -> Result<Authorization, ReconcileError> {
    let name = ds.name_any();
    let namespace = ds.namespace().unwrap_or_default();
    let Some(oauth) = oauth else {
        return Ok(Authorization {
            authorized: false,
            reason: ENDPOINT_DISABLED.into(),
            message: "the operator runs without --oauth-listen, so no one can authorize \
                      this datasource: start it with --oauth-listen and --oauth-public-url"
                .into(),
            url: None,
            recheck_in: RECHECK,
        });
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let stored = Stored::load(&secrets, &name)
        .await
        .map_err(|e| ReconcileError::kube(format!("reading the token Secret of {name:?}"), e))?;
    let now = Timestamp::now();
    let mut tokens = stored.tokens.clone();

    let due = tokens.refresh_at.is_none_or(|at| at <= now);
    let mut refreshed = false;
    if let Some(refresh_token) = tokens.refresh_token.clone().filter(|_| due) {
        let endpoint = token_endpoint(fetched, resolved, settings).map_err(|reason| {
            ReconcileError::TokenEndpoint {
                datasource: format!("{namespace}/{name}"),
                reason,
            }
        })?;
        match endpoint.request(Grant::RefreshToken(&refresh_token)).await {
            Ok(issued) => {
                metrics.oauth_refreshed("success");
                store(&mut tokens, issued, settings, now);
                refreshed = true;
                tracing::info!(datasource = %format!("{namespace}/{name}"), "access token refreshed");
            }
            Err(e) if e.is_refused_grant() => {
                metrics.oauth_refreshed("refused");
                // A person must authorize again; the access token serves
                // until it expires.
                tokens.refresh_token = None;
                tokens.refresh_at = None;
                tokens.failure = Some(Failure {
                    reason: REFRESH_FAILED.into(),
                    message: format!(
                        "the provider refused the refresh token ({}): authorize the \
                         datasource again at status.authorizationUrl",
                        sidekey_plumbing::chain::chain(&e)
                    ),
                });
            }
            Err(e) => {
                metrics.oauth_refreshed("failed");
                return Err(ReconcileError::TokenEndpoint {
                    datasource: format!("{namespace}/{name}"),
                    reason: sidekey_plumbing::chain::chain(&e),
                });
            }
        }
    }
    metrics.oauth_expiry(&namespace, &name, tokens.expires_at);

    let authorization = if tokens.refresh_token.is_some() {
        let refresh_at = tokens.refresh_at.unwrap_or(now);
        tokens.link = None;
        Authorization {
            authorized: true,
            reason: AUTHORIZED.into(),
            message: format!(
                "the operator holds a refresh token; the access token is valid until {}, \
                 the next refresh is at {refresh_at}",
                tokens
                    .expires_at
                    .map_or_else(|| "unknown".to_owned(), |t| t.to_string())
            ),
            url: None,
            recheck_in: until(now, refresh_at).min(RECHECK),
        }
    } else {
        let (url, expires_at) = match current_link(client, ds, tokens.link.as_ref(), now).await? {
            Some((url, expires_at)) => (Some(url), expires_at),
            None => {
                let nonce = link::random();
                let expires_at = now + SignedDuration::try_from(LIFETIME).unwrap_or_default();
                tokens.link = Some(Link {
                    nonce_sha256: link::sha256(&nonce),
                    expires_at,
                });
                (
                    Some(oauth.authorization_link(&namespace, &name, &nonce)),
                    expires_at,
                )
            }
        };
        let (reason, message) = match &tokens.failure {
            Some(f) => (f.reason.clone(), f.message.clone()),
            None => (
                AWAITING.to_owned(),
                "no one has authorized this datasource yet: open status.authorizationUrl \
                 in a browser within 15 minutes and sign in at the provider"
                    .to_owned(),
            ),
        };
        Authorization {
            authorized: false,
            reason,
            message,
            url,
            recheck_in: until(now, expires_at).min(RECHECK),
        }
    };

    if tokens != stored.tokens {
        let saved = if refreshed {
            stored.save_issued(&secrets, ds, &tokens).await
        } else {
            stored.save(&secrets, ds, &tokens).await
        };
        saved.map_err(ReconcileError::TokenSecret)?;
    }
    Ok(authorization)
}

/// Records newly issued tokens: the refresh token kept when the provider
/// sent none, the next refresh at half the lifetime.
pub fn store(tokens: &mut Tokens, issued: Issued, settings: &ResolvedOAuth2, now: Timestamp) {
    let lifetime = issued.expires_in.unwrap_or(Duration::from_secs(u64::from(
        settings.token_lifetime_seconds,
    )));
    let lifetime = SignedDuration::try_from(lifetime).unwrap_or(SignedDuration::from_secs(3600));
    tokens.access_token = Some(issued.access_token);
    tokens.expires_at = Some(now.saturating_add(lifetime).unwrap_or(now));
    tokens.refresh_at = Some(
        now.saturating_add(lifetime.mul_f64(REFRESH_AT))
            .unwrap_or(now),
    );
    if let Some(rotated) = issued.refresh_token {
        tokens.refresh_token = Some(rotated);
    }
    tokens.failure = None;
    tokens.link = None;
    tokens.pending = None;
}

fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// The link in the status, while it is the one `link` describes and has
/// not expired. The status is read fresh when the cached one does not
/// match: the cache may not have seen the link this operator just wrote,
/// and a new link each time would never settle.
async fn current_link(
    client: &Client,
    ds: &ApiDatasource,
    link: Option<&Link>,
    now: Timestamp,
) -> Result<Option<(String, Timestamp)>, ReconcileError> {
    let Some(link) = link.filter(|l| l.expires_at > now) else {
        return Ok(None);
    };
    let matches = |url: Option<&str>| {
        url.and_then(nonce_of)
            .is_some_and(|nonce| link::same(&link.nonce_sha256, &link::sha256(&nonce)))
    };
    let cached = ds
        .status
        .as_ref()
        .and_then(|s| s.authorization_url.as_deref());
    if matches(cached) {
        return Ok(cached.map(|u| (u.to_owned(), link.expires_at)));
    }
    let name = ds.name_any();
    let api: Api<ApiDatasource> =
        Api::namespaced(client.clone(), &ds.namespace().unwrap_or_default());
    let fresh = api
        .get_opt(&name)
        .await
        .map_err(|e| ReconcileError::kube(format!("reading ApiDatasource {name:?}"), e))?;
    let url = fresh
        .and_then(|d| d.status)
        .and_then(|s| s.authorization_url);
    Ok(url
        .filter(|u| matches(Some(u)))
        .map(|u| (u, link.expires_at)))
}

/// The nonce of an authorization link.
fn nonce_of(url: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    url.query_pairs()
        .find(|(k, _)| k == "nonce")
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidekey_crds::SecretValue;

    #[test]
    fn a_refresh_is_due_at_half_the_lifetime_and_keeps_an_unrotated_refresh_token() {
        let settings: ResolvedOAuth2 = serde_json::from_value(serde_json::json!({
            "grantType": "AuthorizationCode", "accessTokenUrl": "https://a/token",
            "clientId": "c", "clientSecret": {"secret": "s", "key": "k", "path": "s/k"},
            "clientAuthentication": "Body", "addTokenTo": "Header", "headerPrefix": "Bearer",
            "sendScopeOnRefresh": false, "tokenLifetimeSeconds": 3600
        }))
        .expect("settings");
        let now = Timestamp::from_second(1_000_000).expect("now");
        let mut tokens = Tokens {
            refresh_token: Some(SecretValue::new("old")),
            ..Default::default()
        };
        store(
            &mut tokens,
            Issued {
                access_token: SecretValue::new("a1"),
                expires_in: Some(Duration::from_secs(10)),
                refresh_token: None,
            },
            &settings,
            now,
        );
        assert_eq!(tokens.refresh_token, Some(SecretValue::new("old")));
        assert_eq!(tokens.expires_at, Timestamp::from_second(1_000_010).ok());
        assert_eq!(tokens.refresh_at, Timestamp::from_second(1_000_005).ok());
    }

    #[test]
    fn the_nonce_is_read_back_from_the_link() {
        let settings = Settings {
            listen: ([127, 0, 0, 1], 0).into(),
            public_url: "https://sidekey.example/base/".parse().expect("url"),
        };
        let url = settings.authorization_link("shop", "payments", "n0nce");
        assert_eq!(
            url,
            "https://sidekey.example/base/oauth2/authorize/shop/payments?nonce=n0nce"
        );
        assert_eq!(nonce_of(&url).as_deref(), Some("n0nce"));
    }
}
