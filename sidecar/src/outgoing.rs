//! Builds the upstream request from the app's: the datasource URL's path
//! joined with the app's, the app's query followed by the datasource's
//! parameters, the app's headers less hop-by-hop ones and `Host`, and the
//! datasource's default headers where the app sent none of that name.
//! Everything per-datasource is computed once, in [`Target::new`].

use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Uri, Version, request};
use sidekey_crds::ResolvedDatasource;
use url::form_urlencoded;

use crate::error::{BoxError, ConfigError, RequestError};
use crate::hop_by_hop;
use crate::upstream::UpstreamBody;

/// Where requests go and what every request gets, precomputed.
pub struct Target {
    scheme: Scheme,
    authority: Authority,
    /// The URL's path without its trailing `/`: `/v2` for `https://h/v2/`.
    base_path: String,
    /// The URL's own query and the datasource's parameters, encoded.
    default_query: String,
    /// Default headers grouped by name, so that two values of one name
    /// are both added when the app sent neither.
    headers: Vec<(HeaderName, Vec<HeaderValue>)>,
}

impl Target {
    pub fn new(ds: &ResolvedDatasource) -> Result<Self, ConfigError> {
        let invalid = |source: BoxError| ConfigError::InvalidUrl {
            field: "url",
            source,
        };
        let url = url::Url::parse(&ds.url).map_err(|e| invalid(e.into()))?;
        let scheme = Scheme::try_from(url.scheme()).map_err(|e| invalid(e.into()))?;
        let host = url.host_str().ok_or_else(|| ConfigError::InvalidSetting {
            field: "url",
            reason: "the URL has no host".into(),
        })?;
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let authority = Authority::try_from(authority).map_err(|e| invalid(e.into()))?;
        let base_path = url.path().trim_end_matches('/').to_owned();

        let mut query = form_urlencoded::Serializer::new(url.query().unwrap_or("").to_owned());
        for p in &ds.query_parameters {
            query.append_pair(&p.name, &p.value);
        }
        let default_query = query.finish();

        let mut headers: Vec<(HeaderName, Vec<HeaderValue>)> = Vec::new();
        for h in &ds.headers {
            let bad = || ConfigError::InvalidHeaderValue {
                field: "headers",
                name: h.name.clone(),
            };
            let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad())?;
            let value = HeaderValue::from_str(&h.value).map_err(|_| bad())?;
            match headers.iter_mut().find(|(n, _)| *n == name) {
                Some((_, values)) => values.push(value),
                None => headers.push((name, vec![value])),
            }
        }
        Ok(Self {
            scheme,
            authority,
            base_path,
            default_query,
            headers,
        })
    }

    /// The upstream request for the app's request head.
    pub fn outgoing(&self, app: request::Parts) -> Outgoing {
        let app_path = app.uri.path();
        let app_path = if app_path.starts_with('/') {
            app_path
        } else {
            "/"
        };
        let mut path_and_query = String::with_capacity(
            self.base_path.len()
                + app_path.len()
                + app.uri.query().map_or(0, str::len)
                + self.default_query.len()
                + 2,
        );
        path_and_query.push_str(&self.base_path);
        path_and_query.push_str(app_path);
        let query_start = path_and_query.len();
        let queries = [app.uri.query().unwrap_or(""), &self.default_query];
        for q in queries.into_iter().filter(|q| !q.is_empty()) {
            path_and_query.push(if path_and_query.len() == query_start {
                '?'
            } else {
                '&'
            });
            path_and_query.push_str(q);
        }

        let mut headers = app.headers;
        hop_by_hop::strip(&mut headers);
        // The client writes Host (HTTP/1.1) or :authority (HTTP/2) from the URI.
        headers.remove(header::HOST);
        for (name, values) in &self.headers {
            if !headers.contains_key(name) {
                for v in values {
                    headers.append(name.clone(), v.clone());
                }
            }
        }
        Outgoing {
            method: app.method,
            scheme: self.scheme.clone(),
            authority: self.authority.clone(),
            path_and_query,
            query_start,
            headers,
        }
    }
}

/// An upstream request being prepared; credentials and the signature are
/// set on it before it is turned into a [`Request`].
pub struct Outgoing {
    pub method: Method,
    scheme: Scheme,
    authority: Authority,
    path_and_query: String,
    /// Where the path ends in `path_and_query`.
    query_start: usize,
    pub headers: HeaderMap,
}

impl Outgoing {
    /// Sets a header, replacing any value of that name the app sent.
    pub fn set_header(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.headers.insert(name.clone(), value.clone());
    }

