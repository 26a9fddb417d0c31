//! The decision: from a pod (and the datasources it names, looked up by the
//! caller) to a JSONPatch that adds the sidecar, its volumes and the app's
//! `SIDEKEY_<NAME>_URL` variables. Pure functions, so that every shape of
//! pod is unit-tested (and golden-tested) without a server.
//!
//! The patch is written op by op rather than diffed from a re-serialized
//! pod: a typed round trip would drop fields newer than k8s-openapi knows,
//! and a diff would then write those containers back without them.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, HTTPGetAction, KeyToPath, Pod,
    Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sidekey_crds::{ApiDatasource, names};

use super::annotation::{self, Assignment};
use super::error::InjectError;

/// How the sidecar container looks, from the operator's flags and the
/// API server's version.
#[derive(Clone, Debug)]
pub struct SidecarSettings {
    pub image: String,
    pub image_pull_policy: Option<String>,
    pub resources: ResourceRequirements,
    /// The sidecar's admin port (probes, metrics), on the pod's address.
    pub admin_port: u16,
    pub log_level: String,
    /// Inject as a native sidecar (an init container with `restartPolicy:
    /// Always`, Kubernetes 1.29+) instead of the first regular container.
    pub native: bool,
}

/// What the webhook does with a pod.
#[derive(Debug)]
pub enum Decision {
    /// Admit the pod as it is; the reason is the metric label.
    Unchanged(&'static str),
    /// Look these datasources up, then call [`inject`].
    Lookup(Vec<Assignment>),
}

/// What [`inject`] made.
#[derive(Debug)]
pub struct Injection {
    pub patch: json_patch::Patch,
    /// Admission warnings: datasources that exist but cannot serve yet.
    pub warnings: Vec<String>,
}

/// The `sidekey.dev/status` annotation: what was injected.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Status {
    /// `native` (an init container that keeps running) or `container`.
    pub sidecar: String,
    pub image: String,
    pub datasources: Vec<StatusEntry>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct StatusEntry {
    pub name: String,
    pub port: u16,
}

/// First step, before any lookup: does the pod want a sidecar, and on
/// which ports.
pub fn decide(pod: &Pod, admin_port: u16) -> Result<Decision, InjectError> {
    let meta = &pod.metadata;
    let labelled = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(names::INJECT_LABEL))
        .is_some_and(|v| v == "true");
    if !labelled {
        return Ok(Decision::Unchanged("NotLabelled"));
    }
    let annotations = meta.annotations.as_ref();
    let spec = pod.spec.as_ref();
    let has_sidecar = spec.is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == names::SIDECAR_CONTAINER)
    });
    if has_sidecar {
        // An injected pod created again (its stored spec copied): nothing to
        // add. Without our status, the name was taken by someone else.
        return if annotations.is_some_and(|a| a.contains_key(names::STATUS_ANNOTATION)) {
            Ok(Decision::Unchanged("AlreadyInjected"))
        } else {
            Err(InjectError::reserved_container())
        };
    }
    let value = annotations
        .and_then(|a| a.get(names::DATASOURCES_ANNOTATION))
        .map(String::as_str)
        .unwrap_or("");
    let mut taken = BTreeMap::new();
    for c in spec.into_iter().flat_map(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
    }) {
        for p in c.ports.iter().flatten() {
            if let Ok(port) = u16::try_from(p.container_port) {
                taken.entry(port).or_insert_with(|| c.name.clone());
            }
        }
    }
    Ok(Decision::Lookup(annotation::assign(
        value, &taken, admin_port,
    )?))
}

