//! The request path: build the upstream request, authenticate, sign,
//! forward, and answer the app with the upstream's response or a JSON
//! error. Each stage lives in its own module; this one only strings them
//! together and handles the one retry after a 401.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;

use crate::auth::{Authenticate, Credential};
use crate::error::{RequestError, chain};
use crate::hop_by_hop;
use crate::outgoing::Outgoing;
use crate::snapshot::Snapshot;
use crate::state::State;

/// What the app receives: the upstream's body streamed, or an error body.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// A request body up to this size, of known length, is kept in memory so
/// that it can be sent again after a 401; larger ones stream.
pub const RETRY_BODY_LIMIT: u64 = 64 * 1024;

pub async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let snapshot = state.snapshot.load_full();
    // Only the path: the query may carry the app's own secrets. The clock
    // is read only when the request is logged.
    let logged = tracing::enabled!(tracing::Level::DEBUG).then(|| {
        (
            request.method().clone(),
            request.uri().path().to_owned(),
            Instant::now(),
        )
    });
    let version = request.version();
    let mut response = match forward(&state, &snapshot, request).await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(
                datasource = %state.name,
                error = e.code(),
                reason = %chain(&e),
                "request failed"
            );
            e.to_response().map(Either::Right)
        }
    };
    *response.version_mut() = version;
    state.metrics.request_answered(response.status());
    if let Some((method, path, started)) = logged {
        tracing::debug!(
            datasource = %state.name,
            %method,
            path,
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
    }
    Ok(response)
}

enum AppBody {
    /// Small and complete: can be sent twice.
    Kept(Bytes),
    Streamed(Incoming),
}

async fn forward(
    state: &State,
    snapshot: &Snapshot,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, RequestError> {
    let (parts, body) = request.into_parts();
    let mut outgoing = snapshot.target.outgoing(parts)?;
    let auth = &snapshot.auth;
    let body = match body.size_hint().exact() {
        Some(len) if len <= RETRY_BODY_LIMIT && auth.renewable() => {
            let bytes = body
                .collect()
                .await
                .map_err(|e| RequestError::BadRequest {
                    what: "reading the request body failed",
                    source: e.into(),
                })?
                .to_bytes();
            AppBody::Kept(bytes)
        }
        _ => AppBody::Streamed(body),
    };

    let credential = credential_for(auth.as_ref()).await?;
    prepare(snapshot, &mut outgoing, &credential)?;
    match body {
        AppBody::Streamed(body) => {
            let response = send(
                state,
                snapshot,
                outgoing.request(Either::Right(body), false)?,
            )
            .await?;
            if response.status() == StatusCode::UNAUTHORIZED && auth.renewable() {
                // No retry without the body, but the next request should
                // not meet the same refusal.
                let auth = auth.clone();
                tokio::spawn(async move {
                    auth.rejected(credential).await;
                });
            }
            Ok(finish(response))
        }
        AppBody::Kept(bytes) => {
            let first = outgoing.request(Either::Left(Full::new(bytes.clone())), true)?;
            let response = send(state, snapshot, first).await?;
            if response.status() != StatusCode::UNAUTHORIZED || !auth.renewable() {
                return Ok(finish(response));
            }
            if !auth.rejected(credential).await {
                return Ok(finish(response));
            }
            drop(response);
            let credential = credential_for(auth.as_ref()).await?;
            prepare(snapshot, &mut outgoing, &credential)?;
            let retry = outgoing.request(Either::Left(Full::new(bytes)), false)?;
            Ok(finish(send(state, snapshot, retry).await?))
        }
    }
}

async fn credential_for(auth: &dyn Authenticate) -> Result<Arc<Credential>, RequestError> {
    match auth.current() {
        Some(c) => Ok(c),
        None => auth.obtain().await,
    }
}

fn prepare(
    snapshot: &Snapshot,
    outgoing: &mut Outgoing,
    credential: &Credential,
) -> Result<(), RequestError> {
    credential.apply(outgoing);
    if let Some(signer) = &snapshot.signer {
        signer.apply(outgoing)?;
    }
    Ok(())
}

async fn send(
    state: &State,
    snapshot: &Snapshot,
    request: Request<crate::upstream::UpstreamBody>,
) -> Result<Response<Incoming>, RequestError> {
    let sent = Instant::now();
    let response = snapshot.upstream.send(request).await?;
    state.metrics.upstream_answered(sent.elapsed());
    Ok(response)
}

fn finish(response: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    hop_by_hop::strip_response(&mut parts.headers);
    Response::from_parts(parts, Either::Left(body))
}
