//! The admission webhook against the real API server (Kubernetes 1.20, no
//! kubelet, no scheduler): what a pod that asks for datasources is stored
//! with, what is left alone, what is refused and with which message, the
//! pods a Deployment's ReplicaSet creates, the webhook down (fail closed),
//! and the injected sidecar run from the stored pod as a kubelet would run
//! it, proxying to real upstreams.
//!
//! Each test starts its own operator with the webhook on a free port of
//! 127.0.0.1, its own MutatingWebhookConfiguration `sidekey-<namespace>`
//! and managed certificates. With `--namespace` the configuration selects
//! only namespaces labelled `kubernetes.io/metadata.name=<namespace>`,
//! which Kubernetes 1.20 does not set by itself: each test labels its own,
//! so that the webhooks of tests running in parallel never see each
//! other's pods.
//!
//! Needs the test bed: run with `scripts/test`, or set
//! SIDEKEY_TEST_KUBECONFIG (see `scripts/kube-testbed.sh`). The end-to-end
//! test runs the sidecar binary: `cargo build -p sidekey-sidecar` first.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Pod, Secret, Volume};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sidekey_crds::names;
use support::{
    Bed, Operator, OperatorOptions, Sidecar, WAIT, ca_bundle, free_port, free_ports, http_get,
    sidecar_binary,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::task::AbortOnDropHandle;

/// The image the operator is told to inject.
const IMAGE: &str = "sidekey-sidecar:test";
/// Label Kubernetes 1.21+ puts on every namespace; the operator's
/// configuration selects on it.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// The webhook's name in the configuration, as the API server quotes it.
const WEBHOOK_NAME: &str = "inject.sidekey.dev";
/// Prefix of the annotations Kubernetes 1.19 to 1.24 write to mirror a
/// container's `seccompProfile`.
const SECCOMP_MIRROR_PREFIX: &str = "container.seccomp.security.alpha.kubernetes.io/";
/// A signature key of 32 characters: HS256 under `algorithm: Auto`.
const SIGNING_KEY: &str = "sig-0123456789abcdef0123456789ab";
const PAYMENTS_TOKEN: &str = "tok-payments-1";
const CRM_KEY: &str = "crm-key-1";
const CRM_KEY_ROTATED: &str = "crm-key-2";

// ---------------------------------------------------------------------------
// The webhook: a labelled namespace, an operator serving admissions, and the
// configuration the API server calls it through.

/// A fresh namespace of the bed, labelled with its own name.
async fn webhook_bed(prefix: &str) -> Bed {
    let bed = Bed::new(prefix).await;
    let mut labels = serde_json::Map::new();
    labels.insert(NAMESPACE_NAME_LABEL.to_owned(), bed.ns.clone().into());
    Api::<Namespace>::all(bed.client.clone())
        .patch(
            &bed.ns,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": labels } })),
        )
        .await
        .unwrap_or_else(|e| panic!("labelling namespace {}: {e}", bed.ns));
    bed
}

fn configuration_name(bed: &Bed) -> String {
    format!("sidekey-{}", bed.ns)
}

/// The operator's options that start the webhook on `port`, plus `more`
/// flags.
fn webhook_options(bed: &Bed, port: u16, more: &[String]) -> OperatorOptions {
    let mut extra_args = vec![
        "--webhook-listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--webhook-url".to_owned(),
        format!("https://127.0.0.1:{port}"),
        "--webhook-configuration".to_owned(),
        configuration_name(bed),
        "--sidecar-image".to_owned(),
        IMAGE.to_owned(),
    ];
    extra_args.extend_from_slice(more);
    OperatorOptions {
        extra_args,
        ..Default::default()
    }
}

/// Starts the operator and waits until the API server sends it pods: the
/// configuration exists with a caBundle, the operator is ready, and a
/// dry-run pod is refused by the webhook itself.
async fn start_webhook(bed: &Bed, port: u16, options: &OperatorOptions) -> Operator {
    let op = bed.start_operator(options.clone());
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(bed.client.clone());
    let name = configuration_name(bed);
    let url = format!("https://127.0.0.1:{port}/mutate");
    let mwc = sidekey_tests::wait_for(
        &format!("MutatingWebhookConfiguration {name} with a caBundle and url {url}"),
        WAIT,
        || async {
            let mwc = mwcs.get_opt(&name).await.ok().flatten()?;
            let webhook = mwc.webhooks.as_ref()?.first()?;
            let config = &webhook.client_config;
            let has_bundle = config.ca_bundle.as_ref().is_some_and(|b| !b.0.is_empty());
            (has_bundle && config.url.as_deref() == Some(url.as_str())).then_some(mwc)
        },
    )
    .await;
    let webhooks = mwc.webhooks.as_deref().unwrap_or_default();
    assert_eq!(webhooks.len(), 1, "{webhooks:?}");
    assert_eq!(webhooks[0].name, WEBHOOK_NAME);
    assert_eq!(webhooks[0].failure_policy.as_deref(), Some("Fail"));
    // Pods of this namespace only, those labelled for injection only.
    let selector = serde_json::to_value(&webhooks[0].namespace_selector).expect("json");
    let expressions = selector["matchExpressions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        expressions.contains(&json!({
            "key": NAMESPACE_NAME_LABEL, "operator": "In", "values": [bed.ns]
        })),
        "the configuration does not select namespace {} only: {selector}",
        bed.ns
    );
    let objects = serde_json::to_value(&webhooks[0].object_selector).expect("json");
    assert_eq!(
        objects["matchLabels"][names::INJECT_LABEL],
        "true",
        "{objects}"
    );

    let admin = op.admin_addr().await;
    sidekey_tests::wait_for("the operator's /readyz to answer 200", WAIT, || async {
        (http_get(admin, "/readyz").await?.0 == 200).then_some(())
    })
    .await;

    // The API server picks a new configuration up from a watch: wait until
    // it calls the webhook, which refuses a datasource that cannot exist.
    let probe = labelled_pod("webhook-probe", "sidekey-probe-absent");
    let probe: Pod = serde_json::from_value(probe).expect("pod");
    let pods = pods(bed);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    sidekey_tests::wait_for("the API server to call the webhook", WAIT, || async {
        match pods.create(&dry_run, &probe).await {
            Err(kube::Error::Api(status)) => (status.message.contains(WEBHOOK_NAME)
                && status.message.contains("sidekey-probe-absent"))
            .then_some(()),
            _ => None,
        }
    })
    .await;
    op
}

