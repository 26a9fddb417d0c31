//! The resolved spec: what the operator writes into the ConfigMap and the
//! sidecar reads. Every default is filled in, only the block of the chosen
//! authentication type is kept, and each secret reference carries the file
//! path (relative to the secrets directory) where the sidecar finds it.
//! Secret values never appear here.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::datasource::*;
use crate::names;

/// A datasource with every default filled in, ready for the sidecar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedDatasource {
    /// Always `sidekey.dev/v1alpha1`.
    pub api_version: String,
    /// Always `ResolvedApiDatasource`.
    pub kind: String,
    /// Name of the ApiDatasource.
    pub name: String,
    /// Namespace of the ApiDatasource, when it came from a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub url: String,
    #[serde(default)]
    pub headers: Vec<NameValue>,
    #[serde(default)]
    pub query_parameters: Vec<NameValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<ResolvedSignature>,
    pub tls: ResolvedTls,
    pub authentication: ResolvedAuthentication,
}

/// The keys of the Secret `<datasource>-sidekey-oauth`, which the
/// operator writes for the authorization-code grant. In a cluster the
/// operator alone refreshes: the webhook mounts only the access token and
/// its expiry, never the refresh token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuthTokenFiles {
    pub access_token: SecretFile,
    /// RFC 3339.
    pub expires_at: SecretFile,
    pub refresh_token: SecretFile,
}

impl OAuthTokenFiles {
    /// What the webhook mounts into a sidecar.
    pub fn mounted(&self) -> [&SecretFile; 2] {
        [&self.access_token, &self.expires_at]
    }
}

/// A secret reference and where the sidecar reads it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct SecretFile {
    /// Name of the Secret.
    pub secret: String,
    /// Key within the Secret.
    pub key: String,
    /// `<secret>/<key>`, relative to the sidecar's secrets directory.
    pub path: String,
}

impl From<&SecretRef> for SecretFile {
    fn from(r: &SecretRef) -> Self {
        Self {
            secret: r.name.clone(),
            key: r.key.clone(),
            path: names::secret_file_path(&r.name, &r.key),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedSignature {
    pub secret: SecretFile,
    pub header_name: String,
    pub issuer: String,
    pub ttl_seconds: u32,
    pub algorithm: SignatureAlgorithm,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedTls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<SecretFile>,
    pub trust_system_roots: bool,
}

/// The one authentication scheme in force, with its settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum ResolvedAuthentication {
    None,
    Basic {
        username: String,
        password: SecretFile,
    },
    ApiKey {
        key: String,
        value: SecretFile,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix: Option<String>,
        add_to: ApiKeyPlacement,
    },
    BearerToken {
        token: SecretFile,
    },
    OAuth2(ResolvedOAuth2),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedOAuth2 {
    pub grant_type: GrantType,
    pub access_token_url: String,
    pub client_id: String,
    pub client_secret: SecretFile,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub client_authentication: ClientAuthentication,
    pub add_token_to: TokenPlacement,
    pub header_prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default)]
    pub custom_parameters: Vec<NameValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_url: Option<String>,
    pub send_scope_on_refresh: bool,
    pub token_lifetime_seconds: u32,
}

/// What is wrong with a spec, before any Secret is read.
#[derive(Debug, Error, PartialEq)]
pub enum SpecError {
    #[error("{field} {url:?} is not a valid URL: {reason}")]
    InvalidUrl {
        field: &'static str,
        url: String,
        reason: String,
    },
    #[error("{0}")]
    InvalidAuthentication(String),
    #[error("{field} {name:?} is not a valid HTTP header name")]
    InvalidHeaderName { field: &'static str, name: String },
    #[error(
        "{field} of header {name:?} cannot be sent in an HTTP header: it holds a control \
         character (only tab is allowed; a YAML block scalar adds a newline: use `|-`)"
    )]
    InvalidHeaderValue { field: &'static str, name: String },
    #[error("not a datasource file: {0}")]
    InvalidFile(String),
}

impl SpecError {
    /// The status reason (CamelCase) a user sees for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidUrl { .. } => "InvalidUrl",
            Self::InvalidAuthentication(_) => "InvalidAuthentication",
            Self::InvalidHeaderName { .. } | Self::InvalidHeaderValue { .. } => "InvalidHeader",
            Self::InvalidFile(_) => "InvalidFile",
        }
    }
}

