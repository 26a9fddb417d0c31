//! What every operator scenario needs: a fresh namespace on the test bed, a
//! ServiceAccount bound to exactly the roles of `operator/rbac.yaml`, and
//! the real `sidekey-operator` binary running as that ServiceAccount,
//! watching only that namespace, its logs captured, killed when dropped.
//!
//! One operator per test, restricted with `--namespace`, lets the tests run
//! in parallel without reconciling each other's datasources.

#![allow(dead_code)] // each test binary uses a different part

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use kube::{Api, Client};
use sidekey_crds::ApiDatasource;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How long a scenario waits for the operator to act before failing.
pub const WAIT: Duration = Duration::from_secs(30);
const TEST_MANAGER: &str = "sidekey-operator-tests";

/// A namespace of the test bed, with a ServiceAccount the operator runs as.
pub struct Bed {
    pub client: Client,
    pub ns: String,
    /// Kubeconfig authenticating as the operator's ServiceAccount.
    pub kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Bed {
    pub async fn new(prefix: &str) -> Self {
        let client = sidekey_tests::client().await;
        sidekey_tests::ensure_crd(&client).await;
        let ns = sidekey_tests::namespace(&client, prefix).await;
        let token = bind_operator_roles(&client, &ns).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, service_account_kubeconfig(&token)).expect("kubeconfig");
        Self {
            client,
            ns,
            kubeconfig,
            _dir: dir,
        }
    }

    pub fn datasources(&self) -> Api<ApiDatasource> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn configmaps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates or replaces Secret `name` with exactly `data`.
    pub async fn put_secret(&self, name: &str, data: &[(&str, &str)]) {
        let data: Vec<(&str, &[u8])> = data.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        self.put_secret_bytes(name, &data).await;
    }

    /// The same with values of any bytes.
    pub async fn put_secret_bytes(&self, name: &str, data: &[(&str, &[u8])]) {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Default::default()
        };
        let mut body = serde_json::to_value(&secret).expect("secret json");
        body["apiVersion"] = "v1".into();
        body["kind"] = "Secret".into();
        self.secrets()
            .patch(
                name,
                &PatchParams::apply(TEST_MANAGER).force(),
                &Patch::Apply(body),
            )
            .await
            .unwrap_or_else(|e| panic!("applying Secret {name}: {e}"));
    }

    /// Creates the datasource from a manifest (YAML, without namespace).
    pub async fn create_datasource(&self, yaml: &str) -> ApiDatasource {
        let mut ds: ApiDatasource =
            serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("manifest: {e}\n{yaml}"));
        ds.metadata.namespace = Some(self.ns.clone());
        self.datasources()
            .create(&PostParams::default(), &ds)
            .await
            .unwrap_or_else(|e| panic!("creating datasource: {e}"))
    }

    /// Waits until the datasource's `Ready` condition has this status and
    /// reason, and returns the datasource as it is then.
    pub async fn wait_ready(&self, name: &str, status: &str, reason: &str) -> ApiDatasource {
        self.wait_condition(name, "Ready", status, reason).await
    }

    /// Waits until the datasource's condition `type_` has this status and
    /// reason, and returns the datasource as it is then.
    pub async fn wait_condition(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: &str,
    ) -> ApiDatasource {
        self.wait_condition_within(name, type_, status, reason, WAIT)
            .await
    }

    /// [`Self::wait_condition`] with another time limit.
    pub async fn wait_condition_within(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: &str,
        within: Duration,
    ) -> ApiDatasource {
        let api = self.datasources();
        sidekey_tests::wait_for(
            &format!(
                "ApiDatasource {}/{name} {type_}={status} reason={reason}",
                self.ns
            ),
            within,
            || async {
                let ds = api.get_opt(name).await.ok().flatten()?;
                let c = condition(&ds, type_)?;
                (c.status == status && c.reason == reason).then_some(ds)
            },
        )
        .await
    }

    pub async fn wait_configmap(&self, name: &str) -> ConfigMap {
        let api = self.configmaps();
        sidekey_tests::wait_for(&format!("ConfigMap {}/{name}", self.ns), WAIT, || async {
            api.get_opt(name).await.ok().flatten()
        })
        .await
    }

    /// The Events of this namespace about datasource `name`.
    pub async fn events_about(&self, name: &str) -> Vec<Event> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        api.list(&ListParams::default())
            .await
            .expect("listing Events")
            .items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("ApiDatasource") && r.name.as_deref() == Some(name)
                })
            })
            .collect()
    }

    /// Waits for an Event about datasource `name` with this reason.
    pub async fn wait_event(&self, name: &str, reason: &str) -> Event {
        sidekey_tests::wait_for(
            &format!("an Event {reason} about ApiDatasource {}/{name}", self.ns),
            WAIT,
            || async {
                self.events_about(name)
                    .await
                    .into_iter()
                    .find(|e| e.reason.as_deref() == Some(reason))
            },
        )
        .await
    }

    /// The API server's address, from the operator's kubeconfig.
    pub fn api_server(&self) -> SocketAddr {
        let text = std::fs::read_to_string(&self.kubeconfig).expect("kubeconfig");
        let start = text.find("https://").expect("server URL") + "https://".len();
        let end = start + text[start..].find('\'').expect("quoted server URL");
        text[start..end].parse().expect("server address")
    }

    /// The operator's kubeconfig with the API server replaced by `proxy`,
    /// written into `dir`.
    pub fn kubeconfig_through(&self, proxy: SocketAddr, dir: &Path) -> PathBuf {
        let text = std::fs::read_to_string(&self.kubeconfig).expect("kubeconfig");
        let path = dir.join("kubeconfig-proxied");
        let text = text.replace(&self.api_server().to_string(), &proxy.to_string());
        std::fs::write(&path, text).expect("write");
        path
    }

    /// Starts the operator on this namespace, as its ServiceAccount.
    pub fn start_operator(&self, opts: OperatorOptions) -> Operator {
        Operator::start(self, opts)
    }
}

