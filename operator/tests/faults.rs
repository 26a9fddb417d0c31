//! Faults of the cluster, with nothing lost (issue 12): the API server
//! stopped for 30 s while two replicas run, and the operator killed with
//! SIGKILL at random points of its work, 20 times. Each test checks the end
//! state against what was asked, and that nothing was written twice.
//!
//! Needs the test bed: run with `scripts/test`, or set
//! SIDEKEY_TEST_KUBECONFIG (see `scripts/kube-testbed.sh`).

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use sidekey_crds::ResolvedDatasource;
use sidekey_crds::names::CONFIGMAP_KEY;
use support::{Bed, Operator, OperatorOptions, ready};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// After a fault, how long the operator may take to catch up: a leader
/// that lost its term campaigns again with a backoff of up to 5 s, then
/// lists everything anew, on a busy 2-core machine.
const RECOVER: Duration = Duration::from_secs(60);

/// A TCP proxy in front of the API server that can be stopped as the
/// server's process would be: its port closes (new connections are
/// refused) and every open connection is closed. Started again on the
/// same port.
struct StoppableApiServer {
    addr: SocketAddr,
    upstream: SocketAddr,
    accept: Option<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
}

impl StoppableApiServer {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut proxy = Self {
            addr: listener.local_addr().expect("addr"),
            upstream,
            accept: None,
            connections: Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: TcpListener) {
        let upstream = self.upstream;
        let connections = self.connections.clone();
        self.accept = Some(tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let pipe = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                connections
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(pipe.abort_handle());
            }
        }));
    }

    fn stop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        for pipe in self
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            pipe.abort();
        }
    }

    async fn restart(&mut self) {
        // The aborted accept task drops its listener on its next poll.
        let listener = sidekey_tests::wait_for("the proxy's port again", RECOVER, || async {
            TcpListener::bind(self.addr).await.ok()
        })
        .await;
        self.serve(listener);
    }
}

impl Drop for StoppableApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn manifest(name: &str, url: &str) -> String {
    format!("metadata: {{ name: {name} }}\nspec: {{ url: '{url}' }}\n")
}

/// The URL in the datasource's ConfigMap, if it has one.
async fn configmap_url(bed: &Bed, name: &str) -> Option<String> {
    let cm: ConfigMap = bed
        .configmaps()
        .get_opt(&format!("{name}-sidekey"))
        .await
        .ok()??;
    let resolved = ResolvedDatasource::from_yaml(cm.data?.get(CONFIGMAP_KEY)?).ok()?;
    Some(resolved.url.to_string())
}

async fn resource_version<K>(api: &Api<K>, name: &str) -> String
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get(name)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .meta()
        .resource_version
        .clone()
        .expect("resourceVersion")
}

async fn leader_gauge(op: &Operator) -> Option<u32> {
    let (_, body) = support::http_get(op.admin_addr().await, "/metrics").await?;
    body.lines()
        .find_map(|l| l.strip_prefix("sidekey_operator_leader "))
        .and_then(|v| v.trim().parse().ok())
}

fn panicked(op: &Operator) -> bool {
    op.logs().contains("panicked")
}