impl ApiDatasource {
    /// The resolved spec of this object.
    pub fn resolve(&self) -> Result<ResolvedDatasource, SpecError> {
        let name = self.metadata.name.clone().unwrap_or_default();
        self.spec.resolve(&name, self.metadata.namespace.as_deref())
    }
}

impl ApiDatasourceSpec {
    /// Checks what the schema cannot and fills in every default.
    pub fn resolve(
        &self,
        name: &str,
        namespace: Option<&str>,
    ) -> Result<ResolvedDatasource, SpecError> {
        check_url("spec.url", &self.url)?;
        for h in &self.headers {
            check_header_name("spec.headers", &h.name)?;
            check_header_value("spec.headers value", &h.name, &h.value)?;
        }
        let signature = match &self.signature {
            Some(s) => {
                check_header_name("spec.signature.headerName", &s.header_name)?;
                Some(ResolvedSignature {
                    secret: (&s.secret_ref).into(),
                    header_name: s.header_name.clone(),
                    issuer: s.issuer.clone(),
                    ttl_seconds: s.ttl_seconds,
                    algorithm: s.algorithm,
                })
            }
            None => None,
        };
        let tls = self.tls.clone().unwrap_or_default();
        Ok(ResolvedDatasource {
            api_version: names::API_VERSION.to_owned(),
            kind: names::RESOLVED_KIND.to_owned(),
            name: name.to_owned(),
            namespace: namespace.map(str::to_owned),
            url: self.url.clone(),
            headers: self.headers.clone(),
            query_parameters: self.query_parameters.clone(),
            signature,
            tls: ResolvedTls {
                ca_certificate: tls.ca_certificate_secret_ref.as_ref().map(Into::into),
                trust_system_roots: tls.trust_system_roots,
            },
            authentication: self.authentication.resolve()?,
        })
    }
}

