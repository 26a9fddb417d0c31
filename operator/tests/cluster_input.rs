//! The cluster's side of hostile input (issue 12), against the real API
//! server: every limit of the CRD's schema, taken at its value and refused
//! past it with the field named; and Secrets with binary, huge or broken
//! values, each reconciled or refused with a named reason that never
//! quotes the value.

mod support;

use kube::Api;
use kube::api::{DynamicObject, PostParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};
use sidekey_crds::{ApiDatasource, names};
use support::*;

const CRD: &str = include_str!("../../crds/apidatasource.yaml");

/// One limit of the schema: the field's path under `spec`, a value at the
/// limit and one past it.
#[derive(Debug)]
struct Limit {
    path: Vec<String>,
    what: String,
    at: Value,
    past: Value,
}

/// A value the schema takes for `schema`, with only what it requires.
fn example(schema: &Value) -> Value {
    if let Some(values) = schema["enum"].as_array() {
        return values[0].clone();
    }
    match schema["type"].as_str() {
        Some("object") => {
            let mut out = serde_json::Map::new();
            for required in schema["required"].as_array().into_iter().flatten() {
                let name = required.as_str().expect("a name");
                out.insert(name.into(), example(&schema["properties"][name]));
            }
            Value::Object(out)
        }
        Some("array") => json!([]),
        Some("integer") | Some("number") => schema["minimum"]
            .as_f64()
            .map_or(json!(1), |m| json!(m as i64)),
        Some("boolean") => json!(false),
        _ => {
            if schema["pattern"]
                .as_str()
                .is_some_and(|p| p.starts_with("^https?://"))
            {
                json!("https://h")
            } else {
                let min = schema["minLength"].as_u64().unwrap_or(1).max(1) as usize;
                json!("a".repeat(min))
            }
        }
    }
}

/// Every limit under `schema`, found by walking it; `path` is where it is.
fn limits(schema: &Value, path: &[String], out: &mut Vec<Limit>) {
    let at = |what: &str, at: Value, past: Value| Limit {
        path: path.to_vec(),
        what: what.to_owned(),
        at,
        past,
    };
    let url = schema["pattern"]
        .as_str()
        .is_some_and(|p| p.starts_with("^https?://"));
    let string = |n: u64| {
        if url {
            json!(format!("https://{}", "h".repeat(n as usize - 8)))
        } else {
            json!("a".repeat(n as usize))
        }
    };
    if let Some(max) = schema["maxLength"].as_u64() {
        out.push(at("maxLength", string(max), string(max + 1)));
    }
    if let Some(min) = schema["minLength"].as_u64()
        && min > 0
        && !url
    {
        out.push(at(
            "minLength",
            string(min),
            json!("a".repeat(min as usize - 1)),
        ));
    }
    if let Some(min) = schema["minimum"].as_f64() {
        out.push(at("minimum", json!(min as i64), json!(min as i64 - 1)));
    }
    if let Some(max) = schema["maximum"].as_f64() {
        out.push(at("maximum", json!(max as i64), json!(max as i64 + 1)));
    }
    if let Some(values) = schema["enum"].as_array() {
        for v in values {
            out.push(at("enum", v.clone(), json!("NotAnEnumValue")));
        }
    }
    if url {
        out.push(at("pattern", json!("http://h"), json!("ftp://h")));
    }
    for (name, prop) in schema["properties"].as_object().into_iter().flatten() {
        let mut p = path.to_vec();
        p.push(name.clone());
        limits(prop, &p, out);
    }
    if schema["type"] == "array" {
        let mut p = path.to_vec();
        p.push("[]".into());
        limits(&schema["items"], &p, out);
    }
}

/// A spec whose field at `path` is `value`, with everything on the way
/// there that the schema requires.
fn spec_with(root: &Value, path: &[String], value: Value) -> Value {
    let mut spec = example(root);
    let (mut node, mut schema) = (&mut spec, root);
    for (i, step) in path.iter().enumerate() {
        let last = i == path.len() - 1;
        if step == "[]" {
            schema = &schema["items"];
            let item = if last { value.clone() } else { example(schema) };
            *node = json!([item]);
            node = &mut node[0];
        } else {
            schema = &schema["properties"][step];
            let next = if last {
                value.clone()
            } else {
                node.get(step).cloned().unwrap_or_else(|| example(schema))
            };
            node[step] = next;
            node = &mut node[step];
        }
    }
    spec
}

