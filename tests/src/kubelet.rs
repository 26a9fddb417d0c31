//! The kubelet's part of a Secret volume, for pods that never run on the
//! test bed: the keys of a Secret written as files under
//! `<dir>/<secret>/<key>`, updated atomically when the Secret changes, with
//! the kubelet's own layout (`..<version>/` directories, a `..data` symlink
//! swapped by rename, and `<key> -> ..data/<key>` symlinks).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
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
    let fail = |what: &str, path: &Path, e: std::io::Error| -> ! {
        panic!("{what} {}: {e}", path.display())
    };
    std::fs::create_dir_all(dir).unwrap_or_else(|e| fail("creating", dir, e));
    let version = format!("..{version}");
    let versioned = dir.join(&version);
    std::fs::create_dir(&versioned).unwrap_or_else(|e| fail("creating", &versioned, e));
    for (key, content) in files {
        let file = versioned.join(key.as_ref());
        std::fs::write(&file, content).unwrap_or_else(|e| fail("writing", &file, e));
    }

    let data = dir.join("..data");
    let previous = std::fs::read_link(&data).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&version, &tmp).unwrap_or_else(|e| fail("linking", &tmp, e));
    std::fs::rename(&tmp, &data).unwrap_or_else(|e| fail("swapping", &data, e));

    let keys: Vec<&str> = files.iter().map(|(k, _)| k.as_ref()).collect();
    for key in &keys {
        let link = dir.join(key);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{key}"), &link)
                .unwrap_or_else(|e| fail("linking", &link, e));
        }
    }
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| fail("reading", dir, e));
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with("..") && !keys.contains(&name.as_ref()) {
            let stale = entry.path();
            std::fs::remove_file(&stale).unwrap_or_else(|e| fail("removing", &stale, e));
        }
    }
    if let Some(previous) = previous.filter(|p| *p != Path::new(&version)) {
        let previous = dir.join(previous);
        std::fs::remove_dir_all(&previous).unwrap_or_else(|e| fail("removing", &previous, e));
    }
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
}