impl Authentication {
    fn resolve(&self) -> Result<ResolvedAuthentication, SpecError> {
        let t = self.type_;
        // A block for another type is a mistake worth naming, not ignoring.
        let blocks = [
            ("basic", AuthenticationType::Basic, self.basic.is_some()),
            ("oauth2", AuthenticationType::OAuth2, self.oauth2.is_some()),
            ("apiKey", AuthenticationType::ApiKey, self.api_key.is_some()),
            (
                "bearerToken",
                AuthenticationType::BearerToken,
                self.bearer_token.is_some(),
            ),
        ];
        for (field, owner, present) in blocks {
            if present && owner != t {
                return Err(SpecError::InvalidAuthentication(format!(
                    "spec.authentication.type is {} but spec.authentication.{field} is set: \
                     remove it or set type to {}",
                    t.as_str(),
                    owner.as_str()
                )));
            }
        }
        let missing = |field: &str| {
            SpecError::InvalidAuthentication(format!(
                "spec.authentication.type is {} but spec.authentication.{field} is missing",
                t.as_str()
            ))
        };
        Ok(match t {
            AuthenticationType::None => ResolvedAuthentication::None,
            AuthenticationType::Basic => {
                let b = self.basic.as_ref().ok_or_else(|| missing("basic"))?;
                ResolvedAuthentication::Basic {
                    username: b.username.clone(),
                    password: (&b.password_secret_ref).into(),
                }
            }
            AuthenticationType::ApiKey => {
                let k = self.api_key.as_ref().ok_or_else(|| missing("apiKey"))?;
                if k.add_to == ApiKeyPlacement::Header {
                    check_header_name("spec.authentication.apiKey.key", &k.key)?;
                    if let Some(prefix) = &k.prefix {
                        check_header_value("spec.authentication.apiKey.prefix", &k.key, prefix)?;
                    }
                }
                ResolvedAuthentication::ApiKey {
                    key: k.key.clone(),
                    value: (&k.value_secret_ref).into(),
                    prefix: k.prefix.clone().filter(|p| !p.is_empty()),
                    add_to: k.add_to,
                }
            }
            AuthenticationType::BearerToken => {
                let b = self
                    .bearer_token
                    .as_ref()
                    .ok_or_else(|| missing("bearerToken"))?;
                ResolvedAuthentication::BearerToken {
                    token: (&b.token_secret_ref).into(),
                }
            }
            AuthenticationType::OAuth2 => {
                let o = self.oauth2.as_ref().ok_or_else(|| missing("oauth2"))?;
                check_url(
                    "spec.authentication.oauth2.accessTokenUrl",
                    &o.access_token_url,
                )?;
                if o.add_token_to == TokenPlacement::Header {
                    check_header_value(
                        "spec.authentication.oauth2.headerPrefix",
                        "Authorization",
                        &o.header_prefix,
                    )?;
                }
                if o.grant_type == GrantType::AuthorizationCode {
                    for (field, value) in [
                        ("authorizationUrl", &o.authorization_url),
                        ("redirectUrl", &o.redirect_url),
                    ] {
                        let value = value.as_deref().ok_or_else(|| {
                            SpecError::InvalidAuthentication(format!(
                                "grantType AuthorizationCode needs \
                                 spec.authentication.oauth2.{field}"
                            ))
                        })?;
                        check_url("spec.authentication.oauth2 URL", value)?;
                    }
                }
                ResolvedAuthentication::OAuth2(ResolvedOAuth2 {
                    grant_type: o.grant_type,
                    access_token_url: o.access_token_url.clone(),
                    client_id: o.client_id.clone(),
                    client_secret: (&o.client_secret_ref).into(),
                    scopes: o.scopes.clone(),
                    client_authentication: o.client_authentication,
                    add_token_to: o.add_token_to,
                    header_prefix: o.header_prefix.clone(),
                    audience: o.audience.clone(),
                    resource: o.resource.clone(),
                    custom_parameters: o.custom_parameters.clone(),
                    authorization_url: o.authorization_url.clone(),
                    redirect_url: o.redirect_url.clone(),
                    send_scope_on_refresh: o.send_scope_on_refresh,
                    token_lifetime_seconds: o.token_lifetime_seconds,
                })
            }
        })
    }
}

/// The spec fields of the signature key and the CA bundle.
const SIGNATURE_FIELD: &str = "spec.signature.secretRef";
const CA_FIELD: &str = "spec.tls.caCertificateSecretRef";

/// What a referenced secret value is for; it decides what is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretPurpose {
    /// A password, key, token or client secret: it must exist.
    Credential,
    /// The HMAC key of the signature header: at least 32 characters.
    SignatureKey,
    /// A PEM bundle of CA certificates: at least one parsable certificate.
    CaBundle,
}

/// One secret a datasource reads: the spec field that names it (for
/// messages that say what to fix), where it is, and what for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretUse<'a> {
    pub field: &'static str,
    pub file: &'a SecretFile,
    pub purpose: SecretPurpose,
}

impl ResolvedAuthentication {
    /// The secret the scheme is built from, with the field naming it: the
    /// one place that knows which secret each authentication type uses.
    pub fn credential(&self) -> Option<(&'static str, &SecretFile)> {
        let file = match self {
            Self::None => return None,
            Self::Basic { password, .. } => password,
            Self::ApiKey { value, .. } => value,
            Self::BearerToken { token } => token,
            Self::OAuth2(o) => &o.client_secret,
        };
        Some((self.type_().credential_field()?, file))
    }

