#!/usr/bin/env bash
# Builds, starts and stops a real kube-apiserver v1.20.2 (with etcd and
# kube-controller-manager) on 127.0.0.1 for sidekey's integration tests.
#
# There is no container engine and no download of upstream binaries here, so
# the apiserver is built from Debian bookworm's `kubernetes` source package,
# which is the full upstream v1.20.2 tree. See shared/reference/kube-apiserver.md.
#
# Usage:
#   scripts/kube-testbed.sh build       # idempotent; fast no-op once cached
#   scripts/kube-testbed.sh start DIR   # prints DIR/kubeconfig as last stdout line
#   scripts/kube-testbed.sh stop DIR    # idempotent
#
# Everything heavy (source, GOPATH, GOCACHE, binaries) lives outside the repo in
# ${SIDEKEY_TESTBED_CACHE:-/var/cache/sidekey-testbed} so CI and developers on
# the same machine reuse one build.
set -euo pipefail

CACHE=${SIDEKEY_TESTBED_CACHE:-/var/cache/sidekey-testbed}
BIN_DIR=$CACHE/bin
APISERVER_BIN=$BIN_DIR/kube-apiserver
KCM_BIN=$BIN_DIR/kube-controller-manager
GOPATH_DIR=$CACHE/gopath
KUBE_SRC=$GOPATH_DIR/src/k8s.io/kubernetes

# The bookworm source package that still carries cmd/kube-apiserver; the build
# fixes below are known to work for exactly this version.
KUBE_DEB_VERSION=1.20.5+really1.20.2-1.1+deb12u1
KUBE_GIT_VERSION=v1.20.2
KUBE_GIT_MAJOR=1
KUBE_GIT_MINOR=20
# Upstream's commit and build date for v1.20.2, so /version looks like a real
# release (kube-rs and kubectl parse it).
KUBE_GIT_COMMIT=faecb196815e248d3ecfb03c680a4507229c2a56
KUBE_BUILD_DATE=2021-01-13T13:20:00Z

APT_PACKAGES=(golang-go etcd-server etcd-client dpkg-dev
  golang-github-modern-go-reflect2-dev openssl curl python3 util-linux)

# How long `start` waits for the apiserver, in seconds.
READY_TIMEOUT=${SIDEKEY_TESTBED_READY_TIMEOUT:-60}
# How long `stop` waits after SIGTERM before SIGKILL, in seconds.
STOP_TIMEOUT=10

log() { printf '[kube-testbed] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  cat >&2 <<'EOF'
usage: kube-testbed.sh build
       kube-testbed.sh start DIR    (SIDEKEY_TESTBED_CRDS="a.yaml b.yaml" installs CRDs first)
       kube-testbed.sh stop DIR
EOF
  exit 2
}

# ---------------------------------------------------------------- build ----

packages_missing() {
  # One dpkg-query for all packages keeps the fast path well under a second.
  local installed p
  installed=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' \
    "${APT_PACKAGES[@]}" 2>/dev/null || true)
  for p in "${APT_PACKAGES[@]}"; do
    grep -qxF "$p installed" <<<"$installed" || echo "$p"
  done
}

install_packages() {
  local missing
  missing=$(packages_missing)
  if [[ -z $missing ]]; then
    return 0
  fi
  log "installing Debian packages: ${missing//$'\n'/ }"
  export DEBIAN_FRONTEND=noninteractive
  # A stale or empty package list makes install fail on a fresh machine.
  apt-get update -q >&2
  # shellcheck disable=SC2086 # one package per word on purpose
  apt-get install -y -q --no-install-recommends $missing >&2
}

# Private apt configuration: the system's Debian bookworm sources with deb-src
# added, and private lists/cache, so `apt-get source` works without touching
# /etc/apt or /var/lib/apt/lists.
apt_private() {
  local dir=$CACHE/apt
  apt-get \
    -o Dir::Etc::SourceList="$dir/sources.list" \
    -o Dir::Etc::SourceParts="$dir/sources.list.d" \
    -o Dir::State::Lists="$dir/lists" \
    -o Dir::Cache="$dir/cache" \
    -o APT::Sandbox::User=root \
    "$@"
}

