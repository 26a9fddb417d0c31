//! Why the webhook refuses a pod. Each message names the annotation and
//! the problem in the words of the person who wrote the pod; `reason()` is
//! the metric label.

use sidekey_crds::names::{DATASOURCES_ANNOTATION as ANNOTATION, SIDECAR_CONTAINER};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum InjectError {
    #[error("{ANNOTATION} {value:?} is malformed: {detail}")]
    MalformedAnnotation { value: String, detail: String },

    #[error(
        "{ANNOTATION}: {entry:?} has an invalid port: {detail}; write `name` or `name:port` \
         with a port from 1024 to 65535"
    )]
    InvalidPort { entry: String, detail: String },

    #[error("{ANNOTATION} names datasource {name:?} twice")]
    DuplicateDatasource { name: String },

    #[error(
        "{ANNOTATION}: datasources {first:?} and {second:?} would both set {env}; \
         rename one of them"
    )]
    SameEnvName {
        first: String,
        second: String,
        env: String,
    },

    #[error("{ANNOTATION}: datasources {first:?} and {second:?} both ask for port {port}")]
    SamePort {
        first: String,
        second: String,
        port: u16,
    },

    #[error(
        "{ANNOTATION}: datasource {name:?} asks for port {port}, which container {container:?} \
         of the pod already uses; pick another port"
    )]
    PortInUse {
        name: String,
        port: u16,
        container: String,
    },

    #[error(
        "{ANNOTATION}: datasource {name:?} asks for port {port}, the sidecar's admin port; \
         pick another port"
    )]
    ReservedPort { name: String, port: u16 },

    #[error("{ANNOTATION}: no free port is left above 15000")]
    NoFreePort,

    #[error(
        "{ANNOTATION}: {} in namespace {namespace:?}: create {} first \
         (a pod can use only the ApiDatasources of its own namespace)",
        describe_missing(.names), if .names.len() == 1 { "it" } else { "them" }
    )]
    DatasourceNotFound {
        names: Vec<String>,
        namespace: String,
    },

    #[error(
        "the pod already has a {kind} named {name:?}, a name sidekey reserves for what it \
         injects; rename it"
    )]
    ReservedName { kind: &'static str, name: String },

    #[error(
        "cannot look up ApiDatasource {name:?} in namespace {namespace:?}: {detail}; \
         the pod was refused so that it does not start without its sidecar, try again"
    )]
    Lookup {
        name: String,
        namespace: String,
        detail: String,
    },

    #[error("the admission request carries no pod")]
    NoPod,

    #[error("sidekey could not build the patch for this pod (a bug, please report it): {0}")]
    PatchNotBuilt(String),
}

fn describe_missing(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    match quoted.as_slice() {
        [one] => format!("ApiDatasource {one} does not exist"),
        many => format!("ApiDatasources {} do not exist", many.join(", ")),
    }
}

impl InjectError {
    /// CamelCase name of the refusal, for the admissions metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MalformedAnnotation { .. } => "MalformedAnnotation",
            Self::InvalidPort { .. } => "InvalidPort",
            Self::DuplicateDatasource { .. } => "DuplicateDatasource",
            Self::SameEnvName { .. } => "DuplicateEnvName",
            Self::SamePort { .. } => "DuplicatePort",
            Self::PortInUse { .. } => "PortInUse",
            Self::ReservedPort { .. } => "ReservedPort",
            Self::NoFreePort => "NoFreePort",
            Self::DatasourceNotFound { .. } => "DatasourceNotFound",
            Self::ReservedName { .. } => "ReservedName",
            Self::Lookup { .. } => "LookupFailed",
            Self::NoPod => "NoPod",
            Self::PatchNotBuilt(_) => "PatchNotBuilt",
        }
    }

    /// The sidecar container's name is reserved.
    pub fn reserved_container() -> Self {
        Self::ReservedName {
            kind: "container",
            name: SIDECAR_CONTAINER.to_owned(),
        }
    }
}
