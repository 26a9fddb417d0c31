//! The operator against the real API server: each datasource becomes its
//! ConfigMap with Ready=True, bad input becomes Ready=False with a reason
//! and an Event while the last good ConfigMap stays, Secrets wake the
//! datasources that use them, deletion removes the ConfigMap.
//!
//! Needs the test bed: run with `scripts/test`, or set
//! SIDEKEY_TEST_KUBECONFIG (see `scripts/kube-testbed.sh`).

mod support;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, Patch, PatchParams};
use sidekey_crds::names::{CONFIGMAP_KEY, DATASOURCE_LABEL, MANAGED_BY_LABEL};
use sidekey_crds::{ApiDatasource, ResolvedAuthentication, ResolvedDatasource};
use support::{Bed, OperatorOptions, WAIT, ca_bundle, ready};

const KEY_32: &str = "0123456789abcdef0123456789abcdef";

fn resolved_of(cm: &ConfigMap) -> ResolvedDatasource {
    let data = cm.data.as_ref().expect("ConfigMap has data");
    ResolvedDatasource::from_yaml(&data[CONFIGMAP_KEY]).expect("ConfigMap holds a resolved spec")
}

/// Creates the datasource, waits for Ready=True, and checks the ConfigMap
/// holds exactly its resolved spec, owned by and labelled for it.
async fn expect_reconciled(bed: &Bed, manifest: &str) -> (ApiDatasource, ResolvedDatasource) {
    let created = bed.create_datasource(manifest).await;
    let name = created.metadata.name.clone().expect("name");
    let ds = bed.wait_ready(&name, "True", "Reconciled").await;
    let status = ds.status.as_ref().expect("status");
    let cm_name = format!("{name}-sidekey");
    assert_eq!(status.config_map.as_deref(), Some(cm_name.as_str()));
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(ready(&ds).expect("Ready").observed_generation, Some(1));

    let cm = bed.wait_configmap(&cm_name).await;
    let owners = cm.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(owners[0].uid, ds.metadata.uid.clone().expect("uid"));
    assert_eq!(owners[0].controller, Some(true));
    let labels = cm.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get(DATASOURCE_LABEL), Some(&name));
    assert_eq!(
        labels.get(MANAGED_BY_LABEL).map(String::as_str),
        Some("sidekey")
    );

    let expected = created.resolve().expect("manifest resolves");
    let got = resolved_of(&cm);
    assert_eq!(got, expected);
    (ds, got)
}

#[tokio::test]
async fn datasource_without_authentication_gets_its_configmap_and_ready() {
    let bed = Bed::new("op-none").await;
    let _op = bed.start_operator(OperatorOptions::default());
    let (_, r) = expect_reconciled(
        &bed,
        r#"
metadata: { name: open }
spec:
  url: https://open.internal/v1
  headers: [ { name: X-Tenant, value: acme } ]
  queryParameters: [ { name: region, value: eu } ]
"#,
    )
    .await;
    assert_eq!(r.authentication, ResolvedAuthentication::None);
    assert_eq!(r.headers[0].name, "X-Tenant");
    assert_eq!(r.query_parameters[0].value, "eu");
    assert!(r.tls.trust_system_roots);
}

#[tokio::test]
async fn basic_authentication_gets_its_configmap_and_ready() {
    let bed = Bed::new("op-basic").await;
    bed.put_secret("basic-creds", &[("password", "pa55word")])
        .await;
    let _op = bed.start_operator(OperatorOptions::default());
    let (_, r) = expect_reconciled(
        &bed,
        r#"
metadata: { name: crm }
spec:
  url: https://crm.internal
  authentication:
    type: Basic
    basic: { username: shop, passwordSecretRef: { name: basic-creds, key: password } }
"#,
    )
    .await;
    let ResolvedAuthentication::Basic { username, password } = &r.authentication else {
        panic!("not Basic: {:?}", r.authentication)
    };
    assert_eq!(username, "shop");
    assert_eq!(password.path, "basic-creds/password");
}

