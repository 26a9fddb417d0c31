//! The test bed: a client to the real kube-apiserver that `scripts/test`
//! starts (see `scripts/kube-testbed.sh`), and small helpers every
//! cluster test needs. One server serves the whole run; each test works
//! in a namespace of its own.
//!
//! For the OAuth 2.0 authorization-code grant: [`oauth_server`] runs the real
//! provider, [`browser`] goes through its sign-in and consent pages, and
//! [`kubelet`] lays out Secret volumes for pods that never run here.

pub mod browser;
pub mod kubelet;
pub mod oauth_server;

/// The property tests' budget: `PROPTEST_CASES` cases a property when it
/// is set (a longer run), else `ci`.
pub fn proptest_cases(ci: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ci)
}

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};

/// Environment variable naming the test bed's kubeconfig.
pub const KUBECONFIG_ENV: &str = "SIDEKEY_TEST_KUBECONFIG";

/// The test bed's kubeconfig. Panics, saying how to start the bed, when
/// the variable is unset: a cluster test must fail, not pass vacuously.
pub fn kubeconfig_path() -> PathBuf {
    match std::env::var_os(KUBECONFIG_ENV) {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "{KUBECONFIG_ENV} is not set: run the tests with `scripts/test`, which starts \
             a real kube-apiserver, or start one with `scripts/kube-testbed.sh start DIR` \
             and export {KUBECONFIG_ENV}=DIR/kubeconfig"
        ),
    }
}

/// A client to the test bed.
pub async fn client() -> Client {
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("reading kubeconfig {}: {e}", path.display()));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", path.display()));
    Client::try_from(config).unwrap_or_else(|e| panic!("client: {e}"))
}

/// The checked-in CRD manifest.
pub fn crd_manifest() -> CustomResourceDefinition {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/apidatasource.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Applies the checked-in CRD and waits until the server serves it.
pub async fn ensure_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crd_manifest();
    let name = crd.metadata.name.clone().unwrap_or_default();
    crds.patch(
        &name,
        &PatchParams::apply("sidekey-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
    let established = await_condition(crds, &name, conditions::is_crd_established());
    tokio::time::timeout(Duration::from_secs(30), established)
        .await
        .unwrap_or_else(|_| panic!("CRD {name} not Established within 30 s"))
        .unwrap_or_else(|e| panic!("watching CRD {name}: {e}"));
}

/// The label on every namespace the tests create: on a cluster of one's
/// own, `kubectl delete namespace -l sidekey.dev/test` removes them.
pub const TEST_NAMESPACE_LABEL: &str = "sidekey.dev/test";

/// Creates a fresh namespace `<prefix>-<random>` and returns its name.
/// It is left after the test, for a failure to be looked into.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = format!("{prefix}-{:08x}", rand::random::<u32>());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some([(TEST_NAMESPACE_LABEL.to_owned(), "true".to_owned())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
    name
}

/// Polls `f` every 100 ms until it returns `Some`, or panics naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The manifests in `examples/`, as (file name, YAML text), sorted.
pub fn example_manifests() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            (name, text)
        })
        .collect();
    out.sort();
    out
}

/// A token of ServiceAccount `ns/name`, from the TokenRequest API: it works
/// on every version the suite runs against, where token Secrets are no
/// longer created on their own from Kubernetes 1.24.
pub async fn service_account_token(client: &Client, ns: &str, name: &str) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            // Longer than any run; API servers may shorten it.
            expiration_seconds: Some(24 * 60 * 60),
            ..Default::default()
        }),
        ..Default::default()
    };
    let issued = api
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("requesting a token of ServiceAccount {ns}/{name}: {e}"));
    issued
        .status
        .and_then(|s| s.token)
        .unwrap_or_else(|| panic!("the TokenRequest for {ns}/{name} came back without a token"))
}