/// Stops the operator, deletes its configuration (the leader would put a
/// deleted one back), and checks the operator was never refused.
async fn finish(bed: &Bed, mut op: Operator) {
    op.kill().await;
    Api::<MutatingWebhookConfiguration>::all(bed.client.clone())
        .delete(&configuration_name(bed), &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("deleting the configuration: {e}"));
    assert_never_forbidden(&op);
}

/// Asserts the API server never refused the operator anything: the roles
/// of `operator/rbac.yaml` are enough for all it did.
fn assert_never_forbidden(op: &Operator) {
    let logs = op.logs();
    let refusals: Vec<&str> = logs
        .lines()
        .filter(|line| line.to_ascii_lowercase().contains("forbidden"))
        .collect();
    assert!(
        refusals.is_empty(),
        "the API server refused the operator:\n{}",
        refusals.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Pods.

fn pods(bed: &Bed) -> Api<Pod> {
    Api::namespaced(bed.client.clone(), &bed.ns)
}

/// A pod of one app container, neither labelled nor annotated.
fn plain_pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": { "app": "shop" } },
        "spec": {
            "containers": [{
                "name": "app",
                "image": "shop:1",
                "env": [{ "name": "APP_MODE", "value": "prod" }],
            }],
        },
    })
}

/// The same pod, labelled for injection and naming `datasources`.
fn labelled_pod(name: &str, datasources: &str) -> Value {
    let mut pod = plain_pod(name);
    pod["metadata"]["labels"][names::INJECT_LABEL] = "true".into();
    pod["metadata"]["annotations"] = json!({});
    pod["metadata"]["annotations"][names::DATASOURCES_ANNOTATION] = datasources.into();
    pod
}

/// Creates the pod: the stored pod, or the API server's message.
async fn create(bed: &Bed, pod: &Value) -> Result<Pod, String> {
    let typed: Pod = serde_json::from_value(pod.clone()).expect("a pod");
    match pods(bed).create(&PostParams::default(), &typed).await {
        Ok(stored) => Ok(stored),
        Err(kube::Error::Api(status)) => Err(status.message.clone()),
        Err(e) => panic!("creating pod {}: {e}", pod["metadata"]["name"]),
    }
}

/// Creates the pod, which must be admitted, and reads it back.
async fn admitted(bed: &Bed, pod: &Value) -> Pod {
    let name = pod["metadata"]["name"].as_str().expect("pod name");
    if let Err(message) = create(bed, pod).await {
        panic!("pod {name} was refused: {message}");
    }
    pods(bed).get(name).await.expect("reading the stored pod")
}

/// Creates the pod, which must be refused, and returns the message.
async fn refused(bed: &Bed, pod: &Value) -> String {
    let name = pod["metadata"]["name"].as_str().expect("pod name");
    let message = match create(bed, pod).await {
        Ok(stored) => panic!(
            "pod {name} was admitted: {}",
            serde_json::to_string_pretty(&stored).unwrap_or_default()
        ),
        Err(message) => message,
    };
    assert!(
        pods(bed).get_opt(name).await.expect("reading").is_none(),
        "refused pod {name} is stored"
    );
    message
}

fn spec_containers(pod: &Pod) -> &[Container] {
    &pod.spec.as_ref().expect("spec").containers
}

fn spec_volumes(pod: &Pod) -> &[Volume] {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default()
}

fn annotations(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.annotations.clone().unwrap_or_default()
}

/// The value of variable `name` in container `c`, which must set it once.
fn env_value(c: &Container, name: &str) -> Option<String> {
    let matching: Vec<_> = c.env.iter().flatten().filter(|e| e.name == name).collect();
    assert!(
        matching.len() <= 1,
        "{} sets {name} twice: {:?}",
        c.name,
        c.env
    );
    matching
        .first()
        .map(|e| e.value.clone().unwrap_or_default())
}

/// The `sidekey.dev/status` annotation, parsed.
fn status_of(pod: &Pod) -> Value {
    let text = annotations(pod)
        .get(names::STATUS_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| panic!("no {} annotation", names::STATUS_ANNOTATION));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("status annotation {text:?}: {e}"))
}

/// Asserts the pod was injected with a sidecar for `datasources`
/// (`(name, port)`, in order) and returns the sidecar container.
fn assert_injected(pod: &Pod, datasources: &[(&str, u16)]) -> Container {
    let containers = spec_containers(pod);
    let sidecar = containers.first().expect("a container").clone();
    assert_eq!(
        sidecar.name,
        names::SIDECAR_CONTAINER,
        "the sidecar is not the first container: {:?}",
        containers.iter().map(|c| &c.name).collect::<Vec<_>>()
    );
    assert_eq!(
        containers
            .iter()
            .filter(|c| c.name == names::SIDECAR_CONTAINER)
            .count(),
        1
    );
    let expected: Vec<Value> = datasources
        .iter()
        .map(|(name, port)| json!({ "name": name, "port": port }))
        .collect();
    assert_eq!(
        status_of(pod),
        json!({ "sidecar": "container", "image": IMAGE, "datasources": expected })
    );
    let spec = pod.spec.as_ref().expect("spec");
    for c in containers[1..]
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for (name, port) in datasources {
            assert_eq!(
                env_value(c, &names::url_env_name(name)),
                Some(format!("http://127.0.0.1:{port}")),
                "container {}",
                c.name
            );
        }
    }
    sidecar
}

/// Asserts every field `sent` has is `stored` with the same value, lists
/// of the same length (the API server's defaults may add fields to
/// objects, nothing may add items to lists).
fn assert_subset(sent: &Value, stored: &Value, path: &str) {
    match (sent, stored) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let Some(other) = b.get(key) else {
                    panic!("{path}/{key}: sent {value}, not stored");
                };
                assert_subset(value, other, &format!("{path}/{key}"));
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{path}: sent {sent}, stored {stored}");
            for (i, (value, other)) in a.iter().zip(b).enumerate() {
                assert_subset(value, other, &format!("{path}/{i}"));
            }
        }
        _ => assert_eq!(sent, stored, "{path}"),
    }
}

// ---------------------------------------------------------------------------
// Datasources.

