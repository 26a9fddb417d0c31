//! Requests to the OAuth 2.0 token endpoint, made with the `oauth2` crate
//! over reqwest, trusting the datasource's CA set ([`crate::tls`]).
//!
//! `oauth2` expresses every grant sidekey uses and all the settings ask:
//! scopes, extra parameters (`audience`, `resource`, custom ones), and
//! client authentication in the body or as an RFC 6749 Basic header whose
//! id and secret are form-urlencoded first.
//!
//! Every grant sends the same extra parameters: `resource` belongs on the
//! token request of each grant (RFC 8707 section 2.2, the code exchange and
//! a refresh included), `audience` is read there by the providers that use
//! it, and the custom parameters are, as the schema says, "sent with every
//! token request". The code exchange also sends `redirect_uri`
//! (`redirectUrl`, required there by RFC 6749 section 4.1.3 when the
//! authorization request carried it, as [`crate::authorize`]'s always
//! does) and the PKCE `code_verifier` (RFC 7636 section 4.5).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use oauth2::basic::{BasicClient, BasicErrorResponse, BasicTokenResponse};
use oauth2::{
    AuthType, AuthorizationCode, ClientId, ClientSecret, EndpointNotSet, EndpointSet, HttpRequest,
    HttpResponse, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope,
    TokenResponse, TokenUrl,
};
use sidekey_crds::{ClientAuthentication, ResolvedOAuth2, SecretValue};
use thiserror::Error;

type Client =
    BasicClient<EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// A token response larger than this is not a token response.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// The OAuth 2.0 settings cannot make a client or an authorization
/// request.
#[derive(Debug, Error)]
pub enum EndpointError {
    #[error("authentication.oauth2.{field} is not set: the authorization-code grant needs it")]
    Missing { field: &'static str },
    #[error("authentication.oauth2.{field} {url:?} is not a valid URL")]
    InvalidUrl {
        field: &'static str,
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error("cannot set up the token endpoint's HTTP client")]
    Client(#[source] reqwest::Error),
}

/// Which grant a token request uses.
pub enum Grant<'a> {
    ClientCredentials,
    RefreshToken(&'a SecretValue),
    /// The code the authorization server sent to the callback, and the
    /// PKCE verifier of the authorization request that obtained it.
    AuthorizationCode {
        code: &'a str,
        pkce_verifier: &'a str,
    },
}

/// A token as the endpoint issued it.
#[derive(Debug)]
pub struct Issued {
    pub access_token: SecretValue,
    /// The announced lifetime; a zero one is taken as none.
    pub expires_in: Option<Duration>,
    /// A refresh token: the first, or a new one when the server rotates
    /// them. `None` means "keep the one you have".
    pub refresh_token: Option<SecretValue>,
}

/// Why a token request failed. Each message names the endpoint and what
/// it said, never a secret: it is fit for logs, error bodies, Events and
/// status conditions, with its source appended (`sidekey_plumbing::chain`).
#[derive(Debug, Error)]
pub enum TokenError {
    /// The endpoint answered with an RFC 6749 error response.
    #[error(
        "the token endpoint {url} answered{} {error}{}",
        WithStatus(*.status),
        .description.as_ref().map_or(String::new(), |d| format!(": {d}"))
    )]
    Refused {
        url: String,
        status: Option<u16>,
        /// The `error` code, as `invalid_grant`.
        error: String,
        /// The `error_description`, if any.
        description: Option<String>,
    },
    #[error("the token endpoint {url} cannot be reached")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The body did not parse; `detail` says where parsing stopped, never
    /// what the body held (it may hold a token).
    #[error(
        "the token endpoint {url} answered{} with something that is not a token response \
         ({detail})",
        WithStatus(*.status)
    )]
    NotATokenResponse {
        url: String,
        status: Option<u16>,
        detail: String,
    },
    /// Any other failure `oauth2` reports (an empty error body, a wrong
    /// content type).
    #[error("the token endpoint {url} answered{}: {detail}", WithStatus(*.status))]
    Other {
        url: String,
        status: Option<u16>,
        detail: String,
    },
    /// The refresh token held is not text, so it cannot be sent.
    #[error("the stored refresh token is not text")]
    RefreshTokenNotText,
}