/// The `Ready` condition of a datasource.
pub fn ready(ds: &ApiDatasource) -> Option<Condition> {
    condition(ds, "Ready")
}

/// The condition `type_` of a datasource.
pub fn condition(ds: &ApiDatasource, type_: &str) -> Option<Condition> {
    ds.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

/// The ClusterRole for namespaced objects, the one for cluster-scoped
/// objects (the webhook configuration), and the operator namespace's Role.
fn rbac_documents() -> (ClusterRole, ClusterRole, Role) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/rbac.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    let find = |kind: &str, name: Option<&str>| {
        docs.iter()
            .find(|d| d["kind"] == kind && name.is_none_or(|n| d["metadata"]["name"] == n))
            .cloned()
            .unwrap_or_else(|| panic!("{path} has no {kind} {name:?}"))
    };
    (
        serde_json::from_value(find("ClusterRole", Some("sidekey-operator"))).expect("ClusterRole"),
        serde_json::from_value(find("ClusterRole", Some("sidekey-operator-webhook")))
            .expect("ClusterRole"),
        serde_json::from_value(find("Role", None)).expect("Role"),
    )
}

/// Applies the roles of `operator/rbac.yaml`, binds them in `ns` to a new
/// ServiceAccount, and returns that ServiceAccount's token.
async fn bind_operator_roles(client: &Client, ns: &str) -> String {
    let (cluster_role, webhook_role, role) = rbac_documents();
    let apply = PatchParams::apply(TEST_MANAGER).force();
    let cr_name = cluster_role
        .metadata
        .name
        .clone()
        .expect("ClusterRole name");
    let role_name = role.metadata.name.clone().expect("Role name");
    Api::<ClusterRole>::all(client.clone())
        .patch(
            &cr_name,
            &apply,
            &Patch::Apply(typed(&cluster_role, "ClusterRole")),
        )
        .await
        .expect("applying ClusterRole");
    let webhook_role_name = webhook_role
        .metadata
        .name
        .clone()
        .expect("ClusterRole name");
    Api::<ClusterRole>::all(client.clone())
        .patch(
            &webhook_role_name,
            &apply,
            &Patch::Apply(typed(&webhook_role, "ClusterRole")),
        )
        .await
        .expect("applying ClusterRole");
    Api::<Role>::namespaced(client.clone(), ns)
        .patch(&role_name, &apply, &Patch::Apply(typed(&role, "Role")))
        .await
        .expect("applying Role");

    let sa_name = OPERATOR_ACCOUNT;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": sa_name}}))
            .expect("ServiceAccount"),
    )
    .await
    .expect("creating ServiceAccount");
    // A RoleBinding to the ClusterRole grants it in this namespace only,
    // which is all an operator started with --namespace watches.
    for (binding, kind, role) in [
        (OPERATOR_BINDING, "ClusterRole", cr_name.as_str()),
        ("sidekey-operator-own-namespace", "Role", role_name.as_str()),
    ] {
        bind_operator(client, ns, binding, kind, role).await;
    }

    // The webhook configuration is cluster-scoped: a ClusterRoleBinding,
    // one per test namespace.
    let crb: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("sidekey-operator-webhook-{ns}")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": webhook_role_name},
        "subjects": [{"kind": "ServiceAccount", "name": sa_name, "namespace": ns}],
    }))
    .expect("ClusterRoleBinding");
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &crb)
        .await
        .expect("creating ClusterRoleBinding");

    sidekey_tests::service_account_token(client, ns, sa_name).await
}

