//! The sidekey sidecar: a proxy on loopback that forwards an app's plain
//! HTTP requests to a datasource's upstream API, adding its credentials,
//! default headers and query parameters and a signature header, over
//! verified TLS, while renewing OAuth tokens and reloading its files in the
//! background. One process serves several datasources, each on its own
//! loopback address and with its own state: configuration snapshot, reload
//! task, OAuth token renewal and metric series.
//!
//! [`start`] loads the configuration, binds the listeners and starts every
//! task; [`run`] does the same and waits for a shutdown signal.
//!
//! Proxied requests are served thread-per-core, like nginx's workers: each
//! worker thread runs its own single-threaded runtime with its own listener
//! per datasource (SO_REUSEPORT on the datasource's address, the kernel
//! spreads connections over them) and its own upstream connections, so a
//! request never changes threads. The threads share the configuration
//! snapshots and the metrics (atomics). Background work (reloads, OAuth
//! token renewal, the admin server) runs on the runtime that calls
//! [`start`]; what a request itself spawns (telling the authentication that
//! a credential was refused) stays on its worker.

pub mod admin;
pub mod auth;
pub mod error;
pub mod hop_by_hop;
pub mod metrics;
pub mod options;
pub mod outgoing;
pub mod proxy;
pub mod reload;
pub mod signature;
pub mod snapshot;
pub mod sources;
pub mod state;
pub mod tls;
pub mod upstream;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use sidekey_plumbing::serve::serve;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub use error::{ConfigError, RequestError, StartupError};
pub use options::{LogFormat, Options};

use admin::Admin;
use snapshot::{Snapshot, Timeouts};
use sources::{Locations, Sources};
use state::State;

/// A started sidecar.
pub struct Running {
    /// Where each datasource is served, in `--datasource` order.
    proxy_addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// One per worker thread, completed when it has stopped serving.
    workers: Vec<oneshot::Receiver<()>>,
}

impl Running {
    /// Where the first datasource is served (the real port when its
    /// `--listen` asked for 0).
    pub fn proxy_addr(&self) -> SocketAddr {
        // `start` binds at least one: `Options::validate` refuses none.
        self.proxy_addrs[0]
    }

    /// Where each datasource is served, in `--datasource` order, with the
    /// real port where `--listen` asked for 0.
    pub fn proxy_addrs(&self) -> Vec<SocketAddr> {
        self.proxy_addrs.clone()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Stops accepting, lets in-flight requests finish within the grace
    /// period, and returns when every task has ended.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        for worker in self.workers {
            let _ = worker.await;
        }
    }
}

/// One datasource as loaded at startup: its state, where its files are,
/// and the fingerprint of what was read, for its reload task.
struct Loaded {
    state: Arc<State>,
    locations: Locations,
    fingerprint: u64,
}

