//! sidekey's operator: reconciles each `ApiDatasource` into the ConfigMap
//! `<name>-sidekey` its sidecars read, with status, Events, Secret
//! watching, leader election and an admin port; and serves the admission
//! webhook that injects the sidecar into pods ([`webhook`]), on every
//! replica, leader or not.

pub mod admin;
pub mod cli;
pub mod configmap;
pub mod configmap_drift;
pub mod controller;
pub mod error;
pub mod leader;
pub mod list_signals;
pub mod metrics;
pub mod oauth;
pub mod secrets_index;
pub mod status;
pub mod validate;
pub mod webhook;

use std::sync::Arc;

use kube::Client;
use tokio_util::sync::CancellationToken;

pub use cli::Args;
pub use error::{DatasourceError, ReconcileError, StartupError};

/// Runs the operator until SIGTERM/SIGINT (`Ok`) or a fatal error (`Err`:
/// the process should exit and be restarted). Losing leadership is not
/// fatal: the process stands by and leads again when it can.
pub async fn run(args: Args) -> Result<(), StartupError> {
    let lease = args.lease();
    lease.check().map_err(StartupError::InvalidFlags)?;
    let client = Client::try_default()
        .await
        .map_err(StartupError::ClientConfig)?;

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let state = admin::State::default();
    let admin_addr = admin::serve(args.admin_listen, state.clone(), shutdown.clone()).await?;
    tracing::info!(%admin_addr, "admin server listening");

    let webhook = match args.webhook.webhook_listen {
        Some(_) => {
            let native = webhook::native_sidecars(&client, args.webhook.native_sidecars).await?;
            let settings = webhook::Settings::from_args(
                &args.webhook,
                &lease.namespace,
                args.namespace.as_deref(),
                native,
            )?
            .ok_or_else(|| StartupError::InvalidFlags("--webhook-listen is missing".into()))?;
            let webhook = webhook::Webhook::start(
                client.clone(),
                settings,
                args.namespace.as_deref(),
                state.metrics.clone(),
                shutdown.clone(),
            )
            .await?;
            tracing::info!(addr = %webhook.addr, native_sidecars = native, "webhook listening");
            Some(Arc::new(webhook))
        }
        None => None,
    };

    // Every replica serves the authorization endpoint: the token Secret is
    // its only state.
    let oauth = args.oauth().map(Arc::new);
    if let Some(settings) = &oauth {
        let addr = oauth::server::serve(
            client.clone(),
            settings.clone(),
            state.metrics.clone(),
            shutdown.clone(),
        )
        .await?;
        tracing::info!(%addr, public_url = %settings.public_url, "authorization endpoint listening");
    }

    let mut leadership = leader::Leadership::join(client.clone(), lease.clone()).await?;
    // A standby is ready once it can answer admissions; the certificate of
    // a first install comes from the leader.
    match webhook.clone() {
        Some(webhook) => {
            let state = state.clone();
            tokio::spawn(async move {
                webhook.ready().await;
                tracing::info!("webhook ready");
                state.set_ready(true);
            });
        }
        None => state.set_ready(true),
    }
    let mut ctx = controller::Context::new(client.clone(), state.metrics.clone(), &lease.identity);
    ctx.oauth = oauth;
    let ctx = Arc::new(ctx);
    let scope = controller::Scope {
        namespace: args.namespace.clone(),
        concurrency: args.concurrency,
    };
    // One pass per term of leadership: a leader that loses the Lease (an
    // API server down for longer than the renew deadline, or a partition)
    // stops reconciling at once and stands by in the same process, so an
    // outage costs no restart.
    loop {
        tracing::info!(
            lease = %format!("{}/{}", lease.namespace, lease.name),
            identity = %lease.identity,
            "waiting to become leader"
        );
        let term = tokio::select! {
            acquired = leadership.acquired() => acquired?,
            _ = shutdown.cancelled() => {
                leadership.step_down().await;
                return Ok(());
            }
        };
        state.metrics.leader.set(1);
        tracing::info!(identity = %lease.identity, term, "became leader; reconciling");

        let leading = shutdown.child_token();
        if let Some(webhook) = webhook.clone() {
            let client = client.clone();
            let stop = leading.clone();
            tokio::spawn(async move { webhook.lead(client, stop).await });
        }
        let controller = controller::run(ctx.clone(), scope.clone(), leading.clone());
        tokio::select! {
            _ = controller => {
                tracing::info!("controller stopped");
                leadership.step_down().await;
                return Ok(());
            }
            () = leadership.lost(term) => {
                // Another replica may already reconcile: the controller is
                // dropped here, mid-reconcile if need be, and the webhook's
                // maintenance stops.
                leading.cancel();
                state.metrics.leader.set(0);
                tracing::warn!(term, "stopped reconciling: no longer the leader");
            }
        }
    }
}

/// Cancels `token` on SIGTERM (what Kubernetes sends) or SIGINT.
async fn cancel_on_signal(token: CancellationToken) {
    sidekey_plumbing::signal::shutdown().await;
    tracing::info!("stopping");
    token.cancel();
}
