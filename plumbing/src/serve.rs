//! Accepts connections and serves HTTP/1.1 and HTTP/2 (prior knowledge,
//! h2c) on them until told to stop; then lets in-flight requests finish.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::coarse_timer::CoarseTimer;

/// The largest request head served, the same on both protocols: for
/// HTTP/1.1 the read buffer the head must fit in (hyper's default is about
/// 408 KiB), for HTTP/2 the header list size (`SETTINGS_MAX_HEADER_LIST_SIZE`,
/// names and values plus 32 bytes a field; hyper's default is 16 KiB). A
/// larger head is answered 431 (HTTP/2: on its stream; a list over four
/// times this ends the connection, the h2 crate's abuse limit).
///
/// 64 KiB, as Envoy's 60 KiB and above nginx's 4 × 8 KiB: a proxy in front
/// of many APIs should pass the large cookies and tokens some carry. It
/// is also four times hyper's HTTP/2 default, the point where an HTTP/2
/// server on hyper's defaults ends the whole connection instead of
/// answering 431 on the stream: a proxy that keeps what it sends within
/// this never makes such an upstream drop a shared connection.
///
/// For HTTP/1.1 the same buffer bounds a body read (at most 64 KiB a read
/// instead of 408 KiB; hyper grows it only while reads fill it) and the
/// response bytes queued before a write: plenty for loopback, and a
/// smaller worst case per connection.
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// How long a request head may take from its first byte, and how long a
/// keep-alive connection may wait for the next request (HTTP/1.1): 30 s,
/// to the next second.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds `addr`: the listener and the address it got (the port, when
/// `addr` asked for port 0).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}

/// Serves `listener` with `handler` until `shutdown` completes, then gives
/// in-flight requests `grace` to finish. `name` says which server a log
/// line is about (the `server` field), `datasource` which datasource it
/// serves, if one.
pub async fn serve<F, Fut, B>(
    name: &'static str,
    datasource: Option<Arc<str>>,
    listener: TcpListener,
    handler: F,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // hyper arms the header-read timeout for every request, and holds
        // it while a keep-alive connection waits for the next one, so it
        // also closes a connection idle for that long. Coarse: one tick a
        // second instead of a tokio timer entry per request (measured).
        .timer(CoarseTimer::new(Duration::from_secs(1)))
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD)
        // One buffer per response: a small head and body cost one copy,
        // cheaper than the kernel walking two iovecs (measured).
        .writev(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        // A constant far below u32::MAX.
        .max_header_list_size(MAX_REQUEST_HEAD as u32);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, _peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: pause, keep serving.
                tracing::warn!(server = name, datasource = datasource.as_deref(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let connection = builder
            .serve_connection(TokioIo::new(stream), service_fn(handler))
            .into_owned();
        let connection = graceful.watch(connection);
        let datasource = datasource.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(
                    server = name,
                    datasource = datasource.as_deref(),
                    error = %e,
                    "connection ended with an error"
                );
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            server = name,
            datasource = datasource.as_deref(),
            "in-flight requests did not finish within the grace period"
        );
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    use super::*;

    #[tokio::test]
    async fn answers_until_shutdown_then_stops_accepting() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            "test",
            None,
            listener,
            |_request| async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hi")))) },
            async {
                let _ = stopped.await;
            },
            Duration::from_secs(5),
        ));

        // HTTP/1.0 without keep-alive: the server closes after the answer.
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET / HTTP/1.0\r\n\r\n")
            .await
            .expect("write");
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.expect("read");
        assert!(raw.starts_with("HTTP/1.0 200 OK\r\n"), "{raw}");
        assert!(raw.ends_with("\r\n\r\nhi"), "{raw}");

        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("stops within the grace period")
            .expect("no panic");
        assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    }
}
