#!/usr/bin/env bash
# W_* and P*_* variables are set by eval of the helper's output.
# shellcheck disable=SC2154
# Operator benchmark against a real kube-apiserver (scripts/kube-testbed.sh),
# everything on 127.0.0.1:
#  1. time from the first create of 1,000 ApiDatasources (a mix of
#     BearerToken + CA, OAuth2 + signature, ApiKey and Basic, sharing 60
#     Secrets) to all of them Ready=True, seen through a watch;
#  2. the operator's resident memory idle, after the datasources, and after
#     5,000 unrelated 10 KiB Secrets.
# Prints a Markdown table and writes it to bench/operator-results.md.
#
# The operator runs cluster-wide (no --namespace; the realistic deployment,
# and the one that sees every Secret of the cluster), release build, with
# RUST_LOG=warn and its default --concurrency unless OPBENCH_CONCURRENCY says.
#
# Knobs (environment): OPBENCH_DATASOURCES (1000), OPBENCH_SECRETS (5000),
# OPBENCH_SECRET_KIB (10), OPBENCH_CONCURRENCY (operator default, 16),
# OPBENCH_PARALLEL (kubectl processes creating at once, 4),
# OPBENCH_READY_TIMEOUT (s, 300), OPBENCH_RESULTS (file to write; default
# bench/operator-results.md for a run with the default sizes, none
# otherwise), SIDEKEY_OPERATOR_BIN (skip the build), CARGO_TARGET_DIR,
# OPBENCH_DEBUG=1 (all API request kinds, one datasource and the operator's
# memory breakdown on stderr).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N_DS=${OPBENCH_DATASOURCES:-1000}
N_SECRETS=${OPBENCH_SECRETS:-5000}
SECRET_KIB=${OPBENCH_SECRET_KIB:-10}
CONCURRENCY=${OPBENCH_CONCURRENCY:-}
PARALLEL=${OPBENCH_PARALLEL:-4}
READY_TIMEOUT=${OPBENCH_READY_TIMEOUT:-300}
if [[ $N_DS == 1000 && $N_SECRETS == 5000 && $SECRET_KIB == 10 ]]; then
    RESULTS=${OPBENCH_RESULTS-$ROOT/bench/operator-results.md}
else
    RESULTS=${OPBENCH_RESULTS:-}
fi
NS=bench            # datasources, their Secrets and the unrelated Secrets
GROUPS_N=10         # each kind of referenced Secret exists 10 times, shared

log() { printf '[opbench] %s\n' "$*" >&2; }
die() { printf '[opbench] error: %s\n' "$*" >&2; exit 1; }

for tool in kubectl python3 curl openssl ss; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done

# ---------------------------------------------------------------- build
if [[ -n ${SIDEKEY_OPERATOR_BIN:-} ]]; then
    OP_BIN=$SIDEKEY_OPERATOR_BIN
else
    target_dir=${CARGO_TARGET_DIR:-$ROOT/target}
    log "building sidekey-operator (release) into $target_dir"
    (cd "$ROOT" && cargo build --release -q -p sidekey-operator)
    OP_BIN=$target_dir/release/sidekey-operator
fi
[[ -x $OP_BIN ]] || die "$OP_BIN is not executable"

# ---------------------------------------------------------------- clean-up
WORK=$(mktemp -d /tmp/sidekey-opbench.XXXXXX)
TESTBED=$WORK/testbed
OP_PID=
WATCH_PID=
CREATE_PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local p
    for p in "${CREATE_PIDS[@]}" $WATCH_PID; do
        kill "$p" 2>/dev/null || true
    done
    if [[ -n $OP_PID ]] && kill -TERM "$OP_PID" 2>/dev/null; then
        for _ in $(seq 50); do
            kill -0 "$OP_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$OP_PID" 2>/dev/null || true
    fi
    wait 2>/dev/null || true
    "$ROOT/scripts/kube-testbed.sh" stop "$TESTBED" >/dev/null 2>&1 || true
    if [[ $rc -ne 0 && -f $WORK/operator.log ]]; then
        log "operator log (last 20 lines):"
        tail -n 20 "$WORK/operator.log" >&2 || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- helpers
