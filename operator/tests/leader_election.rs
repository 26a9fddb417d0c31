//! Operator processes elect one leader on a Lease: only the leader
//! reconciles, a standby takes over promptly when the leader stops (at once
//! after a graceful stop, as soon as the claim expires after a kill),
//! candidates racing for one Lease never both lead, and a leader whose
//! Lease is taken stops reconciling and stands by. Each test uses its own namespace and Lease.
//!
//! Needs the test bed: run with `scripts/test`, or set
//! SIDEKEY_TEST_KUBECONFIG (see `scripts/kube-testbed.sh`).

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use support::{Bed, Operator, OperatorOptions, WAIT};

/// Short enough for a test, long enough for several renewals per term.
const LEASE_SECONDS: u64 = 5;
const RENEW_DEADLINE_SECONDS: u64 = 3;
const RETRY_PERIOD_SECONDS: u64 = 1;
/// Beyond the lease duration, what a takeover after SIGKILL may take: the
/// claim, then the new leader's first list and reconcile, on a busy
/// 2-core machine.
const KILL_MARGIN: Duration = Duration::from_secs(1);
/// How long the race tests watch the winner keep the Lease alone: two
/// terms, so a second claimant would have had time to say it leads, and a
/// winner whose claim was overwritten to find out at its renewal.
const RACE_WATCH: Duration = Duration::from_secs(2 * LEASE_SECONDS);

fn options(identity: &str, lease: &str) -> OperatorOptions {
    OperatorOptions {
        identity: identity.into(),
        lease_name: lease.into(),
        lease_duration: LEASE_SECONDS,
        lease_renew_deadline: RENEW_DEADLINE_SECONDS,
        lease_retry_period: RETRY_PERIOD_SECONDS,
        ..Default::default()
    }
}

fn leases(bed: &Bed) -> Api<Lease> {
    Api::namespaced(bed.client.clone(), &bed.ns)
}

async fn holder(bed: &Bed, lease: &str) -> Option<String> {
    leases(bed)
        .get_opt(lease)
        .await
        .ok()??
        .spec?
        .holder_identity
}

/// Starts two operators and returns (leader, standby) once one holds the
/// Lease and the other has joined the election as a standby.
async fn leader_and_standby(
    bed: &Bed,
    a: OperatorOptions,
    b: OperatorOptions,
) -> (Operator, Operator) {
    let lease = a.lease_name.clone();
    let a = bed.start_operator(a);
    let b = bed.start_operator(b);
    let leader = sidekey_tests::wait_for("a holder of the Lease", WAIT, || async {
        holder(bed, &lease).await
    })
    .await;
    let (leader, standby) = if leader == a.identity { (a, b) } else { (b, a) };
    sidekey_tests::wait_for("the standby to join the election", WAIT, || async {
        standby
            .logs()
            .contains("waiting to become leader")
            .then_some(())
    })
    .await;
    (leader, standby)
}

fn became_leader(op: &Operator) -> bool {
    op.logs().contains("became leader")
}

#[tokio::test]
async fn standby_reconciles_within_the_lease_duration_after_the_leader_is_killed() {
    let bed = Bed::new("op-le-kill").await;
    let lease = "le-kill";
    let (mut leader, standby) = leader_and_standby(
        &bed,
        options("operator-a", lease),
        options("operator-b", lease),
    )
    .await;
    bed.create_datasource("metadata: { name: before }\nspec: { url: 'https://h' }\n")
        .await;
    bed.wait_ready("before", "True", "Reconciled").await;
    assert!(became_leader(&leader), "{}", leader.logs());
    assert!(
        !became_leader(&standby),
        "standby reconciles too:\n{}",
        standby.logs()
    );

    leader.kill().await;
    let killed = Instant::now();
    bed.create_datasource("metadata: { name: after }\nspec: { url: 'https://h' }\n")
        .await;
    bed.wait_ready("after", "True", "Reconciled").await;
    let took = killed.elapsed();
    eprintln!("standby reconciled {took:?} after the leader was killed");
    assert_eq!(
        holder(&bed, lease).await.as_deref(),
        Some(standby.identity.as_str())
    );
    assert!(became_leader(&standby), "{}", standby.logs());
    let bound = Duration::from_secs(LEASE_SECONDS) + KILL_MARGIN;
    assert!(
        took <= bound,
        "standby reconciled {took:?} after the kill, more than {bound:?}"
    );
}

