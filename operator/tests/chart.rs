//! The Helm chart `charts/sidekey`: `helm lint` and `helm template` for the
//! default values and each certificate mode and option, the rendered
//! manifests through `kubernetes-validate --strict` and `kubectl apply
//! --dry-run=server` against the test bed, bad values refused by `helm
//! install` naming the value, the chart's CRD the same as `crds/`, and the
//! chart installed into the bed: the real operator binary, run here with
//! the flags of the chart's Deployment and the token of the chart's
//! ServiceAccount (so with exactly the chart's RBAC), reconciles a
//! datasource, injects a labelled pod through the webhook configuration the
//! chart made, and serves the authorization endpoint; `helm upgrade` with
//! changed values, `helm uninstall` leaving only the CRD and the
//! datasources; and each RBAC rule shown needed by removing it.
//!
//! The bed has no kubelet, so the Deployment's pods never run: the test
//! plays them, with the listen addresses moved to free ports of 127.0.0.1,
//! and the chart's `webhook.url` (for development outside a cluster) lets
//! the API server reach this process instead of the Service.
//!
//! helm, kubectl and kubernetes-validate come from `scripts/helm-tools`
//! (installed once into /var/cache/sidekey-tools), or from the directory
//! SIDEKEY_TOOLS_BIN names. Needs the test bed: run with `scripts/test`, or
//! set SIDEKEY_TEST_KUBECONFIG (see `scripts/kube-testbed.sh`). The chart
//! is installed with `watchNamespace`, so its webhook and operator see only
//! this test's namespace and leave the tests running beside it alone.

mod rbac_recorder;
mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Pod, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use kube::{Api, Client};
use rbac_recorder::{Access, Recorder};
use serde_json::{Value, json};
use sidekey_crds::names;
use sidekey_tests::kubelet::sidecar_of;
use support::{WAIT, capture_output, free_ports, http_get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

const RELEASE: &str = "sidekey";
/// The Deployment, ServiceAccount, Role and Lease of release `sidekey`.
const OPERATOR: &str = "sidekey-operator";
/// The webhook's certificate Secret of release `sidekey`.
const TLS_SECRET: &str = "sidekey-webhook-tls";
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the operator crate sits in the workspace")
        .to_path_buf()
}

fn chart_dir() -> String {
    repo_root().join("charts/sidekey").display().to_string()
}

// ---------------------------------------------------------------------------
// The tools.

/// The directory holding helm, kubectl and kubernetes-validate: installed
/// once per test process (scripts/helm-tools does nothing when they are
/// there already).
fn tools() -> &'static Path {
    static TOOLS: OnceLock<PathBuf> = OnceLock::new();
    TOOLS.get_or_init(|| {
        if let Some(dir) = std::env::var_os("SIDEKEY_TOOLS_BIN") {
            return PathBuf::from(dir);
        }
        let script = repo_root().join("scripts/helm-tools");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(out.status.success(), "{} failed", script.display());
        let text = String::from_utf8_lossy(&out.stdout);
        let dir = PathBuf::from(text.lines().last().unwrap_or_default().trim());
        for tool in ["helm", "kubectl", "kubernetes-validate"] {
            assert!(
                dir.join(tool).exists(),
                "scripts/helm-tools printed {}, which holds no {tool}",
                dir.display()
            );
        }
        dir
    })
}

/// Helm's own state (repositories, cache) in a directory of this process,
/// not the user's home.
fn helm_home() -> &'static Path {
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    HOME.get_or_init(|| tempfile::tempdir().expect("tempdir"))
        .path()
}

/// What a tool run printed, and whether it succeeded.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
    shown: String,
}

impl Run {
    /// Panics with the command and its output unless it succeeded.
    fn expect_ok(self) -> Self {
        assert!(
            self.ok,
            "{} failed:\n{}\n{}",
            self.shown, self.stdout, self.stderr
        );
        self
    }
}

/// Runs `tool` from the tools directory, against the bed when
/// SIDEKEY_TEST_KUBECONFIG is set, with `stdin` as its input.
async fn tool(name: &str, args: &[String], stdin: Option<&str>) -> Run {
    let shown = format!("{name} {}", args.join(" "));
    let mut cmd = Command::new(tools().join(name));
    cmd.args(args)
        .env("HELM_CACHE_HOME", helm_home().join("cache"))
        .env("HELM_CONFIG_HOME", helm_home().join("config"))
        .env("HELM_DATA_HOME", helm_home().join("data"))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match std::env::var_os(sidekey_tests::KUBECONFIG_ENV) {
        Some(path) => cmd.env("KUBECONFIG", path),
        // Nothing here may reach a cluster by accident.
        None => cmd.env("KUBECONFIG", "/dev/null"),
    };
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {shown}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("writing to {shown}: {e}"));
    }
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{shown} did not finish within 120 s"))
        .unwrap_or_else(|e| panic!("waiting for {shown}: {e}"));
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        shown,
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// `--set a=b` for each of `sets`.
fn set_flags(sets: &[String]) -> Vec<String> {
    sets.iter()
        .flat_map(|s| ["--set".to_owned(), s.clone()])
        .collect()
}

/// `helm template` of release `sidekey` in `namespace` for Kubernetes
/// `kube_version`.
async fn render(namespace: &str, kube_version: &str, sets: &[String]) -> String {
    let mut args = strings(&["template", RELEASE]);
    args.push(chart_dir());
    args.extend(strings(&[
        "--namespace",
        namespace,
        "--kube-version",
        kube_version,
    ]));
    args.extend(set_flags(sets));
    tool("helm", &args, None).await.expect_ok().stdout
}

