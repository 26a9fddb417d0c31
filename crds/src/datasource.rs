//! The `ApiDatasource` custom resource: one upstream API, declared once.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::names;

/// An upstream API that pods reach through a sidekey sidecar on
/// `127.0.0.1`, which adds the credentials, default headers and query
/// parameters, a signature header, and trust in the upstream's certificate.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sidekey.dev",
    version = "v1alpha1",
    kind = "ApiDatasource",
    namespaced,
    shortname = "apids",
    doc = "An upstream API declared once; pods that name it get a sidecar on 127.0.0.1 that adds its credentials.",
    status = "ApiDatasourceStatus",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".spec.url","description":"Root URL of the upstream API"}"#,
    printcolumn = r#"{"name":"Auth","type":"string","jsonPath":".spec.authentication.type","description":"Authentication type"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status","description":"Whether the sidecar configuration is written"}"#,
    printcolumn = r#"{"name":"Authorized","type":"string","jsonPath":".status.conditions[?(@.type==\"Authorized\")].status","description":"grantType AuthorizationCode: whether the operator holds a refresh token","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ApiDatasourceSpec {
    /// Root URL of the upstream API, http or https. The path an app
    /// requests is appended to this URL's own path: `https://h/v2` plus
    /// `/charges` is `https://h/v2/charges`.
    #[schemars(url, regex(pattern = r"^https?://[^\s/?#]+([/?#]\S*)?$"))]
    pub url: String,

    /// Headers added to every request. A header the app sent itself keeps
    /// the app's value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<NameValue>,

    /// Query parameters added to every request, after the app's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_parameters: Vec<NameValue>,

    /// Sign every request with a short-lived HMAC JWT in a header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,

    /// How the upstream's (and token endpoint's) TLS certificate is
    /// verified. Verification is always on; this only adds trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,

    /// The credentials the sidecar adds to every request.
    #[serde(default)]
    pub authentication: Authentication,
}

/// A name and a value, for a header, a query parameter or a token request
/// parameter.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct NameValue {
    /// The name, sent as it is written.
    #[schemars(length(min = 1))]
    pub name: String,
    /// The value, sent as it is written.
    pub value: String,
}

/// A key of a Secret in the datasource's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub struct SecretRef {
    /// Name of the Secret, in the same namespace as the ApiDatasource.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// The signature header: an HMAC-signed JWT with `iss`, `iat` and `exp`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Signature {
    /// The signing key; at least 32 characters.
    pub secret_ref: SecretRef,
    /// Header carrying the JWT.
    #[serde(default = "default_signature_header")]
    #[schemars(length(min = 1))]
    pub header_name: String,
    /// The `iss` claim.
    #[serde(default = "default_signature_issuer")]
    pub issuer: String,
    /// Lifetime of each JWT: `exp` is `iat` plus this many seconds.
    #[serde(default = "default_signature_ttl")]
    #[schemars(range(min = 1, max = 86400))]
    pub ttl_seconds: u32,
    /// HMAC algorithm. Auto picks HS512 for keys of 64 bytes or more, HS384
    /// for 48 or more, else HS256, the rule existing senders follow.
    #[serde(default)]
    pub algorithm: SignatureAlgorithm,
}

/// HMAC algorithm of the signature JWT.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SignatureAlgorithm {
    /// Chosen from the key's length.
    #[default]
    Auto,
    /// HMAC with SHA-256.
    #[serde(rename = "HS256")]
    Hs256,
    /// HMAC with SHA-384.
    #[serde(rename = "HS384")]
    Hs384,
    /// HMAC with SHA-512.
    #[serde(rename = "HS512")]
    Hs512,
}

/// Trust for the upstream's certificate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tls {
    /// A PEM bundle of CA certificates (self-signed or a private CA) to
    /// trust; every certificate in it is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate_secret_ref: Option<SecretRef>,
    /// Also trust the standard public roots. Set false to trust only the
    /// bundle above.
    #[serde(default = "default_true")]
    pub trust_system_roots: bool,
}

