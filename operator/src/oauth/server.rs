//! The authorization endpoint a person's browser talks to (plain HTTP on
//! `--oauth-listen`, behind an Ingress or a port-forward):
//!
//! - `GET /oauth2/authorize/<namespace>/<name>?nonce=...`, the link in
//!   `status.authorizationUrl`: checks the nonce (single use, 15 minutes),
//!   starts an authorization (a `state` bound to the datasource, a PKCE
//!   verifier, both kept in the token Secret) and redirects to the
//!   provider;
//! - `GET /oauth2/callback?code=...&state=...` (or `error=...`), where the
//!   datasource's `redirectUrl` points: checks `state`, exchanges the code
//!   and stores the tokens.
//!
//! Each answer is a small page that says what happened and what to do. A
//! failure is also recorded in the token Secret, so the leader's next
//! reconcile puts it in the status and an Event. Nothing secret is ever in
//! a page or a log line.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{Api, Client};
use sidekey_crds::names::{OAUTH_AUTHORIZE_PATH, OAUTH_CALLBACK_PATH};
use sidekey_crds::{ApiDatasource, ResolvedOAuth2, SecretValue};
use sidekey_oauth::endpoint::Grant;
use tokio_util::sync::CancellationToken;

use super::link::{self, LIFETIME};
use super::refresh::store;
use super::tokens::{Failure, Pending, SaveError, Stored};
use super::{Settings, authorization_code, token_endpoint};
use crate::error::StartupError;
use crate::metrics::Metrics;
use crate::validate::FetchedSecrets;

/// Failure reasons the endpoint records (the `Authorized` condition's).
pub const LINK_EXPIRED: &str = "AuthorizationLinkExpired";
pub const INVALID_STATE: &str = "InvalidState";
pub const ACCESS_DENIED: &str = "AccessDenied";
pub const AUTHORIZATION_FAILED: &str = "AuthorizationFailed";
pub const CODE_EXCHANGE_FAILED: &str = "CodeExchangeFailed";

struct Endpoint {
    client: Client,
    metrics: Metrics,
}

