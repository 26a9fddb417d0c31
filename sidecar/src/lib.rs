//! The sidekey sidecar: a proxy on loopback that forwards an app's plain
//! HTTP requests to a datasource's upstream API, adding its credentials,
//! default headers and query parameters and a signature header, over
//! verified TLS, while renewing OAuth tokens and reloading its files in the
//! background.
//!
//! [`start`] loads the configuration, binds the listeners and starts every
//! task; [`run`] does the same and waits for a shutdown signal.

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
use tokio::sync::watch;
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

    let proxy_listener = bind(options.listen).await?;
    let proxy_addr = local_addr(&proxy_listener, options.listen)?;
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
    let proxy_state = state.clone();
    tasks.push(tokio::spawn(server::serve(
        "proxy",
        proxy_listener,
        move |request| proxy::handle(proxy_state.clone(), request),
        stopped.clone(),
        grace,
    )));
    tracing::info!(address = %proxy_addr, "proxy listening");
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
    })
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
