//! OAuth 2.0: access tokens from the token endpoint, renewed in the
//! background well before they expire.
//!
//! Requests read the current token lock-free. One task per datasource
//! ([`renewal`]) makes every token request; a request that finds no
//! usable token, or whose token the upstream rejected, asks that task and
//! waits for its answer. A failed renewal leaves the current token serving
//! until it really expires, and is retried with backoff and jitter.

mod mounted;
mod renewal;
mod schedule;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use futures::future::BoxFuture;
use http::header::AUTHORIZATION;
use sidekey_crds::{ResolvedOAuth2, TokenPlacement, names};
use tokio::sync::watch;

use super::{Authenticate, Credential, Setup};
use crate::error::{ConfigError, RequestError};
use renewal::{Ask, Outcome, Published, Renewal};
use sidekey_oauth::TokenEndpoint;

pub use mounted::{Awaiting, Mounted};
pub use schedule::{renew_after, retry_delays};

/// The credential a token becomes: a header with the configured prefix, or
/// the `access_token` query parameter.
fn credential(
    placement: TokenPlacement,
    header_prefix: &str,
    token: &str,
) -> Result<Credential, String> {
    Ok(match placement {
        TokenPlacement::Header => {
            let value = if header_prefix.is_empty() {
                token.to_owned()
            } else {
                format!("{header_prefix} {token}")
            };
            Credential::header(AUTHORIZATION, value.as_bytes())
                .map_err(|reason| format!("the access token: {reason}"))?
        }
        TokenPlacement::QueryParameter => {
            Credential::query(names::ACCESS_TOKEN_QUERY_PARAMETER, token)
        }
    })
}

pub struct OAuth2 {
    /// The token the renewal task published.
    token: Published,
    /// The task's last outcome, for waiting requests and readiness.
    outcome: watch::Receiver<Outcome>,
    /// Asks to the task; dropping it (with `self`) stops the task.
    asks: watch::Sender<Ask>,
}

impl OAuth2 {
    /// Builds the authenticator and starts its renewal task, which makes
    /// the first token request right away.
    pub fn start(settings: &ResolvedOAuth2, setup: &Setup<'_>) -> Result<Arc<Self>, ConfigError> {
        let sources = setup.sources;
        let client_secret = sources.secret_text(&settings.client_secret)?;
        let endpoint = TokenEndpoint::new(settings, client_secret, setup.tls, setup.token_timeout)?;
        let token: Published = Arc::new(ArcSwapOption::empty());
        let (outcome_tx, outcome) = watch::channel(Outcome::default());
        let (asks, asked) = watch::channel(Ask::default());
        let renewal = Renewal {
            datasource: sources.datasource.name.clone(),
            endpoint,
            placement: settings.add_token_to,
            header_prefix: settings.header_prefix.clone(),
            default_lifetime: Duration::from_secs(u64::from(
                settings.token_lifetime_seconds.max(1),
            )),
            grant_type: settings.grant_type,
            refresh_token: sources.operator_tokens.refresh_token.clone(),
            token: token.clone(),
            outcome: outcome_tx,
            metrics: setup.metrics.clone(),
        };
        tokio::spawn(renewal.run(asked));
        Ok(Arc::new(Self {
            token,
            outcome,
            asks,
        }))
    }

    fn usable(&self) -> Option<Arc<Credential>> {
        renewal::usable(&self.token)
    }

    /// A usable token other than `rejected`: the one held, or the renewal
    /// task's answer to an ask for one. Dropping the future drops only the
    /// wait; a token request the ask started runs to its end.
    async fn ask(
        &self,
        rejected: Option<Arc<Credential>>,
    ) -> Result<Arc<Credential>, RequestError> {
        let fresh =
            |current: &Arc<Credential>| rejected.as_ref().is_none_or(|r| !Arc::ptr_eq(r, current));
        if let Some(current) = self.usable().filter(fresh) {
            return Ok(current);
        }
        let mut outcome = self.outcome.clone();
        if let Some(failure) = &outcome.borrow_and_update().failure
            && failure.pending()
        {
            return Err(failure.to_error());
        }
        let mut serial = 0;
        self.asks.send_modify(|ask| {
            ask.serial += 1;
            serial = ask.serial;
            if rejected.is_some() {
                ask.rejected.clone_from(&rejected);
            }
        });
        let failure = loop {
            {
                let seen = outcome.borrow_and_update();
                if seen.answered >= serial {
                    break seen.failure.clone();
                }
            }
            if outcome.changed().await.is_err() {
                break None;
            }
        };
        self.usable().filter(fresh).ok_or_else(|| match failure {
            Some(f) => f.to_error(),
            None => RequestError::TokenUnavailable {
                reason: "no access token yet".into(),
                retry_after: None,
            },
        })
    }
}

impl Authenticate for OAuth2 {
    fn current(&self) -> Option<Arc<Credential>> {
        self.usable()
    }

    fn obtain(&self) -> BoxFuture<'_, Result<Arc<Credential>, RequestError>> {
        Box::pin(self.ask(None))
    }

    fn renewable(&self) -> bool {
        true
    }

    fn rejected(&self, used: Arc<Credential>) -> BoxFuture<'_, bool> {
        Box::pin(async move { self.ask(Some(used)).await.is_ok() })
    }

    fn readiness(&self) -> Result<(), String> {
        if self.usable().is_some() {
            return Ok(());
        }
        let failure = self
            .outcome
            .borrow()
            .failure
            .as_ref()
            .map(|f| f.reason.clone());
        Err(failure.unwrap_or_else(|| "no access token yet".into()))
    }

    fn expires_in(&self) -> Option<Duration> {
        self.token
            .load()
            .as_ref()
            .map(|t| t.expires_at.saturating_duration_since(Instant::now()))
    }
}