#[tokio::test]
async fn every_limit_of_the_crd_is_taken_at_its_value_and_refused_past_it_naming_the_field() {
    let bed = Bed::new("limits").await;
    let crd: Value = serde_saphyr::from_str(CRD).expect("the CRD");
    let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let mut found = Vec::new();
    limits(root, &[], &mut found);
    // The walk found the limits the CRD has: names of Secrets and keys,
    // URLs, enums, the signature lifetime.
    assert!(found.len() > 30, "only {} limits: {found:#?}", found.len());
    let resource = ApiResource::erase::<ApiDatasource>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(bed.client.clone(), &bed.ns, &resource);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let object = |spec: Value| -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "sidekey.dev/v1alpha1", "kind": "ApiDatasource",
            "metadata": { "name": "limit" }, "spec": spec,
        }))
        .expect("object")
    };
    let mut failures = Vec::new();
    for limit in &found {
        let field = limit.path.join(".").replace(".[]", "[0]");
        let at = spec_with(root, &limit.path, limit.at.clone());
        if let Err(e) = api.create(&dry_run, &object(at.clone())).await {
            failures.push(format!(
                "{field} {} at the limit refused: {e}\n{at}",
                limit.what
            ));
        }
        let past = spec_with(root, &limit.path, limit.past.clone());
        match api.create(&dry_run, &object(past.clone())).await {
            Ok(_) => failures.push(format!(
                "{field} {} past the limit taken:\n{past}",
                limit.what
            )),
            Err(kube::Error::Api(status)) => {
                // Items of a list are named without their index.
                let named = format!("spec.{}", limit.path.join(".").replace(".[]", ""));
                if status.code != 422 || !status.message.contains(&named) {
                    failures.push(format!(
                        "{field} {} past the limit: {} {:?} does not name {named}",
                        limit.what, status.code, status.message
                    ));
                }
            }
            Err(e) => failures.push(format!("{field}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const BEARER: &str = "  authentication:\n    type: BearerToken\n    bearerToken:\n      tokenSecretRef: { name: NAME, key: token }\n";

fn bearer(name: &str) -> String {
    format!(
        "metadata: {{ name: {name} }}\nspec:\n  url: 'https://h'\n{}",
        BEARER.replace("NAME", name)
    )
}

#[tokio::test]
async fn secrets_with_binary_huge_or_broken_values_get_a_named_reason_that_quotes_nothing() {
    let bed = Bed::new("secretvals").await;
    let _op = bed.start_operator(OperatorOptions::default());
    // The API server takes Secrets of up to 1 MiB.
    let huge = vec![b'h'; 1024 * 1024 - 4096];
    let cases: [(&str, &[u8], &str); 5] = [
        ("binary", b"\xff\xfe\x00tok", "InvalidSecretValue"),
        ("newline", b"first-line\nsecond-line", "InvalidSecretValue"),
        ("empty", b"\n", "InvalidSecretValue"),
        ("huge", &huge, "InvalidSecretValue"),
        ("fine", b"a-token-with-a-trailing-newline\n", "Reconciled"),
    ];
    for (name, value, _) in &cases {
        bed.put_secret_bytes(name, &[("token", value), ("unused", &huge[..1024])])
            .await;
        bed.create_datasource(&bearer(name)).await;
    }
    for (name, value, reason) in &cases {
        let status = if *reason == "Reconciled" {
            "True"
        } else {
            "False"
        };
        let ds = bed.wait_ready(name, status, reason).await;
        let message = ready(&ds).expect("Ready").message;
        if status == "False" {
            assert!(
                message.contains(&format!("\"{name}\""))
                    && message.contains("bearerToken.tokenSecretRef"),
                "{message}"
            );
        }
        let shown = String::from_utf8_lossy(value);
        let shown = shown.trim();
        if shown.len() > 3 {
            assert!(
                !message.contains(shown),
                "{name}: the value is quoted: {message}"
            );
            for event in bed.events_about(name).await {
                let note = event.note.unwrap_or_default();
                assert!(!note.contains(shown), "{name}: an Event quotes the value");
            }
        }
    }
    // Basic encodes its password: any bytes go.
    bed.put_secret_bytes("basic", &[("password", b"\x00\xffp\xe9ss\n")])
        .await;
    bed.create_datasource(
        "metadata: { name: basic }\nspec:\n  url: 'https://h'\n  authentication:\n    type: Basic\n    basic: { username: u, passwordSecretRef: { name: basic, key: password } }\n",
    )
    .await;
    bed.wait_ready("basic", "True", "Reconciled").await;
}

#[tokio::test]
async fn a_ca_bundle_with_garbage_between_its_certificates_is_taken_and_one_broken_inside_is_not() {
    let bed = Bed::new("cabundle").await;
    let _op = bed.start_operator(OperatorOptions::default());
    let bundle = ca_bundle(2);
    let end = "-----END CERTIFICATE-----\n";
    let garbage = bundle.replacen(
        end,
        &format!("{end}\nsome notes, \u{1} a control byte, -----dashes-----\n\n"),
        1,
    );
    let garbage = format!("leading text\n{garbage}trailing text");
    // A character of the second certificate's body changed to one base64
    // does not have.
    let second = bundle.find(end).expect("first end") + end.len();
    let mut broken = bundle.clone().into_bytes();
    broken[second + 80] = b'#';
    bed.put_secret("garbage", &[("ca.crt", &garbage)]).await;
    bed.put_secret_bytes("broken", &[("ca.crt", &broken)]).await;
    for name in ["garbage", "broken"] {
        bed.create_datasource(&format!(
            "metadata: {{ name: {name} }}\nspec:\n  url: 'https://h'\n  tls: {{ caCertificateSecretRef: {{ name: {name}, key: ca.crt }} }}\n"
        ))
        .await;
    }
    let ds = bed.wait_ready("garbage", "True", "Reconciled").await;
    let message = ready(&ds).expect("Ready").message;
    assert!(message.contains("holds 2 certificates"), "{message}");
    let ds = bed
        .wait_ready("broken", "False", "InvalidCertificate")
        .await;
    let message = ready(&ds).expect("Ready").message;
    assert!(message.contains("PEM block 2"), "{message}");
}

#[tokio::test]
async fn a_datasource_name_is_refused_when_too_long_for_the_objects_named_after_it() {
    let bed = Bed::new("longname").await;
    let _op = bed.start_operator(OperatorOptions::default());
    let name_of = |len: usize| format!("{}.z", "a".repeat(len - 2));
    let longest = name_of(names::MAX_DATASOURCE_NAME_LEN);
    bed.create_datasource(&format!(
        "metadata: {{ name: '{longest}' }}\nspec: {{ url: 'https://h' }}\n"
    ))
    .await;
    bed.wait_ready(&longest, "True", "Reconciled").await;
    bed.wait_configmap(&names::configmap_name(&longest)).await;
    // Its Event, whose name is the longest made from it, was written too.
    bed.wait_event(&longest, "Reconciled").await;

    let too_long = name_of(names::MAX_DATASOURCE_NAME_LEN + 1);
    let mut ds: ApiDatasource = serde_saphyr::from_str(&format!(
        "metadata: {{ name: '{too_long}' }}\nspec: {{ url: 'https://h' }}\n"
    ))
    .expect("manifest");
    ds.metadata.namespace = Some(bed.ns.clone());
    match bed.datasources().create(&PostParams::default(), &ds).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(
                status.message.contains("metadata.name")
                    && status
                        .message
                        .contains(&names::MAX_DATASOURCE_NAME_LEN.to_string()),
                "{}",
                status.message
            );
        }
        other => panic!("a name of {} characters: {other:?}", too_long.len()),
    }
}
