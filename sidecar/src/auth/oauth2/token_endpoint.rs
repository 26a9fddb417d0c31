//! Requests to the OAuth 2.0 token endpoint, made with the `oauth2` crate
//! over reqwest (which trusts the same CA set as the upstream client).
//!
//! `oauth2` expresses all the issue asks: scopes, extra parameters
//! (`audience`, `resource`, custom ones), and client authentication in the
//! body or as an RFC 6749 Basic header whose id and secret are
//! form-urlencoded first.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use oauth2::basic::{BasicClient, BasicTokenResponse};
use oauth2::{
    AuthType, ClientId, ClientSecret, EndpointNotSet, EndpointSet, HttpRequest, HttpResponse,
    RefreshToken, RequestTokenError, Scope, TokenResponse, TokenUrl,
};
use sidekey_crds::{ClientAuthentication, ResolvedOAuth2, SecretValue};

use crate::error::{ConfigError, chain};

type Client =
    BasicClient<EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// A token response larger than this is not a token response.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Which grant a token request uses.
pub enum Grant<'a> {
    ClientCredentials,
    RefreshToken(&'a SecretValue),
}

/// A token as the endpoint issued it.
pub struct Issued {
    pub access_token: SecretValue,
    pub expires_in: Option<Duration>,
    /// A new refresh token, when the server rotates them.
    pub refresh_token: Option<SecretValue>,
}

pub struct TokenEndpoint {
    client: Client,
    http: reqwest::Client,
    url: String,
    scopes: Vec<Scope>,
    send_scope_on_refresh: bool,
    /// `audience`, `resource` and the custom parameters, in that order.
    extra: Vec<(String, String)>,
}

impl TokenEndpoint {
    pub fn new(
        settings: &ResolvedOAuth2,
        client_secret: &str,
        tls: &Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let token_url = TokenUrl::new(settings.access_token_url.clone()).map_err(|e| {
            ConfigError::InvalidUrl {
                field: "authentication.oauth2.accessTokenUrl",
                source: e.into(),
            }
        })?;
        let auth_type = match settings.client_authentication {
            ClientAuthentication::Body => AuthType::RequestBody,
            ClientAuthentication::BasicHeader => AuthType::BasicAuth,
        };
        let client = BasicClient::new(ClientId::new(settings.client_id.clone()))
            .set_client_secret(ClientSecret::new(client_secret.to_owned()))
            .set_token_uri(token_url)
            .set_auth_type(auth_type);
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured((**tls).clone())
            .timeout(timeout)
            .connect_timeout(timeout)
            // A token endpoint that redirects could send the client secret
            // elsewhere; OAuth 2.0 clients must not follow.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_max_idle_per_host(1)
            .build()
            .map_err(|source| ConfigError::TokenClient { source })?;
        let mut extra = Vec::new();
        if let Some(audience) = &settings.audience {
            extra.push(("audience".to_owned(), audience.clone()));
        }
        if let Some(resource) = &settings.resource {
            extra.push(("resource".to_owned(), resource.clone()));
        }
        for p in &settings.custom_parameters {
            extra.push((p.name.clone(), p.value.clone()));
        }
        Ok(Self {
            client,
            http,
            url: settings.access_token_url.clone(),
            scopes: settings.scopes.iter().cloned().map(Scope::new).collect(),
            send_scope_on_refresh: settings.send_scope_on_refresh,
            extra,
        })
    }

    /// Asks for a token. The error is a sentence for logs and error bodies:
    /// it names the endpoint and what it said, never a secret.
    pub async fn request(&self, grant: Grant<'_>) -> Result<Issued, String> {
        // The client owns what it uses: a future borrowing from here would
        // not be `Send` for every lifetime, as spawned tasks need.
        let status = Arc::new(Mutex::new(None));
        let (http, seen) = (self.http.clone(), status.clone());
        let send = move |request: HttpRequest| send(http.clone(), request, seen.clone());
        let result = match grant {
            Grant::ClientCredentials => {
                let mut request = self
                    .client
                    .exchange_client_credentials()
                    .add_scopes(self.scopes.iter().cloned());
                for (name, value) in &self.extra {
                    request = request.add_extra_param(name.as_str(), value.as_str());
                }
                request.request_async(&send).await
            }
            Grant::RefreshToken(token) => {
                let token = token
                    .expose_str()
                    .ok_or("the stored refresh token is not text")?;
                let token = RefreshToken::new(token.to_owned());
                let mut request = self.client.exchange_refresh_token(&token);
                if self.send_scope_on_refresh {
                    request = request.add_scopes(self.scopes.iter().cloned());
                }
                for (name, value) in &self.extra {
                    request = request.add_extra_param(name.as_str(), value.as_str());
                }
                request.request_async(&send).await
            }
        };
        let status = status.lock().ok().and_then(|s| *s);
        result.map(issued).map_err(|e| self.describe(e, status))
    }

    fn describe(
        &self,
        error: RequestTokenError<reqwest::Error, oauth2::basic::BasicErrorResponse>,
        status: Option<http::StatusCode>,
    ) -> String {
        let status = status.map_or(String::new(), |s| format!(" with HTTP {}", s.as_u16()));
        let url = &self.url;
        match error {
            RequestTokenError::ServerResponse(e) => {
                let description = e
                    .error_description()
                    .map_or(String::new(), |d| format!(": {d}"));
                format!(
                    "the token endpoint {url} answered{status} {}{description}",
                    e.error()
                )
            }
            RequestTokenError::Request(e) => {
                format!("the token endpoint {url} cannot be reached: {}", chain(&e))
            }
            // The body may hold a token: name only where parsing stopped.
            RequestTokenError::Parse(e, _body) => format!(
                "the token endpoint {url} answered{status} with something that is not a token \
                 response ({:?} error at {})",
                e.inner().classify(),
                e.path()
            ),
            RequestTokenError::Other(other) => {
                format!("the token endpoint {url} answered{status}: {other}")
            }
        }
    }
}

fn issued(response: BasicTokenResponse) -> Issued {
    Issued {
        access_token: SecretValue::new(response.access_token().secret().as_bytes()),
        // A zero lifetime says nothing useful; treat it as absent.
        expires_in: response.expires_in().filter(|d| !d.is_zero()),
        refresh_token: response
            .refresh_token()
            .map(|t| SecretValue::new(t.secret().as_bytes())),
    }
}

/// The HTTP client `oauth2` calls, on reqwest 0.13.
async fn send(
    http: reqwest::Client,
    request: HttpRequest,
    status: Arc<Mutex<Option<http::StatusCode>>>,
) -> Result<HttpResponse, reqwest::Error> {
    let request = reqwest::Request::try_from(request)?;
    let mut response = http.execute(request).await?;
    if let Ok(mut s) = status.lock() {
        *s = Some(response.status());
    }
    let mut out = http::Response::new(Vec::new());
    *out.status_mut() = response.status();
    *out.headers_mut() = std::mem::take(response.headers_mut());
    // Bounded: a huge answer is cut, then fails to parse.
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_RESPONSE_BYTES.saturating_sub(out.body().len());
        out.body_mut()
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room <= chunk.len() {
            break;
        }
    }
    Ok(out)
}