#[tokio::test]
async fn leader_stopped_with_sigterm_releases_the_lease_and_the_standby_reconciles_at_once() {
    let bed = Bed::new("op-le-term").await;
    let lease = "le-term";
    // The default timing (15 s lease, renewed every 2 s): the claim always
    // has at least 13 s left, so a standby that waited for it to expire
    // instead of seeing it released would miss the bound below.
    let timing = |identity: &str| OperatorOptions {
        lease_duration: 15,
        lease_renew_deadline: 10,
        lease_retry_period: 2,
        ..options(identity, lease)
    };
    let (mut leader, standby) =
        leader_and_standby(&bed, timing("operator-a"), timing("operator-b")).await;
    // Let the standby settle, as it is for most of a leader's term.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let stopping = Instant::now();
    let status = leader.terminate().await;
    assert!(status.success(), "graceful stop exits 0, got {status}");
    assert!(
        leader.logs().contains("released the leader Lease"),
        "{}",
        leader.logs()
    );
    bed.create_datasource("metadata: { name: after }\nspec: { url: 'https://h' }\n")
        .await;
    bed.wait_ready("after", "True", "Reconciled").await;
    let took = stopping.elapsed();
    eprintln!("standby reconciled {took:?} after SIGTERM to the leader");
    assert_eq!(
        holder(&bed, lease).await.as_deref(),
        Some(standby.identity.as_str())
    );
    assert!(became_leader(&standby), "{}", standby.logs());
    let bound = Duration::from_secs(5);
    assert!(
        took <= bound,
        "standby reconciled {took:?} after SIGTERM, more than {bound:?} (lease 15 s)"
    );
}

/// Starts `n` candidates at once on `lease`.
fn candidates(bed: &Bed, lease: &str, n: usize) -> Vec<Operator> {
    (0..n)
        .map(|i| bed.start_operator(options(&format!("operator-{i}"), lease)))
        .collect()
}

/// Waits for one of `candidates` to lead, then checks for `RACE_WATCH`
/// that it alone holds the Lease and says it leads; returns its identity.
async fn exactly_one_leads(bed: &Bed, lease: &str, candidates: &[Operator]) -> String {
    let all_logs = || {
        candidates
            .iter()
            .map(|c| format!("---- {} ----\n{}", c.identity, c.logs()))
            .collect::<String>()
    };
    let leaders = || {
        candidates
            .iter()
            .filter(|c| became_leader(c))
            .map(|c| c.identity.clone())
            .collect::<Vec<_>>()
    };
    let winner = sidekey_tests::wait_for("a candidate to lead", WAIT, || async {
        leaders().into_iter().next()
    })
    .await;

    let until = Instant::now() + RACE_WATCH;
    while Instant::now() < until {
        assert_eq!(
            leaders(),
            std::slice::from_ref(&winner),
            "more than one candidate led:\n{}",
            all_logs()
        );
        assert_eq!(
            holder(bed, lease).await.as_deref(),
            Some(winner.as_str()),
            "the Lease changed hands:\n{}",
            all_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!all_logs().contains("lost leadership"), "{}", all_logs());
    winner
}

#[tokio::test]
async fn three_candidates_for_a_missing_lease_elect_exactly_one_leader() {
    let bed = Bed::new("op-le-race-new").await;
    let lease = "le-race-new";
    exactly_one_leads(&bed, lease, &candidates(&bed, lease, 3)).await;
}

#[tokio::test]
async fn three_candidates_for_an_expired_lease_elect_exactly_one_leader() {
    let bed = Bed::new("op-le-race-old").await;
    let lease = "le-race-old";
    // A leader that went away an hour ago, as after a whole-cluster stop.
    let an_hour_ago = Timestamp::now() - SignedDuration::from_hours(1);
    let expired = Lease {
        metadata: ObjectMeta {
            name: Some(lease.into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("departed".into()),
            lease_duration_seconds: Some(LEASE_SECONDS as i32),
            acquire_time: Some(MicroTime(an_hour_ago)),
            renew_time: Some(MicroTime(an_hour_ago)),
            lease_transitions: Some(0),
            ..Default::default()
        }),
    };
    leases(&bed)
        .create(&PostParams::default(), &expired)
        .await
        .expect("creating the expired Lease");
    exactly_one_leads(&bed, lease, &candidates(&bed, lease, 3)).await;
}

#[tokio::test]
async fn three_standbys_of_a_killed_leader_elect_exactly_one_successor() {
    let bed = Bed::new("op-le-race-kill").await;
    let lease = "le-race-kill";
    let mut standbys = candidates(&bed, lease, 4);
    let first = sidekey_tests::wait_for("a candidate to lead", WAIT, || async {
        standbys.iter().position(became_leader)
    })
    .await;
    let mut leader = standbys.remove(first);
    sidekey_tests::wait_for("the standbys to join the election", WAIT, || async {
        standbys
            .iter()
            .all(|c| c.logs().contains("waiting to become leader"))
            .then_some(())
    })
    .await;
    // The standbys see the claim expire at the same moment and race for it.
    leader.kill().await;
    exactly_one_leads(&bed, lease, &standbys).await;
}

#[tokio::test]
async fn leader_whose_lease_is_taken_stops_reconciling_and_leads_again_once_it_is_free() {
    let bed = Bed::new("op-le-lost").await;
    let lease = "le-lost";
    let mut leader = bed.start_operator(options("operator-a", lease));
    // Both sides agree: the Lease names it, and it knows (a Lease taken
    // before the operator saw itself as holder would just make it a standby).
    sidekey_tests::wait_for("operator-a to hold the Lease and lead", WAIT, || async {
        let held = holder(&bed, lease).await.as_deref() == Some("operator-a");
        (held && became_leader(&leader)).then_some(())
    })
    .await;

    // Someone else claims the Lease, as a replica would after a partition.
    let steal = serde_json::json!({"spec": {
        "holderIdentity": "intruder",
        "renewTime": MicroTime(Timestamp::now()),
        "leaseDurationSeconds": 3600,
    }});
    leases(&bed)
        .patch(lease, &PatchParams::default(), &Patch::Merge(&steal))
        .await
        .expect("taking the Lease");
    sidekey_tests::wait_for("operator-a to stop reconciling", WAIT, || async {
        leader
            .logs()
            .contains("stopped reconciling: no longer the leader")
            .then_some(())
    })
    .await;
    assert!(
        leader.logs().contains("lost leadership"),
        "{}",
        leader.logs()
    );

    // A standby now, in the same process: a new datasource waits.
    assert!(leader.is_running(), "{}", leader.logs());
    bed.create_datasource("metadata: { name: while-standing-by }\nspec: { url: 'https://h' }\n")
        .await;
    tokio::time::sleep(Duration::from_secs(2 * RETRY_PERIOD_SECONDS + 1)).await;
    let ds = bed
        .datasources()
        .get("while-standing-by")
        .await
        .expect("get");
    assert!(
        support::ready(&ds).is_none(),
        "a standby reconciled: {:?}",
        ds.status
    );

    // The intruder lets go: the same process leads again and catches up.
    let release = serde_json::json!({"spec": {"holderIdentity": null}});
    leases(&bed)
        .patch(lease, &PatchParams::default(), &Patch::Merge(&release))
        .await
        .expect("releasing the Lease");
    bed.wait_ready("while-standing-by", "True", "Reconciled")
        .await;
    assert_eq!(holder(&bed, lease).await.as_deref(), Some("operator-a"));
    assert_eq!(leader.logs().matches("became leader").count(), 2);
    assert!(leader.is_running(), "{}", leader.logs());
}

/// A TCP proxy in front of the API server that can stop passing bytes,
/// both ways and for new connections too: to the operator, an API server
/// that does not answer.
struct PausableProxy {
    addr: std::net::SocketAddr,
    paused: tokio::sync::watch::Sender<bool>,
}

impl PausableProxy {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (paused, watching) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((app, _)) = listener.accept().await {
                let mut gate = watching.clone();
                tokio::spawn(async move {
                    let _ = gate.wait_for(|p| !*p).await;
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (app_read, app_write) = app.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pipe(app_read, server_write, gate.clone()),
                        pipe(server_read, app_write, gate),
                    );
                });
            }
        });
        Self { addr, paused }
    }

    fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }
}

