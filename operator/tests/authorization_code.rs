//! The authorization-code grant end to end, against the real OAuth 2.0
//! provider (node-oidc-provider with its sign-in and consent pages, tokens
//! of a few seconds, refresh-token rotation on) and the real API server:
//! a person authorizes through `status.authorizationUrl`, the operator
//! alone refreshes, and sidecars laid out as the kubelet would send tokens
//! the provider signed. Then every way an authorization can go wrong.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Secret;
use sidekey_crds::ApiDatasource;
use sidekey_crds::names;
use sidekey_tests::browser::Browser;
use sidekey_tests::kubelet::SecretVolume;
use sidekey_tests::oauth_server::{self, OAuthServer};
use support::{Bed, Operator, OperatorOptions, Sidecar, WAIT, free_port, free_ports};
use tokio::net::TcpListener;
use tokio_util::task::AbortOnDropHandle;

const CLIENT: &str = "crm-app";
const CLIENT_SECRET: &str = "crm-app-secret-5e1";
const DATASOURCE: &str = "crm";
/// The audience and issuer of the provider's access tokens.
const AUDIENCE: &str = "https://api.sidekey.test";
const ISSUER: &str = "http://127.0.0.1";

/// The provider, and the datasource using it through the operator's
/// authorization endpoint on `oauth_port`.
struct Setup {
    bed: Bed,
    server: OAuthServer,
    oauth_port: u16,
}

impl Setup {
    async fn new(prefix: &str, ttl_seconds: u32) -> Self {
        let bed = Bed::new(prefix).await;
        let oauth_port = free_port();
        let server = OAuthServer::start(oauth_server::Config {
            clients: vec![oauth_server::code_client(
                CLIENT,
                CLIENT_SECRET,
                &callback(oauth_port),
            )],
            ttl_seconds,
            interactive: true,
            ..Default::default()
        })
        .await;
        bed.put_secret("crm-oauth", &[("client-secret", CLIENT_SECRET)])
            .await;
        bed.put_secret("crm-ca", &[("ca.crt", server.ca_pem())])
            .await;
        Self {
            bed,
            server,
            oauth_port,
        }
    }

    /// The datasource, in front of `upstream`.
    async fn create_datasource(&self, upstream: &str) {
        self.bed
            .create_datasource(&format!(
                "apiVersion: sidekey.dev/v1alpha1\nkind: ApiDatasource\nmetadata: {{ name: {DATASOURCE} }}\n\
                 spec:\n  url: {upstream}\n  tls:\n    caCertificateSecretRef: {{ name: crm-ca, key: ca.crt }}\n\
                 \x20 authentication:\n    type: OAuth2\n    oauth2:\n      grantType: AuthorizationCode\n\
                 \x20     accessTokenUrl: {}\n      authorizationUrl: {}\n      redirectUrl: {}\n\
                 \x20     clientId: {CLIENT}\n      clientSecretRef: {{ name: crm-oauth, key: client-secret }}\n\
                 \x20     scopes: [ payments.read ]\n",
                self.server.token_url(),
                self.server.authorization_url(),
                callback(self.oauth_port),
            ))
            .await;
    }

    /// An operator replica serving the authorization endpoint; a short
    /// lease so that a leader change is quick.
    fn operator(&self, identity: &str, oauth_port: u16) -> Operator {
        self.bed.start_operator(OperatorOptions {
            identity: identity.into(),
            lease_duration: 6,
            lease_renew_deadline: 4,
            lease_retry_period: 1,
            extra_args: vec![
                "--oauth-listen".into(),
                format!("127.0.0.1:{oauth_port}"),
                "--oauth-public-url".into(),
                format!("http://127.0.0.1:{}", self.oauth_port),
            ],
            ..Default::default()
        })
    }

    /// Waits for the `Authorized` condition to have this status and reason.
    async fn wait_authorized(&self, status: &str, reason: &str) -> ApiDatasource {
        self.bed
            .wait_condition(DATASOURCE, "Authorized", status, reason)
            .await
    }

    /// Waits for a link in the status other than `not`.
    async fn wait_link(&self, not: Option<&str>) -> String {
        let api = self.bed.datasources();
        sidekey_tests::wait_for("a new status.authorizationUrl", WAIT, || async {
            let ds = api.get_opt(DATASOURCE).await.ok().flatten()?;
            let url = ds.status?.authorization_url?;
            (Some(url.as_str()) != not).then_some(url)
        })
        .await
    }

