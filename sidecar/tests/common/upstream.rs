//! A real HTTPS upstream that echoes what arrived as JSON: method, path,
//! query, headers and body length (counted while streaming, never kept).
//! `/status/<code>` answers that status, `/sleep/<ms>` answers late,
//! `/bytes/<n>` streams n bytes back. It refuses with 401 a bearer JWT whose
//! `exp` has passed and any Authorization value put in `revoked`.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::task::AbortOnDropHandle;

use super::pki::Pki;

#[derive(Default)]
pub struct UpstreamState {
    pub requests: AtomicU64,
    /// Requests refused with 401.
    pub refused: AtomicU64,
    /// Authorization header values to refuse.
    pub revoked: Mutex<HashSet<String>>,
    /// Every distinct Authorization value seen.
    pub authorizations: Mutex<HashSet<String>>,
}

pub struct Upstream {
    pub port: u16,
    pub state: Arc<UpstreamState>,
    /// Stops serving when dropped.
    _task: AbortOnDropHandle<()>,
}

/// What the upstream offers by ALPN.
#[derive(Clone, Copy, Debug)]
pub enum Protocol {
    /// HTTP/1.1 only: the sidecar's own connection pool serves it.
    Http1,
    /// HTTP/2 first: the sidecar moves to hyper-util's multiplexing client.
    Http2,
}

impl Upstream {
    /// An upstream speaking HTTP/1.1, as most REST APIs behind a load
    /// balancer do.
    pub async fn start(pki: &Pki) -> Self {
        Self::start_speaking(pki, Protocol::Http1).await
    }

    pub async fn start_speaking(pki: &Pki, protocol: Protocol) -> Self {
        let state = Arc::new(UpstreamState::default());
        let shared = state.clone();
        let mut config = pki.server_config();
        if let Protocol::Http1 = protocol {
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
        }
        let (port, task) = accept_tls_with(config, move |tls| {
            let state = shared.clone();
            async move {
                let service = service_fn(move |r| handle(state.clone(), r));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            }
        })
        .await;
        Self {
            port,
            state,
            _task: AbortOnDropHandle::new(task),
        }
    }

    /// From now on, answers 401 to requests carrying `authorization`.
    pub fn revoke(&self, authorization: &str) {
        self.state
            .revoked
            .lock()
            .expect("lock")
            .insert(authorization.to_owned());
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

/// Accepts TLS connections on 127.0.0.1, with the server certificate of
/// `pki`, and hands each to `serve`; stops when the task is aborted.
pub async fn accept_tls<F, Fut>(pki: &Pki, serve: F) -> (u16, tokio::task::JoinHandle<()>)
where
    F: Fn(TlsStream<TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    accept_tls_with(pki.server_config(), serve).await
}

/// [`accept_tls`] with a TLS configuration of the caller's.
pub async fn accept_tls_with<F, Fut>(
    config: rustls::ServerConfig,
    serve: F,
) -> (u16, tokio::task::JoinHandle<()>)
where
    F: Fn(TlsStream<TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let port = listener.local_addr().expect("addr").port();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let serve = Arc::new(serve);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let serve = serve.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    serve(tls).await;
                }
            });
        }
    });
    (port, task)
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("value"));
    r
}

/// Seconds since the epoch in a bearer JWT's `exp`, when it is one.
fn jwt_exp(authorization: &str) -> Option<u64> {
    let token = authorization.strip_prefix("Bearer ")?;
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims["exp"].as_u64()
}

async fn handle(
    state: Arc<UpstreamState>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let (parts, mut body) = request.into_parts();
    let mut body_len: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(data) = f.data_ref() {
                    body_len += data.len() as u64;
                }
            }
            Err(_) => return Ok(full(StatusCode::BAD_REQUEST, "{\"error\":\"body\"}".into())),
        }
    }
    let authorization = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(a) = &authorization {
        state.authorizations.lock().expect("lock").insert(a.clone());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let expired = jwt_exp(a).is_some_and(|exp| exp <= now);
        let revoked = state.revoked.lock().expect("lock").contains(a);
        if expired || revoked {
            state.refused.fetch_add(1, Ordering::SeqCst);
            let why = if expired { "expired" } else { "revoked" };
            return Ok(full(
                StatusCode::UNAUTHORIZED,
                format!("{{\"error\":\"{why}\"}}"),
            ));
        }
    }
    let path = parts.uri.path().to_owned();
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let chunks = n / chunk.len() as u64;
        let stream = futures::stream::iter(
            (0..chunks).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
        );
        return Ok(Response::new(StreamBody::new(stream).boxed()));
    }
    if let Some(ms) = path
        .strip_prefix("/sleep/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = path
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::OK);
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let echo = serde_json::json!({
        "method": parts.method.as_str(),
        "path": path,
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body_len,
    });
    Ok(full(status, echo.to_string()))
}
