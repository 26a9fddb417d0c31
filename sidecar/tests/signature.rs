//! The signature header, verified twice, never with the JWT library the
//! sidecar signs with: by hand with HMAC (hmac + sha2), and with `jose`, an
//! independent JWT library (tests/oauth-server/verify-jwt.mjs).

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use hmac::{Hmac, Mac};

/// Checks the JWT's HMAC with `key` and returns (alg, claims).
fn verify(jwt: &str, key: &[u8]) -> (String, serde_json::Value) {
    let mut parts = jwt.split('.');
    let (header, payload, signature) = (
        parts.next().expect("header"),
        parts.next().expect("payload"),
        parts.next().expect("signature"),
    );
    assert!(parts.next().is_none(), "three parts: {jwt}");
    let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).expect("base64url");
    let head: serde_json::Value = serde_json::from_slice(&decode(header)).expect("header json");
    let alg = head["alg"].as_str().expect("alg").to_owned();
    let signed = format!("{header}.{payload}");
    let expected = match alg.as_str() {
        "HS256" => mac::<Hmac<sha2::Sha256>>(key, &signed),
        "HS384" => mac::<Hmac<sha2::Sha384>>(key, &signed),
        "HS512" => mac::<Hmac<sha2::Sha512>>(key, &signed),
        other => panic!("unexpected alg {other}"),
    };
    assert_eq!(decode(signature), expected, "HMAC does not verify");
    let claims: serde_json::Value = serde_json::from_slice(&decode(payload)).expect("claims");
    let verified = verify_with_jose(jwt, key, &alg).unwrap_or_else(|e| panic!("jose: {e}"));
    assert_eq!(verified["payload"], claims, "jose reads other claims");
    (alg, claims)
}

/// Verifies `jwt` with the `jose` library, accepting only `alg`; returns
/// `{header, payload}` or jose's reason for refusing it.
fn verify_with_jose(jwt: &str, key: &[u8], alg: &str) -> Result<serde_json::Value, String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/oauth-server");
    assert!(
        dir.join("node_modules/jose").is_dir(),
        "jose is not installed: run `npm ci --prefix tests/oauth-server` from the repository root"
    );
    let mut child = Command::new("node")
        .arg(dir.join("verify-jwt.mjs"))
        .arg(alg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    let input = serde_json::json!({ "jwt": jwt, "key": String::from_utf8_lossy(key) });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.to_string().as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("node finishes");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("json"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn jose_refuses_a_token_signed_with_another_key_or_algorithm() {
    // The independent check can fail: a token of another key or algorithm.
    let token = |alg: jsonwebtoken::Algorithm, key: &[u8]| {
        let claims = serde_json::json!({ "iss": "Appsmith", "iat": now(), "exp": now() + 60 });
        let key = jsonwebtoken::EncodingKey::from_secret(key).expect("key");
        jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, &key).expect("encode")
    };
    let key = "k".repeat(32);
    let good = token(jsonwebtoken::Algorithm::HS256, key.as_bytes());
    assert!(verify_with_jose(&good, key.as_bytes(), "HS256").is_ok());
    let other_key = token(jsonwebtoken::Algorithm::HS256, "x".repeat(32).as_bytes());
    assert!(verify_with_jose(&other_key, key.as_bytes(), "HS256").is_err());
    let other_alg = token(jsonwebtoken::Algorithm::HS384, key.as_bytes());
    assert!(verify_with_jose(&other_alg, key.as_bytes(), "HS256").is_err());
}

fn mac<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &str) -> Vec<u8> {
    let mut m = <M as Mac>::new_from_slice(key).expect("key");
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// Runs a sidecar with a signing key of `key` and `settings` (extra lines
/// under `signature:`), sends one request, and returns the header's JWT.
async fn signed_request(key: &str, settings: &str, header_name: &str) -> String {
    let pki = Pki::new("upstream");
    let upstream = Upstream::start(&pki).await;
    let ws = workspace(&pki);
    ws.write_secret("signing", "key", key);
    ws.write_datasource(&manifest(
        &upstream.url(),
        &format!("  signature:\n    secretRef: {{ name: signing, key: key }}\n{settings}"),
    ));
    let sidecar = sidecar::start(&ws);
    let echo = get_echo_with(&sidecar, "/signed", &[(header_name, "forged-by-the-app")]).await;
    header(&echo, &header_name.to_ascii_lowercase())
        .expect("signature header")
        .to_owned()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_signature_is_hs256_for_a_32_character_key_with_default_claims() {
    let key = "k".repeat(32);
    let jwt = signed_request(&key, "", "X-APPSMITH-SIGNATURE").await;
    let (alg, claims) = verify(&jwt, key.as_bytes());
    assert_eq!(alg, "HS256");
    assert_eq!(claims["iss"], "Appsmith");
    let iat = claims["iat"].as_u64().expect("iat");
    assert!(iat.abs_diff(now()) <= 5, "iat {iat}");
    assert_eq!(claims["exp"].as_u64(), Some(iat + 600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_uses_hs384_for_a_48_byte_key() {
    let key = "a".repeat(48);
    let jwt = signed_request(&key, "", "X-APPSMITH-SIGNATURE").await;
    assert_eq!(verify(&jwt, key.as_bytes()).0, "HS384");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_uses_hs512_for_a_64_byte_key() {
    let key = "b".repeat(64);
    let jwt = signed_request(&key, "", "X-APPSMITH-SIGNATURE").await;
    assert_eq!(verify(&jwt, key.as_bytes()).0, "HS512");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_hs256_with_a_long_key() {
    let key = "c".repeat(70);
    let jwt = signed_request(&key, "    algorithm: HS256\n", "X-APPSMITH-SIGNATURE").await;
    assert_eq!(verify(&jwt, key.as_bytes()).0, "HS256");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_hs384() {
    let key = "d".repeat(32);
    let jwt = signed_request(&key, "    algorithm: HS384\n", "X-APPSMITH-SIGNATURE").await;
    assert_eq!(verify(&jwt, key.as_bytes()).0, "HS384");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_hs512_with_custom_header_issuer_and_ttl() {
    let key = "e".repeat(40);
    let jwt = signed_request(
        &key,
        "    algorithm: HS512\n    headerName: X-Signature\n    issuer: shop\n    ttlSeconds: 60\n",
        "X-Signature",
    )
    .await;
    let (alg, claims) = verify(&jwt, key.as_bytes());
    assert_eq!(alg, "HS512");
    assert_eq!(claims["iss"], "shop");
    let iat = claims["iat"].as_u64().expect("iat");
    assert_eq!(claims["exp"].as_u64(), Some(iat + 60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_shorter_than_32_characters_stops_the_sidecar_with_a_clear_error() {
    let pki = Pki::new("upstream");
    let ws = workspace(&pki);
    let key = "short-signing-key-of-31-chars-x";
    assert_eq!(key.len(), 31);
    ws.write_secret("signing", "key", key);
    ws.write_datasource(&manifest(
        "https://127.0.0.1:9",
        "  signature:\n    secretRef: { name: signing, key: key }\n",
    ));
    let failure = sidecar::try_start(&ws, &[]).err().expect("must not start");
    assert!(failure.status.is_some_and(|s| !s.success()), "{failure:?}");
    assert!(
        failure
            .output
            .contains("is 31 characters long; at least 32 are needed"),
        "{}",
        failure.output
    );
    assert!(failure.output.contains("signing"), "{}", failure.output);
    assert!(
        !failure.output.contains(key),
        "the key leaked: {}",
        failure.output
    );
}
