//! The kubelet's part of a Secret volume, for pods that never run on the
//! test bed: the keys of a Secret written as files under
//! `<dir>/<secret>/<key>`, updated atomically when the Secret changes, with
//! the kubelet's own layout (`..<version>/` directories, a `..data` symlink
//! swapped by rename, and `<key> -> ..data/<key>` symlinks).
//!
//! [`lay_out_container`] does the same once for every ConfigMap, Secret and
//! projected volume a container of a stored pod mounts, and
//! [`rooted_args`] moves the paths in its arguments under the directory
//! they were laid out in: what `sidekey-kubelet` (a binary of this crate,
//! used by `scripts/try-it`) needs to start an injected sidecar.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Container, KeyToPath, Pod, Secret, VolumeMount};
use kube::{Api, Client};
use tokio::task::JoinHandle;

/// How often the Secret is read.
const POLL: Duration = Duration::from_millis(250);

/// A Secret volume kept up to date by a background task; dropping it stops
/// the task and leaves the files as they are.
pub struct SecretVolume {
    path: PathBuf,
    versions: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for SecretVolume {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SecretVolume {
    /// Mounts the `keys` of Secret `namespace/secret_name` at
    /// `dir/<secret_name>/` (the directory exists at once, empty, as an
    /// optional volume's would). Every 250 ms it reads the Secret and, when
    /// the listed keys changed, lays out a new version. A Secret that does
    /// not exist, lacks one of the keys or cannot be read leaves the
    /// volume as it is. Must be called within a Tokio runtime.
    pub fn start(
        client: Client,
        namespace: &str,
        secret_name: &str,
        keys: &[&str],
        dir: PathBuf,
    ) -> SecretVolume {
        let path = dir.join(secret_name);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let api: Api<Secret> = Api::namespaced(client, namespace);
        let name = secret_name.to_owned();
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        let versions = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (path, versions) = (path.clone(), versions.clone());
            async move {
                let mut last: Option<BTreeMap<String, Vec<u8>>> = None;
                loop {
                    if let Ok(Some(secret)) = api.get_opt(&name).await
                        && let Some(files) = listed_keys(&secret, &keys)
                        && last.as_ref() != Some(&files)
                    {
                        let version = versions.load(Ordering::SeqCst) + 1;
                        let files_ref: Vec<(&String, &Vec<u8>)> = files.iter().collect();
                        lay_out(&path, &version.to_string(), &files_ref);
                        versions.store(version, Ordering::SeqCst);
                        last = Some(files);
                    }
                    tokio::time::sleep(POLL).await;
                }
            }
        });
        SecretVolume {
            path,
            versions,
            task,
        }
    }

    /// `dir/<secret_name>`, the volume's mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many versions were laid out (`..data` swaps) so far.
    pub fn versions(&self) -> usize {
        self.versions.load(Ordering::SeqCst)
    }
}

/// The values of `keys` in the Secret, or None when one is missing.
fn listed_keys(secret: &Secret, keys: &[String]) -> Option<BTreeMap<String, Vec<u8>>> {
    let data = secret.data.as_ref()?;
    keys.iter()
        .map(|k| Some((k.clone(), data.get(k)?.0.clone())))
        .collect()
}

/// Lays out `files` (key, content) in the volume directory `dir` as the
/// kubelet's atomic writer does: writes them into a new `dir/..<version>/`,
/// points `dir/..data` at it by renaming a fresh symlink over the old one,
/// adds a `dir/<key> -> ..data/<key>` symlink for each new key, then
/// removes the symlinks of keys no longer there and the previous version
/// directory. Readers of `dir/<key>` see the old or the new content, never
/// a mix. `version` must be new for `dir`. Panics on any I/O error.
pub fn lay_out<K, V>(dir: &Path, version: &str, files: &[(K, V)])
where
    K: AsRef<str>,
    V: AsRef<[u8]>,
{
    try_lay_out(dir, version, files).unwrap_or_else(|e| panic!("{e}"));
}

