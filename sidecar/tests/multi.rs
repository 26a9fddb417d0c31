//! One sidecar process serving several datasources, each on its own
//! loopback port, as the admission webhook injects it: the right
//! credentials reach each upstream, each datasource reloads and gets ready
//! on its own, metrics carry the datasource, and the flags that cannot work
//! are refused at startup.

mod common;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::oauth::{self, BODY_CLIENT, BODY_SECRET};
use common::sidecar::{Sidecar, kubelet_write};
use common::*;
use hmac::{Hmac, Mac};

const PAYMENTS_BASIC: &str = "  authentication:\n    type: Basic\n    basic:\n      username: shop\n      passwordSecretRef: { name: payments-basic, key: password }\n";
const PAYMENTS_PASSWORD: &str = "payments-p4ss";
/// 32 characters: HS256.
const CRM_SIGNING_KEY: &str = "crm-signing-key-0123456789abcdef";

/// ApiKey in a header, and a signature header.
fn crm_spec() -> String {
    "  signature:\n    secretRef: { name: crm-signing, key: key }\n  authentication:\n    type: ApiKey\n    apiKey:\n      key: X-Api-Key\n      valueSecretRef: { name: crm-key, key: key }\n".to_owned()
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// Two upstreams, each with a CA of its own: payments (Basic) and crm
/// (ApiKey and signature), both in one workspace.
struct Two {
    payments: Upstream,
    crm: Upstream,
    ws: Workspace,
    crm_file: PathBuf,
}

impl Two {
    async fn new() -> Self {
        let (payments_pki, crm_pki) = (Pki::new("payments"), Pki::new("crm"));
        let payments = Upstream::start(&payments_pki).await;
        let crm = Upstream::start(&crm_pki).await;
        let ws = workspace(&payments_pki);
        ws.write_secret("crm-ca", "ca.crt", &crm_pki.ca_pem);
        ws.write_secret("payments-basic", "password", PAYMENTS_PASSWORD);
        ws.write_secret("crm-signing", "key", CRM_SIGNING_KEY);
        kubelet_write(
            &ws.secrets_dir().join("crm-key"),
            "2024_01_01",
            &[("key", "crm-key-1")],
        );
        ws.write_datasource(&manifest(&payments.url(), PAYMENTS_BASIC));
        let crm_file = ws.write_datasource_file(
            "crm.yaml",
            &named_manifest("crm", "crm-ca", &crm.url(), &crm_spec()),
        );
        Self {
            payments,
            crm,
            ws,
            crm_file,
        }
    }

    fn files(&self) -> Vec<PathBuf> {
        vec![self.ws.datasource_path(), self.crm_file.clone()]
    }

    fn start(&self) -> Sidecar {
        sidecar::start_many(&self.ws, &self.files())
    }
}

/// The HS256 signature header of `echo`, checked with `key`; its claims.
fn verified_claims(echo: &serde_json::Value, key: &str) -> serde_json::Value {
    let jwt = header(echo, "x-appsmith-signature").expect("signature header");
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");
    let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).expect("base64url");
    let head: serde_json::Value = serde_json::from_slice(&decode(parts[0])).expect("header");
    assert_eq!(head["alg"], "HS256");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("key");
    mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
    assert_eq!(
        decode(parts[2]),
        mac.finalize().into_bytes().to_vec(),
        "not signed with {key}"
    );
    serde_json::from_slice(&decode(parts[1])).expect("claims")
}

