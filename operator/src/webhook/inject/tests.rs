use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::Value;
use sidekey_crds::{ApiDatasource, names};

use super::*;

const PAYMENTS: &str = r#"
apiVersion: sidekey.dev/v1alpha1
kind: ApiDatasource
metadata: { name: payments, namespace: shop }
spec:
  url: https://payments.internal:8443/v2
  signature:
    secretRef: { name: payments-signing, key: key }
  tls:
    caCertificateSecretRef: { name: payments-ca, key: ca.crt }
  authentication:
    type: OAuth2
    oauth2:
      accessTokenUrl: https://auth.internal/oauth/token
      clientId: shop-payments
      clientSecretRef: { name: payments-oauth, key: client-secret }
status:
  conditions:
    - { type: Ready, status: "True", reason: Reconciled, message: ok, lastTransitionTime: "2026-01-01T00:00:00Z" }
"#;

const CRM: &str = r#"
apiVersion: sidekey.dev/v1alpha1
kind: ApiDatasource
metadata: { name: crm, namespace: shop }
spec:
  url: https://crm.internal/api
  authentication:
    type: ApiKey
    apiKey:
      key: X-Api-Key
      valueSecretRef: { name: crm-key, key: key }
status:
  conditions:
    - { type: Ready, status: "True", reason: Reconciled, message: ok, lastTransitionTime: "2026-01-01T00:00:00Z" }
"#;

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  generateName: shop-7d9f-
  namespace: shop
  labels: { app: shop, sidekey.dev/inject: "true" }
  annotations: { sidekey.dev/datasources: "payments,crm:15001" }
spec:
  initContainers:
    - name: migrate
      image: shop:1
  containers:
    - name: app
      image: shop:1
      ports: [ { containerPort: 15000 } ]
      env:
        - { name: LOG, value: debug }
        - { name: SIDEKEY_CRM_URL, value: "http://elsewhere" }
      volumeMounts: [ { name: data, mountPath: /data } ]
  volumes:
    - name: data
      emptyDir: {}
"#;

fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_saphyr::from_str(text).expect("test YAML")
}

fn settings(native: bool) -> SidecarSettings {
    let q = |s: &str| Quantity(s.to_owned());
    SidecarSettings {
        image: "ghcr.io/example/sidekey-sidecar:0.1.0".into(),
        image_pull_policy: Some("IfNotPresent".into()),
        resources: ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), q("10m")),
                ("memory".into(), q("16Mi")),
            ])),
            limits: Some(BTreeMap::from([
                ("cpu".into(), q("1")),
                ("memory".into(), q("64Mi")),
            ])),
            ..Default::default()
        },
        admin_port: names::SIDECAR_ADMIN_PORT,
        log_level: "info".into(),
        native,
    }
}

/// Runs both steps on `pod` with the datasources of `known`.
fn run(pod: &Pod, known: &[&str], native: bool) -> Result<Option<Injection>, InjectError> {
    let datasources: Vec<ApiDatasource> = known.iter().map(|t| yaml(t)).collect();
    let assignments = match decide(pod, names::SIDECAR_ADMIN_PORT)? {
        Decision::Unchanged(_) => return Ok(None),
        Decision::Lookup(a) => a,
    };
    let found: Vec<(Assignment, ApiDatasource)> = assignments
        .into_iter()
        .map(|a| {
            let ds = datasources
                .iter()
                .find(|d| d.metadata.name.as_deref() == Some(&a.name))
                .cloned()
                .unwrap_or_else(|| panic!("test names unknown datasource {}", a.name));
            (a, ds)
        })
        .collect();
    inject(pod, &found, &settings(native)).map(Some)
}

/// The pod as the API server stores it after the patch.
fn patched(pod: &Pod, injection: &Injection) -> Value {
    let mut value = serde_json::to_value(pod).expect("pod");
    json_patch::patch(&mut value, &injection.patch).expect("patch applies");
    value
}

fn golden(file: &str, actual: &Value) {
    let path = format!("{}/src/webhook/testdata/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = serde_json::to_string_pretty(actual).expect("json") + "\n";
    if std::env::var_os("SIDEKEY_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}; run with SIDEKEY_UPDATE_GOLDEN=1 to create it"));
    assert!(
        expected == text,
        "{path} differs from the patch made now; if the change is intended, \
         run `SIDEKEY_UPDATE_GOLDEN=1 cargo test -p sidekey-operator --lib webhook` \
         and review the diff.\n--- made now ---\n{text}"
    );
}

fn check_golden(native: bool, file: &str) {
    let pod: Pod = yaml(POD);
    let injection = run(&pod, &[PAYMENTS, CRM], native)
        .expect("admitted")
        .expect("injected");
    let patch = serde_json::to_value(&injection.patch).expect("patch");
    golden(
        file,
        &serde_json::json!({ "patch": patch, "pod": patched(&pod, &injection) }),
    );
}