# One Python file for what bash does badly: generating the Lists, watching
# datasources until they are Ready, parsing /metrics.
cat >"$WORK/helper.py" <<'PY'
import base64, http.client, json, os, ssl, sys, time

def env_file(path):
    out = {}
    for line in open(path):
        k, _, v = line.strip().partition("=")
        out[k] = v
    return out

def write_list(path, items):
    with open(path, "w") as f:
        json.dump({"apiVersion": "v1", "kind": "List", "items": items}, f)

def secret(ns, name, string_data=None, data=None):
    s = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
         "metadata": {"name": name, "namespace": ns}}
    if string_data is not None:
        s["stringData"] = string_data
    if data is not None:
        s["data"] = data
    return s

def gen_datasources(ns, n, groups, ca_pem, out_dir, chunks):
    """The referenced Secrets (one List) and n datasources (chunks Lists).
    Of every 10 datasources: 4 BearerToken with a CA, 4 OAuth2 client
    credentials with a signature, 1 ApiKey, 1 Basic."""
    secrets = []
    for g in range(groups):
        secrets += [
            secret(ns, f"token-{g}", {"token": f"bench-token-{g}"}),
            secret(ns, f"ca-{g}", {"ca.crt": ca_pem}),
            secret(ns, f"oauth-{g}", {"client-secret": f"bench-client-secret-{g}"}),
            secret(ns, f"signing-{g}", {"key": f"bench-signing-key-{g:02d}-0123456789abcdef"}),
            secret(ns, f"apikey-{g}", {"key": f"bench-api-key-{g}"}),
            secret(ns, f"basic-{g}", {"password": f"bench-password-{g}"}),
        ]
    write_list(os.path.join(out_dir, "secrets.json"), secrets)
    items = []
    for i in range(n):
        g = (i // 10) % groups
        kind = i % 10
        meta = {"name": f"ds-{i:04d}", "namespace": ns}
        if kind < 4:
            spec = {
                "url": f"https://svc-{i}.bench.internal:8443/",
                "tls": {"caCertificateSecretRef": {"name": f"ca-{g}", "key": "ca.crt"},
                        "trustSystemRoots": False},
                "authentication": {"type": "BearerToken", "bearerToken": {
                    "tokenSecretRef": {"name": f"token-{g}", "key": "token"}}},
            }
        elif kind < 8:
            spec = {
                "url": f"https://payments-{i}.example.com/v2",
                "headers": [{"name": "X-Tenant", "value": f"tenant-{i}"}],
                "queryParameters": [{"name": "region", "value": "eu"}],
                "signature": {"secretRef": {"name": f"signing-{g}", "key": "key"}},
                "authentication": {"type": "OAuth2", "oauth2": {
                    "grantType": "ClientCredentials",
                    "accessTokenUrl": "https://auth.example.com/oauth/token",
                    "clientId": f"client-{i}",
                    "clientSecretRef": {"name": f"oauth-{g}", "key": "client-secret"},
                    "scopes": ["payments.read", "payments.write"],
                    "clientAuthentication": "BasicHeader",
                    "addTokenTo": "Header"}},
            }
        elif kind == 8:
            spec = {
                "url": f"https://crm-{i}.example.com/rest",
                "authentication": {"type": "ApiKey", "apiKey": {
                    "key": "X-Api-Key", "prefix": "Key", "addTo": "Header",
                    "valueSecretRef": {"name": f"apikey-{g}", "key": "key"}}},
            }
        else:
            spec = {
                "url": f"https://inventory-{i}.example.com/api",
                "authentication": {"type": "Basic", "basic": {
                    "username": "shop",
                    "passwordSecretRef": {"name": f"basic-{g}", "key": "password"}}},
            }
        items.append({"apiVersion": "sidekey.dev/v1alpha1", "kind": "ApiDatasource",
                      "metadata": meta, "spec": spec})
    # Interleaved chunks, so every kubectl creates the same mix.
    for c in range(chunks):
        write_list(os.path.join(out_dir, f"ds-{c}.json"), items[c::chunks])

def gen_noise(ns, n, kib, out_dir, chunk):
    """n Secrets of kib KiB of random bytes each, referenced by nothing."""
    for c in range(0, n, chunk):
        items = [secret(ns, f"unrelated-{i:05d}",
                        data={"blob": base64.b64encode(os.urandom(kib * 1024)).decode()})
                 for i in range(c, min(c + chunk, n))]
        write_list(os.path.join(out_dir, f"noise-{c // chunk:03d}.json"), items)

def is_ready(obj):
    st = obj.get("status") or {}
    if st.get("observedGeneration") != obj["metadata"].get("generation"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in st.get("conditions") or [])

def watch_ready(testbed_env, ns, n, timeout, started_file, out_file):
    """Watches the namespace's datasources from before the first create and
    writes, as JSON, when the first/last was added and became Ready."""
    env = env_file(testbed_env)
    host_port = env["SIDEKEY_TESTBED_SERVER"].removeprefix("https://")
    token = open(env["SIDEKEY_TESTBED_TOKEN_FILE"]).read().strip()
    ctx = ssl.create_default_context(cafile=env["SIDEKEY_TESTBED_CA"])
    hdr = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    path = f"/apis/sidekey.dev/v1alpha1/namespaces/{ns}/apidatasources"
    conn = http.client.HTTPSConnection(host_port, context=ctx, timeout=timeout + 30)
    conn.request("GET", path + "?limit=1", headers=hdr)
    resp = conn.getresponse()
    listing = json.loads(resp.read())
    if resp.status != 200:
        sys.exit(f"list: {resp.status} {listing}")
    rv = listing["metadata"]["resourceVersion"]
    conn.request("GET", f"{path}?watch=1&resourceVersion={rv}&timeoutSeconds={timeout}",
                 headers=hdr)
    resp = conn.getresponse()
    if resp.status != 200:
        sys.exit(f"watch: {resp.status} {resp.read()[:500]!r}")
    open(started_file, "w").close()
    added, ready = {}, {}
    result = {"complete": False}
    while True:
        line = resp.readline()
        if not line:
            break  # timeoutSeconds ran out
        now = time.time()
        ev = json.loads(line)
        if ev["type"] == "ERROR":
            sys.exit(f"watch error: {ev['object']}")
        obj = ev["object"]
        name = obj["metadata"]["name"]
        added.setdefault(name, now)
        if name not in ready and is_ready(obj):
            ready[name] = now
            if len(ready) == n:
                result["complete"] = True
                break
    result.update(
        added=len(added), ready=len(ready),
        first_added=min(added.values(), default=None),
        last_added=max(added.values(), default=None),
        first_ready=min(ready.values(), default=None),
        last_ready=max(ready.values(), default=None))
    with open(out_file + ".tmp", "w") as f:
        json.dump(result, f)
    os.rename(out_file + ".tmp", out_file)

def metrics(path):
    """Sums of the operator's counters from a /metrics dump, as shell vars."""
    out = {"reconciles": 0.0, "errors": 0.0, "dur_sum": 0.0, "dur_count": 0.0, "leader": 0.0}
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        metric = name.split("{")[0]
        key = {"sidekey_operator_reconciles_total": "reconciles",
               "sidekey_operator_reconcile_errors_total": "errors",
               "sidekey_operator_reconcile_duration_seconds_sum": "dur_sum",
               "sidekey_operator_reconcile_duration_seconds_count": "dur_count",
               "sidekey_operator_leader": "leader"}.get(metric)
        if key:
            out[key] += float(value)
    for k, v in out.items():
        print(f"M_{k}={v:g}")

def api_requests(before, after, n):
    """Requests the API server served between two /metrics dumps, by verb
    and resource, for the resources the operator touches."""
    def load(path):
        out = {}
        for line in open(path):
            if not line.startswith("apiserver_request_total{"):
                continue
            labels, _, value = line.rpartition(" ")
            kv = dict(p.split("=", 1) for p in labels[labels.index("{") + 1:-1].split(",") if "=" in p)
            kv = {k: v.strip('"') for k, v in kv.items()}
            res = kv.get("resource", "")
            if res not in ("secrets", "configmaps", "apidatasources", "events", "leases"):
                continue
            verb = kv.get("verb", "?")
            if verb == "WATCH":
                continue  # counted when it ends: not a measure of load
            if res == "apidatasources" and verb == "LIST" and kv.get("scope") == "namespace":
                # v1.20 reports a GET of one custom resource as LIST.
                verb = "GET"
            if kv.get("subresource"):
                res += "/" + kv["subresource"]
            key = (verb, res)
            out[key] = out.get(key, 0) + float(value)
        return out
    a, b = load(before), load(after)
    rows = sorted(((k, b[k] - a.get(k, 0)) for k in b), key=lambda r: -r[1])
    parts = [f"{verb} {res} {d:.0f}" for (verb, res), d in rows if d >= n / 10]
    if os.environ.get("OPBENCH_DEBUG"):
        parts = [f"{verb} {res} {d:.0f}" for (verb, res), d in rows if d]
    # Everything but kubectl's creates is the operator's (plus a handful of
    # Lease renewals and the readiness watch's one list).
    own = sum(d for (verb, res), d in rows if (verb, res) != ("POST", "apidatasources"))
    print(", ".join(parts))
    print(f"{own / n:.1f}")

cmd = sys.argv[1]
if cmd == "gen-datasources":
    gen_datasources(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
                    open(sys.argv[5]).read(), sys.argv[6], int(sys.argv[7]))
elif cmd == "gen-noise":
    gen_noise(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6]))
