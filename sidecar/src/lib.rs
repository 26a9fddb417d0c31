//! The sidekey sidecar: a proxy on loopback that forwards an app's plain
//! HTTP requests to a datasource's upstream API, adding its credentials,
//! default headers and query parameters and a signature header, over
//! verified TLS, while renewing OAuth tokens and reloading its files in the
//! background.
//!
//! [`start`] loads the configuration, binds the listeners and starts every
//! task; [`run`] does the same and waits for a shutdown signal.
//!
//! Proxied requests are served thread-per-core, like nginx's workers: each
//! worker thread runs its own single-threaded runtime with its own listener
//! (SO_REUSEPORT on one address, the kernel spreads connections over them)
//! and its own upstream connections, so a request never changes threads.
//! The threads share the configuration snapshot and the metrics (atomics).
//! Background work (reloads, OAuth token renewal, the admin server) runs on
//! the runtime that calls [`start`]; what a request itself spawns (telling
//! the authentication that a credential was refused) stays on its worker.

pub mod admin;
pub mod auth;
pub mod error;
pub mod hop_by_hop;
pub mod logging;
pub mod metrics;
pub mod options;
pub mod outgoing;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod signature;
pub mod snapshot;
pub mod sources;
pub mod state;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub use error::Error;
pub use options::{LogFormat, Options};

use metrics::Metrics;
use snapshot::{Snapshot, Timeouts};
use sources::Locations;
use state::State;

/// A started sidecar.
pub struct Running {
    proxy_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// One per worker thread, completed when it has stopped serving.
    workers: Vec<oneshot::Receiver<()>>,
}

impl Running {
    /// Where the proxy listens (the real port when `--listen` asked for 0).
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
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

/// Loads the configuration (a broken one is an error here: nothing to fall
/// back on yet), binds the listeners and starts serving.
pub async fn start(options: &Options) -> Result<Running, Error> {
    options.validate()?;
    let locations = Locations::new(options.datasource.clone(), options.secrets_dir.clone());
    let reading = locations.clone();
    let (fingerprint, sources) = tokio::task::spawn_blocking(move || reading.read())
        .await
        .map_err(|e| Error::ReadDatasource {
            path: options.datasource.clone(),
            reason: e.to_string(),
        })?;
    let sources = sources?;
    let timeouts = Timeouts {
        connect: options.connect_timeout(),
        upstream: options.upstream_timeout(),
        token: options.token_timeout(),
    };
    let metrics = Metrics::new();
    let snapshot = Snapshot::build(&sources, None, &timeouts, &metrics)?;
    tracing::info!(
        datasource = %snapshot.name,
        upstream = %sources.datasource.url,
        authentication = auth_type(&sources.datasource.authentication),
        signature = sources.datasource.signature.is_some(),
        "configuration loaded"
    );
    drop(sources);
    let state = Arc::new(State {
        snapshot: ArcSwap::from_pointee(snapshot),
        metrics,
        timeouts,
    });

    let workers = options.workers();
    let (proxy_addr, proxy_listeners) = bind_shared(options.listen, workers)?;
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
    for (index, listener) in proxy_listeners.into_iter().enumerate() {
        worker_stops.push(spawn_worker(
            index,
            listener,
            state.clone(),
            stopped.clone(),
            grace,
        )?);
    }
    tracing::info!(address = %proxy_addr, workers, "proxy listening");
    if let (Some(listener), Some(addr)) = (admin_listener, admin_addr) {
        let admin_state = state.clone();
        tasks.push(tokio::spawn(server::serve(
            "admin",
            listener,
            move |request| admin::handle(admin_state.clone(), request),
            stopped.clone(),
            grace,
        )));
        tracing::info!(address = %addr, "admin listening");
    }
    tasks.push(tokio::spawn(reload::watch_files(
        state,
        locations,
        options.reload_interval(),
        fingerprint,
        stopped,
    )));
    Ok(Running {
        proxy_addr,
        admin_addr,
        stop,
        tasks,
        workers: worker_stops,
    })
}

/// Starts worker thread `index`: a single-threaded runtime serving the
/// proxy on `listener` until `stopped`. The receiver completes when the
/// thread has finished serving.
fn spawn_worker(
    index: usize,
    listener: std::net::TcpListener,
    state: Arc<State>,
    stopped: watch::Receiver<bool>,
    grace: std::time::Duration,
) -> Result<oneshot::Receiver<()>, Error> {
    let failed = |e: std::io::Error| Error::Worker {
        index,
        reason: e.to_string(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(failed)?;
    let listener = {
        // Registers the socket with this worker's event loop.
        let _entered = runtime.enter();
        TcpListener::from_std(listener).map_err(failed)?
    };
    let (done, finished) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("sidekey-worker-{index}"))
        .spawn(move || {
            runtime.block_on(server::serve(
                "proxy",
                listener,
                move |request| proxy::handle(state.clone(), request),
                stopped,
                grace,
            ));
            drop(runtime);
            let _ = done.send(());
        })
        .map_err(failed)?;
    Ok(finished)
}

/// `count` listening sockets on one address, each with SO_REUSEPORT, so
/// that each worker accepts on its own. The first one fixes the port when
/// `addr` asks for port 0. Linux only lets sockets of the same user join.
fn bind_shared(
    addr: SocketAddr,
    count: usize,
) -> Result<(SocketAddr, Vec<std::net::TcpListener>), Error> {
    let failed = |e: std::io::Error| Error::Bind {
        addr,
        reason: e.to_string(),
    };
    let mut bound = addr;
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let listener = reuse_port_listener(bound).map_err(failed)?;
        bound = listener.local_addr().map_err(failed)?;
        listeners.push(listener);
    }
    Ok((bound, listeners))
}

fn reuse_port_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As tokio's own `bind`: a restart need not wait out TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Starts the sidecar and serves until `shutdown` completes.
pub async fn run(options: &Options, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let running = start(options).await?;
    shutdown.await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).await.map_err(|e| Error::Bind {
        addr,
        reason: e.to_string(),
    })
}

fn local_addr(listener: &TcpListener, asked: SocketAddr) -> Result<SocketAddr, Error> {
    listener.local_addr().map_err(|e| Error::Bind {
        addr: asked,
        reason: e.to_string(),
    })
}

fn auth_type(auth: &sidekey_crds::ResolvedAuthentication) -> &'static str {
    use sidekey_crds::ResolvedAuthentication as A;
    match auth {
        A::None => "None",
        A::Basic { .. } => "Basic",
        A::ApiKey { .. } => "ApiKey",
        A::BearerToken { .. } => "BearerToken",
        A::OAuth2(_) => "OAuth2",
    }
}
