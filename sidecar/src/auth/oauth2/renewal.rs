//! The one task per datasource that talks to the token endpoint: it owns
//! the schedule, the single flight, the backoff, the refresh token, and
//! answers requests' asks (no token, or a 401). It publishes tokens through
//! an `ArcSwap` that requests read and its outcomes through a `watch`, as
//! linkerd2-proxy's identity client publishes certificates.
//!
//! A token request runs here, never inside a request's future: an app
//! that drops its connection mid-request cannot cancel it, which with
//! rotating refresh tokens would spend a rotation and lose its answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use backon::ExponentialBackoff;
use sidekey_crds::{GrantType, SecretValue, TokenPlacement};
use sidekey_oauth::{Grant, Issued, TokenEndpoint};
use tokio::sync::watch;

use super::schedule;
use crate::auth::Credential;
use crate::error::{RequestError, chain};
use crate::metrics::Metrics;

pub struct Token {
    pub credential: Arc<Credential>,
    pub expires_at: Instant,
    usable_until: Instant,
    renew_at: Instant,
}

/// The token requests publish; `None` until the first one arrives.
pub type Published = Arc<ArcSwapOption<Token>>;

/// The published credential, while it is still usable.
pub fn usable(token: &Published) -> Option<Arc<Credential>> {
    let token = token.load();
    token
        .as_ref()
        .filter(|t| Instant::now() < t.usable_until)
        .map(|t| t.credential.clone())
}

/// What requests send the task: "I need a token", and, after a 401, the
/// credential the upstream rejected.
#[derive(Default)]
pub struct Ask {
    /// Counts asks, so that each knows when the task has answered it.
    pub serial: u64,
    pub rejected: Option<Arc<Credential>>,
}

#[derive(Clone)]
pub struct Failure {
    pub reason: String,
    /// When the backoff makes the next token request. Until then an ask is
    /// answered with this failure and sends nothing: however much traffic
    /// the app sends, the endpoint sees only the backoff's requests.
    pub retry_at: Instant,
}

impl Failure {
    /// The failure as a request sees it, with how long until the next try.
    pub fn to_error(&self) -> RequestError {
        RequestError::TokenUnavailable {
            reason: self.reason.clone(),
            retry_after: Some(self.retry_at.saturating_duration_since(Instant::now())),
        }
    }

    pub fn pending(&self) -> bool {
        Instant::now() < self.retry_at
    }
}

/// What the task last did.
#[derive(Clone, Default)]
pub struct Outcome {
    /// Every ask up to this serial has been answered: a token is published,
    /// or `failure` says why not.
    pub answered: u64,
    /// The last token request's failure, cleared by a success.
    pub failure: Option<Failure>,
}

/// The settings and state the task owns.
pub struct Renewal {
    pub datasource: String,
    pub endpoint: TokenEndpoint,
    pub placement: TokenPlacement,
    pub header_prefix: String,
    pub default_lifetime: Duration,
    pub grant_type: GrantType,
    /// For the authorization-code grant: the operator's refresh token, or a
    /// newer one the server rotated to. Only this task holds it.
    pub refresh_token: Option<SecretValue>,
    pub token: Published,
    pub outcome: watch::Sender<Outcome>,
    pub metrics: Metrics,
}

