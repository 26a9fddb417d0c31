//! What the operator shows: the admin port, JSON logs, and never a secret
//! value in a ConfigMap, a status, an Event or a log line.
//!
//! Needs the test bed: run with `scripts/test`, or set
//! SIDEKEY_TEST_KUBECONFIG (see `scripts/kube-testbed.sh`).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use support::{Bed, OperatorOptions};

/// How long a quiet operator is watched for reconciles nothing asked for.
const SETTLE: Duration = Duration::from_secs(3);

/// A plain HTTP/1.0 GET on loopback: (status code, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    support::http_get(addr, path)
        .await
        .expect("an answer from the admin port")
}

#[tokio::test]
async fn admin_port_serves_health_readiness_and_reconcile_metrics() {
    let bed = Bed::new("op-admin").await;
    let op = bed.start_operator(OperatorOptions::default());
    bed.create_datasource("metadata: { name: good }\nspec: { url: 'https://h' }\n")
        .await;
    bed.create_datasource(
        "metadata: { name: waiting }\nspec:\n  url: 'https://h'\n  \
         signature: { secretRef: { name: absent, key: key } }\n",
    )
    .await;
    bed.wait_ready("good", "True", "Reconciled").await;
    bed.wait_ready("waiting", "False", "SecretNotFound").await;

    let addr = op.admin_addr().await;
    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(get(addr, "/readyz").await.0, 200);
    assert_eq!(get(addr, "/nothing-here").await.0, 404);
    let expected = [
        "sidekey_operator_reconciles_total{reason=\"Reconciled\"}",
        "sidekey_operator_reconciles_total{reason=\"SecretNotFound\"}",
        "sidekey_operator_reconcile_duration_seconds_count",
        "sidekey_operator_leader 1",
    ];
    // A reconcile is counted once it ends, just after its status write
    // (and Event) that `wait_ready` saw: wait for the count too.
    let metrics = sidekey_tests::wait_for("the reconciles counted", support::WAIT, || async {
        let (code, metrics) = get(addr, "/metrics").await;
        (code == 200 && expected.iter().all(|e| metrics.contains(e))).then_some(metrics)
    })
    .await;
    assert!(metrics.contains("# TYPE sidekey_operator_reconciles counter"));
}

/// The sum of every sample of metric `name` (all label sets) in a
/// Prometheus text exposition.
fn metric_sum(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .map(|line| {
            let value = line.rsplit(' ').next().unwrap_or_default();
            value
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("sample {line:?}: {e}"))
        })
        .sum()
}

