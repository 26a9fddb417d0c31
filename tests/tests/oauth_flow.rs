//! The authorization-code grant against the real provider, with no
//! operator and no cluster: a callback on 127.0.0.1 stands in for the
//! operator's `/oauth2/callback`, the authorization URL is built by hand,
//! and the [`Browser`] signs in and consents (or cancels). Proves the test
//! support the operator's end-to-end tests stand on.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sidekey_tests::browser::{Browser, Visit};
use sidekey_tests::oauth_server::{Config, OAuthServer, code_client};
use sidekey_tests::wait_for;
use tokio::net::TcpListener;

const CLIENT: &str = "flow-app";
const SECRET: &str = "flow-app-secret-5d2e";

/// A callback endpoint on 127.0.0.1 that records each query it gets.
struct Callback {
    url: String,
    queries: Arc<Mutex<Vec<String>>>,
}

impl Callback {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!(
            "http://{}/oauth2/callback",
            listener.local_addr().expect("addr")
        );
        let queries = Arc::new(Mutex::new(Vec::new()));
        let seen = queries.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    seen.lock()
                        .expect("lock")
                        .push(req.uri().query().unwrap_or("").to_owned());
                    async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            b"<html><body>connected</body></html>",
                        ))))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        Self { url, queries }
    }

    /// The query parameters of each request, decoded.
    fn received(&self) -> Vec<Vec<(String, String)>> {
        self.queries
            .lock()
            .expect("lock")
            .iter()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .collect()
    }
}

fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// An authorization request as the operator makes one: its URL and the
/// PKCE verifier it keeps.
struct Authorization {
    url: String,
    state: String,
    verifier: String,
}

fn authorization(server: &OAuthServer, callback: &Callback) -> Authorization {
    let state = format!("{:032x}", rand::random::<u128>());
    let verifier = format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    );
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let url = url::Url::parse_with_params(
        &server.authorization_url(),
        [
            ("response_type", "code"),
            ("client_id", CLIENT),
            ("redirect_uri", callback.url.as_str()),
            ("scope", "payments.read payments.write"),
            ("state", state.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ],
    )
    .expect("authorization URL");
    Authorization {
        url: url.into(),
        state,
        verifier,
    }
}

/// A callback, the provider that knows it, and a fresh authorization request.
async fn start() -> (Callback, OAuthServer, Authorization) {
    let callback = Callback::start().await;
    let server = OAuthServer::start(Config {
        clients: vec![code_client(CLIENT, SECRET, &callback.url)],
        ttl_seconds: 60,
        interactive: true,
        ..Config::default()
    })
    .await;
    let auth = authorization(&server, &callback);
    (callback, server, auth)
}

/// Asserts the visit ended at the callback, which answered and was called
/// once; returns that call's query.
fn called_back_once(callback: &Callback, visit: &Visit) -> Vec<(String, String)> {
    assert_eq!(visit.status, 200, "{visit:#?}");
    assert!(visit.url.starts_with(&callback.url), "{visit:#?}");
    let mut received = callback.received();
    assert_eq!(received.len(), 1, "{received:?}");
    received.remove(0)
}

/// POSTs a token request with client_secret_post; returns status and JSON.
async fn token_request(server: &OAuthServer, form: &[(&str, &str)]) -> (u16, Value) {
    let mut form = form.to_vec();
    form.extend([("client_id", CLIENT), ("client_secret", SECRET)]);
    let response = server
        .http_client()
        .post(server.token_url())
        .form(&form)
        .send()
        .await
        .expect("token request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("token response JSON"))
}

#[tokio::test]
async fn a_browser_signs_in_consents_and_the_code_buys_tokens() {
    let (callback, server, auth) = start().await;

    let visit = Browser::new(server.ca_pem()).authorize(&auth.url).await;

    let query = called_back_once(&callback, &visit);
    assert_eq!(visit.body, "<html><body>connected</body></html>");
    // The sign-in page and the consent page, each shown then submitted.
    let interactions = visit.hops.iter().filter(|h| h.contains("/interaction/"));
    assert_eq!(interactions.count(), 4, "{:#?}", visit.hops);
    assert_eq!(param(&query, "state"), Some(auth.state.as_str()));
    assert_eq!(param(&query, "error"), None, "{query:?}");
    let code = param(&query, "code").expect("a code");
    assert_eq!(visit.query_param("code").as_deref(), Some(code));

    let (status, tokens) = token_request(
        &server,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &callback.url),
            ("code_verifier", &auth.verifier),
        ],
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    assert!(tokens["access_token"].is_string(), "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    let refresh = tokens["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_owned();

    // It refreshes, and a revoked refresh token no longer does.
    let (status, refreshed) = token_request(
        &server,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(status, 200, "{refreshed}");
    let rotated = refreshed["refresh_token"].as_str().expect("rotated");
    assert_ne!(rotated, refresh, "refresh tokens rotate");
    server.revoke(rotated, CLIENT, SECRET).await;
    let (status, refused) = token_request(
        &server,
        &[("grant_type", "refresh_token"), ("refresh_token", rotated)],
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"], "invalid_grant");

    // Its log lines may come just after its answers.
    let errors = wait_for(
        "the refused grant's log line",
        Duration::from_secs(5),
        || async { Some(server.errors()).filter(|e| !e.is_empty()) },
    )
    .await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["error"], "invalid_grant");
    let grants: Vec<Value> = server
        .grants()
        .iter()
        .map(|g| g["grant_type"].clone())
        .collect();
    assert_eq!(grants, ["authorization_code", "refresh_token"]);
}

#[tokio::test]
async fn cancelling_at_the_sign_in_page_answers_access_denied() {
    let (callback, server, auth) = start().await;

    let visit = Browser::new(server.ca_pem()).cancel(&auth.url).await;

    let query = called_back_once(&callback, &visit);
    assert_eq!(param(&query, "error"), Some("access_denied"));
    assert_eq!(param(&query, "state"), Some(auth.state.as_str()));
    assert_eq!(param(&query, "code"), None);
}

#[tokio::test]
async fn authorize_until_stops_before_the_callback_and_get_delivers_it() {
    let (callback, server, auth) = start().await;
    let browser = Browser::new(server.ca_pem());

    let stopped = browser.authorize_until(&auth.url, &callback.url).await;

    assert!(stopped.url.starts_with(&callback.url), "{stopped:#?}");
    assert!(
        (300..400).contains(&stopped.status),
        "the redirect to the callback: {stopped:#?}"
    );
    assert_ne!(stopped.hops.last(), Some(&stopped.url), "not requested");
    assert!(callback.received().is_empty());
    assert_eq!(stopped.query_param("state"), Some(auth.state));

    let delivered = browser.get(&stopped.url).await;
    assert_eq!(delivered.hops, std::slice::from_ref(&stopped.url));
    let query = called_back_once(&callback, &delivered);
    assert_eq!(
        param(&query, "code"),
        stopped.query_param("code").as_deref()
    );
}