impl Renewal {
    /// Requests the first token at once, then renews on schedule, retries
    /// failures with backoff, and answers asks; ends when the
    /// authenticator (the asks' sender) is dropped.
    pub async fn run(mut self, mut asks: watch::Receiver<Ask>) {
        let mut retrying: Option<ExponentialBackoff> = None;
        // Moved only by a token request: asks that need none do not
        // postpone a scheduled renewal or retry.
        let mut next = tokio::time::Instant::now();
        loop {
            let ask = tokio::select! {
                () = tokio::time::sleep_until(next) => None,
                changed = asks.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let ask = asks.borrow_and_update();
                    Some((ask.serial, ask.rejected.clone()))
                }
            };
            match ask {
                None => {
                    next = self.renew(&mut retrying).await.into();
                }
                Some((serial, rejected)) => {
                    let needed = match usable(&self.token) {
                        None => true,
                        Some(current) => {
                            rejected.as_ref().is_some_and(|r| Arc::ptr_eq(r, &current))
                        }
                    };
                    let backing_off = self
                        .outcome
                        .borrow()
                        .failure
                        .as_ref()
                        .is_some_and(Failure::pending);
                    if needed && !backing_off {
                        if rejected.is_some() {
                            tracing::info!(
                                datasource = %self.datasource,
                                "the upstream rejected the access token (401): renewing it"
                            );
                        }
                        next = self.renew(&mut retrying).await.into();
                    }
                    self.outcome
                        .send_modify(|o| o.answered = o.answered.max(serial));
                }
            }
        }
    }

    /// One token request; its outcome is published, a failure starts (or
    /// continues) the backoff. Returns when the next one is due.
    async fn renew(&mut self, retrying: &mut Option<ExponentialBackoff>) -> Instant {
        let (failure, next) = match self.fetch().await {
            Ok(()) => {
                *retrying = None;
                let next = match self.token.load().as_ref() {
                    Some(t) => t.renew_at,
                    None => Instant::now(),
                };
                (None, next)
            }
            Err(reason) => {
                let delay = retrying
                    .get_or_insert_with(schedule::retry_delays)
                    .next()
                    .unwrap_or(schedule::MAX_RETRY_DELAY);
                let retry_at = Instant::now() + delay;
                (Some(Failure { reason, retry_at }), retry_at)
            }
        };
        self.outcome.send_modify(|o| o.failure = failure);
        next
    }

    async fn fetch(&mut self) -> Result<(), String> {
        let grant = match (self.grant_type, &self.refresh_token) {
            (GrantType::AuthorizationCode, Some(t)) => Grant::RefreshToken(t),
            // The scheme is built only with a refresh token (see `auth`).
            (GrantType::AuthorizationCode, None) => return Err("no refresh token".into()),
            (GrantType::ClientCredentials, _) => Grant::ClientCredentials,
        };
        self.metrics.token_fetches.inc();
        let sent_at = Instant::now();
        // The failure's text, with its sources, is shared by every
        // request waiting for this answer.
        let result = self.endpoint.request(grant).await;
        result
            .map_err(|e| chain(&e))
            .and_then(|issued| self.store(issued, sent_at))
            .inspect_err(|reason| {
                self.metrics.token_fetch_failures.inc();
                let valid_for = self.token.load().as_ref().map(|t| {
                    t.expires_at
                        .saturating_duration_since(Instant::now())
                        .as_secs_f64()
                });
                tracing::warn!(
                    datasource = %self.datasource,
                    %reason,
                    current_token_valid_for_seconds = valid_for,
                    "token request failed"
                );
            })
    }

    fn store(&mut self, issued: Issued, sent_at: Instant) -> Result<(), String> {
        let token = issued
            .access_token
            .expose_str()
            .ok_or("the access token is not text")?;
        let credential = super::credential(self.placement, &self.header_prefix, token)?;
        // A rotated refresh token is kept even if the access token turns
        // out unusable: the old one is spent.
        if let Some(rotated) = issued.refresh_token {
            self.refresh_token = Some(rotated);
        }
        let lifetime = schedule::lifetime(issued.expires_in, self.default_lifetime);
        // Counted from when the request left: never later than the server's clock.
        let usable_until = sent_at + lifetime - schedule::skew(lifetime);
        if usable_until <= Instant::now() {
            // A failure, not a token: waiting requests take it as their
            // answer, and the task backs off.
            return Err(format!(
                "the token endpoint issued a token that expired before it arrived \
                 (lifetime {:.1}s, the request took {:.1}s): give tokens a longer lifetime",
                lifetime.as_secs_f64(),
                sent_at.elapsed().as_secs_f64()
            ));
        }
        self.token.store(Some(Arc::new(Token {
            credential: Arc::new(credential),
            expires_at: sent_at + lifetime,
            usable_until,
            renew_at: sent_at + schedule::renew_after(lifetime),
        })));
        tracing::info!(
            datasource = %self.datasource,
            expires_in_seconds = lifetime.as_secs_f64(),
            announced = issued.expires_in.is_some(),
            "access token obtained"
        );
        Ok(())
    }
}
