//! A real nginx upstream that closes keep-alive connections idle for 1 s
//! (`keepalive_timeout 1s`), as many servers and load balancers do. First
//! one client pausing 1.5 s between requests, so that nginx closes the
//! sidecar's pooled connection every time (its log shows four connections
//! for four requests); then twelve clients whose pauses sweep 0.9-1.1 s, so
//! that some requests meet a connection just as nginx closes it. No request
//! may fail for it (issue 10).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "keepalive-token";

fn nginx_binary() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("nginx is not installed: scripts/test installs it (Debian's nginx-light)")
}

/// nginx in the foreground, one process, serving HTTPS on `port` with the
/// test certificate: 200 with the right bearer token, else 401.
struct Nginx {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    fn start(pki: &Pki) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = |f: &str| dir.path().join(f);
        std::fs::write(path("cert.pem"), &pki.cert_pem).expect("cert");
        std::fs::write(path("key.pem"), &pki.key_pem).expect("key");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let d = dir.path().display();
        let conf = format!(
            r#"daemon off;
master_process off;
pid {d}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 256; }}
http {{
    log_format conn '$connection $uri';
    access_log {d}/access.log conn;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    keepalive_timeout 1s;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            if ($http_authorization != "Bearer {TOKEN}") {{ return 401 '{{"error":"unauthorized"}}'; }}
            return 200 '{{"ok":true}}';
        }}
    }}
}}
"#
        );
        std::fs::write(path("nginx.conf"), conf).expect("conf");
        let child = Command::new(nginx_binary())
            .args(["-p", &d.to_string(), "-e", "stderr", "-c"])
            .arg(path("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start nginx");
        wait_listening(port);
        Self { child, port, dir }
    }
}

impl Nginx {
    /// The nginx connection that served each request whose path starts
    /// with `prefix`, in order.
    fn connections_of(&self, prefix: &str) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        log.lines()
            .filter_map(|line| line.split_once(' '))
            .filter(|(_, uri)| uri.starts_with(prefix))
            .map(|(connection, _)| connection.to_owned())
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn workspace_for(pki: &Pki, url: &str) -> Workspace {
    let ws = workspace(pki);
    ws.write_secret("payments-token", "token", TOKEN);
    ws.write_datasource(&manifest(
        url,
        "  authentication:\n    type: BearerToken\n    bearerToken:\n      tokenSecretRef: { name: payments-token, key: token }\n",
    ));
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_idle_connections_after_1_s_fails_no_request() {
    let pki = Pki::new("upstream");
    let nginx = Nginx::start(&pki);
    let ws = workspace_for(&pki, &format!("https://127.0.0.1:{}", nginx.port));
    let sidecar = Arc::new(sidecar::start(&ws));

    // First, one client alone, pausing 1.5 s: every request finds the
    // connection it used before closed by nginx, and is sent on a new one.
    let http = client();
    for i in 0..4 {
        let response = http
            .get(sidecar.url(&format!("/alone/{i}")))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200, "{}", sidecar.logs());
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let alone = nginx.connections_of("/alone/");
    assert_eq!(alone.len(), 4);
    let distinct: std::collections::BTreeSet<_> = alone.iter().collect();
    assert_eq!(distinct.len(), 4, "nginx kept a connection open: {alone:?}");

    // Then many clients, whose pauses sweep around nginx's second.
    let until = Instant::now() + Duration::from_secs(12);
    let mut clients = Vec::new();
    for i in 0..12u64 {
        let sidecar = sidecar.clone();
        clients.push(tokio::spawn(async move {
            let http = client();
            let mut outcomes = Vec::new();
            let mut step = i;
            while Instant::now() < until {
                // A GET or a POST with a small body, then a pause that
                // sweeps 0.9 to 1.1 s: some requests meet a connection
                // nginx is closing at that moment.
                let request = if step % 2 == 0 {
                    http.get(sidecar.url("/a"))
                } else {
                    http.post(sidecar.url("/b")).body("{\"n\":1}")
                };
                let outcome = match request.send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        (status, r.text().await.unwrap_or_default())
                    }
                    Err(e) => (0, e.to_string()),
                };
                outcomes.push(outcome);
                step = step
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let pause = 900 + (step >> 33) % 201;
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            outcomes
        }));
    }
    let mut total = 0;
    let mut failed = Vec::new();
    for c in clients {
        for (status, body) in c.await.expect("client") {
            total += 1;
            if status != 200 {
                failed.push(format!("{status} {body}"));
            }
        }
    }
    assert!(total >= 100, "only {total} requests");
    assert!(
        failed.is_empty(),
        "{} of {total} requests failed: {failed:?}\n{}",
        failed.len(),
        sidecar.logs()
    );
}
