//! The webhook certificate against the real API server: `ensure` issues
//! the Secret once and then leaves it alone, two replicas racing converge
//! on one Secret and publish only the bundle that won, `load_loop` follows
//! the Secret without a restart, `rotate_loop` reissues a deleted Secret,
//! and provided mode never writes. The operator's side runs as the
//! ServiceAccount bound to `operator/rbac.yaml`, so a missing rule fails.
//! Each test uses its own namespace.
//!
//! Needs the test bed: run with `scripts/test`, or set
//! SIDEKEY_TEST_KUBECONFIG (see `scripts/kube-testbed.sh`).

mod support;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use sidekey_operator::webhook::certs::{
    self, CA_CRT, CA_KEY, CertConfig, CertError, Mode, Publish, SECRET_TYPE, ServingCert, TLS_CRT,
    TLS_KEY,
};
use support::{Bed, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "sidekey-webhook-tls";

fn config(ns: &str, mode: Mode) -> CertConfig {
    CertConfig {
        namespace: ns.to_owned(),
        secret_name: SECRET.to_owned(),
        mode,
        dns_names: vec!["localhost".into(), format!("sidekey-webhook.{ns}.svc")],
        ip_addresses: vec![IpAddr::from([127, 0, 0, 1])],
    }
}

/// A client authenticating as the operator's ServiceAccount.
async fn operator_client(bed: &Bed) -> Client {
    let kubeconfig = Kubeconfig::read_from(&bed.kubeconfig).expect("operator kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("operator client config");
    Client::try_from(config).expect("operator client")
}

/// A `Publish` that records every bundle it is given.
fn recorder() -> (Publish, Arc<Mutex<Vec<Vec<u8>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let publish: Publish = Arc::new(move |bundle: Vec<u8>| {
        log.lock().expect("publish log").push(bundle);
        async { Ok(()) }.boxed()
    });
    (publish, seen)
}

fn published(seen: &Arc<Mutex<Vec<Vec<u8>>>>) -> Vec<Vec<u8>> {
    seen.lock().expect("publish log").clone()
}

fn value(secret: &Secret, key: &str) -> Vec<u8> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| v.0.clone())
        .unwrap_or_default()
}

fn certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

fn resource_version(secret: &Secret) -> String {
    secret
        .metadata
        .resource_version
        .clone()
        .expect("resourceVersion")
}

/// One TLS handshake with `server` over loopback, trusting only `trust`;
/// returns the certificate the server presented.
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    trust: &[u8],
) -> Result<CertificateDer<'static>, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let served = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let mut ping = [0; 4];
        tls.read_exact(&mut ping).await?;
        tls.write_all(b"pong").await?;
        tls.shutdown().await
    });
    let mut roots = rustls::RootCertStore::empty();
    for ca in certs(trust) {
        roots.add(ca).map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let result = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let presented = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned())
            .ok_or("no certificate presented")?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut pong = [0; 4];
        tls.read_exact(&mut pong).await.map_err(|e| e.to_string())?;
        Ok(presented)
    }
    .await;
    served.abort();
    result
}

#[tokio::test]
async fn ensure_issues_the_secret_once_and_then_changes_nothing() {
    let bed = Bed::new("certs").await;
    let client = operator_client(&bed).await;
    let config = config(&bed.ns, Mode::Managed);
    let (publish, seen) = recorder();

    let bundle = certs::ensure(&client, &config, &publish)
        .await
        .expect("first ensure");
    let secret = bed.secrets().get(SECRET).await.expect("Secret written");
    assert_eq!(secret.type_.as_deref(), Some(SECRET_TYPE));
    assert_eq!(
        secret
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("app.kubernetes.io/managed-by"))
            .map(String::as_str),
        Some("sidekey")
    );
    for key in [TLS_CRT, TLS_KEY, CA_CRT, CA_KEY] {
        assert!(!value(&secret, key).is_empty(), "{key} empty");
    }
    assert_eq!(bundle, value(&secret, CA_CRT));
    assert_eq!(certs(&bundle).len(), 1);
    assert_eq!(
        published(&seen),
        std::slice::from_ref(&bundle),
        "published once, before the serving certificate"
    );

    // What was issued serves TLS that a client trusting the bundle accepts.
    let serving = ServingCert::new();
    serving.load(&secret).expect("loads");
    let presented = handshake(serving.server_config(), &bundle)
        .await
        .expect("handshake");
    assert_eq!(presented, certs(&value(&secret, TLS_CRT))[0]);

    let again = certs::ensure(&client, &config, &publish)
        .await
        .expect("second ensure");
    assert_eq!(again, bundle);
    let after = bed.secrets().get(SECRET).await.expect("Secret");
    assert_eq!(resource_version(&after), resource_version(&secret));
    assert_eq!(published(&seen).len(), 1, "nothing new to publish");
}