#[tokio::test]
async fn an_api_server_stopped_for_30_s_loses_no_change_and_writes_nothing_twice() {
    let bed = Bed::new("op-fault-stop").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut api_server = StoppableApiServer::start(bed.api_server()).await;
    let kubeconfig = bed.kubeconfig_through(api_server.addr, dir.path());
    // Two replicas with the default timing (a 15 s Lease, a 10 s renew
    // deadline): the 30 s outage outlasts both.
    let options = |identity: &str| OperatorOptions {
        identity: identity.into(),
        lease_name: "faults".into(),
        kubeconfig: Some(kubeconfig.clone()),
        ..Default::default()
    };
    let mut a = bed.start_operator(options("operator-a"));
    let mut b = bed.start_operator(options("operator-b"));
    for name in ["steady", "edited", "removed"] {
        bed.create_datasource(&manifest(name, &format!("https://h/{name}")))
            .await;
    }
    for name in ["steady", "edited", "removed"] {
        bed.wait_ready(name, "True", "Reconciled").await;
    }
    let steady_cm = resource_version(&bed.configmaps(), "steady-sidekey").await;
    let steady_ds = resource_version(&bed.datasources(), "steady").await;
    let steady_events = bed.events_about("steady").await.len();

    api_server.stop();
    let stopped = Instant::now();
    // What people change meanwhile, straight to the API server.
    bed.datasources()
        .patch(
            "edited",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"url": "https://h/edited-while-down"}})),
        )
        .await
        .expect("editing");
    bed.datasources()
        .delete("removed", &DeleteParams::default())
        .await
        .expect("deleting");
    bed.create_datasource(&manifest("created", "https://h/created"))
        .await;
    tokio::time::sleep_until((stopped + Duration::from_secs(30)).into()).await;
    // Both replicas are still running: losing the Lease is not fatal.
    assert!(a.is_running(), "operator-a exited:\n{}", a.logs());
    assert!(b.is_running(), "operator-b exited:\n{}", b.logs());
    api_server.restart().await;
    let restarted = Instant::now();

    // Every change made while it was down is reconciled afterwards.
    sidekey_tests::wait_for("the edit in its ConfigMap", RECOVER, || async {
        (configmap_url(&bed, "edited").await.as_deref() == Some("https://h/edited-while-down"))
            .then_some(())
    })
    .await;
    eprintln!("caught up {:?} after the restart", restarted.elapsed());
    let created = bed.wait_ready("created", "True", "Reconciled").await;
    assert_eq!(
        configmap_url(&bed, "created").await.as_deref(),
        Some("https://h/created")
    );
    assert_eq!(ready(&created).and_then(|c| c.observed_generation), Some(1));
    let edited = bed.wait_ready("edited", "True", "Reconciled").await;
    assert_eq!(ready(&edited).and_then(|c| c.observed_generation), Some(2));
    sidekey_tests::wait_for(
        "the removed datasource's ConfigMap to go",
        RECOVER,
        || async { configmap_url(&bed, "removed").await.is_none().then_some(()) },
    )
    .await;

    // Nothing unchanged was written again: not its ConfigMap, not its
    // status, no new Event.
    assert_eq!(
        resource_version(&bed.configmaps(), "steady-sidekey").await,
        steady_cm
    );
    assert_eq!(
        resource_version(&bed.datasources(), "steady").await,
        steady_ds
    );
    assert_eq!(bed.events_about("steady").await.len(), steady_events);

    // Exactly one of the two leads, and the Lease names it.
    let leases: Api<Lease> = Api::namespaced(bed.client.clone(), &bed.ns);
    let (holder, gauges) = sidekey_tests::wait_for("exactly one leader", RECOVER, || async {
        let holder = leases.get("faults").await.ok()?.spec?.holder_identity?;
        let gauges = (leader_gauge(&a).await?, leader_gauge(&b).await?);
        (gauges.0 + gauges.1 == 1).then_some((holder, gauges))
    })
    .await;
    let leading = if gauges.0 == 1 { &a } else { &b };
    assert_eq!(holder, leading.identity, "the Lease names another");
    for op in [&mut a, &mut b] {
        assert!(op.is_running(), "{} exited:\n{}", op.identity, op.logs());
        assert!(!panicked(op), "{}", op.logs());
    }
    // The term ended by the outage was given up, not kept past its deadline.
    assert!(
        a.logs().contains("lost leadership") || b.logs().contains("lost leadership"),
        "a: {}\nb: {}",
        a.logs(),
        b.logs()
    );
}

/// A small deterministic generator (xorshift64*): the seed is printed, so
/// a failing sequence of kills can be replayed with SIDEKEY_FAULT_SEED.
struct Random(u64);