impl Default for Tls {
    fn default() -> Self {
        Self {
            ca_certificate_secret_ref: None,
            trust_system_roots: true,
        }
    }
}

/// The credentials added to every request. Fill in the block that matches
/// `type`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Authentication {
    /// Which scheme: None, Basic, OAuth2, ApiKey or BearerToken.
    #[serde(default, rename = "type")]
    pub type_: AuthenticationType,
    /// For `type: Basic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuth>,
    /// For `type: OAuth2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2>,
    /// For `type: ApiKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKey>,
    /// For `type: BearerToken`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<BearerToken>,
}

/// Authentication scheme.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AuthenticationType {
    /// No credentials.
    #[default]
    None,
    /// HTTP Basic.
    Basic,
    /// OAuth 2.0 access tokens, renewed in the background.
    OAuth2,
    /// A static key in a header or query parameter.
    ApiKey,
    /// A static bearer token.
    BearerToken,
}

impl AuthenticationType {
    /// The spec field holding the Secret this type authenticates with.
    pub fn credential_field(self) -> Option<&'static str> {
        match self {
            Self::None => None,
            Self::Basic => Some("spec.authentication.basic.passwordSecretRef"),
            Self::OAuth2 => Some("spec.authentication.oauth2.clientSecretRef"),
            Self::ApiKey => Some("spec.authentication.apiKey.valueSecretRef"),
            Self::BearerToken => Some("spec.authentication.bearerToken.tokenSecretRef"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Basic => "Basic",
            Self::OAuth2 => "OAuth2",
            Self::ApiKey => "ApiKey",
            Self::BearerToken => "BearerToken",
        }
    }
}

/// HTTP Basic authentication: `Authorization: Basic base64(username:password)`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    /// The user name.
    pub username: String,
    /// The password.
    pub password_secret_ref: SecretRef,
}

/// A static API key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKey {
    /// Name of the header or query parameter carrying the key.
    #[schemars(length(min = 1))]
    pub key: String,
    /// The key's value.
    pub value_secret_ref: SecretRef,
    /// Written before the value with one space (`<prefix> <value>`), in
    /// headers only. Empty: the value alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Where the key goes: Header or QueryParameter.
    #[serde(default)]
    pub add_to: ApiKeyPlacement,
}

/// Where an API key goes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ApiKeyPlacement {
    /// A request header.
    #[default]
    Header,
    /// A query parameter.
    QueryParameter,
}

/// A static bearer token: `Authorization: Bearer <token>`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BearerToken {
    /// The token.
    pub token_secret_ref: SecretRef,
}

/// OAuth 2.0: the sidecar fetches access tokens and renews them in the
/// background, well before they expire.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2 {
    /// The grant used to obtain tokens: ClientCredentials or
    /// AuthorizationCode.
    #[serde(default)]
    pub grant_type: GrantType,
    /// The token endpoint.
    #[schemars(url, regex(pattern = r"^https?://[^\s/?#]+([/?#]\S*)?$"))]
    pub access_token_url: String,
    /// The client identifier.
    #[schemars(length(min = 1))]
    pub client_id: String,
    /// The client secret.
    pub client_secret_ref: SecretRef,
    /// Scopes requested, sent space-separated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// How the client authenticates to the token endpoint: Body puts
    /// `client_id` and `client_secret` in the form body, BasicHeader sends an
    /// RFC 6749 HTTP Basic header.
    #[serde(default)]
    pub client_authentication: ClientAuthentication,
    /// Where the access token goes on each request: Header
    /// (`Authorization: <headerPrefix> <token>`) or QueryParameter
    /// (`access_token=<token>`).
    #[serde(default)]
    pub add_token_to: TokenPlacement,
    /// Written before the token in the Authorization header.
    #[serde(default = "default_header_prefix")]
    pub header_prefix: String,
    /// The `audience` token request parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// The `resource` token request parameter (RFC 8707).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// More parameters sent with every token request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_parameters: Vec<NameValue>,
    /// The authorization endpoint users are sent to. AuthorizationCode only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(url)]
    pub authorization_url: Option<String>,
    /// Where the authorization server sends users back. AuthorizationCode only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(url)]
    pub redirect_url: Option<String>,
    /// Send the scopes again when refreshing a token.
    #[serde(default)]
    pub send_scope_on_refresh: bool,
    /// Lifetime assumed for a token whose response carries no `expires_in`.
    #[serde(default = "default_token_lifetime")]
    #[schemars(range(min = 1))]
    pub token_lifetime_seconds: u32,
}