/// A datasource without authentication, for tests that need one to exist.
async fn open_datasource(bed: &Bed, name: &str) {
    bed.create_datasource(&format!(
        "metadata: {{ name: {name} }}\nspec: {{ url: 'https://{name}.internal' }}\n"
    ))
    .await;
}

/// `payments` (BearerToken, signature, default header and query
/// parameter, its own CA) and `crm` (an API key in a header, a default
/// header), with their Secrets. Each Secret holds a key no datasource
/// references, and the signature key and the API key share a Secret.
async fn shop_datasources(bed: &Bed, payments_url: &str, crm_url: &str, ca_pem: &str) {
    bed.put_secret(
        "payments-creds",
        &[("token", PAYMENTS_TOKEN), ("unused", "never-mounted")],
    )
    .await;
    bed.put_secret("payments-ca", &[("ca.crt", ca_pem)]).await;
    shared_keys(bed, CRM_KEY).await;
    bed.create_datasource(&format!(
        r#"
metadata: {{ name: payments }}
spec:
  url: {payments_url}/v2
  headers: [ {{ name: X-Tenant, value: acme }} ]
  queryParameters: [ {{ name: region, value: eu }} ]
  signature: {{ secretRef: {{ name: shared-keys, key: signing-key }} }}
  tls: {{ caCertificateSecretRef: {{ name: payments-ca, key: ca.crt }} }}
  authentication:
    type: BearerToken
    bearerToken: {{ tokenSecretRef: {{ name: payments-creds, key: token }} }}
"#
    ))
    .await;
    bed.create_datasource(&format!(
        r#"
metadata: {{ name: crm }}
spec:
  url: {crm_url}
  headers: [ {{ name: X-Client, value: shop }} ]
  authentication:
    type: ApiKey
    apiKey: {{ key: X-Api-Key, addTo: Header, valueSecretRef: {{ name: shared-keys, key: api-key }} }}
"#
    ))
    .await;
}

/// The Secret both datasources read a key of, with `api_key` for crm.
async fn shared_keys(bed: &Bed, api_key: &str) {
    bed.put_secret(
        "shared-keys",
        &[
            ("signing-key", SIGNING_KEY),
            ("api-key", api_key),
            ("other", "never-mounted"),
        ],
    )
    .await;
}

/// A pod of an app container (its own variable, port, volume and mount),
/// a worker that set a stale `SIDEKEY_CRM_URL` itself, and an init
/// container, asking for payments and crm.
fn shop_pod(name: &str, annotation: &str) -> Value {
    let mut pod = labelled_pod(name, annotation);
    pod["metadata"]["annotations"]["team"] = "shop".into();
    pod["spec"] = json!({
        "initContainers": [{ "name": "migrate", "image": "shop-migrate:1" }],
        "containers": [
            {
                "name": "app",
                "image": "shop:1",
                "env": [{ "name": "APP_MODE", "value": "prod" }],
                "ports": [{ "containerPort": 8080 }],
                "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
            },
            {
                "name": "worker",
                "image": "shop-worker:1",
                "env": [{ "name": "SIDEKEY_CRM_URL", "value": "http://stale.invalid" }],
            },
        ],
        "volumes": [{ "name": "data", "emptyDir": {} }],
    });
    pod
}

// ---------------------------------------------------------------------------
// 1. What an injected pod is stored with.

