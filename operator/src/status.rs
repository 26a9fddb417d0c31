//! The datasource's status: the `Ready` condition, `observedGeneration` and
//! the ConfigMap's name, written whole with server-side apply.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Api;
use kube::api::{Patch, PatchParams};
use sidekey_crds::names::{API_VERSION, FIELD_MANAGER, KIND};
use sidekey_crds::{ApiDatasource, ApiDatasourceStatus};

use crate::error::{DatasourceError, ReconcileError};

/// The condition type the operator maintains.
pub const READY: &str = "Ready";
/// For authorization-code datasources: whether the operator holds a
/// refresh token, and if not, why.
pub const AUTHORIZED: &str = "Authorized";
/// Reason of `Ready=True`.
pub const RECONCILED: &str = "Reconciled";

/// What one reconcile found, as the `Ready` condition will say it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub reason: String,
    pub message: String,
}

impl Readiness {
    /// The datasource is valid and its ConfigMap is written.
    pub fn reconciled(configmap: &str, ca_certificates: Option<usize>) -> Self {
        let mut message = format!("ConfigMap {configmap} holds the resolved spec");
        if let Some(n) = ca_certificates {
            let s = if n == 1 { "" } else { "s" };
            message.push_str(&format!("; the CA bundle holds {n} certificate{s}"));
        }
        Self {
            ready: true,
            reason: RECONCILED.to_owned(),
            message,
        }
    }

    /// The datasource is invalid; `kept` names the last good ConfigMap,
    /// which stays in place so running sidecars keep working.
    pub fn invalid(problem: &DatasourceError, kept: Option<&str>) -> Self {
        let mut message = problem.to_string();
        if let Some(cm) = kept {
            message.push_str(&format!(
                ". ConfigMap {cm} keeps the last valid spec until this is fixed"
            ));
        }
        Self {
            ready: false,
            reason: problem.reason().to_owned(),
            message,
        }
    }
}

/// The `Ready` condition of a status, if any.
pub fn ready_condition(status: Option<&ApiDatasourceStatus>) -> Option<&Condition> {
    condition(status, READY)
}

/// The condition of type `type_`, if any.
pub fn condition<'a>(
    status: Option<&'a ApiDatasourceStatus>,
    type_: &str,
) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

/// True when `new` differs from `old` in status or reason: worth an Event.
pub fn is_transition(old: Option<&Condition>, new: &Readiness) -> bool {
    match old {
        None => true,
        Some(c) => c.status != status_word(new.ready) || c.reason != new.reason,
    }
}

fn status_word(ready: bool) -> &'static str {
    if ready { "True" } else { "False" }
}

/// The whole status as observed now, for the spec of `generation`, with
/// the `Authorized` condition and link of an authorization-code datasource.
/// `lastTransitionTime` is kept from `current` while a condition's status
/// does not change, as Kubernetes conventions ask.
pub fn desired(
    generation: Option<i64>,
    current: Option<&ApiDatasourceStatus>,
    readiness: &Readiness,
    config_map: Option<String>,
    authorization: Option<(&Readiness, Option<String>)>,
    now: Time,
) -> ApiDatasourceStatus {
    let mut conditions = vec![to_condition(READY, readiness, generation, current, &now)];
    let mut authorization_url = None;
    if let Some((authorized, url)) = authorization {
        conditions.push(to_condition(
            AUTHORIZED, authorized, generation, current, &now,
        ));
        authorization_url = url;
    }
    ApiDatasourceStatus {
        conditions,
        observed_generation: generation,
        config_map,
        authorization_url,
    }
}

fn to_condition(
    type_: &str,
    readiness: &Readiness,
    generation: Option<i64>,
    current: Option<&ApiDatasourceStatus>,
    now: &Time,
) -> Condition {
    let status = status_word(readiness.ready);
    let last_transition_time = match condition(current, type_) {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => now.clone(),
    };
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: readiness.reason.clone(),
        message: readiness.message.clone(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// Writes the status with server-side apply under the operator's field
/// manager.
pub async fn apply(
    api: &Api<ApiDatasource>,
    name: &str,
    status: &ApiDatasourceStatus,
) -> Result<(), ReconcileError> {
    let body = serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map_err(|e| ReconcileError::kube(format!("writing status of ApiDatasource {name:?}"), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn time(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).expect("time"))
    }

    #[test]
    fn unchanged_readiness_keeps_the_transition_time() {
        let ready = Readiness::reconciled("payments-sidekey", None);
        let first = desired(
            Some(3),
            None,
            &ready,
            Some("payments-sidekey".into()),
            None,
            time(10),
        );
        let again = desired(
            Some(3),
            Some(&first),
            &ready,
            Some("payments-sidekey".into()),
            None,
            time(99),
        );
        assert_eq!(first, again);
        assert_eq!(again.observed_generation, Some(3));
        assert_eq!(again.conditions[0].observed_generation, Some(3));
    }

    #[test]
    fn flip_to_not_ready_is_a_transition_with_a_new_time() {
        let ready = Readiness::reconciled("payments-sidekey", Some(2));
        assert!(
            ready.message.contains("2 certificates"),
            "{}",
            ready.message
        );
        let first = desired(Some(3), None, &ready, None, None, time(10));
        let problem = DatasourceError::SecretNotFound {
            namespace: "shop".into(),
            secret: "tok".into(),
            field: "spec.authentication.bearerToken.tokenSecretRef",
        };
        let bad = Readiness::invalid(&problem, Some("payments-sidekey"));
        assert!(is_transition(ready_condition(Some(&first)), &bad));
        let second = desired(Some(4), Some(&first), &bad, None, None, time(20));
        let c = &second.conditions[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "SecretNotFound")
        );
        assert_eq!(c.last_transition_time, time(20));
        assert!(
            c.message.contains("keeps the last valid spec"),
            "{}",
            c.message
        );
    }

    #[test]
    fn same_status_and_reason_is_no_transition() {
        let ready = Readiness::reconciled("x", None);
        let st = desired(Some(1), None, &ready, None, None, time(1));
        assert!(!is_transition(ready_condition(Some(&st)), &ready));
    }
}