/// The objects of a multi-document manifest.
fn documents(manifest: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(manifest)
        .unwrap_or_else(|e| panic!("rendered manifest: {e}\n{manifest}"));
    docs.into_iter().filter(Value::is_object).collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn only<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    match find(docs, kind)[..] {
        [one] => one,
        ref many => panic!("{} objects of kind {kind}, expected one", many.len()),
    }
}

/// The operator container's arguments in a rendered manifest.
fn operator_args(docs: &[Value]) -> Vec<String> {
    only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("the operator container has args")
        .iter()
        .map(|a| a.as_str().unwrap_or_default().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------
// The chart as files.

#[test]
fn the_charts_crd_is_the_crd_of_crds() {
    let ours = std::fs::read(repo_root().join("crds/apidatasource.yaml")).expect("crds/");
    let charts =
        std::fs::read(repo_root().join("charts/sidekey/crds/apidatasource.yaml")).expect("chart");
    assert!(
        ours == charts,
        "charts/sidekey/crds/apidatasource.yaml differs from crds/apidatasource.yaml: \
         cp crds/apidatasource.yaml charts/sidekey/crds/"
    );
}

/// Every value of values.yaml has a row in the chart's README (its own, or
/// one of a map it sits in, like `resources`), and every row is a value.
#[test]
fn every_value_is_documented_in_the_charts_readme() {
    fn leaves(prefix: &str, value: &Value, out: &mut Vec<String>) {
        match value.as_object() {
            Some(map) if !map.is_empty() => {
                for (key, inner) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    leaves(&path, inner, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let values: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo_root().join("charts/sidekey/values.yaml"))
            .expect("values.yaml"),
    )
    .expect("values.yaml parses");
    let mut paths = Vec::new();
    leaves("", &values, &mut paths);
    let readme =
        std::fs::read_to_string(repo_root().join("charts/sidekey/README.md")).expect("README");
    let rows: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(name, _)| name.to_owned()))
        .collect();
    for path in &paths {
        let mut documented = false;
        let mut at = path.as_str();
        loop {
            documented |= rows.contains(at);
            match at.rsplit_once('.') {
                Some((parent, _)) => at = parent,
                None => break,
            }
        }
        assert!(
            documented,
            "value {path} has no row in charts/sidekey/README.md"
        );
    }
    for row in &rows {
        assert!(
            paths
                .iter()
                .any(|p| p == row || p.starts_with(&format!("{row}."))),
            "charts/sidekey/README.md documents {row}, which values.yaml lacks"
        );
    }
}

/// The value sets the chart is checked with: the defaults, each
/// certificate mode, each option. `{app}` stands for a second namespace.
fn options() -> Vec<(&'static str, Vec<String>)> {
    vec![
        ("the defaults", vec![]),
        (
            "cert-manager",
            strings(&["webhook.certificates.mode=cert-manager"]),
        ),
        (
            "cert-manager with a ClusterIssuer",
            strings(&[
                "webhook.certificates.mode=cert-manager",
                "webhook.certificates.certManager.issuerRef.name=corp-ca",
                "webhook.certificates.certManager.issuerRef.kind=ClusterIssuer",
            ]),
        ),
        (
            "an Ingress with TLS",
            strings(&[
                "authorization.ingress.enabled=true",
                "authorization.ingress.className=nginx",
                "authorization.ingress.host=sidekey.example.com",
                "authorization.ingress.tlsSecretName=sidekey-example-tls",
            ]),
        ),
        (
            "no authorization endpoint",
            strings(&["authorization.enabled=false"]),
        ),
        (
            "a ServiceMonitor",
            strings(&["metrics.serviceMonitor.enabled=true"]),
        ),
        ("one watched namespace", strings(&["watchNamespace={app}"])),
        (
            "one watched namespace with cert-manager",
            strings(&[
                "watchNamespace={app}",
                "webhook.certificates.mode=cert-manager",
            ]),
        ),
        (
            "a webhook URL",
            strings(&["webhook.url=https://127.0.0.1:9443"]),
        ),
        (
            "one replica, images by digest",
            vec![
                "replicaCount=1".to_owned(),
                format!("image.digest={DIGEST}"),
                format!("sidecar.image.digest={DIGEST}"),
            ],
        ),
    ]
}

/// What each option must change in the rendering.
fn check_option(name: &str, docs: &[Value], rel: &str, app: &str) {
    let args = operator_args(docs);
    let has_arg = |a: &str| args.iter().any(|x| x == a);
    let webhook = only(docs, "MutatingWebhookConfiguration");
    let selector = &webhook["webhooks"][0]["namespaceSelector"]["matchExpressions"];
    match name {
        "the defaults" => {
            assert!(
                has_arg(&format!("--webhook-service={rel}/sidekey:443")),
                "{args:?}"
            );
            assert!(has_arg("--webhook-certificates=managed"), "{args:?}");
            assert!(has_arg("--oauth-listen=0.0.0.0:8090"), "{args:?}");
            assert!(
                !args.iter().any(|a| a.starts_with("--namespace")),
                "{args:?}"
            );
            assert_eq!(only(docs, "Deployment")["spec"]["replicas"], 2);
            assert_eq!(only(docs, "Secret")["metadata"]["name"], TLS_SECRET);
            assert_eq!(selector[1]["operator"], "NotIn");
            assert_eq!(selector[1]["values"], json!([rel, "kube-system"]));
            assert_eq!(find(docs, "ClusterRoleBinding").len(), 2);
            let pod = &only(docs, "Deployment")["spec"]["template"]["spec"];
            let sc = &pod["containers"][0]["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], true);
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
            assert_eq!(
                pod["securityContext"]["seccompProfile"]["type"],
                "RuntimeDefault"
            );
            assert_eq!(
                pod["topologySpreadConstraints"][0]["topologyKey"],
                "kubernetes.io/hostname"
            );
            assert_eq!(
                pod["containers"][0]["readinessProbe"]["httpGet"]["path"],
                "/readyz"
            );
        }
        "cert-manager" | "cert-manager with a ClusterIssuer" => {
            assert!(has_arg("--webhook-certificates=provided"), "{args:?}");
            assert!(find(docs, "Secret").is_empty(), "cert-manager writes it");
            assert_eq!(
                webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
                format!("{rel}/sidekey-webhook")
            );
            let certs = find(docs, "Certificate");
            let serving = certs
                .iter()
                .find(|c| c["spec"]["secretName"] == TLS_SECRET)
                .expect("a Certificate for the webhook's Secret");
            if name == "cert-manager" {
                assert_eq!(find(docs, "Issuer").len(), 2, "self-signed and CA");
                assert_eq!(serving["spec"]["issuerRef"]["name"], "sidekey-ca");
            } else {
                assert!(find(docs, "Issuer").is_empty());
                assert_eq!(serving["spec"]["issuerRef"]["kind"], "ClusterIssuer");
            }
        }
        "an Ingress with TLS" => {
            let ingress = only(docs, "Ingress");
            assert_eq!(ingress["spec"]["ingressClassName"], "nginx");
            assert!(
                has_arg("--oauth-public-url=https://sidekey.example.com"),
                "{args:?}"
            );
        }
        "no authorization endpoint" => {
            assert!(!args.iter().any(|a| a.starts_with("--oauth")), "{args:?}");
            let ports = &only(docs, "Service")["spec"]["ports"];
            assert!(!ports.to_string().contains("oauth"), "{ports}");
        }
        "a ServiceMonitor" => {
            let monitor = only(docs, "ServiceMonitor");
            assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
        }
        "one watched namespace" | "one watched namespace with cert-manager" => {
            assert!(has_arg(&format!("--namespace={app}")), "{args:?}");
            assert_eq!(selector[1]["operator"], "In");
            assert_eq!(selector[1]["values"], json!([app]));
            assert_eq!(find(docs, "ClusterRoleBinding").len(), 1, "the webhook's");
            let bindings = find(docs, "RoleBinding");
            assert!(
                bindings.iter().any(|b| b["metadata"]["namespace"] == app),
                "the ClusterRole is bound in {app}"
            );
            let role = only(docs, "Role");
            let secrets = role["rules"]
                .as_array()
                .expect("rules")
                .iter()
                .find(|r| r["resources"] == json!(["secrets"]))
                .expect("the Role grants the webhook's Secret");
            let writes = secrets["verbs"].to_string().contains("create");
            assert_eq!(writes, name == "one watched namespace", "{secrets}");
        }
        "a webhook URL" => {
            assert!(has_arg("--webhook-url=https://127.0.0.1:9443"), "{args:?}");
            assert_eq!(
                webhook["webhooks"][0]["clientConfig"]["url"],
                "https://127.0.0.1:9443/mutate"
            );
        }
        "one replica, images by digest" => {
            assert!(find(docs, "PodDisruptionBudget").is_empty());
            let image =
                &only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"];
            assert_eq!(
                image,
                &json!(format!("ghcr.io/sidekey/sidekey-operator@{DIGEST}"))
            );
            assert!(
                has_arg(&format!(
                    "--sidecar-image=ghcr.io/sidekey/sidekey-sidecar@{DIGEST}"
                )),
                "{args:?}"
            );
        }
        other => panic!("no check for option {other}"),
    }
}

#[tokio::test]
async fn lint_template_and_validation_pass_for_every_option() {
    let (rel, app) = ("sidekey-system", "shop");
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, sets) in options() {
        let sets: Vec<String> = sets.iter().map(|s| s.replace("{app}", app)).collect();
        let mut lint = strings(&["lint", "--strict", "--namespace", rel]);
        lint.push(chart_dir());
        lint.extend(set_flags(&sets));
        let run = tool("helm", &lint, None).await.expect_ok();
        assert!(
            run.stdout.contains("0 chart(s) failed"),
            "{name}: {}",
            run.stdout
        );

        let manifest = render(rel, "1.31.0", &sets).await;
        let docs = documents(&manifest);
        check_option(name, &docs, rel, app);
        let file = dir.path().join(format!("{}.yaml", name.replace(' ', "-")));
        std::fs::write(&file, &manifest).expect("writing the manifest");
        let run = tool(
            "kubernetes-validate",
            &strings(&["--strict", "-k", "1.31.0", &file.display().to_string()]),
            None,
        )
        .await;
        let out = format!("{}{}", run.stdout, run.stderr);
        assert!(run.ok, "{name}: kubernetes-validate --strict:\n{out}");
        // Every built-in kind was checked; only CRD kinds lack a schema.
        let passed = out.matches(" passed for resource ").count();
        let foreign = docs
            .iter()
            .filter(|d| {
                let v = d["apiVersion"].as_str().unwrap_or_default();
                v.starts_with("cert-manager.io/") || v.starts_with("monitoring.coreos.com/")
            })
            .count();
        assert_eq!(passed, docs.len() - foreign, "{name}:\n{out}");

        // The PodDisruptionBudget's API version follows the cluster's.
        if !find(&docs, "PodDisruptionBudget").is_empty() {
            for (version, api) in [
                ("1.20.2", "policy/v1beta1"),
                ("1.21.0", "policy/v1"),
                ("1.31.0", "policy/v1"),
            ] {
                let docs = documents(&render(rel, version, &sets).await);
                assert_eq!(
                    only(&docs, "PodDisruptionBudget")["apiVersion"],
                    api,
                    "{name}, Kubernetes {version}"
                );
            }
        }
    }
}

#[tokio::test]
async fn the_rendered_manifests_pass_a_server_side_dry_run_on_the_bed() {
    let client = sidekey_tests::client().await;
    let rel = sidekey_tests::namespace(&client, "chart-dry").await;
    let app = sidekey_tests::namespace(&client, "chart-dry-app").await;
    // Rendered for the bed's version (1.20: policy/v1beta1).
    let info = client.apiserver_version().await.expect("the bed's version");
    let version = format!(
        "{}.{}.0",
        info.major,
        info.minor.trim_end_matches(|c: char| !c.is_ascii_digit())
    );
    for (name, sets) in options() {
        let sets: Vec<String> = sets.iter().map(|s| s.replace("{app}", &app)).collect();
        let manifest = render(&rel, &version, &sets).await;
        // Objects of CRDs the bed lacks cannot be dry-run there.
        let docs: Vec<Value> = documents(&manifest)
            .into_iter()
            .filter(|d| {
                let v = d["apiVersion"].as_str().unwrap_or_default();
                !v.starts_with("cert-manager.io/") && !v.starts_with("monitoring.coreos.com/")
            })
            .collect();
        // Every namespaced object names its namespace, so the output of
        // `helm template` applies as it is.
        for doc in &docs {
            let cluster_scoped = matches!(
                doc["kind"].as_str(),
                Some("ClusterRole" | "ClusterRoleBinding" | "MutatingWebhookConfiguration")
            );
            assert_eq!(
                doc["metadata"]["namespace"].is_string(),
                !cluster_scoped,
                "{name}: {} {}",
                doc["kind"],
                doc["metadata"]["name"]
            );
        }
        let list = json!({"apiVersion": "v1", "kind": "List", "items": docs}).to_string();
        let run = tool(
            "kubectl",
            &strings(&["apply", "--dry-run=server", "-f", "-"]),
            Some(&list),
        )
        .await;
        assert!(run.ok, "{name}: {}\n{}", run.stdout, run.stderr);
        assert_eq!(
            run.stdout.matches("(server dry run)").count(),
            docs.len(),
            "{name}: {}",
            run.stdout
        );
    }
    cleanup(&client, &[&rel, &app]).await;
}

#[tokio::test]
async fn helm_install_refuses_bad_values_naming_them() {
    let client = sidekey_tests::client().await;
    let rel = sidekey_tests::namespace(&client, "chart-bad").await;
    let bad = [
        ("replicaCount=-1", "replicaCount"),
        (
            "webhook.certificates.mode=vault",
            "webhook.certificates.mode",
        ),
        (
            "image.repository=ghcr.io/sidekey/operator:0.1.0",
            "image.repository",
        ),
        ("image.repository=Ghcr.io/Sidekey", "image.repository"),
        ("image.tag=v1/latest", "image.tag"),
        ("sidecar.image.digest=sha256:abc", "sidecar.image.digest"),
        (
            "sidecar.image.pullPolicy=Sometimes",
            "sidecar.image.pullPolicy",
        ),
        (
            "sidecar.resources.limits.memory=lots",
            "sidecar.resources.limits.memory",
        ),
        ("webhook.url=http://127.0.0.1:9443", "webhook.url"),
        ("webhook.timeoutSeconds=60", "webhook.timeoutSeconds"),
        ("watchNamespace=Shop", "watchNamespace"),
    ];
    for (set, named) in bad {
        let mut args = strings(&["install", RELEASE]);
        args.push(chart_dir());
        args.extend(strings(&["--namespace", &rel, "--set", set]));
        let run = tool("helm", &args, None).await;
        assert!(!run.ok, "helm install accepted {set}");
        assert!(
            run.stderr
                .contains("values don't meet the specifications of the schema")
                && run.stderr.contains(&format!("- {named}:")),
            "helm install --set {set} must be refused naming {named}:\n{}",
            run.stderr
        );
    }
    // Nothing was installed.
    let list = tool("helm", &strings(&["list", "-q", "--namespace", &rel]), None)
        .await
        .expect_ok();
    assert_eq!(list.stdout.trim(), "", "releases left: {}", list.stdout);
    cleanup(&client, &[&rel]).await;
}

// ---------------------------------------------------------------------------
// The chart installed into the bed.

/// A release of the chart in namespace `rel`, watching namespace `app`.
struct Install {
    client: Client,
    rel: String,
    app: String,
    /// Ports of 127.0.0.1 for the admin server, the webhook and the
    /// authorization endpoint of the operator run here.
    admin: u16,
    webhook: u16,
    oauth: u16,
    /// Every request of the operator runs goes through it.
    recorder: Recorder,
    dir: tempfile::TempDir,
}

impl Install {
    async fn new(prefix: &str, more: &[String]) -> Self {
        let client = sidekey_tests::client().await;
        sidekey_tests::ensure_crd(&client).await;
        let rel = sidekey_tests::namespace(&client, &format!("{prefix}-rel")).await;
        let app = sidekey_tests::namespace(&client, &format!("{prefix}-app")).await;
        // Kubernetes 1.21+ sets this label; the webhook selects on it.
        Api::<Namespace>::all(client.clone())
            .patch(
                &app,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {NAMESPACE_NAME_LABEL: app}}})),
            )
            .await
            .unwrap_or_else(|e| panic!("labelling namespace {app}: {e}"));
        let [admin, webhook, oauth] = free_ports(3)[..] else {
            unreachable!("free_ports(3) returns three ports")
        };
        let (server, ca) = bed_server();
        let install = Self {
            client,
            rel,
            app,
            admin,
            webhook,
            oauth,
            recorder: Recorder::start(&server, &ca).await,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        let mut sets = vec![
            format!("watchNamespace={}", install.app),
            format!("webhook.url=https://127.0.0.1:{webhook}"),
            format!("authorization.publicUrl=http://127.0.0.1:{oauth}"),
            "sidecar.image.repository=registry.test/sidekey-sidecar".to_owned(),
            "sidecar.image.tag=t1".to_owned(),
        ];
        sets.extend_from_slice(more);
        install.helm("install", &sets).await.expect_ok();
        install
    }

    /// `helm install|upgrade` of release `sidekey` with these values.
    async fn helm(&self, verb: &str, sets: &[String]) -> Run {
        let mut args = vec![verb.to_owned(), RELEASE.to_owned(), chart_dir()];
        args.extend(strings(&["--namespace", &self.rel]));
        if verb == "upgrade" {
            args.push("--reuse-values".to_owned());
        }
        args.extend(set_flags(sets));
        tool("helm", &args, None).await
    }

    /// What the release made, as a manifest.
    async fn manifest(&self) -> String {
        tool(
            "helm",
            &strings(&["get", "manifest", RELEASE, "--namespace", &self.rel]),
            None,
        )
        .await
        .expect_ok()
        .stdout
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.app)
    }

    /// A kubeconfig that authenticates with a token of the chart's
    /// ServiceAccount and reaches the bed through the recorder.
    async fn operator_kubeconfig(&self) -> PathBuf {
        let token = sidekey_tests::service_account_token(&self.client, &self.rel, OPERATOR).await;
        let server = format!("http://{}", self.recorder.addr);
        let path = self.dir.path().join("operator-kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\n\
                 clusters: [{{name: bed, cluster: {{server: '{server}'}}}}]\n\
                 users: [{{name: operator, user: {{token: '{token}'}}}}]\n\
                 contexts: [{{name: operator, context: {{cluster: bed, user: operator}}}}]\n\
                 current-context: operator\n"
            ),
        )
        .expect("writing kubeconfig");
        path
    }

    /// Runs the operator binary as one of the Deployment's pods would run:
    /// the container's args and env as they are on the bed, the listen
    /// addresses moved to this test's ports.
    async fn run_operator(&self, identity: &str) -> LocalOperator {
        let kubeconfig = self.operator_kubeconfig().await;
        let deployment = Api::<Deployment>::namespaced(self.client.clone(), &self.rel)
            .get(OPERATOR)
            .await
            .unwrap_or_else(|e| panic!("Deployment {OPERATOR}: {e}"));
        let container: Container = deployment
            .spec
            .template
            .spec
            .map(|s| s.containers)
            .and_then(|c| c.into_iter().next())
            .expect("the Deployment has a container");
        let mut moved = BTreeSet::new();
        let args: Vec<String> = container
            .args
            .unwrap_or_default()
            .into_iter()
            .map(|arg| {
                for (flag, port) in [
                    ("--admin-listen=", self.admin),
                    ("--webhook-listen=", self.webhook),
                    ("--oauth-listen=", self.oauth),
                ] {
                    if arg.starts_with(flag) {
                        moved.insert(flag);
                        return format!("{flag}127.0.0.1:{port}");
                    }
                }
                arg
            })
            .collect();
        assert_eq!(
            moved.len(),
            3,
            "the Deployment passes all listen flags: {args:?}"
        );
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidekey-operator"));
        cmd.args(&args)
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("RUST_LOG");
        for var in container.env.unwrap_or_default() {
            let field = var
                .value_from
                .as_ref()
                .and_then(|f| f.field_ref.as_ref())
                .map(|f| f.field_path.as_str());
            let value = match (var.value, field) {
                (Some(value), _) => value,
                (None, Some("metadata.namespace")) => self.rel.clone(),
                (None, Some("metadata.name")) => identity.to_owned(),
                (_, other) => panic!("env {} from {other:?}: not played here", var.name),
            };
            cmd.env(&var.name, value);
        }
        LocalOperator::start(
            cmd,
            identity,
            SocketAddr::from(([127, 0, 0, 1], self.admin)),
        )
        .await
    }

    /// Waits until the webhook configuration trusts the CA in the Secret.
    async fn wait_ca_bundle_published(&self, configuration: &str) -> Vec<u8> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.rel);
        let configs: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        sidekey_tests::wait_for("the CA of the Secret in the caBundle", WAIT, || async {
            let secret = secrets.get(TLS_SECRET).await.ok()?;
            let ca = secret.data?.remove("ca.crt")?.0;
            let config = configs.get(configuration).await.ok()?;
            let bundle = config.webhooks?.first()?.client_config.ca_bundle.clone()?.0;
            (!ca.is_empty() && ca == bundle).then_some(ca)
        })
        .await
    }

    async fn create_datasource(&self, manifest: Value) {
        let api: Api<sidekey_crds::ApiDatasource> = Api::namespaced(self.client.clone(), &self.app);
        api.create(
            &PostParams::default(),
            &serde_json::from_value(manifest).expect("ApiDatasource"),
        )
        .await
        .unwrap_or_else(|e| panic!("creating a datasource: {e}"));
    }

    /// Waits until datasource `name` has condition `type_` = `status`.
    async fn wait_condition(&self, name: &str, type_: &str, status: &str) -> Value {
        let api: Api<sidekey_crds::ApiDatasource> = Api::namespaced(self.client.clone(), &self.app);
        sidekey_tests::wait_for(&format!("{name} {type_}={status}"), WAIT, || async {
            let ds = api.get(name).await.ok()?;
            let value = serde_json::to_value(&ds).ok()?;
            let found = value["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == type_ && c["status"] == status);
            found.then_some(value)
        })
        .await
    }

    /// Creates a labelled pod naming datasource `open`, as admitted.
    async fn labelled_pod(&self, name: &str) -> Pod {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name,
                "labels": {names::INJECT_LABEL: "true"},
                "annotations": {names::DATASOURCES_ANNOTATION: "open"},
            },
            "spec": {"containers": [{"name": "app", "image": "registry.test/app:1"}]},
        });
        self.pods()
            .create(
                &PostParams::default(),
                &serde_json::from_value(pod).expect("Pod"),
            )
            .await
            .unwrap_or_else(|e| panic!("creating pod {name}: {e}"))
    }
}

