//! The controller: one `reconcile` per datasource, one `error_policy` that
//! decides every retry. Triggers are the datasources themselves (spec
//! changes), their ConfigMaps (edited or deleted by someone else, see
//! [`configmap_drift`]) and the Secrets they reference, found through
//! [`SecretsIndex`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::channel::{mpsc, oneshot};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use sidekey_crds::names::{FIELD_MANAGER, OAUTH_TOKEN_SECRET_SUFFIX, configmap_name};
use sidekey_crds::{ApiDatasource, ApiDatasourceStatus};
use tokio_util::sync::CancellationToken;

use crate::configmap;
use crate::configmap_drift;
use crate::error::{Chain, DatasourceError, ReconcileError};
use crate::list_signals;
use crate::metrics::Metrics;
use crate::oauth::{self, refresh::Authorization};
use crate::secrets_index::SecretsIndex;
use crate::status::{self, Readiness};
use crate::validate;

/// A valid datasource is checked again this often even without a change
/// seen, in case a watch event was missed.
pub const RESYNC: Duration = Duration::from_secs(10 * 60);
/// First retry delay after a failure; doubles per failure up to
/// [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);
/// How often a warning names the watches that reconciling still waits for.
const LISTING_WARN_EVERY: Duration = Duration::from_secs(30);
/// Events carry at most 1 kB of note.
const MAX_NOTE_BYTES: usize = 1024;
/// What `kubectl apply` keeps on an object: a copy of the whole manifest.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub metrics: Metrics,
    pub recorder: Recorder,
    /// Consecutive failures per datasource, for the error policy's backoff.
    pub failures: Failures,
    /// The authorization endpoint, when it runs (`--oauth-listen`).
    pub oauth: Option<Arc<oauth::Settings>>,
}

impl Context {
    pub fn new(client: Client, metrics: Metrics, identity: &str) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: Some(identity.to_owned()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            failures: Failures::default(),
            oauth: None,
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, FailureCounts> {
        self.failures.lock()
    }
}

/// Per failing datasource: its failures so far and its next delays.
type FailureCounts = HashMap<ObjectRef<ApiDatasource>, (u32, ExponentialBackoff)>;

/// Consecutive failures per datasource. A datasource deleted while it
/// waits for a retry is never reconciled again, so the watch's deletions
/// (and a relist that no longer returns it) remove its entry.
#[derive(Default)]
pub struct Failures {
    counts: Mutex<FailureCounts>,
    /// During a relist: the datasources it returned so far.
    relisted: Mutex<Option<HashSet<ObjectRef<ApiDatasource>>>>,
}

impl Failures {
    fn lock(&self) -> std::sync::MutexGuard<'_, FailureCounts> {
        // Plain counters: usable after a panic elsewhere.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a failure of `key`: returns which failure in a row it is and
    /// how long to wait before the retry.
    pub fn next_retry(&self, key: ObjectRef<ApiDatasource>) -> (u32, Duration) {
        let mut counts = self.lock();
        let (attempt, delays) = counts.entry(key).or_insert_with(|| (0, retry_delays()));
        *attempt = attempt.saturating_add(1);
        (*attempt, delays.next().unwrap_or(MAX_BACKOFF))
    }

    /// How many datasources have failures recorded.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Follows the datasource watch.
    pub fn observe(&self, event: &watcher::Event<ApiDatasource>) {
        let mut relisted = self.relisted.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            watcher::Event::Apply(_) => {}
            watcher::Event::Delete(ds) => {
                self.lock().remove(&ObjectRef::from_obj(ds));
            }
            watcher::Event::Init => *relisted = Some(HashSet::new()),
            watcher::Event::InitApply(ds) => {
                if let Some(seen) = relisted.as_mut() {
                    seen.insert(ObjectRef::from_obj(ds));
                }
            }
            watcher::Event::InitDone => {
                if let Some(seen) = relisted.take() {
                    self.lock().retain(|key, _| seen.contains(key));
                }
            }
        }
    }
}

