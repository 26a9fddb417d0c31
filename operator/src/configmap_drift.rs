//! Which events of the watch on the operator's ConfigMaps should wake their
//! datasource: a deletion, or a change made by anyone but the operator (a
//! `kubectl edit`), as the ConfigMap's `managedFields` tell. The operator's
//! own applies do not, so a new datasource is reconciled once, not a second
//! time for the ConfigMap its first reconcile wrote.

use futures::{Stream, TryStreamExt, future};
use kube::Resource;
use kube::runtime::watcher;
use sidekey_crds::names::FIELD_MANAGER;

/// The objects of `events` that someone other than the operator deleted or
/// changed; markers and the operator's own writes are dropped.
///
/// A ConfigMap deleted while the watch was down is not seen here (the
/// relist simply lacks it); the controller reconciles every datasource
/// after a relist (`list_signals`), which recreates it.
pub fn changed_by_others<K, S>(events: S) -> impl Stream<Item = watcher::Result<K>>
where
    K: Resource,
    S: Stream<Item = watcher::Result<watcher::Event<K>>>,
{
    events.try_filter_map(|event| future::ready(Ok(wakes(event))))
}

/// The object of `event` if it should wake its owner.
pub fn wakes<K: Resource>(event: watcher::Event<K>) -> Option<K> {
    match event {
        watcher::Event::Delete(obj) => Some(obj),
        watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => {
            edited_by_others(&obj).then_some(obj)
        }
        watcher::Event::Init | watcher::Event::InitDone => None,
    }
}

/// True when a manager other than the operator owns fields of `obj`.
///
/// The operator applies with `force`, so a repair takes every conflicting
/// field back and the editor's entry disappears with its last field; an
/// entry stays only for fields the operator never sets (say, a label added
/// by hand), which costs one extra, no-op reconcile per change of the
/// ConfigMap. Without `managedFields` nothing can be told apart, so the
/// object counts as edited.
pub fn edited_by_others<K: Resource>(obj: &K) -> bool {
    match obj.meta().managed_fields.as_deref() {
        None | Some([]) => true,
        Some(entries) => entries
            .iter()
            .any(|entry| entry.manager.as_deref() != Some(FIELD_MANAGER)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{StreamExt, stream};
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
    use kube::api::ObjectMeta;

    fn configmap(name: &str, managers: &[&str]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                managed_fields: Some(
                    managers
                        .iter()
                        .map(|m| ManagedFieldsEntry {
                            manager: Some((*m).to_owned()),
                            operation: Some("Apply".to_owned()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn the_operators_own_apply_wakes_nothing() {
        let cm = configmap("a-sidekey", &[FIELD_MANAGER]);
        assert!(wakes(watcher::Event::Apply(cm.clone())).is_none());
        assert!(wakes(watcher::Event::InitApply(cm)).is_none());
    }

    #[test]
    fn an_edit_by_another_manager_wakes_the_owner() {
        let cm = configmap("a-sidekey", &[FIELD_MANAGER, "kubectl-edit"]);
        assert!(wakes(watcher::Event::Apply(cm.clone())).is_some());
        // Also when it happened while the operator was not watching.
        assert!(wakes(watcher::Event::InitApply(cm)).is_some());
    }

    #[test]
    fn a_deletion_wakes_the_owner_whoever_wrote_last() {
        let cm = configmap("a-sidekey", &[FIELD_MANAGER]);
        assert!(wakes(watcher::Event::Delete(cm)).is_some());
    }

    #[test]
    fn without_managed_fields_a_change_counts_as_an_edit() {
        let mut cm = configmap("a-sidekey", &[]);
        assert!(edited_by_others(&cm));
        cm.metadata.managed_fields = None;
        assert!(edited_by_others(&cm));
    }

    #[tokio::test]
    async fn stream_keeps_errors_and_drops_markers_and_own_writes() {
        let events: Vec<watcher::Result<watcher::Event<ConfigMap>>> = vec![
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(configmap(
                "own",
                &[FIELD_MANAGER],
            ))),
            Ok(watcher::Event::InitDone),
            Ok(watcher::Event::Apply(configmap(
                "edited",
                &["kubectl-edit"],
            ))),
            Err(watcher::Error::NoResourceVersion),
            Ok(watcher::Event::Delete(configmap(
                "deleted",
                &[FIELD_MANAGER],
            ))),
        ];
        let out: Vec<_> = changed_by_others(stream::iter(events)).collect().await;
        let names: Vec<_> = out
            .iter()
            .map(|r| match r {
                Ok(cm) => cm.metadata.name.clone().unwrap_or_default(),
                Err(_) => "error".to_owned(),
            })
            .collect();
        assert_eq!(names, ["edited", "error", "deleted"]);
    }
}
