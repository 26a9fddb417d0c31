//! The CRD against a real kube-apiserver: it is served, the examples are
//! accepted, objects that break the schema are refused, and `kubectl
//! explain` documents every field.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use kube::{Client, Error};
use serde_json::{Value, json};
use sidekey_crds::{ApiDatasource, names};
use sidekey_tests::{
    client, crd_manifest, ensure_crd, example_manifests, kubeconfig_path, namespace,
};

fn datasources(client: &Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(names::GROUP, names::VERSION, names::KIND);
    let ar = ApiResource::from_gvk_with_plural(&gvk, "apidatasources");
    Api::namespaced_with(client.clone(), ns, &ar)
}

async fn create_raw(client: &Client, ns: &str, spec: Value) -> Result<DynamicObject, Error> {
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": names::API_VERSION,
        "kind": names::KIND,
        "metadata": { "name": "bad" },
        "spec": spec,
    }))
    .expect("object");
    datasources(client, ns)
        .create(&PostParams::default(), &obj)
        .await
}

/// Asserts the server refused the object as invalid, mentioning `field`.
fn assert_refused(result: Result<DynamicObject, Error>, field: &str) {
    match result {
        Err(Error::Api(status)) => {
            assert_eq!(status.code, 422, "expected 422 Invalid, got {status:?}");
            assert!(
                status.message.contains(field),
                "refusal should name {field}: {}",
                status.message
            );
        }
        Ok(obj) => panic!("server accepted an invalid object: {obj:?}"),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[tokio::test]
async fn every_example_is_accepted_by_the_server() {
    let client = client().await;
    ensure_crd(&client).await;
    let ns = namespace(&client, "examples").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut created = Vec::new();
    for (file, text) in example_manifests() {
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("examples/{file}: {e}"));
        let mut kinds = Vec::new();
        for doc in docs {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            match kind.as_str() {
                "Secret" => {
                    let s: Secret = serde_json::from_value(doc).expect("Secret");
                    secrets
                        .create(&PostParams::default(), &s)
                        .await
                        .unwrap_or_else(|e| panic!("examples/{file}: Secret: {e}"));
                }
                names::KIND => {
                    // Typed first: the example must also match the Rust types
                    // and resolve cleanly.
                    let typed: ApiDatasource = serde_json::from_value(doc.clone())
                        .unwrap_or_else(|e| panic!("examples/{file}: {e}"));
                    typed
                        .resolve()
                        .unwrap_or_else(|e| panic!("examples/{file}: {e}"));
                    let obj: DynamicObject = serde_json::from_value(doc).expect("object");
                    let back = datasources(&client, &ns)
                        .create(&PostParams::default(), &obj)
                        .await
                        .unwrap_or_else(|e| panic!("examples/{file}: {e}"));
                    created.push(back.metadata.name.unwrap_or_default());
                }
                other => panic!("examples/{file}: unexpected kind {other:?}"),
            }
            kinds.push(kind);
        }
        assert!(
            kinds.iter().any(|k| k == names::KIND),
            "examples/{file} holds no ApiDatasource"
        );
    }
    // One example per authentication type, and the server kept them all.
    let listed = Api::<ApiDatasource>::namespaced(client.clone(), &ns)
        .list(&Default::default())
        .await
        .expect("list");
    let mut types: Vec<&str> = listed
        .items
        .iter()
        .map(|d| d.spec.authentication.type_.as_str())
        .collect();
    types.sort();
    types.dedup();
    assert_eq!(types, ["ApiKey", "Basic", "BearerToken", "None", "OAuth2"]);
    assert_eq!(listed.items.len(), created.len());
}

#[tokio::test]
async fn server_fills_in_schema_defaults() {
    let client = client().await;
    ensure_crd(&client).await;
    let ns = namespace(&client, "defaults").await;
    let obj = create_raw(
        &client,
        &ns,
        json!({
            "url": "https://h.example.com",
            "signature": { "secretRef": { "name": "s", "key": "k" } },
            "authentication": { "type": "OAuth2", "oauth2": {
                "accessTokenUrl": "https://auth.example.com/token",
                "clientId": "c",
                "clientSecretRef": { "name": "s", "key": "k" } } }
        }),
    )
    .await
    .expect("valid object");
    let spec = &obj.data["spec"];
    assert_eq!(spec["signature"]["headerName"], "X-APPSMITH-SIGNATURE");
    assert_eq!(spec["signature"]["issuer"], "Appsmith");
    assert_eq!(spec["signature"]["ttlSeconds"], 600);
    assert_eq!(spec["signature"]["algorithm"], "Auto");
    let oauth2 = &spec["authentication"]["oauth2"];
    assert_eq!(oauth2["grantType"], "ClientCredentials");
    assert_eq!(oauth2["clientAuthentication"], "Body");
    assert_eq!(oauth2["addTokenTo"], "Header");
    assert_eq!(oauth2["headerPrefix"], "Bearer");
    assert_eq!(oauth2["tokenLifetimeSeconds"], 3600);
}

#[tokio::test]
async fn unknown_authentication_type_is_refused() {
    let client = client().await;
    ensure_crd(&client).await;
    let ns = namespace(&client, "bad-type").await;
    let r = create_raw(
        &client,
        &ns,
        json!({ "url": "https://h.example.com", "authentication": { "type": "Kerberos" } }),
    )
    .await;
    assert_refused(r, "spec.authentication.type");
}

#[tokio::test]
async fn url_that_is_not_a_url_is_refused() {
    let client = client().await;
    ensure_crd(&client).await;
    let ns = namespace(&client, "bad-url").await;
    for url in [
        "payments",
        "ftp://files.example.com/x",
        "https:// spaces .com",
    ] {
        let r = create_raw(&client, &ns, json!({ "url": url })).await;
        assert_refused(r, "spec.url");
    }
}

#[tokio::test]
async fn bad_enum_values_are_refused() {
    let client = client().await;
    ensure_crd(&client).await;
    let ns = namespace(&client, "bad-enum").await;
    let secret = json!({ "name": "s", "key": "k" });
    let r = create_raw(
        &client,
        &ns,
        json!({ "url": "https://h.example.com", "authentication": { "type": "ApiKey",
            "apiKey": { "key": "X-Key", "valueSecretRef": secret, "addTo": "Cookie" } } }),
    )
    .await;
    assert_refused(r, "spec.authentication.apiKey.addTo");
    let r = create_raw(
        &client,
        &ns,
        json!({ "url": "https://h.example.com",
            "signature": { "secretRef": secret, "algorithm": "RS256" } }),
    )
    .await;
    assert_refused(r, "spec.signature.algorithm");
    let r = create_raw(
        &client,
        &ns,
        json!({ "url": "https://h.example.com", "authentication": { "type": "OAuth2",
            "oauth2": { "accessTokenUrl": "https://a.example.com/t", "clientId": "c",
                "clientSecretRef": secret, "grantType": "Password" } } }),
    )
    .await;
    assert_refused(r, "spec.authentication.oauth2.grantType");
}

#[tokio::test]
async fn missing_required_fields_are_refused() {
    let client = client().await;
    ensure_crd(&client).await;
    let ns = namespace(&client, "missing").await;
    let r = create_raw(
        &client,
        &ns,
        json!({ "url": "https://h.example.com", "authentication": { "type": "Basic",
            "basic": { "username": "u" } } }),
    )
    .await;
    assert_refused(r, "spec.authentication.basic.passwordSecretRef");
}

/// The OAuth2 block's field names and descriptions, from the CRD schema.
fn oauth2_fields() -> BTreeMap<String, String> {
    let crd = crd_manifest();
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema");
    let props = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["authentication"]["properties"]
        ["oauth2"]["properties"];
    props
        .as_object()
        .expect("oauth2 properties")
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v["description"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn kubectl_explain_describes_every_oauth2_field() {
    let client = client().await;
    ensure_crd(&client).await;
    let fields = oauth2_fields();
    assert!(fields.len() >= 15, "oauth2 has {} fields", fields.len());
    // kubectl reads the published OpenAPI, which lags the CRD by a moment.
    let mut last = String::new();
    for _ in 0..50 {
        let out = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig_path())
            .args(["explain", "apidatasource.spec.authentication.oauth2"])
            .output()
            .expect("kubectl runs");
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() && fields.keys().all(|f| last.contains(f.as_str())) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let fields_section = last
        .split_once("FIELDS:")
        .unwrap_or_else(|| panic!("no FIELDS section in kubectl explain:\n{last}"))
        .1;
    for (field, description) in &fields {
        assert!(
            !description.is_empty(),
            "oauth2.{field} has no description in the CRD"
        );
        // Each field's description starts right below its name.
        let first_words: String = description
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        let after = fields_section
            .split_once(&format!("  {field}\t"))
            .or_else(|| fields_section.split_once(&format!("  {field} ")))
            .unwrap_or_else(|| panic!("kubectl explain does not list {field}:\n{last}"))
            .1;
        let next_lines: String = after.lines().skip(1).take(4).collect::<Vec<_>>().join(" ");
        let next_words: String = next_lines.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            next_words.contains(&first_words),
            "kubectl explain shows no description for {field} (expected {first_words:?}):\n{last}"
        );
    }
}
