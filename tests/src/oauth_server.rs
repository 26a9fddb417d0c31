//! The real OAuth 2.0 / OpenID Connect provider of the tests:
//! node-oidc-provider, run by `tests/oauth-server/server.mjs` (its header
//! comment documents every flag), on 127.0.0.1 over HTTPS with a
//! certificate from a test CA made for each server, or the one a test
//! gives ([`Config::tls`]).
//!
//! Its stdout is one JSON line per event: `{"port": N}` once it listens,
//! `{"refresh_token": ...}` for `--mint-refresh-token`, and one
//! `{"event": "grant.success" | "grant.error", ...}` per token request.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::{Value, json};

/// How the provider is started.
#[derive(Debug, Clone)]
pub struct Config {
    /// Its clients (`client_id`, `client_secret`, `token_endpoint_auth_method`,
    /// optionally `grant_types`, `redirect_uris`, `response_types`); see
    /// [`code_client`] for a client of the authorization-code grant.
    pub clients: Vec<Value>,
    /// Lifetime of access tokens (`--ttl`).
    pub ttl_seconds: u32,
    /// The login and consent pages a browser goes through, PKCE required
    /// (`--interactive`).
    pub interactive: bool,
    /// Records a grant for this client at start and prints its refresh
    /// token (`--mint-refresh-token`): see [`OAuthServer::minted_refresh_token`].
    pub mint_refresh_token: Option<String>,
    /// The certificate it serves; `None`: one from a test CA made for this
    /// server.
    pub tls: Option<Tls>,
}

/// An HTTPS identity, all PEM: a certificate for 127.0.0.1 (and
/// localhost), its key, and the CA that signed it.
#[derive(Debug, Clone)]
pub struct Tls {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl Tls {
    /// A new test CA and a certificate it signs for 127.0.0.1 and localhost.
    pub fn generate() -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "sidekey OAuth provider test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let key = KeyPair::generate().expect("server key");
        let cert = CertificateParams::new(names)
            .expect("server params")
            .signed_by(&key, &ca)
            .expect("server certificate");
        Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: ca.pem(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            clients: Vec::new(),
            ttl_seconds: 300,
            interactive: false,
            mint_refresh_token: None,
            tls: None,
        }
    }
}

/// A confidential client of the authorization-code grant with refresh
/// tokens, authenticating with `client_secret_post`, allowed to redirect
/// only to `redirect_uri`.
pub fn code_client(client_id: &str, client_secret: &str, redirect_uri: &str) -> Value {
    json!({
        "client_id": client_id,
        "client_secret": client_secret,
        "token_endpoint_auth_method": "client_secret_post",
        "grant_types": ["authorization_code", "refresh_token"],
        "redirect_uris": [redirect_uri],
        "response_types": ["code"],
    })
}