    /// Whether `value` (read as the sidecar reads it, a trailing newline
    /// removed) can be this scheme's credential. The rules are the
    /// sidecar's, which would otherwise refuse it only at start, in the
    /// pod: the password of Basic is any bytes (it is base64-encoded);
    /// the others are non-empty UTF-8 text, with no control character
    /// (but tab) where they go into a header. Every value is at most
    /// [`names::MAX_CREDENTIAL_LEN`] bytes. The refusal never quotes the
    /// value.
    pub fn check_credential(&self, value: &crate::SecretValue) -> Result<(), String> {
        let len = value.len();
        if len > names::MAX_CREDENTIAL_LEN {
            return Err(format!(
                "it is {len} bytes long, over the {} a credential may have",
                names::MAX_CREDENTIAL_LEN
            ));
        }
        let in_header = match self {
            Self::None | Self::Basic { .. } => return Ok(()),
            Self::ApiKey { add_to, .. } => *add_to == ApiKeyPlacement::Header,
            Self::BearerToken { .. } => true,
            Self::OAuth2(_) => false,
        };
        let Some(text) = value.expose_str() else {
            return Err("it is not UTF-8 text".into());
        };
        if text.is_empty() {
            return Err("it is empty".into());
        }
        if in_header && let Some(at) = text.bytes().position(|b| !is_field_value_byte(b)) {
            return Err(format!(
                "byte {} is a control character, which an HTTP header cannot carry",
                at + 1
            ));
        }
        Ok(())
    }

    /// The type, as `spec.authentication.type` names it.
    pub fn type_(&self) -> AuthenticationType {
        match self {
            Self::None => AuthenticationType::None,
            Self::Basic { .. } => AuthenticationType::Basic,
            Self::ApiKey { .. } => AuthenticationType::ApiKey,
            Self::BearerToken { .. } => AuthenticationType::BearerToken,
            Self::OAuth2(_) => AuthenticationType::OAuth2,
        }
    }
}

impl ApiDatasourceSpec {
    /// Every Secret reference the spec holds, with its field, in every
    /// authentication block present whatever the type, valid or not: a
    /// datasource waiting for a Secret must be woken when it appears.
    pub fn secret_refs(&self) -> Vec<(&'static str, &SecretRef)> {
        let a = &self.authentication;
        let credentials = [
            (
                AuthenticationType::Basic,
                a.basic.as_ref().map(|b| &b.password_secret_ref),
            ),
            (
                AuthenticationType::OAuth2,
                a.oauth2.as_ref().map(|o| &o.client_secret_ref),
            ),
            (
                AuthenticationType::ApiKey,
                a.api_key.as_ref().map(|k| &k.value_secret_ref),
            ),
            (
                AuthenticationType::BearerToken,
                a.bearer_token.as_ref().map(|b| &b.token_secret_ref),
            ),
        ];
        let others = [
            (
                SIGNATURE_FIELD,
                self.signature.as_ref().map(|s| &s.secret_ref),
            ),
            (
                CA_FIELD,
                self.tls
                    .as_ref()
                    .and_then(|t| t.ca_certificate_secret_ref.as_ref()),
            ),
        ];
        credentials
            .into_iter()
            .filter_map(|(t, r)| Some((t.credential_field()?, r?)))
            .chain(others.into_iter().filter_map(|(f, r)| Some((f, r?))))
            .collect()
    }
}

