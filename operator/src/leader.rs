//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several
//! replicas exactly one reconciles.
//!
//! Written here rather than on `kube-lease-manager` 0.13, which cannot be
//! configured out of three problems: it clears an expired claim with an
//! unconditional patch (a slow candidate can wipe the claim another has
//! just won, and both lead until the next renewal), it has no renew
//! deadline, and a standby re-reads the Lease only when the claim it last
//! saw expires, then waits up to 1 s more (a released Lease sits unused for
//! up to a lease duration).
//!
//! The protocol is client-go's:
//! - Every write (create, claim, renewal, release) is a create or a
//!   replace carrying the `resourceVersion` last read: of two candidates
//!   the second gets a conflict, so two processes never both hold it.
//! - Standbys watch the Lease. A released (holderless) Lease is claimed at
//!   once; another's claim counts as expired a lease duration after this
//!   process last saw it change, by its own clock, so clock skew between
//!   nodes cannot shorten a claim.
//! - The leader renews every retry period (2 s by default), and stops
//!   leading when no renewal has succeeded for the renew deadline (10 s),
//!   client-go's defaults: an API server that pauses for several seconds
//!   costs no leadership. No standby can take the claim earlier, since the
//!   deadline is shorter than the lease duration and each standby saw the
//!   last renewal no sooner than it was sent.
//! - A graceful stop releases the Lease, and watching standbys take it
//!   within one round trip.
//! - A leader that loses the Lease (taken, or not renewed in time, as when
//!   the API server is down for longer than the renew deadline) becomes a
//!   standby in the same process and campaigns again; each term of
//!   leadership has its own number, so a loss and a new win in quick
//!   succession are never mistaken for one unbroken term.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::TryStreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use sidekey_crds::names::FIELD_MANAGER;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::error::StartupError;

/// How often a failed renewal is retried before the renew deadline.
const RENEW_RETRY: Duration = Duration::from_millis(250);
/// How long `step_down` waits for the release.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Which Lease, who we are, and its timing.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// How long a holder's claim lasts without renewal, in seconds.
    pub duration_seconds: u64,
    /// How long a leader keeps leading without a successful renewal, in
    /// seconds; less than `duration_seconds`.
    pub renew_deadline_seconds: u64,
    /// How often the leader renews (and retries a failed renewal), in
    /// seconds; less than `renew_deadline_seconds`.
    pub retry_period_seconds: u64,
}

impl LeaseConfig {
    /// The timing must allow a renewal before expiry.
    pub fn check(&self) -> Result<(), String> {
        if self.retry_period_seconds == 0 {
            return Err("the lease retry period must be at least 1 second".into());
        }
        if self.retry_period_seconds >= self.renew_deadline_seconds
            || self.renew_deadline_seconds >= self.duration_seconds
        {
            return Err(format!(
                "the lease retry period ({} s) must be less than the renew deadline ({} s), \
                 and that less than the lease duration ({} s)",
                self.retry_period_seconds, self.renew_deadline_seconds, self.duration_seconds
            ));
        }
        if i32::try_from(self.duration_seconds).is_err() {
            return Err(format!(
                "lease duration ({} s) does not fit a Lease",
                self.duration_seconds
            ));
        }
        Ok(())
    }

    fn duration(&self) -> Duration {
        Duration::from_secs(self.duration_seconds)
    }

    /// From a successful claim or renewal to the next renewal.
    fn renew_after(&self) -> Duration {
        Duration::from_secs(self.retry_period_seconds)
    }

    /// From a successful claim or renewal to the moment a leader that has
    /// not renewed since stops leading.
    fn renew_deadline(&self) -> Duration {
        Duration::from_secs(self.renew_deadline_seconds)
    }
}

/// This process's place in the election.
pub struct Leadership {
    config: LeaseConfig,
    /// The term this process leads in, `None` while it does not.
    state: watch::Receiver<Option<u64>>,
    stop: CancellationToken,
    /// Taken by `step_down`; aborted on drop otherwise.
    task: Option<JoinHandle<()>>,
}