#[tokio::test]
async fn a_labelled_pod_naming_two_datasources_is_stored_with_the_sidecar_volumes_and_urls() {
    let bed = webhook_bed("wh-inject").await;
    let ca = ca_bundle(1);
    shop_datasources(
        &bed,
        "https://payments.internal:8443",
        "http://crm.internal",
        &ca,
    )
    .await;
    let port = free_port();
    let op = start_webhook(&bed, port, &webhook_options(&bed, port, &[])).await;

    let sent = shop_pod("web", "payments,crm:15007");
    let pod = admitted(&bed, &sent).await;
    let sidecar = assert_injected(&pod, &[("payments", 15000), ("crm", 15007)]);
    let spec = pod.spec.as_ref().expect("spec");

    // The pod's own containers come after the sidecar, in order, with
    // nothing added but the URLs: no mount, no port, no other variable.
    let names_of = |list: &[Container]| list.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    assert_eq!(names_of(&spec.containers), ["sidekey", "app", "worker"]);
    let app = &spec.containers[1];
    let worker = &spec.containers[2];
    let migrate = &spec.init_containers.as_deref().expect("init containers")[0];
    let env_names = |c: &Container| {
        c.env
            .iter()
            .flatten()
            .map(|e| e.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        env_names(app),
        ["APP_MODE", "SIDEKEY_PAYMENTS_URL", "SIDEKEY_CRM_URL"]
    );
    assert_eq!(env_value(app, "APP_MODE").as_deref(), Some("prod"));
    // The stale value the worker set is replaced, not doubled.
    assert_eq!(
        BTreeSet::from_iter(env_names(worker)),
        BTreeSet::from([
            "SIDEKEY_CRM_URL".to_owned(),
            "SIDEKEY_PAYMENTS_URL".to_owned()
        ])
    );
    assert_eq!(
        env_names(migrate),
        ["SIDEKEY_PAYMENTS_URL", "SIDEKEY_CRM_URL"]
    );
    let mounts = |c: &Container| {
        c.volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.clone(), m.mount_path.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(mounts(app), [("data".to_owned(), "/data".to_owned())]);
    assert!(worker.volume_mounts.is_none(), "{:?}", worker.volume_mounts);
    assert!(
        migrate.volume_mounts.is_none(),
        "{:?}",
        migrate.volume_mounts
    );
    assert_eq!(app.ports.as_ref().map(Vec::len), Some(1));
    assert!(worker.ports.is_none());

    // The sidecar: image, command and the arguments of the sidecar's CLI.
    assert_eq!(sidecar.image.as_deref(), Some(IMAGE));
    assert_eq!(
        sidecar.command.as_deref(),
        Some(&[names::SIDECAR_BINARY.to_owned()][..])
    );
    assert_eq!(
        sidecar.args.as_deref().unwrap_or_default(),
        [
            "--secrets-dir=/var/run/secrets/sidekey",
            "--admin-listen=0.0.0.0:15090",
            "--log-format=json",
            "--log-level=info",
            "--datasource=/etc/sidekey/datasources/payments/datasource.yaml",
            "--listen=127.0.0.1:15000",
            "--datasource=/etc/sidekey/datasources/crm/datasource.yaml",
            "--listen=127.0.0.1:15007",
        ]
    );

    // Security settings.
    let security = sidecar.security_context.as_ref().expect("securityContext");
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.run_as_user, Some(names::SIDECAR_UID));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_owned()])
    );
    assert!(security.privileged != Some(true));
    assert_eq!(
        security.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );

    // Resources, from the flags' defaults.
    let resources = sidecar.resources.as_ref().expect("resources");
    let quantities =
        |m: &Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| {
            m.iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect::<BTreeMap<_, _>>()
        };
    assert_eq!(
        quantities(&resources.requests),
        BTreeMap::from([
            ("cpu".into(), "10m".into()),
            ("memory".into(), "16Mi".into())
        ])
    );
    assert_eq!(
        quantities(&resources.limits),
        BTreeMap::from([("cpu".into(), "1".into()), ("memory".into(), "64Mi".into())])
    );

    // Probes on the admin port, which the sidecar declares.
    for (probe, path) in [
        (&sidecar.startup_probe, "/healthz"),
        (&sidecar.readiness_probe, "/readyz"),
        (&sidecar.liveness_probe, "/healthz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.clone())
            .expect("an httpGet probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            serde_json::to_value(&get.port).expect("json"),
            json!(names::SIDECAR_ADMIN_PORT)
        );
    }
    let ports: Vec<i32> = sidecar
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(ports, [i32::from(names::SIDECAR_ADMIN_PORT)]);

    // Volumes: the pod's own, one per ConfigMap, one per Secret with
    // exactly the keys the datasources reference.
    let volumes: BTreeMap<String, Value> = spec_volumes(&pod)
        .iter()
        .map(|v| {
            let mut value = serde_json::to_value(v).expect("json");
            value.as_object_mut().expect("object").remove("name");
            (v.name.clone(), value)
        })
        .collect();
    let config = |cm: &str| {
        json!({ "configMap": {
            "name": cm,
            "items": [{ "key": "datasource.yaml", "path": "datasource.yaml" }],
            "defaultMode": 420,
        }})
    };
    let secret = |name: &str, keys: &[&str]| {
        let items: Vec<Value> = keys
            .iter()
            .map(|k| json!({ "key": k, "path": k }))
            .collect();
        json!({ "secret": { "secretName": name, "items": items, "defaultMode": 420 } })
    };
    let expected_volumes = BTreeMap::from([
        ("data".to_owned(), json!({ "emptyDir": {} })),
        (
            "sidekey-config-payments".to_owned(),
            config("payments-sidekey"),
        ),
        ("sidekey-config-crm".to_owned(), config("crm-sidekey")),
        (
            "sidekey-secret-payments-creds".to_owned(),
            secret("payments-creds", &["token"]),
        ),
        (
            "sidekey-secret-payments-ca".to_owned(),
            secret("payments-ca", &["ca.crt"]),
        ),
        (
            "sidekey-secret-shared-keys".to_owned(),
            secret("shared-keys", &["api-key", "signing-key"]),
        ),
    ]);
    assert_eq!(volumes, expected_volumes);

    // Mounted into the sidecar only, read-only, where its arguments say.
    let sidecar_mounts: BTreeMap<String, (String, Option<bool>)> = sidecar
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.clone(), (m.mount_path.clone(), m.read_only)))
        .collect();
    let ro = |path: &str| (path.to_owned(), Some(true));
    assert_eq!(
        sidecar_mounts,
        BTreeMap::from([
            (
                "sidekey-config-payments".to_owned(),
                ro("/etc/sidekey/datasources/payments")
            ),
            (
                "sidekey-config-crm".to_owned(),
                ro("/etc/sidekey/datasources/crm")
            ),
            (
                "sidekey-secret-payments-creds".to_owned(),
                ro("/var/run/secrets/sidekey/payments-creds")
            ),
            (
                "sidekey-secret-payments-ca".to_owned(),
                ro("/var/run/secrets/sidekey/payments-ca")
            ),
            (
                "sidekey-secret-shared-keys".to_owned(),
                ro("/var/run/secrets/sidekey/shared-keys")
            ),
        ])
    );

    // The pod's own metadata is kept; the webhook adds only its status
    // (Kubernetes 1.19 to 1.24 mirror a container's seccompProfile into an
    // annotation of their own).
    let mut kept = annotations(&pod);
    kept.retain(|k, _| !k.starts_with(SECCOMP_MIRROR_PREFIX));
    assert_eq!(
        kept.keys().map(String::as_str).collect::<Vec<_>>(),
        ["sidekey.dev/datasources", "sidekey.dev/status", "team"]
    );
    assert_eq!(kept["team"], "shop");
    assert_eq!(kept[names::DATASOURCES_ANNOTATION], "payments,crm:15007");
    finish(&bed, op).await;
}

// ---------------------------------------------------------------------------
// 2. A pod that does not opt in is left alone.

#[tokio::test]
async fn an_unlabelled_pod_is_stored_exactly_as_sent() {
    let bed = webhook_bed("wh-unlabelled").await;
    open_datasource(&bed, "payments").await;
    let port = free_port();
    let op = start_webhook(&bed, port, &webhook_options(&bed, port, &[])).await;

    // No label at all, though it names a datasource; and the label set
    // to something else than "true".
    let mut unlabelled = shop_pod("unlabelled", "payments");
    unlabelled["metadata"]["labels"]
        .as_object_mut()
        .expect("labels")
        .remove(names::INJECT_LABEL);
    let mut opted_out = shop_pod("opted-out", "payments");
    opted_out["metadata"]["labels"][names::INJECT_LABEL] = "false".into();

    for sent in [unlabelled, opted_out] {
        let stored = admitted(&bed, &sent).await;
        let stored_json = serde_json::to_value(&stored).expect("json");
        assert_subset(&sent["metadata"], &stored_json["metadata"], "metadata");
        assert_subset(&sent["spec"], &stored_json["spec"], "spec");

        // Nothing added where defaults cannot explain it.
        let typed: Pod = serde_json::from_value(sent.clone()).expect("pod");
        let sent_spec = typed.spec.as_ref().expect("spec");
        let spec = stored.spec.as_ref().expect("spec");
        assert_eq!(annotations(&stored), annotations(&typed));
        assert_eq!(stored.metadata.labels, typed.metadata.labels);
        for (list, sent_list) in [
            (&spec.containers, &sent_spec.containers),
            (
                spec.init_containers.as_ref().expect("init containers"),
                sent_spec.init_containers.as_ref().expect("init containers"),
            ),
        ] {
            assert_eq!(list.len(), sent_list.len());
            for (c, s) in list.iter().zip(sent_list) {
                assert_eq!(c.name, s.name);
                assert_eq!(c.env, s.env, "container {}", c.name);
                assert_eq!(c.volume_mounts, s.volume_mounts, "container {}", c.name);
                assert_eq!(
                    c.ports.as_ref().map(Vec::len),
                    s.ports.as_ref().map(Vec::len)
                );
                assert_eq!(c.args, s.args);
            }
        }
        let volume_names: Vec<&str> = spec_volumes(&stored)
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volume_names, ["data"]);
        assert!(!annotations(&stored).contains_key(names::STATUS_ANNOTATION));
    }
    finish(&bed, op).await;
}

