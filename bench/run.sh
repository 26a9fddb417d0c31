#!/usr/bin/env bash
# Proxy overhead benchmark: the upstream directly, sidekey (static bearer
# token; OAuth2 client credentials plus the signature header) and nginx as
# an authenticating reverse proxy, all on 127.0.0.1, measured with wrk.
# Prints a Markdown table and writes it to bench/results.md.
# See bench/README.md for the method.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR="$ROOT/bench"

DURATION=${BENCH_DURATION:-10}       # seconds per measured run
WARMUP=${BENCH_WARMUP:-2}            # seconds of warm-up before each run
CONNECTIONS=${BENCH_CONNECTIONS:-64}
WRK_THREADS=${BENCH_WRK_THREADS:-1}
# A full, unprofiled run replaces bench/results.md; a partial or profiled
# one only prints, unless BENCH_RESULTS names a file.
if [ -n "${BENCH_SCENARIOS:-}" ] || [ "${BENCH_PERF:-0}" = 1 ]; then
    RESULTS=${BENCH_RESULTS:-}
else
    RESULTS=${BENCH_RESULTS:-$BENCH_DIR/results.md}
fi

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- tools
need_apt=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v taskset >/dev/null 2>&1 || need_apt+=(util-linux)
command -v ss >/dev/null 2>&1 || need_apt+=(iproute2)
if [ ${#need_apt[@]} -gt 0 ]; then
    log "installing ${need_apt[*]} with apt-get"
    nginx_before=$(pgrep -x nginx | sort || true)
    apt-get install -y -q "${need_apt[@]}" >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && apt-get install -y -q "${need_apt[@]}" >/dev/null; } ||
        die "apt-get install ${need_apt[*]} failed"
    # Where no policy-rc.d holds it back (containers have one), installing
    # the package starts nginx's service on port 80: this run started it, so
    # this run stops it.
    for pid in $(comm -13 <(echo "$nginx_before") <(pgrep -x nginx | sort || true)); do
        log "stopping the nginx service the package install started (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
    done
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# ---------------------------------------------------------------- sidecar
SIDEKEY_STATUS=ok
target_dir=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -n "${SIDEKEY_BIN:-}" ]; then
    [ -x "$SIDEKEY_BIN" ] || die "SIDEKEY_BIN=$SIDEKEY_BIN is not executable"
else
    SIDEKEY_BIN="$target_dir/release/sidekey-sidecar"
    log "building sidekey-sidecar (release) into $target_dir"
    if ! (cd "$ROOT" && cargo build --release -q -p sidekey-sidecar); then
        SIDEKEY_STATUS="pending (sidekey-sidecar does not build)"
    fi
fi
if [ "$SIDEKEY_STATUS" = ok ] && ! "$SIDEKEY_BIN" --help 2>/dev/null | grep -q -- '--datasource'; then
    SIDEKEY_STATUS="pending (sidekey-sidecar has no --datasource flag yet)"
fi
SIDEKEY_HELP=$("$SIDEKEY_BIN" --help 2>/dev/null || true)
# The two floors the sidecar is measured against, rows `minimal1` (a
# minimal hyper proxy, sidecar/examples/minimal_proxy.rs) and `framing1`
# (own HTTP/1 framing on httparse, sidecar/examples/framing_floor.rs): each
# built unless BENCH_SCENARIOS leaves its row out; MINIMAL_BIN and
# FRAMING_BIN name prebuilt ones.
declare -A FLOOR_BIN FLOOR_STATUS
floor_row() { # key example prebuilt
    local key=$1 example=$2 prebuilt=$3
    FLOOR_STATUS[$key]=ok
    if [ -n "$prebuilt" ]; then
        [ -x "$prebuilt" ] || die "$prebuilt is not executable"
        FLOOR_BIN[$key]=$prebuilt
    elif [ -z "${BENCH_SCENARIOS:-}" ] || grep -qw "$key" <<<"$BENCH_SCENARIOS"; then
        FLOOR_BIN[$key]="$target_dir/release/examples/$example"
        log "building sidecar/examples/$example.rs (release) into $target_dir"
        (cd "$ROOT" && cargo build --release -q -p sidekey-sidecar --example "$example") ||
            FLOOR_STATUS[$key]="pending (sidecar/examples/$example.rs does not build)"
    fi
}
floor_row minimal1 minimal_proxy "${MINIMAL_BIN:-}"
floor_row framing1 framing_floor "${FRAMING_BIN:-}"

# ---------------------------------------------------------------- processes
TMP=$(mktemp -d "${TMPDIR:-/tmp}/sidekey-bench.XXXXXX")
PIDS=()

stop_pid() {
    local pid=$1 sig=${2:-TERM}
    kill -0 "$pid" 2>/dev/null || return 0
    kill "-$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# nginx workers die with their master (TERM is nginx's fast shutdown), but
# make sure: a stray worker would keep the port and skew the next run.
stop_nginx() {
    local pid=$1 kids
    kids=$(pgrep -P "$pid" 2>/dev/null || true)
    stop_pid "$pid" TERM
    for k in $kids; do stop_pid "$k" KILL; done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        if [ -n "$pid" ]; then
            case "$(cat "/proc/$pid/comm" 2>/dev/null)" in
                nginx) stop_nginx "$pid" ;;
                *) stop_pid "$pid" TERM ;;
            esac
        fi
    done
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget_pid() {
    local gone=$1 i
    for i in "${!PIDS[@]}"; do [ "${PIDS[$i]}" = "$gone" ] && unset 'PIDS[i]'; done
}