impl ResolvedDatasource {
    /// Every secret the datasource reads, in spec order: the operator
    /// checks them, the webhook mounts them, the sidecar reads them.
    pub fn secret_uses(&self) -> Vec<SecretUse<'_>> {
        let mut uses = Vec::new();
        if let Some((field, file)) = self.authentication.credential() {
            uses.push(SecretUse {
                field,
                file,
                purpose: SecretPurpose::Credential,
            });
        }
        if let Some(s) = &self.signature {
            uses.push(SecretUse {
                field: SIGNATURE_FIELD,
                file: &s.secret,
                purpose: SecretPurpose::SignatureKey,
            });
        }
        if let Some(ca) = &self.tls.ca_certificate {
            uses.push(SecretUse {
                field: CA_FIELD,
                file: ca,
                purpose: SecretPurpose::CaBundle,
            });
        }
        uses
    }

    /// Every secret the datasource reads, in spec order.
    pub fn secret_files(&self) -> Vec<&SecretFile> {
        self.secret_uses().into_iter().map(|u| u.file).collect()
    }

    /// The secrets a sidecar in a cluster needs, which the webhook mounts:
    /// all of them but, for the authorization-code grant, the client
    /// secret, which only the operator (the one refresher) uses.
    pub fn sidecar_secret_files(&self) -> Vec<&SecretFile> {
        let operator_only = self.operator_only_secret();
        self.secret_files()
            .into_iter()
            .filter(|f| Some(*f) != operator_only)
            .collect()
    }

    /// The client secret of the authorization-code grant: the operator
    /// needs it; a sidecar only in local mode, where it refreshes itself.
    pub fn operator_only_secret(&self) -> Option<&SecretFile> {
        match &self.authentication {
            ResolvedAuthentication::OAuth2(o) if o.grant_type == GrantType::AuthorizationCode => {
                Some(&o.client_secret)
            }
            _ => None,
        }
    }

    /// For the authorization-code grant: the files of the Secret
    /// `<datasource>-sidekey-oauth` in which the operator keeps its tokens.
    pub fn oauth_token_files(&self) -> Option<OAuthTokenFiles> {
        match &self.authentication {
            ResolvedAuthentication::OAuth2(o) if o.grant_type == GrantType::AuthorizationCode => {
                let secret = names::oauth_token_secret_name(&self.name);
                let file = |key: &str| SecretFile {
                    path: names::secret_file_path(&secret, key),
                    secret: secret.clone(),
                    key: key.to_owned(),
                };
                Some(OAuthTokenFiles {
                    access_token: file(names::ACCESS_TOKEN_KEY),
                    expires_at: file(names::EXPIRES_AT_KEY),
                    refresh_token: file(names::REFRESH_TOKEN_KEY),
                })
            }
            _ => None,
        }
    }

    /// For the authorization-code grant: the refresh token the operator
    /// stores, which a sidecar in local mode reads to refresh by itself.
    pub fn refresh_token_file(&self) -> Option<SecretFile> {
        self.oauth_token_files().map(|f| f.refresh_token)
    }

    /// Parses a datasource file: an `ApiDatasource` manifest or the resolved
    /// spec the operator writes (YAML or JSON).
    pub fn from_yaml(text: &str) -> Result<Self, SpecError> {
        #[derive(Deserialize)]
        struct Head {
            kind: Option<String>,
        }
        let bad = |e: serde_saphyr::Error| SpecError::InvalidFile(e.to_string());
        let head: Head = serde_saphyr::from_str(text).map_err(bad)?;
        match head.kind.as_deref() {
            Some(names::KIND) => {
                let ds: ApiDatasource = serde_saphyr::from_str(text).map_err(bad)?;
                ds.resolve()
            }
            Some(names::RESOLVED_KIND) => {
                let resolved: ResolvedDatasource = serde_saphyr::from_str(text).map_err(bad)?;
                check_url("url", &resolved.url)?;
                Ok(resolved)
            }
            other => Err(SpecError::InvalidFile(format!(
                "kind is {other:?}, expected {:?} or {:?}",
                names::KIND,
                names::RESOLVED_KIND
            ))),
        }
    }

    /// The resolved spec as the YAML the ConfigMap carries.
    pub fn to_yaml(&self) -> String {
        // Plain data of strings, numbers and lists: serialization cannot fail.
        serde_saphyr::to_string(self)
            .unwrap_or_else(|e| panic!("resolved spec does not serialize: {e}"))
    }
}

fn check_url(field: &'static str, value: &str) -> Result<(), SpecError> {
    let invalid = |reason: String| SpecError::InvalidUrl {
        field,
        url: value.to_owned(),
        reason,
    };
    let url = url::Url::parse(value).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "scheme {:?} is not http or https",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it has no host".into()));
    }
    // WHATWG (the `url` crate) lets `"`, `{`, `|`, ... into a host name;
    // RFC 3986, and so the sidecar's HTTP stack, does not.
    if let Some(url::Host::Domain(host)) = url.host()
        && !host.bytes().all(is_reg_name_byte)
    {
        return Err(invalid(format!(
            "the host {host:?} holds a character a host name cannot (RFC 3986 reg-name)"
        )));
    }
    if url.fragment().is_some() {
        return Err(invalid("a fragment (#...) is never sent".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "credentials in the URL would be stored in plain text: use spec.authentication".into(),
        ));
    }
    Ok(())
}

/// RFC 3986 reg-name: unreserved, sub-delims and percent-encoding.
fn is_reg_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b)
}

/// The longest header name the sidecar's HTTP stack (`http`) takes.
const MAX_HEADER_NAME_LEN: usize = (1 << 16) - 1;