#[tokio::test]
async fn api_key_authentication_gets_its_configmap_and_ready() {
    let bed = Bed::new("op-apikey").await;
    bed.put_secret("maps-key", &[("key", "k-123")]).await;
    let _op = bed.start_operator(OperatorOptions::default());
    let (_, r) = expect_reconciled(
        &bed,
        r#"
metadata: { name: maps }
spec:
  url: https://maps.internal
  authentication:
    type: ApiKey
    apiKey: { key: api_key, addTo: QueryParameter, valueSecretRef: { name: maps-key, key: key } }
"#,
    )
    .await;
    let ResolvedAuthentication::ApiKey { key, value, .. } = &r.authentication else {
        panic!("not ApiKey: {:?}", r.authentication)
    };
    assert_eq!(key, "api_key");
    assert_eq!(value.path, "maps-key/key");
}

#[tokio::test]
async fn bearer_token_with_ca_bundle_reports_the_certificate_count() {
    let bed = Bed::new("op-bearer").await;
    bed.put_secret("tok", &[("token", "t0k3n")]).await;
    bed.put_secret("payments-ca", &[("ca.crt", &ca_bundle(2))])
        .await;
    let _op = bed.start_operator(OperatorOptions::default());
    let (ds, r) = expect_reconciled(
        &bed,
        r#"
metadata: { name: payments }
spec:
  url: https://payments.internal:8443/v2
  tls: { caCertificateSecretRef: { name: payments-ca, key: ca.crt } }
  authentication:
    type: BearerToken
    bearerToken: { tokenSecretRef: { name: tok, key: token } }
"#,
    )
    .await;
    assert_eq!(
        r.tls.ca_certificate.as_ref().map(|f| f.path.as_str()),
        Some("payments-ca/ca.crt")
    );
    let message = ready(&ds).expect("Ready").message;
    assert!(message.contains("2 certificates"), "{message}");
}

#[tokio::test]
async fn oauth2_client_credentials_with_signature_gets_its_configmap_and_ready() {
    let bed = Bed::new("op-oauth").await;
    bed.put_secret("oauth", &[("client-secret", "cs-1")]).await;
    bed.put_secret("signing", &[("key", KEY_32)]).await;
    let _op = bed.start_operator(OperatorOptions::default());
    let (_, r) = expect_reconciled(
        &bed,
        r#"
metadata: { name: ledger }
spec:
  url: https://ledger.internal
  signature: { secretRef: { name: signing, key: key } }
  authentication:
    type: OAuth2
    oauth2:
      accessTokenUrl: https://auth.internal/oauth/token
      clientId: shop-ledger
      clientSecretRef: { name: oauth, key: client-secret }
      scopes: [ ledger.read ]
"#,
    )
    .await;
    let ResolvedAuthentication::OAuth2(o) = &r.authentication else {
        panic!("not OAuth2: {:?}", r.authentication)
    };
    assert_eq!(o.client_secret.path, "oauth/client-secret");
    assert_eq!(o.header_prefix, "Bearer");
    assert_eq!(o.token_lifetime_seconds, 3600);
    let sig = r.signature.as_ref().expect("signature");
    assert_eq!(sig.header_name, "X-APPSMITH-SIGNATURE");
    assert_eq!(sig.secret.path, "signing/key");
}

#[tokio::test]
async fn oauth2_authorization_code_gets_its_configmap_and_ready() {
    let bed = Bed::new("op-authcode").await;
    bed.put_secret("oauth", &[("client-secret", "cs-2")]).await;
    let _op = bed.start_operator(OperatorOptions::default());
    let (_, r) = expect_reconciled(
        &bed,
        r#"
metadata: { name: drive }
spec:
  url: https://drive.internal
  authentication:
    type: OAuth2
    oauth2:
      grantType: AuthorizationCode
      accessTokenUrl: https://auth.internal/oauth/token
      authorizationUrl: https://auth.internal/oauth/authorize
      redirectUrl: https://sidekey.internal/oauth/callback
      clientId: drive
      clientSecretRef: { name: oauth, key: client-secret }
"#,
    )
    .await;
    let ResolvedAuthentication::OAuth2(o) = &r.authentication else {
        panic!("not OAuth2: {:?}", r.authentication)
    };
    assert_eq!(
        o.redirect_url.as_deref(),
        Some("https://sidekey.internal/oauth/callback")
    );
}