/// [`lay_out`], returning the first I/O error (naming the path) instead
/// of panicking.
pub fn try_lay_out<K, V>(dir: &Path, version: &str, files: &[(K, V)]) -> Result<(), KubeletError>
where
    K: AsRef<str>,
    V: AsRef<[u8]>,
{
    let fail = |what: &'static str, path: &Path, source: std::io::Error| KubeletError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| fail("creating", dir, e))?;
    let version = format!("..{version}");
    let versioned = dir.join(&version);
    std::fs::create_dir(&versioned).map_err(|e| fail("creating", &versioned, e))?;
    for (key, content) in files {
        let file = versioned.join(key.as_ref());
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| fail("creating", parent, e))?;
        }
        std::fs::write(&file, content).map_err(|e| fail("writing", &file, e))?;
    }

    let data = dir.join("..data");
    let previous = std::fs::read_link(&data).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&version, &tmp).map_err(|e| fail("linking", &tmp, e))?;
    std::fs::rename(&tmp, &data).map_err(|e| fail("swapping", &data, e))?;

    let keys: Vec<&str> = files.iter().map(|(k, _)| k.as_ref()).collect();
    for key in &keys {
        let link = dir.join(key);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{key}"), &link)
                .map_err(|e| fail("linking", &link, e))?;
        }
    }
    let entries = std::fs::read_dir(dir).map_err(|e| fail("reading", dir, e))?;
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with("..") && !keys.contains(&name.as_ref()) {
            let stale = entry.path();
            std::fs::remove_file(&stale).map_err(|e| fail("removing", &stale, e))?;
        }
    }
    if let Some(previous) = previous.filter(|p| *p != Path::new(&version)) {
        let previous = dir.join(previous);
        std::fs::remove_dir_all(&previous).map_err(|e| fail("removing", &previous, e))?;
    }
    Ok(())
}

/// Why a pod's volumes could not be laid out.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {kind} {namespace}/{name}: {source}")]
    Read {
        kind: &'static str,
        namespace: String,
        name: String,
        // Boxed: kube::Error is large, and this error travels by value.
        #[source]
        source: Box<kube::Error>,
    },
    #[error("{kind} {namespace}/{name} of volume {volume} does not exist")]
    Missing {
        kind: &'static str,
        namespace: String,
        name: String,
        volume: String,
    },
    #[error("{kind} {name} has no key {key} (volume {volume})")]
    MissingKey {
        kind: &'static str,
        name: String,
        key: String,
        volume: String,
    },
    #[error("container {container} mounts volume {volume}, which the pod does not have")]
    NoVolume { container: String, volume: String },
    #[error("volume {volume} is {detail}, which is not played here")]
    Unsupported { volume: String, detail: String },
}

/// One source of a volume: a ConfigMap or a Secret, with the items it
/// picks (all keys when none) and whether it may be missing.
struct Source<'a> {
    kind: &'static str,
    name: String,
    items: Option<&'a [KeyToPath]>,
    optional: bool,
}

/// Lays out every volume `container` of `pod` mounts under `root`, at its
/// mount path, with the values the API holds now, as the kubelet would
/// before starting it. Returns the directories written.
pub async fn lay_out_container(
    client: &Client,
    pod: &Pod,
    container: &Container,
    root: &Path,
) -> Result<Vec<PathBuf>, KubeletError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let mut written = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .ok_or_else(|| KubeletError::NoVolume {
                container: container.name.clone(),
                volume: mount.name.clone(),
            })?;
        let unsupported = |detail: &str| KubeletError::Unsupported {
            volume: mount.name.clone(),
            detail: detail.to_owned(),
        };
        if mount.sub_path.is_some() {
            return Err(unsupported("mounted with a subPath"));
        }
        let mut sources = Vec::new();
        if let Some(cm) = &volume.config_map {
            sources.push(Source {
                kind: "ConfigMap",
                name: cm.name.clone(),
                items: cm.items.as_deref(),
                optional: cm.optional == Some(true),
            });
        } else if let Some(secret) = &volume.secret {
            sources.push(Source {
                kind: "Secret",
                name: secret.secret_name.clone().unwrap_or_default(),
                items: secret.items.as_deref(),
                optional: secret.optional == Some(true),
            });
        } else if let Some(projected) = &volume.projected {
            for p in projected.sources.iter().flatten() {
                if let Some(cm) = &p.config_map {
                    sources.push(Source {
                        kind: "ConfigMap",
                        name: cm.name.clone(),
                        items: cm.items.as_deref(),
                        optional: cm.optional == Some(true),
                    });
                } else if let Some(secret) = &p.secret {
                    sources.push(Source {
                        kind: "Secret",
                        name: secret.name.clone(),
                        items: secret.items.as_deref(),
                        optional: secret.optional == Some(true),
                    });
                } else {
                    return Err(unsupported("a projected volume with another source"));
                }
            }
        } else {
            return Err(unsupported("neither a ConfigMap, a Secret nor projected"));
        }
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        for source in sources {
            let Some(data) = source_data(client, &namespace, &source, mount).await? else {
                continue;
            };
            match source.items {
                Some(items) => {
                    for item in items {
                        let value =
                            data.get(&item.key)
                                .ok_or_else(|| KubeletError::MissingKey {
                                    kind: source.kind,
                                    name: source.name.clone(),
                                    key: item.key.clone(),
                                    volume: mount.name.clone(),
                                })?;
                        files.push((item.path.clone(), value.clone()));
                    }
                }
                None => files.extend(data),
            }
        }
        let dir = root.join(mount.mount_path.trim_start_matches('/'));
        try_lay_out(&dir, "1", &files)?;
        written.push(dir);
    }
    Ok(written)
}