async fn readyz(sidecar: &Sidecar) -> (u16, String) {
    let response = client()
        .get(sidecar.admin_url("/readyz"))
        .send()
        .await
        .expect("readyz");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_datasource_gets_its_own_credentials_on_its_own_port() {
    let two = Two::new().await;
    let sidecar = two.start();
    assert_eq!(sidecar.addrs.len(), 2);
    assert_ne!(sidecar.addrs[0], sidecar.addrs[1]);

    let payments = get_echo_at(&sidecar, 0, "/charges", &[("x-api-key", "the-apps-own")]).await;
    assert_eq!(
        header(&payments, "authorization"),
        Some(basic("shop", PAYMENTS_PASSWORD).as_str())
    );
    // Nothing of crm's reaches payments.
    assert_eq!(header(&payments, "x-api-key"), Some("the-apps-own"));
    assert!(payments["headers"].get("x-appsmith-signature").is_none());
    assert_eq!(payments["path"], "/charges");

    let crm = get_echo_at(&sidecar, 1, "/contacts", &[("authorization", "Bearer app")]).await;
    assert_eq!(header(&crm, "x-api-key"), Some("crm-key-1"));
    assert_eq!(header(&crm, "authorization"), Some("Bearer app"));
    assert_eq!(verified_claims(&crm, CRM_SIGNING_KEY)["iss"], "Appsmith");
    assert_eq!(crm["path"], "/contacts");

    // Each port went to its own upstream, over TLS trusting its own CA.
    assert_eq!(two.payments.state.requests.load(Ordering::SeqCst), 1);
    assert_eq!(two.crm.state.requests.load(Ordering::SeqCst), 1);
    let status = client()
        .get(sidecar.url_at(1, "/status/404"))
        .send()
        .await
        .expect("request")
        .status();
    assert_eq!(status, 404);

    let series = [
        (
            "sidekey_requests_total{datasource=\"payments\",class=\"2xx\"}",
            1.0,
        ),
        (
            "sidekey_requests_total{datasource=\"payments\",class=\"4xx\"}",
            0.0,
        ),
        (
            "sidekey_requests_total{datasource=\"crm\",class=\"2xx\"}",
            1.0,
        ),
        (
            "sidekey_requests_total{datasource=\"crm\",class=\"4xx\"}",
            1.0,
        ),
        (
            "sidekey_upstream_latency_seconds_count{datasource=\"crm\"}",
            2.0,
        ),
        ("sidekey_config_reloads_total{datasource=\"payments\"}", 0.0),
        ("sidekey_token_expiry_seconds{datasource=\"crm\"}", 0.0),
    ];
    for (sample, value) in series {
        assert_eq!(sidecar.metric(sample).await, value, "{sample}");
    }
    let listening = sidecar.log_lines("proxy listening");
    let named: Vec<_> = listening.iter().map(|l| &l["datasource"]).collect();
    assert_eq!(named, ["payments", "crm"], "{listening:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datasource_reloads_alone_and_a_broken_change_stays_its_own() {
    let two = Two::new().await;
    let sidecar = two.start();
    let payments_credential = basic("shop", PAYMENTS_PASSWORD);
    let crm_key = |echo: &serde_json::Value| header(echo, "x-api-key").map(str::to_owned);
    assert_eq!(
        crm_key(&get_echo_at(&sidecar, 1, "/a", &[]).await).as_deref(),
        Some("crm-key-1")
    );

    kubelet_write(
        &two.ws.secrets_dir().join("crm-key"),
        "2024_01_02",
        &[("key", "crm-key-2")],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Payments serves throughout, with its credential unchanged.
        let payments = get_echo_at(&sidecar, 0, "/a", &[]).await;
        assert_eq!(
            header(&payments, "authorization"),
            Some(payments_credential.as_str())
        );
        let crm = get_echo_at(&sidecar, 1, "/a", &[]).await;
        if crm_key(&crm).as_deref() == Some("crm-key-2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "crm not reloaded:\n{}",
            sidecar.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reloaded = sidecar.log_lines("configuration reloaded");
    assert_eq!(reloaded.len(), 1, "{reloaded:?}");
    assert_eq!(reloaded[0]["datasource"], "crm");
    assert_eq!(
        sidecar
            .metric("sidekey_config_reloads_total{datasource=\"crm\"}")
            .await,
        1.0
    );
    assert_eq!(
        sidecar
            .metric("sidekey_config_reloads_total{datasource=\"payments\"}")
            .await,
        0.0
    );

    // A broken crm file: crm keeps its last good configuration, payments
    // never notices.
    std::fs::write(
        &two.crm_file,
        named_manifest("crm", "crm-ca", "ftp://127.0.0.1/nope", &crm_spec()),
    )
    .expect("write");
    sidecar
        .wait_for_log("configuration change refused", Duration::from_secs(10))
        .await;
    let refused = sidecar.log_lines("configuration change refused");
    assert_eq!(refused[0]["datasource"], "crm", "{refused:?}");
    assert_eq!(
        crm_key(&get_echo_at(&sidecar, 1, "/a", &[]).await).as_deref(),
        Some("crm-key-2")
    );
    let payments = get_echo_at(&sidecar, 0, "/a", &[]).await;
    assert_eq!(
        header(&payments, "authorization"),
        Some(payments_credential.as_str())
    );
    assert_eq!(
        sidecar
            .metric("sidekey_config_reload_failures_total{datasource=\"crm\"}")
            .await,
        1.0
    );
    assert_eq!(
        sidecar
            .metric("sidekey_config_reload_failures_total{datasource=\"payments\"}")
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_every_datasource_and_names_the_one_not_ready() {
    let pki = Pki::new("test");
    let upstream = Upstream::start(&pki).await;
    let server = oauth::start(&pki, 300).await;
    let ws = workspace(&pki);
    ws.write_secret("payments-basic", "password", PAYMENTS_PASSWORD);
    ws.write_datasource(&manifest(&upstream.url(), PAYMENTS_BASIC));
    // The token endpoint refuses this secret until it is corrected on disk.
    ws.write_secret("crm-oauth", "client-secret", "not-the-client-secret");
    let crm_file = ws.write_datasource_file(
        "crm.yaml",
        &named_manifest(
            "crm",
            "ca",
            &upstream.url(),
            &format!(
                "  authentication:\n    type: OAuth2\n    oauth2:\n      accessTokenUrl: {}\n      clientId: {BODY_CLIENT}\n      clientSecretRef: {{ name: crm-oauth, key: client-secret }}\n",
                server.token_url()
            ),
        ),
    );
    let sidecar = sidecar::start_many(&ws, &[ws.datasource_path(), crm_file]);

    // Not ready, naming crm and the token endpoint's answer, not payments.
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (status, body) = readyz(&sidecar).await;
        assert_eq!(status, 503, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).expect("json");
        let reason = body["datasources"][0]["reason"].as_str().unwrap_or("");
        if reason.contains("invalid_client") {
            break body;
        }
        assert!(Instant::now() < deadline, "{body}\n{}", sidecar.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["error"], "not_ready");
    let waiting = body["datasources"].as_array().expect("datasources");
    assert_eq!(waiting.len(), 1, "{body}");
    assert_eq!(waiting[0]["name"], "crm");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("crm") && !r.contains("payments")),
        "{body}"
    );
    // Meanwhile payments serves and crm answers why it cannot.
    let payments = get_echo_at(&sidecar, 0, "/a", &[]).await;
    assert_eq!(
        header(&payments, "authorization"),
        Some(basic("shop", PAYMENTS_PASSWORD).as_str())
    );
    let refused = client()
        .get(sidecar.url_at(1, "/a"))
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), 503);

    ws.write_secret("crm-oauth", "client-secret", BODY_SECRET);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = readyz(&sidecar).await;
        if status == 200 {
            assert_eq!(body, "ready\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never ready: {body}\n{}",
            sidecar.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let crm = get_echo_at(&sidecar, 1, "/a", &[]).await;
    let authorization = header(&crm, "authorization").expect("authorization");
    assert_eq!(oauth::claims(authorization)["client_id"], BODY_CLIENT);

    let expiry = sidecar
        .metric("sidekey_token_expiry_seconds{datasource=\"crm\"}")
        .await;
    assert!(
        expiry > 200.0 && expiry <= 300.0,
        "crm token expires in {expiry} s"
    );
    for (sample, check) in [
        ("sidekey_token_expiry_seconds{datasource=\"payments\"}", 0.0),
        ("sidekey_token_fetches_total{datasource=\"payments\"}", 0.0),
        (
            "sidekey_token_fetch_failures_total{datasource=\"payments\"}",
            0.0,
        ),
    ] {
        assert_eq!(sidecar.metric(sample).await, check, "{sample}");
    }
    assert!(
        sidecar
            .metric("sidekey_token_fetch_failures_total{datasource=\"crm\"}")
            .await
            >= 1.0
    );
    let failed = sidecar.log_lines("token request failed");
    assert!(
        !failed.is_empty() && failed.iter().all(|l| l["datasource"] == "crm"),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_reports_each_datasources_real_address_in_order() {
    let two = Two::new().await;
    let (secrets, payments_file, crm_file) = (
        two.ws.secrets_dir().display().to_string(),
        two.ws.datasource_path().display().to_string(),
        two.crm_file.display().to_string(),
    );
    let options = <sidekey_sidecar::Options as clap::Parser>::try_parse_from([
        "sidekey-sidecar",
        "--secrets-dir",
        &secrets,
        "--datasource",
        &payments_file,
        "--listen",
        "127.0.0.1:0",
        "--datasource",
        &crm_file,
        "--listen",
        "127.0.0.1:0",
    ])
    .expect("options");
    let running = sidekey_sidecar::start(&options).await.expect("start");
    let addrs = running.proxy_addrs();
    assert_eq!(addrs.len(), 2);
    assert_eq!(running.proxy_addr(), addrs[0]);
    assert!(addrs.iter().all(|a| a.port() != 0), "{addrs:?}");
    assert_ne!(addrs[0], addrs[1]);
    assert_eq!(running.admin_addr(), None);

    let echo = |addr: std::net::SocketAddr| async move {
        let response = client()
            .get(format!("http://{addr}/a"))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        response.json::<serde_json::Value>().await.expect("json")
    };
    let payments = echo(addrs[0]).await;
    assert_eq!(
        header(&payments, "authorization"),
        Some(basic("shop", PAYMENTS_PASSWORD).as_str())
    );
    let crm = echo(addrs[1]).await;
    assert_eq!(header(&crm, "x-api-key"), Some("crm-key-1"));
    running.shutdown().await;
    assert!(
        client()
            .get(format!("http://{}/a", addrs[1]))
            .send()
            .await
            .is_err(),
        "still serving after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_datasource_from_the_environment_still_starts() {
    let pki = Pki::new("upstream");
    let upstream = Upstream::start(&pki).await;
    let ws = workspace(&pki);
    ws.write_secret("payments-basic", "password", PAYMENTS_PASSWORD);
    ws.write_datasource(&manifest(&upstream.url(), PAYMENTS_BASIC));
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sidekey-sidecar"));
    command
        .env("SIDEKEY_DATASOURCE", ws.datasource_path())
        .env("SIDEKEY_SECRETS_DIR", ws.secrets_dir())
        .env("SIDEKEY_LISTEN", "127.0.0.1:0")
        .env("SIDEKEY_ADMIN_LISTEN", "127.0.0.1:0")
        .env("SIDEKEY_LOG_FORMAT", "json");
    let sidecar = match sidecar::launch(command, 1) {
        Ok(s) => s,
        Err(f) => panic!("did not start ({:?}):\n{}", f.status, f.output),
    };
    let echo = get_echo(&sidecar, "/a").await;
    assert_eq!(
        header(&echo, "authorization"),
        Some(basic("shop", PAYMENTS_PASSWORD).as_str())
    );
}

/// Runs the binary with `args` and expects it to refuse to start with a
/// message containing each of `expected`.
fn assert_refused(args: &[&str], expected: &[&str]) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sidekey-sidecar"))
        .args(args)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started:\n{stderr}");
    for text in expected {
        assert!(stderr.contains(text), "{text:?} not in:\n{stderr}");
    }
}

/// A datasource file named `name` without secrets or TLS settings; its path.
fn plain(ws: &Workspace, file: &str, name: &str) -> String {
    let yaml = format!(
        "kind: ApiDatasource\nmetadata: {{name: {name}}}\nspec:\n  url: https://127.0.0.1:9\n"
    );
    ws.write_datasource_file(file, &yaml).display().to_string()
}

#[test]
fn a_listen_count_that_does_not_match_the_datasources_is_refused() {
    let ws = Workspace::new();
    let (a, b) = (plain(&ws, "a.yaml", "a"), plain(&ws, "b.yaml", "b"));
    let secrets = ws.secrets_dir().display().to_string();
    assert_refused(
        &[
            "--secrets-dir",
            &secrets,
            "--datasource",
            &a,
            "--datasource",
            &b,
            "--listen",
            "127.0.0.1:0",
        ],
        &["2 --datasource but 1 --listen"],
    );
}

#[test]
fn one_listen_address_for_two_datasources_is_refused() {
    let ws = Workspace::new();
    let (a, b) = (plain(&ws, "a.yaml", "a"), plain(&ws, "b.yaml", "b"));
    let secrets = ws.secrets_dir().display().to_string();
    assert_refused(
        &[
            "--secrets-dir",
            &secrets,
            "--datasource",
            &a,
            "--listen",
            "127.0.0.1:15999",
            "--datasource",
            &b,
            "--listen",
            "127.0.0.1:15999",
        ],
        &["--listen 127.0.0.1:15999 is given to two datasources"],
    );
}

#[test]
fn two_files_naming_the_same_datasource_are_refused() {
    let ws = Workspace::new();
    let a = plain(&ws, "a.yaml", "payments");
    let b = plain(&ws, "b.yaml", "payments");
    let secrets = ws.secrets_dir().display().to_string();
    assert_refused(
        &[
            "--secrets-dir",
            &secrets,
            "--datasource",
            &a,
            "--listen",
            "127.0.0.1:0",
            "--datasource",
            &b,
            "--listen",
            "127.0.0.1:0",
        ],
        &["are both named \"payments\"", a.as_str(), b.as_str()],
    );
}
