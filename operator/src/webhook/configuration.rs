//! The MutatingWebhookConfiguration that sends opted-in pods to the
//! webhook, kept in shape by the leader with server-side apply.

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use sidekey_crds::names;

/// Path the webhook serves admission reviews on.
pub const MUTATE_PATH: &str = "/mutate";
/// Name of the one webhook in the configuration, as API errors quote it.
pub const WEBHOOK_NAME: &str = "inject.sidekey.dev";
/// Label every namespace carries (Kubernetes 1.21+) with its own name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Where the API server reaches the webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A base URL, `https://127.0.0.1:9443` outside a cluster.
    Url(String),
    /// The Service in front of the operator.
    Service {
        namespace: String,
        name: String,
        port: u16,
    },
}

impl Endpoint {
    /// Parses `--webhook-service NAMESPACE/NAME[:PORT]` (port 443 by default).
    pub fn service(text: &str) -> Result<Self, String> {
        let bad = || format!("--webhook-service {text:?}: expected NAMESPACE/NAME[:PORT]");
        let (namespace, rest) = text.split_once('/').ok_or_else(bad)?;
        let (name, port) = match rest.split_once(':') {
            Some((name, port)) => (name, port.parse::<u16>().map_err(|_| bad())?),
            None => (rest, 443),
        };
        if namespace.is_empty() || name.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(Self::Service {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            port,
        })
    }

    /// Checks `--webhook-url`: https, a host, no query or fragment.
    pub fn url(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text).map_err(|e| format!("--webhook-url {text:?}: {e}"))?;
        if url.scheme() != "https" || url.host_str().is_none() {
            return Err(format!(
                "--webhook-url {text:?}: the API server calls webhooks over https only"
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "--webhook-url {text:?}: no query or fragment allowed"
            ));
        }
        Ok(Self::Url(text.trim_end_matches('/').to_owned()))
    }

    /// Host names and addresses the serving certificate must carry.
    pub fn names(&self) -> (Vec<String>, Vec<std::net::IpAddr>) {
        match self {
            Self::Url(text) => match url::Url::parse(text)
                .ok()
                .and_then(|u| u.host().map(|h| h.to_owned()))
            {
                Some(url::Host::Ipv4(ip)) => (vec![], vec![ip.into()]),
                Some(url::Host::Ipv6(ip)) => (vec![], vec![ip.into()]),
                Some(url::Host::Domain(d)) => (vec![d], vec![]),
                None => (vec![], vec![]),
            },
            Self::Service {
                namespace, name, ..
            } => (
                vec![
                    format!("{name}.{namespace}.svc"),
                    format!("{name}.{namespace}.svc.cluster.local"),
                    format!("{name}.{namespace}"),
                    name.clone(),
                ],
                vec![],
            ),
        }
    }
}

/// The configuration's settings, from the operator's flags.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Name of the MutatingWebhookConfiguration.
    pub name: String,
    pub endpoint: Endpoint,
    pub timeout_seconds: i32,
    /// With `--namespace`: only this namespace's pods are sent.
    pub only_namespace: Option<String>,
    /// Namespaces never sent (the operator's own, kube-system).
    pub excluded_namespaces: Vec<String>,
}