/// The keys of a volume's source; None for a missing optional one.
async fn source_data(
    client: &Client,
    namespace: &str,
    source: &Source<'_>,
    mount: &VolumeMount,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, KubeletError> {
    let read = |source_error| KubeletError::Read {
        kind: source.kind,
        namespace: namespace.to_owned(),
        name: source.name.clone(),
        source: Box::new(source_error),
    };
    let data = if source.kind == "ConfigMap" {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        api.get_opt(&source.name).await.map_err(read)?.map(|cm| {
            cm.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .chain(
                    cm.binary_data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0)),
                )
                .collect()
        })
    } else {
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        api.get_opt(&source.name).await.map_err(read)?.map(|s| {
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        })
    };
    match data {
        Some(data) => Ok(Some(data)),
        None if source.optional => Ok(None),
        None => Err(KubeletError::Missing {
            kind: source.kind,
            namespace: namespace.to_owned(),
            name: source.name.clone(),
            volume: mount.name.clone(),
        }),
    }
}

/// `args` with every absolute path at, under or above one of `mounts`
/// (alone, or as the value of `--flag=PATH`; a directory holding mounts,
/// like the sidecar's `--secrets-dir`, counts) moved under `root`, where
/// the volumes were laid out.
/// The injected sidecar of a stored pod: a container, or an init container
/// on clusters with native sidecars.
pub fn sidecar_of(pod: &Pod) -> Option<Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == sidekey_crds::names::SIDECAR_CONTAINER)
        .cloned()
}

pub fn rooted_args(root: &Path, mounts: &[VolumeMount], args: &[String]) -> Vec<String> {
    let within =
        |inner: &str, outer: &str| inner == outer || inner.starts_with(&format!("{outer}/"));
    let under = |path: &str| -> Option<String> {
        let trimmed = path.trim_end_matches('/');
        (path.starts_with('/')
            && mounts.iter().any(|m| {
                let mount = m.mount_path.trim_end_matches('/');
                within(trimmed, mount) || within(mount, trimmed)
            }))
        .then(|| {
            root.join(path.trim_start_matches('/'))
                .display()
                .to_string()
        })
    };
    args.iter()
        .map(|arg| {
            if let Some(moved) = under(arg) {
                return moved;
            }
            if let Some((flag, value)) = arg.split_once('=')
                && let Some(moved) = under(value)
            {
                return format!("{flag}={moved}");
            }
            arg.clone()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: PathBuf) -> String {
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn versions_are_swapped_in_and_the_old_one_removed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ds-sidekey-oauth");
        lay_out(&dir, "1", &[("access-token", "one"), ("expires-at", "t1")]);
        assert_eq!(read(dir.join("access-token")), "one");
        assert_eq!(
            std::fs::read_link(dir.join("access-token")).expect("key link"),
            Path::new("..data/access-token")
        );
        assert_eq!(
            std::fs::read_link(dir.join("..data")).expect("..data"),
            Path::new("..1")
        );

        lay_out(&dir, "2", &[("access-token", b"two".as_slice())]);
        assert_eq!(read(dir.join("access-token")), "two");
        assert_eq!(
            names(&dir),
            ["..2", "..data", "access-token"],
            "the old version and the key no longer there are gone"
        );
    }

    #[test]
    fn a_first_layout_creates_the_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("a/b");
        lay_out(&dir, "v", &[(String::from("k"), vec![0u8, 1, 2])]);
        assert_eq!(std::fs::read(dir.join("k")).expect("k"), [0, 1, 2]);
    }

    #[test]
    fn paths_under_a_mount_move_under_the_root() {
        let mount = |path: &str| VolumeMount {
            mount_path: path.to_owned(),
            name: "v".to_owned(),
            ..Default::default()
        };
        let mounts = [
            mount("/etc/sidekey/datasources/echo"),
            mount("/var/run/s/token/"),
        ];
        let args: Vec<String> = [
            "--datasource=/etc/sidekey/datasources/echo/datasource.yaml",
            "--secrets-dir",
            "/var/run/s",
            "--listen=127.0.0.1:15000",
            "/etc/sidekey/datasources/echoes",
        ]
        .map(str::to_owned)
        .to_vec();
        assert_eq!(
            rooted_args(Path::new("/r"), &mounts, &args),
            [
                "--datasource=/r/etc/sidekey/datasources/echo/datasource.yaml",
                "--secrets-dir",
                "/r/var/run/s",
                "--listen=127.0.0.1:15000",
                "/etc/sidekey/datasources/echoes",
            ]
        );
    }
}