const SIGNED: &str = r#"
metadata: { name: signed }
spec:
  url: https://signed.internal
  signature: { secretRef: { name: signing, key: key } }
"#;

#[tokio::test]
async fn signature_key_shortened_to_31_characters_turns_ready_false_and_keeps_the_configmap() {
    let bed = Bed::new("op-shortkey").await;
    bed.put_secret("signing", &[("key", KEY_32)]).await;
    let _op = bed.start_operator(OperatorOptions::default());
    bed.create_datasource(SIGNED).await;
    bed.wait_ready("signed", "True", "Reconciled").await;
    let before = bed.wait_configmap("signed-sidekey").await;

    bed.put_secret("signing", &[("key", &KEY_32[..31])]).await;
    let ds = bed
        .wait_ready("signed", "False", "SignatureKeyTooShort")
        .await;
    let message = ready(&ds).expect("Ready").message;
    assert!(message.contains("at least 32 characters"), "{message}");
    assert!(message.contains("\"signing\""), "{message}");
    let event = bed.wait_event("signed", "SignatureKeyTooShort").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let during = bed
        .configmaps()
        .get("signed-sidekey")
        .await
        .expect("ConfigMap kept");
    assert_eq!(during.data, before.data);
    assert_eq!(
        during.metadata.resource_version,
        before.metadata.resource_version
    );
    // Still pointing sidecars at the kept ConfigMap.
    assert_eq!(
        ds.status.as_ref().and_then(|s| s.config_map.as_deref()),
        Some("signed-sidekey")
    );

    bed.put_secret("signing", &[("key", KEY_32)]).await;
    bed.wait_ready("signed", "True", "Reconciled").await;
}

#[tokio::test]
async fn missing_secret_is_named_until_it_is_created() {
    let bed = Bed::new("op-nosecret").await;
    let _op = bed.start_operator(OperatorOptions::default());
    let created = bed.create_datasource(SIGNED).await;
    let ds = bed.wait_ready("signed", "False", "SecretNotFound").await;
    let message = ready(&ds).expect("Ready").message;
    assert!(message.contains("Secret \"signing\""), "{message}");
    assert!(message.contains("spec.signature.secretRef"), "{message}");
    bed.wait_event("signed", "SecretNotFound").await;
    assert!(
        bed.configmaps()
            .get_opt("signed-sidekey")
            .await
            .expect("get")
            .is_none(),
        "no ConfigMap for a datasource that was never valid"
    );

    // Only the Secret changes; the datasource is not touched.
    bed.put_secret("signing", &[("key", KEY_32)]).await;
    let ds = bed.wait_ready("signed", "True", "Reconciled").await;
    assert_eq!(ds.metadata.generation, created.metadata.generation);
    bed.wait_configmap("signed-sidekey").await;
}

#[tokio::test]
async fn missing_key_names_the_secret_and_the_key() {
    let bed = Bed::new("op-nokey").await;
    bed.put_secret("signing", &[("other", KEY_32)]).await;
    let _op = bed.start_operator(OperatorOptions::default());
    bed.create_datasource(SIGNED).await;
    let ds = bed.wait_ready("signed", "False", "SecretKeyNotFound").await;
    let message = ready(&ds).expect("Ready").message;
    assert!(
        message.contains("\"signing\"") && message.contains("no key \"key\""),
        "{message}"
    );
}