    /// Sets a query parameter, dropping any of that name already present.
    /// `name` is decoded; `pair` is `name=value`, encoded.
    pub fn set_query_param(&mut self, name: &str, pair: &str) {
        let query = &self.path_and_query[self.query_start..];
        let query = query.strip_prefix('?').unwrap_or(query);
        let mut kept = String::with_capacity(query.len() + pair.len() + 1);
        for piece in query.split('&').filter(|p| !p.is_empty()) {
            let same = form_urlencoded::parse(piece.as_bytes())
                .next()
                .is_some_and(|(n, _)| n == name);
            if !same {
                kept.push_str(piece);
                kept.push('&');
            }
        }
        kept.push_str(pair);
        self.path_and_query.truncate(self.query_start);
        self.path_and_query.push('?');
        self.path_and_query.push_str(&kept);
    }

    /// The path and query as they will be sent (tests and debugging).
    pub fn path_and_query(&self) -> &str {
        &self.path_and_query
    }

    /// The request to send. `keep` leaves `self` intact for a retry, at
    /// the cost of copying the headers.
    pub fn request(
        &mut self,
        body: UpstreamBody,
        keep: bool,
    ) -> Result<Request<UpstreamBody>, RequestError> {
        let path_and_query = PathAndQuery::try_from(self.path_and_query.as_str()).map_err(|e| {
            RequestError::BadRequest {
                what: "the request path cannot be forwarded",
                source: e.into(),
            }
        })?;
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path_and_query);
        let uri = Uri::from_parts(parts).map_err(|e| RequestError::BadRequest {
            what: "the request URI cannot be built",
            source: e.into(),
        })?;
        let headers = if keep {
            self.headers.clone()
        } else {
            std::mem::take(&mut self.headers)
        };
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        // HTTP/1.1 here; the pool moves to HTTP/2 when ALPN picks it.
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str, extra: &str) -> Target {
        let yaml =
            format!("kind: ApiDatasource\nmetadata: {{name: t}}\nspec:\n  url: {url}\n{extra}");
        let ds = ResolvedDatasource::from_yaml(&yaml).expect("valid");
        Target::new(&ds).expect("target")
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut b = Request::builder().uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    #[test]
    fn path_is_appended_to_the_url_path() {
        let t = target("https://h/v2", "");
        let o = t.outgoing(parts("/charges/7?x=1", &[]));
        assert_eq!(o.path_and_query(), "/v2/charges/7?x=1");
    }

    #[test]
    fn trailing_slash_of_the_url_is_not_doubled() {
        let t = target("https://h/v2/", "");
        assert_eq!(t.outgoing(parts("/a", &[])).path_and_query(), "/v2/a");
        let root = target("https://h", "");
        assert_eq!(root.outgoing(parts("/a", &[])).path_and_query(), "/a");
    }

    #[test]
    fn default_query_follows_the_apps_own() {
        let t = target(
            "https://h/v2?fixed=1",
            "  queryParameters: [ {name: region, value: eu west} ]\n",
        );
        let o = t.outgoing(parts("/a?x=1", &[]));
        assert_eq!(o.path_and_query(), "/v2/a?x=1&fixed=1&region=eu+west");
        let o = t.outgoing(parts("/a", &[]));
        assert_eq!(o.path_and_query(), "/v2/a?fixed=1&region=eu+west");
    }

    #[test]
    fn query_credential_replaces_the_apps_parameter_of_that_name() {
        let t = target("https://h", "");
        let mut o = t.outgoing(parts("/a?api_key=mine&b=2&api%5Fkey=x", &[]));
        o.set_query_param("api_key", "api_key=real");
        assert_eq!(o.path_and_query(), "/a?b=2&api_key=real");
        let mut o = t.outgoing(parts("/a", &[]));
        o.set_query_param("k", "k=v");
        assert_eq!(o.path_and_query(), "/a?k=v");
    }

    #[test]
    fn default_header_yields_to_the_apps_value() {
        let t = target(
            "https://h",
            "  headers: [ {name: X-Tenant, value: acme}, {name: X-Env, value: prod}, {name: X-Env, value: eu} ]\n",
        );
        let o = t.outgoing(parts(
            "/",
            &[("x-tenant", "app"), ("host", "127.0.0.1:15000")],
        ));
        assert_eq!(o.headers["x-tenant"], "app");
        let envs: Vec<_> = o.headers.get_all("x-env").iter().collect();
        assert_eq!(envs, ["prod", "eu"]);
        assert!(!o.headers.contains_key("host"));
    }

    #[test]
    fn request_carries_the_upstream_uri() {
        let t = target("https://api.example:8443/v2", "");
        let mut o = t.outgoing(parts("/a?b=1", &[]));
        let r = o
            .request(http_body_util::Either::Left(Default::default()), false)
            .expect("request");
        assert_eq!(r.uri(), "https://api.example:8443/v2/a?b=1");
    }
}