elif cmd == "watch-ready":
    watch_ready(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]),
                sys.argv[6], sys.argv[7])
elif cmd == "api-requests":
    api_requests(sys.argv[2], sys.argv[3], int(sys.argv[4]))
elif cmd == "metrics":
    metrics(sys.argv[2])
else:
    sys.exit(f"unknown command {cmd}")
PY
helper() { python3 "$WORK/helper.py" "$@"; }

TICK=$(getconf CLK_TCK)
# CPU seconds (user + system) a process has used so far.
cpu_seconds() {
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    # After the command name: field 3 is index 0, utime (14) index 11, stime index 12.
    read -r -a f <<<"$stat"
    awk -v u="${f[11]}" -v s="${f[12]}" -v t="$TICK" 'BEGIN { printf "%.2f", (u + s) / t }'
}
# VmRSS or VmHWM of a process, in KiB.
mem_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
# Bytes the operator has received on its open connections to the API
# server (TLS included), from the kernel's TCP counters.
api_rx_bytes() {
    ss -tinpH dst "$API_HOSTPORT" | awk -v pid="pid=$OP_PID," '
        /^[^ \t]/ { mine = index($0, pid) > 0; next }
        mine { for (i = 1; i <= NF; i++) if ($i ~ /^bytes_received:/) {
                   split($i, kv, ":"); sum += kv[2] } }
        END { print sum + 0 }'
}
now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