/// RFC 9110 token characters, as many as `http` takes.
fn check_header_name(field: &'static str, name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_HEADER_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SpecError::InvalidHeaderName {
            field,
            name: name.to_owned(),
        })
    }
}

/// What `http` takes in a field value: no control character but tab
/// (RFC 9110 field-vchar, SP, HTAB and obs-text). A newline would end the
/// header; the sidecar could not build it.
fn is_field_value_byte(b: u8) -> bool {
    b == b'\t' || (b >= b' ' && b != 0x7f)
}

fn check_header_value(field: &'static str, name: &str, value: &str) -> Result<(), SpecError> {
    if value.bytes().all(is_field_value_byte) {
        Ok(())
    } else {
        Err(SpecError::InvalidHeaderValue {
            field,
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ResolvedDatasource, SpecError> {
        ResolvedDatasource::from_yaml(yaml)
    }

    const OAUTH: &str = r#"
apiVersion: sidekey.dev/v1alpha1
kind: ApiDatasource
metadata: { name: payments, namespace: shop }
spec:
  url: https://payments.internal:8443/v2
  headers: [ { name: X-Tenant, value: acme } ]
  signature:
    secretRef: { name: signing, key: key }
  authentication:
    type: OAuth2
    oauth2:
      accessTokenUrl: https://auth.internal/oauth/token
      clientId: shop-payments
      clientSecretRef: { name: payments-oauth, key: client-secret }
      scopes: [ payments.read ]
"#;

    #[test]
    fn manifest_resolves_with_defaults_filled_in() {
        let r = parse(OAUTH).expect("valid");
        assert_eq!(r.name, "payments");
        assert_eq!(r.namespace.as_deref(), Some("shop"));
        let sig = r.signature.as_ref().expect("signature");
        assert_eq!(sig.header_name, "X-APPSMITH-SIGNATURE");
        assert_eq!(sig.issuer, "Appsmith");
        assert_eq!(sig.ttl_seconds, 600);
        assert_eq!(sig.secret.path, "signing/key");
        assert!(r.tls.trust_system_roots);
        let ResolvedAuthentication::OAuth2(o) = &r.authentication else {
            panic!("not oauth2: {:?}", r.authentication)
        };
        assert_eq!(o.header_prefix, "Bearer");
        assert_eq!(o.client_authentication, ClientAuthentication::Body);
        assert_eq!(o.add_token_to, TokenPlacement::Header);
        assert_eq!(o.token_lifetime_seconds, 3600);
        assert_eq!(o.client_secret.path, "payments-oauth/client-secret");
    }

    #[test]
    fn resolved_spec_round_trips_through_yaml() {
        let r = parse(OAUTH).expect("valid");
        let again = parse(&r.to_yaml()).expect("resolved spec parses");
        assert_eq!(r, again);
    }

    #[test]
    fn block_of_another_type_is_refused() {
        let yaml = OAUTH.replace("type: OAuth2", "type: Basic");
        let err = parse(&yaml).expect_err("mismatch");
        assert_eq!(err.reason(), "InvalidAuthentication");
        assert!(err.to_string().contains("oauth2 is set"), "{err}");
    }

    #[test]
    fn missing_block_is_named() {
        let yaml = "kind: ApiDatasource\nmetadata: {name: a}\nspec:\n  url: https://h\n  authentication: {type: BearerToken}\n";
        let err = parse(yaml).expect_err("missing");
        assert!(err.to_string().contains("bearerToken is missing"), "{err}");
    }

    #[test]
    fn non_http_url_is_refused() {
        let yaml = "kind: ApiDatasource\nmetadata: {name: a}\nspec:\n  url: ftp://h/x\n";
        assert_eq!(parse(yaml).expect_err("ftp").reason(), "InvalidUrl");
    }

    #[test]
    fn authorization_code_needs_its_urls() {
        let yaml = OAUTH.replace(
            "scopes: [ payments.read ]",
            "scopes: [ a ]\n      grantType: AuthorizationCode",
        );
        let err = parse(&yaml).expect_err("needs urls");
        assert!(err.to_string().contains("authorizationUrl"), "{err}");
    }

    #[test]
    fn secret_uses_name_each_field_with_its_purpose() {
        let r = parse(OAUTH).expect("valid");
        let uses: Vec<(&str, &str, SecretPurpose)> = r
            .secret_uses()
            .iter()
            .map(|u| (u.field, u.file.path.as_str(), u.purpose))
            .collect();
        assert_eq!(
            uses,
            [
                (
                    "spec.authentication.oauth2.clientSecretRef",
                    "payments-oauth/client-secret",
                    SecretPurpose::Credential
                ),
                (
                    "spec.signature.secretRef",
                    "signing/key",
                    SecretPurpose::SignatureKey
                ),
            ]
        );
        assert_eq!(r.authentication.type_(), AuthenticationType::OAuth2);
        assert!(r.refresh_token_file().is_none());
    }

    #[test]
    fn the_authorization_code_grant_reads_the_operators_refresh_token() {
        let yaml = OAUTH.replace(
            "scopes: [ payments.read ]",
            "scopes: [ a ]\n      grantType: AuthorizationCode\n      authorizationUrl: https://a/authorize\n      redirectUrl: https://s/oauth2/callback",
        );
        let file = parse(&yaml)
            .expect("valid")
            .refresh_token_file()
            .expect("file");
        assert_eq!(file.path, "payments-sidekey-oauth/refresh-token");
        let files = parse(&yaml)
            .expect("valid")
            .oauth_token_files()
            .expect("files");
        let mounted: Vec<&str> = files.mounted().iter().map(|f| f.path.as_str()).collect();
        let resolved = parse(&yaml).expect("valid");
        let sidecar: Vec<&str> = resolved
            .sidecar_secret_files()
            .iter()
            .map(|f| f.path.as_str())
            .collect();
        assert_eq!(sidecar, ["signing/key"], "no client secret in the sidecar");
        assert_eq!(
            mounted,
            [
                "payments-sidekey-oauth/access-token",
                "payments-sidekey-oauth/expires-at"
            ]
        );
    }

    #[test]
    fn spec_secret_refs_cover_every_block_present_whatever_the_type() {
        let yaml = OAUTH.replace("type: OAuth2", "type: Basic");
        let ds: ApiDatasource = serde_saphyr::from_str(&yaml).expect("manifest");
        let fields: Vec<&str> = ds.spec.secret_refs().iter().map(|(f, _)| *f).collect();
        assert_eq!(
            fields,
            [
                "spec.authentication.oauth2.clientSecretRef",
                "spec.signature.secretRef"
            ]
        );
    }

    // Found by prop_accepted_header_names_and_values_are_valid_http: these
    // resolved, then the sidecar could not build the header and refused
    // the whole datasource at start.
    #[test]
    fn header_value_with_a_control_character_is_refused() {
        for value in ["\\0", "bar\\n", "a\\rb", "\\u007f"] {
            let yaml = format!(
                "kind: ApiDatasource\nmetadata: {{name: a}}\nspec:\n  url: https://h\n  \
                 headers: [ {{name: X-A, value: \"{value}\"}} ]\n"
            );
            let err = parse(&yaml).expect_err(value);
            assert!(
                matches!(err, SpecError::InvalidHeaderValue { .. }),
                "{err:?}"
            );
            assert_eq!(err.reason(), "InvalidHeader");
        }
        let tab = "kind: ApiDatasource\nmetadata: {name: a}\nspec:\n  url: https://h\n  \
                   headers: [ {name: X-A, value: \"a\\tb \u{e9}\"} ]\n";
        assert!(
            parse(tab).is_ok(),
            "tab, space and non-ASCII are sent as they are"
        );
    }

    #[test]
    fn header_prefixes_with_a_control_character_are_refused() {
        let api_key = "kind: ApiDatasource\nmetadata: {name: a}\nspec:\n  url: https://h\n  \
                       authentication:\n    type: ApiKey\n    apiKey: {key: X-Key, prefix: \"K\\n\", \
                       valueSecretRef: {name: s, key: k}}\n";
        let err = parse(api_key).expect_err("prefix");
        assert!(err.to_string().contains("apiKey.prefix"), "{err}");
        let oauth = OAUTH.replace("scopes:", "headerPrefix: \"Bearer\\u0000\"\n      scopes:");
        let err = parse(&oauth).expect_err("headerPrefix");
        assert!(err.to_string().contains("oauth2.headerPrefix"), "{err}");
    }

    #[test]
    fn header_name_longer_than_http_takes_is_refused() {
        let long = "x".repeat(MAX_HEADER_NAME_LEN + 1);
        let spec = |name: &str| ApiDatasourceSpec {
            url: "https://h".into(),
            headers: vec![NameValue {
                name: name.to_owned(),
                value: "v".into(),
            }],
            query_parameters: vec![],
            signature: None,
            tls: None,
            authentication: Authentication::default(),
        };
        let err = spec(&long).resolve("a", None).expect_err("65536 bytes");
        assert!(
            matches!(err, SpecError::InvalidHeaderName { .. }),
            "{err:?}"
        );
        assert!(
            spec(&long[1..]).resolve("a", None).is_ok(),
            "65535 bytes fit"
        );
    }

    // Found by the sidecar's prop_datasource_the_operator_accepts_builds_a_target
    // (minimal input `http://"`): the `url` crate takes these hosts, the
    // sidecar's `http::uri::Authority` does not.
    #[test]
    fn host_with_a_character_outside_rfc_3986_is_refused() {
        for url in [
            "http://\"",
            "https://a{b}/v2",
            "https://a|b",
            "https://a`b",
            "https://a^b",
        ] {
            let spec = ApiDatasourceSpec {
                url: url.into(),
                headers: vec![],
                query_parameters: vec![],
                signature: None,
                tls: None,
                authentication: Authentication::default(),
            };
            let err = spec.resolve("a", None).expect_err(url);
            assert_eq!(err.reason(), "InvalidUrl", "{url}");
        }
        for url in [
            "https://a-b.c_d~!$&'()*+,;=:8443/v2",
            "https://[::1]/",
            "https://10.0.0.1",
        ] {
            let yaml =
                format!("kind: ApiDatasource\nmetadata: {{name: a}}\nspec:\n  url: \"{url}\"\n");
            assert!(parse(&yaml).is_ok(), "{url}");
        }
    }

    #[test]
    fn credentials_the_sidecar_cannot_send_are_refused_without_quoting_them() {
        use crate::SecretValue;
        let file = || SecretFile {
            secret: "s".into(),
            key: "k".into(),
            path: "s/k".into(),
        };
        let bearer = ResolvedAuthentication::BearerToken { token: file() };
        let basic = ResolvedAuthentication::Basic {
            username: "u".into(),
            password: file(),
        };
        let query_key = ResolvedAuthentication::ApiKey {
            key: "k".into(),
            value: file(),
            prefix: None,
            add_to: ApiKeyPlacement::QueryParameter,
        };
        let v = |b: &[u8]| SecretValue::new(b.to_vec());
        assert!(bearer.check_credential(&v(b"t0k\tn")).is_ok());
        assert!(
            bearer
                .check_credential(&v("jeton-\u{e9}".as_bytes()))
                .is_ok()
        );
        let err = bearer
            .check_credential(&v(b"line1\nsecret"))
            .expect_err("newline");
        assert!(err.contains("byte 6"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        assert!(bearer.check_credential(&v(b"\xff\xfe")).is_err());
        assert!(bearer.check_credential(&v(b"")).is_err());
        // Basic encodes the password: any bytes go.
        assert!(basic.check_credential(&v(b"\0\xff\n")).is_ok());
        // A query parameter is percent-encoded: control characters go.
        assert!(query_key.check_credential(&v(b"a\nb")).is_ok());
        let huge = vec![b'a'; names::MAX_CREDENTIAL_LEN + 1];
        for auth in [&bearer, &basic, &query_key] {
            let err = auth.check_credential(&v(&huge)).expect_err("huge");
            assert!(err.contains("32769 bytes"), "{err}");
        }
    }

    #[test]
    fn unknown_kind_is_refused() {
        let err = parse("kind: Pod\n").expect_err("pod");
        assert_eq!(err.reason(), "InvalidFile");
    }
}