// ---------------------------------------------------------------------------
// 3. Datasources that are not there.

#[tokio::test]
async fn a_pod_naming_a_missing_datasource_or_one_of_another_namespace_is_refused() {
    let bed = webhook_bed("wh-missing").await;
    open_datasource(&bed, "payments").await;
    // A datasource by that name exists, but in another namespace.
    let other = sidekey_tests::namespace(&bed.client, "wh-other").await;
    let mut elsewhere: sidekey_crds::ApiDatasource = serde_saphyr::from_str(
        "metadata: { name: elsewhere }\nspec: { url: 'https://elsewhere.internal' }\n",
    )
    .expect("manifest");
    elsewhere.metadata.namespace = Some(other.clone());
    Api::<sidekey_crds::ApiDatasource>::namespaced(bed.client.clone(), &other)
        .create(&PostParams::default(), &elsewhere)
        .await
        .expect("creating the datasource of the other namespace");
    let port = free_port();
    let op = start_webhook(&bed, port, &webhook_options(&bed, port, &[])).await;

    let message = refused(&bed, &labelled_pod("ghostly", "payments,ghost")).await;
    assert!(message.contains(WEBHOOK_NAME), "{message}");
    assert!(message.contains(names::DATASOURCES_ANNOTATION), "{message}");
    assert!(
        message.contains("\"ghost\"") && message.contains("does not exist"),
        "{message}"
    );
    assert!(message.contains(&bed.ns), "{message}");
    assert!(
        !message.contains("\"payments\""),
        "names one that exists: {message}"
    );

    let message = refused(&bed, &labelled_pod("borrower", "elsewhere")).await;
    assert!(message.contains(WEBHOOK_NAME), "{message}");
    assert!(
        message.contains("\"elsewhere\"") && message.contains("does not exist"),
        "{message}"
    );
    assert!(message.contains(&format!("{:?}", bed.ns)), "{message}");

    // The datasource that exists is enough on its own.
    let pod = admitted(&bed, &labelled_pod("fine", "payments")).await;
    assert_injected(&pod, &[("payments", 15000)]);
    finish(&bed, op).await;
}

// ---------------------------------------------------------------------------
// 4. Malformed annotations.

#[tokio::test]
async fn each_malformed_datasources_annotation_is_refused_naming_the_annotation() {
    let bed = webhook_bed("wh-malformed").await;
    open_datasource(&bed, "a").await;
    open_datasource(&bed, "b").await;
    let port = free_port();
    let op = start_webhook(&bed, port, &webhook_options(&bed, port, &[])).await;

    // The app container declares port 8080.
    let pod = |name: &str, annotation: &str| {
        let mut pod = labelled_pod(name, annotation);
        pod["spec"]["containers"][0]["ports"] = json!([{ "name": "http", "containerPort": 8080 }]);
        pod
    };
    let cases = [
        ("empty-entry", "a,,b", vec!["entry 2 is empty"]),
        (
            "port-not-number",
            "a:http",
            vec!["\"a:http\"", "not a number"],
        ),
        (
            "port-too-big",
            "a:70000",
            vec!["\"a:70000\"", "above 65535"],
        ),
        ("name-twice", "a,a", vec!["\"a\" twice"]),
        (
            "same-port",
            "a:15005,b:15005",
            vec!["\"a\"", "\"b\"", "port 15005"],
        ),
        (
            "container-port",
            "a:8080",
            vec!["port 8080", "container \"app\""],
        ),
    ];
    for (name, annotation, expected) in cases {
        let message = refused(&bed, &pod(name, annotation)).await;
        assert!(message.contains(WEBHOOK_NAME), "{annotation:?}: {message}");
        assert!(
            message.contains(names::DATASOURCES_ANNOTATION),
            "{annotation:?}: {message}"
        );
        for part in expected {
            assert!(
                message.contains(part),
                "{annotation:?}: no {part:?} in {message}"
            );
        }
    }

    // The same pod with a well-formed annotation is admitted: the
    // refusals above are the annotations' own.
    let stored = admitted(&bed, &pod("well-formed", "a,b:15005")).await;
    assert_injected(&stored, &[("a", 15000), ("b", 15005)]);
    finish(&bed, op).await;
}

// ---------------------------------------------------------------------------
// 5. Idempotence.

#[tokio::test]
async fn an_injected_pod_created_again_gains_nothing() {
    let bed = webhook_bed("wh-again").await;
    let ca = ca_bundle(1);
    shop_datasources(
        &bed,
        "https://payments.internal",
        "http://crm.internal",
        &ca,
    )
    .await;
    let port = free_port();
    let op = start_webhook(&bed, port, &webhook_options(&bed, port, &[])).await;

    let first = admitted(&bed, &shop_pod("first", "payments,crm")).await;
    assert_injected(&first, &[("payments", 15000), ("crm", 15001)]);

    // Its stored form, as `kubectl get -o yaml` would save it, under a new
    // name.
    let mut again = serde_json::to_value(&first).expect("json");
    let metadata = again["metadata"].as_object_mut().expect("metadata");
    metadata.retain(|k, _| k == "labels" || k == "annotations");
    metadata.insert("name".into(), "second".into());
    again.as_object_mut().expect("pod").remove("status");
    let second = admitted(&bed, &again).await;

    let (a, b) = (
        first.spec.as_ref().expect("spec"),
        second.spec.as_ref().expect("spec"),
    );
    assert_eq!(b.containers, a.containers);
    assert_eq!(b.init_containers, a.init_containers);
    assert_eq!(b.volumes, a.volumes);
    assert_eq!(annotations(&second), annotations(&first));
    finish(&bed, op).await;
}