#[tokio::test]
async fn racing_ensures_converge_on_one_secret_and_publish_only_its_bundle() {
    let bed = Bed::new("certs").await;
    let a = operator_client(&bed).await;
    let b = operator_client(&bed).await;
    let config = config(&bed.ns, Mode::Managed);
    for round in 0..3 {
        let (publish_a, seen_a) = recorder();
        let (publish_b, seen_b) = recorder();
        let (from_a, from_b) = tokio::join!(
            certs::ensure(&a, &config, &publish_a),
            certs::ensure(&b, &config, &publish_b),
        );
        let from_a = from_a.unwrap_or_else(|e| panic!("round {round}: replica a: {e}"));
        let from_b = from_b.unwrap_or_else(|e| panic!("round {round}: replica b: {e}"));
        assert_eq!(from_a, from_b, "round {round}: both return one bundle");
        let secret = bed.secrets().get(SECRET).await.expect("Secret");
        assert_eq!(value(&secret, CA_CRT), from_a);
        assert_eq!(certs(&from_a).len(), 1, "round {round}: one CA");
        // No replica ever published a CA that lost the race.
        let all: Vec<Vec<u8>> = published(&seen_a)
            .into_iter()
            .chain(published(&seen_b))
            .collect();
        assert!(!all.is_empty(), "round {round}: nothing published");
        assert!(
            all.iter().all(|b| *b == from_a),
            "round {round}: a bundle other than the Secret's was published"
        );
        let serving = ServingCert::new();
        serving.load(&secret).expect("loads");
        handshake(serving.server_config(), &from_a)
            .await
            .unwrap_or_else(|e| panic!("round {round}: handshake: {e}"));

        bed.secrets()
            .delete(SECRET, &DeleteParams::default())
            .await
            .expect("deleting the Secret for the next round");
    }
}

#[tokio::test]
async fn load_loop_loads_the_secret_and_follows_each_new_version() {
    let bed = Bed::new("certs").await;
    let client = operator_client(&bed).await;
    let config = config(&bed.ns, Mode::Managed);
    let (publish, _) = recorder();
    let serving = ServingCert::new();
    let shutdown = CancellationToken::new();
    let loop_task = tokio::spawn(certs::load_loop(
        client.clone(),
        config.clone(),
        serving.clone(),
        shutdown.clone(),
    ));
    let server = serving.server_config();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!serving.is_loaded(), "no Secret yet");

    let first = certs::ensure(&client, &config, &publish)
        .await
        .expect("ensure");
    sidekey_tests::wait_for("the first certificate loaded", WAIT, || async {
        (serving.ca_bundle().as_deref() == Some(first.as_slice())).then_some(())
    })
    .await;
    let secret = bed.secrets().get(SECRET).await.expect("Secret");
    let presented = handshake(server.clone(), &first)
        .await
        .expect("first handshake");
    assert_eq!(presented, certs(&value(&secret, TLS_CRT))[0]);

    // A version that does not load: the previous certificate keeps serving.
    let mut broken = secret.clone();
    broken.metadata.managed_fields = None;
    broken.data.get_or_insert_default().insert(
        TLS_CRT.into(),
        ByteString(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec()),
    );
    bed.secrets()
        .replace(SECRET, &PostParams::default(), &broken)
        .await
        .expect("breaking tls.crt");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        handshake(server.clone(), &first)
            .await
            .expect("still serving"),
        presented
    );

    // The CA key lost: `ensure` makes a new CA and a serving certificate
    // signed by it, and the loop picks both up without a restart.
    let mut lost_key = bed.secrets().get(SECRET).await.expect("Secret");
    lost_key.metadata.managed_fields = None;
    lost_key.data.get_or_insert_default().remove(CA_KEY);
    bed.secrets()
        .replace(SECRET, &PostParams::default(), &lost_key)
        .await
        .expect("removing ca.key");
    let rotated = certs::ensure(&client, &config, &publish)
        .await
        .expect("ensure after the change");
    assert_eq!(certs(&rotated).len(), 2, "new CA and the old one");
    sidekey_tests::wait_for("the rotated certificate loaded", WAIT, || async {
        (serving.ca_bundle().as_deref() == Some(rotated.as_slice())).then_some(())
    })
    .await;
    let secret = bed.secrets().get(SECRET).await.expect("Secret");
    let new_ca_only = &rotated[..rotated.len() - first.len()];
    let presented = handshake(server.clone(), new_ca_only)
        .await
        .expect("handshake trusting only the new CA");
    assert_eq!(presented, certs(&value(&secret, TLS_CRT))[0]);
    assert!(
        handshake(server.clone(), &first).await.is_err(),
        "the old CA alone no longer verifies the served certificate"
    );

    // Deleted: the last certificate keeps serving.
    bed.secrets()
        .delete(SECRET, &DeleteParams::default())
        .await
        .expect("deleting the Secret");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(serving.is_loaded());
    handshake(server, &rotated)
        .await
        .expect("serving after deletion");

    shutdown.cancel();
    tokio::time::timeout(WAIT, loop_task)
        .await
        .expect("load_loop returns on shutdown")
        .expect("load_loop task");
}

