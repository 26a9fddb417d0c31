//! Hop-by-hop headers (RFC 9110 section 7.6.1) describe one connection and
//! must not be forwarded, in either direction.

use http::HeaderMap;
use http::header::{self, HeaderName};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

const ALWAYS: [HeaderName; 10] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    // hyper already answered the app's `Expect: 100-continue`.
    header::EXPECT,
    KEEP_ALIVE,
    PROXY_CONNECTION,
];

/// Removes the standard hop-by-hop headers and those the `Connection`
/// header names.
pub fn strip(headers: &mut HeaderMap) {
    // One pass over the few headers present instead of a lookup per
    // hop-by-hop name: most requests carry none of them. A header named by
    // `Connection` implies `Connection` itself, which is in `ALWAYS`.
    if !headers.keys().any(|name| ALWAYS.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in ALWAYS {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_and_standard_headers_go_others_stay() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, X-Secret-Hop".parse().expect("v"));
        h.insert("x-secret-hop", "1".parse().expect("v"));
        h.insert("keep-alive", "timeout=5".parse().expect("v"));
        h.insert("transfer-encoding", "chunked".parse().expect("v"));
        h.insert("x-kept", "yes".parse().expect("v"));
        strip(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn lone_keep_alive_and_proxy_connection_go() {
        let mut h = HeaderMap::new();
        h.insert("keep-alive", "timeout=5".parse().expect("v"));
        h.insert("proxy-connection", "close".parse().expect("v"));
        h.insert("x-kept", "yes".parse().expect("v"));
        strip(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }
}
