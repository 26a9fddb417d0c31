//! The admin port: `/healthz` (the process runs), `/readyz` (it reached the
//! API server and joined the leader election; a standby is ready too, as
//! it will serve the webhook) and `/metrics`, routed and served by
//! `sidekey-plumbing` as the sidecar's are; only GET and HEAD. No
//! credentials pass here.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use sidekey_plumbing::admin::{self, Probes, text};
use tokio_util::sync::CancellationToken;

use crate::error::StartupError;
use crate::metrics::Metrics;

/// How long admin requests in flight at shutdown get to finish.
const GRACE: Duration = Duration::from_secs(5);

/// What the admin server shows, shared with the rest of the operator.
#[derive(Clone, Default)]
pub struct State {
    pub metrics: Metrics,
    ready: Arc<AtomicBool>,
}

impl State {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

impl Probes for State {
    fn readyz(&self) -> Response<Full<Bytes>> {
        if self.is_ready() {
            text(StatusCode::OK, "ok\n")
        } else {
            text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
        }
    }

    fn metrics(&self) -> String {
        self.metrics.encode()
    }
}

/// Binds `addr` and serves until `shutdown`; returns the bound address
/// (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    state: State,
    shutdown: CancellationToken,
) -> Result<SocketAddr, StartupError> {
    let (listener, bound) = sidekey_plumbing::serve::bind(addr)
        .await
        .map_err(|source| StartupError::AdminListen { addr, source })?;
    tokio::spawn(sidekey_plumbing::serve::serve(
        "admin",
        None,
        listener,
        move |request| {
            let response = respond(&request, &state);
            async move { Ok::<_, Infallible>(response) }
        },
        shutdown.cancelled_owned(),
        GRACE,
    ));
    Ok(bound)
}

/// The answer to one admin request.
pub fn respond(req: &Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    route(req.method(), req.uri().path(), state)
}

/// GET and HEAD only.
fn route(method: &Method, path: &str, state: &State) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    admin::route(path, state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_follows_the_ready_flag_and_only_get_or_head_is_answered() {
        let state = State::default();
        let status = |method: Method, path: &str| route(&method, path, &state).status();
        assert_eq!(
            status(Method::GET, "/readyz"),
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.set_ready(true);
        for (method, path, expected) in [
            (Method::GET, "/readyz", StatusCode::OK),
            (Method::HEAD, "/readyz", StatusCode::OK),
            (Method::GET, "/healthz", StatusCode::OK),
            (Method::GET, "/nope", StatusCode::NOT_FOUND),
            (Method::POST, "/healthz", StatusCode::METHOD_NOT_ALLOWED),
        ] {
            assert_eq!(status(method.clone(), path), expected, "{method} {path}");
        }
    }
}