scrape() {
    curl -sf --max-time 5 "http://$ADMIN/metrics" >"$WORK/metrics.txt" ||
        die "cannot read the operator's /metrics"
    local line
    while IFS= read -r line; do
        eval "$1_${line#M_}"
    done < <(helper metrics "$WORK/metrics.txt")
}

# The API server's /metrics, to count the requests of a phase.
api_metrics() {
    curl -sf --max-time 10 --cacert "$TESTBED/pki/ca.crt" \
        -H "Authorization: Bearer $(<"$TESTBED/pki/admin.token")" \
        "https://$API_HOSTPORT/metrics" >"$1" || die "cannot read the API server's /metrics"
}

# Waits until the operator's CPU time has not grown by more than 0.02 s for
# 3 s in a row (it is idle: every event seen and handled), at least $1 s and
# at most $2 s.
settle() {
    local min=$1 max=$2 start=$SECONDS last cur quiet=0
    last=$(cpu_seconds "$OP_PID")
    while ((SECONDS - start < max)); do
        sleep 1
        kill -0 "$OP_PID" 2>/dev/null || die "the operator exited"
        cur=$(cpu_seconds "$OP_PID")
        if awk -v a="$last" -v b="$cur" 'BEGIN { exit !(b - a <= 0.02) }'; then
            quiet=$((quiet + 1))
        else
            quiet=0
        fi
        last=$cur
        if ((quiet >= 3 && SECONDS - start >= min)); then
            return 0
        fi
    done
    log "warning: the operator was still busy after $max s"
}

