//! The real `sidekey-sidecar` binary, run on loopback with one or more
//! datasources and secrets written to a temporary directory; its JSON log
//! lines are kept for assertions.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A temporary directory holding `datasource.yaml` and `secrets/<name>/<key>`.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

impl Workspace {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("secrets")).expect("secrets dir");
        Self { dir }
    }

    pub fn datasource_path(&self) -> PathBuf {
        self.dir.path().join("datasource.yaml")
    }

    pub fn secrets_dir(&self) -> PathBuf {
        self.dir.path().join("secrets")
    }

    pub fn write_datasource(&self, yaml: &str) {
        std::fs::write(self.datasource_path(), yaml).expect("write datasource");
    }

    /// Writes another datasource file, `file` in the workspace; its path.
    pub fn write_datasource_file(&self, file: &str, yaml: &str) -> PathBuf {
        let path = self.path(file);
        std::fs::write(&path, yaml).expect("write datasource");
        path
    }

    pub fn write_secret(&self, name: &str, key: &str, value: &str) {
        let dir = self.secrets_dir().join(name);
        std::fs::create_dir_all(&dir).expect("secret dir");
        std::fs::write(dir.join(key), value).expect("write secret");
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }
}

pub struct Sidecar {
    child: Child,
    /// Where the first datasource is served.
    pub addr: SocketAddr,
    /// Where each datasource is served, in `--datasource` order.
    pub addrs: Vec<SocketAddr>,
    pub admin: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a sidecar that would not start said.
#[derive(Debug)]
pub struct StartFailure {
    pub status: Option<std::process::ExitStatus>,
    pub output: String,
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_sidekey-sidecar")
}

/// Starts the binary on 127.0.0.1 with free ports and waits until it
/// listens, or returns what it printed if it exits first.
pub fn try_start(ws: &Workspace, extra: &[&str]) -> Result<Sidecar, StartFailure> {
    try_start_many(ws, &[ws.datasource_path()], extra)
}

/// The same with several datasource files, each served on a port of its own.
pub fn try_start_many(
    ws: &Workspace,
    datasources: &[PathBuf],
    extra: &[&str],
) -> Result<Sidecar, StartFailure> {
    let mut command = Command::new(binary());
    for path in datasources {
        command
            .arg("--datasource")
            .arg(path)
            .args(["--listen", "127.0.0.1:0"]);
    }
    command
        .arg("--secrets-dir")
        .arg(ws.secrets_dir())
        .args([
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--reload-interval",
            "0.3",
            "--worker-threads",
            "2",
        ])
        .args(extra);
    launch(command, datasources.len())
}

/// Runs `command` (the binary with its flags and environment) and waits
/// until it announces `proxies` proxy addresses and its admin address.
pub fn launch(mut command: Command, proxies: usize) -> Result<Sidecar, StartFailure> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sidekey-sidecar");
    let lines = Arc::new(Mutex::new(Vec::new()));
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                lines.lock().expect("lock").push(line);
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (addrs, admin) = {
            let lines = lines.lock().expect("lock");
            (
                find_addresses(&lines, "proxy listening"),
                find_addresses(&lines, "admin listening").first().copied(),
            )
        };
        if addrs.len() == proxies
            && let Some(admin) = admin
        {
            return Ok(Sidecar {
                child,
                addr: addrs[0],
                addrs,
                admin,
                lines,
            });
        }
        if let Ok(Some(status)) = child.try_wait() {
            std::thread::sleep(Duration::from_millis(200));
            let output = lines.lock().expect("lock").join("\n");
            return Err(StartFailure {
                status: Some(status),
                output,
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let output = lines.lock().expect("lock").join("\n");
            return Err(StartFailure {
                status: None,
                output,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn start(ws: &Workspace) -> Sidecar {
    start_with(ws, &[])
}

pub fn start_with(ws: &Workspace, extra: &[&str]) -> Sidecar {
    started(try_start(ws, extra))
}

/// Starts the binary serving every file of `datasources`, in that order.
pub fn start_many(ws: &Workspace, datasources: &[PathBuf]) -> Sidecar {
    started(try_start_many(ws, datasources, &[]))
}

fn started(result: Result<Sidecar, StartFailure>) -> Sidecar {
    match result {
        Ok(s) => s,
        Err(f) => panic!(
            "sidekey-sidecar did not start ({:?}):\n{}",
            f.status, f.output
        ),
    }
}

/// The addresses of the log lines saying `message`, in order.
fn find_addresses(lines: &[String], message: &str) -> Vec<SocketAddr> {
    lines
        .iter()
        .filter_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            if v["message"] != message {
                return None;
            }
            v["address"].as_str()?.parse().ok()
        })
        .collect()
}

impl Sidecar {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A URL of the datasource served `index`-th.
    pub fn url_at(&self, index: usize, path: &str) -> String {
        format!("http://{}{path}", self.addrs[index])
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends it `SIGTERM`, as the kubelet does when the pod stops.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -TERM: {status}");
    }

    /// Waits at most `within` for it to exit; its exit status, or `None`
    /// if it is still running.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything it printed so far.
    pub fn logs(&self) -> String {
        self.lines.lock().expect("lock").join("\n")
    }

    /// The JSON log lines whose message starts with `message`.
    pub fn log_lines(&self, message: &str) -> Vec<serde_json::Value> {
        self.logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
            })
            .collect()
    }

    /// Waits until a log line contains `text`.
    pub async fn wait_for_log(&self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.logs().contains(text) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no log line with {text:?} within {within:?}:\n{}",
            self.logs()
        );
    }

    /// A value from the Prometheus exposition, by its full sample name.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .find_map(|l| {
                l.strip_prefix(sample)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"))
    }