#[tokio::test]
async fn url_the_schema_lets_through_but_url_parsing_refuses_is_invalid_url() {
    let bed = Bed::new("op-badurl").await;
    let _op = bed.start_operator(OperatorOptions::default());
    bed.create_datasource("metadata: { name: badurl }\nspec: { url: 'https://h:99999/x' }\n")
        .await;
    let ds = bed.wait_ready("badurl", "False", "InvalidUrl").await;
    let message = ready(&ds).expect("Ready").message;
    assert!(message.contains("spec.url"), "{message}");
}

#[tokio::test]
async fn authentication_type_without_its_block_is_invalid_authentication() {
    let bed = Bed::new("op-badauth").await;
    let _op = bed.start_operator(OperatorOptions::default());
    bed.create_datasource(
        "metadata: { name: badauth }\nspec: { url: 'https://h', authentication: { type: Basic } }\n",
    )
    .await;
    let ds = bed
        .wait_ready("badauth", "False", "InvalidAuthentication")
        .await;
    let message = ready(&ds).expect("Ready").message;
    assert!(
        message.contains("spec.authentication.basic is missing"),
        "{message}"
    );
}

#[tokio::test]
async fn ca_secret_without_a_certificate_is_invalid_certificate() {
    let bed = Bed::new("op-badca").await;
    bed.put_secret("ca", &[("ca.crt", "not a certificate")])
        .await;
    let _op = bed.start_operator(OperatorOptions::default());
    bed.create_datasource(
        "metadata: { name: badca }\nspec:\n  url: 'https://h'\n  \
         tls: { caCertificateSecretRef: { name: ca, key: ca.crt } }\n",
    )
    .await;
    let ds = bed.wait_ready("badca", "False", "InvalidCertificate").await;
    let message = ready(&ds).expect("Ready").message;
    assert!(
        message.contains("\"ca\"") && message.contains("\"ca.crt\""),
        "{message}"
    );
}