write_private_sources() {
  local dir=$CACHE/apt f
  mkdir -p "$dir/sources.list.d" "$dir/lists/partial" "$dir/cache/archives/partial"
  : >"$dir/sources.list"
  rm -f "$dir"/sources.list.d/*
  # deb822 stanzas for Debian bookworm (skip third-party repos, which may have
  # no source indexes and would fail `apt-get update`).
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -e $f ]] || continue
    awk 'BEGIN { RS = ""; ORS = "\n\n" }
         /Suites:[^\n]*bookworm/ && /URIs:[^\n]*debian/ {
           sub(/Types:[^\n]*/, "Types: deb-src"); print }' \
      "$f" >>"$dir/sources.list.d/debian-src.sources"
  done
  # One-line format, in case the machine uses the classic sources.list.
  if [[ -f /etc/apt/sources.list ]]; then
    sed -nE 's/^deb(\s+\[[^]]*\])?\s+(\S*debian\S*\s+bookworm\S*\s.*)$/deb-src\1 \2/p' \
      /etc/apt/sources.list >>"$dir/sources.list"
  fi
  if [[ ! -s $dir/sources.list.d/debian-src.sources && ! -s $dir/sources.list ]]; then
    die "no Debian bookworm apt source found in /etc/apt"
  fi
}

