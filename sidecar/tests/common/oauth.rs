//! The sidecar tests' clients of the real OAuth 2.0 authorization server
//! (`sidekey_tests::oauth_server`), which serves HTTPS with the test's
//! [`Pki`]: the one CA a datasource trusts.

pub use sidekey_tests::oauth_server::OAuthServer;
use sidekey_tests::oauth_server::{Config, Tls, code_client};

use super::pki::Pki;

pub const BODY_CLIENT: &str = "shop-payments";
pub const BODY_SECRET: &str = "body-secret-7b1f9c2e0a4d";
/// A client id and secret with characters that RFC 6749's form-urlencoding
/// of the Basic header must escape.
pub const BASIC_CLIENT: &str = "shop payments:basic";
pub const BASIC_SECRET: &str = "b4sic:s3cret with space+plus%&=";
/// A client of the authorization-code grant, whose user authorized it.
pub const USER_CLIENT: &str = "shop-user-app";
pub const USER_SECRET: &str = "user-app-secret-93c1d";

/// Starts the server with tokens living `ttl_seconds`; HTTPS with `pki`.
pub async fn start(pki: &Pki, ttl_seconds: u32) -> OAuthServer {
    OAuthServer::start(config(pki, ttl_seconds)).await
}

/// The same, with a refresh token minted for [`USER_CLIENT`]
/// ([`OAuthServer::minted_refresh_token`]).
pub async fn start_with_refresh_token(pki: &Pki, ttl_seconds: u32) -> OAuthServer {
    OAuthServer::start(Config {
        mint_refresh_token: Some(USER_CLIENT.to_owned()),
        ..config(pki, ttl_seconds)
    })
    .await
}

/// [`BODY_CLIENT`] (`client_secret_post`), [`BASIC_CLIENT`]
/// (`client_secret_basic`) and [`USER_CLIENT`], served with `pki`.
fn config(pki: &Pki, ttl_seconds: u32) -> Config {
    Config {
        clients: vec![
            serde_json::json!({ "client_id": BODY_CLIENT, "client_secret": BODY_SECRET,
                                "token_endpoint_auth_method": "client_secret_post" }),
            serde_json::json!({ "client_id": BASIC_CLIENT, "client_secret": BASIC_SECRET,
                                "token_endpoint_auth_method": "client_secret_basic" }),
            code_client(
                USER_CLIENT,
                USER_SECRET,
                "https://app.sidekey.test/callback",
            ),
        ],
        ttl_seconds,
        tls: Some(Tls {
            cert_pem: pki.cert_pem.clone(),
            key_pem: pki.key_pem.clone(),
            ca_pem: pki.ca_pem.clone(),
        }),
        ..Config::default()
    }
}

/// The claims of a bearer JWT, read without verifying (the server made it).
pub fn claims(authorization: &str) -> serde_json::Value {
    use base64::Engine;
    let token = authorization.split(' ').next_back().expect("token");
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("claims json")
}