#[test]
fn patch_for_a_1_20_server_matches_the_golden_file() {
    check_golden(false, "inject-container.json");
}

#[test]
fn patch_for_a_1_29_server_matches_the_golden_file() {
    check_golden(true, "inject-native.json");
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {list} container {name}: {pod:#}"))
}

fn env<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    c["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
}

#[test]
fn every_app_and_init_container_gets_the_urls_and_no_mount() {
    let pod: Pod = yaml(POD);
    for native in [false, true] {
        let injection = run(&pod, &[PAYMENTS, CRM], native)
            .expect("ok")
            .expect("patch");
        let out = patched(&pod, &injection);
        for (list, name) in [("containers", "app"), ("initContainers", "migrate")] {
            let c = container(&out, list, name);
            // 15000 is the app's own port, so payments moves to 15002.
            assert_eq!(
                env(c, "SIDEKEY_PAYMENTS_URL"),
                Some("http://127.0.0.1:15002")
            );
            // The pod's own value is replaced, not duplicated.
            assert_eq!(env(c, "SIDEKEY_CRM_URL"), Some("http://127.0.0.1:15001"));
            let names: Vec<&Value> = c["env"]
                .as_array()
                .expect("env")
                .iter()
                .map(|e| &e["name"])
                .collect();
            assert_eq!(names.iter().filter(|n| **n == "SIDEKEY_CRM_URL").count(), 1);
            let mounts = c["volumeMounts"].as_array().map_or(0, Vec::len);
            assert_eq!(mounts, usize::from(name == "app"), "{name} gained a mount");
        }
        let list = if native {
            "initContainers"
        } else {
            "containers"
        };
        assert_eq!(
            out["spec"][list][0]["name"],
            names::SIDECAR_CONTAINER,
            "sidecar first"
        );
    }
}

#[test]
fn the_sidecar_mounts_exactly_the_referenced_keys_read_only() {
    let pod: Pod = yaml(POD);
    let out = patched(
        &pod,
        &run(&pod, &[PAYMENTS, CRM], false)
            .expect("ok")
            .expect("patch"),
    );
    let sidecar = container(&out, "containers", names::SIDECAR_CONTAINER);
    let volumes = out["spec"]["volumes"].as_array().expect("volumes");
    let mut seen = BTreeMap::new();
    for m in sidecar["volumeMounts"].as_array().expect("mounts") {
        assert_eq!(m["readOnly"], true, "{m}");
        let v = volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .expect("volume");
        let (source, name) = if v["secret"].is_object() {
            (&v["secret"], v["secret"]["secretName"].as_str())
        } else {
            (&v["configMap"], v["configMap"]["name"].as_str())
        };
        let keys: Vec<&str> = source["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|i| i["key"].as_str())
            .collect();
        seen.insert(
            (
                name.expect("name").to_owned(),
                m["mountPath"].as_str().expect("path").to_owned(),
            ),
            keys,
        );
    }
    let expected = BTreeMap::from([
        (
            (
                "payments-sidekey".into(),
                "/etc/sidekey/datasources/payments".into(),
            ),
            vec!["datasource.yaml"],
        ),
        (
            ("crm-sidekey".into(), "/etc/sidekey/datasources/crm".into()),
            vec!["datasource.yaml"],
        ),
        (
            (
                "payments-oauth".into(),
                "/var/run/secrets/sidekey/payments-oauth".into(),
            ),
            vec!["client-secret"],
        ),
        (
            (
                "payments-signing".into(),
                "/var/run/secrets/sidekey/payments-signing".into(),
            ),
            vec!["key"],
        ),
        (
            (
                "payments-ca".into(),
                "/var/run/secrets/sidekey/payments-ca".into(),
            ),
            vec!["ca.crt"],
        ),
        (
            ("crm-key".into(), "/var/run/secrets/sidekey/crm-key".into()),
            vec!["key"],
        ),
    ]);
    assert_eq!(seen, expected);
}

#[test]
fn two_datasources_sharing_a_secret_get_one_volume_with_both_keys() {
    let other = CRM.replace("crm-key, key: key", "payments-oauth, key: crm");
    let pod: Pod = yaml(POD);
    let out = patched(
        &pod,
        &run(&pod, &[PAYMENTS, &other], false)
            .expect("ok")
            .expect("patch"),
    );
    let volumes: Vec<&Value> = out["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter(|v| v["secret"]["secretName"] == "payments-oauth")
        .collect();
    assert_eq!(volumes.len(), 1, "{volumes:?}");
    assert_eq!(secret_keys(volumes[0]), ["client-secret", "crm"]);
}

#[test]
fn a_pod_without_the_label_is_left_alone() {
    let pod: Pod = yaml(&POD.replace("sidekey.dev/inject: \"true\"", "sidekey.dev/inject: \"no\""));
    assert!(run(&pod, &[PAYMENTS, CRM], false).expect("ok").is_none());
}

#[test]
fn an_injected_pod_admitted_again_is_left_alone() {
    let pod: Pod = yaml(POD);
    for native in [false, true] {
        let out = patched(
            &pod,
            &run(&pod, &[PAYMENTS, CRM], native)
                .expect("ok")
                .expect("patch"),
        );
        let again: Pod = serde_json::from_value(out).expect("pod");
        assert!(matches!(
            decide(&again, names::SIDECAR_ADMIN_PORT),
            Ok(Decision::Unchanged("AlreadyInjected"))
        ));
    }
}

#[test]
fn a_container_named_like_the_sidecar_is_refused() {
    let pod: Pod = yaml(&POD.replace("name: app", "name: sidekey"));
    let err = run(&pod, &[PAYMENTS, CRM], false).expect_err("reserved");
    assert!(
        matches!(
            err,
            InjectError::ReservedName {
                kind: "container",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_pod_without_volumes_env_or_init_containers_gets_the_lists() {
    let pod: Pod = yaml(
        r#"
apiVersion: v1
kind: Pod
metadata:
  labels: { sidekey.dev/inject: "true" }
  annotations: { sidekey.dev/datasources: crm }
spec:
  containers: [ { name: app, image: app } ]
"#,
    );
    for native in [false, true] {
        let out = patched(
            &pod,
            &run(&pod, &[CRM], native).expect("ok").expect("patch"),
        );
        assert_eq!(
            env(container(&out, "containers", "app"), "SIDEKEY_CRM_URL"),
            Some("http://127.0.0.1:15000")
        );
        assert_eq!(out["spec"]["volumes"].as_array().map(Vec::len), Some(2));
        let status: Status = serde_json::from_str(
            out["metadata"]["annotations"][names::STATUS_ANNOTATION]
                .as_str()
                .expect("status"),
        )
        .expect("status JSON");
        assert_eq!(
            status.datasources,
            [StatusEntry {
                name: "crm".into(),
                port: 15000
            }]
        );
    }
}

#[test]
fn a_datasource_that_is_not_ready_is_injected_with_a_warning_naming_it() {
    let failing = CRM.replace(
        r#"status: "True", reason: Reconciled"#,
        r#"status: "False", reason: SecretNotFound"#,
    );
    let pod: Pod = yaml(POD);
    let injection = run(&pod, &[PAYMENTS, &failing], false)
        .expect("ok")
        .expect("patch");
    assert_eq!(injection.warnings.len(), 1, "{:?}", injection.warnings);
    assert!(
        injection.warnings[0].contains("\"crm\"")
            && injection.warnings[0].contains("SecretNotFound")
    );
}

/// The keys a Secret volume projects.
fn secret_keys(volume: &serde_json::Value) -> Vec<&str> {
    volume["secret"]["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["key"].as_str())
        .collect()
}

#[test]
fn an_authorization_code_datasource_mounts_its_access_token_optionally_never_the_refresh_token() {
    let ac = PAYMENTS.replace(
        "clientId: shop-payments",
        "clientId: shop-payments\n      grantType: AuthorizationCode\n      authorizationUrl: https://auth.internal/authorize\n      redirectUrl: https://sidekey.example/oauth2/callback",
    );
    let pod: Pod = yaml(POD);
    let out = patched(
        &pod,
        &run(&pod, &[&ac, CRM], false).expect("ok").expect("patch"),
    );
    let volume = out["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["secret"]["secretName"] == "payments-sidekey-oauth")
        .expect("token volume");
    assert_eq!(volume["secret"]["optional"], true);
    assert_eq!(secret_keys(volume), ["access-token", "expires-at"]);
}

#[test]
fn volume_names_are_dns_labels_and_distinct() {
    let long = "a".repeat(200);
    for name in ["payments", "a.b", "a-b", long.as_str()] {
        let v = volume_name("sidekey-secret-", name);
        assert!(v.len() <= 63, "{v}");
        assert!(
            v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "{v}"
        );
    }
    assert_ne!(volume_name("p-", "a.b"), volume_name("p-", "a-b"));
    assert_eq!(
        volume_name("sidekey-secret-", "payments"),
        "sidekey-secret-payments"
    );
}

#[test]
fn the_deployment_example_asks_for_two_datasources() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/inject/deployment.yaml"
    );
    let text = std::fs::read_to_string(path).expect("example");
    let deployment: k8s_openapi::api::apps::v1::Deployment = yaml(&text);
    let template = deployment.spec.template;
    let pod = Pod {
        metadata: template.metadata.unwrap_or_default(),
        spec: template.spec,
        status: None,
    };
    let Ok(Decision::Lookup(assigned)) = decide(&pod, names::SIDECAR_ADMIN_PORT) else {
        panic!("{path}: the template is not sent for injection");
    };
    let pairs: Vec<(&str, u16)> = assigned.iter().map(|a| (a.name.as_str(), a.port)).collect();
    assert_eq!(pairs, [("payments", 15000), ("crm", 15001)]);
}