    /// Sets a time in the token Secret (`refresh-at`, the link's expiry)
    /// to the past: what the operator would see minutes later.
    async fn backdate(&self, key: &str) {
        self.bed
            .secrets()
            .patch(
                &names::oauth_token_secret_name(DATASOURCE),
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(serde_json::json!({
                    "stringData": { key: "2020-01-01T00:00:00Z" }
                })),
            )
            .await
            .unwrap_or_else(|e| panic!("backdating {key}: {e}"));
    }

    /// Points the datasource at another token endpoint.
    async fn move_token_endpoint(&self, url: String) {
        self.bed
            .datasources()
            .patch(
                DATASOURCE,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(serde_json::json!({
                    "spec": { "authentication": { "oauth2": { "accessTokenUrl": url } } }
                })),
            )
            .await
            .expect("moving the token endpoint");
    }

    /// The token Secret's data, as the operator wrote it.
    async fn token_secret(&self) -> Secret {
        self.bed
            .secrets()
            .get(&names::oauth_token_secret_name(DATASOURCE))
            .await
            .expect("the token Secret")
    }
}

/// The operator's callback, on the authorization endpoint's port.
fn callback(oauth_port: u16) -> String {
    format!(
        "http://127.0.0.1:{oauth_port}{}",
        names::OAUTH_CALLBACK_PATH
    )
}

/// An upstream that accepts only access tokens the provider signed (its
/// JWKS, ES256, audience and issuer checked, expiry to the second), and
/// remembers each distinct one.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    refused: Arc<Mutex<Vec<String>>>,
    /// Stops serving when dropped.
    _task: AbortOnDropHandle<()>,
}

impl Upstream {
    async fn start(server: &OAuthServer) -> Self {
        let jwks: jsonwebtoken::jwk::JwkSet = server
            .http_client()
            .get(format!("{}/jwks", server.base_url()))
            .send()
            .await
            .expect("JWKS")
            .json()
            .await
            .expect("JWKS json");
        let key = jsonwebtoken::DecodingKey::from_jwk(jwks.keys.first().expect("a key"))
            .expect("decoding key");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 0;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let check = Arc::new((key, validation, seen.clone(), refused.clone()));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let check = check.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let check = check.clone();
                        async move {
                            let (key, validation, seen, refused) = &*check;
                            let token = request
                                .headers()
                                .get(http::header::AUTHORIZATION)
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.strip_prefix("Bearer "))
                                .unwrap_or("")
                                .to_owned();
                            let verdict =
                                jsonwebtoken::decode::<serde_json::Value>(&token, key, validation);
                            let status = match verdict {
                                Ok(_) => {
                                    let mut seen = seen.lock().expect("lock");
                                    if !seen.contains(&token) {
                                        seen.push(token);
                                    }
                                    StatusCode::OK
                                }
                                Err(e) => {
                                    refused.lock().expect("lock").push(e.to_string());
                                    StatusCode::UNAUTHORIZED
                                }
                            };
                            let mut response = Response::new(Full::new(Bytes::new()));
                            *response.status_mut() = status;
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            seen,
            refused,
            _task: AbortOnDropHandle::new(task),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn distinct_tokens(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }
}

/// A sidecar for the datasource as a pod would run it: the ConfigMap and
/// the Secrets the webhook mounts, kept up to date like Secret volumes.
struct Pod {
    sidecar: Sidecar,
    proxy: SocketAddr,
    _volumes: Vec<SecretVolume>,
    _dir: tempfile::TempDir,
}

impl Pod {
    async fn start(bed: &Bed) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let configmap = bed.wait_configmap(&names::configmap_name(DATASOURCE)).await;
        let resolved = configmap
            .data
            .and_then(|mut d| d.remove(names::CONFIGMAP_KEY))
            .expect("the resolved spec");
        let datasource = dir.path().join("datasource.yaml");
        std::fs::write(&datasource, resolved).expect("datasource file");
        let secrets = dir.path().join("secrets");
        let token_secret = names::oauth_token_secret_name(DATASOURCE);
        // What the webhook mounts: no client secret, no refresh token.
        let volumes = [
            ("crm-ca", &["ca.crt"][..]),
            (
                token_secret.as_str(),
                &[names::ACCESS_TOKEN_KEY, names::EXPIRES_AT_KEY][..],
            ),
        ]
        .into_iter()
        .map(|(secret, keys)| {
            SecretVolume::start(bed.client.clone(), &bed.ns, secret, keys, secrets.clone())
        })
        .collect::<Vec<_>>();
        // The volumes' first versions, before the sidecar reads them.
        wait_files(&secrets.join(&token_secret), names::ACCESS_TOKEN_KEY).await;
        wait_files(&secrets.join("crm-ca"), "ca.crt").await;
        let ports = free_ports(2);
        let proxy: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
        let sidecar = Sidecar::start(&[
            "--datasource".into(),
            datasource.display().to_string(),
            "--secrets-dir".into(),
            secrets.display().to_string(),
            "--listen".into(),
            proxy.to_string(),
            "--admin-listen".into(),
            format!("127.0.0.1:{}", ports[1]),
            "--reload-interval".into(),
            "0.25".into(),
            "--log-format".into(),
            "json".into(),
        ]);
        // Started and ready, as its readiness probe would tell the kubelet.
        let admin: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
        sidekey_tests::wait_for("the sidecar to be ready", WAIT, || async {
            (through(admin, "/readyz").await == 200).then_some(())
        })
        .await;
        Self {
            sidecar,
            proxy,
            _volumes: volumes,
            _dir: dir,
        }
    }
}