impl TokenError {
    /// Whether the grant itself was refused, so that asking again with it
    /// cannot succeed and only a new authorization helps (a person signs in
    /// again): the endpoint answered `invalid_grant` (RFC 6749 section 5.2:
    /// the code or refresh token is invalid, expired, revoked or was issued
    /// to another client), or the refresh token held cannot be sent at all.
    ///
    /// Every other failure is `false`: an unreachable or failing endpoint
    /// may come back, so retry with backoff. That includes
    /// `invalid_client` and `unauthorized_client`, which speak of the
    /// client's own settings (its secret, its allowed grants): a new
    /// authorization would be refused the same way, while a corrected
    /// client Secret or provider setting lets the retry through.
    pub fn is_refused_grant(&self) -> bool {
        match self {
            Self::Refused { error, .. } => error == "invalid_grant",
            Self::RefreshTokenNotText => true,
            Self::Unreachable { .. } | Self::NotATokenResponse { .. } | Self::Other { .. } => false,
        }
    }
}

/// `" with HTTP 400"`, or nothing when no status was seen.
struct WithStatus(Option<u16>);

impl std::fmt::Display for WithStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(status) => write!(f, " with HTTP {status}"),
            None => Ok(()),
        }
    }
}

/// One datasource's token endpoint, with its client credentials and
/// settings. Cheap to clone.
#[derive(Clone)]
pub struct TokenEndpoint {
    client: Client,
    http: reqwest::Client,
    url: String,
    scopes: Vec<Scope>,
    send_scope_on_refresh: bool,
    extra: Vec<(String, String)>,
}

impl TokenEndpoint {
    /// A client for `settings.access_token_url`, trusting `tls`; each
    /// request (connection included) must finish within `timeout`.
    pub fn new(
        settings: &ResolvedOAuth2,
        client_secret: &str,
        tls: &Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Self, EndpointError> {
        let token_url = TokenUrl::new(settings.access_token_url.clone()).map_err(|source| {
            EndpointError::InvalidUrl {
                field: "accessTokenUrl",
                url: settings.access_token_url.clone(),
                source,
            }
        })?;
        let auth_type = match settings.client_authentication {
            ClientAuthentication::Body => AuthType::RequestBody,
            ClientAuthentication::BasicHeader => AuthType::BasicAuth,
        };
        let mut client = BasicClient::new(ClientId::new(settings.client_id.clone()))
            .set_client_secret(ClientSecret::new(client_secret.to_owned()))
            .set_token_uri(token_url)
            .set_auth_type(auth_type);
        if let Some(redirect) = redirect_url(settings)? {
            client = client.set_redirect_uri(redirect);
        }
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
            .map_err(EndpointError::Client)?;
        Ok(Self {
            client,
            http,
            url: settings.access_token_url.clone(),
            scopes: scopes(settings),
            send_scope_on_refresh: settings.send_scope_on_refresh,
            extra: extra_params(settings),
        })
    }

    /// The token endpoint's URL, as the settings give it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Asks for a token. `scope` goes with the client-credentials grant,
    /// and with a refresh only when `sendScopeOnRefresh` is set (the
    /// refreshed grant keeps its scope otherwise, RFC 6749 section 6); the
    /// code exchange has none (the scope was asked for at authorization).
    pub async fn request(&self, grant: Grant<'_>) -> Result<Issued, TokenError> {
        // The client owns what it uses: a future borrowing from here would
        // not be `Send` for every lifetime, as spawned tasks need.
        let status = Arc::new(Mutex::new(None));
        let (http, seen) = (self.http.clone(), status.clone());
        let send = move |request: HttpRequest| send(http.clone(), request, seen.clone());
        let extra = || self.extra.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        let result = match grant {
            Grant::ClientCredentials => {
                let request = self
                    .client
                    .exchange_client_credentials()
                    .add_scopes(self.scopes.iter().cloned());
                extra()
                    .fold(request, |r, (n, v)| r.add_extra_param(n, v))
                    .request_async(&send)
                    .await
            }
            Grant::RefreshToken(token) => {
                let token = token.expose_str().ok_or(TokenError::RefreshTokenNotText)?;
                let token = RefreshToken::new(token.to_owned());
                let mut request = self.client.exchange_refresh_token(&token);
                if self.send_scope_on_refresh {
                    request = request.add_scopes(self.scopes.iter().cloned());
                }
                extra()
                    .fold(request, |r, (n, v)| r.add_extra_param(n, v))
                    .request_async(&send)
                    .await
            }
            Grant::AuthorizationCode {
                code,
                pkce_verifier,
            } => {
                let request = self
                    .client
                    .exchange_code(AuthorizationCode::new(code.to_owned()))
                    .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()));
                extra()
                    .fold(request, |r, (n, v)| r.add_extra_param(n, v))
                    .request_async(&send)
                    .await
            }
        };
        let status = status.lock().ok().and_then(|s| *s).map(|s| s.as_u16());
        result.map(issued).map_err(|e| self.describe(e, status))
    }

    fn describe(
        &self,
        error: RequestTokenError<reqwest::Error, BasicErrorResponse>,
        status: Option<u16>,
    ) -> TokenError {
        let url = self.url.clone();
        match error {
            RequestTokenError::ServerResponse(e) => TokenError::Refused {
                url,
                status,
                error: e.error().to_string(),
                description: e.error_description().cloned(),
            },
            RequestTokenError::Request(source) => TokenError::Unreachable { url, source },
            // The body may hold a token: name only where parsing stopped.
            RequestTokenError::Parse(e, _body) => TokenError::NotATokenResponse {
                url,
                status,
                detail: format!("{:?} error at {}", e.inner().classify(), e.path()),
            },
            RequestTokenError::Other(detail) => TokenError::Other {
                url,
                status,
                detail,
            },
        }
    }
}