// ---------------------------------------------------------------------------
// 6. Pods made by a controller.

#[tokio::test]
async fn pods_a_deployment_creates_are_injected() {
    let bed = webhook_bed("wh-deploy").await;
    open_datasource(&bed, "payments").await;
    let port = free_port();
    let op = start_webhook(&bed, port, &webhook_options(&bed, port, &[])).await;

    let mut template_labels = serde_json::Map::new();
    template_labels.insert("app".into(), "web".into());
    template_labels.insert(names::INJECT_LABEL.into(), "true".into());
    let mut template_annotations = serde_json::Map::new();
    template_annotations.insert(names::DATASOURCES_ANNOTATION.into(), "payments".into());
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": template_labels, "annotations": template_annotations },
                "spec": { "containers": [{ "name": "web", "image": "web:1" }] },
            },
        },
    }))
    .expect("deployment");
    let deployments: Api<Deployment> = Api::namespaced(bed.client.clone(), &bed.ns);
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("creating the Deployment");

    let api = pods(&bed);
    let made = sidekey_tests::wait_for(
        "the Deployment's 2 pods (kube-controller-manager creates them)",
        WAIT,
        || async {
            let list = api
                .list(&ListParams::default().labels("app=web"))
                .await
                .ok()?;
            (list.items.len() >= 2).then_some(list.items)
        },
    )
    .await;
    assert_eq!(made.len(), 2);
    for pod in &made {
        let name = pod.metadata.name.clone().unwrap_or_default();
        assert!(
            pod.metadata
                .generate_name
                .as_deref()
                .is_some_and(|g| g.starts_with("web-")),
            "{name}: {:?}",
            pod.metadata.generate_name
        );
        let owner = pod
            .metadata
            .owner_references
            .as_deref()
            .and_then(|o| o.first())
            .expect("an owner");
        assert_eq!(owner.kind, "ReplicaSet");
        assert_injected(pod, &[("payments", 15000)]);
        let names_of: Vec<&str> = spec_containers(pod)
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names_of, ["sidekey", "web"], "{name}");
    }
    // The Deployment's own template is not touched.
    let stored = deployments
        .get("web")
        .await
        .expect("reading the Deployment");
    let template = stored.spec.template.spec.expect("template spec");
    assert_eq!(template.containers.len(), 1);
    assert!(template.volumes.is_none());
    finish(&bed, op).await;
}

// ---------------------------------------------------------------------------
// 7. The webhook down.

#[tokio::test]
async fn with_the_webhook_down_labelled_pods_are_refused_and_others_admitted() {
    let bed = webhook_bed("wh-down").await;
    open_datasource(&bed, "payments").await;
    let port = free_port();
    let options = webhook_options(&bed, port, &[]);
    let mut op = start_webhook(&bed, port, &options).await;
    let before = admitted(&bed, &labelled_pod("before", "payments")).await;
    assert_injected(&before, &[("payments", 15000)]);

    op.kill().await;
    let plain = admitted(&bed, &plain_pod("plain-while-down")).await;
    assert_eq!(spec_containers(&plain).len(), 1);
    assert!(!annotations(&plain).contains_key(names::STATUS_ANNOTATION));
    // failurePolicy: Fail: without its sidecar the pod would start without
    // its credentials, so it is not admitted at all.
    let message = refused(&bed, &labelled_pod("labelled-while-down", "payments")).await;
    assert!(
        message.contains(WEBHOOK_NAME) && message.contains("failed calling webhook"),
        "{message}"
    );
    assert_never_forbidden(&op);
    drop(op);

    // Started again (same namespace, same flags), it admits them again.
    let op = start_webhook(&bed, port, &options).await;
    let after = labelled_pod("labelled-after", "payments");
    let deadline = tokio::time::Instant::now() + WAIT;
    let stored = loop {
        match create(&bed, &after).await {
            Ok(stored) => break stored,
            Err(message) if tokio::time::Instant::now() >= deadline => {
                panic!("the webhook is back, yet a labelled pod is refused: {message}")
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    };
    assert_injected(&stored, &[("payments", 15000)]);
    finish(&bed, op).await;
}

// ---------------------------------------------------------------------------
// 8. End to end: the sidecar as the stored pod describes it.

/// One request as an upstream saw it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    query: String,
    headers: HeaderMap,
}

/// A real upstream on 127.0.0.1 that records each request and answers
/// 200; HTTPS when given a TLS configuration.
struct Upstream {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Stops serving when dropped.
    _task: AbortOnDropHandle<()>,
}

impl Upstream {
    async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the upstream");
        let port = listener.local_addr().expect("address").port();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let record = record.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                serve_upstream(tls, record).await;
                            }
                        }
                        None => serve_upstream(stream, record).await,
                    }
                });
            }
        });
        Self {
            url: format!("{scheme}://127.0.0.1:{port}"),
            seen,
            _task: AbortOnDropHandle::new(task),
        }
    }

    fn last(&self) -> Option<Seen> {
        self.seen.lock().expect("lock").last().cloned()
    }
}

async fn serve_upstream<S>(stream: S, record: Arc<Mutex<Vec<Seen>>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let record = record.clone();
        async move {
            record.lock().expect("lock").push(Seen {
                path: request.uri().path().to_owned(),
                query: request.uri().query().unwrap_or_default().to_owned(),
                headers: request.headers().clone(),
            });
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                b"{\"upstream\":\"ok\"}",
            ))))
        }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// A CA (its PEM) and a server configuration for 127.0.0.1 signed by it.
fn upstream_pki() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sidekey webhook test upstream CA");
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key")).expect("CA");
    let key = KeyPair::generate().expect("server key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("server params")
        .signed_by(&key, &ca)
        .expect("server certificate");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server configuration");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (ca.pem(), Arc::new(config))
}