#[tokio::test]
async fn rotate_loop_issues_publishes_and_reissues_a_deleted_secret() {
    let bed = Bed::new("certs").await;
    let client = operator_client(&bed).await;
    let config = config(&bed.ns, Mode::Managed);
    let (publish, seen) = recorder();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(certs::rotate_loop(
        client,
        config,
        publish,
        Duration::from_secs(3600),
        shutdown.clone(),
    ));
    let api = bed.secrets();
    let first = sidekey_tests::wait_for("the Secret issued", WAIT, || async {
        let s = api.get_opt(SECRET).await.ok().flatten()?;
        (!value(&s, TLS_CRT).is_empty()).then_some(s)
    })
    .await;
    sidekey_tests::wait_for("the bundle published", WAIT, || async {
        published(&seen)
            .contains(&value(&first, CA_CRT))
            .then_some(())
    })
    .await;

    api.delete(SECRET, &DeleteParams::default())
        .await
        .expect("deleting the Secret");
    let second = sidekey_tests::wait_for("the Secret reissued", WAIT, || async {
        let s = api.get_opt(SECRET).await.ok().flatten()?;
        (s.metadata.uid != first.metadata.uid && !value(&s, TLS_CRT).is_empty()).then_some(s)
    })
    .await;
    assert_ne!(value(&second, CA_CRT), value(&first, CA_CRT));
    sidekey_tests::wait_for("the new bundle published", WAIT, || async {
        (published(&seen).last() == Some(&value(&second, CA_CRT))).then_some(())
    })
    .await;

    shutdown.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("rotate_loop returns on shutdown")
        .expect("rotate_loop task");
}

/// A Secret as cert-manager writes it: no `ca.key`, no label of ours.
fn provided_secret(ns: &str) -> Secret {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let cert = params.signed_by(&key, &ca).expect("certificate");
    let data = [
        (TLS_CRT, cert.pem()),
        (TLS_KEY, key.serialize_pem()),
        (CA_CRT, ca.pem()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes())))
    .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(SECRET.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        type_: Some(SECRET_TYPE.into()),
        data: Some(data),
        ..Default::default()
    }
}

#[tokio::test]
async fn provided_mode_reads_the_secret_and_never_writes_it() {
    let bed = Bed::new("certs").await;
    let client = operator_client(&bed).await;
    let config = config(&bed.ns, Mode::Provided);
    let (publish, seen) = recorder();
    let api: Api<Secret> = bed.secrets();

    let missing = certs::ensure(&client, &config, &publish).await;
    assert!(
        matches!(missing, Err(CertError::NotFound { .. })),
        "{missing:?}"
    );
    let shutdown = CancellationToken::new();
    let rotate = tokio::spawn(certs::rotate_loop(
        client.clone(),
        config.clone(),
        publish.clone(),
        Duration::from_millis(100),
        shutdown.clone(),
    ));
    let serving = ServingCert::new();
    let load = tokio::spawn(certs::load_loop(
        client.clone(),
        config.clone(),
        serving.clone(),
        shutdown.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        api.get_opt(SECRET).await.expect("get").is_none(),
        "created a Secret"
    );

    let created = api
        .create(&PostParams::default(), &provided_secret(&bed.ns))
        .await
        .expect("the installer's Secret");
    sidekey_tests::wait_for("the provided certificate loaded", WAIT, || async {
        serving.is_loaded().then_some(())
    })
    .await;
    let ca = value(&created, CA_CRT);
    assert_eq!(serving.ca_bundle(), Some(ca.clone()));
    let presented = handshake(serving.server_config(), &ca)
        .await
        .expect("handshake");
    assert_eq!(presented, certs(&value(&created, TLS_CRT))[0]);

    let bundle = certs::ensure(&client, &config, &publish)
        .await
        .expect("ensure reads");
    assert_eq!(bundle, ca);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = api.get(SECRET).await.expect("Secret");
    assert_eq!(resource_version(&after), resource_version(&created));
    assert!(after.metadata.labels.is_none(), "labelled in provided mode");
    assert!(published(&seen).is_empty(), "published in provided mode");

    shutdown.cancel();
    for task in [rotate, load] {
        tokio::time::timeout(WAIT, task)
            .await
            .expect("loop returns on shutdown")
            .expect("loop task");
    }
}