/// The bed's API server URL and CA certificate (PEM).
fn bed_server() -> (String, Vec<u8>) {
    use base64::Engine as _;
    let bed = Kubeconfig::read_from(sidekey_tests::kubeconfig_path()).expect("bed kubeconfig");
    let cluster = bed
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .expect("bed kubeconfig has a cluster");
    let ca = cluster
        .certificate_authority_data
        .expect("bed kubeconfig has certificate-authority-data");
    let ca = base64::engine::general_purpose::STANDARD
        .decode(ca.trim())
        .expect("certificate-authority-data is base64");
    (cluster.server.expect("server"), ca)
}

/// The operator binary run here in place of a pod; killed when dropped.
struct LocalOperator {
    child: Child,
    logs: Arc<Mutex<String>>,
    identity: String,
}

impl LocalOperator {
    async fn start(mut cmd: Command, identity: &str, admin: SocketAddr) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("starting sidekey-operator");
        let logs = capture_output(&mut child);
        let op = Self {
            child,
            logs,
            identity: identity.to_owned(),
        };
        sidekey_tests::wait_for("the operator's /readyz to answer 200", WAIT, || async {
            matches!(http_get(admin, "/readyz").await, Some((200, _))).then_some(())
        })
        .await;
        op
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// SIGTERM, as Kubernetes stops a pod: the leader releases the Lease.
    async fn terminate(&mut self) {
        if let Some(pid) = self.child.id() {
            let sent = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .expect("running kill");
            assert!(sent.success(), "kill -TERM {pid} failed");
        }
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("operator {} did not stop", self.identity))
            .expect("waiting for the operator");
    }
}

