//! The upstream's side of the sidecar: an upstream that misbehaves on
//! purpose (a hand-written HTTP/1.1 server over tokio-rustls) and what the
//! app sees, whether the sidecar keeps serving, and whether the credential
//! ever leaves for another host. The answers are tabled in
//! docs/hardening.md, "The upstream's side".

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sidecar::Sidecar;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::task::AbortOnDropHandle;

/// The datasource's API key: it may reach the datasource's host only.
const KEY: &str = "k3y-for-the-datasource-only";

/// What a hostile upstream saw.
#[derive(Default)]
struct Seen {
    /// TCP connections accepted.
    connections: AtomicU64,
    /// TLS handshakes that completed.
    handshakes: AtomicU64,
    /// Request heads read, each whole.
    heads: Mutex<Vec<String>>,
    /// Connections the sidecar closed while the upstream held them open.
    closed_by_sidecar: AtomicU64,
}

struct Hostile {
    port: u16,
    seen: Arc<Seen>,
    _task: AbortOnDropHandle<()>,
}

impl Hostile {
    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> usize {
        self.seen.heads.lock().expect("lock").len()
    }
}

/// Serves TLS with `config` (HTTP/1.1 only) on 127.0.0.1: reads one
/// request head per connection and hands its path and the stream to `act`,
/// which writes whatever it likes.
async fn hostile<F, Fut>(config: rustls::ServerConfig, act: F) -> Hostile
where
    F: Fn(String, TlsStream<TcpStream>, Arc<Seen>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let seen = Arc::new(Seen::default());
    let act = Arc::new(act);
    let shared = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            shared.connections.fetch_add(1, Ordering::SeqCst);
            let (acceptor, act, seen) = (acceptor.clone(), act.clone(), shared.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                seen.handshakes.fetch_add(1, Ordering::SeqCst);
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
                seen.heads.lock().expect("lock").push(head);
                act(path, tls, seen).await;
            });
        }
    });
    Hostile {
        port,
        seen,
        _task: AbortOnDropHandle::new(task),
    }
}

/// The test PKI's server certificate, offering HTTP/1.1 only.
fn http1(config: rustls::ServerConfig) -> rustls::ServerConfig {
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// A complete, small answer that closes the connection.
async fn ok(mut tls: TlsStream<TcpStream>) {
    let _ = tls
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        .await;
    let _ = tls.shutdown().await;
}

/// Holds the connection open until the sidecar closes it, and counts that.
async fn hold(mut tls: TlsStream<TcpStream>, seen: Arc<Seen>) {
    let _ = tls.flush().await;
    let mut buf = [0u8; 1024];
    loop {
        match tls.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    seen.closed_by_sidecar.fetch_add(1, Ordering::SeqCst);
}

/// A workspace whose datasource is `url`, trusting `ca_pem`, sending the
/// API key [`KEY`] in `X-Api-Key`.
fn datasource(ca_pem: &str, url: &str) -> Workspace {
    let ws = Workspace::new();
    ws.write_secret("ca", "ca.crt", ca_pem);
    ws.write_secret("payments-key", "key", KEY);
    ws.write_datasource(&manifest(
        url,
        "  authentication:\n    type: ApiKey\n    apiKey:\n      key: X-Api-Key\n      valueSecretRef: { name: payments-key, key: key }\n",
    ));
    ws
}

/// The app's client, which follows no redirect (so that any redirect
/// followed is the sidecar's).
fn app() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// The status and the JSON error body of a GET the sidecar refused.
async fn refused(sidecar: &Sidecar, path: &str) -> (u16, serde_json::Value) {
    let response = app().get(sidecar.url(path)).send().await.expect("request");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(content_type.as_deref(), Some("application/json"));
    let body = response.text().await.expect("body");
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, json)
}

/// The sidecar still answers: a good request after the bad one is served.
async fn still_serves(sidecar: &Sidecar) {
    let (status, body) = get_text(sidecar, "/ok").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "ok"),
        "logs:\n{}",
        sidecar.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_in_the_middle_of_a_body_aborts_the_apps_response_and_serving_goes_on() {
    let pki = Pki::new("upstream");
    let upstream = hostile(http1(pki.server_config()), |path, mut tls, _| async move {
        if path != "/reset" {
            return ok(tls).await;
        }
        let mut response =
            b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nContent-Type: text/plain\r\n\r\n"
                .to_vec();
        response.extend_from_slice(&[b'x'; 1000]);
        let _ = tls.write_all(&response).await;
        let _ = tls.flush().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // RST instead of FIN: close with SO_LINGER 0.
        let _ = tls.get_ref().0.set_zero_linger();
        drop(tls);
    })
    .await;
    let ws = datasource(&pki.ca_pem, &upstream.url());
    let sidecar = sidecar::start(&ws);

    let response = app()
        .get(sidecar.url("/reset"))
        .send()
        .await
        .expect("the head arrives before the reset");
    assert_eq!(response.status(), 200);
    assert_eq!(response.content_length(), Some(100_000));
    let body = response.bytes().await;
    assert!(
        body.is_err(),
        "the app must see the body cut short, not a short body: {:?}",
        body.map(|b| b.len())
    );

    still_serves(&sidecar).await;
    // Logged once at warn, naming the datasource, and counted by reason.
    sidecar
        .wait_for_log(
            "the upstream's response body failed",
            Duration::from_secs(5),
        )
        .await;
    let warnings = sidecar.log_lines(BODY_FAILED);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0]["datasource"], "payments", "{}", warnings[0]);
    assert_eq!(warnings[0]["level"], "WARN", "{}", warnings[0]);
    assert_eq!(
        body_errors(&sidecar).await,
        [("reset", 1.0)],
        "{}",
        warnings[0]
    );
    // Also counted by its status, 2xx: the head was a 200 when it was
    // answered.
    assert_eq!(
        sidecar
            .metric("sidekey_requests_total{datasource=\"payments\",class=\"2xx\"}")
            .await,
        2.0
    );
}