# A free port below the usual ephemeral range, so wrk's and the proxies'
# own outgoing connections cannot take it.
free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 12000))
        if [ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ]; then echo "$p"; return; fi
    done
    die "no free port found"
}

wait_http() { # url [curl args...]: wait until it answers 2xx
    local url=$1; shift
    for _ in $(seq 1 150); do
        curl -fsS -o /dev/null --max-time 1 "$@" "$url" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# ---------------------------------------------------------------- CPUs
NCPU=$(nproc)
LOAD_CPU=${BENCH_LOAD_CPU:-0}                   # wrk
PROXY_CPU=${BENCH_PROXY_CPU:-$((NCPU - 1))}     # the proxy under test, in the 1-worker rows
UPSTREAM_CPU=${BENCH_UPSTREAM_CPU:-$LOAD_CPU}   # the upstream nginx
[ "$NCPU" -ge 2 ] || log "only one CPU: the pinned rows share it with wrk and the upstream"
CLK_TCK=$(getconf CLK_TCK)

# CPU ticks (user+system) used so far by a process and its children.
cpu_ticks() {
    local total=0 p
    for p in "$@" $(pgrep -P "$1" 2>/dev/null || true); do
        local stat
        stat=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        stat=${stat##*) }
        # fields after "comm)": state is 1st, utime 12th, stime 13th
        total=$((total + $(awk '{print $12 + $13}' <<<"$stat")))
    done
    echo "$total"
}

# kB of a /proc/PID/status field, summed over the process and its children.
mem_kb() {
    local field=$1 pid=$2 total=0 p v
    for p in "$pid" $(pgrep -P "$pid" 2>/dev/null || true); do
        v=$(awk -v f="$field:" '$1 == f {print $2}' "/proc/$p/status" 2>/dev/null || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }

# ---------------------------------------------------------------- certificates
log "making a CA and a server certificate in $TMP"
mkdir -p "$TMP/pki"
(
    cd "$TMP/pki"
    openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
    openssl req -x509 -new -key ca.key -sha256 -days 2 -subj "/CN=sidekey bench CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.crt 2>/dev/null
    openssl ecparam -name prime256v1 -genkey -noout -out server.key 2>/dev/null
    openssl req -new -key server.key -subj "/CN=localhost" -out server.csr 2>/dev/null
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" >server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -sha256 -extfile server.ext -out server.crt 2>/dev/null
)

BEARER_TOKEN="bench-$(openssl rand -hex 24)"
SIGNING_KEY=$(openssl rand -hex 32)   # 64 characters: HS512 under Auto

# ---------------------------------------------------------------- upstream
UP_PORT=$(free_port)
UPSTREAM="https://127.0.0.1:$UP_PORT"
BODY='{"ok":true}'

nginx_common() { # name: the lines every nginx here shares
    local name=$1
    mkdir -p "$TMP/$name"
    cat <<EOF
daemon off;
master_process on;
pid $TMP/$name/nginx.pid;
error_log $TMP/$name/error.log warn;
events { worker_connections 8192; multi_accept on; }
EOF
}

nginx_http_common() {
    local name=$1
    cat <<EOF
    access_log off;
    client_body_temp_path $TMP/$name/client_body;
    proxy_temp_path $TMP/$name/proxy;
    fastcgi_temp_path $TMP/$name/fastcgi;
    uwsgi_temp_path $TMP/$name/uwsgi;
    scgi_temp_path $TMP/$name/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
EOF
}

{
    nginx_common upstream
    echo "worker_processes 1;"
    echo "http {"
    nginx_http_common upstream
    cat <<EOF
    server {
        listen 127.0.0.1:$UP_PORT ssl;
        ssl_certificate $TMP/pki/server.crt;
        ssl_certificate_key $TMP/pki/server.key;
        # nginx 1.22 leaves TLS 1.3 out of its defaults; both proxies offer it.
        ssl_protocols TLSv1.2 TLSv1.3;
        default_type application/json;
        # Tells the bench which TLS version each client negotiated.
        add_header X-Upstream-TLS \$ssl_protocol always;
        # The upstream refuses requests without the credentials, so a row
        # whose proxy does not add them shows as errors instead of figures.
        location /bearer/ {
            if (\$http_authorization != "Bearer $BEARER_TOKEN") { return 401 '{"error":"unauthorized"}'; }
            return 200 '$BODY';
        }
        location /oauth/ {
            if (\$http_authorization !~ "^Bearer .") { return 401 '{"error":"no token"}'; }
            if (\$http_x_appsmith_signature = "") { return 401 '{"error":"no signature"}'; }
            return 200 '$BODY';
        }
    }
}
EOF
} >"$TMP/upstream.conf"

# Processes start in this shell (not in a $(...) subshell) so they stay its
# children: cleanup can wait for them and none is left a zombie.
start_nginx() { # name conf cpus: starts nginx pinned to cpus; sets STARTED_PID
    local name=$1 conf=$2 cpus=$3
    "$NGINX" -t -q -p "$TMP/$name" -e "$TMP/$name/error.log" -c "$conf" >/dev/null 2>&1 ||
        { "$NGINX" -t -p "$TMP/$name" -e "$TMP/$name/error.log" -c "$conf" >&2 || true; die "nginx config $conf is invalid"; }
    taskset -c "$cpus" "$NGINX" -p "$TMP/$name" -e "$TMP/$name/error.log" -c "$conf" \
        >"$TMP/$name/stdout.log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
}

log "starting the HTTPS upstream (nginx, 1 worker, CPU $UPSTREAM_CPU) on $UPSTREAM"
start_nginx upstream "$TMP/upstream.conf" "$UPSTREAM_CPU"
UP_PID=$STARTED_PID
wait_http "$UPSTREAM/bearer/ping" --cacert "$TMP/pki/ca.crt" -H "Authorization: Bearer $BEARER_TOKEN" ||
    die "the upstream did not come up: $(cat "$TMP/upstream/error.log" 2>/dev/null)"

# ---------------------------------------------------------------- wrk
parse_ms() { # "1.23ms" -> 1.23
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.2f", n }'
}

# Results per scenario key. A scenario runs once per round; the round with
# the highest req/s is reported (other agents' bursts on a shared machine only
# ever lower a figure), and every round's req/s is listed beside it.
SCENARIOS=(direct nginx1 minimal1 framing1 bearer1 oauth1 nginxauto bearerauto oauthauto)
declare -A LABEL RPS P50 P99 ERRORS CPU UP_CPU CPU_US SYSCALLS RSS STATUS ROUNDS THREADS TLS

# run_wrk file [wrk args...]: wrk pinned to the load CPU, output to file. It
# runs in the background and is waited for, so that INT/TERM stop the bench
# at once (bash runs traps only between foreground commands).
run_wrk() {
    local file=$1; shift
    taskset -c "$LOAD_CPU" wrk -t "$WRK_THREADS" -c "$CONNECTIONS" "$@" >"$file" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    local rc=0
    wait "$pid" || rc=$?
    forget_pid "$pid"
    return "$rc"
}

# measure key proxy_pid url [wrk args...]: warm up, run wrk, keep the figures
# in MEASURED_* (proxy_pid "-": no proxy, the direct row).
measure() {
    local key=$1 ppid=$2 url=$3; shift 3
    local label=${LABEL[$key]}
    log "$label: warm-up ${WARMUP}s"
    local profiling="" targets="" stat_pid="" events=raw_syscalls:sys_enter
    [ "${BENCH_PERF:-0}" = 1 ] && [ "$ppid" != - ] && profiling=1 events=$SYSCALL_EVENTS
    rm -f "$TMP/syscalls-$key.csv"
    if [ "$HAVE_PERF" = 1 ] && [ "$ppid" != - ]; then
        # The proxy's system calls, counted over the whole warm-up (exact
        # in-kernel counters, but they slow every call, so not while
        # measuring); with BENCH_PERF=1 each call by name, then its CPU
        # profile during the measured run (diagnosis only: such a run's
        # figures are not for publishing).
        targets=$({ echo "$ppid"; pgrep -P "$ppid" || true; } | paste -sd, -)
        perf stat -x, -p "$targets" -o "$TMP/syscalls-$key.csv" -e "$events" -- sleep "$((WARMUP + 1))" >/dev/null 2>&1 &
        stat_pid=$!
        PIDS+=("$stat_pid")
        sleep 0.5
    fi
    run_wrk "$TMP/wrk-warm.txt" -d "${WARMUP}s" "$@" "$url" || true
    if [ -n "$stat_pid" ]; then wait "$stat_pid" 2>/dev/null || true; forget_pid "$stat_pid"; fi
    MEASURED_SYSCALLS=$(awk -F, -v n="$(awk '/requests in/ {print $1}' "$TMP/wrk-warm.txt")" '
        $3 == "raw_syscalls:sys_enter" && $1 ~ /^[0-9]+$/ && n > 0 { printf "%.2f", $1 / n; found = 1 }
        END { if (!found) print "n/a" }' "$TMP/syscalls-$key.csv" 2>/dev/null || echo n/a)
    local t0=0 t1=0 u0 u1 out
    [ "$ppid" = - ] || t0=$(cpu_ticks "$ppid")
    u0=$(cpu_ticks "$UP_PID")
    log "$label: measuring ${DURATION}s"
    local perf_pid=""
    if [ -n "$profiling" ]; then
        perf record -q -g -F 999 -p "$targets" -o "$TMP/perf-$key.data" -- sleep "$DURATION" >/dev/null 2>&1 &
        perf_pid=$!
        PIDS+=("$perf_pid")
    fi
    run_wrk "$TMP/wrk-run.txt" -d "${DURATION}s" --latency "$@" "$url" && out=$(cat "$TMP/wrk-run.txt") || out=""
    if [ -z "$out" ] || ! grep -q '^Requests/sec:' <<<"$out"; then
        log "wrk failed: $out"
        MEASURED_RPS=""
        return 1
    fi
    [ "$ppid" = - ] || t1=$(cpu_ticks "$ppid")
    u1=$(cpu_ticks "$UP_PID")
    if [ -n "$perf_pid" ]; then
        wait "$perf_pid" 2>/dev/null || true
        forget_pid "$perf_pid"
        write_profile "$key" "$(awk '/requests in/ {print $1}' <<<"$out")" "$(awk '/requests in/ {print $1}' "$TMP/wrk-warm.txt")"
    fi
    printf '%s\n' "$out" >>"$TMP/wrk-$key.txt"
    local reqs non2xx sockerr
    MEASURED_RPS=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' <<<"$out")
    MEASURED_P50=$(parse_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    MEASURED_P99=$(parse_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    non2xx=$(awk -F': *' '/Non-2xx or 3xx responses/ {print $2}' <<<"$out")
    sockerr=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' <<<"$out")
    MEASURED_ERRORS=$(( ${non2xx:-0} + ${sockerr:-0} ))
    MEASURED_CPU="n/a" MEASURED_CPU_US="n/a"
    MEASURED_UP_CPU=$(awk -v d="$((u1 - u0))" -v hz="$CLK_TCK" -v s="$DURATION" 'BEGIN {printf "%.0f%%", 100 * d / hz / s}')
    if [ "$ppid" != - ]; then
        MEASURED_CPU=$(awk -v d="$((t1 - t0))" -v hz="$CLK_TCK" -v s="$DURATION" 'BEGIN {printf "%.0f%%", 100 * d / hz / s}')
        MEASURED_CPU_US=$(awk -v d="$((t1 - t0))" -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { if (n > 0) printf "%.1f", 1e6 * d / hz / n; else print "n/a" }')
    fi
    log "$label: $MEASURED_RPS req/s, p50 $MEASURED_P50 ms, p99 $MEASURED_P99 ms, errors $MEASURED_ERRORS, proxy CPU $MEASURED_CPU ($MEASURED_CPU_US µs/req), upstream CPU $MEASURED_UP_CPU"
}

# perf counts the proxies' system calls where the kernel lets it.
HAVE_PERF=0
command -v perf >/dev/null 2>&1 && perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1 && HAVE_PERF=1
SYSCALL_EVENTS=raw_syscalls:sys_enter
for call in read write readv writev recvfrom sendto recvmsg sendmsg getsockopt setsockopt \
    epoll_wait epoll_ctl futex close accept4 sched_yield; do
    SYSCALL_EVENTS+=",syscalls:sys_enter_$call"
done

# write_profile key requests warm_requests: bench/profile/<key>.txt from perf's data.
write_profile() {
    local key=$1 reqs=$2 warm_reqs=$3 f="$BENCH_DIR/profile/$1.txt"
    mkdir -p "$BENCH_DIR/profile"
    {
        echo "# ${LABEL[$key]}: perf profile over ${DURATION} s, $reqs requests"
        echo
        echo "## CPU samples by binary"
        perf report -i "$TMP/perf-$key.data" --stdio --no-children --sort dso -g none 2>/dev/null |
            grep -v '^#' | grep -v '^$' | sed 's/ *$//' | head -n 12
        echo
        echo "## CPU samples by function (top 60)"
        perf report -i "$TMP/perf-$key.data" --stdio --no-children --sort dso,symbol -g none 2>/dev/null |
            grep -v '^#' | grep -v '^$' | grep -v '^ *|' | grep -v '^ *-' | sed 's/ \+- \+- *$//; s/ *$//' | head -n 60
        echo
        echo "## User-space CPU samples by library or crate (self time)"
        perf report -i "$TMP/perf-$key.data" --stdio --no-children --sort dso,symbol -g none 2>/dev/null |
            grep -v '^#' | grep -v '^$' | awk '
                $2 !~ /kernel/ {
                    pct = $1; sub(/%/, "", pct)
                    sym = ""; for (i = 4; i <= NF; i++) sym = sym " " $i
                    group = $2
                    if (match(sym, /[A-Za-z_][A-Za-z0-9_]*::/)) group = substr(sym, RSTART, RLENGTH - 2)
                    else if (sym ~ /aws_lc|aes_gcm|sha[0-9]|gcm_/) group = "aws_lc (crypto)"
                    else if (sym ~ /malloc|free|memmove|memcpy|memset|_int_/) group = "libc malloc/memcpy"
                    sum[group] += pct
                }
                END { for (g in sum) if (sum[g] >= 0.2) printf "%7.2f%%  %s\n", sum[g], g }' |
            sort -rn | head -n 25
        echo
        echo "## Inclusive CPU (self plus callees) of user-space functions, from frame-pointer call"
        echo "## chains (top 100; meaningful for a binary built with -C force-frame-pointers=yes)"
        perf report -i "$TMP/perf-$key.data" --stdio --children --sort symbol -g none --percent-limit 0.25 2>/dev/null |
            grep -F '[.]' | sed 's/ \+- \+- *$//; s/ *$//' | head -n 100
        echo
        echo "## System calls during the warm-up ($warm_reqs requests; perf stat, exact counts)"
        awk -F, -v n="$warm_reqs" '
            $1 ~ /^[0-9]+$/ && $1 > 0 {
                name = $3; sub(/^raw_syscalls:sys_enter$/, "all system calls", name); sub(/^syscalls:sys_enter_/, "", name)
                printf "%-18s %10d  %6.2f/req\n", name, $1, (n > 0 ? $1 / n : 0)
            }' "$TMP/syscalls-$key.csv" 2>/dev/null | sort -k2 -n -r
    } >"$f"
    log "${LABEL[$key]}: profile written to ${f#"$ROOT"/}"
}

# keep key rss: record this round's figures, keep the best round's.
keep() {
    local key=$1 rss=$2
    ROUNDS[$key]="${ROUNDS[$key]:+${ROUNDS[$key]} / }$MEASURED_RPS"
    if [ -z "${RPS[$key]:-}" ] || [ "$MEASURED_RPS" -gt "${RPS[$key]}" ]; then
        RPS[$key]=$MEASURED_RPS P50[$key]=$MEASURED_P50 P99[$key]=$MEASURED_P99
        ERRORS[$key]=$MEASURED_ERRORS CPU[$key]=$MEASURED_CPU UP_CPU[$key]=$MEASURED_UP_CPU CPU_US[$key]=$MEASURED_CPU_US
        SYSCALLS[$key]=$MEASURED_SYSCALLS
        RSS[$key]=$rss
    fi
}

check_through() { # key url [curl args...]: one request must come back 200 with the body
    local key=$1 url=$2; shift 2
    local got
    got=$(curl -sS --max-time 5 -D "$TMP/check-headers.txt" "$@" -w ' %{http_code}' "$url" 2>&1 || true)
    if [ "$got" != "$BODY 200" ]; then
        log "${LABEL[$key]}: a request through it answered: $got"
        return 1
    fi
    TLS[$key]=$(tr -d '\r' <"$TMP/check-headers.txt" | awk -F': ' 'tolower($1) == "x-upstream-tls" {print $2}')
}

# measure_proxy key pid url: the proxy's idle RSS, one request checked
# through it (returns 1 if that fails), then the measured run, whose figures
# are kept with the RSS idle and at peak.
measure_proxy() {
    local key=$1 pid=$2 url=$3 idle
    idle=$(mem_kb VmRSS "$pid")
    check_through "$key" "$url" || return 1
    if measure "$key" "$pid" "$url"; then
        keep "$key" "$(mib "$idle") → $(mib "$(mem_kb VmHWM "$pid")")"
    fi
}

threads_of() { echo "$(awk '$1 == "Threads:" {print $2}' "/proc/$1/status") threads"; }

# ---------------------------------------------------------------- nginx proxy
nginx_proxy_conf() { # workers port
    local workers=$1 port=$2
    nginx_common "proxy-$workers"
    echo "worker_processes $workers;"
    echo "http {"
    nginx_http_common "proxy-$workers"
    cat <<EOF
    upstream api {
        server 127.0.0.1:$UP_PORT;
        keepalive 128;
        keepalive_requests 100000000;
        keepalive_timeout 120s;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass https://api/bearer/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host 127.0.0.1:$UP_PORT;
            proxy_set_header Authorization "Bearer $BEARER_TOKEN";
            proxy_ssl_protocols TLSv1.2 TLSv1.3;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate $TMP/pki/ca.crt;
            proxy_ssl_name localhost;
            proxy_ssl_session_reuse on;
        }
    }
}
EOF
}

# ---------------------------------------------------------------- sidekey
write_secret() { mkdir -p "$TMP/secrets/$1"; printf '%s' "$3" >"$TMP/secrets/$1/$2"; }

mkdir -p "$TMP/secrets"
write_secret bench-token token "$BEARER_TOKEN"
write_secret bench-signing key "$SIGNING_KEY"
mkdir -p "$TMP/secrets/bench-ca"
cp "$TMP/pki/ca.crt" "$TMP/secrets/bench-ca/ca.crt"

cat >"$TMP/bearer.yaml" <<EOF
apiVersion: sidekey.dev/v1alpha1
kind: ApiDatasource
metadata: { name: bench-bearer }
spec:
  url: $UPSTREAM/bearer
  tls:
    caCertificateSecretRef: { name: bench-ca, key: ca.crt }
    trustSystemRoots: false
  authentication:
    type: BearerToken
    bearerToken:
      tokenSecretRef: { name: bench-token, key: token }
EOF

# start_sidekey name datasource workers(1|auto): sets STARTED_PID, SK_PORT, SK_ADMIN
start_sidekey() {
    local name=$1 ds=$2 workers=$3 port admin cpus
    port=$(free_port); admin=$(free_port)
    while [ "$admin" = "$port" ]; do admin=$(free_port); done
    local env=(RUST_LOG=warn)
    local flags=()
    if grep -q -- '--log-level' <<<"$SIDEKEY_HELP"; then flags+=(--log-level warn); fi
    # wrk has closed its connections by the time the sidecar is stopped.
    if grep -q -- '--shutdown-grace' <<<"$SIDEKEY_HELP"; then flags+=(--shutdown-grace 2); fi
    if [ "$workers" = 1 ]; then
        cpus=$PROXY_CPU
        if grep -q -- '--worker-threads' <<<"$SIDEKEY_HELP"; then
            flags+=(--worker-threads 1)
        else
            # tokio's multi-thread runtime reads TOKIO_WORKER_THREADS when the
            # program does not set a count itself.
            env+=(TOKIO_WORKER_THREADS=1)
        fi
    else
        cpus="0-$((NCPU - 1))"
    fi
    env "${env[@]}" taskset -c "$cpus" "$SIDEKEY_BIN" --datasource "$ds" --secrets-dir "$TMP/secrets" \
        --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" "${flags[@]}" \
        >"$TMP/sidekey-$name.log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    SK_PORT=$port
    SK_ADMIN=$admin
}

sidekey_ready() { # admin_port pid
    for _ in $(seq 1 200); do
        kill -0 "$2" 2>/dev/null || return 1
        curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$1/readyz" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# run_sidekey key datasource workers path: one round of a sidekey scenario.
run_sidekey() {
    local key=$1 ds=$2 workers=$3 path=$4 label=${LABEL[$1]}
    if [ "$SIDEKEY_STATUS" != ok ]; then STATUS[$key]=$SIDEKEY_STATUS; return; fi
    if [ -z "$ds" ]; then STATUS[$key]=$OAUTH_STATUS; return; fi
    local pid port admin
    start_sidekey "$key" "$ds" "$workers"
    pid=$STARTED_PID port=$SK_PORT admin=$SK_ADMIN
    if ! sidekey_ready "$admin" "$pid"; then
        log "$label: sidekey did not become ready; its log:"; tail -n 20 "$TMP/sidekey-$key.log" >&2 || true
        STATUS[$key]="pending (sidecar not ready: $(tail -n 1 "$TMP/sidekey-$key.log" | tr '|' '/' | cut -c1-120))"
        stop_pid "$pid"; forget_pid "$pid"; return
    fi
    sleep 0.5
    THREADS[$key]=$(threads_of "$pid")
    if ! measure_proxy "$key" "$pid" "http://127.0.0.1:$port$path"; then
        STATUS[$key]="failed (a request through sidekey did not get 200)"
        tail -n 20 "$TMP/sidekey-$key.log" >&2 || true
        stop_pid "$pid"; forget_pid "$pid"; return
    fi
    if grep -q -i 'error\|panick' "$TMP/sidekey-$key.log"; then
        log "$label: the sidecar logged errors:"; grep -i -m 5 'error\|panick' "$TMP/sidekey-$key.log" >&2 || true
    fi
    stop_pid "$pid"; forget_pid "$pid"
}

# run_nginx_proxy key workers(1|auto): one round of an nginx proxy scenario.
run_nginx_proxy() {
    local key=$1 workers=$2 label=${LABEL[$1]} port cpus pid
    port=$(free_port)
    nginx_proxy_conf "$workers" "$port" >"$TMP/proxy-$workers.conf"
    if [ "$workers" = 1 ]; then cpus=$PROXY_CPU; else cpus="0-$((NCPU - 1))"; fi
    start_nginx "proxy-$workers" "$TMP/proxy-$workers.conf" "$cpus"
    pid=$STARTED_PID
    wait_http "http://127.0.0.1:$port/ping" || die "nginx proxy did not come up: $(cat "$TMP/proxy-$workers/error.log")"
    sleep 0.3
    local n
    n=$(pgrep -c -P "$pid" || true)
    if [ "$n" = 1 ]; then THREADS[$key]="1 worker process"; else THREADS[$key]="$n worker processes"; fi
    measure_proxy "$key" "$pid" "http://127.0.0.1:$port/ping" || die "nginx proxy does not pass requests"
    stop_nginx "$pid"; forget_pid "$pid"
}

# run_floor key: one round of a floor proxy (minimal1, framing1), on the
# proxy CPU.
run_floor() {
    local key=$1 port pid
    if [ "${FLOOR_STATUS[$key]}" != ok ]; then STATUS[$key]=${FLOOR_STATUS[$key]}; return; fi
    port=$(free_port)
    taskset -c "$PROXY_CPU" "${FLOOR_BIN[$key]}" "127.0.0.1:$port" "$UPSTREAM/bearer" "$TMP/pki/ca.crt" "$BEARER_TOKEN" \
        >"$TMP/$key.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_http "http://127.0.0.1:$port/ping" || die "the $key proxy did not come up: $(cat "$TMP/$key.log")"
    sleep 0.3
    THREADS[$key]=$(threads_of "$pid")
    measure_proxy "$key" "$pid" "http://127.0.0.1:$port/ping" || die "the $key proxy does not pass requests"
    stop_pid "$pid"; forget_pid "$pid"
}

# ---------------------------------------------------------------- OAuth server
# The real authorization server the sidecar's tests use (node-oidc-provider),
# over HTTPS with the bench CA's certificate, so the sidecar trusts one bundle.
OAUTH_STATUS=""
OAUTH_DS=""
OAUTH_DIR="$ROOT/tests/oauth-server"
start_oauth_server() {
    if [ ! -f "$OAUTH_DIR/server.mjs" ]; then OAUTH_STATUS="pending (tests/oauth-server is not there)"; return; fi
    if ! command -v node >/dev/null 2>&1; then OAUTH_STATUS="pending (node is not installed)"; return; fi
    if [ ! -d "$OAUTH_DIR/node_modules/oidc-provider" ]; then
        log "installing the OAuth server's packages (npm ci)"
        npm ci --prefix "$OAUTH_DIR" --no-audit --no-fund >/dev/null 2>&1 ||
            { OAUTH_STATUS="pending (npm ci --prefix tests/oauth-server failed)"; return; }
    fi
    local secret
    secret=$(openssl rand -hex 24)
    mkdir -p "$TMP/oauth"
    printf '[{"client_id": "bench", "client_secret": "%s", "token_endpoint_auth_method": "client_secret_post"}]\n' \
        "$secret" >"$TMP/oauth/clients.json"
    write_secret bench-oauth client-secret "$secret"
    # The sidecar fetches one token at start and holds it for the whole run
    # (ttl 600 s), so this server is idle while wrk runs.
    taskset -c "$LOAD_CPU" node "$OAUTH_DIR/server.mjs" --clients "$TMP/oauth/clients.json" --ttl 600 \
        --tls-cert "$TMP/pki/server.crt" --tls-key "$TMP/pki/server.key" \
        >"$TMP/oauth/stdout.log" 2>"$TMP/oauth/stderr.log" &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    local port=""
    for _ in $(seq 1 150); do
        port=$(sed -n 's/^{"port":\([0-9]*\)}$/\1/p' "$TMP/oauth/stdout.log" 2>/dev/null | head -n1)
        [ -n "$port" ] && break
        kill -0 "$STARTED_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$port" ]; then
        OAUTH_STATUS="pending (the OAuth server did not start: $(tail -n 1 "$TMP/oauth/stderr.log" | tr '|' '/' | cut -c1-100))"
        return
    fi
    log "OAuth server (oidc-provider) on https://127.0.0.1:$port/token"
    OAUTH_DS="$TMP/oauth.yaml"
    cat >"$OAUTH_DS" <<EOF
apiVersion: sidekey.dev/v1alpha1
kind: ApiDatasource
metadata: { name: bench-oauth }
spec:
  url: $UPSTREAM/oauth
  signature:
    secretRef: { name: bench-signing, key: key }
  tls:
    caCertificateSecretRef: { name: bench-ca, key: ca.crt }
    trustSystemRoots: false
  authentication:
    type: OAuth2
    oauth2:
      grantType: ClientCredentials
      accessTokenUrl: https://127.0.0.1:$port/token
      clientId: bench
      clientSecretRef: { name: bench-oauth, key: client-secret }
      scopes: [ payments.read ]
      clientAuthentication: Body
      addTokenTo: Header
EOF
}

# ---------------------------------------------------------------- run
ROUNDS_N=${BENCH_ROUNDS:-2}
LABEL[direct]="upstream directly (HTTPS, no proxy)"
LABEL[nginx1]="nginx proxy, 1 worker, CPU $PROXY_CPU"
LABEL[minimal1]="minimal hyper proxy (examples/minimal_proxy.rs), CPU $PROXY_CPU"
LABEL[framing1]="own HTTP/1 framing floor (examples/framing_floor.rs), CPU $PROXY_CPU"
LABEL[bearer1]="sidekey bearer, 1 worker thread, CPU $PROXY_CPU"
LABEL[oauth1]="sidekey OAuth2 + signature, 1 worker thread, CPU $PROXY_CPU"
LABEL[nginxauto]="nginx proxy, worker_processes auto ($NCPU), any CPU"
LABEL[bearerauto]="sidekey bearer, default worker threads, any CPU"
LABEL[oauthauto]="sidekey OAuth2 + signature, default worker threads, any CPU"

LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
START=$(date +%s)
start_oauth_server

# Rounds interleave the scenarios so a burst of outside load hits one round
# of a scenario, not all of it.
# BENCH_SCENARIOS="nginx1 bearer1" runs a subset (keys as in SCENARIOS).
wanted() { [ -z "${BENCH_SCENARIOS:-}" ] || grep -qw -- "$1" <<<"$BENCH_SCENARIOS"; }
for round in $(seq 1 "$ROUNDS_N"); do
    log "round $round of $ROUNDS_N"
    if wanted direct && check_through direct "$UPSTREAM/bearer/ping" --cacert "$TMP/pki/ca.crt" \
        -H "Authorization: Bearer $BEARER_TOKEN" &&
        measure direct - "$UPSTREAM/bearer/ping" -H "Authorization: Bearer $BEARER_TOKEN"; then
        keep direct "n/a"
    fi
    if wanted nginx1; then run_nginx_proxy nginx1 1; fi
    if wanted minimal1; then run_floor minimal1; fi
    if wanted framing1; then run_floor framing1; fi
    if wanted bearer1; then run_sidekey bearer1 "$TMP/bearer.yaml" 1 /ping; fi
    if wanted oauth1; then run_sidekey oauth1 "$OAUTH_DS" 1 /ping; fi
    if wanted nginxauto; then run_nginx_proxy nginxauto auto; fi
    if wanted bearerauto; then run_sidekey bearerauto "$TMP/bearer.yaml" auto /ping; fi
    if wanted oauthauto; then run_sidekey oauthauto "$OAUTH_DS" auto /ping; fi
done

ELAPSED=$(($(date +%s) - START))
LOADAVG_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

ratio() { # a b
    local a=${RPS[$1]:-} b=${RPS[$2]:-}
    if [ -n "$a" ] && [ -n "$b" ] && [ "$b" -gt 0 ]; then
        awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f", a / b}'
    else
        echo "n/a"
    fi
}

ratio_of() { # array a b: ratio of two float figures
    local -n arr=$1
    local a=${arr[$2]:-} b=${arr[$3]:-}
    awk -v a="$a" -v b="$b" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else print "n/a" }'
}

CPU_MODEL=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
NGINX_VERSION=$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')
WRK_VERSION=$( (wrk --version 2>&1 || true) | head -n1 | awk '{print $2}')
GIT_REV=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)

{
    echo "# sidekey proxy benchmark: results"
    echo
    echo "Run $(date -u +%Y-%m-%dT%H:%MZ) at commit \`$GIT_REV\` by \`bench/run.sh\`: $ROUNDS_N rounds, $ELAPSED s."
    echo "Machine: $NCPU CPUs ($CPU_MODEL), load average $LOADAVG_BEFORE before, $LOADAVG_AFTER after."
    echo "$NGINX_VERSION; wrk $WRK_VERSION with $WRK_THREADS thread and $CONNECTIONS connections, $WARMUP s warm-up then $DURATION s, on CPU $LOAD_CPU; the upstream (nginx, 1 worker, TLS 1.2 or 1.3 as negotiated, ECDSA P-256, keep-alive) on CPU $UPSTREAM_CPU."
    echo
    echo "| scenario | req/s | req/s each round | p50 ms | p99 ms | errors | proxy CPU | proxy CPU µs/req | proxy syscalls/req | upstream CPU | upstream TLS | proxy threads / workers | proxy RSS idle → peak |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |"
    for key in "${SCENARIOS[@]}"; do
        if [ -n "${RPS[$key]:-}" ]; then
            echo "| ${LABEL[$key]} | ${RPS[$key]} | ${ROUNDS[$key]} | ${P50[$key]} | ${P99[$key]} | ${ERRORS[$key]} | ${CPU[$key]} | ${CPU_US[$key]} | ${SYSCALLS[$key]:-n/a} | ${UP_CPU[$key]} | ${TLS[$key]:-?} | ${THREADS[$key]:-n/a} | ${RSS[$key]} |"
        else
            if wanted "$key"; then
                echo "| ${LABEL[$key]} | ${STATUS[$key]:-no figures (wrk failed)} | | | | | | | | | | | |"
            else
                echo "| ${LABEL[$key]} | not run (BENCH_SCENARIOS) | | | | | | | | | | | |"
            fi
        fi
    done
    echo
    echo "Throughput ratio sidekey bearer / nginx: **$(ratio bearer1 nginx1)** with 1 worker on 1 CPU, **$(ratio bearerauto nginxauto)** with default/auto workers."
    echo "Throughput ratio sidekey OAuth2 + signature / nginx: **$(ratio oauth1 nginx1)** with 1 worker on 1 CPU, **$(ratio oauthauto nginxauto)** with default/auto workers."
    echo "System calls per request: nginx ${SYSCALLS[nginx1]:-n/a}, sidekey bearer ${SYSCALLS[bearer1]:-n/a}, sidekey OAuth2 + signature ${SYSCALLS[oauth1]:-n/a}, with 1 worker."
    echo "CPU per request sidekey bearer / nginx: $(ratio_of CPU_US bearer1 nginx1) with 1 worker, $(ratio_of CPU_US bearerauto nginxauto) with default/auto workers; sidekey OAuth2 + signature / nginx: $(ratio_of CPU_US oauth1 nginx1), $(ratio_of CPU_US oauthauto nginxauto)."
    echo "CPU per request of the floors / nginx, 1 CPU: minimal hyper proxy $(ratio_of CPU_US minimal1 nginx1), own HTTP/1 framing $(ratio_of CPU_US framing1 nginx1) (not products: the floors of two designs; the framing floor's req/s is bounded by CPU $LOAD_CPU, wrk and the upstream, when its proxy CPU is under ~95 %)."
    echo
    echo "req/s, p50, p99, errors, CPU and RSS are from the round with the highest req/s. Errors: non-2xx answers plus socket errors (the upstream answers 401 when the credentials are missing). Proxy CPU: CPU time the proxy's processes used during the measured run, in % of one CPU, and per request. Syscalls/req: the proxy's system calls over the warm-up (perf stat, exact) per warm-up request ("n/a" where perf cannot count). RSS: VmRSS after start (idle) and VmHWM after the run (peak); for nginx the sum over master and workers. Threads: the sidecar's OS threads at idle, from /proc. Upstream TLS: the version the upstream saw negotiated by the row's client (curl for the direct row; wrk uses the same OpenSSL)."
} >"$TMP/results.md"

cat "$TMP/results.md"
if [ -n "$RESULTS" ]; then
    cp "$TMP/results.md" "$RESULTS"
    log "written to $RESULTS"
fi