/// The RoleBinding of the ClusterRole `sidekey-operator` in a bed's namespace.
const OPERATOR_BINDING: &str = "sidekey-operator";
/// The operator's ServiceAccount in each bed's namespace.
const OPERATOR_ACCOUNT: &str = "sidekey-operator";
/// The Role that stands in for the ClusterRole while Secrets may not be
/// listed (`Bed::withhold_secret_listing`).
const NO_SECRET_LISTING: &str = "sidekey-operator-no-secret-listing";

/// Binds `kind`/`role` to the operator's ServiceAccount in `ns`.
async fn bind_operator(client: &Client, ns: &str, binding: &str, kind: &str, role: &str) {
    let rb: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": binding},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": ns}],
    }))
    .expect("RoleBinding");
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &rb)
        .await
        .unwrap_or_else(|e| panic!("creating RoleBinding {binding}: {e}"));
}

impl Bed {
    /// Takes `list` and `watch` on Secrets away from the operator in this
    /// namespace, everything else of `operator/rbac.yaml` kept: the
    /// ClusterRole's binding is replaced by a Role with the same rules
    /// minus those two verbs. Undone by [`Bed::restore_secret_listing`].
    pub async fn withhold_secret_listing(&self) {
        let (mut cluster_role, _, _) = rbac_documents();
        for rule in cluster_role.rules.iter_mut().flatten() {
            if rule.resources.iter().flatten().any(|r| r == "secrets") {
                rule.verbs.retain(|v| v != "list" && v != "watch");
            }
        }
        let role: Role = serde_json::from_value(serde_json::json!({
            "metadata": {"name": NO_SECRET_LISTING},
            "rules": cluster_role.rules,
        }))
        .expect("Role");
        Api::<Role>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &role)
            .await
            .expect("creating the Role without Secret listing");
        bind_operator(
            &self.client,
            &self.ns,
            NO_SECRET_LISTING,
            "Role",
            NO_SECRET_LISTING,
        )
        .await;
        Api::<RoleBinding>::namespaced(self.client.clone(), &self.ns)
            .delete(OPERATOR_BINDING, &Default::default())
            .await
            .expect("deleting the operator's RoleBinding");
    }

    /// Gives the operator its ClusterRole back (see
    /// [`Bed::withhold_secret_listing`]).
    pub async fn restore_secret_listing(&self) {
        let (cluster_role, _, _) = rbac_documents();
        let name = cluster_role.metadata.name.expect("ClusterRole name");
        bind_operator(
            &self.client,
            &self.ns,
            OPERATOR_BINDING,
            "ClusterRole",
            &name,
        )
        .await;
    }
}

fn typed<T: serde::Serialize>(obj: &T, kind: &str) -> serde_json::Value {
    let mut v = serde_json::to_value(obj).expect("json");
    v["apiVersion"] = "rbac.authorization.k8s.io/v1".into();
    v["kind"] = kind.into();
    v
}

/// The bed's kubeconfig, authenticating with `token` instead.
fn service_account_kubeconfig(token: &str) -> String {
    let path = sidekey_tests::kubeconfig_path();
    let kc = Kubeconfig::read_from(&path).expect("bed kubeconfig");
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .expect("bed kubeconfig has a cluster");
    let server = cluster.server.expect("server");
    let ca = cluster
        .certificate_authority_data
        .expect("bed kubeconfig has certificate-authority-data");
    format!(
        "apiVersion: v1\nkind: Config\n\
         clusters: [{{name: bed, cluster: {{server: '{server}', certificate-authority-data: '{ca}'}}}}]\n\
         users: [{{name: operator, user: {{token: '{token}'}}}}]\n\
         contexts: [{{name: operator, context: {{cluster: bed, user: operator}}}}]\n\
         current-context: operator\n"
    )
}

/// How to start one operator process.
#[derive(Clone, Debug)]
pub struct OperatorOptions {
    pub identity: String,
    pub lease_name: String,
    pub lease_duration: u64,
    pub lease_renew_deadline: u64,
    pub lease_retry_period: u64,
    pub rust_log: String,
    /// More flags, after the ones above (the webhook's, for instance).
    pub extra_args: Vec<String>,
    /// Another kubeconfig for the operator's ServiceAccount (one reaching
    /// the API server through a proxy, say) instead of the bed's.
    pub kubeconfig: Option<PathBuf>,
}

impl Default for OperatorOptions {
    fn default() -> Self {
        Self {
            identity: "operator-a".into(),
            lease_name: "sidekey-operator".into(),
            lease_duration: 15,
            lease_renew_deadline: 10,
            lease_retry_period: 2,
            rust_log: "info".into(),
            extra_args: Vec::new(),
            kubeconfig: None,
        }
    }
}