/// Copies `from` to `to`, holding each chunk while the gate is closed.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut gate: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if gate.wait_for(|p| !*p).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

async fn renew_time(bed: &Bed, lease: &str) -> Option<MicroTime> {
    leases(bed).get_opt(lease).await.ok()??.spec?.renew_time
}

#[tokio::test]
async fn the_leader_keeps_leading_through_a_five_second_api_server_pause() {
    let bed = Bed::new("op-le-pause").await;
    let lease = "le-pause";
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = PausableProxy::start(bed.api_server()).await;
    let kubeconfig = bed.kubeconfig_through(proxy.addr, dir.path());
    // The default timing: a 15 s lease.
    let leader = bed.start_operator(OperatorOptions {
        identity: "operator-a".into(),
        lease_name: lease.into(),
        kubeconfig: Some(kubeconfig),
        ..Default::default()
    });
    sidekey_tests::wait_for("operator-a to lead", WAIT, || async {
        (holder(&bed, lease).await.as_deref() == Some("operator-a")).then_some(())
    })
    .await;
    // Pause right before a renewal would be due under the old timing
    // (renewed 10 s after the last), long enough to pass its deadline.
    let seen = renew_time(&bed, lease).await;
    sidekey_tests::wait_for("a renewal", WAIT, || async {
        (renew_time(&bed, lease).await != seen).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    proxy.pause(true);
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.pause(false);
    // Renewals go on, from the same process, which still leads.
    let before = renew_time(&bed, lease).await;
    sidekey_tests::wait_for("a renewal after the pause", WAIT, || async {
        (renew_time(&bed, lease).await != before).then_some(())
    })
    .await;
    assert_eq!(holder(&bed, lease).await.as_deref(), Some("operator-a"));
    let logs = leader.logs();
    assert!(!logs.contains("lost leadership"), "{logs}");
    assert!(became_leader(&leader), "{logs}");
}
