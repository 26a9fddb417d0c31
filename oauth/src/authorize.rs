//! The authorization request (RFC 6749 section 4.1.1): the URL at the
//! provider's `authorizationUrl` that a person opens to grant access, with
//! PKCE (RFC 7636, S256).
//!
//! Its query carries `response_type=code`, `client_id`, `state`,
//! `code_challenge` and `code_challenge_method=S256`, `redirect_uri`
//! (`redirectUrl`), `scope` (the scopes joined by spaces; left out when
//! there are none), then the extra parameters every token request carries
//! too: `audience` (Auth0 reads it here, and a token request cannot widen
//! what the person granted), `resource` (RFC 8707 section 2.1 defines it on
//! the authorization request as well), and the custom parameters.
//! Parameters already in `authorizationUrl`'s own query are kept, first.

use oauth2::basic::BasicClient;
use oauth2::{AuthUrl, ClientId, CsrfToken, PkceCodeChallenge};
use sidekey_crds::{ResolvedOAuth2, SecretValue};
use url::Url;

use crate::endpoint::{EndpointError, extra_params, redirect_url, scopes};

/// Where to send the person, and the PKCE verifier the code exchange
/// ([`crate::endpoint::Grant::AuthorizationCode`]) must present: keep it
/// with the `state` until the callback comes.
#[derive(Debug)]
pub struct AuthorizationRequest {
    pub url: Url,
    pub pkce_verifier: SecretValue,
}

/// The authorization request for `settings`, bound to `state` (which the
/// callback must see again), with a fresh random PKCE verifier.
pub fn authorization_request(
    settings: &ResolvedOAuth2,
    state: &str,
) -> Result<AuthorizationRequest, EndpointError> {
    let auth_url = settings
        .authorization_url
        .clone()
        .ok_or(EndpointError::Missing {
            field: "authorizationUrl",
        })?;
    let auth_url = AuthUrl::new(auth_url.clone()).map_err(|source| EndpointError::InvalidUrl {
        field: "authorizationUrl",
        url: auth_url,
        source,
    })?;
    let redirect = redirect_url(settings)?.ok_or(EndpointError::Missing {
        field: "redirectUrl",
    })?;
    let client = BasicClient::new(ClientId::new(settings.client_id.clone()))
        .set_auth_uri(auth_url)
        .set_redirect_uri(redirect);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let request = client
        .authorize_url(|| CsrfToken::new(state.to_owned()))
        .add_scopes(scopes(settings))
        .set_pkce_challenge(challenge);
    let (url, _state) = extra_params(settings)
        .into_iter()
        .fold(request, |r, (n, v)| r.add_extra_param(n, v))
        .url();
    Ok(AuthorizationRequest {
        url,
        pkce_verifier: SecretValue::new(verifier.secret().as_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::endpoint::tests::settings;

    fn query(url: &Url) -> Vec<(String, String)> {
        url.query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    fn the(pairs: &[(String, String)], name: &str) -> Vec<String> {
        pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    #[test]
    fn every_parameter_is_present_once_and_encoded() {
        let mut s = settings();
        s.authorization_url = Some("https://auth.example/authorize?prompt=consent".into());
        let request = authorization_request(&s, "st/ate+1").expect("request");
        let url = &request.url;
        assert_eq!(
            (url.scheme(), url.host_str(), url.path()),
            ("https", Some("auth.example"), "/authorize")
        );
        let pairs = query(url);
        for (name, value) in [
            ("prompt", "consent"),
            ("response_type", "code"),
            ("client_id", "shop client"),
            (
                "redirect_uri",
                "https://operator.example/oauth2/callback?x=1",
            ),
            ("scope", "payments.read payments.write"),
            ("state", "st/ate+1"),
            ("code_challenge_method", "S256"),
            ("audience", "https://payments.internal"),
            ("resource", "https://payments.internal/v2"),
            ("tenant", "a&b=c"),
        ] {
            assert_eq!(the(&pairs, name), [value], "{name} in {url}");
        }
        assert_eq!(the(&pairs, "code_challenge").len(), 1, "{url}");
        assert_eq!(pairs.first().map(|(k, _)| k.as_str()), Some("prompt"));
        // Form-encoded: nothing raw that would split or end a parameter.
        let raw = url.query().expect("query");
        assert!(raw.contains("scope=payments.read+payments.write"), "{raw}");
        assert!(raw.contains("state=st%2Fate%2B1"), "{raw}");
        assert!(raw.contains("tenant=a%26b%3Dc"), "{raw}");
        assert!(!raw.contains("client_secret"), "{raw}");
        assert!(!raw.contains("s3cr3t"), "{raw}");
    }

    #[test]
    fn the_challenge_is_the_s256_of_the_verifier() {
        let request = authorization_request(&settings(), "state").expect("request");
        let verifier = request.pkce_verifier.expose_str().expect("text");
        // RFC 7636 section 4.1: 43 to 128 unreserved characters.
        assert!((43..=128).contains(&verifier.len()), "{}", verifier.len());
        assert!(
            verifier
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)),
        );
        let expected = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        assert_eq!(the(&query(&request.url), "code_challenge"), [expected]);
        // The verifier never travels with the authorization request.
        assert!(!request.url.as_str().contains(verifier));
    }

    #[test]
    fn each_request_has_its_own_verifier() {
        let a = authorization_request(&settings(), "state").expect("a");
        let b = authorization_request(&settings(), "state").expect("b");
        assert_ne!(a.pkce_verifier, b.pkce_verifier);
    }

    #[test]
    fn no_scopes_and_no_extras_leave_those_parameters_out() {
        let mut s = settings();
        s.scopes.clear();
        s.audience = None;
        s.resource = None;
        s.custom_parameters.clear();
        let request = authorization_request(&s, "state").expect("request");
        let pairs = query(&request.url);
        let names: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "response_type",
                "client_id",
                "state",
                "code_challenge",
                "code_challenge_method",
                "redirect_uri"
            ]
        );
    }

    /// What the error is, and which setting it names.
    fn named(e: &EndpointError) -> (&'static str, &'static str) {
        match e {
            EndpointError::Missing { field } => ("missing", field),
            EndpointError::InvalidUrl { field, .. } => ("invalid", field),
            EndpointError::Client(_) => ("client", ""),
        }
    }

    #[test]
    fn a_missing_or_invalid_url_is_named() {
        let cases: [(fn(&mut ResolvedOAuth2), _); 4] = [
            (
                |s| s.authorization_url = None,
                ("missing", "authorizationUrl"),
            ),
            (|s| s.redirect_url = None, ("missing", "redirectUrl")),
            (
                |s| s.redirect_url = Some("not a url".into()),
                ("invalid", "redirectUrl"),
            ),
            (
                |s| s.authorization_url = Some("/authorize".into()),
                ("invalid", "authorizationUrl"),
            ),
        ];
        for (change, expected) in cases {
            let mut s = settings();
            change(&mut s);
            let e = authorization_request(&s, "state").expect_err("refused");
            assert_eq!(named(&e), expected, "{e:?}");
        }
        let mut s = settings();
        s.authorization_url = None;
        let e = authorization_request(&s, "state").expect_err("refused");
        assert_eq!(
            e.to_string(),
            "authentication.oauth2.authorizationUrl is not set: \
             the authorization-code grant needs it"
        );
        s.authorization_url = Some("not a url".into());
        let e = authorization_request(&s, "state").expect_err("refused");
        assert!(e.to_string().contains("\"not a url\""), "{e}");
    }
}