async fn wait_files(dir: &Path, key: &str) {
    let file = dir.join(key);
    sidekey_tests::wait_for(&format!("{}", file.display()), WAIT, || async {
        file.exists().then_some(())
    })
    .await;
}

/// A GET through a sidecar: its status.
async fn through(proxy: SocketAddr, path: &str) -> u16 {
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let uri: http::Uri = format!("http://{proxy}{path}").parse().expect("uri");
    match client.get(uri).await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_authorizes_once_and_the_operator_alone_keeps_two_sidecars_supplied() {
    let setup = Setup::new("authcode", 10).await;
    let upstream = Upstream::start(&setup.server).await;
    setup.create_datasource(&upstream.url()).await;

    let mut operator = setup.operator("operator-a", setup.oauth_port);
    let ds = setup
        .wait_authorized("False", "AwaitingAuthorization")
        .await;
    setup
        .bed
        .wait_event(DATASOURCE, "AwaitingAuthorization")
        .await;
    let link = ds.status.and_then(|s| s.authorization_url).expect("a link");
    assert!(
        link.starts_with(&format!(
            "http://127.0.0.1:{}/oauth2/authorize/{}/{DATASOURCE}?nonce=",
            setup.oauth_port, setup.bed.ns
        )),
        "{link}"
    );

    let visit = Browser::new(setup.server.ca_pem()).authorize(&link).await;
    assert_eq!(visit.status, 200, "{visit:?}\n{}", operator.logs());
    assert!(
        visit
            .body
            .contains(&format!("{}/{DATASOURCE} is now connected", setup.bed.ns)),
        "{}",
        visit.body
    );
    let ds = setup.wait_authorized("True", "Authorized").await;
    assert_eq!(ds.status.and_then(|s| s.authorization_url), None);
    setup.bed.wait_event(DATASOURCE, "Authorized").await;

    // Two pods share the datasource throughout.
    let pods = [Pod::start(&setup.bed).await, Pod::start(&setup.bed).await];
    let mut failures = Vec::new();
    let mut requests = 0;
    let mut restarted = false;
    let mut handed_over: Option<Operator> = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    // Five refreshes: six distinct access tokens reach the upstream.
    while upstream.distinct_tokens() < 6 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} distinct tokens so far\n{}",
            upstream.distinct_tokens(),
            operator.logs()
        );
        for (i, pod) in pods.iter().enumerate() {
            requests += 1;
            let status = through(pod.proxy, "/contacts").await;
            if status != 200 {
                failures.push((i, status));
            }
        }
        // After two refreshes, the operator restarts (gracefully, as a
        // rollout does); after four, another replica takes over.
        let tokens = upstream.distinct_tokens();
        if tokens >= 3 && !restarted {
            restarted = true;
            operator.terminate().await;
            operator = setup.operator("operator-a", setup.oauth_port);
        }
        if tokens >= 5 && handed_over.is_none() {
            let standby = setup.operator("operator-b", free_port());
            tokio::time::sleep(Duration::from_millis(500)).await;
            operator.terminate().await;
            handed_over = Some(standby);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed: {failures:?}\nrefused: {:?}\nsidecar 0:\n{}\nsidecar 1:\n{}",
        failures.len(),
        upstream.refused.lock().expect("lock"),
        pods[0].sidecar.logs(),
        pods[1].sidecar.logs()
    );
    // Every refresh used the latest rotated refresh token: none was refused.
    let errors = setup.server.errors();
    assert!(errors.is_empty(), "{errors:?}");
    // The sidecars never asked the provider for a token themselves.
    let grants = setup.server.grants();
    assert!(
        grants
            .iter()
            .all(|g| g["grant_type"] == "refresh_token" || g["grant_type"] == "authorization_code"),
        "{grants:?}"
    );
    assert_eq!(
        grants
            .iter()
            .filter(|g| g["grant_type"] == "authorization_code")
            .count(),
        1
    );
    // The refresh token stays with the operator.
    let secret = setup.token_secret().await;
    let data = secret.data.unwrap_or_default();
    assert!(data.contains_key(names::REFRESH_TOKEN_KEY));
    for pod in &pods {
        let logs = pod.sidecar.logs();
        assert!(!logs.contains("access token obtained"), "{logs}");
    }
    // The new leader's metrics: refreshes by result, the time left.
    let leader = handed_over.expect("a second replica took over");
    let (_, metrics) = support::http_get(leader.admin_addr().await, "/metrics")
        .await
        .expect("metrics");
    let sample = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert!(
        sample("sidekey_operator_oauth_refreshes_total{result=\"success\"}")
            .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    let left = sample("sidekey_operator_oauth_access_token_expires_in_seconds{")
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(left > 0.0 && left <= 10.0, "{left}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failed_authorization_shows_a_page_a_condition_and_an_event() {
    let setup = Setup::new("authfail", 300).await;
    setup.create_datasource("http://127.0.0.1:9").await;
    let operator = setup.operator("operator-a", setup.oauth_port);
    setup
        .wait_authorized("False", "AwaitingAuthorization")
        .await;
    let stale = setup.wait_link(None).await;

    // A link past its 15 minutes: refused, and replaced by a fresh one.
    setup.backdate("authorization-link-expires-at").await;
    let visit = Browser::new(setup.server.ca_pem()).get(&stale).await;
    assert_eq!(visit.status, 410, "{visit:?}");
    assert!(visit.body.contains("expired"), "{}", visit.body);
    setup
        .wait_authorized("False", "AuthorizationLinkExpired")
        .await;
    setup
        .bed
        .wait_event(DATASOURCE, "AuthorizationLinkExpired")
        .await;
    let first = setup.wait_link(Some(&stale)).await;

    // The person cancels at the provider: access_denied.
    let visit = Browser::new(setup.server.ca_pem()).cancel(&first).await;
    assert_eq!(visit.status, 403, "{visit:?}");
    assert!(visit.body.contains("access_denied"), "{}", visit.body);
    setup.wait_authorized("False", "AccessDenied").await;
    setup.bed.wait_event(DATASOURCE, "AccessDenied").await;

    // The same link again: it was used.
    let visit = Browser::new(setup.server.ca_pem()).get(&first).await;
    assert_eq!(visit.status, 410, "{visit:?}");
    assert!(visit.body.contains("already used"), "{}", visit.body);
    setup
        .wait_authorized("False", "AuthorizationLinkExpired")
        .await;

    // A callback whose state was tampered with: refused, and the real
    // one still completes the authorization.
    let link = setup.wait_link(Some(&first)).await;
    let browser = Browser::new(setup.server.ca_pem());
    let stopped = browser
        .authorize_until(&link, &callback(setup.oauth_port))
        .await;
    let real = stopped.url.clone();
    let state = stopped.query_param("state").expect("state");
    let mut forged_state = state.clone();
    let last = forged_state.pop().expect("a state");
    forged_state.push(if last == 'A' { 'B' } else { 'A' });
    let tampered = real.replace(&format!("state={state}"), &format!("state={forged_state}"));
    assert_ne!(tampered, real);
    let visit = browser.get(&tampered).await;
    assert_eq!(visit.status, 400, "{visit:?}");
    setup.wait_authorized("False", "InvalidState").await;
    setup.bed.wait_event(DATASOURCE, "InvalidState").await;
    // The right state with a code the provider never issued: the
    // exchange fails, and that authorization is over.
    let code = stopped.query_param("code").expect("code");
    let bogus = real.replace(&format!("code={code}"), "code=not-a-code");
    assert_ne!(bogus, real);
    let visit = browser.get(&bogus).await;
    assert_eq!(visit.status, 502, "{visit:?}");
    assert!(
        visit.body.contains("could not be exchanged"),
        "{}",
        visit.body
    );
    setup.wait_authorized("False", "CodeExchangeFailed").await;
    setup.bed.wait_event(DATASOURCE, "CodeExchangeFailed").await;
    let visit = browser.get(&real).await;
    assert_eq!(visit.status, 400, "used state: {visit:?}");

    // A fresh link, followed to the end, authorizes.
    let link = setup.wait_link(Some(&link)).await;
    let visit = Browser::new(setup.server.ca_pem()).authorize(&link).await;
    assert_eq!(visit.status, 200, "{visit:?}\n{}", operator.logs());
    setup.wait_authorized("True", "Authorized").await;

    // The provider revokes the grant: the next refresh is refused, and a
    // person must authorize again at a fresh link.
    let mut data = setup.token_secret().await.data.unwrap_or_default();
    let mut take = |key: &str| {
        data.remove(key)
            .map(|v| String::from_utf8(v.0).expect("text"))
            .expect(key)
    };
    let refresh_token = take(names::REFRESH_TOKEN_KEY);
    let access_token = take(names::ACCESS_TOKEN_KEY);
    setup
        .server
        .revoke(&refresh_token, CLIENT, CLIENT_SECRET)
        .await;
    // Make the refresh due now rather than in 150 s.
    setup.backdate("refresh-at").await;
    let ds = setup.wait_authorized("False", "RefreshFailed").await;
    let event = setup.bed.wait_event(DATASOURCE, "RefreshFailed").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let again = ds
        .status
        .and_then(|s| s.authorization_url)
        .expect("a fresh link");
    assert_ne!(again, link);
    // Nothing secret in the status, the Events or the logs.
    let shown = format!(
        "{:?}{:?}{}",
        setup
            .bed
            .datasources()
            .get(DATASOURCE)
            .await
            .expect("ds")
            .status,
        setup.bed.events_about(DATASOURCE).await,
        operator.logs()
    );
    for secret in [refresh_token.as_str(), access_token.as_str(), CLIENT_SECRET] {
        assert!(!shown.contains(secret), "a secret leaked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_is_down_is_retried_while_the_access_token_serves() {
    let setup = Setup::new("authdown", 300).await;
    setup.create_datasource("http://127.0.0.1:9").await;
    let operator = setup.operator("operator-a", setup.oauth_port);
    let link = setup.wait_link(None).await;
    let visit = Browser::new(setup.server.ca_pem()).authorize(&link).await;
    assert_eq!(visit.status, 200, "{visit:?}\n{}", operator.logs());
    setup.wait_authorized("True", "Authorized").await;
    let before = setup.token_secret().await.data.unwrap_or_default();

    // The token endpoint stops answering (nothing listens at the new
    // address) just as a refresh falls due.
    setup
        .move_token_endpoint(format!("https://127.0.0.1:{}/token", free_port()))
        .await;
    setup.backdate("refresh-at").await;
    // Retried, counted, and the datasource stays authorized with the
    // tokens it has.
    let admin = operator.admin_addr().await;
    sidekey_tests::wait_for("two failed refreshes", WAIT, || async {
        let (_, metrics) = support::http_get(admin, "/metrics").await?;
        metrics
            .lines()
            .find(|l| l.starts_with("sidekey_operator_oauth_refreshes_total{result=\"failed\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .filter(|n| *n >= 2.0)
    })
    .await;
    let ds = setup.wait_authorized("True", "Authorized").await;
    assert_eq!(ds.status.and_then(|s| s.authorization_url), None);
    let after = setup.token_secret().await.data.unwrap_or_default();
    assert_eq!(
        before.get(names::REFRESH_TOKEN_KEY),
        after.get(names::REFRESH_TOKEN_KEY)
    );
    assert!(
        operator.logs().contains("TokenEndpointUnavailable")
            || operator.logs().contains("refreshing the access token"),
        "{}",
        operator.logs()
    );

    // Back: the next retry refreshes.
    setup.move_token_endpoint(setup.server.token_url()).await;
    let secrets = setup.bed.secrets();
    sidekey_tests::wait_for("a refresh after the outage", WAIT, || async {
        let data = secrets
            .get(&names::oauth_token_secret_name(DATASOURCE))
            .await
            .ok()?
            .data?;
        (data.get(names::REFRESH_TOKEN_KEY) != before.get(names::REFRESH_TOKEN_KEY)).then_some(())
    })
    .await;
    assert!(
        setup.server.errors().is_empty(),
        "{:?}",
        setup.server.errors()
    );
}