#[tokio::test]
async fn deleting_the_datasource_deletes_its_configmap() {
    let bed = Bed::new("op-delete").await;
    let _op = bed.start_operator(OperatorOptions::default());
    bed.create_datasource("metadata: { name: gone }\nspec: { url: 'https://h' }\n")
        .await;
    bed.wait_ready("gone", "True", "Reconciled").await;
    bed.wait_configmap("gone-sidekey").await;

    bed.datasources()
        .delete("gone", &DeleteParams::default())
        .await
        .expect("deleting datasource");
    let cms = bed.configmaps();
    sidekey_tests::wait_for(
        "ConfigMap gone-sidekey to be garbage-collected",
        WAIT,
        || async {
            cms.get_opt("gone-sidekey")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn configmap_edited_by_hand_is_restored() {
    let bed = Bed::new("op-drift").await;
    let _op = bed.start_operator(OperatorOptions::default());
    bed.create_datasource("metadata: { name: drift }\nspec: { url: 'https://h' }\n")
        .await;
    bed.wait_ready("drift", "True", "Reconciled").await;
    let good = bed.wait_configmap("drift-sidekey").await;

    let edit = serde_json::json!({"data": {CONFIGMAP_KEY: "edited: by hand\n"}});
    bed.configmaps()
        .patch(
            "drift-sidekey",
            &PatchParams::default(),
            &Patch::Merge(&edit),
        )
        .await
        .expect("editing ConfigMap");
    let cms = bed.configmaps();
    sidekey_tests::wait_for("ConfigMap drift-sidekey to be restored", WAIT, || async {
        let cm = cms.get("drift-sidekey").await.ok()?;
        (cm.data == good.data).then_some(())
    })
    .await;
}

#[tokio::test]
async fn deleting_a_referenced_secret_turns_ready_false_and_keeps_the_configmap() {
    let bed = Bed::new("op-secretgone").await;
    bed.put_secret("signing", &[("key", KEY_32)]).await;
    let _op = bed.start_operator(OperatorOptions::default());
    bed.create_datasource(SIGNED).await;
    bed.wait_ready("signed", "True", "Reconciled").await;
    let before = bed.wait_configmap("signed-sidekey").await;

    bed.secrets()
        .delete("signing", &DeleteParams::default())
        .await
        .expect("deleting Secret");
    let ds = bed.wait_ready("signed", "False", "SecretNotFound").await;
    let message = ready(&ds).expect("Ready").message;
    assert!(message.contains("keeps the last valid spec"), "{message}");
    let during = bed
        .configmaps()
        .get("signed-sidekey")
        .await
        .expect("ConfigMap kept");
    assert_eq!(during.data, before.data);
}

/// Reconciling waits until the operator's Secret watch has listed, so a
/// Secret deleted after the datasource appeared but before that list is
/// still seen (the race behind a flaky run of the test above: the first
/// reconcile read the Secret, it was deleted, and a slow first list of
/// Secrets no longer had it, so no event came). Here taking `list` on
/// Secrets away holds the list back for as long as the test needs.
#[tokio::test]
async fn a_secret_deleted_before_the_secret_watch_listed_is_seen() {
    let bed = Bed::new("op-secretsync").await;
    bed.put_secret("signing", &[("key", KEY_32)]).await;
    bed.withhold_secret_listing().await;
    let op = bed.start_operator(OperatorOptions::default());
    bed.create_datasource(SIGNED).await;
    // The wait is not silent: after 30 s a warning names the watch that
    // has not listed. Meanwhile a reconcile that did not wait would have
    // read the Secret and said Ready=True.
    let warned = sidekey_tests::wait_for(
        "the warning naming the Secret watch",
        std::time::Duration::from_secs(60),
        || {
            let logs = op.logs();
            std::future::ready(
                logs.lines()
                    .find(|l| l.contains("no datasource is reconciled until"))
                    .map(str::to_owned),
            )
        },
    )
    .await;
    assert!(
        warned.contains("Secrets") && !warned.contains("ConfigMaps"),
        "it names the Secret watch only: {warned}"
    );
    let ds = bed.datasources().get("signed").await.expect("datasource");
    assert_eq!(ready(&ds), None, "reconciled before Secrets were listed");

    bed.secrets()
        .delete("signing", &DeleteParams::default())
        .await
        .expect("deleting Secret");
    bed.restore_secret_listing().await;
    // After half a minute of refusals the watcher's next try may be a
    // minute away (kube-runtime's default backoff: doubling from 0.8 s up
    // to 30 s, plus as much again of jitter).
    bed.wait_condition_within(
        "signed",
        "Ready",
        "False",
        "SecretNotFound",
        std::time::Duration::from_secs(75),
    )
    .await;
    let logs = op.logs();
    assert!(
        logs.contains("secrets") && logs.contains("forbidden"),
        "the refused Secret watch is logged:\n{logs}"
    );
}

#[tokio::test]
async fn configmap_deleted_by_hand_is_recreated() {
    let bed = Bed::new("op-cmgone").await;
    let _op = bed.start_operator(OperatorOptions::default());
    bed.create_datasource("metadata: { name: regrow }\nspec: { url: 'https://h' }\n")
        .await;
    bed.wait_ready("regrow", "True", "Reconciled").await;
    let good = bed.wait_configmap("regrow-sidekey").await;

    bed.configmaps()
        .delete("regrow-sidekey", &DeleteParams::default())
        .await
        .expect("deleting ConfigMap");
    let cms = bed.configmaps();
    let again = sidekey_tests::wait_for("ConfigMap regrow-sidekey to be recreated", WAIT, || {
        let cms = cms.clone();
        let old_uid = good.metadata.uid.clone();
        async move {
            let cm = cms.get_opt("regrow-sidekey").await.ok()??;
            (cm.metadata.uid != old_uid).then_some(cm)
        }
    })
    .await;
    assert_eq!(again.data, good.data);
}