impl Leadership {
    /// Joins the election: reads the Lease (so missing permissions fail
    /// here) and starts competing for it in the background; the Lease is
    /// created by the first claim if it does not exist.
    pub async fn join(client: Client, config: LeaseConfig) -> Result<Self, StartupError> {
        let api: Api<Lease> = Api::namespaced(client, &config.namespace);
        let lease =
            api.get_opt(&config.name)
                .await
                .map_err(|source| StartupError::LeaderElection {
                    namespace: config.namespace.clone(),
                    name: config.name.clone(),
                    source,
                })?;
        let (leading, state) = watch::channel(None);
        let (events, seen_events) = mpsc::channel(16);
        let watcher = AbortOnDrop(tokio::spawn(watch_lease(
            api.clone(),
            config.name.clone(),
            events,
        )));
        let stop = CancellationToken::new();
        let elector = Elector {
            api,
            config: config.clone(),
            seen: Seen {
                lease,
                changed_at: Instant::now(),
            },
            leading,
            events: seen_events,
            stop: stop.clone(),
            _watcher: watcher,
        };
        Ok(Self {
            config,
            state,
            stop,
            task: Some(tokio::spawn(elector.run())),
        })
    }

    /// Returns once this process holds the Lease, with the number of this
    /// term; an error only if the election task has ended.
    pub async fn acquired(&mut self) -> Result<u64, StartupError> {
        let term = self.state.wait_for(Option::is_some).await.map(|term| *term);
        term.map(Option::unwrap_or_default)
            .map_err(|_| self.lost_error())
    }

    /// Returns once `term` is over: another took the Lease, it could not be
    /// renewed in time, or the election task ended. The process stays a
    /// candidate: `acquired` returns when it leads again.
    pub async fn lost(&mut self, term: u64) {
        let _ = self.state.wait_for(|now| *now != Some(term)).await;
    }

