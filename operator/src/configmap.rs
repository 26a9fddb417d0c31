//! The ConfigMap `<name>-sidekey` a sidecar reads: the resolved spec, owned
//! by its datasource so Kubernetes deletes it with the datasource.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use sidekey_crds::names::{
    CONFIGMAP_KEY, DATASOURCE_LABEL, FIELD_MANAGER, MANAGED_BY_LABEL, MANAGED_BY_VALUE,
    configmap_name,
};
use sidekey_crds::{ApiDatasource, ResolvedDatasource};

use crate::error::ReconcileError;

/// The label selector matching every ConfigMap the operator writes.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")
}

/// The ConfigMap for a valid datasource. It holds no secret value: the
/// resolved spec names only Secrets, keys and file paths.
/// `name` and `namespace` are the datasource's, read once by the caller.
pub fn desired(
    ds: &ApiDatasource,
    name: &str,
    namespace: &str,
    resolved: &ResolvedDatasource,
) -> Result<ConfigMap, ReconcileError> {
    let owner = ds
        .controller_owner_ref(&())
        .ok_or(ReconcileError::MissingMetadata("uid"))?;
    let labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
        (DATASOURCE_LABEL.to_owned(), name.to_owned()),
    ]);
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(configmap_name(name)),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            CONFIGMAP_KEY.to_owned(),
            resolved.to_yaml(),
        )])),
        ..Default::default()
    })
}

/// Writes the ConfigMap with server-side apply; `force` takes fields back
/// from anyone who edited them by hand.
pub async fn apply(api: &Api<ConfigMap>, cm: &ConfigMap) -> Result<(), ReconcileError> {
    let name = cm.name_any();
    // apiVersion and kind are required in an apply body.
    let mut body = serde_json::to_value(cm).map_err(|e| {
        ReconcileError::kube(
            format!("encoding ConfigMap {name:?}"),
            kube::Error::SerdeError(e),
        )
    })?;
    body["apiVersion"] = "v1".into();
    body["kind"] = "ConfigMap".into();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map_err(|e| ReconcileError::kube(format!("applying ConfigMap {name:?}"), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configmap_is_owned_by_its_datasource_and_labelled() {
        let mut ds: ApiDatasource = serde_saphyr::from_str(
            "apiVersion: sidekey.dev/v1alpha1\nkind: ApiDatasource\n\
             metadata: {name: payments, namespace: shop, uid: u-1}\nspec: {url: 'https://h'}\n",
        )
        .expect("manifest");
        ds.metadata.uid = Some("u-1".into());
        let resolved = ds.resolve().expect("valid");
        let cm = desired(&ds, "payments", "shop", &resolved).expect("configmap");
        assert_eq!(cm.metadata.name.as_deref(), Some("payments-sidekey"));
        let owner = &cm.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("ApiDatasource", "u-1")
        );
        assert_eq!(owner.controller, Some(true));
        let labels = cm.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels[DATASOURCE_LABEL], "payments");
        let data = &cm.data.as_ref().expect("data")[CONFIGMAP_KEY];
        assert_eq!(
            ResolvedDatasource::from_yaml(data).expect("resolved spec"),
            resolved
        );
    }
}
