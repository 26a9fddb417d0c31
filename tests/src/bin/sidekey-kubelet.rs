//! Plays the kubelet for the injected sidecar of one pod that never runs
//! (the test bed has no kubelet): lays out the sidecar's volumes under a
//! directory, as the kubelet would at their mount paths, and replaces
//! itself with the sidecar binary, run with the container's arguments
//! (paths moved under that directory) and environment.
//!
//!   sidekey-kubelet NAMESPACE POD ROOT [SIDECAR-BINARY]
//!
//! The cluster is the one KUBECONFIG names. SIDECAR-BINARY replaces the
//! container's command (the image's binary); by default the
//! `sidekey-sidecar` next to this binary, else the command on PATH.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use sidekey_crds::names;
use sidekey_tests::kubelet::{KubeletError, lay_out_container, rooted_args, sidecar_of};

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("usage: sidekey-kubelet NAMESPACE POD ROOT [SIDECAR-BINARY]")]
    Usage,
    #[error("a client for KUBECONFIG: {0}")]
    Client(#[source] kube::Error),
    #[error("reading pod {namespace}/{pod}: {source}")]
    Pod {
        namespace: String,
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("pod {0} has no container {container}: was it injected?", container = names::SIDECAR_CONTAINER)]
    NotInjected(String),
    #[error("the sidecar container has no command")]
    NoCommand,
    #[error("env {0}: only values, metadata.name and metadata.namespace are played here")]
    Env(String),
    #[error(transparent)]
    Kubelet(#[from] KubeletError),
    #[error("starting {}: {source}", program.display())]
    Exec {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The sidecar binary: the one given, else the one built beside this
/// binary, else the container's command as found on PATH.
fn program(given: Option<String>, command: &str) -> PathBuf {
    if let Some(given) = given {
        return PathBuf::from(given);
    }
    // The container's command is the image's path (/usr/local/bin/...).
    let file = Path::new(command).file_name().unwrap_or_default();
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(file)));
    match beside {
        Some(path) if path.is_file() => path,
        _ => PathBuf::from(command),
    }
}

async fn run() -> Result<std::convert::Infallible, Error> {
    let mut args = std::env::args().skip(1);
    let (Some(namespace), Some(name), Some(root)) = (args.next(), args.next(), args.next()) else {
        return Err(Error::Usage);
    };
    let binary = args.next();
    if args.next().is_some() {
        return Err(Error::Usage);
    }
    let client = Client::try_default().await.map_err(Error::Client)?;
    let pod = Api::<Pod>::namespaced(client.clone(), &namespace)
        .get(&name)
        .await
        .map_err(|source| Error::Pod {
            namespace: namespace.clone(),
            pod: name.clone(),
            source,
        })?;
    let sidecar =
        sidecar_of(&pod).ok_or_else(|| Error::NotInjected(format!("{namespace}/{name}")))?;
    let root = Path::new(&root);
    for dir in lay_out_container(&client, &pod, &sidecar, root).await? {
        eprintln!("sidekey-kubelet: laid out {}", dir.display());
    }

    let mut command = sidecar.command.clone().unwrap_or_default().into_iter();
    let first = command.next().ok_or(Error::NoCommand)?;
    let program = program(binary, &first);
    let mounts = sidecar.volume_mounts.clone().unwrap_or_default();
    let mut argv: Vec<String> = command.collect();
    argv.extend(sidecar.args.clone().unwrap_or_default());
    // A pod has a network namespace of its own; here the sidecar shares
    // this machine's, so what it would open to the pod's network stays on
    // loopback.
    let argv: Vec<String> = rooted_args(root, &mounts, &argv)
        .into_iter()
        .map(|a| a.replace("=0.0.0.0:", "=127.0.0.1:"))
        .collect();
    let mut cmd = std::process::Command::new(&program);
    cmd.args(&argv);
    for var in sidecar.env.iter().flatten() {
        let field = var
            .value_from
            .as_ref()
            .and_then(|f| f.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        let value = match (&var.value, field) {
            (Some(value), _) => value.clone(),
            (None, Some("metadata.name")) => name.clone(),
            (None, Some("metadata.namespace")) => namespace.clone(),
            _ => return Err(Error::Env(var.name.clone())),
        };
        cmd.env(&var.name, value);
    }
    // What the app containers of the pod were given, to call the sidecar.
    let spec = pod.spec.as_ref();
    for container in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
        for var in container.env.iter().flatten() {
            if var.name.starts_with("SIDEKEY_") {
                eprintln!(
                    "sidekey-kubelet: container {} has {}={}",
                    container.name,
                    var.name,
                    var.value.as_deref().unwrap_or_default()
                );
            }
        }
    }
    eprintln!(
        "sidekey-kubelet: starting {} {}",
        program.display(),
        argv.join(" ")
    );
    // Replaces this process, so its pid is the sidecar's.
    let source = cmd.exec();
    Err(Error::Exec { program, source })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("sidekey-kubelet: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
