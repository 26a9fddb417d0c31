//! What the operator does with its RBAC, held against what it is granted.
//!
//! [`Recorder`] is a plain-HTTP proxy on 127.0.0.1 in front of the test
//! bed's API server: the operator, given a kubeconfig that points here,
//! sends every request through it, and the proxy notes each one with the
//! answer's status. [`Access::of`] turns a request into what RBAC
//! authorizes it as (namespace, API group, resource, verb), and [`grants`]
//! reads the same out of the roles and bindings of a rendered chart, so a
//! test can show that every verb of every rule was used (removing it would
//! refuse a request the operator made) and that nothing was refused.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

/// One request that went through the proxy.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: String,
    /// A server-side apply (`application/apply-patch+yaml`).
    pub apply: bool,
    /// The API server's answer; 0 when it could not be reached.
    pub status: u16,
}

/// The proxy; stops when dropped.
pub struct Recorder {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Recorder {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`
    /// (`https://HOST:PORT`), trusting `ca_pem`.
    pub async fn start(upstream: &str, ca_pem: &[u8]) -> Self {
        let url = url::Url::parse(upstream).unwrap_or_else(|e| panic!("{upstream}: {e}"));
        let host = url.host_str().expect("the API server's host").to_owned();
        let port = url.port_or_known_default().expect("the API server's port");
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots
                .add(cert.expect("the bed's CA (PEM)"))
                .expect("the bed's CA");
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = TlsConnector::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding");
        let addr = listener.local_addr().expect("local address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (connector, host, seen) = (connector.clone(), host.clone(), seen.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |req| {
                            forward(req, connector.clone(), host.clone(), port, seen.clone())
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        Self { addr, seen, task }
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Sends one request on a connection of its own (a watch holds it for
/// as long as it lasts) and notes it with the answer's status.
async fn forward(
    req: Request<Incoming>,
    connector: TlsConnector,
    host: String,
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Incoming>, BoxError> {
    let mut note = Seen {
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().unwrap_or_default().to_owned(),
        apply: req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/apply-patch")),
        status: 0,
    };
    let answer = async {
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        let tls = connector
            .connect(ServerName::try_from(host.clone())?, tcp)
            .await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        Ok::<_, BoxError>(sender.send_request(req).await?)
    }
    .await;
    if let Ok(response) = &answer {
        note.status = response.status().as_u16();
    }
    seen.lock().unwrap_or_else(|p| p.into_inner()).push(note);
    answer
}

/// A request as RBAC sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Access {
    /// None: a cluster-scoped object, or every namespace.
    pub namespace: Option<String>,
    pub group: String,
    /// With its subresource: `apidatasources/status`.
    pub resource: String,
    pub verb: String,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        let scope = self.namespace.as_deref().unwrap_or("<cluster>");
        write!(f, "{} {group}/{} in {scope}", self.verb, self.resource)
    }
}

impl Access {
    /// What a request is authorized as: its verb on its resource, and for a
    /// server-side apply that created the object (201) `create` too. None
    /// for non-resource requests (discovery, /version), which every
    /// authenticated user may make.
    pub fn of(seen: &Seen) -> Vec<Access> {
        let parts: Vec<&str> = seen.path.trim_matches('/').split('/').collect();
        let (group, rest) = match parts.as_slice() {
            ["api", _version, rest @ ..] => ("", rest),
            ["apis", group, _version, rest @ ..] => (*group, rest),
            _ => return Vec::new(),
        };
        let (namespace, resource, name, sub) = match rest {
            [] => return Vec::new(),
            ["namespaces", ns, resource, tail @ ..] => {
                (Some(*ns), *resource, tail.first(), tail.get(1))
            }
            [resource, tail @ ..] => (None, *resource, tail.first(), tail.get(1)),
        };
        let watch = seen
            .query
            .split('&')
            .any(|p| p == "watch=true" || p == "watch=1");
        let verb = match (&seen.method, name) {
            (&Method::GET, Some(_)) => "get",
            (&Method::GET, None) if watch => "watch",
            (&Method::GET, None) => "list",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, Some(_)) => "delete",
            (&Method::DELETE, None) => "deletecollection",
            (other, _) => panic!("an unexpected {other} {}", seen.path),
        };
        let access = |verb: &str| Access {
            namespace: namespace.map(str::to_owned),
            group: group.to_owned(),
            resource: match sub {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.to_owned(),
            },
            verb: verb.to_owned(),
        };
        let mut out = vec![access(verb)];
        if seen.apply && seen.status == 201 {
            out.push(access("create"));
        }
        out
    }
}

/// One verb on one resource granted by one rule of one role.
#[derive(Clone, Debug)]
pub struct Grant {
    /// "ClusterRole x (ClusterRoleBinding y), rule 2".
    pub origin: String,
    pub access: Access,
}

impl Grant {
    pub fn covers(&self, access: &Access) -> bool {
        let g = &self.access;
        (g.namespace.is_none() || g.namespace == access.namespace)
            && g.group == access.group
            && g.resource == access.resource
            && g.verb == access.verb
    }
}

/// What the roles and bindings among `docs` grant ServiceAccount
/// `namespace/name`, one entry per verb, resource and group of each rule.
pub fn grants(docs: &[Value], namespace: &str, name: &str) -> Vec<Grant> {
    let str_list = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for binding in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding")
    {
        let bound = binding["subjects"].as_array().is_some_and(|subjects| {
            subjects.iter().any(|s| {
                s["kind"] == "ServiceAccount" && s["name"] == name && s["namespace"] == namespace
            })
        });
        if !bound {
            continue;
        }
        let scope = (binding["kind"] == "RoleBinding").then(|| {
            binding["metadata"]["namespace"]
                .as_str()
                .expect("a RoleBinding's namespace")
                .to_owned()
        });
        let role_kind = &binding["roleRef"]["kind"];
        let role_name = &binding["roleRef"]["name"];
        let role = docs
            .iter()
            .find(|d| {
                d["kind"] == *role_kind
                    && d["metadata"]["name"] == *role_name
                    && (d["kind"] == "ClusterRole"
                        || d["metadata"]["namespace"] == binding["metadata"]["namespace"])
            })
            .unwrap_or_else(|| panic!("{binding} binds a role the chart does not make"));
        for (i, rule) in role["rules"].as_array().into_iter().flatten().enumerate() {
            let origin = format!(
                "{} {} ({} {}), rule {}",
                role_kind.as_str().unwrap_or_default(),
                role_name.as_str().unwrap_or_default(),
                binding["kind"].as_str().unwrap_or_default(),
                binding["metadata"]["name"].as_str().unwrap_or_default(),
                i + 1
            );
            for group in str_list(&rule["apiGroups"]) {
                for resource in str_list(&rule["resources"]) {
                    for verb in str_list(&rule["verbs"]) {
                        out.push(Grant {
                            origin: origin.clone(),
                            access: Access {
                                namespace: scope.clone(),
                                group: group.clone(),
                                resource: resource.clone(),
                                verb,
                            },
                        });
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(method: Method, path: &str, query: &str, apply: bool, status: u16) -> Seen {
        Seen {
            method,
            path: path.to_owned(),
            query: query.to_owned(),
            apply,
            status,
        }
    }

    #[test]
    fn requests_map_to_rbac_verbs() {
        let one = |s: Seen| {
            Access::of(&s)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            one(seen(
                Method::GET,
                "/apis/sidekey.dev/v1alpha1/namespaces/a/apidatasources",
                "watch=true&resourceVersion=1",
                false,
                200
            )),
            ["watch sidekey.dev/apidatasources in a"]
        );
        assert_eq!(
            one(seen(Method::GET, "/api/v1/secrets", "", false, 200)),
            ["list core/secrets in <cluster>"]
        );
        assert_eq!(
            one(seen(
                Method::PATCH,
                "/api/v1/namespaces/a/configmaps/x",
                "fieldManager=m",
                true,
                201
            )),
            ["patch core/configmaps in a", "create core/configmaps in a"]
        );
        assert_eq!(
            one(seen(
                Method::PATCH,
                "/apis/sidekey.dev/v1alpha1/namespaces/a/apidatasources/x/status",
                "",
                true,
                200
            )),
            ["patch sidekey.dev/apidatasources/status in a"]
        );
        assert_eq!(
            one(seen(
                Method::PUT,
                "/apis/coordination.k8s.io/v1/namespaces/r/leases/l",
                "",
                false,
                200
            )),
            ["update coordination.k8s.io/leases in r"]
        );
        assert!(
            one(seen(
                Method::GET,
                "/apis/sidekey.dev/v1alpha1",
                "",
                false,
                200
            ))
            .is_empty()
        );
        assert!(one(seen(Method::GET, "/version", "", false, 200)).is_empty());
    }
}