impl Random {
    fn from_env() -> Self {
        let seed = std::env::var("SIDEKEY_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
            | 1;
        eprintln!("SIDEKEY_FAULT_SEED={seed}");
        Self(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// What the datasources should be: name → URL.
type Wanted = BTreeMap<String, String>;

/// Checks the end state: every wanted datasource is Ready for its latest
/// generation with its URL in its ConfigMap, and no other ConfigMap of
/// ours is left.
async fn settled(bed: &Bed, wanted: &Wanted) -> Result<(), String> {
    for (name, url) in wanted {
        let ds = bed
            .datasources()
            .get(name)
            .await
            .map_err(|e| format!("{name}: {e}"))?;
        let condition = ready(&ds).ok_or(format!("{name}: no Ready condition"))?;
        if condition.status != "True" || condition.observed_generation != ds.metadata.generation {
            return Err(format!("{name}: {condition:?}"));
        }
        let got = configmap_url(bed, name).await;
        if got.as_deref() != Some(url.as_str()) {
            return Err(format!("{name}: ConfigMap has {got:?}, wanted {url}"));
        }
    }
    let configmaps = bed
        .configmaps()
        .list(&kube::api::ListParams::default().labels(&format!(
            "{}=sidekey",
            sidekey_crds::names::MANAGED_BY_LABEL
        )))
        .await
        .map_err(|e| e.to_string())?;
    let extra: Vec<String> = configmaps
        .items
        .iter()
        .filter_map(|cm| cm.metadata.name.clone())
        .filter(|n| {
            n.strip_suffix("-sidekey")
                .is_none_or(|ds| !wanted.contains_key(ds))
        })
        .collect();
    if extra.is_empty() {
        Ok(())
    } else {
        Err(format!("ConfigMaps left over: {extra:?}"))
    }
}

#[tokio::test]
async fn the_operator_killed_at_random_points_20_times_always_ends_right() {
    let bed = Bed::new("op-fault-kill").await;
    let mut random = Random::from_env();
    // One identity, as the restarted container of one pod keeps its name:
    // each new process takes its predecessor's claim at once.
    let options = OperatorOptions {
        lease_name: "faults-kill".into(),
        lease_duration: 5,
        lease_renew_deadline: 3,
        lease_retry_period: 1,
        ..Default::default()
    };
    let names: Vec<String> = (0..8).map(|i| format!("ds-{i}")).collect();
    let mut wanted = Wanted::new();
    let mut op = bed.start_operator(options.clone());
    for round in 0..20 {
        // A batch of changes: each datasource created, edited, deleted or
        // left alone, at random.
        for name in &names {
            let url = format!("https://h/{name}/round-{round}");
            match (wanted.contains_key(name), random.below(4)) {
                (false, 0 | 1) => {
                    bed.create_datasource(&manifest(name, &url)).await;
                    wanted.insert(name.clone(), url);
                }
                (true, 0) => {
                    bed.datasources()
                        .delete(name, &DeleteParams::default())
                        .await
                        .expect("deleting");
                    // Wait for it to go, so that a create of the same name
                    // in a later round is a new object.
                    sidekey_tests::wait_for("the deletion", RECOVER, || async {
                        bed.datasources()
                            .get_opt(name)
                            .await
                            .ok()?
                            .is_none()
                            .then_some(())
                    })
                    .await;
                    wanted.remove(name);
                }
                (true, 1 | 2) => {
                    bed.datasources()
                        .patch(
                            name,
                            &PatchParams::default(),
                            &Patch::Merge(serde_json::json!({"spec": {"url": url}})),
                        )
                        .await
                        .expect("editing");
                    wanted.insert(name.clone(), url);
                }
                _ => {}
            }
        }
        // SIGKILL somewhere in the work those changes caused (or before
        // it started, or after it ended: all are points worth killing at).
        tokio::time::sleep(Duration::from_millis(random.below(1500))).await;
        op.kill().await;
        assert!(!panicked(&op), "{}", op.logs());
        // The kubelet restarts it.
        op = bed.start_operator(options.clone());
        let mut last = String::new();
        let deadline = Instant::now() + RECOVER;
        loop {
            match settled(&bed, &wanted).await {
                Ok(()) => break,
                Err(why) if Instant::now() < deadline => {
                    last = why;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(why) => panic!(
                    "round {round}: not settled after {RECOVER:?}: {why} (before: {last})\n{}",
                    op.logs()
                ),
            }
        }
    }
    assert!(!panicked(&op), "{}", op.logs());
}