impl Drop for LocalOperator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- logs of operator {} ----\n{}",
                self.identity,
                self.logs()
            );
        }
    }
}

/// A GET on loopback: the status and the Location header.
async fn get_location(addr: SocketAddr, path: &str) -> (u16, Option<String>) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("writing the request");
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .await
        .expect("reading the answer");
    let head = raw.split("\r\n\r\n").next().unwrap_or_default();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let location = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("location")
            .then(|| value.trim().to_owned())
    });
    (status, location)
}

/// Every object of namespace `ns` that someone made, i.e. all but what
/// Kubernetes puts in every namespace.
async fn objects_in(ns: &str) -> Vec<String> {
    let kinds = tool(
        "kubectl",
        &strings(&[
            "api-resources",
            "--verbs=list",
            "--namespaced",
            "-o",
            "name",
        ]),
        None,
    )
    .await
    .expect_ok()
    .stdout
    .lines()
    // Events expire by themselves.
    .filter(|k| !k.starts_with("events"))
    .collect::<Vec<_>>()
    .join(",");
    let run = tool(
        "kubectl",
        &strings(&["get", &kinds, "-n", ns, "-o", "name"]),
        None,
    )
    .await
    .expect_ok();
    run.stdout
        .lines()
        .filter(|l| {
            !matches!(*l, "serviceaccount/default" | "configmap/kube-root-ca.crt")
                && !l.starts_with("secret/default-token-")
        })
        .map(str::to_owned)
        .collect()
}

