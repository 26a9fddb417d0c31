//! The signature header, verified by hand with HMAC (hmac + sha2), not with
//! the JWT library the sidecar signs with.

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
    (
        alg,
        serde_json::from_slice(&decode(payload)).expect("claims"),
    )
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
    let response = client()
        .get(sidecar.url("/signed"))
        .header(header_name, "forged-by-the-app")
        .send()
        .await
        .expect("request");
    let echo: serde_json::Value = response.json().await.expect("echo");
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