# kubectl create -f for each file, in batches of $PARALLEL processes.
create_files() {
    local files=("$@") i p f
    for ((i = 0; i < ${#files[@]}; i += PARALLEL)); do
        CREATE_PIDS=()
        for f in "${files[@]:i:PARALLEL}"; do
            kubectl create -f "$f" -o name >/dev/null 2>>"$WORK/kubectl.err" &
            CREATE_PIDS+=($!)
        done
        for p in "${CREATE_PIDS[@]}"; do
            wait "$p" || die "kubectl create failed: $(tail -n 3 "$WORK/kubectl.err")"
        done
    done
    CREATE_PIDS=()
}

# ---------------------------------------------------------------- test bed
log "starting the test bed"
export KUBECONFIG
KUBECONFIG=$("$ROOT/scripts/kube-testbed.sh" start "$TESTBED" | tail -n 1)
APISERVER_PID=$(<"$TESTBED/kube-apiserver.pid")
ETCD_PID=$(<"$TESTBED/etcd.pid")
API_HOSTPORT=$(awk -F= '$1 == "SIDEKEY_TESTBED_SERVER" { sub("https://", "", $2); print $2 }' \
    "$TESTBED/testbed.env")
kubectl apply -f "$ROOT/crds/apidatasource.yaml" >/dev/null
kubectl wait --for condition=established --timeout=60s crd/apidatasources.sidekey.dev >/dev/null
kubectl create namespace "$NS" >/dev/null

log "generating $N_DS datasources and $N_SECRETS unrelated Secrets of $SECRET_KIB KiB"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -keyout /dev/null -out "$WORK/ca.crt" -subj /CN=sidekey-bench-ca 2>/dev/null
helper gen-datasources "$NS" "$N_DS" "$GROUPS_N" "$WORK/ca.crt" "$WORK" "$PARALLEL"
helper gen-noise "$NS" "$N_SECRETS" "$SECRET_KIB" "$WORK" 250
kubectl create -f "$WORK/secrets.json" -o name >/dev/null
# Warm kubectl's discovery cache, so the timed creates do not pay for it.
kubectl get apids -n "$NS" >/dev/null 2>&1

# ---------------------------------------------------------------- operator
ADMIN=127.0.0.1:$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
op_args=(--admin-listen "$ADMIN" --lease-name sidekey-opbench --lease-namespace default
    --identity opbench)
[[ -n $CONCURRENCY ]] && op_args+=(--concurrency "$CONCURRENCY")
log "starting the operator (cluster-wide, ${CONCURRENCY:-default} concurrency)"
RUST_LOG=warn "$OP_BIN" "${op_args[@]}" >"$WORK/operator.log" 2>&1 &
OP_PID=$!
for _ in $(seq 300); do
    kill -0 "$OP_PID" 2>/dev/null || die "the operator exited: $(tail -n 5 "$WORK/operator.log")"
    if curl -sf --max-time 1 "http://$ADMIN/metrics" 2>/dev/null |
        grep -q '^sidekey_operator_leader 1'; then
        break
    fi
    sleep 0.1
done
curl -sf --max-time 1 "http://$ADMIN/metrics" | grep -q '^sidekey_operator_leader 1' ||
    die "the operator did not become leader in 30 s"
settle 3 30
RSS_IDLE=$(mem_kib "$OP_PID" VmRSS)
log "operator idle: VmRSS $(mib "$RSS_IDLE") MiB"

# ---------------------------------------------------------------- 1. datasources
helper watch-ready "$TESTBED/testbed.env" "$NS" "$N_DS" "$READY_TIMEOUT" \
    "$WORK/watch.started" "$WORK/ready.json" &
WATCH_PID=$!
for _ in $(seq 100); do
    [[ -e $WORK/watch.started ]] && break
    kill -0 "$WATCH_PID" 2>/dev/null || die "the watch did not start"
    sleep 0.1
done
[[ -e $WORK/watch.started ]] || die "the watch did not start in 10 s"

scrape P1A
api_metrics "$WORK/api-a.txt"
CPU_OP_A=$(cpu_seconds "$OP_PID")
CPU_API_A=$(cpu_seconds "$APISERVER_PID")
CPU_ETCD_A=$(cpu_seconds "$ETCD_PID")
log "creating $N_DS datasources ($PARALLEL kubectl create at once)"
T0=$(now)
ds_files=()
for ((c = 0; c < PARALLEL; c++)); do ds_files+=("$WORK/ds-$c.json"); done
create_files "${ds_files[@]}"
T_CREATED=$(now)
log "created in $(elapsed "$T0" "$T_CREATED") s; waiting for Ready=True"
if ! wait "$WATCH_PID"; then
    WATCH_PID=
    die "the readiness watch failed"
fi
WATCH_PID=
eval "$(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
for k, v in r.items():
    print(f"W_{k}={json.dumps(v)}")' "$WORK/ready.json")"
scrape P1B
CPU_OP_B=$(cpu_seconds "$OP_PID")
CPU_API_B=$(cpu_seconds "$APISERVER_PID")
CPU_ETCD_B=$(cpu_seconds "$ETCD_PID")
if [[ $W_complete != true ]]; then
    die "only $W_ready of $N_DS datasources Ready=True after $READY_TIMEOUT s (reconciles $P1B_reconciles, errors $P1B_errors)"
fi
T_ALL_READY=$W_last_ready
TO_READY=$(elapsed "$T0" "$T_ALL_READY")
CREATE_S=$(elapsed "$T0" "$T_CREATED")
RECONCILES=$(awk -v a="$P1A_reconciles" -v b="$P1B_reconciles" 'BEGIN { print b - a }')
ERRORS=$(awk -v a="$P1A_errors" -v b="$P1B_errors" 'BEGIN { print b - a }')
READY_RATE=$(awk -v n="$N_DS" -v t="$TO_READY" 'BEGIN { printf "%.0f", n / t }')
MEAN_MS=$(awk -v s1="$P1A_dur_sum" -v s2="$P1B_dur_sum" -v c1="$P1A_dur_count" -v c2="$P1B_dur_count" \
    'BEGIN { if (c2 > c1) printf "%.1f", 1000 * (s2 - s1) / (c2 - c1); else print "n/a" }')
log "all $N_DS Ready=True $TO_READY s after the first create ($RECONCILES reconciles, $ERRORS errors)"
# Reconciles keep coming after the last Ready (each ConfigMap the operator
# writes triggers one more); count them once the operator is idle.
settle 5 60
scrape P1C
api_metrics "$WORK/api-c.txt"
{
    read -r API_REQUESTS
    read -r API_PER_DS
} < <(helper api-requests "$WORK/api-a.txt" "$WORK/api-c.txt" "$N_DS")
log "API requests meanwhile: $API_REQUESTS"
RECONCILES_ALL=$(awk -v a="$P1A_reconciles" -v b="$P1C_reconciles" 'BEGIN { print b - a }')
RSS_DS=$(mem_kib "$OP_PID" VmRSS)
HWM_DS=$(mem_kib "$OP_PID" VmHWM)
log "after $N_DS datasources: VmRSS $(mib "$RSS_DS") MiB, VmHWM $(mib "$HWM_DS") MiB"

# ---------------------------------------------------------------- 2. unrelated Secrets
RX_A=$(api_rx_bytes)
CPU_OP_C=$(cpu_seconds "$OP_PID")
log "creating $N_SECRETS unrelated Secrets of $SECRET_KIB KiB"
T2=$(now)
create_files "$WORK"/noise-*.json
T2_CREATED=$(now)
log "created in $(elapsed "$T2" "$T2_CREATED") s; letting the operator settle"
settle 10 60
scrape P2
RX_B=$(api_rx_bytes)
CPU_OP_D=$(cpu_seconds "$OP_PID")
RSS_NOISE=$(mem_kib "$OP_PID" VmRSS)
HWM_NOISE=$(mem_kib "$OP_PID" VmHWM)
N_SECRETS_SEEN=$(kubectl get secrets -n "$NS" -o name | grep -c '^secret/unrelated-' || true)
[[ $N_SECRETS_SEEN == "$N_SECRETS" ]] || die "only $N_SECRETS_SEEN of $N_SECRETS Secrets exist"
NOISE_RECONCILES=$(awk -v a="$P1C_reconciles" -v b="$P2_reconciles" 'BEGIN { print b - a }')
log "after $N_SECRETS Secrets: VmRSS $(mib "$RSS_NOISE") MiB, VmHWM $(mib "$HWM_NOISE") MiB"

if [[ -n ${OPBENCH_DEBUG:-} ]]; then
    log "debug: one ApiDatasource as the API server returns it:"
    kubectl get apids -n "$NS" ds-0004 -o json >&2
    log "debug: bytes of all $N_DS as JSON: $(kubectl get apids -n "$NS" -o json | wc -c)"
    log "debug: operator /proc status:"
    grep -E '^(VmRSS|VmHWM|RssAnon|RssFile|Threads)' "/proc/$OP_PID/status" >&2
fi

# ---------------------------------------------------------------- report
cpu_delta() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
kib_delta() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.1f", (b - a) / 1024 }'; }
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain -- operator/src crds/src 2>/dev/null |
    awk '{ print $2 }' | paste -sd, - | sed 's/,/, /g')
[[ -z $DIRTY ]] || COMMIT+=" + uncommitted changes to $DIRTY"
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
table=$(
    cat <<EOF
## Operator benchmark

$(date -u +%Y-%m-%d) · $(nproc) cores ($CPU_MODEL) · kube-apiserver v1.20.2 + etcd on
127.0.0.1 (scripts/kube-testbed.sh, no priority-and-fairness) · sidekey $COMMIT,
release build, cluster-wide, \`--concurrency ${CONCURRENCY:-16}\`, \`RUST_LOG=warn\` ·
load average at the end $LOAD. Produced by \`bench/operator.sh\`.

| $N_DS datasources (4/10 BearerToken + CA, 4/10 OAuth2 + signature, 1/10 ApiKey, 1/10 Basic; 60 shared Secrets) | |
| --- | ---: |
| creating them ($PARALLEL \`kubectl create -f\` Lists at once) | $CREATE_S s |
| first create to all \`Ready=True\` | **$TO_READY s** |
| datasources Ready per second | $READY_RATE /s |
| reconciles until all Ready / until idle | $RECONCILES / $RECONCILES_ALL |
| reconcile errors | $ERRORS |
| mean reconcile duration | $MEAN_MS ms |
| API requests until idle (kinds ≥ $((N_DS / 10)); kubectl's POSTs included; v1.20 counts a GET of an ApiDatasource as LIST, shown here as GET) | $API_REQUESTS |
| the operator's API requests per datasource | $API_PER_DS |
| CPU used meanwhile: operator / kube-apiserver / etcd | $(cpu_delta "$CPU_OP_A" "$CPU_OP_B") / $(cpu_delta "$CPU_API_A" "$CPU_API_B") / $(cpu_delta "$CPU_ETCD_A" "$CPU_ETCD_B") s |

| Operator resident memory | VmRSS |
| --- | ---: |
| idle, no datasources | $(mib "$RSS_IDLE") MiB |
| after the $N_DS datasources | $(mib "$RSS_DS") MiB |
| after $N_SECRETS more Secrets of $SECRET_KIB KiB, same namespace, referenced by none ($(elapsed "$T2" "$T2_CREATED") s to create) | $(mib "$RSS_NOISE") MiB |
| change from the Secrets | **$(kib_delta "$RSS_DS" "$RSS_NOISE") MiB** |
| peak (VmHWM) after the datasources / after the Secrets | $(mib "$HWM_DS") / $(mib "$HWM_NOISE") MiB |
| received by the operator from the API server meanwhile (TLS included) | $(awk -v a="$RX_A" -v b="$RX_B" -v n="$N_SECRETS" 'BEGIN { printf "%.0f KiB (%.0f B per Secret)", (b - a) / 1024, (b - a) / n }') |
| operator CPU / reconciles caused by the Secrets | $(cpu_delta "$CPU_OP_C" "$CPU_OP_D") s / $NOISE_RECONCILES |
EOF
)
printf '%s\n' "$table"
if [[ -n $RESULTS ]]; then
    printf '%s\n' "$table" >"$RESULTS"
    log "wrote $RESULTS"
fi
