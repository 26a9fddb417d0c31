//! OAuth 2.0 client credentials against a real authorization server
//! (node-oidc-provider over HTTPS from the test CA).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::oauth::{self, BASIC_CLIENT, BASIC_SECRET, BODY_CLIENT, BODY_SECRET, OAuthServer};
use common::sidecar::kubelet_write;
use common::*;

/// A datasource using `client`/`secret` at `server`, with `extra` lines
/// under `oauth2:`.
fn oauth_workspace(
    pki: &Pki,
    upstream: &str,
    token_url: &str,
    client: &str,
    secret: &str,
    extra: &str,
) -> Workspace {
    let ws = workspace(pki);
    ws.write_secret("payments-oauth", "client-secret", secret);
    ws.write_datasource(&manifest(
        upstream,
        &format!(
            "  authentication:\n    type: OAuth2\n    oauth2:\n      accessTokenUrl: {token_url}\n      clientId: {client:?}\n      clientSecretRef: {{ name: payments-oauth, key: client-secret }}\n{extra}"
        ),
    ));
    ws
}

/// What a test against the real provider starts with.
struct OAuthSetup {
    pki: Pki,
    upstream: Upstream,
    server: OAuthServer,
    ws: Workspace,
    sidecar: sidecar::Sidecar,
}