/// Brings one datasource's ConfigMap, status and Events in line with its
/// spec and Secrets.
pub async fn reconcile(
    ds: Arc<ApiDatasource>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let _timer = ctx.metrics.time_reconcile();
    let name = ds
        .metadata
        .name
        .clone()
        .ok_or(ReconcileError::MissingMetadata("name"))?;
    let namespace = ds
        .namespace()
        .ok_or(ReconcileError::MissingMetadata("namespace"))?;
    if ds.metadata.deletion_timestamp.is_some() {
        // Going away (foreground deletion, finalizers): recreating its
        // ConfigMap or writing its status would only be undone.
        ctx.failures().remove(&ObjectRef::from_obj(&*ds));
        return Ok(Action::await_change());
    }
    let client = &ctx.client;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let outcome = match validate::validate(&ds, &secrets).await {
        Ok(valid) => {
            let cm = configmap::desired(&ds, &name, &namespace, &valid.resolved)?;
            configmap::apply(&Api::namespaced(client.clone(), &namespace), &cm).await?;
            let authorization = match oauth::authorization_code(&valid.resolved) {
                Some(settings) => Some(
                    oauth::refresh::reconcile(
                        client,
                        ctx.oauth.as_deref(),
                        &ctx.metrics,
                        &ds,
                        &valid.resolved,
                        settings,
                        &valid.secrets,
                    )
                    .await?,
                ),
                None => None,
            };
            Outcome::Valid {
                config_map: configmap_name(&name),
                ca_certificates: valid.ca_certificates,
                authorization,
            }
        }
        // Bad input: say so and leave the last good ConfigMap untouched.
        Err(ReconcileError::Invalid(problem)) => Outcome::Invalid(problem),
        Err(e) => return Err(e),
    };

    let generation = ds.metadata.generation;
    let now = Time(Timestamp::now());
    let (readiness, desired) = outcome.status(generation, ds.status.as_ref(), now.clone());
    if ds.status.as_ref() != Some(&desired) {
        // The store can lag behind this operator's own last status write
        // (a reconcile triggered by the ConfigMap it just wrote): decide on
        // the object as the server has it now, so one transition makes one
        // Event and the kept ConfigMap is not forgotten.
        let api: Api<ApiDatasource> = Api::namespaced(client.clone(), &namespace);
        let Some(fresh) = api
            .get_opt(&name)
            .await
            .map_err(|e| ReconcileError::kube(format!("reading ApiDatasource {name:?}"), e))?
        else {
            // Deleted meanwhile: its ConfigMap goes with it.
            ctx.failures().remove(&ObjectRef::from_obj(&*ds));
            return Ok(Action::await_change());
        };
        let current = fresh.status.as_ref();
        let (readiness, desired) = outcome.status(generation, current, now);
        if current != Some(&desired) {
            let transition = status::is_transition(status::ready_condition(current), &readiness);
            let authorized = outcome.authorized();
            let authorized_transition = authorized.as_ref().is_some_and(|a| {
                status::is_transition(status::condition(current, status::AUTHORIZED), a)
            });
            // The status first: a failed write is retried, and the Event
            // of the transition must not be published once per attempt.
            status::apply(&api, &name, &desired).await?;
            if transition {
                tracing::info!(
                    datasource = %format!("{namespace}/{name}"),
                    ready = readiness.ready,
                    reason = %readiness.reason,
                    message = %readiness.message,
                    "Ready changed"
                );
                // Best effort, as client-go's recorder: the status holds the
                // truth, and retrying the reconcile would not repeat this.
                if let Err(e) = publish_event(&ctx, &ds, &namespace, &name, &readiness).await {
                    tracing::warn!(error = %Chain(&e), "cannot publish the Event");
                }
            }
            if let Some(authorized) = authorized.filter(|_| authorized_transition) {
                tracing::info!(
                    datasource = %format!("{namespace}/{name}"),
                    authorized = authorized.ready,
                    reason = %authorized.reason,
                    "Authorized changed"
                );
                if let Err(e) = publish_event(&ctx, &ds, &namespace, &name, &authorized).await {
                    tracing::warn!(error = %Chain(&e), "cannot publish the Event");
                }
            }
        }
    }

    ctx.failures().remove(&ObjectRef::from_obj(&*ds));
    ctx.metrics.reconciled(&readiness.reason);
    let recheck = outcome
        .recheck_in()
        .map_or(RESYNC, |r| r.clamp(MIN_RECHECK, RESYNC));
    Ok(Action::requeue(recheck))
}

/// The soonest a datasource is looked at again on its own schedule.
const MIN_RECHECK: Duration = Duration::from_millis(500);

/// What validation concluded, before it is written down.
enum Outcome {
    Valid {
        config_map: String,
        ca_certificates: Option<usize>,
        /// For the authorization-code grant.
        authorization: Option<Authorization>,
    },
    Invalid(DatasourceError),
}