/// What an app does: a GET to `url`, with a header of its own and a forged
/// credential; (status, body).
async fn app_get(url: &str, forged: (&str, &str)) -> (u16, String) {
    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let request = Request::get(url)
        .header("x-request-id", "app-1")
        .header(forged.0, forged.1)
        .body(Empty::new())
        .expect("request");
    let response = tokio::time::timeout(WAIT, client.request(request))
        .await
        .unwrap_or_else(|_| panic!("GET {url} timed out"))
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Writes `bytes` to `path` as the kubelet updates a volume: the new file
/// appears whole, never half written.
fn write_atomically(path: &Path, bytes: &[u8]) {
    let dir = path.parent().expect("a directory");
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let file = path.file_name().expect("a file name").to_string_lossy();
    let temporary = dir.join(format!(".{file}.tmp"));
    std::fs::write(&temporary, bytes).unwrap_or_else(|e| panic!("{}: {e}", temporary.display()));
    std::fs::rename(&temporary, path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Lays volume `volume` of the pod out under `root` at the sidecar's
/// mount path, as the kubelet would: only the listed items, with the
/// values the API holds now. Returns the files written.
async fn lay_out_volume(
    bed: &Bed,
    pod: &Pod,
    sidecar: &Container,
    volume: &str,
    root: &Path,
) -> Vec<PathBuf> {
    let mount = sidecar
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume)
        .unwrap_or_else(|| panic!("the sidecar does not mount {volume}"));
    let dir = root.join(mount.mount_path.trim_start_matches('/'));
    let source = spec_volumes(pod)
        .iter()
        .find(|v| v.name == volume)
        .unwrap_or_else(|| panic!("the pod has no volume {volume}"));
    let mut files = Vec::new();
    if let Some(cm) = &source.config_map {
        let stored: ConfigMap = bed
            .configmaps()
            .get(&cm.name)
            .await
            .unwrap_or_else(|e| panic!("ConfigMap {} of volume {volume}: {e}", cm.name));
        let data = stored.data.unwrap_or_default();
        for item in cm.items.iter().flatten() {
            let value = data
                .get(&item.key)
                .unwrap_or_else(|| panic!("ConfigMap {} has no key {}", cm.name, item.key));
            let path = dir.join(&item.path);
            write_atomically(&path, value.as_bytes());
            files.push(path);
        }
    } else if let Some(secret) = &source.secret {
        let name = secret.secret_name.clone().expect("secretName");
        let stored: Option<Secret> = bed
            .secrets()
            .get_opt(&name)
            .await
            .expect("reading a Secret");
        let Some(stored) = stored else {
            assert_eq!(
                secret.optional,
                Some(true),
                "Secret {name} of volume {volume} is missing"
            );
            return files;
        };
        let data = stored.data.unwrap_or_default();
        for item in secret.items.iter().flatten() {
            let value = data
                .get(&item.key)
                .unwrap_or_else(|| panic!("Secret {name} has no key {}", item.key));
            let path = dir.join(&item.path);
            write_atomically(&path, &value.0);
            files.push(path);
        }
    } else {
        panic!("volume {volume} is neither a ConfigMap nor a Secret: {source:?}");
    }
    files
}

/// The sidecar's arguments with every absolute path moved under `root`.
fn args_under(root: &Path, args: &[String]) -> Vec<String> {
    args.iter()
        .map(|arg| {
            for flag in ["--secrets-dir=", "--datasource="] {
                if let Some(path) = arg.strip_prefix(flag) {
                    assert!(path.starts_with('/'), "{arg}: not an absolute path");
                    return format!(
                        "{flag}{}",
                        root.join(path.trim_start_matches('/')).display()
                    );
                }
            }
            arg.clone()
        })
        .collect()
}

#[derive(serde::Deserialize, Debug)]
struct SignatureClaims {
    iss: String,
    iat: u64,
    exp: u64,
}

/// Verifies the signature JWT with the key; returns its claims.
fn verify_signature(jwt: &str, key: &str) -> SignatureClaims {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&[names::DEFAULT_SIGNATURE_ISSUER]);
    validation.set_required_spec_claims(&["exp", "iss"]);
    let decoding = DecodingKey::from_secret(key.as_bytes()).expect("key");
    let data = decode::<SignatureClaims>(jwt, &decoding, &validation)
        .unwrap_or_else(|e| panic!("signature {jwt:?} does not verify: {e}"));
    assert_eq!(data.header.alg, Algorithm::HS256);
    // The check can fail: another key does not verify it.
    let other = DecodingKey::from_secret(b"another-key-0123456789abcdef0123").expect("key");
    assert!(decode::<SignatureClaims>(jwt, &other, &validation).is_err());
    data.claims
}

fn header<'a>(seen: &'a Seen, name: &str) -> Vec<&'a str> {
    seen.headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().expect("ascii header"))
        .collect()
}

