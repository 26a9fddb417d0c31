//! Around the requests: admin endpoints, reloads, refusal to listen off
//! loopback, and secrets kept out of logs and error bodies.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::oauth::{self, BODY_CLIENT, BODY_SECRET};
use common::sidecar::kubelet_write;
use common::*;

const BEARER: &str = "  authentication:\n    type: BearerToken\n    bearerToken:\n      tokenSecretRef: { name: payments-token, key: token }\n";

async fn authorization(sidecar: &common::sidecar::Sidecar) -> String {
    let echo = get_echo(sidecar, "/a").await;
    header(&echo, "authorization")
        .expect("authorization")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_serves_health_readiness_and_metrics() {
    let pki = Pki::new("upstream");
    let upstream = Upstream::start(&pki).await;
    let ws = workspace(&pki);
    ws.write_datasource(&manifest(&upstream.url(), ""));
    let sidecar = sidecar::start(&ws);
    get_echo(&sidecar, "/a").await;
    let response = client()
        .get(sidecar.url("/status/404"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 404);

    let http = client();
    let health = http
        .get(sidecar.admin_url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let ready = http
        .get(sidecar.admin_url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    let missing = http
        .get(sidecar.admin_url("/nope"))
        .send()
        .await
        .expect("404");
    assert_eq!(missing.status(), 404);
    assert_eq!(
        sidecar
            .metric("sidekey_requests_total{datasource=\"payments\",class=\"2xx\"}")
            .await,
        1.0
    );
    assert_eq!(
        sidecar
            .metric("sidekey_requests_total{datasource=\"payments\",class=\"4xx\"}")
            .await,
        1.0
    );
    assert_eq!(
        sidecar
            .metric("sidekey_upstream_latency_seconds_count{datasource=\"payments\"}")
            .await,
        2.0
    );
    assert_eq!(
        sidecar
            .metric("sidekey_config_reloads_total{datasource=\"payments\"}")
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_first_oauth_token() {
    let pki = Pki::new("test");
    let upstream = Upstream::start(&pki).await;
    let server = oauth::start(&pki, 300).await;
    let ws = workspace(&pki);
    ws.write_secret("payments-oauth", "client-secret", BODY_SECRET);
    ws.write_datasource(&manifest(
        &upstream.url(),
        &format!(
            "  authentication:\n    type: OAuth2\n    oauth2:\n      accessTokenUrl: {}\n      clientId: {BODY_CLIENT}\n      clientSecretRef: {{ name: payments-oauth, key: client-secret }}\n",
            server.token_url()
        ),
    ));
    let sidecar = sidecar::start(&ws);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = client()
            .get(sidecar.admin_url("/readyz"))
            .send()
            .await
            .expect("readyz");
        if ready.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never ready:\n{}",
            sidecar.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expiry = sidecar
        .metric("sidekey_token_expiry_seconds{datasource=\"payments\"}")
        .await;
    assert!(
        expiry > 200.0 && expiry <= 300.0,
        "token expires in {expiry} s"
    );
    assert_eq!(
        sidecar
            .metric("sidekey_token_fetches_total{datasource=\"payments\"}")
            .await,
        1.0
    );
    assert_eq!(upstream.state.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_swapped_by_kubelet_is_picked_up_without_dropping_a_request() {
    let pki = Pki::new("upstream");
    let upstream = Upstream::start(&pki).await;
    let ws = workspace(&pki);
    let secret_dir = ws.secrets_dir().join("payments-token");
    kubelet_write(&secret_dir, "2024_01_01", &[("token", "first-token")]);
    ws.write_datasource(&manifest(&upstream.url(), BEARER));
    let sidecar = sidecar::start(&ws);
    assert_eq!(authorization(&sidecar).await, "Bearer first-token");

    let in_flight = tokio::spawn({
        let url = sidecar.url("/sleep/1500");
        async move {
            client()
                .get(url)
                .send()
                .await
                .expect("slow request")
                .status()
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    kubelet_write(&secret_dir, "2024_01_02", &[("token", "second-token")]);

    let deadline = Instant::now() + Duration::from_secs(10);
    while authorization(&sidecar).await != "Bearer second-token" {
        assert!(
            Instant::now() < deadline,
            "not reloaded:\n{}",
            sidecar.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(in_flight.await.expect("join"), 200);
    assert_eq!(
        sidecar
            .metric("sidekey_config_reloads_total{datasource=\"payments\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_another_upstream_leaves_the_pooled_connections_behind() {
    // Same CA, so the TLS setup stays: only the URL moves. The pooled
    // connections to the first upstream must not carry a request meant
    // for the second.
    let pki = Pki::new("upstream");
    let (first, second) = (Upstream::start(&pki).await, Upstream::start(&pki).await);
    let ws = workspace(&pki);
    ws.write_datasource(&manifest(&first.url(), BEARER));
    ws.write_secret("payments-token", "token", "t");
    let sidecar = sidecar::start(&ws);
    for _ in 0..3 {
        get_echo(&sidecar, "/a").await;
    }
    let requests = |u: &Upstream| u.state.requests.load(Ordering::SeqCst);
    assert_eq!((requests(&first), requests(&second)), (3, 0));

    ws.write_datasource(&manifest(&second.url(), BEARER));
    let deadline = Instant::now() + Duration::from_secs(10);
    while requests(&second) == 0 {
        assert!(
            Instant::now() < deadline,
            "not reloaded:\n{}",
            sidecar.logs()
        );
        get_echo(&sidecar, "/a").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (first_seen, second_seen) = (requests(&first), requests(&second));
    for _ in 0..5 {
        get_echo(&sidecar, "/a").await;
    }
    assert_eq!(
        (requests(&first), requests(&second)),
        (first_seen, second_seen + 5)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_config_change_keeps_the_old_one_serving() {
    let pki = Pki::new("upstream");
    let upstream = Upstream::start(&pki).await;
    let ws = workspace(&pki);
    ws.write_secret("payments-token", "token", "kept-token");
    ws.write_datasource(&manifest(&upstream.url(), BEARER));
    let sidecar = sidecar::start(&ws);
    assert_eq!(authorization(&sidecar).await, "Bearer kept-token");

    ws.write_datasource(&manifest("ftp://127.0.0.1/nope", BEARER));
    sidecar
        .wait_for_log("configuration change refused", Duration::from_secs(10))
        .await;
    assert!(
        sidecar.logs().contains("is not http or https"),
        "{}",
        sidecar.logs()
    );
    assert_eq!(authorization(&sidecar).await, "Bearer kept-token");
    assert_eq!(
        sidecar
            .metric("sidekey_config_reload_failures_total{datasource=\"payments\"}")
            .await,
        1.0
    );
    assert_eq!(
        sidecar
            .metric("sidekey_config_reloads_total{datasource=\"payments\"}")
            .await,
        0.0
    );
}

#[test]
fn listen_address_off_loopback_is_refused() {
    let ws = Workspace::new();
    ws.write_datasource(&manifest("https://127.0.0.1:9", ""));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sidekey-sidecar"))
        .arg("--datasource")
        .arg(ws.datasource_path())
        .arg("--secrets-dir")
        .arg(ws.secrets_dir())
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("0.0.0.0:0 is not a loopback address"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sidecar_on_a_taken_port_is_refused() {
    let pki = Pki::new("upstream");
    let upstream = Upstream::start(&pki).await;
    let ws = workspace(&pki);
    ws.write_datasource(&manifest(&upstream.url(), ""));
    // The first one runs two workers: its sockets share the port among
    // themselves (SO_REUSEPORT), which must not let another process join.
    let first = sidecar::start(&ws);
    for workers in ["1", "2"] {
        let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_sidekey-sidecar"))
            .arg("--datasource")
            .arg(ws.datasource_path())
            .arg("--secrets-dir")
            .arg(ws.secrets_dir())
            .args(["--listen", &first.addr.to_string()])
            .args(["--worker-threads", workers])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run");
        // One that started would serve until killed: give it a deadline.
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = second.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = second.kill();
                let _ = second.wait();
                panic!(
                    "{workers} worker(s): a second sidecar started on {}",
                    first.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(!status.success(), "{workers} worker(s): exit {status}");
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut second.stderr.take().expect("stderr"), &mut stderr)
            .expect("stderr");
        assert!(
            stderr.contains(&format!("{} is already in use", first.addr)),
            "{workers} worker(s): {stderr}"
        );
    }
    // The first one still serves.
    for _ in 0..20 {
        get_echo(&first, "/a").await;
    }
}

/// Asserts that none of `secrets` occurs in `text`.
fn assert_absent(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(!s.is_empty());
        assert!(
            !text.contains(s.as_str()),
            "{what} contains a secret ({} chars):\n{text}",
            s.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_or_error_bodies_with_oauth2_and_signature() {
    let pki = Pki::new("test");
    let upstream = Upstream::start(&pki).await;
    let server = oauth::start(&pki, 300).await;
    let ws = workspace(&pki);
    let signing_key = "signing-key-0123456789-abcdefghijklmnop";
    ws.write_secret("payments-oauth", "client-secret", BODY_SECRET);
    ws.write_secret("signing", "key", signing_key);
    ws.write_datasource(&manifest(
        &upstream.url(),
        &format!(
            "  signature:\n    secretRef: {{ name: signing, key: key }}\n  authentication:\n    type: OAuth2\n    oauth2:\n      accessTokenUrl: {}\n      clientId: {BODY_CLIENT}\n      clientSecretRef: {{ name: payments-oauth, key: client-secret }}\n",
            server.token_url()
        ),
    ));
    let sidecar = sidecar::start_with(&ws, &["--upstream-timeout", "1"]);
    // Success, a 401 with renewal and retry, then an upstream too slow.
    let echo = get_echo(&sidecar, "/a?x=1").await;
    let first = header(&echo, "authorization")
        .expect("authorization")
        .to_owned();
    let signature = header(&echo, "x-appsmith-signature")
        .expect("signature")
        .to_owned();
    upstream.revoke(&first);
    get_echo(&sidecar, "/b").await;
    let failed = client()
        .get(sidecar.url("/sleep/3000"))
        .send()
        .await
        .expect("request");
    assert_eq!(failed.status(), 504);
    let body = failed.text().await.expect("body");

    let mut secrets = vec![BODY_SECRET.to_owned(), signing_key.to_owned(), signature];
    for a in upstream.state.authorizations.lock().expect("lock").iter() {
        secrets.push(a.trim_start_matches("Bearer ").to_owned());
    }
    assert!(
        secrets.len() >= 5,
        "two access tokens expected: {}",
        secrets.len()
    );
    sidecar
        .wait_for_log("request failed", Duration::from_secs(5))
        .await;
    assert!(sidecar.logs().contains("renewing it"), "the 401 path ran");
    assert_absent("the logs", &sidecar.logs(), &secrets);
    assert_absent("the error body", &body, &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_or_error_bodies_when_the_token_endpoint_refuses() {
    let pki = Pki::new("test");
    let upstream = Upstream::start(&pki).await;
    let server = oauth::start(&pki, 300).await;
    let ws = workspace(&pki);
    let wrong = "wrong-client-secret-5f0e7d";
    ws.write_secret("payments-oauth", "client-secret", wrong);
    ws.write_datasource(&manifest(
        &upstream.url(),
        &format!(
            "  authentication:\n    type: OAuth2\n    oauth2:\n      accessTokenUrl: {}\n      clientId: {BODY_CLIENT}\n      clientSecretRef: {{ name: payments-oauth, key: client-secret }}\n      clientAuthentication: BasicHeader\n",
            server.token_url()
        ),
    ));
    let sidecar = sidecar::start(&ws);
    let response = client()
        .get(sidecar.url("/a"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 503);
    let body = response.text().await.expect("body");
    assert!(body.contains("invalid_client"), "{body}");
    sidecar
        .wait_for_log("token request failed", Duration::from_secs(5))
        .await;
    let encoded_basic = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{BODY_CLIENT}:{wrong}"))
    };
    let secrets = [wrong.to_owned(), encoded_basic];
    assert_absent("the logs", &sidecar.logs(), &secrets);
    assert_absent("the error body", &body, &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_refuses_new_ones_and_exits_0() {
    let pki = Pki::new("upstream");
    let upstream = Upstream::start(&pki).await;
    let ws = workspace(&pki);
    ws.write_secret("payments-token", "token", "drain-token");
    ws.write_datasource(&manifest(&upstream.url(), BEARER));
    let mut sidecar = sidecar::start_with(&ws, &["--shutdown-grace", "10"]);
    get_echo(&sidecar, "/warm").await;

    // Requests the upstream answers after 1.5 s, each on its own
    // connection (over HTTP/1.1 and h2c), a large body streaming among them.
    let mut in_flight = Vec::new();
    for (i, path) in [
        "/sleep/1500",
        "/sleep/1500",
        "/sleep/1500",
        "/bytes/8388608",
    ]
    .into_iter()
    .enumerate()
    {
        let http = if i % 2 == 0 {
            reqwest::Client::new()
        } else {
            reqwest::Client::builder()
                .http2_prior_knowledge()
                .build()
                .expect("client")
        };
        let url = sidecar.url(path);
        in_flight.push(tokio::spawn(async move {
            let response = http.get(url).send().await?;
            let status = response.status().as_u16();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, body.len()))
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let addr = sidecar.addr;
    sidecar.terminate();

    // New connections are refused once the listener closes.
    let refused = async {
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(1), refused)
        .await
        .expect("new connections are still accepted 1 s after SIGTERM");

    // Every request in flight finishes whole.
    for (i, request) in in_flight.into_iter().enumerate() {
        let (status, len) = request
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("request {i} failed: {e}\n{}", sidecar.logs()));
        assert_eq!(status, 200, "request {i}");
        if i == 3 {
            assert_eq!(len, 8 << 20, "the streamed body was cut");
        }
    }
    let status = sidecar
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("still running 5 s after its requests finished");
    assert!(status.success(), "{status}\n{}", sidecar.logs());
    assert_eq!(upstream.state.requests.load(Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_request_longer_than_the_grace_period_exits_when_it_ends() {
    let pki = Pki::new("upstream");
    let upstream = Upstream::start(&pki).await;
    let ws = workspace(&pki);
    ws.write_datasource(&manifest(&upstream.url(), ""));
    let mut sidecar = sidecar::start_with(&ws, &["--shutdown-grace", "1"]);
    let url = sidecar.url("/sleep/30000");
    let stuck = tokio::spawn(async move { client().get(url).send().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    sidecar.terminate();
    let status = sidecar
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("still running 5 s after SIGTERM with a 1 s grace period");
    let took = asked.elapsed();
    assert!(status.success(), "{status}\n{}", sidecar.logs());
    assert!(
        took >= Duration::from_millis(900),
        "exited after {took:?}, before the grace period ended"
    );
    assert!(
        sidecar
            .logs()
            .contains("in-flight requests did not finish within the grace period"),
        "{}",
        sidecar.logs()
    );
    // The app's request ends (with an error), it is not left hanging.
    let ended = tokio::time::timeout(Duration::from_secs(5), stuck)
        .await
        .expect("the app's request still hangs");
    assert!(ended.expect("task").is_err());
}
