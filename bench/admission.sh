#!/usr/bin/env bash
# Admission latency of the webhook, everything on 127.0.0.1: a real
# kube-apiserver (scripts/kube-testbed.sh), the operator (release build)
# with its webhook, five ApiDatasources, and wrk posting the AdmissionReview
# of a pod that names all five to the webhook, as the API server does.
#
# Prints p50/p90/p99 at the webhook (wrk, one connection, so every figure
# is one admission's latency; then four connections), the operator's own
# histogram, and writes a Markdown table to bench/admission-results.md.
#
# Knobs (environment): ADMBENCH_SECONDS (10), ADMBENCH_RESULTS (file to
# write; default bench/admission-results.md), SIDEKEY_OPERATOR_BIN (skip the
# build), SIDEKEY_TEST_KUBECONFIG (use a running test bed instead of
# starting one).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECONDS_RUN=${ADMBENCH_SECONDS:-10}
RESULTS=${ADMBENCH_RESULTS-$ROOT/bench/admission-results.md}
NS=admbench

log() { printf '[admbench] %s\n' "$*" >&2; }
die() { printf '[admbench] error: %s\n' "$*" >&2; exit 1; }

command -v wrk >/dev/null || {
    log "apt-get install wrk"
    apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
}
for tool in kubectl python3 curl wrk; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done

if [[ -n ${SIDEKEY_OPERATOR_BIN:-} ]]; then
    OP_BIN=$SIDEKEY_OPERATOR_BIN
else
    log "building sidekey-operator (release)"
    (cd "$ROOT" && cargo build --release -q -p sidekey-operator)
    OP_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/sidekey-operator
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/sidekey-admbench.XXXXXX")
bed=
op_pid=
cleanup() {
    [[ -n $op_pid ]] && kill "$op_pid" 2>/dev/null && wait "$op_pid" 2>/dev/null
    [[ -n $bed ]] && "$ROOT/scripts/kube-testbed.sh" stop "$bed" >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -n ${SIDEKEY_TEST_KUBECONFIG:-} ]]; then
    KUBECONFIG=$SIDEKEY_TEST_KUBECONFIG
else
    "$ROOT/scripts/kube-testbed.sh" build
    bed=$work/bed
    mkdir -p "$bed"
    KUBECONFIG=$(SIDEKEY_TESTBED_CRDS=$ROOT/crds/apidatasource.yaml \
        "$ROOT/scripts/kube-testbed.sh" start "$bed" | tail -n 1)
fi
export KUBECONFIG
k() { kubectl --kubeconfig "$KUBECONFIG" "$@"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

log "namespace $NS, five datasources"
k delete namespace "$NS" --ignore-not-found --wait=true >/dev/null
k create namespace "$NS" >/dev/null
k label namespace "$NS" "kubernetes.io/metadata.name=$NS" --overwrite >/dev/null
k -n "$NS" create secret generic bench --from-literal=token=t0ken \
    --from-literal=key=0123456789abcdef0123456789abcdef >/dev/null
for i in 1 2 3 4 5; do
    cat <<EOF
---
apiVersion: sidekey.dev/v1alpha1
kind: ApiDatasource
metadata: { name: api$i, namespace: $NS }
spec:
  url: https://api$i.example.internal/v1
  signature: { secretRef: { name: bench, key: key } }
  authentication:
    type: BearerToken
    bearerToken: { tokenSecretRef: { name: bench, key: token } }
EOF
done | k apply -f - >/dev/null

port=$(free_port)
admin=$(free_port)
log "operator with its webhook on 127.0.0.1:$port"
RUST_LOG=warn "$OP_BIN" --namespace "$NS" --lease-namespace "$NS" \
    --admin-listen "127.0.0.1:$admin" \
    --webhook-listen "127.0.0.1:$port" --webhook-url "https://127.0.0.1:$port" \
    --webhook-configuration "sidekey-$NS" >"$work/operator.log" 2>&1 &
op_pid=$!
for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && break
    kill -0 "$op_pid" 2>/dev/null || { cat "$work/operator.log" >&2; die "operator exited"; }
    sleep 0.1
done
curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null || die "operator not ready"
for i in 1 2 3 4 5; do
    k -n "$NS" wait --for=condition=Ready "apidatasource/api$i" --timeout=60s >/dev/null
done

# The review of a Deployment's pod (generateName) naming all five.
python3 - "$NS" >"$work/review.json" <<'EOF'
import json, sys
ns = sys.argv[1]
pod = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"generateName": "shop-7d9f-", "namespace": ns,
                    "labels": {"app": "shop", "sidekey.dev/inject": "true"},
                    "annotations": {"sidekey.dev/datasources": "api1,api2,api3,api4,api5"}},
       "spec": {"containers": [{"name": "app", "image": "shop:1",
                                "env": [{"name": "LOG", "value": "info"}]}]}}
