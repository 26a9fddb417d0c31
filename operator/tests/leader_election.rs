//! Two operator processes elect one leader on a Lease: only the leader
//! reconciles, the standby takes over when the leader stops, and a leader
//! whose Lease is taken stops. Each test uses its own Lease name.
//!
//! Needs the test bed: run with `scripts/test`, or set
//! SIDEKEY_TEST_KUBECONFIG (see `scripts/kube-testbed.sh`).

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use support::{Bed, Operator, OperatorOptions, WAIT};

/// Short enough for a test, long enough for two renewals per term.
const LEASE_SECONDS: u64 = 5;
const GRACE_SECONDS: u64 = 2;
/// Beyond the lease duration, what a takeover may take: up to 1 s of
/// kube-lease-manager's random wait after clearing an expired claim, then
/// the new leader's first list and reconcile, on a busy 2-core machine.
const TAKEOVER_MARGIN: Duration = Duration::from_secs(5);

fn options(identity: &str, lease: &str) -> OperatorOptions {
    OperatorOptions {
        identity: identity.into(),
        lease_name: lease.into(),
        lease_duration: LEASE_SECONDS,
        lease_grace: GRACE_SECONDS,
        ..Default::default()
    }
}

async fn holder(bed: &Bed, lease: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(bed.client.clone(), &bed.ns);
    leases.get_opt(lease).await.ok()??.spec?.holder_identity
}

/// Starts two operators and returns (leader, standby) once one holds it.
async fn leader_and_standby(bed: &Bed, lease: &str) -> (Operator, Operator) {
    let a = bed.start_operator(options("operator-a", lease));
    let b = bed.start_operator(options("operator-b", lease));
    let leader = sidekey_tests::wait_for("a holder of the Lease", WAIT, || async {
        holder(bed, lease).await
    })
    .await;
    if leader == a.identity { (a, b) } else { (b, a) }
}

fn became_leader(op: &Operator) -> bool {
    op.logs().contains("became leader")
}

#[tokio::test]
async fn standby_reconciles_within_the_lease_duration_after_the_leader_is_killed() {
    let bed = Bed::new("op-le-kill").await;
    let lease = "le-kill";
    let (mut leader, standby) = leader_and_standby(&bed, lease).await;
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
    let bound = Duration::from_secs(LEASE_SECONDS) + TAKEOVER_MARGIN;
    assert!(
        took <= bound,
        "standby reconciled {took:?} after the kill, more than {bound:?}"
    );
}

#[tokio::test]
async fn leader_stopped_with_sigterm_releases_the_lease_and_the_standby_takes_over() {
    let bed = Bed::new("op-le-term").await;
    let lease = "le-term";
    let (mut leader, standby) = leader_and_standby(&bed, lease).await;
    let status = leader.terminate().await;
    assert!(status.success(), "graceful stop exits 0, got {status}");
    assert!(
        leader.logs().contains("released the leader Lease"),
        "{}",
        leader.logs()
    );

    sidekey_tests::wait_for("the standby to hold the Lease", WAIT, || async {
        (holder(&bed, lease).await.as_deref() == Some(standby.identity.as_str())).then_some(())
    })
    .await;
    bed.create_datasource("metadata: { name: after }\nspec: { url: 'https://h' }\n")
        .await;
    bed.wait_ready("after", "True", "Reconciled").await;
}

#[tokio::test]
async fn leader_whose_lease_is_taken_stops_reconciling_and_exits() {
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
    let leases: Api<Lease> = Api::namespaced(bed.client.clone(), &bed.ns);
    let steal = serde_json::json!({"spec": {
        "holderIdentity": "intruder",
        "renewTime": MicroTime(Timestamp::now()),
        "leaseDurationSeconds": 3600,
    }});
    leases
        .patch(lease, &PatchParams::default(), &Patch::Merge(&steal))
        .await
        .expect("taking the Lease");

    let status = leader.wait_exit().await;
    assert!(
        !status.success(),
        "losing leadership exits non-zero, got {status}"
    );
    assert!(
        leader.logs().contains("lost leadership"),
        "{}",
        leader.logs()
    );
}