    /// Resident memory of the process now and at its peak, in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

/// A plain HTTP client for talking to the sidecar (no proxy from the
/// environment, no pooling surprises).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

/// Sends GET and parses the upstream's echo.
pub async fn get_echo(sidecar: &Sidecar, path: &str) -> serde_json::Value {
    get_echo_with(sidecar, path, &[]).await
}

/// Sends GET with the app's own `headers` and parses the upstream's echo;
/// anything but 200 fails the test with the body and the sidecar's logs.
pub async fn get_echo_with(
    sidecar: &Sidecar,
    path: &str,
    headers: &[(&str, &str)],
) -> serde_json::Value {
    get_echo_at(sidecar, 0, path, headers).await
}

/// [`get_echo_with`] through the datasource served `index`-th.
pub async fn get_echo_at(
    sidecar: &Sidecar,
    index: usize,
    path: &str,
    headers: &[(&str, &str)],
) -> serde_json::Value {
    let mut request = client().get(sidecar.url_at(index, path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let body = response.text().await.expect("body");
    assert_eq!(status, 200, "GET {path}: {body}\nlogs:\n{}", sidecar.logs());
    serde_json::from_str(&body).expect("echo json")
}

/// GET `path` through the sidecar: the status and the body, whatever they are.
pub async fn get_text(sidecar: &Sidecar, path: &str) -> (u16, String) {
    let response = client()
        .get(sidecar.url(path))
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// The status of the sidecar's `/readyz`.
pub async fn readyz_status(sidecar: &Sidecar) -> u16 {
    let response = client()
        .get(sidecar.admin_url("/readyz"))
        .send()
        .await
        .expect("readyz");
    response.status().as_u16()
}

/// The `Authorization` header a GET of `path` reached the upstream with.
pub async fn authorization_sent(sidecar: &Sidecar, path: &str) -> String {
    let echo = get_echo(sidecar, path).await;
    header(&echo, "authorization")
        .expect("authorization")
        .to_owned()
}

/// The one value of header `name` in an echo.
pub fn header<'a>(echo: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    let values = echo["headers"][name].as_array()?;
    assert_eq!(values.len(), 1, "{name}: {values:?}");
    values[0].as_str()
}

/// Creates `dir/..data -> ..<version>` and `dir/<key> -> ..data/<key>`, the
/// layout kubelet gives a mounted Secret, or swaps `..data` atomically to a
/// new version as kubelet does on update.
pub fn kubelet_write(dir: &Path, version: &str, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).expect("dir");
    let versioned = dir.join(format!("..{version}"));
    std::fs::create_dir(&versioned).expect("version dir");
    for (key, value) in files {
        std::fs::write(versioned.join(key), value).expect("write");
    }
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    for (key, _) in files {
        let link = dir.join(key);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{key}"), &link).expect("key symlink");
        }
    }
}
