//! The floor for a proxy built on hyper: the least code that does the
//! sidecar's job in the benchmark (add `Authorization: Bearer <token>`,
//! forward to an HTTPS upstream with a pooled client, stream the answer
//! back), on one single-threaded runtime, with the same libraries and
//! settings as the sidecar's worker threads. bench/run.sh measures it in
//! its `minimal1` row, so that the sidecar's own layers show as the
//! difference between the two rows. Not for use: no timeouts, no checks.
//!
//! ```sh
//! minimal_proxy 127.0.0.1:PORT https://127.0.0.1:UP/bearer ca.crt TOKEN
//! ```

use std::convert::Infallible;
use std::sync::Arc;

use http::header::{AUTHORIZATION, HOST};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

mod common;

use common::Failed;

fn main() -> Result<(), Failed> {
    let (listen, upstream, tls, token) = common::args("minimal_proxy")?;
    let base = upstream.path().trim_end_matches('/').to_owned();
    let bearer = HeaderValue::try_from(format!("Bearer {token}"))?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            http.set_nodelay(true);
            let connector = HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .wrap_connector(http);
            let client = Client::builder(TokioExecutor::new()).build(connector);
            let target = Arc::new((upstream, base, bearer));
            let listener = tokio::net::TcpListener::bind(listen.as_str()).await?;
            let mut server = auto::Builder::new(TokioExecutor::new());
            server.http1().writev(false);
            loop {
                let (stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                let (client, target) = (client.clone(), target.clone());
                let service = service_fn(move |request: Request<Incoming>| {
                    let (client, target) = (client.clone(), target.clone());
                    async move {
                        let (upstream, base, bearer) = &*target;
                        let (mut parts, body) = request.into_parts();
                        let path = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
                        let mut uri = upstream.clone().into_parts();
                        uri.path_and_query = PathAndQuery::try_from(format!("{base}{path}")).ok();
                        parts.uri = Uri::from_parts(uri).unwrap_or_default();
                        parts.headers.remove(HOST);
                        parts.headers.insert(AUTHORIZATION, bearer.clone());
                        let answer = match client.request(Request::from_parts(parts, body)).await {
                            Ok(response) => response.map(Either::Left),
                            Err(_) => {
                                let mut failed = Response::new(Either::Right(Empty::new()));
                                *failed.status_mut() = StatusCode::BAD_GATEWAY;
                                failed
                            }
                        };
                        Ok::<_, Infallible>(answer)
                    }
                });
                let connection = server
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                tokio::spawn(connection);
            }
        })
}