/// Second step: the patch for a pod whose datasources were all found, in
/// the order of `found` (the annotation's).
pub fn inject(
    pod: &Pod,
    found: &[(Assignment, ApiDatasource)],
    settings: &SidecarSettings,
) -> Result<Injection, InjectError> {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut warnings = Vec::new();
    let mut ops: Vec<Value> = Vec::new();

    // The volumes: one per ConfigMap, one per Secret with exactly the keys
    // referenced (several datasources may share a Secret).
    let mut volumes: Vec<Volume> = Vec::new();
    let mut mounts: Vec<VolumeMount> = Vec::new();
    let mut secret_keys: BTreeMap<String, (BTreeSet<String>, bool)> = BTreeMap::new();
    for (assignment, ds) in found {
        let name = &assignment.name;
        let volume = volume_name("sidekey-config-", name);
        volumes.push(Volume {
            name: volume.clone(),
            config_map: Some(ConfigMapVolumeSource {
                name: names::configmap_name(name),
                items: Some(vec![KeyToPath {
                    key: names::CONFIGMAP_KEY.to_owned(),
                    path: names::CONFIGMAP_KEY.to_owned(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: volume,
            mount_path: names::config_mount_dir(name),
            read_only: Some(true),
            ..Default::default()
        });
        if let Some(warning) = not_ready(ds, name) {
            warnings.push(warning);
        }
        match ds.resolve() {
            Ok(resolved) => {
                for file in resolved.sidecar_secret_files() {
                    let entry = secret_keys
                        .entry(file.secret.clone())
                        .or_insert_with(|| (BTreeSet::new(), true));
                    entry.0.insert(file.key.clone());
                    entry.1 = false;
                }
                if let Some(files) = resolved.oauth_token_files() {
                    // The access token and its expiry, never the refresh
                    // token: the operator alone refreshes. Absent until a
                    // person authorizes: optional, so the pod starts and
                    // the sidecar says what it waits for.
                    for file in files.mounted() {
                        let entry = secret_keys
                            .entry(file.secret.clone())
                            .or_insert_with(|| (BTreeSet::new(), true));
                        entry.0.insert(file.key.clone());
                    }
                }
            }
            Err(e) => warnings.push(format!(
                "ApiDatasource {name:?} is invalid ({}): its Secrets are not mounted; \
                 fix it, then recreate this pod",
                e.reason()
            )),
        }
    }
    for (secret, (keys, optional)) in &secret_keys {
        let volume = volume_name("sidekey-secret-", secret);
        volumes.push(Volume {
            name: volume.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                items: Some(
                    keys.iter()
                        .map(|k| KeyToPath {
                            key: k.clone(),
                            path: k.clone(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                optional: optional.then_some(true),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: volume,
            mount_path: format!("{}/{secret}", names::SECRETS_MOUNT_DIR),
            read_only: Some(true),
            ..Default::default()
        });
    }
    let existing: BTreeSet<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    if let Some(v) = volumes.iter().find(|v| existing.contains(v.name.as_str())) {
        return Err(InjectError::ReservedName {
            kind: "volume",
            name: v.name.clone(),
        });
    }

    // 1. The status annotation (the datasources annotation exists, so the
    //    map does).
    let status = Status {
        sidecar: if settings.native {
            "native"
        } else {
            "container"
        }
        .to_owned(),
        image: settings.image.clone(),
        datasources: found
            .iter()
            .map(|(a, _)| StatusEntry {
                name: a.name.clone(),
                port: a.port,
            })
            .collect(),
    };
    ops.push(json!({
        "op": "add",
        "path": format!("/metadata/annotations/{}", escape(names::STATUS_ANNOTATION)),
        "value": serde_json::to_string(&status).unwrap_or_default(),
    }));

    // 2. The URL of each datasource in every container the pod already has,
    //    while their indices still hold.
    let env: Vec<(String, String)> = found
        .iter()
        .map(|(a, _)| {
            (
                names::url_env_name(&a.name),
                format!("http://127.0.0.1:{}", a.port),
            )
        })
        .collect();
    for (list, containers) in [
        ("containers", Some(&spec.containers)),
        ("initContainers", spec.init_containers.as_ref()),
    ] {
        for (i, c) in containers.into_iter().flatten().enumerate() {
            env_ops(&mut ops, &format!("/spec/{list}/{i}/env"), c, &env);
        }
    }

    // 3. The volumes.
    append_ops(&mut ops, "/spec/volumes", spec.volumes.is_some(), &volumes);

    // 4. The sidecar, first, so that it starts before the app.
    let sidecar = container(found, mounts, settings);
    let (list, present) = if settings.native {
        ("initContainers", spec.init_containers.is_some())
    } else {
        ("containers", true)
    };
    let value = to_value(&sidecar);
    if present {
        ops.push(json!({"op": "add", "path": format!("/spec/{list}/0"), "value": value}));
    } else {
        ops.push(json!({"op": "add", "path": format!("/spec/{list}"), "value": [value]}));
    }

    // Built from our own well-formed JSON: a failure is a bug, refused.
    let patch = serde_json::from_value(Value::Array(ops))
        .map_err(|e| InjectError::PatchNotBuilt(e.to_string()))?;
    Ok(Injection { patch, warnings })
}

/// The sidecar container.
fn container(
    found: &[(Assignment, ApiDatasource)],
    mounts: Vec<VolumeMount>,
    settings: &SidecarSettings,
) -> Container {
    let mut args = vec![
        format!("--secrets-dir={}", names::SECRETS_MOUNT_DIR),
        format!("--admin-listen=0.0.0.0:{}", settings.admin_port),
        "--log-format=json".to_owned(),
        format!("--log-level={}", settings.log_level),
    ];
    for (a, _) in found {
        args.push(format!("--datasource={}", names::config_file_path(&a.name)));
        args.push(format!("--listen=127.0.0.1:{}", a.port));
    }
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::from(settings.admin_port)),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Default::default()
    };
    Container {
        name: names::SIDECAR_CONTAINER.to_owned(),
        image: Some(settings.image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        command: Some(vec![names::SIDECAR_BINARY.to_owned()]),
        args: Some(args),
        ports: Some(vec![ContainerPort {
            name: Some("sidekey-admin".to_owned()),
            container_port: i32::from(settings.admin_port),
            protocol: Some("TCP".to_owned()),
            ..Default::default()
        }]),
        resources: Some(settings.resources.clone()),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(names::SIDECAR_UID),
            run_as_group: Some(names::SIDECAR_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        // The proxy ports are bound before the admin port answers, so the
        // app (started after a native sidecar's startup probe) finds them.
        startup_probe: Some(probe("/healthz", 1, 30)),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        volume_mounts: Some(mounts),
        restart_policy: settings.native.then(|| "Always".to_owned()),
        ..Default::default()
    }
}

/// Sets each `(name, value)` in container `c`, replacing a variable of the
/// same name the pod set itself.
fn env_ops(ops: &mut Vec<Value>, path: &str, c: &Container, env: &[(String, String)]) {
    let var = |(name, value): &(String, String)| json!({"name": name, "value": value});
    let Some(existing) = c.env.as_ref() else {
        ops.push(
            json!({"op": "add", "path": path, "value": env.iter().map(var).collect::<Vec<_>>()}),
        );
        return;
    };
    for pair in env {
        match existing.iter().position(|e| e.name == pair.0) {
            Some(j) => ops
                .push(json!({"op": "replace", "path": format!("{path}/{j}"), "value": var(pair)})),
            None => ops.push(json!({"op": "add", "path": format!("{path}/-"), "value": var(pair)})),
        }
    }
}

fn append_ops<T: Serialize>(ops: &mut Vec<Value>, path: &str, present: bool, items: &[T]) {
    if items.is_empty() {
        return;
    }
    if present {
        for item in items {
            ops.push(json!({"op": "add", "path": format!("{path}/-"), "value": to_value(item)}));
        }
    } else {
        let values: Vec<Value> = items.iter().map(to_value).collect();
        ops.push(json!({"op": "add", "path": path, "value": values}));
    }
}

fn to_value<T: Serialize>(item: &T) -> Value {
    // k8s-openapi types serialize to JSON infallibly.
    serde_json::to_value(item).unwrap_or(Value::Null)
}

/// JSON Pointer escaping of one path segment (RFC 6901).
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// A volume name (an RFC 1123 label, at most 63 characters) for `name`:
/// `prefix` + `name` when that is one, else a shortened form with a hash,
/// so that distinct names never share a volume.
pub fn volume_name(prefix: &str, name: &str) -> String {
    let plain = format!("{prefix}{name}");
    if plain.len() <= 63 && !name.contains('.') {
        return plain;
    }
    let hash = Sha256::digest(name.as_bytes());
    let short: String = hash[..4].iter().map(|b| format!("{b:02x}")).collect();
    let mut readable: String = name.replace('.', "-");
    readable.truncate(63 - prefix.len() - short.len() - 1);
    let readable = readable.trim_end_matches('-');
    format!("{prefix}{readable}-{short}")
}

/// A warning for a datasource whose Ready condition is not True.
fn not_ready(ds: &ApiDatasource, name: &str) -> Option<String> {
    let ready = ds
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    match ready {
        Some(c) if c.status == "True" => None,
        Some(c) => Some(format!(
            "ApiDatasource {name:?} is not Ready ({}): the sidecar cannot serve it until it \
             is; see kubectl describe apidatasource {name}",
            c.reason
        )),
        None => Some(format!(
            "ApiDatasource {name:?} is not reconciled yet: the sidecar cannot serve it until \
             it is Ready"
        )),
    }
}

#[cfg(test)]
mod tests;
