//! Which datasources reference which Secret, kept up to date from the
//! datasource watch, so a Secret event finds its datasources with one map
//! lookup instead of a scan of every datasource. Only names are kept:
//! nothing of a Secret's content is ever here.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use sidekey_crds::{ApiDatasource, ApiDatasourceSpec};

/// `(namespace, name)`.
type Key = (String, String);

#[derive(Debug, Default)]
struct Inner {
    /// `(namespace, secret)` to the names of the datasources referencing it.
    by_secret: HashMap<Key, BTreeSet<String>>,
    /// `(namespace, datasource)` to the Secrets it references.
    by_datasource: HashMap<Key, BTreeSet<String>>,
    /// Datasources listed since the watch (re)started, while it lists.
    relisted: Option<HashSet<Key>>,
}

/// A cheap handle; clones share one index.
#[derive(Clone, Debug, Default)]
pub struct SecretsIndex {
    inner: Arc<RwLock<Inner>>,
}

impl SecretsIndex {
    /// Updates the index from one event of the datasource watch.
    pub fn observe(&self, event: &watcher::Event<ApiDatasource>) {
        let mut inner = self.write();
        match event {
            watcher::Event::Apply(ds) => inner.set(ds),
            watcher::Event::Delete(ds) => inner.remove(&key_of(ds)),
            watcher::Event::Init => inner.relisted = Some(HashSet::new()),
            watcher::Event::InitApply(ds) => {
                inner.set(ds);
                if let Some(seen) = inner.relisted.as_mut() {
                    seen.insert(key_of(ds));
                }
            }
            watcher::Event::InitDone => {
                // What the relist did not return was deleted while the
                // watch was down.
                if let Some(seen) = inner.relisted.take() {
                    let gone: Vec<Key> = inner
                        .by_datasource
                        .keys()
                        .filter(|k| !seen.contains(*k))
                        .cloned()
                        .collect();
                    for k in gone {
                        inner.remove(&k);
                    }
                }
            }
        }
    }

    /// The datasources that reference Secret `secret` of `namespace`.
    pub fn datasources_for(&self, namespace: &str, secret: &str) -> Vec<ObjectRef<ApiDatasource>> {
        let inner = self.read();
        inner
            .by_secret
            .get(&(namespace.to_owned(), secret.to_owned()))
            .map(|names| {
                names
                    .iter()
                    .map(|n| ObjectRef::new(n).within(namespace))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many Secrets are indexed (for tests and diagnostics).
    pub fn secret_count(&self) -> usize {
        self.read().by_secret.len()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent maps (every
        // update is a few inserts/removes), so a poisoned lock is usable.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    fn set(&mut self, ds: &ApiDatasource) {
        let key = key_of(ds);
        self.remove(&key);
        let secrets = referenced_secrets(&ds.spec);
        for s in &secrets {
            self.by_secret
                .entry((key.0.clone(), s.clone()))
                .or_default()
                .insert(key.1.clone());
        }
        if !secrets.is_empty() {
            self.by_datasource.insert(key, secrets);
        }
    }

    fn remove(&mut self, key: &Key) {
        let Some(secrets) = self.by_datasource.remove(key) else {
            return;
        };
        for s in secrets {
            let sk = (key.0.clone(), s);
            if let Some(names) = self.by_secret.get_mut(&sk) {
                names.remove(&key.1);
                if names.is_empty() {
                    self.by_secret.remove(&sk);
                }
            }
        }
    }
}

fn key_of(ds: &ApiDatasource) -> Key {
    (ds.namespace().unwrap_or_default(), ds.name_any())
}

/// Every Secret a spec names, whether or not the spec is otherwise valid
/// (a datasource waiting for a Secret must be woken when it appears).
pub fn referenced_secrets(spec: &ApiDatasourceSpec) -> BTreeSet<String> {
    spec.secret_refs()
        .into_iter()
        .map(|(_, r)| r.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;
    use sidekey_crds::{Authentication, AuthenticationType, BearerToken, SecretRef};

    fn ds(ns: &str, name: &str, token_secret: Option<&str>) -> ApiDatasource {
        let authentication = match token_secret {
            Some(s) => Authentication {
                type_: AuthenticationType::BearerToken,
                bearer_token: Some(BearerToken {
                    token_secret_ref: SecretRef {
                        name: s.into(),
                        key: "token".into(),
                    },
                }),
                ..Default::default()
            },
            None => Authentication::default(),
        };
        ApiDatasource {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: ApiDatasourceSpec {
                url: "https://h".into(),
                headers: vec![],
                query_parameters: vec![],
                signature: None,
                tls: None,
                authentication,
            },
            status: None,
        }
    }

    fn names(refs: Vec<ObjectRef<ApiDatasource>>) -> Vec<String> {
        refs.into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn secret_maps_to_the_datasources_of_its_own_namespace() {
        let idx = SecretsIndex::default();
        idx.observe(&watcher::Event::Apply(ds("a", "one", Some("tok"))));
        idx.observe(&watcher::Event::Apply(ds("a", "two", Some("tok"))));
        idx.observe(&watcher::Event::Apply(ds("b", "three", Some("tok"))));
        assert_eq!(names(idx.datasources_for("a", "tok")), ["one", "two"]);
        assert_eq!(names(idx.datasources_for("b", "tok")), ["three"]);
        assert!(idx.datasources_for("c", "tok").is_empty());
    }

    #[test]
    fn changed_reference_moves_the_datasource() {
        let idx = SecretsIndex::default();
        idx.observe(&watcher::Event::Apply(ds("a", "one", Some("old"))));
        idx.observe(&watcher::Event::Apply(ds("a", "one", Some("new"))));
        assert!(idx.datasources_for("a", "old").is_empty());
        assert_eq!(names(idx.datasources_for("a", "new")), ["one"]);
        assert_eq!(idx.secret_count(), 1);
    }

    #[test]
    fn deleted_datasource_leaves_no_entry() {
        let idx = SecretsIndex::default();
        idx.observe(&watcher::Event::Apply(ds("a", "one", Some("tok"))));
        idx.observe(&watcher::Event::Delete(ds("a", "one", Some("tok"))));
        assert!(idx.datasources_for("a", "tok").is_empty());
        assert_eq!(idx.secret_count(), 0);
    }

    #[test]
    fn relist_drops_datasources_deleted_while_the_watch_was_down() {
        let idx = SecretsIndex::default();
        idx.observe(&watcher::Event::Apply(ds("a", "one", Some("tok"))));
        idx.observe(&watcher::Event::Apply(ds("a", "two", Some("tok"))));
        idx.observe(&watcher::Event::Init);
        idx.observe(&watcher::Event::InitApply(ds("a", "two", Some("tok"))));
        idx.observe(&watcher::Event::InitDone);
        assert_eq!(names(idx.datasources_for("a", "tok")), ["two"]);
    }

    #[test]
    fn secrets_of_other_authentication_blocks_are_indexed_too() {
        let mut d = ds("a", "one", Some("tok"));
        d.spec.signature = Some(sidekey_crds::Signature {
            secret_ref: SecretRef {
                name: "sig".into(),
                key: "k".into(),
            },
            header_name: "X".into(),
            issuer: "i".into(),
            ttl_seconds: 1,
            algorithm: Default::default(),
        });
        let got: Vec<String> = referenced_secrets(&d.spec).into_iter().collect();
        assert_eq!(got, ["sig", "tok"]);
    }
}