impl Outcome {
    /// The `Authorized` condition, for an authorization-code datasource.
    fn authorized(&self) -> Option<Readiness> {
        match self {
            Self::Valid {
                authorization: Some(a),
                ..
            } => Some(Readiness {
                ready: a.authorized,
                reason: a.reason.clone(),
                message: a.message.clone(),
            }),
            _ => None,
        }
    }

    fn recheck_in(&self) -> Option<Duration> {
        match self {
            Self::Valid {
                authorization: Some(a),
                ..
            } => Some(a.recheck_in),
            _ => None,
        }
    }

    /// The `Ready` condition and the whole status, given the status as it
    /// is now (for `lastTransitionTime` and the ConfigMap kept in place).
    fn status(
        &self,
        generation: Option<i64>,
        current: Option<&ApiDatasourceStatus>,
        now: Time,
    ) -> (Readiness, ApiDatasourceStatus) {
        let (readiness, config_map) = match self {
            Self::Valid {
                config_map,
                ca_certificates,
                ..
            } => (
                Readiness::reconciled(config_map, *ca_certificates),
                Some(config_map.clone()),
            ),
            Self::Invalid(problem) => {
                let kept = current.and_then(|s| s.config_map.clone());
                (Readiness::invalid(problem, kept.as_deref()), kept)
            }
        };
        let authorized = self.authorized();
        let url = match self {
            Self::Valid {
                authorization: Some(a),
                ..
            } => a.url.clone(),
            // An invalid datasource keeps its link: it may be fixed soon.
            _ => current.and_then(|s| s.authorization_url.clone()),
        };
        let authorization = match (&authorized, self) {
            (Some(a), _) => Some((a, url)),
            (None, Self::Invalid(_)) => None,
            (None, _) => None,
        };
        let desired = status::desired(
            generation,
            current,
            &readiness,
            config_map,
            authorization,
            now,
        );
        (readiness, desired)
    }
}