    /// Leaves the election, releasing the Lease if held, so a standby can
    /// take over without waiting for it to expire.
    pub async fn step_down(mut self) {
        let Some(mut task) = self.task.take() else {
            return;
        };
        self.stop.cancel();
        match timeout(RELEASE_TIMEOUT, &mut task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "leader election task failed"),
            Err(_) => {
                task.abort();
                tracing::warn!("releasing the leader Lease timed out");
            }
        }
    }

    fn lost_error(&self) -> StartupError {
        StartupError::LostLeadership {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        // Leaving without `step_down` (leadership lost, or a fatal error):
        // stop competing; a claim still held expires on its own.
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Aborts a background task when its owner goes.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The Lease as this process last read it, and when (by its own clock)
/// the claim in it last changed.
struct Seen {
    lease: Option<Lease>,
    changed_at: Instant,
}

impl Seen {
    fn update(&mut self, lease: Option<Lease>) {
        let spec = |l: &Option<Lease>| l.as_ref().map(|l| l.spec.clone().unwrap_or_default());
        if spec(&self.lease) != spec(&lease) {
            self.changed_at = Instant::now();
        }
        self.lease = lease;
    }

    fn spec(&self) -> Option<&LeaseSpec> {
        self.lease.as_ref()?.spec.as_ref()
    }

    fn holder(&self) -> Option<&str> {
        self.spec()?
            .holder_identity
            .as_deref()
            .filter(|h| !h.is_empty())
    }

    /// When this process may claim the Lease: at once if nobody holds it
    /// (or it names us), else a lease duration (the holder's) after the
    /// claim was last seen to change.
    fn free_at(&self, config: &LeaseConfig) -> Instant {
        match self.holder() {
            None => self.changed_at,
            Some(holder) if holder == config.identity => self.changed_at,
            Some(_) => {
                let duration = self
                    .spec()
                    .and_then(|s| s.lease_duration_seconds)
                    .and_then(|d| u64::try_from(d).ok())
                    .filter(|d| *d > 0)
                    .map_or_else(|| config.duration(), Duration::from_secs);
                self.changed_at + duration
            }
        }
    }
}

/// Why a leader stopped leading.
enum Ended {
    /// `step_down`: release the Lease.
    Stopped,
    /// The claim is gone or could not be kept.
    Lost(String),
}

/// The background task: campaigns, then leads until stopped or lost.
struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    seen: Seen,
    leading: watch::Sender<Option<u64>>,
    /// Every state of the Lease the watch delivers (`None`: deleted).
    events: mpsc::Receiver<Option<Lease>>,
    stop: CancellationToken,
    _watcher: AbortOnDrop,
}

impl Elector {
    async fn run(mut self) {
        for term in 1.. {
            let Some(renewed) = self.campaign().await else {
                return;
            };
            tracing::info!(identity = %self.config.identity, term, "acquired the leader Lease");
            self.leading.send_replace(Some(term));
            match self.lead(renewed).await {
                Ended::Stopped => {
                    match self.release().await {
                        Ok(true) => tracing::info!("released the leader Lease"),
                        Ok(false) => tracing::info!("the leader Lease was no longer ours to release"),
                        Err(e) => tracing::warn!(error = %e, "releasing the leader Lease failed"),
                    }
                    return;
                }
                Ended::Lost(why) => {
                    tracing::warn!(reason = %why, "lost leadership; standing by to lead again");
                    self.leading.send_replace(None);
                }
            }
        }
    }

    /// Waits until the Lease is free and claims it; returns when the
    /// winning claim was sent, or `None` if stopped first.
    async fn campaign(&mut self) -> Option<Instant> {
        let mut backoff = Backoff::default();
        let mut announced: Option<String> = None;
        loop {
            if announced.as_deref() != self.seen.holder() {
                announced = self.seen.holder().map(str::to_owned);
                if let Some(holder) = announced.as_ref().filter(|h| **h != self.config.identity) {
                    tracing::info!(%holder, "the leader Lease is held by another replica");
                }
            }
            let free_at = self.seen.free_at(&self.config);
            if free_at <= Instant::now() {
                match self.try_claim().await {
                    Ok(Some(sent)) => return Some(sent),
                    // Lost a race or read something stale: `seen` is
                    // fresh now, decide again, pausing if it still looks
                    // free (the Lease keeps changing under us).
                    Ok(None) => {
                        if self.seen.free_at(&self.config) <= Instant::now() {
                            tokio::select! {
                                _ = self.stop.cancelled() => return None,
                                _ = sleep(backoff.next()) => {}
                            }
                        } else {
                            backoff.reset();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming the leader Lease failed; retrying");
                        tokio::select! {
                            _ = self.stop.cancelled() => return None,
                            _ = sleep(backoff.next()) => {}
                        }
                    }
                }
                continue;
            }
            tokio::select! {
                _ = self.stop.cancelled() => return None,
                Some(lease) = self.events.recv() => self.seen.update(lease),
                _ = sleep_until(free_at) => {}
            }
        }
    }

    /// One claim, conditional on the version last read. `Ok(None)`: the
    /// Lease changed meanwhile (re-read into `seen`).
    async fn try_claim(&mut self) -> Result<Option<Instant>, kube::Error> {
        let sent = Instant::now();
        let claim = self.claim();
        let written = match &self.seen.lease {
            None => self.api.create(&post_params(), &claim).await,
            Some(_) => {
                self.api
                    .replace(&self.config.name, &post_params(), &claim)
                    .await
            }
        };
        match written {
            Ok(lease) => {
                self.seen.update(Some(lease));
                Ok(Some(sent))
            }
            Err(e) if is_stale_write(&e) => {
                self.refresh().await?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Leads until stopped, or until the claim is taken or cannot be
    /// renewed in time. `renewed`: when the last successful write was sent.
    async fn lead(&mut self, mut renewed: Instant) -> Ended {
        loop {
            // Biased: a renewal that is due goes first, however many Lease
            // events keep arriving.
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return Ended::Stopped,
                _ = sleep_until(renewed + self.config.renew_after()) => {
                    match self.renew(renewed).await {
                        Ok(sent) => renewed = sent,
                        Err(why) => return Ended::Lost(why),
                    }
                }
                Some(lease) = self.events.recv() => {
                    let holder = lease.as_ref().and_then(|l| l.spec.as_ref()?.holder_identity.clone());
                    if holder.as_deref() != Some(self.config.identity.as_str()) {
                        // Maybe an event older than our last write: believe
                        // a fresh read (failing that, the next renewal).
                        let deadline = renewed + self.config.renew_deadline();
                        if let Ok(Ok(())) = timeout_at(deadline, self.refresh()).await
                            && self.seen.holder() != Some(self.config.identity.as_str())
                        {
                            return Ended::Lost(self.taken_by());
                        }
                    }
                }
            }
        }
    }

    /// Renews the claim, retrying until the renew deadline; returns when
    /// the successful renewal was sent.
    async fn renew(&mut self, renewed: Instant) -> Result<Instant, String> {
        let deadline = renewed + self.config.renew_deadline();
        loop {
            let sent = Instant::now();
            if sent >= deadline {
                return Err("could not renew the Lease before the renew deadline".into());
            }
            if self.seen.holder() != Some(self.config.identity.as_str()) {
                return Err(self.taken_by());
            }
            let claim = self.claim();
            let written = timeout_at(
                deadline,
                self.api.replace(&self.config.name, &post_params(), &claim),
            )
            .await;
            match written {
                Err(_) => {
                    return Err(
                        "renewing the Lease did not finish before the renew deadline".into(),
                    );
                }
                Ok(Ok(lease)) => {
                    self.seen.update(Some(lease));
                    return Ok(sent);
                }
                // Someone wrote the Lease: re-read, then either it is still
                // ours (an edit of its metadata, or a renewal whose answer
                // was lost) and we retry, or it is not and the loop says so.
                Ok(Err(e)) if is_stale_write(&e) => {
                    if let Ok(Err(e)) = timeout_at(deadline, self.refresh()).await {
                        tracing::warn!(error = %e, "re-reading the leader Lease failed");
                        sleep_until(deadline.min(Instant::now() + RENEW_RETRY)).await;
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "renewing the leader Lease failed; retrying");
                    sleep_until(deadline.min(Instant::now() + RENEW_RETRY)).await;
                }
            }
        }
    }

    /// Clears the holder if it is still us; `Ok(false)` if it was not.
    async fn release(&mut self) -> Result<bool, kube::Error> {
        for _ in 0..3 {
            let Some(mut lease) = self.seen.lease.clone() else {
                return Ok(false);
            };
            if self.seen.holder() != Some(self.config.identity.as_str()) {
                return Ok(false);
            }
            lease.metadata.managed_fields = None;
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            spec.holder_identity = None;
            spec.acquire_time = None;
            spec.renew_time = None;
            match self
                .api
                .replace(&self.config.name, &post_params(), &lease)
                .await
            {
                Ok(lease) => {
                    self.seen.update(Some(lease));
                    return Ok(true);
                }
                Err(e) if is_stale_write(&e) => self.refresh().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Re-reads the Lease into `seen`.
    async fn refresh(&mut self) -> Result<(), kube::Error> {
        let lease = self.api.get_opt(&self.config.name).await?;
        self.seen.update(lease);
        Ok(())
    }

    /// The Lease naming us as holder, from the version last read (so the
    /// write fails if it changed since): a renewal if we held it, a new
    /// claim otherwise.
    fn claim(&self) -> Lease {
        let now = MicroTime(Timestamp::now());
        let old = self.seen.spec().cloned().unwrap_or_default();
        let ours = self.seen.holder() == Some(self.config.identity.as_str());
        let transitions = old.lease_transitions.unwrap_or(0);
        let metadata = match &self.seen.lease {
            Some(lease) => ObjectMeta {
                managed_fields: None,
                ..lease.metadata.clone()
            },
            None => ObjectMeta {
                name: Some(self.config.name.clone()),
                ..Default::default()
            },
        };
        Lease {
            metadata,
            spec: Some(LeaseSpec {
                holder_identity: Some(self.config.identity.clone()),
                lease_duration_seconds: Some(
                    i32::try_from(self.config.duration_seconds).unwrap_or(i32::MAX),
                ),
                acquire_time: if ours {
                    old.acquire_time.clone()
                } else {
                    Some(now.clone())
                },
                renew_time: Some(now),
                lease_transitions: Some(match (&self.seen.lease, ours) {
                    (None, _) => 0,
                    (Some(_), true) => transitions,
                    (Some(_), false) => transitions.saturating_add(1),
                }),
                ..old
            }),
        }
    }

    fn taken_by(&self) -> String {
        match self.seen.holder() {
            Some(holder) => format!("the Lease is now held by {holder:?}"),
            None if self.seen.lease.is_none() => "the Lease was deleted".into(),
            None => "the Lease was released by someone else".into(),
        }
    }
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    }
}

/// A conditional write lost to another (409: conflict, already exists) or
/// aimed at a Lease deleted meanwhile (404).
fn is_stale_write(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409 || status.code == 404)
}

/// Sends every state of the Lease (`None`: it does not exist) to `events`:
/// a fresh read, then a watch from its version; again on any error.
async fn watch_lease(api: Api<Lease>, name: String, events: mpsc::Sender<Option<Lease>>) {
    let mut backoff = Backoff::default();
    while !events.is_closed() {
        match follow_lease(&api, &name, &events, &mut backoff).await {
            Ok(()) => backoff.reset(),
            Err(e) => {
                tracing::warn!(error = %e, "watching the leader Lease failed; restarting");
                sleep(backoff.next()).await;
            }
        }
    }
}

async fn follow_lease(
    api: &Api<Lease>,
    name: &str,
    events: &mpsc::Sender<Option<Lease>>,
    backoff: &mut Backoff,
) -> Result<(), kube::Error> {
    let current = api.get_opt(name).await?;
    // No version for a missing Lease: the watch starts at the latest.
    let version = current
        .as_ref()
        .and_then(|l| l.metadata.resource_version.clone())
        .unwrap_or_default();
    if events.send(current).await.is_err() {
        return Ok(());
    }
    let params = WatchParams::default().fields(&format!("metadata.name={name}"));
    let mut stream = std::pin::pin!(api.watch(&params, &version).await?);
    while let Some(event) = stream.try_next().await? {
        backoff.reset();
        let lease = match event {
            WatchEvent::Added(lease) | WatchEvent::Modified(lease) => Some(lease),
            WatchEvent::Deleted(_) => None,
            WatchEvent::Bookmark(_) => continue,
            // Such as 410 Gone: start over with a fresh read.
            WatchEvent::Error(status) => return Err(kube::Error::Api(status)),
        };
        if events.send(lease).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Doubling waits between failed API calls, 100 ms to 5 s.
struct Backoff(ExponentialBackoff);

/// The longest wait between failed API calls.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Default for Backoff {
    fn default() -> Self {
        Self(
            ExponentialBuilder::new()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(MAX_BACKOFF)
                .without_max_times()
                .build(),
        )
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        self.0.next().unwrap_or(MAX_BACKOFF)
    }

    fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(duration: u64, deadline: u64, retry: u64) -> LeaseConfig {
        LeaseConfig {
            name: "l".into(),
            namespace: "n".into(),
            identity: "me".into(),
            duration_seconds: duration,
            renew_deadline_seconds: deadline,
            retry_period_seconds: retry,
        }
    }

    fn lease(holder: Option<&str>, duration: Option<i32>) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("l".into()),
                resource_version: Some("7".into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: duration,
                lease_transitions: Some(3),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn retry_period_renew_deadline_and_lease_must_grow() {
        assert!(config(15, 10, 2).check().is_ok());
        assert!(config(15, 15, 2).check().is_err());
        assert!(config(15, 10, 10).check().is_err());
        assert!(config(15, 10, 0).check().is_err());
        assert!(config(u64::from(u32::MAX), 10, 2).check().is_err());
    }

    #[test]
    fn leader_renews_every_retry_period_and_gives_up_at_the_renew_deadline() {
        let c = config(15, 10, 2);
        assert_eq!(c.renew_after(), Duration::from_secs(2));
        assert_eq!(c.renew_deadline(), Duration::from_secs(10));
        // An API server may pause for most of the deadline: four renewals
        // fit before it, and a standby waits the whole lease.
        assert!(c.renew_deadline() < c.duration());
    }

    #[test]
    fn another_holders_claim_expires_a_lease_duration_after_it_was_seen_to_change() {
        let c = config(5, 3, 1);
        let t0 = Instant::now();
        let seen = |lease| Seen {
            lease,
            changed_at: t0,
        };
        assert_eq!(
            seen(Some(lease(Some("other"), Some(9)))).free_at(&c),
            t0 + Duration::from_secs(9)
        );
        assert_eq!(
            seen(Some(lease(Some("other"), None))).free_at(&c),
            t0 + Duration::from_secs(5)
        );
        assert_eq!(seen(Some(lease(None, Some(9)))).free_at(&c), t0);
        assert_eq!(seen(Some(lease(Some(""), Some(9)))).free_at(&c), t0);
        assert_eq!(seen(Some(lease(Some("me"), Some(9)))).free_at(&c), t0);
        assert_eq!(seen(None).free_at(&c), t0);
    }

    #[test]
    fn failed_calls_wait_from_100_ms_doubling_to_5_s_and_reset() {
        let mut b = Backoff::default();
        let waits: Vec<u128> = (0..8).map(|_| b.next().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_renewal_by_the_holder_restarts_its_term_and_a_repeated_read_does_not() {
        let mut seen = Seen {
            lease: Some(lease(Some("other"), Some(5))),
            changed_at: Instant::now() - Duration::from_secs(3),
        };
        let before = seen.changed_at;
        seen.update(Some(lease(Some("other"), Some(5))));
        assert_eq!(seen.changed_at, before);
        let mut renewed = lease(Some("other"), Some(5));
        if let Some(spec) = renewed.spec.as_mut() {
            spec.renew_time = Some(MicroTime(Timestamp::now()));
        }
        seen.update(Some(renewed));
        assert!(seen.changed_at > before);
    }
}