/// Binds `--oauth-listen` and serves until `shutdown`; returns the bound
/// address.
pub async fn serve(
    client: Client,
    settings: Arc<Settings>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<SocketAddr, StartupError> {
    let addr = settings.listen;
    let (listener, bound) = sidekey_plumbing::serve::bind(addr)
        .await
        .map_err(|source| StartupError::OAuthListen { addr, source })?;
    let endpoint = Arc::new(Endpoint { client, metrics });
    tokio::spawn(sidekey_plumbing::serve::serve(
        "oauth",
        None,
        listener,
        move |request| {
            let endpoint = endpoint.clone();
            async move { Ok::<_, Infallible>(endpoint.handle(request).await.into_response()) }
        },
        shutdown.cancelled_owned(),
        Duration::from_secs(5),
    ));
    Ok(bound)
}

/// A page: its status, title and text.
struct Page {
    status: StatusCode,
    title: &'static str,
    text: String,
    /// A redirect instead of a page.
    location: Option<String>,
}

impl Page {
    fn new(status: StatusCode, title: &'static str, text: impl Into<String>) -> Self {
        Self {
            status,
            title,
            text: text.into(),
            location: None,
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let body = format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>sidekey: {title}</title></head>\
             <body><h1>{title}</h1><p>{text}</p></body></html>\n",
            title = escape(self.title),
            text = escape(&self.text)
        );
        let location = self
            .location
            .and_then(|l| header::HeaderValue::from_str(&l).ok());
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = if location.is_some() {
            StatusCode::FOUND
        } else {
            self.status
        };
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/html; charset=utf-8"),
        );
        // Links and codes must not linger in caches or leak as referrers.
        headers.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            header::HeaderValue::from_static("no-referrer"),
        );
        if let Some(location) = location {
            headers.insert(header::LOCATION, location);
        }
        response
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The query's parameters, decoded.
fn query(request: &Request<impl Sized>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn how_to_get_a_link(namespace: &str, name: &str) -> String {
    format!(
        "Get the current link with: kubectl get apidatasource {name} -n {namespace} \
         -o jsonpath='{{.status.authorizationUrl}}'"
    )
}

impl Endpoint {
    async fn handle<B>(&self, request: Request<B>) -> Page {
        if request.method() != Method::GET {
            return Page::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
                "Only GET is served here.",
            );
        }
        let path = request.uri().path().to_owned();
        let params = query(&request);
        let page = if path == OAUTH_CALLBACK_PATH {
            self.callback(&params).await
        } else if let Some(rest) = path
            .strip_prefix(OAUTH_AUTHORIZE_PATH)
            .and_then(|r| r.strip_prefix('/'))
            && let Some((namespace, name)) = rest.split_once('/')
            && !name.contains('/')
        {
            self.authorize(namespace, name, param(&params, "nonce").unwrap_or(""))
                .await
        } else {
            Page::new(StatusCode::NOT_FOUND, "Not found", "No such page.")
        };
        self.metrics.oauth_request(
            if path == OAUTH_CALLBACK_PATH {
                "callback"
            } else {
                "authorize"
            },
            page.status,
        );
        page
    }

    /// The datasource, resolved, and its authorization-code settings, or
    /// the page that says why there are none.
    async fn datasource(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<
        (
            ApiDatasource,
            sidekey_crds::ResolvedDatasource,
            ResolvedOAuth2,
        ),
        Page,
    > {
        let api: Api<ApiDatasource> = Api::namespaced(self.client.clone(), namespace);
        let unknown = || {
            Page::new(
                StatusCode::NOT_FOUND,
                "Unknown datasource",
                format!(
                    "There is no ApiDatasource {namespace}/{name} with grantType \
                     AuthorizationCode."
                ),
            )
        };
        let ds = match api.get_opt(name).await {
            Ok(Some(ds)) => ds,
            Ok(None) => return Err(unknown()),
            Err(e) => return Err(unavailable(&e)),
        };
        let resolved = ds.resolve().map_err(|_| unknown())?;
        let settings = authorization_code(&resolved).cloned().ok_or_else(unknown)?;
        Ok((ds, resolved, settings))
    }

    async fn authorize(&self, namespace: &str, name: &str, nonce: &str) -> Page {
        let (ds, _, settings) = match self.datasource(namespace, name).await {
            Ok(found) => found,
            Err(page) => return page,
        };
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let stored = match Stored::load(&secrets, name).await {
            Ok(stored) => stored,
            Err(e) => return unavailable(&e),
        };
        let now = Timestamp::now();
        let mut tokens = stored.tokens.clone();
        let valid = tokens.link.as_ref().is_some_and(|l| {
            l.expires_at > now
                && !nonce.is_empty()
                && link::same(&l.nonce_sha256, &link::sha256(nonce))
        });
        if !valid {
            let message = format!(
                "An authorization link was opened that has expired or was already used. {}",
                how_to_get_a_link(namespace, name)
            );
            let failure = Failure {
                reason: LINK_EXPIRED.into(),
                message: message.clone(),
            };
            // The page says it whatever happens to the write.
            if let Err(e) = stored.save_failure(&secrets, &ds, failure).await {
                tracing::warn!(error = %sidekey_plumbing::chain::chain(&e), "cannot record the expired link");
            }
            return Page::new(StatusCode::GONE, "This link cannot be used", message);
        }
        let state = link::new_state(namespace, name);
        let request = match sidekey_oauth::authorize::authorization_request(&settings, &state) {
            Ok(request) => request,
            Err(e) => {
                return Page::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Cannot start the authorization",
                    sidekey_plumbing::chain::chain(&e),
                );
            }
        };
        tokens.link = None;
        tokens.failure = None;
        tokens.pending = Some(Pending {
            state_sha256: link::sha256(&state),
            pkce_verifier: request.pkce_verifier,
            expires_at: now + SignedDuration::try_from(LIFETIME).unwrap_or_default(),
        });
        match stored.save(&secrets, &ds, &tokens).await {
            Ok(()) => {}
            Err(SaveError::Conflict(_)) => {
                return Page::new(
                    StatusCode::CONFLICT,
                    "This link was just used",
                    format!(
                        "Someone opened this link a moment ago. {}",
                        how_to_get_a_link(namespace, name)
                    ),
                );
            }
            Err(e) => return unavailable(&e),
        }
        tracing::info!(datasource = %format!("{namespace}/{name}"), "authorization started");
        let mut page = Page::new(
            StatusCode::FOUND,
            "Redirecting",
            "To the provider's sign-in.",
        );
        page.location = Some(request.url.to_string());
        page
    }

    async fn callback(&self, params: &[(String, String)]) -> Page {
        let state = param(params, "state").unwrap_or("");
        let Some((namespace, name)) = link::state_datasource(state) else {
            return Page::new(
                StatusCode::BAD_REQUEST,
                "Unknown authorization",
                "This answer from the provider belongs to no authorization started here.",
            );
        };
        let (ds, resolved, settings) = match self.datasource(&namespace, &name).await {
            Ok(found) => found,
            Err(page) => return page,
        };
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        let stored = match Stored::load(&secrets, &name).await {
            Ok(stored) => stored,
            Err(e) => return unavailable(&e),
        };
        let now = Timestamp::now();
        let mut tokens = stored.tokens.clone();
        // A state that matches nothing leaves the authorization in
        // progress alone: a stray or forged callback cannot cancel it.
        let pending = tokens
            .pending
            .clone()
            .filter(|p| p.expires_at > now && link::same(&p.state_sha256, &link::sha256(state)));
        if pending.is_some() {
            tokens.pending = None;
        }
        let who = format!("{namespace}/{name}");
        let (page, failure) = match (pending, param(params, "error"), param(params, "code")) {
            (None, _, _) => {
                let message = format!(
                    "The provider's answer does not match the authorization in progress \
                     (unknown, used or expired state). {}",
                    how_to_get_a_link(&namespace, &name)
                );
                (
                    Page::new(
                        StatusCode::BAD_REQUEST,
                        "Unknown authorization",
                        message.clone(),
                    ),
                    Some((INVALID_STATE, message)),
                )
            }
            (Some(_), Some(error), _) => {
                let reason = if error == "access_denied" {
                    ACCESS_DENIED
                } else {
                    AUTHORIZATION_FAILED
                };
                let description = param(params, "error_description")
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default();
                let message = format!(
                    "The provider answered {error}{description}: the datasource {who} is not \
                     connected. {}",
                    how_to_get_a_link(&namespace, &name)
                );
                (
                    Page::new(StatusCode::FORBIDDEN, "Not authorized", message.clone()),
                    Some((reason, message)),
                )
            }
            (Some(pending), None, Some(code)) => {
                match self
                    .exchange(&secrets, &resolved, &settings, code, &pending.pkce_verifier)
                    .await
                {
                    Ok(issued) => {
                        store(&mut tokens, issued, &settings, now);
                        (
                            Page::new(
                                StatusCode::OK,
                                "Connected",
                                format!(
                                    "The datasource {who} is now connected: sidekey keeps its \
                                     access token fresh from now on. You can close this page."
                                ),
                            ),
                            None,
                        )
                    }
                    Err(reason) => {
                        let message = format!(
                            "The code from the provider could not be exchanged for a token: \
                             {reason}. {}",
                            how_to_get_a_link(&namespace, &name)
                        );
                        (
                            Page::new(StatusCode::BAD_GATEWAY, "Not connected", message.clone()),
                            Some((CODE_EXCHANGE_FAILED, message)),
                        )
                    }
                }
            }
            (Some(_), None, None) => {
                let message =
                    "The provider's answer carries neither a code nor an error.".to_owned();
                (
                    Page::new(StatusCode::BAD_REQUEST, "Not connected", message.clone()),
                    Some((AUTHORIZATION_FAILED, message)),
                )
            }
        };
        let failure_recorded = failure.is_some();
        if let Some((reason, message)) = failure {
            tracing::warn!(datasource = %who, reason, "authorization failed");
            tokens.failure = Some(Failure {
                reason: reason.into(),
                message,
            });
        } else {
            tracing::info!(datasource = %who, "authorized");
        }
        let saved = if failure_recorded {
            stored.save(&secrets, &ds, &tokens).await
        } else {
            stored.save_issued(&secrets, &ds, &tokens).await
        };
        match saved {
            Ok(()) => page,
            // Someone else wrote first; the page still says what happened.
            Err(SaveError::Conflict(_)) if failure_recorded => page,
            Err(e) => unavailable(&e),
        }
    }

    async fn exchange(
        &self,
        secrets: &Api<Secret>,
        resolved: &sidekey_crds::ResolvedDatasource,
        settings: &sidekey_crds::ResolvedOAuth2,
        code: &str,
        verifier: &SecretValue,
    ) -> Result<sidekey_oauth::endpoint::Issued, String> {
        let fetched = FetchedSecrets::fetch(secrets, &resolved.secret_uses())
            .await
            .map_err(|e| sidekey_plumbing::chain::chain(&e))?;
        let endpoint = token_endpoint(&fetched, resolved, settings)?;
        let verifier = verifier
            .expose_str()
            .ok_or("the stored PKCE verifier is not text")?;
        endpoint
            .request(Grant::AuthorizationCode {
                code,
                pkce_verifier: verifier,
            })
            .await
            .map_err(|e| sidekey_plumbing::chain::chain(&e))
    }
}

/// The page for an API server that did not answer.
fn unavailable(error: &(dyn std::error::Error + 'static)) -> Page {
    tracing::warn!(error = %sidekey_plumbing::chain::Chain(error), "authorization endpoint");
    Page::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again",
        "The operator cannot reach the Kubernetes API right now; try again in a moment.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_what_they_show() {
        let page = Page::new(StatusCode::OK, "Connected", "<script>x</script> & 'q'");
        let response = page.into_response();
        assert_eq!(
            response
                .headers()
                .get(header::CACHE_CONTROL)
                .map(|v| v.as_bytes()),
            Some(b"no-store".as_slice())
        );
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
