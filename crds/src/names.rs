//! Every literal the operator and the sidecar share, written once.

/// API group of sidekey's custom resources.
pub const GROUP: &str = "sidekey.dev";
/// The served version of `ApiDatasource`.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of `ApiDatasource` manifests and of the resolved spec.
pub const API_VERSION: &str = "sidekey.dev/v1alpha1";
/// Kind of the custom resource.
pub const KIND: &str = "ApiDatasource";
/// Kind written at the top of the resolved spec inside the ConfigMap.
pub const RESOLVED_KIND: &str = "ResolvedApiDatasource";

/// Label that sends a pod to the admission webhook (its objectSelector).
pub const INJECT_LABEL: &str = "sidekey.dev/inject";
/// Annotation listing the datasources a pod uses: `payments,crm:15001`.
pub const DATASOURCES_ANNOTATION: &str = "sidekey.dev/datasources";
/// Annotation in which the webhook records what it injected (JSON), so
/// that a pod admitted again (its stored spec re-created) changes nothing.
pub const STATUS_ANNOTATION: &str = "sidekey.dev/status";
/// Namespace label: `sidekey.dev/webhook: disabled` keeps the webhook away.
pub const WEBHOOK_NAMESPACE_LABEL: &str = "sidekey.dev/webhook";
/// Value of [`WEBHOOK_NAMESPACE_LABEL`] that turns the webhook off.
pub const WEBHOOK_DISABLED: &str = "disabled";
/// Name of the container the webhook injects.
pub const SIDECAR_CONTAINER: &str = "sidekey";
/// The fixed non-root user (and group) the sidecar runs as.
pub const SIDECAR_UID: i64 = 65532;
/// Where the sidecar binary lives in its image.
pub const SIDECAR_BINARY: &str = "/usr/local/bin/sidekey-sidecar";

/// Field manager for every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "sidekey-operator";
/// Suffix of the ConfigMap the operator writes for a datasource.
pub const CONFIGMAP_SUFFIX: &str = "-sidekey";
/// Longest ApiDatasource name, which the CRD's schema enforces: the name is
/// the value of the [`DATASOURCE_LABEL`] of its ConfigMap, and a label value
/// is at most 63 characters. Every object named after a datasource fits
/// then too (the longest, an Event, `<datasource>.<16 hex digits>`).
pub const MAX_DATASOURCE_NAME_LEN: usize = 63;
/// Key in that ConfigMap holding the resolved spec (YAML).
pub const CONFIGMAP_KEY: &str = "datasource.yaml";
/// Label put on every ConfigMap the operator owns.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY_VALUE: &str = "sidekey";
/// Label naming the datasource a ConfigMap was written for.
pub const DATASOURCE_LABEL: &str = "sidekey.dev/datasource";

/// Where the webhook mounts each datasource's ConfigMap in the sidecar.
pub const CONFIG_MOUNT_DIR: &str = "/etc/sidekey/datasources";
/// Where the webhook mounts Secrets in the sidecar: `<dir>/<secret>/<key>`,
/// the layout of a Secret volume, also used by the local mode.
pub const SECRETS_MOUNT_DIR: &str = "/var/run/secrets/sidekey";

/// First port given to a pod's datasources when the annotation names none.
pub const FIRST_PROXY_PORT: u16 = 15000;
/// Default admin port of the sidecar (`/healthz`, `/readyz`, `/metrics`).
pub const SIDECAR_ADMIN_PORT: u16 = 15090;
/// Default admin port of the operator.
pub const OPERATOR_ADMIN_PORT: u16 = 8080;