fetch_source() {
  if [[ -f $KUBE_SRC/.sidekey-source-ok ]]; then
    return 0
  fi
  log "fetching source package kubernetes=$KUBE_DEB_VERSION"
  write_private_sources
  apt_private update -q >&2
  local tmp=$CACHE/src.tmp
  rm -rf "$tmp"
  mkdir -p "$tmp"
  (cd "$tmp" && apt_private source -q "kubernetes=$KUBE_DEB_VERSION" >&2)
  local extracted
  extracted=$(find "$tmp" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
  [[ -n $extracted && -d $extracted/cmd/kube-apiserver ]] ||
    die "source package has no cmd/kube-apiserver"
  rm -rf "$KUBE_SRC"
  mkdir -p "$(dirname "$KUBE_SRC")"
  mv "$extracted" "$KUBE_SRC"
  rm -rf "$tmp"
  touch "$KUBE_SRC/.sidekey-source-ok"
}

# Environment for every go invocation. Fix 1: go 1.19 rejects the 1.20 go.mod
# with -mod=vendor, so build in GOPATH mode (vendor/ is then used as-is).
go_env() {
  export GOPATH=$GOPATH_DIR
  export GOCACHE=$CACHE/gocache
  export GO111MODULE=off
  export GOPROXY=off
  export GOFLAGS=
  export CGO_ENABLED=0
  export GOTOOLCHAIN=local
}

# Fix 3: the vendored reflect2 v1.0.1 faults under go >= 1.18 (in mapiterinit)
# on the first custom resource create; Debian ships the fixed 1.0.2.
fix_reflect2() {
  local marker=$KUBE_SRC/.sidekey-reflect2-ok
  [[ -f $marker ]] && return 0
  log "replacing vendored modern-go/reflect2 with Debian's 1.0.2"
  local vend=$KUBE_SRC/vendor/github.com/modern-go/reflect2
  rm -rf "$vend"
  cp -rL /usr/share/gocode/src/github.com/modern-go/reflect2 "$vend"
  rm -f "$vend/go.mod" "$vend/go.sum"
  touch "$marker"
}

# Fix 2: pkg/generated/openapi/zz_generated.openapi.go is not in the tarball;
# generate it with the vendored openapi-gen, as upstream's Makefile does.
gen_openapi() {
  local out=$KUBE_SRC/pkg/generated/openapi/zz_generated.openapi.go
  [[ -f $out ]] && return 0
  log "generating pkg/generated/openapi (openapi-gen)"
  go_env
  local tool=$CACHE/tools/openapi-gen
  mkdir -p "$CACHE/tools"
  (cd "$KUBE_SRC" && go build -o "$tool" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen)
  # Every package whose Go files carry a +k8s:openapi-gen tag. Staging repos
  # are seen through vendor/ (GOPATH mode); code-generator and sample-apiserver
  # are examples, not part of the apiserver.
  local inputs
  inputs=$(cd "$KUBE_SRC" &&
    grep -rlE --include='*.go' '^// *\+k8s:openapi-gen=' pkg cmd staging/src plugin 2>/dev/null |
    xargs -n1 dirname | LC_ALL=C sort -u |
    grep -vE '^staging/src/k8s\.io/(code-generator|sample-apiserver)/' |
    sed -E 's#^staging/src/#k8s.io/kubernetes/vendor/#; t; s#^#k8s.io/kubernetes/#' |
    paste -sd, -)
  [[ -n $inputs ]] || die "found no +k8s:openapi-gen packages"
  (cd "$KUBE_SRC" && "$tool" \
    --logtostderr \
    --output-base "$GOPATH_DIR/src" \
    --input-dirs "$inputs" \
    --output-package k8s.io/kubernetes/pkg/generated/openapi \
    --output-file-base zz_generated.openapi \
    --go-header-file hack/boilerplate/boilerplate.generatego.txt \
    --report-filename "$CACHE/tools/openapi-violations.report" >&2)
  [[ -f $out ]] || die "openapi-gen did not write $out"
}

build_binaries() {
  go_env
  local pkg=k8s.io/kubernetes/vendor/k8s.io
  local ldflags="-s -w" v
  for v in "$pkg/component-base/version" "$pkg/client-go/pkg/version"; do
    ldflags+=" -X $v.gitVersion=$KUBE_GIT_VERSION"
    ldflags+=" -X $v.gitMajor=$KUBE_GIT_MAJOR -X $v.gitMinor=$KUBE_GIT_MINOR"
    ldflags+=" -X $v.gitCommit=$KUBE_GIT_COMMIT -X $v.gitTreeState=clean"
    ldflags+=" -X $v.buildDate=$KUBE_BUILD_DATE"
  done
  local tmp=$CACHE/bin.tmp
  rm -rf "$tmp"
  mkdir -p "$tmp" "$BIN_DIR"
  log "building kube-apiserver and kube-controller-manager (cold: ~4-5 min on 2 cores)"
  local t0=$SECONDS
  (cd "$KUBE_SRC" && go build -ldflags "$ldflags" -o "$tmp/" \
    ./cmd/kube-apiserver ./cmd/kube-controller-manager >&2)
  # Move into place only when both exist, so the fast path never sees half a build.
  mv -f "$tmp/kube-apiserver" "$APISERVER_BIN"
  mv -f "$tmp/kube-controller-manager" "$KCM_BIN"
  rm -rf "$tmp"
  log "built in $((SECONDS - t0)) s: $BIN_DIR"
}

binaries_ready() {
  [[ -x $APISERVER_BIN && -x $KCM_BIN ]]
}

cmd_build() {
  # Fast path: nothing to do once the binaries and runtime tools are there.
  if binaries_ready && [[ -z $(packages_missing) ]]; then
    return 0
  fi
  mkdir -p "$CACHE"
  # Serialise concurrent builds (e.g. two test runs starting at once). The
  # subshell closes fd 9, so the lock never leaks into started daemons.
  (
    flock 9
    install_packages
    if binaries_ready; then
      exit 0
    fi
    fetch_source
    fix_reflect2
    gen_openapi
    build_binaries
  ) 9>"$CACHE/.lock"
}

# ---------------------------------------------------------------- start ----

# Prints N distinct free TCP ports on 127.0.0.1. All sockets stay bound until
# every port is chosen, so the N ports differ; another process could still grab
# one before we use it, which `start` reports as a failure.
free_ports() {
  /usr/bin/python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# The CA, the apiserver's serving cert, the service-account key pair and the
# admin token. Kept if already there, so a restart in the same DIR reuses them.
make_pki() {
  local pki=$1
  [[ -f $pki/.ok ]] && return 0
  mkdir -p "$pki"
  chmod 700 "$pki"
  (
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
      -keyout ca.key -out ca.crt -subj /CN=sidekey-testbed-ca \
      -addext basicConstraints=critical,CA:TRUE \
      -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -sha256 \
      -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver 2>/dev/null
    # rustls (kube-rs) needs a v3 leaf with SANs and serverAuth, not a CA.
    cat >apiserver.ext <<'EOF'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
EOF
    openssl x509 -req -sha256 -days 3650 -in apiserver.csr -CA ca.crt -CAkey ca.key \
      -CAcreateserial -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    openssl rand -hex 32 >admin.token
    # token,user,uid,"groups": system:masters bypasses RBAC.
    printf '%s,admin,admin,"system:masters"\n' "$(cat admin.token)" >tokens.csv
    touch .ok
  )
}

write_kubeconfig() {
  local path=$1 port=$2 ca=$3 token=$4
  local ca_data
  ca_data=$(base64 -w0 "$ca")
  : >"$path.tmp"
  chmod 600 "$path.tmp"
  cat >>"$path.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: sidekey-testbed
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority-data: $ca_data
users:
- name: admin
  user:
    token: $token
contexts:
- name: sidekey-testbed
  context:
    cluster: sidekey-testbed
    user: admin
    namespace: default
current-context: sidekey-testbed
EOF
  mv -f "$path.tmp" "$path"
}

# Starts a daemon in its own session (setsid) so it survives the calling shell
# and can be killed as a group. The child writes its own pid before exec, so
# the pid file is exact. All fds go to files: a caller that captures this
# script's output (e.g. Rust's Command::output) must not wait on the daemons.
spawn() {
  local name=$1
  shift
  local pidfile=$DIR/$name.pid
  rm -f "$pidfile"
  # shellcheck disable=SC2016 # $$ and $@ are expanded by the inner sh
  setsid sh -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" \
    </dev/null >>"$DIR/$name.log" 2>&1 &
  # Not a job of this shell any more: no "Killed" notices, no waiting on exit.
  disown
  local tries=0
  while ((tries++ < 100)); do
    [[ -s $pidfile ]] && return 0
    sleep 0.05
  done
  die "$name did not start"
}

# True when pid file DIR/NAME.pid names a live process started for DIR.
daemon_pid() {
  local name=$1 pid
  [[ -s $DIR/$name.pid ]] || return 1
  pid=$(<"$DIR/$name.pid")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  # Guard against a recycled pid: the process must name DIR in its arguments.
  if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$DIR/"; then
    echo "$pid"
    return 0
  fi
  return 1
}

# Waits until URL answers 200 with body "ok"; extra args go to curl.
wait_ok() {
  local what=$1 url=$2 deadline=$3
  shift 3
  while ((SECONDS < deadline)); do
    if [[ $(curl -s --max-time 2 "$@" "$url" 2>/dev/null || true) == ok ]]; then
      return 0
    fi
    check_alive
    sleep 0.2
  done
  start_failed "timed out waiting for $what"
}

check_alive() {
  local name
  for name in "${STARTED[@]}"; do
    daemon_pid "$name" >/dev/null || start_failed "$name exited"
  done
}

start_failed() {
  log "error: $1"
  local name
  for name in etcd kube-apiserver kube-controller-manager; do
    if [[ -f $DIR/$name.log ]]; then
      log "---- last lines of $DIR/$name.log ----"
      tail -n 25 "$DIR/$name.log" >&2
    fi
  done
  stop_daemons
  exit 1
}

cmd_start() {
  cmd_build
  mkdir -p "$DIR"
  # A previous run in the same DIR must not linger (its ports would change).
  stop_daemons
  # Free ports are picked before the daemons bind them, so another process can
  # take one in between: retry with new ports when that happened.
  local attempt rc
  for attempt in 1 2 3; do
    # Errexit is ignored in a tested subshell (`if (...)`), so test $? instead.
    set +e
    (
      set -e
      start_once
    )
    rc=$?
    set -e
    if ((rc == 0)); then
      echo "$DIR/kubeconfig"
      return 0
    fi
    # Whatever made the attempt fail, leave nothing of it running.
    stop_daemons
    if ! grep -qs 'address already in use' "$DIR"/*.log; then
      exit "$rc"
    fi
    log "a port was taken meanwhile (attempt $attempt), retrying with new ports"
  done
  die "could not start after 3 attempts"
}

# One start attempt; runs in a subshell, and stops what it started on failure.
start_once() {
  STARTED=()
  # Fresh logs per attempt: the retry above reads them.
  local name
  for name in etcd kube-apiserver kube-controller-manager; do
    : >"$DIR/$name.log"
  done
  local pki=$DIR/pki
  make_pki "$pki"
  local token
  token=$(<"$pki/admin.token")

  local ports etcd_client etcd_peer api_port kcm_port
  ports=$(free_ports 4)
  read -r etcd_client etcd_peer api_port kcm_port <<<"$ports"
  local etcd_url=http://127.0.0.1:$etcd_client
  local deadline=$((SECONDS + READY_TIMEOUT))

  log "starting etcd on 127.0.0.1:$etcd_client"
  # No --listen-metrics-urls: metrics stay on the client port (one port less).
  spawn etcd etcd \
    --name sidekey-testbed \
    --data-dir "$DIR/etcd" \
    --listen-client-urls "$etcd_url" \
    --advertise-client-urls "$etcd_url" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "sidekey-testbed=http://127.0.0.1:$etcd_peer" \
    --unsafe-no-fsync
  STARTED+=(etcd)
  wait_etcd "$etcd_url" "$deadline"

  log "starting kube-apiserver on https://127.0.0.1:$api_port"
  # ServiceAccount admission is off (no token controller needed for pods);
  # no endpoint reconciler, as endpoints may not be loopback addresses;
  # priority-and-fairness off saves CPU; MutatingAdmissionWebhook stays on
  # (it is in the default set) because sidekey is a mutating webhook.
  spawn kube-apiserver "$APISERVER_BIN" \
    --etcd-servers="$etcd_url" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --endpoint-reconciler-type=none \
    --secure-port="$api_port" \
    --insecure-port=0 \
    --cert-dir="$DIR/apiserver-certs" \
    --tls-cert-file="$pki/apiserver.crt" \
    --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --token-auth-file="$pki/tokens.csv" \
    --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 \
    --allow-privileged=true \
    --disable-admission-plugins=ServiceAccount \
    --enable-priority-and-fairness=false \
    --profiling=false
  STARTED+=(kube-apiserver)

  write_kubeconfig "$DIR/kubeconfig" "$api_port" "$pki/ca.crt" "$token"

  local auth=(--cacert "$pki/ca.crt" -H "Authorization: Bearer $token")
  local api=https://127.0.0.1:$api_port
  wait_ok "kube-apiserver /readyz" "$api/readyz" "$deadline" "${auth[@]}"

  # CRDs named in SIDEKEY_TESTBED_CRDS are installed before the controller
  # manager starts: its garbage collector learns new resource kinds only
  # at start and then every 30 s, so ownerReferences to a CRD created later
  # would not cascade for up to half a minute.
  local crd
  for crd in ${SIDEKEY_TESTBED_CRDS:-}; do
    log "installing $crd"
    kubectl --kubeconfig "$DIR/kubeconfig" apply -f "$crd" >&2
  done
  if [[ -n ${SIDEKEY_TESTBED_CRDS:-} ]]; then
    kubectl --kubeconfig "$DIR/kubeconfig" wait --for condition=established \
      --timeout=30s crd --all >&2
  fi

  log "starting kube-controller-manager (secure port $kcm_port)"
  # --port=0: 1.20 would otherwise serve plaintext on all addresses.
  spawn kube-controller-manager "$KCM_BIN" \
    --kubeconfig="$DIR/kubeconfig" \
    --authentication-kubeconfig="$DIR/kubeconfig" \
    --authorization-kubeconfig="$DIR/kubeconfig" \
    --port=0 \
    --bind-address=127.0.0.1 \
    --secure-port="$kcm_port" \
    --cert-dir="$DIR/kcm-certs" \
    --leader-elect=false \
    --controllers='*' \
    --use-service-account-credentials=false \
    --service-account-private-key-file="$pki/sa.key" \
    --root-ca-file="$pki/ca.crt" \
    --profiling=false
  STARTED+=(kube-controller-manager)

  # The default namespace appears once the apiserver's bootstrap controller ran.
  wait_default_ns "$api" "$deadline" "${auth[@]}"
  # /healthz is always allowed on the kcm's port; ok means its controllers run.
  wait_ok "kube-controller-manager /healthz" "https://127.0.0.1:$kcm_port/healthz" \
    "$deadline" -k

  cat >"$DIR/testbed.env" <<EOF
SIDEKEY_TESTBED_SERVER=$api
SIDEKEY_TESTBED_CA=$pki/ca.crt
SIDEKEY_TESTBED_TOKEN_FILE=$pki/admin.token
SIDEKEY_TESTBED_ETCD=$etcd_url
EOF
  log "ready in $SECONDS s (since this script started): $api"
}

wait_etcd() {
  local url=$1 deadline=$2
  while ((SECONDS < deadline)); do
    if curl -s --max-time 2 "$url/health" 2>/dev/null | grep -q '"health":"true"'; then
      return 0
    fi
    check_alive
    sleep 0.1
  done
  start_failed "timed out waiting for etcd"
}

wait_default_ns() {
  local api=$1 deadline=$2
  shift 2
  local code
  while ((SECONDS < deadline)); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" \
      "$api/api/v1/namespaces/default" 2>/dev/null || true)
    [[ $code == 200 ]] && return 0
    check_alive
    sleep 0.2
  done
  start_failed "timed out waiting for namespace default"
}

# ----------------------------------------------------------------- stop ----

# True while PID runs; a zombie (dead, not yet reaped by its parent) is not running.
running() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  # Field 3 is the state; the command name in field 2 may contain spaces.
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

# Stops every daemon started for DIR: TERM, up to STOP_TIMEOUT s, then KILL.
# Each daemon leads its own session, so the whole process group is signalled.
stop_daemons() {
  local name pid pids=()
  for name in kube-controller-manager kube-apiserver etcd; do
    if pid=$(daemon_pid "$name"); then
      pids+=("$pid")
    fi
  done
  # Also catch daemons whose pid file is missing (e.g. start was interrupted).
  local p
  for p in $(pgrep -x 'etcd|kube-apiserver|kube-controller' || true); do
    if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$DIR/"; then
      [[ " ${pids[*]} " == *" $p "* ]] || pids+=("$p")
    fi
  done
  if ((${#pids[@]} > 0)); then
    log "stopping pids ${pids[*]}"
    for pid in "${pids[@]}"; do
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    done
    local deadline=$((SECONDS + STOP_TIMEOUT)) alive
    while :; do
      alive=()
      for pid in "${pids[@]}"; do
        running "$pid" && alive+=("$pid")
      done
      ((${#alive[@]} == 0)) && break
      if ((SECONDS >= deadline)); then
        log "killing pids ${alive[*]}"
        for pid in "${alive[@]}"; do
          kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        done
        sleep 0.5
        break
      fi
      sleep 0.1
    done
    for pid in "${pids[@]}"; do
      if running "$pid"; then
        die "pid $pid still running after SIGKILL"
      fi
    done
  fi
  rm -f "$DIR"/{etcd,kube-apiserver,kube-controller-manager}.pid
}

cmd_stop() {
  # No early return when DIR is gone: daemons whose DIR was deleted (e.g. by a
  # test's temp dir cleanup) are still found by their command lines.
  stop_daemons
}

# ----------------------------------------------------------------- main ----

main() {
  (($# >= 1)) || usage
  case $1 in
  build)
    (($# == 1)) || usage
    cmd_build
    ;;
  start | stop)
    (($# == 2)) || usage
    # Absolute, canonical DIR: it is matched against daemons' command lines.
    DIR=$(realpath -m -- "$2")
    if [[ $1 == start ]]; then cmd_start; else cmd_stop; fi
    ;;
  *) usage ;;
  esac
}

main "$@"