/// The provider (tokens of `ttl` seconds), an upstream, and a sidecar for a
/// datasource using `client`/`secret` with `extra` lines under `oauth2:`.
async fn with_provider(ttl: u32, client: &str, secret: &str, extra: &str) -> OAuthSetup {
    let pki = Pki::new("test");
    let upstream = Upstream::start(&pki).await;
    let server = oauth::start(&pki, ttl).await;
    let ws = oauth_workspace(
        &pki,
        &upstream.url(),
        &server.token_url(),
        client,
        secret,
        extra,
    );
    let sidecar = sidecar::start(&ws);
    OAuthSetup {
        pki,
        upstream,
        server,
        ws,
        sidecar,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_in_the_body_send_scopes_audience_resource_and_custom_parameters() {
    let t = with_provider(300, BODY_CLIENT, BODY_SECRET, "      scopes: [ payments.read, payments.write ]\n      audience: https://payments.internal\n      resource: https://payments.test\n      customParameters: [ { name: tenant, value: acme } ]\n").await;
    let echo = get_echo_with(
        &t.sidecar,
        "/charges",
        &[("authorization", "Bearer app-made-this-up")],
    )
    .await;
    let authorization = header(&echo, "authorization").expect("authorization");
    assert!(authorization.starts_with("Bearer ey"), "{authorization}");
    let claims = oauth::claims(authorization);
    assert_eq!(claims["client_id"], BODY_CLIENT);
    assert_eq!(claims["scope"], "payments.read payments.write");
    assert_eq!(claims["aud"], "https://payments.test");
    assert_eq!(
        claims["token_request"]["audience"],
        "https://payments.internal"
    );
    assert_eq!(claims["token_request"]["tenant"], "acme");
    let grants = t.server.grants();
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0]["auth_method"], "client_secret_post");
    assert_eq!(grants[0]["scope"], "payments.read payments.write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_with_a_basic_header_form_urlencode_id_and_secret() {
    let t = with_provider(
        300,
        BASIC_CLIENT,
        BASIC_SECRET,
        "      clientAuthentication: BasicHeader\n      scopes: [ payments.read ]\n",
    )
    .await;
    let echo = get_echo(&t.sidecar, "/a").await;
    let claims = oauth::claims(header(&echo, "authorization").expect("authorization"));
    assert_eq!(claims["client_id"], BASIC_CLIENT);
    assert_eq!(claims["scope"], "payments.read");
    assert_eq!(t.server.grants()[0]["auth_method"], "client_secret_basic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_authenticating_the_wrong_way_gets_503_with_the_servers_answer() {
    // Registered for client_secret_post, configured to use the Basic header.
    let t = with_provider(
        300,
        BODY_CLIENT,
        BODY_SECRET,
        "      clientAuthentication: BasicHeader\n",
    )
    .await;
    let response = client()
        .get(t.sidecar.url("/a"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"], "token_unavailable");
    let reason = body["reason"].as_str().expect("reason");
    assert!(
        reason.contains("invalid_client") && reason.contains("HTTP 401"),
        "{reason}"
    );
    assert_eq!(t.upstream.state.requests.load(Ordering::SeqCst), 0);
    assert!(t.server.grants().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_goes_in_the_access_token_query_parameter_when_asked() {
    let t = with_provider(
        300,
        BODY_CLIENT,
        BODY_SECRET,
        "      addTokenTo: QueryParameter\n",
    )
    .await;
    let echo = get_echo(&t.sidecar, "/a?access_token=smuggled&x=1").await;
    let query = echo["query"].as_str().expect("query");
    let token = query
        .strip_prefix("x=1&access_token=")
        .unwrap_or_else(|| panic!("query {query}"));
    assert_eq!(oauth::claims(token)["client_id"], BODY_CLIENT);
    assert!(echo["headers"]["authorization"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_prefix_is_written_before_the_token() {
    let t = with_provider(300, BODY_CLIENT, BODY_SECRET, "      headerPrefix: OAuth\n").await;
    let echo = get_echo(&t.sidecar, "/a").await;
    assert!(
        header(&echo, "authorization").is_some_and(|a| a.starts_with("OAuth ey")),
        "{echo}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_renew_under_continuous_traffic_without_a_failed_request() {
    let t = with_provider(3, BODY_CLIENT, BODY_SECRET, "").await;
    let sidecar = Arc::new(t.sidecar);
    let until = Instant::now() + Duration::from_secs(10);
    let mut workers = Vec::new();
    for _ in 0..4 {
        let sidecar = sidecar.clone();
        workers.push(tokio::spawn(async move {
            let http = client();
            let (mut ok, mut failed) = (0u32, Vec::new());
            while Instant::now() < until {
                let response = http
                    .get(sidecar.url("/traffic"))
                    .send()
                    .await
                    .expect("request");
                if response.status() == 200 {
                    ok += 1;
                } else {
                    failed.push(format!(
                        "{}: {}",
                        response.status(),
                        response.text().await.unwrap_or_default()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed)
        }));
    }
    let mut total = 0;
    for w in workers {
        let (ok, failed) = w.await.expect("worker");
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        total += ok;
    }
    assert!(total > 100, "only {total} requests in 10 s");
    // The upstream refuses expired tokens: none reached it.
    assert_eq!(t.upstream.state.refused.load(Ordering::SeqCst), 0);
    let tokens = t.upstream.state.authorizations.lock().expect("lock").len();
    assert!(
        tokens >= 4,
        "only {tokens} distinct tokens in 10 s of 3 s tokens"
    );
    let fetches = sidecar
        .metric("sidekey_token_fetches_total{datasource=\"payments\"}")
        .await;
    assert!(fetches >= 4.0, "{fetches} token fetches");
    // Single flight: 3 s tokens renew every 1.5 s, so 10 s hold at most
    // seven renewals, the first fetch and one in flight. Four clients
    // fetching on their own would make many more.
    assert!(fetches <= 9.0, "{fetches} token fetches in 10 s");
    assert_eq!(
        sidecar
            .metric("sidekey_token_fetch_failures_total{datasource=\"payments\"}")
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_401_renews_the_token_once_and_retries_the_request() {
    let t = with_provider(300, BODY_CLIENT, BODY_SECRET, "").await;
    let old = authorization_sent(&t.sidecar, "/a").await;
    t.upstream.revoke(&old);

    let response = client()
        .post(t.sidecar.url("/charges"))
        .body("{\"amount\": 5}")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200, "{}", t.sidecar.logs());
    let echo: serde_json::Value = response.json().await.expect("echo");
    let new = header(&echo, "authorization").expect("authorization");
    assert_ne!(new, old);
    assert_eq!(echo["body_len"], 13, "the body was sent again");
    assert_eq!(t.upstream.state.refused.load(Ordering::SeqCst), 1);
    assert_eq!(t.upstream.state.requests.load(Ordering::SeqCst), 3);
    assert_eq!(t.server.grants().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_down_gets_503_with_a_json_body() {
    let pki = Pki::new("test");
    let upstream = Upstream::start(&pki).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let ws = oauth_workspace(
        &pki,
        &upstream.url(),
        &format!("https://127.0.0.1:{port}/token"),
        BODY_CLIENT,
        BODY_SECRET,
        "",
    );
    let sidecar = sidecar::start(&ws);
    let response = client()
        .get(sidecar.url("/a"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"], "token_unavailable");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cannot be reached")),
        "{body}"
    );
    let ready = client()
        .get(sidecar.admin_url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    assert_eq!(upstream.state.requests.load(Ordering::SeqCst), 0);
}

/// An authorization-code datasource, with the operator's `refresh_token`
/// in its Secret when one is given.
fn authorization_code_workspace(
    pki: &Pki,
    upstream: &str,
    token_url: &str,
    refresh_token: Option<&str>,
) -> Workspace {
    use common::oauth::{USER_CLIENT, USER_SECRET};
    let ws = workspace(pki);
    if let Some(token) = refresh_token {
        ws.write_secret("payments-sidekey-oauth", "refresh-token", token);
    }
    ws.write_secret("payments-oauth", "client-secret", USER_SECRET);
    ws.write_datasource(&manifest(
        upstream,
        &format!(
            "  authentication:\n    type: OAuth2\n    oauth2:\n      grantType: AuthorizationCode\n      accessTokenUrl: {token_url}\n      authorizationUrl: https://127.0.0.1:9/auth\n      redirectUrl: https://app.sidekey.test/callback\n      clientId: {USER_CLIENT}\n      clientSecretRef: {{ name: payments-oauth, key: client-secret }}\n"
        ),
    ));
    ws
}

/// An authorization-code datasource with the refresh token `server`
/// minted, requesting tokens at `token_url`.
fn authorized(pki: &Pki, upstream: &Upstream, server: &OAuthServer, token_url: &str) -> Workspace {
    let token = server.minted_refresh_token();
    authorization_code_workspace(pki, &upstream.url(), token_url, Some(&token))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_code_without_a_token_is_not_ready_and_says_why() {
    let pki = Pki::new("test");
    let upstream = Upstream::start(&pki).await;
    let server = oauth::start(&pki, 300).await;
    let ws = authorization_code_workspace(&pki, &upstream.url(), &server.token_url(), None);
    let sidecar = sidecar::start(&ws);
    let ready = client()
        .get(sidecar.admin_url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    let reason = ready.text().await.expect("body");
    assert!(
        reason.contains("has no token yet")
            && reason.contains("payments-sidekey-oauth")
            && reason.contains("status.authorizationUrl"),
        "{reason}"
    );
    let response = client()
        .get(sidecar.url("/a"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 503);
    assert!(server.grants().is_empty() && server.errors().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_code_refreshes_with_the_rotated_refresh_token() {
    let pki = Pki::new("test");
    let upstream = Upstream::start(&pki).await;
    let server = oauth::start_with_refresh_token(&pki, 2).await;
    let ws = authorized(&pki, &upstream, &server, &server.token_url());
    let sidecar = sidecar::start(&ws);
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        get_echo(&sidecar, "/a").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grants = server.grants();
    // Each refresh spends the previous refresh token; reusing one would fail.
    assert!(grants.len() >= 3, "{grants:?}");
    assert!(
        grants.iter().all(|g| g["grant_type"] == "refresh_token"),
        "{grants:?}"
    );
    assert!(server.errors().is_empty(), "{:?}", server.errors());
    let tokens = upstream.state.authorizations.lock().expect("lock").len();
    assert!(tokens >= 3, "{tokens} distinct access tokens");
}

/// A token endpoint that answers every request after `delay` with a token
/// of `expires_in` seconds, and counts the requests.
async fn slow_token_endpoint(delay: Duration, expires_in: u64) -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                // One request per connection; its body is small.
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                let body = format!(
                    r#"{{"access_token":"short-lived","token_type":"bearer","expires_in":{expires_in}}}"#
                );
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}/token"), hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_expired_on_arrival_is_a_failure_that_waiting_requests_share() {
    let pki = Pki::new("test");
    let upstream = Upstream::start(&pki).await;
    // 1 s tokens that take 1.5 s to arrive: each is expired when stored.
    let (token_url, hits) = slow_token_endpoint(Duration::from_millis(1500), 1).await;
    let ws = oauth_workspace(&pki, &upstream.url(), &token_url, "c", "s", "");
    let sidecar = Arc::new(sidecar::start(&ws));
    let mut requests = Vec::new();
    for _ in 0..6 {
        let sidecar = sidecar.clone();
        requests.push(tokio::spawn(async move {
            let response = client()
                .get(sidecar.url("/a"))
                .send()
                .await
                .expect("request");
            (
                response.status().as_u16(),
                response.text().await.unwrap_or_default(),
            )
        }));
    }
    for request in requests {
        let (status, body) = request.await.expect("request task");
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("expired before it arrived"), "{body}");
    }
    // The waiting requests took the first fetch's answer instead of each
    // fetching again in turn; the loop's retry may have started since.
    let made = hits.load(Ordering::SeqCst);
    assert!(made <= 3, "{made} token requests for 6 waiting requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_rebuilds_oauth2_keeps_the_old_token_serving_until_a_new_one_comes() {
    let t = with_provider(300, BODY_CLIENT, BODY_SECRET, "").await;
    get_echo(&t.sidecar, "/before").await;
    // The token endpoint goes away; then the CA bundle changes (the same
    // CA twice), which rebuilds TLS and with it the OAuth 2.0 client.
    drop(t.server);
    t.ws.write_secret("ca", "ca.crt", &format!("{}{}", t.pki.ca_pem, t.pki.ca_pem));
    // Reloads are checked every 0.3 s: the change has been seen.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The old token is valid for minutes: every request still gets through.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        get_echo(&t.sidecar, "/during").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        t.sidecar
            .logs()
            .contains("the current token serves until the new one"),
        "{}",
        t.sidecar.logs()
    );
}

/// A TCP relay in front of `port` that, once `slow` is set, holds each
/// chunk the server sends for that long: the token request still reaches
/// the server at once, its answer comes late.
struct SlowRelay {
    port: u16,
    delay_ms: Arc<AtomicUsize>,
}

impl SlowRelay {
    async fn start(port: u16) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let relay_port = listener.local_addr().expect("addr").port();
        let delay_ms = Arc::new(AtomicUsize::new(0));
        let delay = delay_ms.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                    continue;
                };
                let delay = delay.clone();
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                    let _ = server_write.shutdown().await;
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match server_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let ms = delay.load(Ordering::SeqCst) as u64;
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = client_write.shutdown().await;
                });
            }
        });
        Self {
            port: relay_port,
            delay_ms,
        }
    }

    fn token_url(&self) -> String {
        format!("https://127.0.0.1:{}/token", self.port)
    }

    fn hold(&self, delay: Duration) {
        let ms = usize::try_from(delay.as_millis()).expect("delay");
        self.delay_ms.store(ms, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_outlives_the_request_that_asked_for_it() {
    let pki = Pki::new("test");
    let upstream = Upstream::start(&pki).await;
    let server = oauth::start_with_refresh_token(&pki, 300).await;
    let relay = SlowRelay::start(server.port()).await;
    let ws = authorized(&pki, &upstream, &server, &relay.token_url());
    let sidecar = sidecar::start(&ws);
    let old = authorization_sent(&sidecar, "/a").await;
    // The upstream refuses the token: the next request makes the sidecar
    // refresh it, and the server's answer (with the rotated refresh token)
    // takes 2 s to come back.
    upstream.revoke(&old);
    relay.hold(Duration::from_secs(2));
    // The app gives up and drops its HTTP/2 stream mid-refresh.
    let impatient = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let gave_up = tokio::time::timeout(
        Duration::from_millis(800),
        impatient.get(sidecar.url("/b")).send(),
    )
    .await;
    assert!(gave_up.is_err(), "the request should still be waiting");
    drop(impatient);
    // The refresh finishes regardless and its tokens are kept: the next
    // request carries the new access token, and the rotated refresh token
    // was not lost (reusing the spent one would be `invalid_grant`).
    tokio::time::sleep(Duration::from_secs(4)).await;
    relay.hold(Duration::ZERO);
    let (status, body) = get_text(&sidecar, "/c").await;
    assert_eq!(status, 200, "{body}\n{}", sidecar.logs());
    let echo: serde_json::Value = serde_json::from_str(&body).expect("echo");
    assert_ne!(header(&echo, "authorization"), Some(old.as_str()));
    assert!(server.errors().is_empty(), "{:?}", server.errors());
    assert_eq!(server.grants().len(), 2, "{:?}", server.grants());
}

/// RFC 3339, `seconds` from now.
fn rfc3339_in(seconds: i64) -> String {
    (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(seconds)).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_the_mounted_access_token_is_sent_and_replaced_never_refreshed() {
    let pki = Pki::new("test");
    let upstream = Upstream::start(&pki).await;
    // Nothing listens at the token endpoint: the sidecar must not need it.
    let ws = authorization_code_workspace(&pki, &upstream.url(), "https://127.0.0.1:9/token", None);
    // The webhook mounts neither the client secret nor the refresh token:
    // only the operator uses them.
    std::fs::remove_dir_all(ws.secrets_dir().join("payments-oauth")).expect("no client secret");
    let tokens = ws.secrets_dir().join("payments-sidekey-oauth");
    let mounted = |version: &str, token: &str, expires_at: &str| {
        kubelet_write(
            &tokens,
            version,
            &[("access-token", token), ("expires-at", expires_at)],
        );
    };
    mounted("2026_12_01_a", "operator-token-1", &rfc3339_in(300));
    let sidecar = sidecar::start(&ws);
    assert_eq!(
        authorization_sent(&sidecar, "/a").await,
        "Bearer operator-token-1"
    );

    // The operator refreshed; the kubelet swaps the volume's files.
    mounted("2026_12_01_b", "operator-token-2", &rfc3339_in(300));
    let deadline = Instant::now() + Duration::from_secs(10);
    while authorization_sent(&sidecar, "/b").await != "Bearer operator-token-2" {
        assert!(
            Instant::now() < deadline,
            "not reloaded:\n{}",
            sidecar.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A token past its expiry is not sent: 503 saying why, and not ready.
    let expired_at = rfc3339_in(-5);
    mounted("2026_12_01_c", "operator-token-3", &expired_at);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let (status, body) = get_text(&sidecar, "/c").await;
        if status != 200 || Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(&format!("expired at {expired_at}")), "{body}");
    assert_eq!(readyz_status(&sidecar).await, 503);
    assert_eq!(
        sidecar
            .metric("sidekey_token_fetches_total{datasource=\"payments\"}")
            .await,
        0.0,
        "the sidecar requested a token itself"
    );
    assert!(
        !upstream
            .state
            .authorizations
            .lock()
            .expect("lock")
            .contains("Bearer operator-token-3")
    );
}

/// A TCP relay in front of `port` that can be switched off: while off it
/// drops every connection it had and closes each new one at once, counting
/// them (each is one token request the sidecar tried).
struct SwitchRelay {
    port: u16,
    up: tokio::sync::watch::Sender<bool>,
    refused: Arc<AtomicUsize>,
}

impl SwitchRelay {
    async fn start(port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let relay_port = listener.local_addr().expect("addr").port();
        let (up, watch) = tokio::sync::watch::channel(true);
        let refused = Arc::new(AtomicUsize::new(0));
        let counted = refused.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !*watch.borrow() {
                    counted.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                else {
                    continue;
                };
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = watch.wait_for(|up| !up) => {}
                    }
                });
            }
        });
        Self {
            port: relay_port,
            up,
            refused,
        }
    }

    fn token_url(&self) -> String {
        format!("https://127.0.0.1:{}/token", self.port)
    }

    fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_down_longer_than_a_token_lives_gets_503_retry_after_and_recovers_without_hammering()
 {
    let pki = Pki::new("test");
    let upstream = Upstream::start(&pki).await;
    // 3 s tokens, renewed every 1.5 s: the 8 s outage below outlives two.
    let server = oauth::start(&pki, 3).await;
    let relay = SwitchRelay::start(server.port()).await;
    let ws = oauth_workspace(
        &pki,
        &upstream.url(),
        &relay.token_url(),
        BODY_CLIENT,
        BODY_SECRET,
        "",
    );
    let sidecar = Arc::new(sidecar::start(&ws));
    let (status, body) = get_text(&sidecar, "/before").await;
    assert_eq!(status, 200, "{body}");

    // Steady traffic from four clients for the whole test.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (sidecar, stop) = (sidecar.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let http = client();
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                // Each request is judged by when it was sent.
                let sent = Instant::now();
                let response = http
                    .get(sidecar.url("/traffic"))
                    .send()
                    .await
                    .expect("request");
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap_or("?").to_owned());
                let body = response.text().await.unwrap_or_default();
                seen.push((sent, status, retry_after, body));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        }));
    }

    // Down for 8 s, more than twice a token's life.
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.set_up(false);
    let down_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let attempts = relay.refused.load(Ordering::SeqCst);
    relay.set_up(true);
    let up_at = Instant::now();

    // It recovers by itself: the next scheduled retry (at most 16 s after
    // the fifth failure) gets a token, and requests succeed again.
    let recovered = async {
        loop {
            let (status, _) = get_text(&sidecar, "/after").await;
            if status == 200 {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let recovered_at = tokio::time::timeout(Duration::from_secs(25), recovered)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no recovery 25 s after the endpoint came back\n{}",
                sidecar.logs()
            )
        });
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut seen = Vec::new();
    for w in workers {
        seen.extend(w.await.expect("worker"));
    }

    let unavailable: Vec<_> = seen.iter().filter(|(_, s, _, _)| *s == 503).collect();
    assert!(
        unavailable.len() > 20,
        "only {} answers 503 while the token endpoint was down",
        unavailable.len()
    );
    // The provider writes `exp` in whole seconds, so its token may expire
    // up to a second before `expires_in` says, more than the 0.3 s a 3 s
    // token is retired early: just before the sidecar retires it, the
    // upstream may refuse it (401, passed to the app, as no new token can
    // be had). Sent after the first 503 was sent, never.
    let first_503 = unavailable.iter().map(|(at, ..)| *at).min().expect("a 503");
    for (at, status, retry_after, body) in &seen {
        let early_401 = *status == 401 && *at < first_503 && body.contains("expired");
        assert!(
            *status == 200 || *status == 503 || early_401,
            "{status} {body}\n{}",
            sidecar.logs()
        );
        if *status == 503 {
            // Only once the last token was no longer usable.
            assert!(*at > down_at + Duration::from_millis(500), "503 too early");
            let seconds: u64 = retry_after
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("Retry-After {retry_after:?}"));
            assert!((1..=60).contains(&seconds), "Retry-After: {seconds}");
            let json: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
            assert_eq!(json["error"], "token_unavailable", "{json}");
            assert!(
                json["reason"].as_str().is_some_and(|r| !r.is_empty()),
                "{json}"
            );
        }
    }
    // Every request after recovery got through.
    assert!(
        seen.iter()
            .filter(|(at, ..)| *at > recovered_at)
            .all(|(_, status, ..)| *status == 200)
    );
    // The backoff (0.5 s doubling, plus up to as much jitter) allows 4 or
    // 5 token requests in 8 s, whatever the hundreds of app requests did.
    let requests = seen
        .iter()
        .filter(|(at, ..)| *at > down_at && *at < up_at)
        .count();
    assert!(requests > 100, "{requests} app requests while down");
    assert!(
        (3..=6).contains(&attempts),
        "{attempts} token requests in 8 s down, for {requests} app requests"
    );
    assert!(server.errors().is_empty(), "{:?}", server.errors());
    // The upstream refused no request but those early 401s: no request
    // went out with a token it had retired.
    let refusals = seen.iter().filter(|(_, status, ..)| *status == 401).count();
    assert_eq!(
        upstream.state.refused.load(Ordering::SeqCst) as usize,
        refusals
    );
}