#[tokio::test]
async fn the_sidecar_run_from_the_stored_pod_proxies_each_datasource_with_its_credentials() {
    let binary = sidecar_binary();
    let bed = webhook_bed("wh-e2e").await;
    let (ca_pem, tls) = upstream_pki();
    let payments_upstream = Upstream::start(Some(tls)).await;
    let crm_upstream = Upstream::start(None).await;
    shop_datasources(&bed, &payments_upstream.url, &crm_upstream.url, &ca_pem).await;

    let [port, admin_port, payments_port, crm_port] = free_ports(4)[..] else {
        unreachable!()
    };
    let options = webhook_options(
        &bed,
        port,
        &["--sidecar-admin-port".to_owned(), admin_port.to_string()],
    );
    let op = start_webhook(&bed, port, &options).await;
    // The operator (the leader) reconciles them into their ConfigMaps.
    bed.wait_ready("payments", "True", "Reconciled").await;
    bed.wait_ready("crm", "True", "Reconciled").await;
    let annotation = format!("payments:{payments_port},crm:{crm_port}");
    let pod = admitted(&bed, &shop_pod("shop", &annotation)).await;
    let sidecar = assert_injected(&pod, &[("payments", payments_port), ("crm", crm_port)]);
    assert_eq!(
        sidecar.command.as_deref(),
        Some(&[names::SIDECAR_BINARY.to_owned()][..])
    );

    // The kubelet's share: every volume of the sidecar on disk, at its
    // mount path under a temporary root.
    let root = tempfile::tempdir().expect("tempdir");
    let mut laid_out = Vec::new();
    for mount in sidecar.volume_mounts.iter().flatten() {
        laid_out.extend(lay_out_volume(&bed, &pod, &sidecar, &mount.name, root.path()).await);
    }
    let relative: BTreeSet<String> = laid_out
        .iter()
        .map(|p| {
            p.strip_prefix(root.path())
                .expect("under root")
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(
        relative,
        BTreeSet::from(
            [
                "etc/sidekey/datasources/payments/datasource.yaml",
                "etc/sidekey/datasources/crm/datasource.yaml",
                "var/run/secrets/sidekey/payments-creds/token",
                "var/run/secrets/sidekey/payments-ca/ca.crt",
                "var/run/secrets/sidekey/shared-keys/signing-key",
                "var/run/secrets/sidekey/shared-keys/api-key",
            ]
            .map(str::to_owned)
        )
    );

    let args = args_under(root.path(), sidecar.args.as_deref().unwrap_or_default());
    let mut process = Sidecar::start(&args);
    let pid = process.child.id().expect("sidecar pid");
    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(exit) = process.child.try_wait().expect("checking the sidecar") {
            panic!("the sidecar exited ({exit}):\n{}", process.logs());
        }
        if http_get(admin, "/readyz")
            .await
            .is_some_and(|(code, _)| code == 200)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sidecar ({} {args:?}) did not answer /readyz with 200 within {WAIT:?}: {:?}",
            binary.display(),
            http_get(admin, "/readyz").await
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // What the kubelet's probes would ask.
    for probe in [
        &sidecar.startup_probe,
        &sidecar.readiness_probe,
        &sidecar.liveness_probe,
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.clone())
            .expect("httpGet");
        let port = serde_json::to_value(&get.port)
            .expect("json")
            .as_u64()
            .expect("a number");
        assert_eq!(port, u64::from(admin_port));
        let path = get.path.expect("path");
        let answer = http_get(admin, &path)
            .await
            .expect("the admin port answers");
        assert_eq!(answer.0, 200, "probe {path}: {}", answer.1);
    }

    // The app's share: the URLs its environment holds.
    let app = &spec_containers(&pod)[1];
    assert_eq!(app.name, "app");
    let urls: BTreeMap<String, String> = app
        .env
        .iter()
        .flatten()
        .filter(|e| e.name.starts_with("SIDEKEY_") && e.name.ends_with("_URL"))
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    assert_eq!(urls.len(), 2, "{urls:?}");

    // payments: HTTPS verified against its own CA, the bearer token (not
    // the app's forged one), the default header and query parameter, and
    // a signature the key verifies.
    let (status, body) = app_get(
        &format!("{}/charges?x=1", urls["SIDEKEY_PAYMENTS_URL"]),
        ("authorization", "Bearer forged"),
    )
    .await;
    assert_eq!(status, 200, "{body}\n{}", process.logs());
    assert_eq!(body, "{\"upstream\":\"ok\"}");
    let seen = payments_upstream.last().expect("payments saw the request");
    assert_eq!(seen.path, "/v2/charges");
    let query: BTreeSet<&str> = seen.query.split('&').collect();
    assert_eq!(
        query,
        BTreeSet::from(["x=1", "region=eu"]),
        "{}",
        seen.query
    );
    assert_eq!(
        header(&seen, "authorization"),
        [format!("Bearer {PAYMENTS_TOKEN}")]
    );
    assert_eq!(header(&seen, "x-tenant"), ["acme"]);
    assert_eq!(header(&seen, "x-request-id"), ["app-1"]);
    assert!(header(&seen, "x-api-key").is_empty());
    let jwt = header(&seen, names::DEFAULT_SIGNATURE_HEADER);
    assert_eq!(jwt.len(), 1, "{:?}", seen.headers);
    let claims = verify_signature(jwt[0], SIGNING_KEY);
    assert_eq!(claims.iss, names::DEFAULT_SIGNATURE_ISSUER);
    assert_eq!(
        claims.exp - claims.iat,
        u64::from(names::DEFAULT_SIGNATURE_TTL_SECONDS)
    );

    // crm: plain HTTP, its API key in its header (not the app's forged
    // one), its default header, no signature and no bearer token.
    let (status, body) = app_get(
        &format!("{}/contacts", urls["SIDEKEY_CRM_URL"]),
        ("x-api-key", "forged"),
    )
    .await;
    assert_eq!(status, 200, "{body}\n{}", process.logs());
    let seen = crm_upstream.last().expect("crm saw the request");
    assert_eq!(seen.path, "/contacts");
    assert_eq!(header(&seen, "x-api-key"), [CRM_KEY]);
    assert_eq!(header(&seen, "x-client"), ["shop"]);
    assert!(header(&seen, "authorization").is_empty());
    assert!(header(&seen, names::DEFAULT_SIGNATURE_HEADER).is_empty());
    assert_eq!(payments_upstream.seen.lock().expect("lock").len(), 1);

    // The API key rotated in the cluster: the kubelet updates the volume,
    // the running sidecar reads it.
    shared_keys(&bed, CRM_KEY_ROTATED).await;
    lay_out_volume(
        &bed,
        &pod,
        &sidecar,
        "sidekey-secret-shared-keys",
        root.path(),
    )
    .await;
    let written = std::fs::read_to_string(
        root.path()
            .join("var/run/secrets/sidekey/shared-keys/api-key"),
    )
    .expect("api-key file");
    assert_eq!(written, CRM_KEY_ROTATED);
    sidekey_tests::wait_for(
        "the sidecar to send the rotated API key",
        std::time::Duration::from_secs(20),
        || async {
            let (status, _) = app_get(
                &format!("{}/contacts", urls["SIDEKEY_CRM_URL"]),
                ("x-api-key", "forged"),
            )
            .await;
            let seen = crm_upstream.last()?;
            (status == 200 && header(&seen, "x-api-key") == [CRM_KEY_ROTATED]).then_some(())
        },
    )
    .await;
    assert!(
        process
            .child
            .try_wait()
            .expect("checking the sidecar")
            .is_none(),
        "the sidecar exited"
    );
    assert_eq!(process.child.id(), Some(pid), "the sidecar was restarted");
    // payments still works with its unchanged keys.
    let (status, body) = app_get(
        &format!("{}/charges", urls["SIDEKEY_PAYMENTS_URL"]),
        ("authorization", "Bearer forged"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = payments_upstream.last().expect("payments saw the request");
    assert_eq!(
        header(&seen, "authorization"),
        [format!("Bearer {PAYMENTS_TOKEN}")]
    );

    drop(process);
    finish(&bed, op).await;
}
