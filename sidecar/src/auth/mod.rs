//! Authentication: one type per scheme behind one trait, so the proxy asks
//! for "the credential" and never learns which scheme is in force. A new
//! scheme is a new file here and one arm in [`from_config`].

mod api_key;
mod basic;
mod bearer;
mod none;
pub mod oauth2;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use http::header::{HeaderName, HeaderValue};
use sidekey_crds::ResolvedAuthentication;

use crate::error::{ConfigError, RequestError};
use crate::metrics::Metrics;
use crate::outgoing::Outgoing;
use crate::sources::Sources;

/// What a request carries to prove who sends it. Set on a request, it
/// replaces any header or query parameter of the same name the app sent.
pub enum Credential {
    None,
    Header {
        name: HeaderName,
        value: HeaderValue,
    },
    Query {
        /// The parameter name, decoded.
        name: String,
        /// `name=value`, encoded.
        pair: String,
    },
}

impl Credential {
    /// A header credential; the value is marked sensitive so HTTP/2 never
    /// indexes it and `Debug` hides it.
    pub fn header(name: HeaderName, value: &[u8]) -> Result<Self, String> {
        let mut value = HeaderValue::from_bytes(value)
            .map_err(|_| "the value cannot be sent in an HTTP header".to_owned())?;
        value.set_sensitive(true);
        Ok(Self::Header { name, value })
    }

    /// A query-parameter credential.
    pub fn query(name: &str, value: &str) -> Self {
        let pair = url::form_urlencoded::Serializer::new(String::new())
            .append_pair(name, value)
            .finish();
        Self::Query {
            name: name.to_owned(),
            pair,
        }
    }

    pub fn apply(&self, outgoing: &mut Outgoing) {
        match self {
            Self::None => {}
            Self::Header { name, value } => outgoing.set_header(name, value),
            Self::Query { name, pair } => outgoing.set_query_param(name, pair),
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Header { name, .. } => write!(f, "Header({name}: [redacted])"),
            Self::Query { name, .. } => write!(f, "Query({name}=[redacted])"),
        }
    }
}

/// One authentication scheme.
pub trait Authenticate: Send + Sync + 'static {
    /// The credential for the next request, when one is held: lock-free,
    /// the path every request takes.
    fn current(&self) -> Option<Arc<Credential>>;

    /// Obtains a credential when [`Authenticate::current`] has none; only
    /// schemes that fetch credentials wait here.
    fn obtain(&self) -> BoxFuture<'_, Result<Arc<Credential>, RequestError>> {
        let result = self
            .current()
            .ok_or_else(|| RequestError::TokenUnavailable {
                reason: "no credential".into(),
                retry_after: None,
            });
        Box::pin(std::future::ready(result))
    }

    /// Whether a rejected credential can be replaced by a new one (worth
    /// keeping a request's body for a retry).
    fn renewable(&self) -> bool {
        false
    }

    /// The upstream answered 401 to a request sent with `used`: renew if
    /// that can help. True when a new credential is now held.
    fn rejected(&self, used: Arc<Credential>) -> BoxFuture<'_, bool> {
        let _ = used;
        Box::pin(std::future::ready(false))
    }

    /// Ready to serve, or why not.
    fn readiness(&self) -> Result<(), String> {
        Ok(())
    }

    /// Time until the held credential expires, for credentials that do.
    fn expires_in(&self) -> Option<Duration> {
        None
    }
}

/// A credential fixed by the configuration: computed once per load.
pub struct Fixed(Arc<Credential>);

impl Fixed {
    pub fn new(credential: Credential) -> Self {
        Self(Arc::new(credential))
    }
}

impl Authenticate for Fixed {
    fn current(&self) -> Option<Arc<Credential>> {
        Some(self.0.clone())
    }
}

/// What building a scheme may use besides its own settings.
pub struct Setup<'a> {
    pub sources: &'a Sources,
    pub tls: &'a Arc<rustls::ClientConfig>,
    pub metrics: &'a Metrics,
    pub token_timeout: Duration,
}

/// The scheme the datasource asks for.
pub fn from_config(setup: &Setup<'_>) -> Result<Arc<dyn Authenticate>, ConfigError> {
    let sources = setup.sources;
    Ok(match &sources.datasource.authentication {
        ResolvedAuthentication::None => Arc::new(none::scheme()),
        ResolvedAuthentication::Basic { username, password } => {
            Arc::new(basic::scheme(username, password, sources)?)
        }
        ResolvedAuthentication::ApiKey {
            key,
            value,
            prefix,
            add_to,
        } => Arc::new(api_key::scheme(
            key,
            value,
            prefix.as_deref(),
            *add_to,
            sources,
        )?),
        ResolvedAuthentication::BearerToken { token } => Arc::new(bearer::scheme(token, sources)?),
        ResolvedAuthentication::OAuth2(settings) => match sources.datasource.oauth_token_files() {
            // The authorization-code grant: in a cluster, the access token
            // the operator mounts; in local mode, refreshing by itself.
            Some(files) => match oauth2::Mounted::from_sources(settings, &files, sources)? {
                Some(mounted) => Arc::new(mounted),
                None if sources.operator_tokens.refresh_token.is_some() => {
                    oauth2::OAuth2::start(settings, setup)?
                }
                None => Arc::new(oauth2::Awaiting::new(&files)),
            },
            None => oauth2::OAuth2::start(settings, setup)?,
        },
    })
}