async fn publish_event(
    ctx: &Context,
    ds: &ApiDatasource,
    namespace: &str,
    name: &str,
    readiness: &Readiness,
) -> Result<(), ReconcileError> {
    let mut note = format!("ApiDatasource {namespace}/{name}: {}", readiness.message);
    if note.len() > MAX_NOTE_BYTES {
        let mut cut = MAX_NOTE_BYTES - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    let event = Event {
        type_: if readiness.ready {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: readiness.reason.clone(),
        note: Some(note),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    ctx.recorder
        .publish(&event, &ds.object_ref(&()))
        .await
        .map_err(|e| {
            ReconcileError::kube(format!("publishing Event for ApiDatasource {name:?}"), e)
        })
}

/// Decides every retry: exponential backoff per datasource, and a metric
/// labelled by the error's name.
pub fn error_policy(ds: Arc<ApiDatasource>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    let (attempt, delay) = ctx.failures.next_retry(ObjectRef::from_obj(&*ds));
    ctx.metrics.failed(error);
    tracing::warn!(
        datasource = %format!("{}/{}", ds.namespace().unwrap_or_default(), ds.name_any()),
        error = %Chain(error),
        attempt,
        retry_in_seconds = delay.as_secs_f64(),
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// The delays between a datasource's retries: from [`MIN_BACKOFF`],
/// doubling, up to [`MAX_BACKOFF`], for as long as it fails.
pub fn retry_delays() -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(MIN_BACKOFF)
        .with_max_delay(MAX_BACKOFF)
        .without_max_times()
        .build()
}

/// Where the controller looks.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// One namespace, or the whole cluster.
    pub namespace: Option<String>,
    pub concurrency: u16,
}

fn api<K>(client: &Client, scope: &Scope) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match &scope.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the controller until `shutdown`.
pub async fn run(ctx: Arc<Context>, scope: Scope, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let index = SecretsIndex::default();

    // The datasource watch feeds the reflector store and the Secret index;
    // only spec changes (generation) trigger a reconcile, so the operator's
    // own status writes do not. The store keeps no field history: reconcile
    // reads no managedFields nor kubectl's copy of the manifest, and they
    // are a large part of each object.
    let (reader, writer) = reflector::store();
    let observer = index.clone();
    let watched = ctx.clone();
    let datasources = watcher(
        api::<ApiDatasource>(&client, &scope),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(slim)
    .map_ok(move |event| {
        observer.observe(&event);
        watched.failures.observe(&event);
        event
    })
    .reflect(writer)
    .applied_objects()
    .predicate_filter(predicates::generation, Default::default());

    // Reconciling waits until the Secret and ConfigMap watches have listed
    // (see `list_signals`): a Secret deleted between a datasource's first
    // reconcile and a slow first list of Secrets would otherwise be seen by
    // neither. Their later relists (after a watch failed) each have every
    // datasource reconciled once, for what was deleted in the gap.
    let (relisted, relists) = mpsc::unbounded::<()>();
    let (secrets_synced, secrets_listed) = oneshot::channel();
    let (configmaps_synced, configmaps_listed) = oneshot::channel();
    let datasources = stream::once(async move {
        list_signals::until_listed(
            vec![
                ("Secrets", secrets_listed),
                ("ConfigMaps", configmaps_listed),
            ],
            LISTING_WARN_EVERY,
            |watches| {
                tracing::warn!(
                    ?watches,
                    "no datasource is reconciled until these watches have listed; \
                     check that the operator may list and watch them (RBAC) and that \
                     the API server answers"
                )
            },
        )
        .await;
        tracing::debug!("the Secret and ConfigMap watches have listed; reconciling");
        datasources
    })
    .flatten();

    // Secrets as metadata only (`PartialObjectMeta` makes metadata-only
    // requests) and no store: memory does not grow with the number of
    // Secrets; values are read by GET when reconciling.
    let secrets = list_signals::signal_lists(
        watcher(
            api::<PartialObjectMeta<Secret>>(&client, &scope),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff(),
        secrets_synced,
        relisted.clone(),
    )
    .touched_objects();

    // The operator's ConfigMaps, as metadata and by label. Only a deletion
    // or someone else's edit wakes the owner: the ConfigMap a reconcile
    // has just applied must not cause a second reconcile.
    let configmaps = configmap_drift::changed_by_others(list_signals::signal_lists(
        watcher(
            api::<PartialObjectMeta<ConfigMap>>(&client, &scope),
            watcher::Config::default()
                .labels(&configmap::managed_selector())
                .any_semantic(),
        )
        .default_backoff(),
        configmaps_synced,
        relisted,
    ));

    let config = controller::Config::default().concurrency(scope.concurrency);
    Controller::for_stream(datasources, reader)
        .owns_stream(configmaps)
        .reconcile_all_on(relists)
        .watches_stream(secrets, move |secret| {
            let ns = secret.metadata.namespace.unwrap_or_default();
            let name = secret.metadata.name.unwrap_or_default();
            // A token Secret changed (the authorization endpoint wrote
            // it): its datasource puts that in its status.
            let owner = name
                .strip_suffix(OAUTH_TOKEN_SECRET_SUFFIX)
                .map(|ds| ObjectRef::new(ds).within(&ns));
            index.datasources_for(&ns, &name).into_iter().chain(owner)
        })
        .with_config(config)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            match result {
                Ok((obj, _)) => tracing::debug!(datasource = %obj, "reconciled"),
                Err(controller::Error::ReconcilerFailed(..)) => {} // logged by error_policy
                // A ConfigMap deleted with its datasource names an owner
                // that is gone: expected.
                Err(e @ controller::Error::ObjectNotFound(_)) => {
                    tracing::debug!(error = %e, "controller")
                }
                Err(e) => tracing::warn!(error = %Chain(&e), "controller"),
            }
            futures::future::ready(())
        })
        .await;
}

/// Drops what reconcile never reads from a datasource before it is kept.
fn slim(ds: &mut ApiDatasource) {
    ds.metadata.managed_fields = None;
    if let Some(annotations) = ds.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datasource(name: &str) -> ApiDatasource {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "sidekey.dev/v1alpha1",
            "kind": "ApiDatasource",
            "metadata": {"name": name, "namespace": "shop", "uid": "u-1", "generation": 1},
            "spec": {"url": "https://h.example/v1", "authentication": {"type": "None"}},
        }))
        .expect("datasource")
    }

    #[test]
    fn failures_of_a_deleted_datasource_are_forgotten() {
        let failures = Failures::default();
        for name in ["a", "b"] {
            failures.next_retry(ObjectRef::from_obj(&datasource(name)));
        }
        failures.observe(&watcher::Event::Delete(datasource("a")));
        assert_eq!(failures.len(), 1);
        // Deleted while the watch was down: the relist no longer has it.
        failures.observe(&watcher::Event::Init);
        failures.observe(&watcher::Event::InitApply(datasource("c")));
        failures.observe(&watcher::Event::InitDone);
        assert!(failures.is_empty());
    }

    /// A client whose API server answers by hand: the status write fails
    /// with `status_code`, every other request succeeds. Returns the
    /// requests made, as `METHOD path`.
    fn scripted_client(status_code: u16, event_code: u16) -> (Client, Arc<Mutex<Vec<String>>>) {
        use http::{Request, Response};
        use kube::client::Body;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let service = tower::service_fn(move |request: Request<Body>| {
            let log = log.clone();
            async move {
                let path = request.uri().path().to_owned();
                let line = format!("{} {path}", request.method());
                log.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                let (code, body) = if path.ends_with("/status") && status_code >= 400 {
                    (
                        status_code,
                        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "scripted", "reason": "InternalError", "code": status_code}),
                    )
                } else if path.contains("/events") {
                    (
                        event_code,
                        serde_json::json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "shop"}, "eventTime": "2026-01-01T00:00:00.000000Z", "reason": "x"}),
                    )
                } else if path.contains("/configmaps/") {
                    (
                        200,
                        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a-sidekey", "namespace": "shop"}}),
                    )
                } else {
                    (
                        200,
                        serde_json::to_value(datasource("a")).unwrap_or_default(),
                    )
                };
                let response = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&body).unwrap_or_default()))
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(response)
            }
        });
        (Client::new(service, "shop"), seen)
    }

    fn events_posted(seen: &Mutex<Vec<String>>) -> usize {
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.iter()
            .filter(|l| l.starts_with("POST") && l.contains("/events"))
            .count()
    }

    #[tokio::test]
    async fn a_failed_status_write_publishes_no_event_so_retries_do_not_repeat_it() {
        let (client, seen) = scripted_client(500, 201);
        let ctx = Arc::new(Context::new(client, Metrics::default(), "test"));
        for _ in 0..3 {
            let result = reconcile(Arc::new(datasource("a")), ctx.clone()).await;
            assert!(result.is_err(), "the status write failed: {result:?}");
        }
        let requests = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert!(
            requests.iter().any(|l| l.ends_with("/status")),
            "{requests:?}"
        );
        assert_eq!(events_posted(&seen), 0, "{requests:?}");
    }

    #[tokio::test]
    async fn an_event_that_cannot_be_published_does_not_fail_the_reconcile() {
        let (client, seen) = scripted_client(200, 500);
        let ctx = Arc::new(Context::new(client, Metrics::default(), "test"));
        let result = reconcile(Arc::new(datasource("a")), ctx).await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(events_posted(&seen), 1);
    }

    #[test]
    fn retries_wait_from_one_second_doubling_up_to_five_minutes() {
        let failures = Failures::default();
        let key = ObjectRef::from_obj(&datasource("a"));
        let waits: Vec<(u32, u64)> = (0..12)
            .map(|_| failures.next_retry(key.clone()))
            .map(|(n, d)| (n, d.as_secs()))
            .collect();
        let expected: Vec<(u32, u64)> = (1..=12)
            .zip([1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300])
            .collect();
        assert_eq!(waits, expected);
        // Another datasource starts from the beginning.
        let other = ObjectRef::from_obj(&datasource("b"));
        assert_eq!(failures.next_retry(other), (1, MIN_BACKOFF));
    }

    #[test]
    fn slim_drops_field_history_and_kubectls_manifest_copy_only() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
        let mut ds: ApiDatasource = serde_saphyr::from_str(
            "apiVersion: sidekey.dev/v1alpha1\nkind: ApiDatasource\n\
             metadata: {name: payments, namespace: shop}\nspec: {url: 'https://h'}\n",
        )
        .expect("manifest");
        ds.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        ds.metadata.annotations = Some(
            [
                (LAST_APPLIED.to_owned(), "{...}".to_owned()),
                ("team".to_owned(), "shop".to_owned()),
            ]
            .into(),
        );
        ds.metadata.generation = Some(4);
        slim(&mut ds);
        assert_eq!(ds.metadata.managed_fields, None);
        let annotations = ds.metadata.annotations.as_ref().expect("annotations");
        assert_eq!(annotations.len(), 1);
        assert_eq!(annotations["team"], "shop");
        assert_eq!(ds.metadata.generation, Some(4));
    }
}
