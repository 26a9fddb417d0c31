//! The random values of an authorization: the link's nonce and the
//! `state` sent to the provider. Only their SHA-256 is stored; the values
//! travel in URLs alone.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// How long an authorization link, and then the authorization it starts,
/// may be used.
pub const LIFETIME: Duration = Duration::from_secs(15 * 60);

/// 256 random bits, base64url.
pub fn random() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// The hash kept in place of `value`.
pub fn sha256(value: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(value.as_bytes()))
}

/// A fresh `state` for datasource `namespace/name`: the callback learns
/// from it which datasource's pending authorization to check it against.
pub fn new_state(namespace: &str, name: &str) -> String {
    let who = URL_SAFE_NO_PAD.encode(format!("{namespace}/{name}"));
    format!("{who}.{}", random())
}

/// The datasource a `state` names; `None` for anything not made by
/// [`new_state`].
pub fn state_datasource(state: &str) -> Option<(String, String)> {
    let (who, _) = state.split_once('.')?;
    let who = String::from_utf8(URL_SAFE_NO_PAD.decode(who).ok()?).ok()?;
    let (namespace, name) = who.split_once('/')?;
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    (label(namespace) && label(name)).then(|| (namespace.to_owned(), name.to_owned()))
}

/// Constant-time comparison of two hashes.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_its_datasource_and_is_unpredictable() {
        let a = new_state("shop", "payments");
        let b = new_state("shop", "payments");
        assert_ne!(a, b);
        assert_eq!(
            state_datasource(&a),
            Some(("shop".into(), "payments".into()))
        );
    }

    #[test]
    fn foreign_states_name_nothing() {
        for s in ["", "x", "!!.y", "c2hvcA.y", "U0hPUC9QQVk.y"] {
            assert_eq!(state_datasource(s), None, "{s}");
        }
    }

    #[test]
    fn hashes_compare() {
        let h = sha256("nonce");
        assert!(same(&h, &sha256("nonce")));
        assert!(!same(&h, &sha256("other")));
        assert!(!same(&h, ""));
    }
}