/// A running `sidekey-operator`; killed when dropped.
pub struct Operator {
    child: Child,
    output: Arc<Mutex<String>>,
    pub identity: String,
}

impl Operator {
    fn start(bed: &Bed, opts: OperatorOptions) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidekey-operator"));
        cmd.args(["--admin-listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--namespace", &bed.ns, "--lease-namespace", &bed.ns])
            .args([
                "--lease-name",
                &opts.lease_name,
                "--identity",
                &opts.identity,
            ])
            .args(["--lease-duration", &opts.lease_duration.to_string()])
            .args([
                "--lease-renew-deadline",
                &opts.lease_renew_deadline.to_string(),
            ])
            .args(["--lease-retry-period", &opts.lease_retry_period.to_string()])
            .args(&opts.extra_args)
            .env(
                "KUBECONFIG",
                opts.kubeconfig.as_ref().unwrap_or(&bed.kubeconfig),
            )
            .env("RUST_LOG", &opts.rust_log)
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_NAME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("starting sidekey-operator");
        let output = capture_output(&mut child);
        Self {
            child,
            output,
            identity: opts.identity,
        }
    }

    /// Everything the process wrote so far, stdout and stderr.
    pub fn logs(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The admin server's address, from the operator's own log line.
    pub async fn admin_addr(&self) -> SocketAddr {
        sidekey_tests::wait_for("the operator's admin_addr log line", WAIT, || async {
            self.logs().lines().find_map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                v["admin_addr"].as_str()?.parse().ok()
            })
        })
        .await
    }

    /// SIGKILL: the process stops without releasing anything.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("killing operator");
    }

    /// Whether the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit on its own.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("operator {} did not exit within {WAIT:?}", self.identity))
            .expect("waiting for operator")
    }

    /// SIGTERM, as Kubernetes stops a pod; returns the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("operator still running");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        self.wait_exit().await
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        // kill_on_drop stops the process; show its logs when a test failed.
        if std::thread::panicking() {
            eprintln!(
                "---- logs of operator {} ----\n{}",
                self.identity,
                self.logs()
            );
        }
    }
}

/// Everything `child` writes to its piped stdout and stderr, line by line,
/// as it comes.
pub fn capture_output(child: &mut Child) -> Arc<Mutex<String>> {
    let output = Arc::new(Mutex::new(String::new()));
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(collect(stdout, output.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(collect(stderr, output.clone()));
    }
    output
}

async fn collect<R: AsyncRead + Unpin>(reader: R, out: Arc<Mutex<String>>) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str(&line);
        out.push('\n');
    }
}

/// `n` distinct ports of 127.0.0.1, free right now, held until all are
/// chosen. They come from below the kernel's ephemeral range (32768 and
/// up on Linux): a port the kernel picked would be free again the moment
/// it is released, for the next outgoing connection to take before the
/// caller binds it (a webhook that then cannot listen). Another test
/// process could still take one, which is unlikely.
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    // Where this process starts looking: apart from other test processes.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        (std::process::id() % u32::from(SPAN)) as u16 + 1,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..SPAN {
        if listeners.len() == n {
            break;
        }
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % SPAN;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", FIRST + offset)) {
            listeners.push(l);
        }
    }
    assert_eq!(listeners.len(), n, "no free ports of 127.0.0.1 below 32000");
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

/// A port of 127.0.0.1, free right now.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// A PEM bundle of `n` self-signed CA certificates.
pub fn ca_bundle(n: usize) -> String {
    (0..n)
        .map(|i| {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut params =
                rcgen::CertificateParams::new(vec![format!("ca{i}.sidekey.test")]).expect("params");
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.self_signed(&key).expect("certificate").pem()
        })
        .collect()
}

/// The sidecar binary `cargo test --workspace` builds next to the
/// operator's.
pub fn sidecar_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_sidekey-operator")).with_file_name("sidekey-sidecar");
    assert!(
        path.is_file(),
        "{} does not exist: build it first: cargo build -p sidekey-sidecar",
        path.display()
    );
    path
}

/// A running sidecar; killed when dropped, its output shown when a test
/// fails.
pub struct Sidecar {
    pub child: tokio::process::Child,
    output: Arc<Mutex<String>>,
}

impl Sidecar {
    pub fn start(args: &[String]) -> Self {
        let mut child = tokio::process::Command::new(sidecar_binary())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the sidecar");
        let output = capture_output(&mut child);
        Self { child, output }
    }

    pub fn logs(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- logs of the sidecar ----\n{}", self.logs());
        }
    }
}

/// A plain HTTP/1.0 GET on loopback: (status, body), or None when nothing
/// listens yet.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}