#[tokio::test]
async fn new_datasource_is_reconciled_once_not_again_for_its_own_configmap() {
    let bed = Bed::new("op-once").await;
    let op = bed.start_operator(OperatorOptions::default());
    bed.create_datasource("metadata: { name: once }\nspec: { url: 'https://h' }\n")
        .await;
    bed.wait_ready("once", "True", "Reconciled").await;
    bed.wait_configmap("once-sidekey").await;
    // A reconcile triggered by the operator's own ConfigMap or status write
    // follows within milliseconds; give one ample time to show up.
    tokio::time::sleep(SETTLE).await;

    let (code, metrics) = get(op.admin_addr().await, "/metrics").await;
    assert_eq!(code, 200);
    assert_eq!(
        metric_sum(
            &metrics,
            "sidekey_operator_reconcile_duration_seconds_count"
        ),
        1.0,
        "reconciles started:\n{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "sidekey_operator_reconciles_total"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "sidekey_operator_reconcile_errors_total"),
        0.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn logs_are_one_json_object_per_line() {
    let bed = Bed::new("op-jsonlog").await;
    let op = bed.start_operator(OperatorOptions::default());
    bed.create_datasource("metadata: { name: logged }\nspec: { url: 'https://h' }\n")
        .await;
    bed.wait_ready("logged", "True", "Reconciled").await;
    let logs = op.logs();
    assert!(logs.contains("became leader"), "{logs}");
    for line in logs.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
}

/// Values that must never leave a Secret; each is distinctive so a leak
/// anywhere is found by a plain substring search.
const SECRETS: [(&str, &str, &str); 5] = [
    ("basic", "password", "leak-basic-password-7f3a"),
    ("apikey", "value", "leak-api-key-value-91c2"),
    ("bearer", "token", "leak-bearer-token-44d8"),
    ("oauth", "client-secret", "leak-oauth-client-secret-0be1"),
    ("signing", "key", "leak-signing-key-0123456789abcdef01"),
];
/// A signature key one character short: refused, and never shown either.
const SHORT_KEY: &str = "leak-short-key-0123456789abcdef";

#[tokio::test]
async fn no_secret_value_appears_in_configmaps_status_events_or_logs() {
    let bed = Bed::new("op-noleak").await;
    for (secret, key, value) in SECRETS {
        bed.put_secret(secret, &[(key, value)]).await;
    }
    bed.put_secret("short", &[("key", SHORT_KEY)]).await;
    // Debug logs from every crate: a leak in any dependency counts too.
    let op = bed.start_operator(OperatorOptions {
        rust_log: "debug".into(),
        ..Default::default()
    });
    let manifests = [
        (
            "basic",
            "type: Basic\n    basic: { username: u, passwordSecretRef: { name: basic, key: password } }",
        ),
        (
            "apikey",
            "type: ApiKey\n    apiKey: { key: X-Key, valueSecretRef: { name: apikey, key: value } }",
        ),
        (
            "bearer",
            "type: BearerToken\n    bearerToken: { tokenSecretRef: { name: bearer, key: token } }",
        ),
        (
            "oauth",
            "type: OAuth2\n    oauth2: { accessTokenUrl: 'https://a/t', clientId: c, clientSecretRef: { name: oauth, key: client-secret } }",
        ),
    ];
    for (name, auth) in manifests {
        bed.create_datasource(&format!(
            "metadata: {{ name: {name} }}\nspec:\n  url: 'https://h'\n  \
             signature: {{ secretRef: {{ name: signing, key: key }} }}\n  authentication:\n    {auth}\n"
        ))
        .await;
    }
    bed.create_datasource(
        "metadata: { name: shortkey }\nspec:\n  url: 'https://h'\n  \
         signature: { secretRef: { name: short, key: key } }\n",
    )
    .await;
    for (name, _) in manifests {
        bed.wait_ready(name, "True", "Reconciled").await;
    }
    bed.wait_ready("shortkey", "False", "SignatureKeyTooShort")
        .await;
    bed.wait_event("shortkey", "SignatureKeyTooShort").await;

    let mut seen = Vec::new();
    let configmaps = bed
        .configmaps()
        .list(&ListParams::default())
        .await
        .expect("ConfigMaps");
    seen.push((
        "ConfigMaps",
        serde_json::to_string(&configmaps).expect("json"),
    ));
    let datasources = bed
        .datasources()
        .list(&ListParams::default())
        .await
        .expect("datasources");
    let statuses: Vec<_> = datasources.items.iter().map(|d| &d.status).collect();
    seen.push(("statuses", serde_json::to_string(&statuses).expect("json")));
    let events: Api<Event> = Api::namespaced(bed.client.clone(), &bed.ns);
    let events = events.list(&ListParams::default()).await.expect("Events");
    assert!(!events.items.is_empty(), "the operator published no Event");
    seen.push(("Events", serde_json::to_string(&events).expect("json")));
    let logs = op.logs();
    assert!(
        logs.lines().count() > 10,
        "suspiciously few log lines:\n{logs}"
    );
    seen.push(("logs", logs));

    let values = SECRETS.iter().map(|(_, _, v)| *v).chain([SHORT_KEY]);
    for value in values {
        for (place, text) in &seen {
            assert!(
                !text.contains(value),
                "secret value {value:?} found in {place}"
            );
        }
    }
}