/// The configured scopes.
pub(crate) fn scopes(settings: &ResolvedOAuth2) -> Vec<Scope> {
    settings.scopes.iter().cloned().map(Scope::new).collect()
}

/// `audience`, `resource` and the custom parameters, in that order.
pub(crate) fn extra_params(settings: &ResolvedOAuth2) -> Vec<(String, String)> {
    let named = [
        ("audience", &settings.audience),
        ("resource", &settings.resource),
    ];
    let named = named
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_owned(), value.clone()?)));
    let custom = settings
        .custom_parameters
        .iter()
        .map(|p| (p.name.clone(), p.value.clone()));
    named.chain(custom).collect()
}

/// `redirectUrl`, parsed, when set.
pub(crate) fn redirect_url(
    settings: &ResolvedOAuth2,
) -> Result<Option<RedirectUrl>, EndpointError> {
    let Some(url) = &settings.redirect_url else {
        return Ok(None);
    };
    RedirectUrl::new(url.clone())
        .map(Some)
        .map_err(|source| EndpointError::InvalidUrl {
            field: "redirectUrl",
            url: url.clone(),
            source,
        })
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

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use sidekey_crds::{GrantType, NameValue, SecretFile, TokenPlacement};
    use sidekey_plumbing::chain::chain;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    use super::*;

    const SECRET: &str = "s3cr3t";

    /// Authorization-code settings with every optional part set.
    pub(crate) fn settings() -> ResolvedOAuth2 {
        ResolvedOAuth2 {
            grant_type: GrantType::AuthorizationCode,
            access_token_url: "https://auth.example/token".into(),
            client_id: "shop client".into(),
            client_secret: SecretFile {
                secret: "oauth".into(),
                key: "client-secret".into(),
                path: "oauth/client-secret".into(),
            },
            scopes: vec!["payments.read".into(), "payments.write".into()],
            client_authentication: ClientAuthentication::Body,
            add_token_to: TokenPlacement::Header,
            header_prefix: "Bearer".into(),
            audience: Some("https://payments.internal".into()),
            resource: Some("https://payments.internal/v2".into()),
            custom_parameters: vec![NameValue {
                name: "tenant".into(),
                value: "a&b=c".into(),
            }],
            authorization_url: Some("https://auth.example/authorize".into()),
            redirect_url: Some("https://operator.example/oauth2/callback?x=1".into()),
            send_scope_on_refresh: false,
            token_lifetime_seconds: 3600,
        }
    }

    /// What the fake endpoint received: the request head and the form.
    struct Received {
        head: String,
        form: HashMap<String, String>,
    }

    /// A token endpoint on loopback that answers one request with
    /// `status` and the JSON `body`.
    async fn endpoint_once(status: u16, body: &'static str) -> (String, JoinHandle<Received>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/token", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, length) = loop {
                let n = stream.read(&mut chunk).await.expect("read");
                assert!(n > 0, "the request ended early");
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    let length = head
                        .lines()
                        .filter_map(|l| l.split_once(':'))
                        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                        .map_or(0, |(_, v)| v.trim().parse().expect("length"));
                    buf.drain(..end + 4);
                    break (head, length);
                }
            };
            while buf.len() < length {
                let n = stream.read(&mut chunk).await.expect("read");
                assert!(n > 0, "the body ended early");
                buf.extend_from_slice(&chunk[..n]);
            }
            let response = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(response.as_bytes()).await.expect("write");
            let form = url::form_urlencoded::parse(&buf).into_owned().collect();
            Received { head, form }
        });
        (url, task)
    }

    fn endpoint(url: &str, change: impl FnOnce(&mut ResolvedOAuth2)) -> TokenEndpoint {
        let mut s = settings();
        s.access_token_url = url.to_owned();
        change(&mut s);
        let tls = crate::tls::client_config(None, true).expect("tls");
        TokenEndpoint::new(&s, SECRET, &tls, Duration::from_secs(5)).expect("endpoint")
    }

    const TOKEN: &str =
        r#"{"access_token":"at-1","token_type":"Bearer","expires_in":60,"refresh_token":"rt-2"}"#;

    #[tokio::test]
    async fn the_code_exchange_sends_the_code_verifier_redirect_and_extras() {
        let (url, received) = endpoint_once(200, TOKEN).await;
        let issued = endpoint(&url, |_| {})
            .request(Grant::AuthorizationCode {
                code: "the code",
                pkce_verifier: "the-verifier",
            })
            .await
            .expect("token");
        assert_eq!(issued.access_token.expose_str(), Some("at-1"));
        assert_eq!(issued.expires_in, Some(Duration::from_secs(60)));
        assert_eq!(
            issued.refresh_token.as_ref().and_then(|t| t.expose_str()),
            Some("rt-2")
        );
        let form = received.await.expect("received").form;
        for (name, value) in [
            ("grant_type", "authorization_code"),
            ("code", "the code"),
            ("code_verifier", "the-verifier"),
            (
                "redirect_uri",
                "https://operator.example/oauth2/callback?x=1",
            ),
            ("client_id", "shop client"),
            ("client_secret", SECRET),
            ("audience", "https://payments.internal"),
            ("resource", "https://payments.internal/v2"),
            ("tenant", "a&b=c"),
        ] {
            assert_eq!(form.get(name).map(String::as_str), Some(value), "{name}");
        }
        assert!(!form.contains_key("scope"), "{form:?}");
    }

    #[tokio::test]
    async fn a_refresh_with_basic_authentication_sends_no_scope_by_default() {
        let (url, received) = endpoint_once(200, TOKEN).await;
        let refresh = SecretValue::new("rt-1");
        endpoint(&url, |s| {
            s.client_authentication = ClientAuthentication::BasicHeader;
        })
        .request(Grant::RefreshToken(&refresh))
        .await
        .expect("token");
        let Received { head, form } = received.await.expect("received");
        assert_eq!(
            form.get("grant_type").map(String::as_str),
            Some("refresh_token")
        );
        assert_eq!(form.get("refresh_token").map(String::as_str), Some("rt-1"));
        assert!(!form.contains_key("scope"), "{form:?}");
        assert!(!form.contains_key("client_secret"), "{form:?}");
        assert!(!form.contains_key("redirect_uri"), "{form:?}");
        // RFC 6749 section 2.3.1: id and secret form-encoded, then Basic.
        let authorization = head
            .lines()
            .filter_map(|l| l.split_once(": "))
            .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
            .map(|(_, value)| value);
        assert_eq!(
            authorization,
            Some("Basic c2hvcCtjbGllbnQ6czNjcjN0"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn a_refresh_sends_the_scope_when_asked_to() {
        let (url, received) = endpoint_once(200, TOKEN).await;
        let refresh = SecretValue::new("rt-1");
        endpoint(&url, |s| s.send_scope_on_refresh = true)
            .request(Grant::RefreshToken(&refresh))
            .await
            .expect("token");
        let form = received.await.expect("received").form;
        assert_eq!(
            form.get("scope").map(String::as_str),
            Some("payments.read payments.write")
        );
    }

    #[tokio::test]
    async fn an_answer_without_a_refresh_token_keeps_none() {
        let (url, _received) = endpoint_once(
            200,
            r#"{"access_token":"at-1","token_type":"bearer","expires_in":0}"#,
        )
        .await;
        let issued = endpoint(&url, |_| {})
            .request(Grant::ClientCredentials)
            .await
            .expect("token");
        assert!(issued.refresh_token.is_none());
        assert_eq!(issued.expires_in, None, "a zero lifetime is none");
    }

    #[tokio::test]
    async fn invalid_grant_is_a_refused_grant_named_with_its_endpoint() {
        let (url, _received) = endpoint_once(
            400,
            r#"{"error":"invalid_grant","error_description":"grant request is invalid"}"#,
        )
        .await;
        let refresh = SecretValue::new("rt-secret");
        let e = endpoint(&url, |_| {})
            .request(Grant::RefreshToken(&refresh))
            .await
            .expect_err("refused");
        assert!(e.is_refused_grant(), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "the token endpoint {url} answered with HTTP 400 invalid_grant: grant request is invalid"
            )
        );
        assert!(!format!("{e:?}").contains("rt-secret"));
    }

    #[tokio::test]
    async fn invalid_client_is_not_a_refused_grant() {
        let (url, _received) = endpoint_once(401, r#"{"error":"invalid_client"}"#).await;
        let e = endpoint(&url, |_| {})
            .request(Grant::ClientCredentials)
            .await
            .expect_err("refused");
        assert!(
            matches!(&e, TokenError::Refused { status: Some(401), error, description: None, .. } if error == "invalid_client"),
            "{e:?}"
        );
        assert!(!e.is_refused_grant());
        assert!(!chain(&e).contains(SECRET));
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_retried_not_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/token", listener.local_addr().expect("addr"));
        drop(listener);
        let e = endpoint(&url, |_| {})
            .request(Grant::ClientCredentials)
            .await
            .expect_err("unreachable");
        assert!(matches!(e, TokenError::Unreachable { .. }), "{e:?}");
        assert!(!e.is_refused_grant());
        let text = chain(&e);
        assert!(
            text.starts_with(&format!("the token endpoint {url} cannot be reached: ")),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_body_that_is_not_a_token_response_is_not_repeated() {
        let (url, _received) =
            endpoint_once(200, r#"{"access_token":"leaked-token","token_type":42}"#).await;
        let e = endpoint(&url, |_| {})
            .request(Grant::ClientCredentials)
            .await
            .expect_err("not a token");
        assert!(
            matches!(
                e,
                TokenError::NotATokenResponse {
                    status: Some(200),
                    ..
                }
            ),
            "{e:?}"
        );
        let text = chain(&e);
        assert!(text.contains("not a token response"), "{text}");
        assert!(!text.contains("leaked-token"), "{text}");
        assert!(!e.is_refused_grant());
    }

    #[tokio::test]
    async fn a_refresh_token_that_is_not_text_is_refused_before_sending() {
        let refresh = SecretValue::new(vec![0xff, 0xfe]);
        let e = endpoint("http://127.0.0.1:9/token", |_| {})
            .request(Grant::RefreshToken(&refresh))
            .await
            .expect_err("not text");
        assert!(matches!(e, TokenError::RefreshTokenNotText));
        assert!(e.is_refused_grant());
    }

    #[test]
    fn an_invalid_token_url_is_named() {
        let tls = crate::tls::client_config(None, true).expect("tls");
        let mut s = settings();
        s.access_token_url = "not a url".into();
        let Err(e) = TokenEndpoint::new(&s, SECRET, &tls, Duration::from_secs(1)) else {
            panic!("an invalid URL was accepted");
        };
        assert!(
            matches!(
                e,
                EndpointError::InvalidUrl {
                    field: "accessTokenUrl",
                    ..
                }
            ),
            "{e:?}"
        );
    }
}