/// OAuth 2.0 grant type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum GrantType {
    /// Machine-to-machine: the client's own credentials.
    #[default]
    ClientCredentials,
    /// A user authorizes once; the sidecar keeps refreshing.
    AuthorizationCode,
}

/// How the client authenticates to the token endpoint.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ClientAuthentication {
    /// `client_id` and `client_secret` in the form body.
    #[default]
    Body,
    /// RFC 6749 HTTP Basic header.
    BasicHeader,
}

/// Where the OAuth 2.0 access token goes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TokenPlacement {
    /// `Authorization: <headerPrefix> <token>`.
    #[default]
    Header,
    /// The `access_token` query parameter.
    QueryParameter,
}

/// What the operator observed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiDatasourceStatus {
    /// Standard conditions; `Ready` says whether the sidecar configuration
    /// is written, and if not, why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The ConfigMap holding the resolved spec the sidecar reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
    /// For `grantType: AuthorizationCode` while the datasource waits for a
    /// person to authorize it: the operator's link to open in a browser. It
    /// works once, within 15 minutes of being issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_url: Option<String>,
}

fn default_true() -> bool {
    true
}
fn default_signature_header() -> String {
    names::DEFAULT_SIGNATURE_HEADER.to_owned()
}
fn default_signature_issuer() -> String {
    names::DEFAULT_SIGNATURE_ISSUER.to_owned()
}
fn default_signature_ttl() -> u32 {
    names::DEFAULT_SIGNATURE_TTL_SECONDS
}
fn default_header_prefix() -> String {
    "Bearer".to_owned()
}
fn default_token_lifetime() -> u32 {
    names::DEFAULT_TOKEN_LIFETIME_SECONDS
}

/// The CRD to install. Use this, not `ApiDatasource::crd()`.
///
/// kube marks every `Option` field `nullable: true`. API servers publish
/// nullable fields to OpenAPI v2 without their type and properties, so
/// `kubectl explain` would show nothing below `signature`, `tls` or the
/// authentication blocks. sidekey never writes null (absent fields are
/// skipped), so the marks are dropped.
///
/// The schema also bounds `metadata.name` (the one metadata field a CRD
/// may restrict) to [`names::MAX_DATASOURCE_NAME_LEN`], so that a name too
/// long for the objects named after it is refused when it is created.
pub fn crd() -> CustomResourceDefinition {
    use kube::CustomResourceExt;
    fn strip_nullable(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                map.remove("nullable");
                map.values_mut().for_each(strip_nullable);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nullable),
            _ => {}
        }
    }
    let crd = ApiDatasource::crd();
    let mut value = serde_json::to_value(&crd).unwrap_or_else(|e| panic!("CRD to JSON: {e}"));
    strip_nullable(&mut value);
    for version in value["spec"]["versions"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        version["schema"]["openAPIV3Schema"]["properties"]["metadata"] = serde_json::json!({
            "type": "object",
            "properties": {
                "name": { "type": "string", "maxLength": names::MAX_DATASOURCE_NAME_LEN },
            },
        });
    }
    serde_json::from_value(value).unwrap_or_else(|e| panic!("CRD from JSON: {e}"))
}

/// The CRD as YAML, as checked in under `crds/`.
pub fn crd_yaml() -> String {
    // serde-saphyr cannot fail on a value that serde_json accepts.
    serde_saphyr::to_string(&crd()).unwrap_or_else(|e| panic!("CRD does not serialize: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn checked_in_crd_is_fresh() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/apidatasource.yaml");
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == super::crd_yaml(),
            "crds/apidatasource.yaml is stale; regenerate it with \
             `cargo run -p sidekey-crds --bin crdgen > crds/apidatasource.yaml`"
        );
    }
}
