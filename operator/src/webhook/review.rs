//! One admission review: decode it, decide, look the datasources up,
//! answer with a patch, an unchanged pod or a refusal, and count it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::reflector::{ObjectRef, Store};
use sidekey_crds::ApiDatasource;

use super::annotation::Assignment;
use super::error::InjectError;
use super::inject::{self, Decision, SidecarSettings};
use crate::metrics::Metrics;

/// How long a datasource lookup may take at most; never more than half
/// the webhook's timeout, so the refusal says why before the API server
/// gives up on the webhook.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The lookup timeout for a webhook the API server waits `webhook_timeout` for.
pub fn lookup_timeout(webhook_timeout: Duration) -> Duration {
    LOOKUP_TIMEOUT.min(webhook_timeout / 2)
}

/// Finds a pod's datasources: in the watch cache, else (just created, not
/// yet seen by the watch) with one GET.
#[derive(Clone)]
pub struct Datasources {
    pub client: Client,
    pub cache: Store<ApiDatasource>,
    /// See [`lookup_timeout`].
    pub timeout: Duration,
}

impl Datasources {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<ApiDatasource>, InjectError> {
        if let Some(ds) = self.cache.get(&ObjectRef::new(name).within(namespace)) {
            return Ok(Some((*ds).clone()));
        }
        let failed = |detail: String| InjectError::Lookup {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            detail,
        };
        let api = Api::<ApiDatasource>::namespaced(self.client.clone(), namespace);
        match tokio::time::timeout(self.timeout, api.get_opt(name)).await {
            Ok(result) => result.map_err(|e| failed(e.to_string())),
            Err(_) => Err(failed(format!(
                "the API server did not answer within {:.1}s",
                self.timeout.as_secs_f64()
            ))),
        }
    }
}

/// Everything an admission needs.
pub struct Admission {
    pub datasources: Datasources,
    pub settings: SidecarSettings,
    pub metrics: Metrics,
}

/// How an admission ended, for the log and the metric.
enum Outcome {
    Unchanged(&'static str),
    Injected(inject::Injection),
}

impl Admission {
    /// Answers one `AdmissionReview` (the request body, JSON).
    pub async fn review(self: &Arc<Self>, body: &[u8]) -> AdmissionReview<DynamicObject> {
        let started = Instant::now();
        let review: AdmissionReview<Pod> = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return AdmissionResponse::invalid(format!("not an AdmissionReview: {e}"))
                    .into_review();
            }
        };
        let request: AdmissionRequest<Pod> = match review.try_into() {
            Ok(r) => r,
            Err(e) => return AdmissionResponse::invalid(e.to_string()).into_review(),
        };
        let namespace = request
            .namespace
            .clone()
            .or_else(|| {
                request
                    .object
                    .as_ref()
                    .and_then(|p| p.metadata.namespace.clone())
            })
            .unwrap_or_default();
        // Controllers create pods with generateName: there is no name yet.
        let pod_name = request
            .object
            .as_ref()
            .and_then(|p| p.metadata.name.clone().or(p.metadata.generate_name.clone()))
            .unwrap_or_default();
        let mut response = AdmissionResponse::from(&request);
        let (result, reason) = match self.decide(&request, &namespace).await {
            Ok(Outcome::Unchanged(reason)) => ("unchanged", reason),
            Ok(Outcome::Injected(injection)) => {
                let warnings = injection.warnings;
                match response.clone().with_patch(injection.patch) {
                    Ok(patched) => {
                        response = patched;
                        if !warnings.is_empty() {
                            response.warnings = Some(warnings);
                        }
                        ("injected", "Injected")
                    }
                    Err(e) => {
                        response = response.deny(format!("cannot encode the patch: {e}"));
                        ("refused", "PatchEncoding")
                    }
                }
            }
            Err(e) => {
                tracing::info!(
                    namespace = %namespace,
                    pod = %pod_name,
                    reason = e.reason(),
                    message = %e,
                    "pod refused"
                );
                response = response.deny(e.to_string());
                ("refused", e.reason())
            }
        };
        if result == "injected" {
            tracing::info!(namespace = %namespace, pod = %pod_name, "sidecar injected");
        }
        self.metrics.admitted(result, reason, started.elapsed());
        response.into_review()
    }

    async fn decide(
        &self,
        request: &AdmissionRequest<Pod>,
        namespace: &str,
    ) -> Result<Outcome, InjectError> {
        if request.operation != Operation::Create {
            return Ok(Outcome::Unchanged("NotCreate"));
        }
        let pod = request.object.as_ref().ok_or(InjectError::NoPod)?;
        let assignments = match inject::decide(pod, self.settings.admin_port)? {
            Decision::Unchanged(reason) => return Ok(Outcome::Unchanged(reason)),
            Decision::Lookup(a) => a,
        };
        let looked_up = join_all(
            assignments
                .iter()
                .map(|a| self.datasources.get(namespace, &a.name)),
        )
        .await;
        let mut found: Vec<(Assignment, ApiDatasource)> = Vec::with_capacity(assignments.len());
        let mut missing = Vec::new();
        for (assignment, result) in assignments.into_iter().zip(looked_up) {
            match result? {
                Some(ds) => found.push((assignment, ds)),
                None => missing.push(assignment.name),
            }
        }
        if !missing.is_empty() {
            return Err(InjectError::DatasourceNotFound {
                names: missing,
                namespace: namespace.to_owned(),
            });
        }
        inject::inject(pod, &found, &self.settings).map(Outcome::Injected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lookup_gives_up_before_the_api_server_does() {
        let s = Duration::from_secs;
        assert_eq!(lookup_timeout(s(10)), s(5));
        assert_eq!(lookup_timeout(s(30)), s(5));
        assert_eq!(lookup_timeout(s(3)), Duration::from_millis(1500));
        assert_eq!(lookup_timeout(s(1)), Duration::from_millis(500));
    }
}
