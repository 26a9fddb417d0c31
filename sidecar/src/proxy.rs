//! The request path: build the upstream request, authenticate, sign,
//! forward, and answer the app with the upstream's response or a JSON
//! error. Each stage lives in its own module; this one only strings them
//! together and handles the one retry after a 401.

use std::convert::Infallible;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use tokio::time::Sleep;

use crate::auth::{Authenticate, Credential};
use crate::error::{BodyError, RequestError, chain};
use crate::hop_by_hop;
use crate::outgoing::Outgoing;
use crate::snapshot::Snapshot;
use crate::state::State;

/// What the app receives: the upstream's body streamed, or an error body.
pub type ProxyBody = Either<UpstreamResponseBody, Full<Bytes>>;

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
        Ok(response) => response.map(|body| Either::Left(UpstreamResponseBody::new(body, &state))),
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
) -> Result<Response<Incoming>, RequestError> {
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

fn finish(response: Response<Incoming>) -> Response<Incoming> {
    let (mut parts, body) = response.into_parts();
    hop_by_hop::strip_response(&mut parts.headers);
    Response::from_parts(parts, body)
}

/// The upstream's response body on its way to the app, bounded by
/// `--upstream-body-idle-timeout` between reads. An error of the upstream
/// body (a reset, a connection closed before the announced length, the
/// idle timeout) ends the app's body with an error, never as if complete,
/// and is logged once at warn and counted in
/// `sidekey_upstream_body_errors_total`.
///
/// Cheap on the hot path: nothing is allocated per frame, and a frame that
/// is ready costs one flag write. The timer is created only when a poll
/// first finds the upstream with nothing to give (one allocation per
/// body at most; a body that is all there never gets one). Progress does
/// not touch the timer: it only marks the deadline stale; the next poll
/// that finds nothing moves the deadline (a clock read), and the timer is
/// re-armed only when it fires before that deadline, so at most once per
/// idle period rather than once per frame.
pub struct UpstreamResponseBody {
    /// `None` once ended or failed. Dropping it before its end drops the
    /// upstream connection (HTTP/1.1) or resets the stream (HTTP/2).
    body: Option<Incoming>,
    idle: Duration,
    /// When the body has idled too long, unless `stale`.
    deadline: tokio::time::Instant,
    /// A frame came since `deadline` was set: it needs moving.
    stale: bool,
    timer: Option<Pin<Box<Sleep>>>,
    state: Arc<State>,
}

impl UpstreamResponseBody {
    fn new(body: Incoming, state: &Arc<State>) -> Self {
        Self {
            body: Some(body),
            idle: state.timeouts.body_idle,
            deadline: tokio::time::Instant::now(),
            stale: true,
            timer: None,
            state: state.clone(),
        }
    }

    /// Whether the body has sent nothing for `idle` (the timer is then
    /// spent); otherwise the timer will wake `cx` at the deadline.
    fn idled_out(&mut self, cx: &mut Context<'_>) -> bool {
        if self.stale {
            self.deadline = tokio::time::Instant::now() + self.idle;
            self.stale = false;
        }
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if timer.deadline() >= deadline {
                return true;
            }
            // Fired for a deadline that progress has since moved.
            timer.as_mut().reset(deadline);
        }
    }

    fn fail(&mut self, error: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.body = None;
        self.timer = None;
        let reason = error.reason();
        self.state.metrics.upstream_body_failed(reason);
        tracing::warn!(
            datasource = %self.state.name,
            reason,
            error = %chain(&error),
            "the upstream's response body failed; the app's response is cut short"
        );
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for UpstreamResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.stale = true;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.body = None;
                this.timer = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => this.fail(BodyError::Upstream(e)),
            Poll::Pending if this.idled_out(cx) => {
                let after = this.idle;
                this.fail(BodyError::IdleTimeout { after })
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
