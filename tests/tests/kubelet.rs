//! The Secret volume the tests lay out in the kubelet's place, against the
//! test bed: empty until the Secret has every listed key, then one version
//! per change of those keys, and only those keys on disk.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use sidekey_tests::kubelet::SecretVolume;
use sidekey_tests::{client, namespace, wait_for};

const NAME: &str = "payments-sidekey-oauth";

/// Creates or replaces the Secret with exactly `data`.
async fn put(secrets: &Api<Secret>, data: &[(&str, &str)]) {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(NAME.to_owned()),
            ..Default::default()
        },
        string_data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    };
    let written = match secrets.get_opt(NAME).await.expect("reading the Secret") {
        Some(_) => secrets.replace(NAME, &PostParams::default(), &secret).await,
        None => secrets.create(&PostParams::default(), &secret).await,
    };
    written.unwrap_or_else(|e| panic!("writing Secret {NAME}: {e}"));
}

async fn wait_version(volume: &SecretVolume, n: usize) {
    wait_for(
        &format!("version {n} of the volume"),
        Duration::from_secs(10),
        || async { (volume.versions() >= n).then_some(()) },
    )
    .await;
    assert_eq!(volume.versions(), n, "one version per change");
}

#[tokio::test]
async fn the_volume_follows_the_secret() {
    let client = client().await;
    let ns = namespace(&client, "kubelet").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let tmp = tempfile::tempdir().expect("tempdir");
    let volume = SecretVolume::start(
        client.clone(),
        &ns,
        NAME,
        &["access-token", "expires-at"],
        tmp.path().to_owned(),
    );
    let dir = volume.path().to_owned();
    assert_eq!(dir, tmp.path().join(NAME));
    assert!(dir.is_dir(), "mounted empty at once");

    // Neither a missing Secret nor one without every listed key is written.
    tokio::time::sleep(Duration::from_millis(600)).await;
    put(&secrets, &[("access-token", "a1")]).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(volume.versions(), 0);
    assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 0);

    // Each change of a listed key is a new version of just the listed keys;
    // a change of another key is none.
    let first = [
        ("access-token", "a1"),
        ("expires-at", "2030-01-01T00:00:00Z"),
        ("refresh-token", "never mounted"),
    ];
    let unlisted = [first[0], first[1], ("refresh-token", "rotated")];
    let second = [
        ("access-token", "a2"),
        ("expires-at", "2030-01-02T00:00:00Z"),
    ];
    for (version, data) in [(1, &first[..]), (1, &unlisted[..]), (2, &second[..])] {
        put(&secrets, data).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        wait_version(&volume, version).await;
        for (key, value) in data {
            let mounted = std::fs::read_to_string(dir.join(key)).ok();
            let listed = *key != "refresh-token";
            assert_eq!(mounted.as_deref(), listed.then_some(*value), "{key}");
        }
    }
    assert_eq!(
        std::fs::read_link(dir.join("..data")).expect("..data"),
        Path::new("..2")
    );

    // Dropped, it writes no more.
    drop(volume);
    put(&secrets, &first).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mounted = std::fs::read_to_string(dir.join("access-token")).ok();
    assert_eq!(mounted.as_deref(), Some("a2"));
}