/// How the sidecar's warning of a failed upstream body starts.
const BODY_FAILED: &str = "the upstream's response body failed";

/// The non-zero series of `sidekey_upstream_body_errors_total` of the
/// datasource, by reason.
async fn body_errors(sidecar: &Sidecar) -> Vec<(&'static str, f64)> {
    let mut counted = Vec::new();
    for reason in ["incomplete", "reset", "idle_timeout", "failed"] {
        let value = sidecar
            .metric(&format!(
                "sidekey_upstream_body_errors_total{{datasource=\"payments\",reason=\"{reason}\"}}"
            ))
            .await;
        if value != 0.0 {
            counted.push((reason, value));
        }
    }
    counted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_is_cut_by_the_upstream_timeout() {
    let pki = Pki::new("upstream");
    let upstream = hostile(http1(pki.server_config()), |path, tls, seen| async move {
        if path == "/silent" {
            hold(tls, seen).await;
        } else {
            ok(tls).await;
        }
    })
    .await;
    let ws = datasource(&pki.ca_pem, &upstream.url());
    let sidecar = sidecar::start_with(&ws, &["--upstream-timeout", "1"]);

    let started = Instant::now();
    let (status, body) = refused(&sidecar, "/silent").await;
    let elapsed = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"], "upstream_timeout");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    // The connection the sidecar gave up on is closed, not left open.
    wait_until(|| upstream.seen.closed_by_sidecar.load(Ordering::SeqCst) == 1).await;
    still_serves(&sidecar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_ends_is_cut_by_the_body_idle_timeout() {
    let pki = Pki::new("upstream");
    let upstream = hostile(
        http1(pki.server_config()),
        |path, mut tls, seen| async move {
            match path.as_str() {
                "/endless" => {
                    let _ = tls
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
                        .await;
                    hold(tls, seen).await;
                }
                // Slow but never idle as long as the timeout: a byte every
                // 0.4 s, 2.4 s in all.
                "/trickle" => {
                    let _ = tls
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                    for _ in 0..6 {
                        let _ = tls.flush().await;
                        tokio::time::sleep(Duration::from_millis(400)).await;
                        let _ = tls.write_all(b"t").await;
                    }
                    let _ = tls.shutdown().await;
                }
                _ => ok(tls).await,
            }
        },
    )
    .await;
    let ws = datasource(&pki.ca_pem, &upstream.url());
    let sidecar = sidecar::start_with(
        &ws,
        &[
            "--upstream-timeout",
            "5",
            "--upstream-body-idle-timeout",
            "1",
        ],
    );

    let mut response = app()
        .get(sidecar.url("/endless"))
        .send()
        .await
        .expect("head");
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.expect("first chunk");
    assert_eq!(first.as_deref(), Some(&b"partial"[..]));
    // --upstream-body-idle-timeout (1 s) ends it, well before the app's own
    // timeout (60 s): with an error, not as if the body were whole.
    let started = Instant::now();
    let rest = tokio::time::timeout(Duration::from_secs(10), response.chunk())
        .await
        .expect("the sidecar ends the body");
    let elapsed = started.elapsed();
    assert!(rest.is_err(), "the body ended as if whole: {rest:?}");
    assert!(
        elapsed >= Duration::from_millis(800) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
    // The upstream connection is dropped with it.
    wait_until(|| upstream.seen.closed_by_sidecar.load(Ordering::SeqCst) == 1).await;
    assert_eq!(body_errors(&sidecar).await, [("idle_timeout", 1.0)]);
    let warnings = sidecar.log_lines(BODY_FAILED);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0]["datasource"], "payments", "{}", warnings[0]);

    // The timeout is between reads, not for the whole body: a body slower
    // than it in all, but never silent that long, arrives whole.
    let response = app()
        .get(sidecar.url("/trickle"))
        .send()
        .await
        .expect("head");
    let body = response.bytes().await.expect("whole body");
    assert_eq!(&body[..], b"tttttt");
    assert_eq!(body_errors(&sidecar).await, [("idle_timeout", 1.0)]);
    still_serves(&sidecar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigantic_response_head_is_a_502_with_a_json_body() {
    let pki = Pki::new("upstream");
    let upstream = hostile(http1(pki.server_config()), |path, mut tls, _| async move {
        let head = match path.as_str() {
            // One header of 1 MiB.
            "/huge" => format!(
                "HTTP/1.1 200 OK\r\nX-Huge: {}\r\nContent-Length: 2\r\n\r\nok",
                "a".repeat(1024 * 1024)
            ),
            // 10,000 small headers.
            "/many" => format!(
                "HTTP/1.1 200 OK\r\n{}Content-Length: 2\r\n\r\nok",
                (0..10_000)
                    .map(|i| format!("X-H{i}: v\r\n"))
                    .collect::<String>()
            ),
            _ => return ok(tls).await,
        };
        // The sidecar stops reading part way: the write may fail.
        let _ = tls.write_all(head.as_bytes()).await;
        let _ = tls.shutdown().await;
    })
    .await;
    let ws = datasource(&pki.ca_pem, &upstream.url());
    let sidecar = sidecar::start(&ws);

    for path in ["/huge", "/many"] {
        let (status, body) = refused(&sidecar, path).await;
        assert_eq!(status, 502, "{path}: {body}");
        assert_eq!(body["error"], "upstream_failed", "{path}: {body}");
        still_serves(&sidecar).await;
    }
    assert_eq!(
        sidecar
            .metric("sidekey_requests_total{datasource=\"payments\",class=\"5xx\"}")
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_another_host_goes_to_the_app_unfollowed() {
    let pki = Pki::new("upstream");
    // Another host the redirect could lead to: it must see nothing.
    let elsewhere = hostile(http1(pki.server_config()), |_, tls, _| ok(tls)).await;
    let elsewhere_url = format!("https://localhost:{}/steal", elsewhere.port);
    let location = elsewhere_url.clone();
    let upstream = hostile(http1(pki.server_config()), move |path, mut tls, _| {
        let location = match path.as_str() {
            "/evil" => "https://evil.example/".to_owned(),
            "/elsewhere" => location.clone(),
            _ => String::new(),
        };
        async move {
            if location.is_empty() {
                return ok(tls).await;
            }
            let response = format!(
                "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = tls.write_all(response.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    })
    .await;
    let ws = datasource(&pki.ca_pem, &upstream.url());
    let sidecar = sidecar::start(&ws);

    for (path, location) in [
        ("/evil", "https://evil.example/"),
        ("/elsewhere", elsewhere_url.as_str()),
    ] {
        let response = app().get(sidecar.url(path)).send().await.expect("request");
        assert_eq!(response.status(), 302, "{path}");
        assert_eq!(
            response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok()),
            Some(location),
            "{path}"
        );
    }
    // Each request reached the datasource's host once, with the key...
    let heads = upstream.seen.heads.lock().expect("lock").clone();
    assert_eq!(heads.len(), 2, "{heads:?}");
    for head in &heads {
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("x-api-key: {KEY}")),
            "{head}"
        );
    }
    // ...and nothing reached the other host, not even a connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(elsewhere.seen.connections.load(Ordering::SeqCst), 0);
    assert_eq!(elsewhere.requests(), 0);
}

/// A CA of its own and a certificate it signed for `other.example` only
/// (no 127.0.0.1, no localhost): the CA's PEM and a server config.
fn certificate_for_another_name() -> (String, rustls::ServerConfig) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "other-name test CA");
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca");
    let params = CertificateParams::new(vec!["other.example".to_owned()]).expect("params");
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca).expect("cert");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server config");
    (ca.pem(), http1(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_name_is_refused_before_anything_is_sent() {
    let (ca_pem, config) = certificate_for_another_name();
    let upstream = hostile(config, |_, tls, _| ok(tls)).await;
    let ws = datasource(&ca_pem, &upstream.url());
    let sidecar = sidecar::start(&ws);

    let (status, body) = refused(&sidecar, "/charges").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "upstream_tls_failed", "{body}");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("certificate"), "{reason}");
    assert!(!reason.contains(KEY), "{reason}");
    // The handshake never completed, so no byte of the request (and of its
    // key) was sent.
    assert!(upstream.seen.connections.load(Ordering::SeqCst) >= 1);
    assert_eq!(upstream.seen.handshakes.load(Ordering::SeqCst), 0);
    assert_eq!(upstream.requests(), 0);
}

/// Waits up to 5 s for `done`.
async fn wait_until(done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "not within 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
