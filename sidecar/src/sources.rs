//! Reads what a configuration is made of: the datasource file and the
//! secret files it names, plus a fingerprint of all of it so the reloader
//! can tell, cheaply and without keeping secrets around, whether anything
//! changed.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::path::{Component, Path, PathBuf};

use sidekey_crds::{ResolvedDatasource, SecretFile, SecretValue};

use crate::error::{ConfigError, chain};

/// The datasource and every secret value it needs, read from disk.
pub struct Sources {
    pub datasource: ResolvedDatasource,
    secrets: HashMap<String, SecretValue>,
    /// For the authorization-code grant, what the operator's token Secret
    /// holds of what the sidecar may read; each absent until a person
    /// authorizes the datasource.
    pub operator_tokens: OperatorTokens,
}

/// The authorization-code grant's token files. In a cluster the webhook
/// mounts the access token and its expiry, never the refresh token; in
/// local mode a refresh token lets the sidecar refresh by itself.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct OperatorTokens {
    pub access_token: Option<SecretValue>,
    pub expires_at: Option<SecretValue>,
    pub refresh_token: Option<SecretValue>,
}

impl Sources {
    /// The value of a secret file the datasource names. Every such file was
    /// read when `self` was made, so a miss is a bug in the caller.
    pub fn secret(&self, file: &SecretFile) -> Result<&SecretValue, ConfigError> {
        self.secrets
            .get(&file.path)
            .ok_or_else(|| ConfigError::SecretNotRead {
                secret: file.secret.clone(),
                key: file.key.clone(),
                path: PathBuf::from(&file.path),
            })
    }

    /// The secret as text, for values that go into headers or forms.
    pub fn secret_text(&self, file: &SecretFile) -> Result<&str, ConfigError> {
        let value = self.secret(file)?;
        let text = value
            .expose_str()
            .ok_or_else(|| ConfigError::SecretNotText {
                secret: file.secret.clone(),
                key: file.key.clone(),
            })?;
        if text.is_empty() {
            return Err(ConfigError::SecretEmpty {
                secret: file.secret.clone(),
                key: file.key.clone(),
            });
        }
        Ok(text)
    }
}

/// Where the files of a configuration live.
#[derive(Clone)]
pub struct Locations {
    pub datasource: PathBuf,
    pub secrets_dir: PathBuf,
    /// Keys the fingerprint, so it reveals nothing about secret values.
    hasher: std::collections::hash_map::RandomState,
}

impl Locations {
    pub fn new(datasource: PathBuf, secrets_dir: PathBuf) -> Self {
        Self {
            datasource,
            secrets_dir,
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Reads everything, returning a fingerprint of what was found (errors
    /// included, so a broken state is recognised when it repeats) and the
    /// sources when they are complete.
    pub fn read(&self) -> (u64, Result<Sources, ConfigError>) {
        let mut hasher = self.hasher.build_hasher();
        let result = self.read_into(&mut hasher);
        if let Err(e) = &result {
            chain(e).hash(&mut hasher);
        }
        (hasher.finish(), result)
    }

    fn read_into(&self, hasher: &mut impl Hasher) -> Result<Sources, ConfigError> {
        let text = std::fs::read_to_string(&self.datasource).map_err(|source| {
            ConfigError::ReadDatasource {
                path: self.datasource.clone(),
                source,
            }
        })?;
        text.hash(hasher);
        let datasource =
            ResolvedDatasource::from_yaml(&text).map_err(|source| ConfigError::Spec {
                path: self.datasource.clone(),
                source,
            })?;

        let mut secrets = HashMap::new();
        let mut first_error = None;
        for file in datasource.sidecar_secret_files() {
            match self.read_secret(file) {
                Ok(value) => {
                    file.path.hash(hasher);
                    value.expose().hash(hasher);
                    secrets.insert(file.path.clone(), value);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }

        // Mounted only for a sidecar in local mode, which refreshes by itself.
        if let Some(file) = datasource.operator_only_secret()
            && let Ok(value) = self.read_secret(file)
        {
            file.path.hash(hasher);
            value.expose().hash(hasher);
            secrets.insert(file.path.clone(), value);
        }

        let mut operator_tokens = OperatorTokens::default();
        if let Some(files) = datasource.oauth_token_files() {
            // Absent until a person authorizes: the grant reports
            // not-ready, and a file's arrival changes the fingerprint.
            let mut optional = |file: &SecretFile| {
                let value = self.read_secret(file).ok();
                value.as_ref().map(SecretValue::expose).hash(hasher);
                value
            };
            operator_tokens = OperatorTokens {
                access_token: optional(&files.access_token),
                expires_at: optional(&files.expires_at),
                refresh_token: optional(&files.refresh_token),
            };
        }

        Ok(Sources {
            datasource,
            secrets,
            operator_tokens,
        })
    }

    fn read_secret(&self, file: &SecretFile) -> Result<SecretValue, ConfigError> {
        let relative = Path::new(&file.path);
        if !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(ConfigError::SecretPathEscapes {
                secret: file.secret.clone(),
                key: file.key.clone(),
                path: file.path.clone(),
            });
        }
        let path = self.secrets_dir.join(relative);
        // Follows the `..data` symlinks of a Secret volume to the current file.
        let bytes = std::fs::read(&path).map_err(|source| ConfigError::ReadSecret {
            secret: file.secret.clone(),
            key: file.key.clone(),
            path: path.clone(),
            source,
        })?;
        Ok(SecretValue::new(bytes).trim_trailing_newline())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEARER: &str = "kind: ApiDatasource\nmetadata: {name: crm}\nspec:\n  url: https://h/v1\n  authentication:\n    type: BearerToken\n    bearerToken:\n      tokenSecretRef: {name: crm, key: token}\n";

    fn setup(token: Option<&str>) -> (tempfile::TempDir, Locations) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ds.yaml"), BEARER).expect("write");
        std::fs::create_dir(dir.path().join("crm")).expect("mkdir");
        if let Some(t) = token {
            std::fs::write(dir.path().join("crm/token"), t).expect("write");
        }
        let loc = Locations::new(dir.path().join("ds.yaml"), dir.path().to_path_buf());
        (dir, loc)
    }

    #[test]
    fn secret_is_read_and_trailing_newline_trimmed() {
        let (_dir, loc) = setup(Some("tok-123\n"));
        let (_, sources) = loc.read();
        let sources = sources.expect("complete");
        let file = sources.datasource.secret_files()[0].clone();
        assert_eq!(sources.secret_text(&file).expect("text"), "tok-123");
    }

    #[test]
    fn missing_secret_names_secret_and_key() {
        let (_dir, loc) = setup(None);
        let err = loc.read().1.err().expect("missing");
        let text = err.to_string();
        assert!(
            text.contains("\"crm\"") && text.contains("\"token\""),
            "{text}"
        );
    }

    #[test]
    fn fingerprint_changes_with_a_secret_and_only_then() {
        let (dir, loc) = setup(Some("one"));
        let a = loc.read().0;
        assert_eq!(a, loc.read().0);
        std::fs::write(dir.path().join("crm/token"), "two").expect("write");
        assert_ne!(a, loc.read().0);
    }

    #[test]
    fn path_leaving_the_secrets_dir_is_refused() {
        let (_dir, loc) = setup(Some("x"));
        let file = SecretFile {
            secret: "..".into(),
            key: "etc".into(),
            path: "../etc".into(),
        };
        assert!(matches!(
            loc.read_secret(&file),
            Err(ConfigError::SecretPathEscapes { .. })
        ));
    }
}
