//! The real OAuth 2.0 authorization server (node-oidc-provider, see
//! tests/oauth-server), started on 127.0.0.1 with HTTPS from a test CA.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

pub struct OAuthServer {
    child: Child,
    pub port: u16,
    events: Arc<Mutex<Vec<serde_json::Value>>>,
    _dir: tempfile::TempDir,
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/oauth-server")
}

impl OAuthServer {
    /// Starts the server with tokens living `ttl_seconds`; HTTPS with `pki`.
    pub fn start(pki: &Pki, ttl_seconds: u32) -> Self {
        Self::start_with(pki, ttl_seconds, &[])
    }

    /// The same, with a refresh token minted for [`USER_CLIENT`].
    pub fn start_with_refresh_token(pki: &Pki, ttl_seconds: u32) -> Self {
        Self::start_with(pki, ttl_seconds, &["--mint-refresh-token", USER_CLIENT])
    }

    fn start_with(pki: &Pki, ttl_seconds: u32, extra: &[&str]) -> Self {
        let dir = server_dir();
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "the OAuth 2.0 test server is not installed: run `npm ci --prefix tests/oauth-server` \
             from the repository root"
        );
        let tmp = tempfile::tempdir().expect("tempdir");
        let clients = serde_json::json!([
            { "client_id": BODY_CLIENT, "client_secret": BODY_SECRET,
              "token_endpoint_auth_method": "client_secret_post" },
            { "client_id": BASIC_CLIENT, "client_secret": BASIC_SECRET,
              "token_endpoint_auth_method": "client_secret_basic" },
            { "client_id": USER_CLIENT, "client_secret": USER_SECRET,
              "token_endpoint_auth_method": "client_secret_post",
              "grant_types": ["authorization_code", "refresh_token"],
              "redirect_uris": ["https://app.sidekey.test/callback"],
              "response_types": ["code"] },
        ]);
        let write = |name: &str, text: &str| {
            let path = tmp.path().join(name);
            std::fs::write(&path, text).expect("write");
            path
        };
        let clients = write("clients.json", &clients.to_string());
        let cert = write("cert.pem", &pki.cert_pem);
        let key = write("key.pem", &pki.key_pem);
        let mut child = Command::new("node")
            .arg(dir.join("server.mjs"))
            .arg("--clients")
            .arg(&clients)
            .arg("--ttl")
            .arg(ttl_seconds.to_string())
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn node (is Node.js 20+ installed?)");
        let events: Arc<Mutex<Vec<serde_json::Value>>> = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let seen = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    seen.lock().expect("lock").push(v);
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            let port = events
                .lock()
                .expect("lock")
                .iter()
                .find_map(|e| e["port"].as_u64());
            if let Some(p) = port {
                break u16::try_from(p).expect("port");
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the OAuth test server exited: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the OAuth test server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Self {
            child,
            port,
            events,
            _dir: tmp,
        }
    }

    /// The refresh token minted at start.
    pub fn refresh_token(&self) -> String {
        self.events
            .lock()
            .expect("lock")
            .iter()
            .find_map(|e| e["refresh_token"].as_str().map(str::to_owned))
            .expect("no refresh token was minted")
    }

    pub fn token_url(&self) -> String {
        format!("https://127.0.0.1:{}/token", self.port)
    }

    /// Token requests it answered, as its log lines.
    pub fn grants(&self) -> Vec<serde_json::Value> {
        self.events
            .lock()
            .expect("lock")
            .iter()
            .filter(|e| e["event"] == "grant.success")
            .cloned()
            .collect()
    }

    pub fn errors(&self) -> Vec<serde_json::Value> {
        self.events
            .lock()
            .expect("lock")
            .iter()
            .filter(|e| e["event"] == "grant.error")
            .cloned()
            .collect()
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
