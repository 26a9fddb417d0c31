//! The proxy with static credentials: what arrives at a real HTTPS upstream.

mod common;

use base64::Engine;
use common::upstream::Protocol;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_sends_username_and_password_and_replaces_the_apps_authorization() {
    let pki = Pki::new("upstream");
    let upstream = Upstream::start(&pki).await;
    let ws = workspace(&pki);
    ws.write_secret("payments-basic", "password", "p4ss:w0rd é\n");
    ws.write_datasource(&manifest(
        &upstream.url(),
        "  authentication:\n    type: Basic\n    basic:\n      username: shop\n      passwordSecretRef: { name: payments-basic, key: password }\n",
    ));
    let sidecar = sidecar::start(&ws);
    let echo = get_echo_with(
        &sidecar,
        "/charges",
        &[("authorization", "Basic YXBwOmFwcA==")],
    )
    .await;
    let expected = base64::engine::general_purpose::STANDARD.encode("shop:p4ss:w0rd é");
    assert_eq!(
        header(&echo, "authorization"),
        Some(format!("Basic {expected}").as_str())
    );
}

fn api_key(ws: &Workspace, url: &str, placement: &str) {
    ws.write_secret("payments-key", "key", "k3y-value/+=");
    ws.write_datasource(&manifest(
        url,
        &format!("  authentication:\n    type: ApiKey\n    apiKey:\n      key: X-Api-Key\n      valueSecretRef: {{ name: payments-key, key: key }}\n{placement}"),
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_header_carries_prefix_and_value() {
    let pki = Pki::new("upstream");
    let upstream = Upstream::start(&pki).await;
    let ws = workspace(&pki);
    api_key(&ws, &upstream.url(), "      prefix: Token\n");
    let sidecar = sidecar::start(&ws);
    let echo = get_echo_with(&sidecar, "/a", &[("x-api-key", "app-sent-this")]).await;
    assert_eq!(header(&echo, "x-api-key"), Some("Token k3y-value/+="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_header_without_prefix_is_the_value_alone() {
    let pki = Pki::new("upstream");
    let upstream = Upstream::start(&pki).await;
    let ws = workspace(&pki);
    api_key(&ws, &upstream.url(), "");
    let sidecar = sidecar::start(&ws);
    let echo = get_echo(&sidecar, "/a").await;
    assert_eq!(header(&echo, "x-api-key"), Some("k3y-value/+="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_query_parameter_replaces_the_apps_own() {
    let pki = Pki::new("upstream");
    let upstream = Upstream::start(&pki).await;
    let ws = workspace(&pki);
    api_key(&ws, &upstream.url(), "      addTo: QueryParameter\n");
    let sidecar = sidecar::start(&ws);
    let echo = get_echo(&sidecar, "/a?X-Api-Key=smuggled&page=2").await;
    assert_eq!(echo["query"], "page=2&X-Api-Key=k3y-value%2F%2B%3D");
    assert!(echo["headers"]["x-api-key"].is_null());
    // Debug logs on: the key in the URL must not reach them.
    let logs = sidecar.logs();
    assert!(
        !logs.contains("k3y-value") && !logs.contains("k3y-value%2F"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_replaces_the_apps_authorization() {
    let pki = Pki::new("upstream");
    let upstream = Upstream::start(&pki).await;
    let ws = workspace(&pki);
    ws.write_secret("payments-token", "token", "static-bearer-123\n");
    ws.write_datasource(&manifest(
        &upstream.url(),
        "  authentication:\n    type: BearerToken\n    bearerToken:\n      tokenSecretRef: { name: payments-token, key: token }\n",
    ));
    let sidecar = sidecar::start(&ws);
    let echo = get_echo_with(&sidecar, "/a", &[("Authorization", "Bearer app-identity")]).await;
    assert_eq!(
        header(&echo, "authorization"),
        Some("Bearer static-bearer-123")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_path_query_and_default_headers_are_combined_with_the_apps() {
    let pki = Pki::new("upstream");
    let upstream = Upstream::start(&pki).await;
    let ws = workspace(&pki);
    ws.write_datasource(&manifest(
        &format!("{}/v2", upstream.url()),
        "  headers:\n    - { name: X-Tenant, value: acme }\n    - { name: X-Env, value: prod }\n  queryParameters:\n    - { name: region, value: eu west }\n",
    ));
    let sidecar = sidecar::start(&ws);
    let response = client()
        .post(sidecar.url("/charges/7?limit=5"))
        .header("x-tenant", "app-tenant")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "must-not-pass")
        .header("proxy-authorization", "Basic eDp5")
        .body("hello")
        .send()
        .await
        .expect("request");
    let echo: serde_json::Value = response.json().await.expect("echo");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/v2/charges/7");
    assert_eq!(echo["query"], "limit=5&region=eu+west");
    assert_eq!(
        header(&echo, "x-tenant"),
        Some("app-tenant"),
        "the app's value wins"
    );
    assert_eq!(header(&echo, "x-env"), Some("prod"));
    assert_eq!(echo["body_len"], 5);
    for hop in ["x-hop", "proxy-authorization", "connection"] {
        assert!(
            echo["headers"][hop].is_null(),
            "{hop} was forwarded: {echo}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_is_the_upstreams_not_the_apps() {
    let pki = Pki::new("upstream");
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let upstream = Upstream::start_speaking(&pki, protocol).await;
        let ws = workspace(&pki);
        ws.write_datasource(&manifest(&upstream.url(), ""));
        let sidecar = sidecar::start(&ws);
        let echo = get_echo(&sidecar, "/a").await;
        let host = header(&echo, "host").map(str::to_owned);
        match protocol {
            Protocol::Http1 => {
                assert_eq!(echo["version"], "HTTP/1.1", "{echo}");
                let upstream_host = format!("127.0.0.1:{}", upstream.port);
                assert_eq!(host.as_deref(), Some(upstream_host.as_str()), "{echo}");
            }
            // The authority travels as :authority, and the app's Host
            // (127.0.0.1:<sidecar port>) must not.
            Protocol::Http2 => {
                assert_eq!(echo["version"], "HTTP/2.0", "ALPN picks HTTP/2: {echo}");
                let sidecar_host = sidecar.addr.to_string();
                assert_ne!(host.as_deref(), Some(sidecar_host.as_str()), "{echo}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_speaking_http2_without_tls_is_served() {
    let pki = Pki::new("upstream");
    let upstream = Upstream::start(&pki).await;
    let ws = workspace(&pki);
    ws.write_datasource(&manifest(
        &upstream.url(),
        "  headers: [ { name: X-Tenant, value: acme } ]\n",
    ));
    let sidecar = sidecar::start(&ws);
    let h2c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let response = h2c
        .get(sidecar.url("/h2?x=1"))
        .send()
        .await
        .expect("h2c request");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let echo: serde_json::Value = response.json().await.expect("echo");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(header(&echo, "x-tenant"), Some("acme"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_of_several_certificates_trusts_each_of_them() {
    let pki = Pki::new("upstream");
    let other = Pki::new("unrelated");
    let upstream = Upstream::start(&pki).await;
    let ws = Workspace::new();
    // The upstream's CA comes second: only reading the whole bundle works.
    ws.write_secret("ca", "ca.crt", &format!("{}{}", other.ca_pem, pki.ca_pem));
    ws.write_datasource(&manifest(&upstream.url(), "").replace(
        "caCertificateSecretRef",
        "trustSystemRoots: false\n    caCertificateSecretRef",
    ));
    let sidecar = sidecar::start(&ws);
    get_echo(&sidecar, "/a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_signed_by_an_unknown_ca_gets_502_saying_so() {
    let pki = Pki::new("upstream");
    let other = Pki::new("unrelated");
    let upstream = Upstream::start(&pki).await;
    let ws = workspace(&other);
    ws.write_datasource(&manifest(&upstream.url(), ""));
    let sidecar = sidecar::start(&ws);
    let response = client()
        .get(sidecar.url("/a"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 502);
    let body: serde_json::Value = response.json().await.expect("json body");
    assert_eq!(body["error"], "upstream_tls_failed", "{body}");
    let reason = body["reason"].as_str().expect("reason");
    assert!(
        reason.contains("UnknownIssuer") && reason.contains("caCertificateSecretRef"),
        "{reason}"
    );
    assert_eq!(
        upstream
            .state
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gets_502_with_a_json_body() {
    let pki = Pki::new("upstream");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let ws = workspace(&pki);
    ws.write_datasource(&manifest(&format!("https://127.0.0.1:{port}"), ""));
    let sidecar = sidecar::start(&ws);
    let response = client()
        .get(sidecar.url("/a"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.expect("json body");
    assert_eq!(body["error"], "upstream_unreachable", "{body}");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("refused")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_gets_504() {
    let pki = Pki::new("upstream");
    let upstream = Upstream::start(&pki).await;
    let ws = workspace(&pki);
    ws.write_datasource(&manifest(&upstream.url(), ""));
    let sidecar = sidecar::start_with(&ws, &["--upstream-timeout", "0.5"]);
    let response = client()
        .get(sidecar.url("/sleep/3000"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 504);
    let body: serde_json::Value = response.json().await.expect("json body");
    assert_eq!(body["error"], "upstream_timeout", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_download_streams_through() {
    let pki = Pki::new("upstream");
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let upstream = Upstream::start_speaking(&pki, protocol).await;
        let ws = workspace(&pki);
        ws.write_datasource(&manifest(&upstream.url(), ""));
        let sidecar = sidecar::start(&ws);
        let size: u64 = 256 * 1024 * 1024;
        let mut response = client()
            .get(sidecar.url(&format!("/bytes/{size}")))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        let mut received = 0u64;
        while let Some(chunk) = response.chunk().await.expect("chunk") {
            received += chunk.len() as u64;
        }
        assert_eq!(received, size, "{protocol:?}");
        let (_, peak_kib) = sidecar.memory_kib();
        assert!(
            peak_kib < 64 * 1024,
            "peak RSS {peak_kib} KiB for a 256 MiB download over {protocol:?}"
        );
    }
}

/// 1 GiB through the proxy: the body streams, and the process's peak
/// resident memory stays where it was before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_streams_without_growing_the_process() {
    let pki = Pki::new("upstream");
    let upstream = Upstream::start(&pki).await;
    let ws = workspace(&pki);
    ws.write_datasource(&manifest(&upstream.url(), ""));
    let sidecar = sidecar::start(&ws);
    get_echo(&sidecar, "/warm-up").await;
    let (_, peak_before) = sidecar.memory_kib();

    let chunk = bytes::Bytes::from(vec![7u8; 256 * 1024]);
    let chunks: u64 = 4096; // 1 GiB
    let stream =
        futures::stream::iter((0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let response = client()
        .put(sidecar.url("/upload"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value = response.json().await.expect("echo");
    assert_eq!(echo["body_len"], 1u64 << 30);
    let (_, peak_after) = sidecar.memory_kib();
    assert!(
        peak_after < peak_before + 32 * 1024,
        "peak RSS grew from {peak_before} KiB to {peak_after} KiB during a 1 GiB upload"
    );
}