/// Loads every datasource (a broken one is an error here: nothing to fall
/// back on yet), binds the listeners and starts serving.
pub async fn start(options: &Options) -> Result<Running, StartupError> {
    options.validate()?;
    let timeouts = Timeouts {
        connect: options.connect_timeout(),
        upstream: options.upstream_timeout(),
        body_idle: options.upstream_body_idle_timeout(),
        token: options.token_timeout(),
    };
    let mut read = Vec::with_capacity(options.datasource.len());
    for path in &options.datasource {
        let locations = Locations::new(path.clone(), options.secrets_dir.clone());
        let reading = locations.clone();
        let (fingerprint, sources) = tokio::task::spawn_blocking(move || reading.read())
            .await
            .map_err(|e| ConfigError::ReadDatasource {
                path: path.clone(),
                source: std::io::Error::other(e),
            })?;
        read.push((locations, fingerprint, sources?));
    }
    // Before anything starts: names label logs and metrics.
    unique_names(
        read.iter()
            .map(|(l, _, s)| (&l.datasource, &s.datasource.name)),
    )?;

    let registry = metrics::Registry::new();
    let mut loaded = Vec::with_capacity(read.len());
    for (slot, (locations, fingerprint, sources)) in read.into_iter().enumerate() {
        let state = load(slot, &sources, &registry, &timeouts)?;
        loaded.push(Loaded {
            state: Arc::new(state),
            locations,
            fingerprint,
        });
    }

    let workers = options.workers();
    // Per datasource, one listener per worker.
    let mut proxy_addrs = Vec::with_capacity(loaded.len());
    let mut bound = Vec::with_capacity(loaded.len());
    for (_, addr) in options.datasources() {
        let (addr, listeners) = bind_shared(addr, workers)?;
        proxy_addrs.push(addr);
        bound.push(listeners.into_iter());
    }
    let admin_listener = match options.admin_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let admin_addr = match (&admin_listener, options.admin_listen) {
        (Some(l), Some(asked)) => Some(local_addr(l, asked)?),
        _ => None,
    };

    let (stop, stopped) = watch::channel(false);
    let grace = options.shutdown_grace();
    let mut tasks = Vec::new();
    let mut worker_stops = Vec::with_capacity(workers);
    for index in 0..workers {
        let mut served = Vec::with_capacity(loaded.len());
        for (listeners, datasource) in bound.iter_mut().zip(&loaded) {
            if let Some(listener) = listeners.next() {
                served.push((listener, datasource.state.clone()));
            }
        }
        worker_stops.push(spawn_worker(index, served, stopped.clone(), grace)?);
    }
    for (datasource, addr) in loaded.iter().zip(&proxy_addrs) {
        tracing::info!(
            datasource = %datasource.state.name,
            address = %addr,
            workers,
            "proxy listening"
        );
    }
    if let (Some(listener), Some(addr)) = (admin_listener, admin_addr) {
        let admin = Arc::new(Admin {
            datasources: loaded.iter().map(|d| d.state.clone()).collect(),
            metrics: registry,
        });
        tasks.push(tokio::spawn(serve(
            "admin",
            None,
            listener,
            move |request| admin::handle(admin.clone(), request),
            until_stopped(stopped.clone()),
            grace,
        )));
        tracing::info!(address = %addr, "admin listening");
    }
    for datasource in loaded {
        tasks.push(tokio::spawn(reload::watch_files(
            datasource.state,
            datasource.locations,
            options.reload_interval(),
            datasource.fingerprint,
            stopped.clone(),
        )));
    }
    Ok(Running {
        proxy_addrs,
        admin_addr,
        stop,
        tasks,
        workers: worker_stops,
    })
}

/// The state of the datasource served in `slot`, its first snapshot built
/// from `sources`.
fn load(
    slot: usize,
    sources: &Sources,
    registry: &metrics::Registry,
    timeouts: &Timeouts,
) -> Result<State, ConfigError> {
    let name = sources.datasource.name.as_str();
    let metrics = registry.datasource(name);
    let snapshot = Snapshot::build(sources, None, timeouts, &metrics, slot)?;
    tracing::info!(
        datasource = name,
        upstream = %sources.datasource.url,
        authentication = sources.datasource.authentication.type_().as_str(),
        signature = sources.datasource.signature.is_some(),
        "configuration loaded"
    );
    Ok(State {
        name: Arc::from(name),
        snapshot: ArcSwap::from_pointee(snapshot),
        metrics,
        timeouts: timeouts.clone(),
        slot,
    })
}

/// Refuses two datasource files that name the same datasource.
fn unique_names<'a>(
    datasources: impl Iterator<Item = (&'a PathBuf, &'a String)>,
) -> Result<(), StartupError> {
    let mut seen: HashMap<&str, &PathBuf> = HashMap::new();
    for (path, name) in datasources {
        if let Some(first) = seen.insert(name, path) {
            return Err(StartupError::DuplicateDatasourceName {
                name: name.clone(),
                first: first.clone(),
                second: path.clone(),
            });
        }
    }
    Ok(())
}