/// The running provider; dropping it kills the process.
pub struct OAuthServer {
    child: Child,
    port: u16,
    ca_pem: String,
    events: Arc<Mutex<Vec<Value>>>,
    _dir: tempfile::TempDir,
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tests/oauth-server`, where `server.mjs` and its `node_modules` are.
fn server_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oauth-server")
}

/// Collects the JSON lines of `out` into `events` until the process ends.
fn collect_events(out: impl Read + Send + 'static, events: Arc<Mutex<Vec<Value>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                events.lock().expect("events lock").push(v);
            }
        }
    });
}

impl OAuthServer {
    /// Starts the provider and waits until it listens (at most 30 s).
    /// Panics, saying how to install it, when `node_modules` is missing.
    pub async fn start(config: Config) -> Self {
        let dir = server_dir();
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "the OAuth 2.0 test provider is not installed: run `npm ci --prefix tests/oauth-server` \
             from the repository root ({} has no node_modules/oidc-provider)",
            dir.display()
        );
        let tmp = tempfile::tempdir().expect("tempdir for the OAuth provider");
        let tls = config.tls.unwrap_or_else(Tls::generate);
        let write = |name: &str, text: &str| {
            let path = tmp.path().join(name);
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            path
        };
        let clients = write("clients.json", &Value::from(config.clients).to_string());
        let cert = write("cert.pem", &tls.cert_pem);
        let key = write("key.pem", &tls.key_pem);

        let mut command = Command::new("node");
        command
            .arg(dir.join("server.mjs"))
            .arg("--clients")
            .arg(&clients)
            .arg("--ttl")
            .arg(config.ttl_seconds.to_string())
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key);
        if config.interactive {
            command.arg("--interactive");
        }
        if let Some(client_id) = &config.mint_refresh_token {
            command.arg("--mint-refresh-token").arg(client_id);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting `node` (is Node.js 20+ installed?): {e}"));

        let events = Arc::new(Mutex::new(Vec::new()));
        collect_events(child.stdout.take().expect("stdout"), events.clone());
        // Its stderr, kept to explain a start that fails.
        let mut stderr = child.stderr.take().expect("stderr");
        let log = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });

        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let port = loop {
            let port = events
                .lock()
                .expect("events lock")
                .iter()
                .find_map(|e: &Value| e["port"].as_u64());
            if let Some(port) = port {
                break u16::try_from(port).expect("port");
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = log.join().unwrap_or_default();
                panic!("the OAuth test provider exited ({status}):\n{log}");
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let log = log.join().unwrap_or_default();
                panic!("the OAuth test provider did not listen within 30 s:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Self {
            child,
            port,
            ca_pem: tls.ca_pem,
            events,
            _dir: tmp,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `https://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.base_url())
    }

    /// The authorization endpoint.
    pub fn authorization_url(&self) -> String {
        format!("{}/auth", self.base_url())
    }

    /// The token revocation endpoint (RFC 7009; oidc-provider's default route).
    pub fn revocation_url(&self) -> String {
        format!("{}/token/revocation", self.base_url())
    }

    /// The PEM of the CA that signed its certificate: what a datasource's
    /// `tls.caCertificateSecretRef` and a [`crate::browser::Browser`] trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// An HTTP client that trusts [`Self::ca_pem`] only.
    pub fn http_client(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("CA PEM");
        reqwest::Client::builder()
            .tls_certs_only([ca])
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client")
    }

    /// Every JSON line it printed so far. A line may be read a moment after
    /// the answer it logs reached the client: wait for what you expect
    /// (e.g. with [`crate::wait_for`]) rather than read once.
    pub fn events(&self) -> Vec<Value> {
        self.events.lock().expect("events lock").clone()
    }

    fn events_named(&self, name: &str) -> Vec<Value> {
        self.events
            .lock()
            .expect("events lock")
            .iter()
            .filter(|e| e["event"] == name)
            .cloned()
            .collect()
    }

    /// Token requests it granted so far (`grant_type`, `client_id`,
    /// `auth_method`, ...); see [`Self::events`] on timing.
    pub fn grants(&self) -> Vec<Value> {
        self.events_named("grant.success")
    }

    /// Token requests it refused so far (`error`, `description`,
    /// `client_id`); see [`Self::events`] on timing.
    pub fn errors(&self) -> Vec<Value> {
        self.events_named("grant.error")
    }

    /// The refresh token [`Config::mint_refresh_token`] minted at start.
    pub fn minted_refresh_token(&self) -> String {
        self.events
            .lock()
            .expect("events lock")
            .iter()
            .find_map(|e| e["refresh_token"].as_str().map(str::to_owned))
            .expect("no refresh token was minted: set Config::mint_refresh_token")
    }

    /// Revokes a refresh token (and so its grant), authenticating as the
    /// client with `client_secret_post`. Panics unless the provider answers 200.
    pub async fn revoke(&self, refresh_token: &str, client_id: &str, client_secret: &str) {
        let url = self.revocation_url();
        let response = self
            .http_client()
            .post(&url)
            .form(&[
                ("token", refresh_token),
                ("token_type_hint", "refresh_token"),
                ("client_id", client_id),
                ("client_secret", client_secret),
            ])
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "POST {url}: {status}: {body}");
    }
}
