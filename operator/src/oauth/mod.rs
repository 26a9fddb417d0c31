//! The authorization-code grant, with the operator as the single refresher
//! (issue 8). A person opens the datasource's `status.authorizationUrl`
//! (served by [`server`], on `--oauth-listen`), signs in at the provider,
//! and the callback stores the tokens in the Secret `<datasource>-sidekey-oauth`
//! ([`tokens`]). From then on the leader's reconcile ([`refresh`]) renews
//! the access token at half its lifetime; sidecars read the access token
//! from that Secret, mounted, and never see the refresh token.
//!
//! Every replica serves the endpoint; the Secret is the only state, and
//! every write to it is conditional on the version read, so a link or a
//! refresh token is used once whichever replica a request reaches.

pub mod link;
pub mod refresh;
pub mod server;
pub mod tokens;

use std::net::SocketAddr;
use std::time::Duration;

use sidekey_crds::{ResolvedDatasource, ResolvedOAuth2};
use sidekey_oauth::endpoint::TokenEndpoint;
use url::Url;

use crate::validate::FetchedSecrets;

/// Token requests give up after this long.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(15);

/// The authorization endpoint's settings, from the flags.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    /// The base URL people open (an Ingress, or a port-forward's
    /// `http://127.0.0.1:PORT`); links are `<base>/oauth2/authorize/...`.
    pub public_url: Url,
}

impl Settings {
    /// The link a person opens to authorize datasource `namespace/name`.
    pub fn authorization_link(&self, namespace: &str, name: &str, nonce: &str) -> String {
        let mut url = self.public_url.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!(
            "{base}{}/{namespace}/{name}",
            sidekey_crds::names::OAUTH_AUTHORIZE_PATH
        ));
        url.query_pairs_mut().clear().append_pair("nonce", nonce);
        url.to_string()
    }
}

/// The authorization-code settings of a datasource, if it uses that grant.
pub fn authorization_code(resolved: &ResolvedDatasource) -> Option<&ResolvedOAuth2> {
    match &resolved.authentication {
        sidekey_crds::ResolvedAuthentication::OAuth2(o)
            if o.grant_type == sidekey_crds::GrantType::AuthorizationCode =>
        {
            Some(o)
        }
        _ => None,
    }
}

/// The token endpoint of a datasource, trusting its CA as the sidecar
/// does, with the client secret as read.
pub fn token_endpoint(
    fetched: &FetchedSecrets,
    resolved: &ResolvedDatasource,
    settings: &ResolvedOAuth2,
) -> Result<TokenEndpoint, String> {
    let missing = |what: &str| format!("the {what} cannot be read");
    let client_secret = fetched
        .value(&settings.client_secret)
        .and_then(|v| v.expose_str().map(str::trim).map(str::to_owned))
        .ok_or_else(|| missing("client secret"))?;
    let ca = match &resolved.tls.ca_certificate {
        Some(file) => Some(sidekey_oauth::tls::CaBundle {
            file,
            pem: fetched.value(file).ok_or_else(|| missing("CA bundle"))?,
        }),
        None => None,
    };
    let tls = sidekey_oauth::tls::client_config(ca, resolved.tls.trust_system_roots)
        .map_err(|e| sidekey_plumbing::chain::chain(&e))?;
    TokenEndpoint::new(settings, &client_secret, &tls, TOKEN_TIMEOUT)
        .map_err(|e| sidekey_plumbing::chain::chain(&e))
}