/// Starts worker thread `index`: a single-threaded runtime serving each
/// datasource's proxy on its listener in `served` until `stopped`. The
/// receiver completes when the thread has finished serving.
fn spawn_worker(
    index: usize,
    served: Vec<(std::net::TcpListener, Arc<State>)>,
    stopped: watch::Receiver<bool>,
    grace: std::time::Duration,
) -> Result<oneshot::Receiver<()>, StartupError> {
    let failed = |source: std::io::Error| StartupError::Worker { index, source };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(failed)?;
    let served = {
        // Registers the sockets with this worker's event loop.
        let _entered = runtime.enter();
        served
            .into_iter()
            .map(|(listener, state)| Ok((TcpListener::from_std(listener)?, state)))
            .collect::<Result<Vec<_>, std::io::Error>>()
            .map_err(failed)?
    };
    let (done, finished) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("sidekey-worker-{index}"))
        .spawn(move || {
            runtime.block_on(async move {
                // A task per datasource: each accept loop wakes alone.
                let serving: Vec<_> = served
                    .into_iter()
                    .map(|(listener, state)| {
                        tokio::spawn(serve(
                            "proxy",
                            Some(state.name.clone()),
                            listener,
                            move |request| proxy::handle(state.clone(), request),
                            until_stopped(stopped.clone()),
                            grace,
                        ))
                    })
                    .collect();
                for task in serving {
                    let _ = task.await;
                }
            });
            drop(runtime);
            let _ = done.send(());
        })
        .map_err(failed)?;
    Ok(finished)
}

/// `count` listening sockets on one address, one per worker. Several get
/// SO_REUSEPORT, so that each worker accepts on its own; the first one
/// fixes the port when `addr` asks for port 0.
///
/// SO_REUSEPORT would also let a second process of the same user (another
/// sidecar started on the same port) join the group and silently take a
/// share of the app's connections. So one worker binds exclusively, and
/// several bind only after an exclusive bind proved the address free.
fn bind_shared(
    addr: SocketAddr,
    count: usize,
) -> Result<(SocketAddr, Vec<std::net::TcpListener>), StartupError> {
    let failed = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            StartupError::AddressInUse { addr }
        } else {
            StartupError::Bind { addr, source }
        }
    };
    let shared = count > 1;
    let mut bound = addr;
    if shared {
        let probe = socket(addr, false).map_err(failed)?;
        bound = probe
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or(addr);
    }
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = socket(bound, shared).map_err(failed)?;
        socket.listen(1024).map_err(failed)?;
        let listener: std::net::TcpListener = socket.into();
        bound = listener.local_addr().map_err(failed)?;
        listeners.push(listener);
    }
    Ok((bound, listeners))
}

/// A non-blocking TCP socket bound to `addr`, not yet listening.
fn socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As tokio's own `bind`: a restart need not wait out TIME_WAIT. (It
    // never lets two listeners share a port; SO_REUSEPORT does.)
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(reuse_port)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Completes once `stopped` says stop (or its sender is gone).
async fn until_stopped(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Starts the sidecar and serves until `shutdown` completes.
pub async fn run(
    options: &Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartupError> {
    let running = start(options).await?;
    shutdown.await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind { addr, source })
}

fn local_addr(listener: &TcpListener, asked: SocketAddr) -> Result<SocketAddr, StartupError> {
    listener.local_addr().map_err(|source| StartupError::Bind {
        addr: asked,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_files_naming_one_datasource_are_refused_with_both_paths() {
        let (a, b, c) = (
            PathBuf::from("/etc/a.yaml"),
            PathBuf::from("/etc/b.yaml"),
            PathBuf::from("/etc/c.yaml"),
        );
        let (crm, payments) = ("crm".to_owned(), "payments".to_owned());
        assert!(unique_names([(&a, &crm), (&b, &payments)].into_iter()).is_ok());
        let err = unique_names([(&a, &crm), (&b, &payments), (&c, &crm)].into_iter())
            .expect_err("crm twice");
        let text = err.to_string();
        assert!(
            text.contains("/etc/a.yaml")
                && text.contains("/etc/c.yaml")
                && text.contains("\"crm\""),
            "{text}"
        );
        assert_eq!(err.code(), "duplicate_datasource_name");
    }
}