print(json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
    "request": {"uid": "bench", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": ns, "operation": "CREATE",
                "userInfo": {"username": "bench"}, "object": pod, "dryRun": False}}))
EOF
check=$(curl -sk --data-binary @"$work/review.json" -H 'Content-Type: application/json' \
    "https://127.0.0.1:$port/mutate")
grep -q '"patch"' <<<"$check" || die "the webhook did not inject: $check"

cat >"$work/post.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$work/review.json", "r")
wrk.body = f:read("*a")
f:close()
EOF

run_wrk() { # connections
    wrk -t1 -c"$1" -d"${SECONDS_RUN}s" --latency -s "$work/post.lua" \
        "https://127.0.0.1:$port/mutate"
}
pct() { awk -v p="$1" '$1==p {print $2}'; }
log "wrk, 1 connection, ${SECONDS_RUN}s"
one=$(run_wrk 1)
log "wrk, 4 connections, ${SECONDS_RUN}s"
four=$(run_wrk 4)
rps() { awk '/Requests\/sec/ {print $2}'; }
errors() { grep -E 'Non-2xx|Socket errors' || echo none; }

metrics=$(curl -s "http://127.0.0.1:$admin/metrics")
count=$(awk '/^sidekey_operator_admission_duration_seconds_count/ {print $2}' <<<"$metrics")
under_10ms=$(awk '/^sidekey_operator_admission_duration_seconds_bucket\{le="0.01"\}/ {print $2}' <<<"$metrics")
rss=$(awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$op_pid/status")

table=$(cat <<EOF
## Admission benchmark

$(date -u +%Y-%m-%d) · $(nproc) cores · kube-apiserver $(k version -o json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])') on 127.0.0.1 ·
sidekey $(git -C "$ROOT" rev-parse --short HEAD), release build · load average
$(cut -d' ' -f1-3 /proc/loadavg). Produced by \`bench/admission.sh\`.

AdmissionReview of a pod (generateName) naming 5 datasources (BearerToken +
signature), posted by wrk over HTTPS (TLS 1.3, keep-alive) to the webhook,
as the API server posts it; datasources from the webhook's watch cache.

| at the webhook | 1 connection | 4 connections |
| --- | ---: | ---: |
| p50 | $(pct 50% <<<"$one") | $(pct 50% <<<"$four") |
| p90 | $(pct 90% <<<"$one") | $(pct 90% <<<"$four") |
| p99 | **$(pct 99% <<<"$one")** | $(pct 99% <<<"$four") |
| admissions per second | $(rps <<<"$one") | $(rps <<<"$four") |
| errors | $(errors <<<"$one") | $(errors <<<"$four") |

The operator's own histogram (\`sidekey_operator_admission_duration_seconds\`,
decode to answer, without TLS and HTTP): $under_10ms of $count admissions
took 10 ms or less. Operator RSS after the run: $rss.
EOF
)
printf '%s\n' "$table"
if [[ -n $RESULTS ]]; then
    printf '%s\n' "$table" >"$RESULTS"
    log "written to $RESULTS"
fi