/// Default header carrying the signature JWT; existing verifiers read it.
pub const DEFAULT_SIGNATURE_HEADER: &str = "X-APPSMITH-SIGNATURE";
/// Default `iss` claim of the signature JWT.
pub const DEFAULT_SIGNATURE_ISSUER: &str = "Appsmith";
/// Default lifetime of a signature JWT.
pub const DEFAULT_SIGNATURE_TTL_SECONDS: u32 = 600;
/// Shortest signature key accepted.
pub const MIN_SIGNATURE_KEY_LEN: usize = 32;
/// Longest credential value (password, key, token, client secret) taken, in
/// bytes: far above any real one (JWTs run to a few KiB), and half of the
/// sidecar's 64 KiB request-head limit, so a request carrying it still
/// has room for the app's own headers.
pub const MAX_CREDENTIAL_LEN: usize = 32 * 1024;
/// Token lifetime assumed when a token endpoint sends no `expires_in`.
pub const DEFAULT_TOKEN_LIFETIME_SECONDS: u32 = 3600;
/// Query parameter carrying the OAuth token when `addTokenTo: QueryParameter`.
pub const ACCESS_TOKEN_QUERY_PARAMETER: &str = "access_token";

/// Directory in the sidecar where datasource `name`'s ConfigMap is mounted.
pub fn config_mount_dir(datasource: &str) -> String {
    format!("{CONFIG_MOUNT_DIR}/{datasource}")
}

/// The resolved spec of datasource `name` inside the sidecar.
pub fn config_file_path(datasource: &str) -> String {
    format!("{CONFIG_MOUNT_DIR}/{datasource}/{CONFIGMAP_KEY}")
}

/// Name of the Secret holding the tokens the operator obtained for
/// datasource `name` with the authorization-code grant.
pub fn oauth_token_secret_name(datasource: &str) -> String {
    format!("{datasource}{OAUTH_TOKEN_SECRET_SUFFIX}")
}

/// Name of the ConfigMap the operator writes for datasource `name`.
pub fn configmap_name(datasource: &str) -> String {
    format!("{datasource}{CONFIGMAP_SUFFIX}")
}

/// `SIDEKEY_<NAME>_URL`: the variable app containers read for a datasource.
pub fn url_env_name(datasource: &str) -> String {
    let upper: String = datasource
        .chars()
        .map(|c| match c {
            '-' | '.' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    format!("SIDEKEY_{upper}_URL")
}

/// Path of a secret key relative to the secrets directory.
pub fn secret_file_path(secret: &str, key: &str) -> String {
    format!("{secret}/{key}")
}

/// Suffix of the Secret in which the operator keeps the tokens it obtained
/// for a datasource with the authorization-code grant: `<datasource>-sidekey-oauth`.
/// The sidecar reads it, when mounted, as `<secrets-dir>/<that secret>/<key>`.
pub const OAUTH_TOKEN_SECRET_SUFFIX: &str = "-sidekey-oauth";
/// Key of the refresh token in that Secret. Only the operator reads it in
/// a cluster; the local mode's sidecar refreshes with it by itself.
pub const REFRESH_TOKEN_KEY: &str = "refresh-token";
/// Key of the current access token in that Secret, mounted into sidecars.
pub const ACCESS_TOKEN_KEY: &str = "access-token";
/// Key of the access token's expiry (RFC 3339) in that Secret, mounted
/// into sidecars beside it.
pub const EXPIRES_AT_KEY: &str = "expires-at";

/// Path, on the operator's authorization endpoint, that starts a
/// datasource's authorization: `<path>/<namespace>/<name>?nonce=...`.
pub const OAUTH_AUTHORIZE_PATH: &str = "/oauth2/authorize";
/// Path, on the operator's authorization endpoint, of the OAuth 2.0
/// callback; a datasource's `redirectUrl` points at it.
pub const OAUTH_CALLBACK_PATH: &str = "/oauth2/callback";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_name_upper_cases_and_replaces_dashes() {
        assert_eq!(url_env_name("payments-eu"), "SIDEKEY_PAYMENTS_EU_URL");
    }

    #[test]
    fn names_made_from_the_longest_datasource_name_fit() {
        let name = "a".repeat(MAX_DATASOURCE_NAME_LEN);
        for made in [
            configmap_name(&name),
            oauth_token_secret_name(&name),
            format!("{name}.{:x}", u64::MAX),
        ] {
            assert!(made.len() <= 253, "{} characters", made.len());
        }
    }

    #[test]
    fn configmap_name_appends_suffix() {
        assert_eq!(configmap_name("payments"), "payments-sidekey");
    }
}