impl WebhookConfig {
    /// The whole object as the operator wants it. `ca_bundle` is None when
    /// an installer (cert-manager's CA injector) owns the field.
    pub fn build(&self, ca_bundle: Option<&[u8]>) -> MutatingWebhookConfiguration {
        let client_config = WebhookClientConfig {
            ca_bundle: ca_bundle.map(|b| ByteString(b.to_vec())),
            url: match &self.endpoint {
                Endpoint::Url(base) => Some(format!("{base}{MUTATE_PATH}")),
                Endpoint::Service { .. } => None,
            },
            service: match &self.endpoint {
                Endpoint::Service {
                    namespace,
                    name,
                    port,
                } => Some(ServiceReference {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    path: Some(MUTATE_PATH.to_owned()),
                    port: Some(i32::from(*port)),
                }),
                Endpoint::Url(_) => None,
            },
        };
        let requirement =
            |key: &str, operator: &str, values: Vec<String>| LabelSelectorRequirement {
                key: key.to_owned(),
                operator: operator.to_owned(),
                values: Some(values),
            };
        let mut expressions = vec![requirement(
            names::WEBHOOK_NAMESPACE_LABEL,
            "NotIn",
            vec![names::WEBHOOK_DISABLED.to_owned()],
        )];
        match &self.only_namespace {
            Some(ns) => expressions.push(requirement(NAMESPACE_NAME_LABEL, "In", vec![ns.clone()])),
            None if !self.excluded_namespaces.is_empty() => expressions.push(requirement(
                NAMESPACE_NAME_LABEL,
                "NotIn",
                self.excluded_namespaces.clone(),
            )),
            None => {}
        }
        MutatingWebhookConfiguration {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(
                    [(
                        names::MANAGED_BY_LABEL.to_owned(),
                        names::MANAGED_BY_VALUE.to_owned(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            webhooks: Some(vec![MutatingWebhook {
                name: WEBHOOK_NAME.to_owned(),
                client_config,
                rules: Some(vec![RuleWithOperations {
                    operations: Some(vec!["CREATE".to_owned()]),
                    api_groups: Some(vec![String::new()]),
                    api_versions: Some(vec!["v1".to_owned()]),
                    resources: Some(vec!["pods".to_owned()]),
                    scope: Some("Namespaced".to_owned()),
                }]),
                object_selector: Some(LabelSelector {
                    match_labels: Some(
                        [(names::INJECT_LABEL.to_owned(), "true".to_owned())].into(),
                    ),
                    match_expressions: None,
                }),
                namespace_selector: Some(LabelSelector {
                    match_expressions: Some(expressions),
                    match_labels: None,
                }),
                // Only opted-in pods come here, and they must not start
                // without their credentials.
                failure_policy: Some("Fail".to_owned()),
                side_effects: "None".to_owned(),
                admission_review_versions: vec!["v1".to_owned()],
                timeout_seconds: Some(self.timeout_seconds),
                reinvocation_policy: Some("Never".to_owned()),
                match_policy: Some("Equivalent".to_owned()),
                match_conditions: None,
            }]),
        }
    }

    /// Applies the configuration (server-side apply; an unchanged one is
    /// not written again).
    pub async fn apply(
        &self,
        client: &Client,
        ca_bundle: Option<&[u8]>,
    ) -> Result<(), kube::Error> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        let mut object = self.build(ca_bundle);
        object.metadata.managed_fields = None;
        let mut value = serde_json::to_value(&object).map_err(kube::Error::SerdeError)?;
        value["apiVersion"] = "admissionregistration.k8s.io/v1".into();
        value["kind"] = "MutatingWebhookConfiguration".into();
        api.patch(
            &self.name,
            &PatchParams::apply(names::FIELD_MANAGER).force(),
            &Patch::Apply(&value),
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: Endpoint) -> WebhookConfig {
        WebhookConfig {
            name: "sidekey".into(),
            endpoint,
            timeout_seconds: 10,
            only_namespace: None,
            excluded_namespaces: vec!["sidekey-system".into(), "kube-system".into()],
        }
    }

    #[test]
    fn the_configuration_sends_only_opted_in_pods_and_fails_closed() {
        let c = config(Endpoint::url("https://127.0.0.1:9443/").expect("url")).build(Some(b"PEM"));
        let hook = &c.webhooks.as_ref().expect("webhooks")[0];
        assert_eq!(
            hook.client_config.url.as_deref(),
            Some("https://127.0.0.1:9443/mutate")
        );
        assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(hook.side_effects, "None");
        assert_eq!(hook.admission_review_versions, ["v1"]);
        let labels = hook
            .object_selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref())
            .expect("labels");
        assert_eq!(
            labels.get(names::INJECT_LABEL).map(String::as_str),
            Some("true")
        );
        let expressions = hook
            .namespace_selector
            .as_ref()
            .and_then(|s| s.match_expressions.as_ref())
            .expect("exprs");
        assert!(
            expressions
                .iter()
                .any(|e| e.key == names::WEBHOOK_NAMESPACE_LABEL && e.operator == "NotIn")
        );
        assert!(expressions.iter().any(|e| e.key == NAMESPACE_NAME_LABEL
            && e.values.as_deref()
                == Some(&["sidekey-system".to_owned(), "kube-system".to_owned()][..])));
    }

    #[test]
    fn a_service_endpoint_names_the_service_and_its_dns_names() {
        let e = Endpoint::service("sidekey-system/sidekey-webhook").expect("service");
        let c = config(e.clone()).build(None);
        let svc = c.webhooks.as_ref().expect("webhooks")[0]
            .client_config
            .service
            .clone()
            .expect("service");
        assert_eq!(
            (svc.namespace.as_str(), svc.name.as_str(), svc.port),
            ("sidekey-system", "sidekey-webhook", Some(443))
        );
        assert!(
            c.webhooks.as_ref().expect("webhooks")[0]
                .client_config
                .ca_bundle
                .is_none()
        );
        assert!(
            e.names()
                .0
                .contains(&"sidekey-webhook.sidekey-system.svc".to_owned())
        );
        assert_eq!(
            Endpoint::url("https://127.0.0.1:9443")
                .expect("url")
                .names()
                .1,
            ["127.0.0.1".parse::<std::net::IpAddr>().expect("ip")]
        );
    }

    #[test]
    fn bad_endpoints_are_refused() {
        assert!(Endpoint::service("nonamespace").is_err());
        assert!(Endpoint::service("ns/name:http").is_err());
        assert!(Endpoint::url("http://127.0.0.1:9443").is_err());
        assert!(Endpoint::url("https://h/x?y=1").is_err());
    }
}
