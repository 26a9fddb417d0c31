//! "Try it with no cluster" (README): `scripts/try-it up` against the test
//! bed, the same steps the README shows — the chart installed with Helm,
//! the operator run locally with the chart's ServiceAccount token, an
//! echoing upstream, a datasource, a labelled pod and its injected sidecar
//! started by sidekey-kubelet — then a request from here through the
//! sidecar reaches the upstream with the credential added, which a request
//! straight to the upstream lacks. `scripts/try-it down` cleans up.
//!
//! Needs the bed (`scripts/test`) and the binaries sidekey-sidecar and
//! sidekey-kubelet beside sidekey-operator (`cargo test --workspace
//! --all-targets` builds them).

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::http_get;

struct TryIt {
    dir: tempfile::TempDir,
    env: Vec<(&'static str, String)>,
}

impl TryIt {
    fn script(&self, step: &str) -> std::process::Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/try-it");
        Command::new("bash")
            .arg(&script)
            .arg(step)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap_or_else(|e| panic!("running scripts/try-it {step}: {e}"))
    }

    fn state(&self) -> BTreeMap<String, String> {
        let path = self.dir.path().join("try/env");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("try/logs/{name}.log")))
            .unwrap_or_default()
    }
}

impl Drop for TryIt {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for name in ["operator", "upstream", "sidecar"] {
                eprintln!("---- {name} log ----\n{}", self.log(name));
            }
        }
        let out = self.script("down");
        if !out.status.success() {
            eprintln!(
                "scripts/try-it down failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn port(state: &BTreeMap<String, String>, key: &str) -> SocketAddr {
    let port: u16 = state[key].parse().expect("a port");
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test]
async fn try_it_sends_a_request_from_the_shell_through_the_injected_sidecar() {
    let bins: PathBuf = Path::new(env!("CARGO_BIN_EXE_sidekey-operator"))
        .parent()
        .expect("the binaries' directory")
        .to_owned();
    for bin in ["sidekey-sidecar", "sidekey-kubelet"] {
        assert!(
            bins.join(bin).is_file(),
            "{} is missing: cargo build -p sidekey-sidecar -p sidekey-tests --bins",
            bins.join(bin).display()
        );
    }
    let suffix = format!("{:08x}", rand::random::<u32>());
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = sidekey_tests::kubeconfig_path().display().to_string();
    let try_it = TryIt {
        env: vec![
            (
                "SIDEKEY_TRY_DIR",
                dir.path().join("try").display().to_string(),
            ),
            ("SIDEKEY_TRY_KUBECONFIG", kubeconfig),
            ("SIDEKEY_TRY_NAMESPACE", format!("try-rel-{suffix}")),
            ("SIDEKEY_TRY_APP", format!("try-app-{suffix}")),
            ("SIDEKEY_BIN_DIR", bins.display().to_string()),
        ],
        dir,
    };

    let out = try_it.script("up");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "scripts/try-it up failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = try_it.state();
    let proxy = port(&state, "PROXY_PORT");
    // The script ends by saying what to run.
    assert_eq!(
        stdout.lines().last(),
        Some(format!("curl -s http://{proxy}/hello").as_str()),
        "{stdout}"
    );

    // Through the sidecar: the token and the default header added, the
    // path joined to the datasource's.
    let (status, body) = http_get(proxy, "/hello?x=1")
        .await
        .expect("the sidecar answers");
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(seen["path"], "/v1/hello?x=1", "{seen}");
    assert_eq!(
        seen["headers"]["authorization"], "Bearer try-it-token",
        "{seen}"
    );
    assert_eq!(seen["headers"]["x-tenant"], "try-it", "{seen}");

    // Straight to the upstream: no credential, so the sidecar added it.
    let (status, body) = http_get(port(&state, "UPSTREAM_PORT"), "/v1/hello")
        .await
        .expect("the upstream answers");
    assert_eq!(status, 200, "{body}");
    let direct: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert!(direct["headers"].get("authorization").is_none(), "{direct}");
}
