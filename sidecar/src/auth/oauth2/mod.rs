//! OAuth 2.0: access tokens from the token endpoint, renewed in the
//! background well before they expire.
//!
//! Requests read the current token lock-free. One token request runs at a
//! time however many requests wait; a request waits only when no usable
//! token exists at all. A failed renewal leaves the current token serving
//! until it really expires, and is retried with backoff and jitter.

mod schedule;
mod token_endpoint;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use backon::ExponentialBackoff;
use futures::future::BoxFuture;
use http::header::AUTHORIZATION;
use sidekey_crds::{GrantType, ResolvedOAuth2, SecretValue, TokenPlacement, names};
use tokio::sync::watch;

use super::{Authenticate, Credential, Setup};
use crate::error::Error;
use crate::metrics::Metrics;
use token_endpoint::{Grant, Issued, TokenEndpoint};

pub use schedule::{renew_after, retry_delays};

/// A request that finds no token does not ask again within this long of a
/// failed attempt; the background loop keeps retrying meanwhile.
const REQUEST_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How long the loop sleeps when it cannot request a token at all (no
/// refresh token yet): a reload replaces this authenticator when one comes.
const IDLE: Duration = Duration::from_secs(24 * 3600);

struct Token {
    credential: Arc<Credential>,
    expires_at: Instant,
    usable_until: Instant,
    renew_at: Instant,
}

struct Failure {
    at: Instant,
    reason: String,
}

pub struct OAuth2 {
    /// The datasource's name, for log lines.
    datasource: String,
    endpoint: TokenEndpoint,
    placement: TokenPlacement,
    header_prefix: String,
    default_lifetime: Duration,
    grant_type: GrantType,
    /// For the authorization-code grant: the operator's refresh token, or a
    /// newer one the server rotated to.
    refresh_token: Mutex<Option<SecretValue>>,
    /// Where the refresh token is expected, for messages.
    refresh_token_location: String,
    token: ArcSwapOption<Token>,
    /// Held while a token request runs; keeps the last failure.
    fetching: tokio::sync::Mutex<Option<Failure>>,
    /// Token requests completed, to tell waiters that one finished.
    attempts: AtomicU64,
    /// Wakes the renewal loop when a request stored a new token; dropping
    /// it (with `self`) stops the loop.
    wake: watch::Sender<u64>,
    metrics: Metrics,
}

impl OAuth2 {
    /// Builds the authenticator and starts its renewal loop, which makes
    /// the first token request right away.
    pub fn start(settings: &ResolvedOAuth2, setup: &Setup<'_>) -> Result<Arc<Self>, Error> {
        let sources = setup.sources;
        let client_secret = sources.secret_text(&settings.client_secret)?;
        let endpoint = TokenEndpoint::new(settings, client_secret, setup.tls, setup.token_timeout)?;
        let refresh_token_location = sources
            .datasource
            .refresh_token_file()
            .map(|f| format!("secret {:?} key {:?}", f.secret, f.key))
            .unwrap_or_default();
        let (wake, woken) = watch::channel(0);
        let this = Arc::new(Self {
            datasource: sources.datasource.name.clone(),
            endpoint,
            placement: settings.add_token_to,
            header_prefix: settings.header_prefix.clone(),
            default_lifetime: Duration::from_secs(u64::from(
                settings.token_lifetime_seconds.max(1),
            )),
            grant_type: settings.grant_type,
            refresh_token: Mutex::new(sources.refresh_token.clone()),
            refresh_token_location,
            token: ArcSwapOption::empty(),
            fetching: tokio::sync::Mutex::new(None),
            attempts: AtomicU64::new(0),
            wake,
            metrics: setup.metrics.clone(),
        });
        tokio::spawn(renewal_loop(Arc::downgrade(&this), woken));
        Ok(this)
    }

    fn usable(&self) -> Option<Arc<Credential>> {
        let token = self.token.load();
        token
            .as_ref()
            .filter(|t| Instant::now() < t.usable_until)
            .map(|t| t.credential.clone())
    }

    fn has_refresh_token(&self) -> bool {
        self.refresh_token.lock().is_ok_and(|t| t.is_some())
    }

    fn no_refresh_token(&self) -> String {
        format!(
            "grantType AuthorizationCode has no refresh token yet ({} is not mounted): \
             authorize the datasource through the sidekey operator",
            self.refresh_token_location
        )
    }

    /// Gets a new token unless one replacing `stale` already exists.
    /// `from_request`: a request waits on this, so do not hammer a failing
    /// endpoint on its behalf.
    async fn renew(
        &self,
        stale: Option<Arc<Credential>>,
        from_request: bool,
    ) -> Result<Arc<Credential>, Error> {
        let seen = self.attempts.load(Ordering::SeqCst);
        let mut last_failure = self.fetching.lock().await;
        if let Some(current) = self.usable()
            && stale.as_ref().is_none_or(|s| !Arc::ptr_eq(s, &current))
        {
            return Ok(current);
        }
        if let Some(failure) = last_failure.as_ref() {
            let just_tried = self.attempts.load(Ordering::SeqCst) != seen;
            let too_soon = from_request && failure.at.elapsed() < REQUEST_RETRY_PAUSE;
            if just_tried || too_soon {
                return Err(Error::TokenUnavailable {
                    reason: failure.reason.clone(),
                });
            }
        }

        let refresh_token = match self.grant_type {
            GrantType::ClientCredentials => None,
            GrantType::AuthorizationCode => {
                let token = self.refresh_token.lock().ok().and_then(|t| t.clone());
                match token {
                    Some(t) => Some(t),
                    None => {
                        let reason = self.no_refresh_token();
                        *last_failure = Some(Failure {
                            at: Instant::now(),
                            reason: reason.clone(),
                        });
                        return Err(Error::TokenUnavailable { reason });
                    }
                }
            }
        };
        let grant = match &refresh_token {
            Some(t) => Grant::RefreshToken(t),
            None => Grant::ClientCredentials,
        };

        self.metrics.token_fetches.inc();
        let sent_at = Instant::now();
        let result = self.endpoint.request(grant).await;
        self.attempts.fetch_add(1, Ordering::SeqCst);
        match result.and_then(|issued| self.store(issued, sent_at)) {
            Ok(credential) => {
                *last_failure = None;
                Ok(credential)
            }
            Err(reason) => {
                self.metrics.token_fetch_failures.inc();
                let valid_for = self.expires_in().map(|d| d.as_secs_f64());
                tracing::warn!(
                    datasource = %self.datasource,
                    %reason,
                    current_token_valid_for_seconds = valid_for,
                    "token request failed"
                );
                *last_failure = Some(Failure {
                    at: Instant::now(),
                    reason: reason.clone(),
                });
                Err(Error::TokenUnavailable { reason })
            }
        }
    }

    fn store(&self, issued: Issued, sent_at: Instant) -> Result<Arc<Credential>, String> {
        let token = issued
            .access_token
            .expose_str()
            .ok_or("the access token is not text")?;
        let credential = match self.placement {
            TokenPlacement::Header => {
                let value = if self.header_prefix.is_empty() {
                    token.to_owned()
                } else {
                    format!("{} {token}", self.header_prefix)
                };
                Credential::header(AUTHORIZATION, value.as_bytes())
                    .map_err(|reason| format!("the access token: {reason}"))?
            }
            TokenPlacement::QueryParameter => {
                Credential::query(names::ACCESS_TOKEN_QUERY_PARAMETER, token)
            }
        };
        let lifetime = schedule::lifetime(issued.expires_in, self.default_lifetime);
        // Counted from when the request left: never later than the server's clock.
        let usable_until = sent_at + lifetime - schedule::skew(lifetime);
        if usable_until <= Instant::now() {
            // A failure, not a token: so that requests waiting for this
            // fetch do not each fetch again, and the loop backs off.
            return Err(format!(
                "the token endpoint issued a token that expired before it arrived \
                 (lifetime {:.1}s, the request took {:.1}s): give tokens a longer lifetime",
                lifetime.as_secs_f64(),
                sent_at.elapsed().as_secs_f64()
            ));
        }
        let credential = Arc::new(credential);
        self.token.store(Some(Arc::new(Token {
            credential: credential.clone(),
            expires_at: sent_at + lifetime,
            usable_until,
            renew_at: sent_at + schedule::renew_after(lifetime),
        })));
        if let Some(rotated) = issued.refresh_token
            && let Ok(mut slot) = self.refresh_token.lock()
        {
            *slot = Some(rotated);
        }
        tracing::info!(
            datasource = %self.datasource,
            expires_in_seconds = lifetime.as_secs_f64(),
            announced = issued.expires_in.is_some(),
            "access token obtained"
        );
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
        Ok(credential)
    }

    /// How long the renewal loop waits before its next token request;
    /// `retrying`: the delays after failures, while the last one failed.
    fn next_delay(&self, retrying: Option<&mut ExponentialBackoff>) -> Duration {
        if self.grant_type == GrantType::AuthorizationCode && !self.has_refresh_token() {
            return IDLE;
        }
        if let Some(delays) = retrying {
            return delays.next().unwrap_or(schedule::MAX_RETRY_DELAY);
        }
        match self.token.load().as_ref() {
            Some(t) => t.renew_at.saturating_duration_since(Instant::now()),
            None => Duration::ZERO,
        }
    }
}

async fn renewal_loop(this: Weak<OAuth2>, mut woken: watch::Receiver<u64>) {
    let mut retrying: Option<ExponentialBackoff> = None;
    loop {
        let Some(delay) = this.upgrade().map(|t| t.next_delay(retrying.as_mut())) else {
            return;
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            changed = woken.changed() => {
                if changed.is_err() {
                    return;
                }
                // A request stored a fresh token: plan from it.
                retrying = None;
                continue;
            }
        }
        let Some(auth) = this.upgrade() else {
            return;
        };
        let stale = auth.token.load().as_ref().map(|t| t.credential.clone());
        match auth.renew(stale, false).await {
            Ok(_) => retrying = None,
            Err(_) => {
                retrying.get_or_insert_with(schedule::retry_delays);
            }
        }
        // Our own store woke us; that needs no second look.
        woken.borrow_and_update();
    }
}

impl Authenticate for OAuth2 {
    fn current(&self) -> Option<Arc<Credential>> {
        self.usable()
    }

    fn obtain(&self) -> BoxFuture<'_, Result<Arc<Credential>, Error>> {
        Box::pin(self.renew(None, true))
    }

    fn renewable(&self) -> bool {
        true
    }

    fn rejected(&self, used: Arc<Credential>) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            tracing::info!(
                datasource = %self.datasource,
                "the upstream rejected the access token (401): renewing it"
            );
            self.renew(Some(used), true).await.is_ok()
        })
    }

    fn readiness(&self) -> Result<(), String> {
        if self.usable().is_some() {
            return Ok(());
        }
        if self.grant_type == GrantType::AuthorizationCode && !self.has_refresh_token() {
            return Err(self.no_refresh_token());
        }
        let failure = self
            .fetching
            .try_lock()
            .ok()
            .and_then(|f| f.as_ref().map(|f| f.reason.clone()));
        Err(failure.unwrap_or_else(|| "no access token yet".into()))
    }

    fn expires_in(&self) -> Option<Duration> {
        self.token
            .load()
            .as_ref()
            .map(|t| t.expires_at.saturating_duration_since(Instant::now()))
    }
}