/// Deletes the test's namespaces (best effort: a failed test keeps them
/// for a look).
async fn cleanup(client: &Client, namespaces: &[&str]) {
    let api: Api<Namespace> = Api::all(client.clone());
    for ns in namespaces {
        let _ = api.delete(ns, &Default::default()).await;
    }
}

#[tokio::test]
async fn installed_chart_runs_the_operator_with_exactly_its_rbac_through_upgrade_and_uninstall() {
    let install = Install::new("chart", &[]).await;
    let (rel, app) = (install.rel.clone(), install.app.clone());
    let configuration = format!("sidekey-{rel}");

    // helm install made every object of the release.
    let manifest = install.manifest().await;
    let made = documents(&manifest).len();
    let run = tool(
        "kubectl",
        &strings(&["get", "-f", "-", "-o", "name"]),
        Some(&manifest),
    )
    .await
    .expect_ok();
    assert_eq!(run.stdout.lines().count(), made, "{}", run.stdout);

    // The objects the chart makes for the operator, deleted by hand: the
    // operator makes each again (and so uses its create rules).
    let leases: Api<Lease> = Api::namespaced(install.client.clone(), &rel);
    let secrets_rel: Api<Secret> = Api::namespaced(install.client.clone(), &rel);
    let configs: Api<MutatingWebhookConfiguration> = Api::all(install.client.clone());
    let gone = DeleteParams::default();
    leases
        .delete(OPERATOR, &gone)
        .await
        .expect("deleting the Lease");
    secrets_rel
        .delete(TLS_SECRET, &gone)
        .await
        .expect("deleting the certificate Secret");
    configs
        .delete(&configuration, &gone)
        .await
        .expect("deleting the webhook configuration");

    let mut operator = install.run_operator("chart-a").await;
    sidekey_tests::wait_for("the Lease made again", WAIT, || async {
        leases.get_opt(OPERATOR).await.ok()?.map(|_| ())
    })
    .await;
    sidekey_tests::wait_for("the webhook configuration made again", WAIT, || async {
        configs.get_opt(&configuration).await.ok()?.map(|_| ())
    })
    .await;

    // A datasource is reconciled.
    install
        .create_datasource(json!({
            "apiVersion": "sidekey.dev/v1alpha1", "kind": "ApiDatasource",
            "metadata": {"name": "open"},
            "spec": {"url": "https://upstream.test/v1", "authentication": {"type": "None"}},
        }))
        .await;
    install.wait_condition("open", "Ready", "True").await;

    // The webhook the chart registered injects a labelled pod, with the
    // chart's sidecar values.
    let first_ca = install.wait_ca_bundle_published(&configuration).await;
    let pod = install.labelled_pod("app-1").await;
    let sidecar = sidecar_of(&pod).expect("the pod was injected");
    assert_eq!(
        sidecar.image.as_deref(),
        Some("registry.test/sidekey-sidecar:t1")
    );
    // An unlabelled pod is not the webhook's business.
    let plain: Pod = serde_json::from_value(json!({
        "metadata": {"name": "plain"},
        "spec": {"containers": [{"name": "app", "image": "registry.test/app:1"}]},
    }))
    .expect("Pod");
    let plain = install
        .pods()
        .create(&PostParams::default(), &plain)
        .await
        .expect("creating an unlabelled pod");
    assert!(sidecar_of(&plain).is_none());

    // The authorization endpoint: an AuthorizationCode datasource gets a
    // link at the chart's public URL, and the link sends the person to the
    // provider.
    let secrets: Api<Secret> = Api::namespaced(install.client.clone(), &app);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "calendar-oauth"},
                "stringData": {"client-secret": "s3cret"},
            }))
            .expect("Secret"),
        )
        .await
        .expect("creating the client secret");
    install
        .create_datasource(json!({
            "apiVersion": "sidekey.dev/v1alpha1", "kind": "ApiDatasource",
            "metadata": {"name": "calendar"},
            "spec": {
                "url": "https://calendar.test/api",
                "authentication": {"type": "OAuth2", "oauth2": {
                    "grantType": "AuthorizationCode",
                    "accessTokenUrl": "https://auth.test/token",
                    "authorizationUrl": "https://auth.test/authorize",
                    "redirectUrl": format!("http://127.0.0.1:{}/oauth2/callback", install.oauth),
                    "clientId": "calendar",
                    "clientSecretRef": {"name": "calendar-oauth", "key": "client-secret"},
                }},
            },
        }))
        .await;
    let api: Api<sidekey_crds::ApiDatasource> = Api::namespaced(install.client.clone(), &app);
    let link = sidekey_tests::wait_for("calendar's status.authorizationUrl", WAIT, || async {
        api.get("calendar").await.ok()?.status?.authorization_url
    })
    .await;
    let prefix = format!(
        "http://127.0.0.1:{}/oauth2/authorize/{app}/calendar",
        install.oauth
    );
    assert!(link.starts_with(&prefix), "{link}");
    let path = link
        .strip_prefix(&format!("http://127.0.0.1:{}", install.oauth))
        .expect("a link at the public URL");
    let oauth = SocketAddr::from(([127, 0, 0, 1], install.oauth));
    let (status, location) = get_location(oauth, path).await;
    assert_eq!(status, 302, "GET {link}");
    assert!(
        location
            .as_deref()
            .is_some_and(|l| l.starts_with("https://auth.test/authorize?")),
        "{location:?}"
    );

    assert!(
        !operator.logs().contains("forbidden"),
        "the chart's RBAC refused something:\n{}",
        operator.logs()
    );

    // helm upgrade with changed values; the pods of the new revision (the
    // operator run again with its args) inject with them, and the upgrade
    // left the operator's certificate alone.
    let tls_crt = |s: Secret| s.data.and_then(|mut d| d.remove("tls.crt")).map(|b| b.0);
    let before = tls_crt(secrets_rel.get(TLS_SECRET).await.expect("Secret"));
    install
        .helm(
            "upgrade",
            &strings(&[
                "sidecar.logLevel=debug",
                "sidecar.resources.limits.memory=128Mi",
                "webhook.timeoutSeconds=5",
            ]),
        )
        .await
        .expect_ok();
    operator.terminate().await;
    let operator = install.run_operator("chart-b").await;
    sidekey_tests::wait_for("the webhook timeout of the new values", WAIT, || async {
        let c = configs.get(&configuration).await.ok()?;
        (c.webhooks?.first()?.timeout_seconds == Some(5)).then_some(())
    })
    .await;
    assert_eq!(
        install.wait_ca_bundle_published(&configuration).await,
        first_ca
    );
    let after = tls_crt(secrets_rel.get(TLS_SECRET).await.expect("Secret"));
    assert!(
        before.is_some() && before == after,
        "the upgrade changed the certificate"
    );
    let pod = install.labelled_pod("app-2").await;
    let sidecar = sidecar_of(&pod).expect("the pod was injected");
    let args = sidecar.args.clone().unwrap_or_default();
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--log-level" && w[1] == "debug")
            || args.iter().any(|a| a == "--log-level=debug"),
        "{args:?}"
    );
    let limits = sidecar
        .resources
        .and_then(|r| r.limits)
        .expect("the sidecar has limits");
    assert_eq!(limits.get("memory").map(|q| q.0.as_str()), Some("128Mi"));
    assert!(
        !operator.logs().contains("forbidden"),
        "{}",
        operator.logs()
    );

    // Every verb of every rule was used, and nothing was refused. The
    // owner references the operator writes leave blockOwnerDeletion unset:
    // were it set, clusters running the OwnerReferencesPermissionEnforcement
    // admission plugin (the bed does not) would want `update` on
    // apidatasources/finalizers too, a rule the chart leaves out.
    let configmap = Api::<ConfigMap>::namespaced(install.client.clone(), &app)
        .get("open-sidekey")
        .await
        .expect("ConfigMap open-sidekey");
    let tokens = secrets
        .get("calendar-sidekey-oauth")
        .await
        .expect("Secret calendar-sidekey-oauth");
    for refs in [
        configmap.metadata.owner_references,
        tokens.metadata.owner_references,
    ] {
        let refs = refs.expect("owner references");
        assert!(
            !refs.is_empty() && refs.iter().all(|o| o.block_owner_deletion != Some(true)),
            "{refs:?}: blockOwnerDeletion needs update on apidatasources/finalizers"
        );
    }
    let docs = documents(&install.manifest().await);
    assert_rbac_all_used_none_refused(&install, &docs).await;

    // helm uninstall, the operator still running as its pods would while
    // they stop: nothing of the release stays, and nothing the operator
    // made in the release's namespace either; the CRD and the datasources
    // (with their ConfigMaps) stay.
    tool(
        "helm",
        &strings(&["uninstall", RELEASE, "--namespace", &rel]),
        None,
    )
    .await
    .expect_ok();
    let run = tool(
        "kubectl",
        &strings(&["get", "-f", "-", "--ignore-not-found", "-o", "name"]),
        Some(&manifest),
    )
    .await
    .expect_ok();
    assert_eq!(run.stdout.trim(), "", "left by helm uninstall");
    // The garbage collector removes the ReplicaSet, its pending pods and
    // the ServiceAccount's token Secret in the background.
    let left = async {
        for _ in 0..300 {
            if objects_in(&rel).await.is_empty() {
                return Vec::new();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        objects_in(&rel).await
    }
    .await;
    assert!(left.is_empty(), "left in namespace {rel}: {left:?}");
    // Still gone a moment later: no replica made anything again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(objects_in(&rel).await, Vec::<String>::new());
    assert!(
        configs
            .get_opt(&configuration)
            .await
            .expect("reading")
            .is_none(),
        "MutatingWebhookConfiguration {configuration} came back"
    );
    let kept = objects_in(&app).await;
    for name in [
        "apidatasource.sidekey.dev/open",
        "apidatasource.sidekey.dev/calendar",
        "configmap/open-sidekey",
    ] {
        assert!(kept.iter().any(|k| k == name), "{name} is gone: {kept:?}");
    }
    let crd = tool(
        "kubectl",
        &strings(&["get", "crd", "apidatasources.sidekey.dev", "-o", "name"]),
        None,
    )
    .await;
    assert!(crd.ok, "the CRD is gone: {}", crd.stderr);
    drop(operator);
    cleanup(&install.client, &[&rel, &app]).await;
}

/// Holds what the operator runs did through the recorder against what the
/// release grants its ServiceAccount: no request was refused, each was
/// granted, and every verb of every rule was used but one (named below
/// with the reason), so removing any other would refuse a request the
/// operator made.
async fn assert_rbac_all_used_none_refused(install: &Install, docs: &[Value]) {
    let seen = install.recorder.seen();
    let refused: Vec<String> = seen
        .iter()
        .filter(|s| s.status == 401 || s.status == 403)
        .map(|s| format!("{} {}?{} -> {}", s.method, s.path, s.query, s.status))
        .collect();
    assert!(refused.is_empty(), "refused: {refused:#?}");
    let used: BTreeSet<Access> = seen.iter().flat_map(Access::of).collect();
    let granted = rbac_recorder::grants(docs, &install.rel, OPERATOR);
    assert!(!granted.is_empty(), "the release grants nothing");
    for access in &used {
        assert!(
            granted.iter().any(|g| g.covers(access)),
            "the operator did {access}, which no rule of the chart grants"
        );
    }
    let unused: Vec<String> = granted
        .iter()
        .filter(|g| !used.iter().any(|a| g.covers(a)))
        .map(|g| format!("{}: {}", g.origin, g.access))
        .collect();
    // kube's event Recorder patches an Event into a series when it
    // publishes the same event about the same version of an object again
    // (a retried reconcile); a run without failures never does.
    let expected = [format!(
        "ClusterRole sidekey-{rel} (RoleBinding sidekey-{rel}), rule 5: \
         patch events.k8s.io/events in {app}",
        rel = install.rel,
        app = install.app
    )];
    assert_eq!(
        unused,
        expected,
        "rules the operator never used (or no longer leaves unused); used: {:#?}",
        used.iter().map(ToString::to_string).collect::<Vec<_>>()
    );
}
