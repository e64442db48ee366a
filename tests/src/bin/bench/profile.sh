#!/bin/sh
# Where the time of one request through the SQL API goes (docs/performance.md, "Where the time
# goes"). Member 1 is profiled; with NODES=3 two plain members join it first (the write path
# then includes replication over the tunnel).
#   1. context switches and CPU per request (/proc), and latency, without any tool attached;
#   2. system calls per request (strace -c -f);
#   3. instructions per request under callgrind, split by layer, and the main inclusive costs.
# usage: [NODES=3] [WORKERS=16] [KEEP=FILE] tests/src/bin/bench/profile.sh [write|read|idle] [REQUESTS|SECONDS]
# (binaries: BIN, default target/release, built by `make bench-cluster`; needs valgrind and
# strace; KEEP saves the callgrind profile for callgrind_annotate)
set -eu
op=${1:-write}
n=${2:-1000}
nodes=${NODES:-1}
workers=${WORKERS:-1}
bin=${BIN:-target/release}
work=$(mktemp -d)
pids=""
trap 'for p in $pids; do kill "$p" 2>/dev/null || true; done; sleep 1; rm -rf "$work"' EXIT
ctl() {
    i=$1
    shift
    "$bin/microctl" --state-dir "$work/m$i" "$@"
}
port() { echo $((20000 + ($$ * 7 + $1) % 30000)); }

# member NUMBER [WRAPPER...]: starts a member and waits for its control socket.
member() {
    i=$1
    shift
    "$@" "$bin/microd" --state-dir "$work/m$i" >"$work/m$i.log" 2>&1 &
    pids="$pids $!"
    last=$!
    until [ -S "$work/m$i/control.socket" ]; do sleep 0.1; done
}

# cluster [WRAPPER...]: member 1 (under the wrapper) bootstraps; the others join.
cluster() {
    member 1 "$@"
    leader=$last
    ctl 1 init m1 "127.0.0.1:$(port 1)" --bootstrap >/dev/null
    for i in $(seq 2 "$nodes"); do
        member "$i"
        token=$(ctl 1 tokens add "m$i")
        ctl "$i" init "m$i" "127.0.0.1:$(port "$i")" --token "$token" >/dev/null
    done
}

stop() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    for p in $pids; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
    pids=""
    rm -rf "$work"/m*
}

drive() { "$bin/bench" drive --socket "$work/m1/control.socket" "$@"; }
# run: the requests, or for `idle` N seconds of nothing.
run() {
    if [ "$op" = idle ]; then sleep "$n"; else drive --op "$op" --ops "$n" --workers "$workers" "$@"; fi
}
# Reads need the keys written first; writes are warmed up the same way.
warm() { drive --op write --ops "$n" --workers "$workers" >/dev/null; }

echo "== $op x $n, $workers worker(s), $nodes member(s): without tools"
cluster
warm
if [ "$op" = idle ]; then
    before=$(awk '{print $14 + $15}' "/proc/$leader/stat")
    sleep "$n"
    after=$(awk '{print $14 + $15}' "/proc/$leader/stat")
    echo "member 1 idle: $(( (after - before) * 100 / $(getconf CLK_TCK) / n )) % of a core"
else
    run --pid "$leader"
fi

echo "== system calls of member 1 per request (strace -c -f)"
strace -c -f -o "$work/strace.txt" -p "$leader" &
tracer=$!
sleep 1
run >/dev/null
kill -INT "$tracer"
wait "$tracer" || true
awk -v n="$n" '/^-/ {next} /total/ {printf "total: %.1f per request\n", $4 / n; next}
    $4 ~ /^[0-9]+$/ && $4 / n >= 0.05 {printf "  %-16s %.1f\n", $NF, $4 / n}' "$work/strace.txt"
stop

echo "== callgrind: instructions per request of member 1"
cluster valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/callgrind.out"
warm
callgrind_control -i on "$leader" >/dev/null
run >/dev/null
callgrind_control -d "$leader" >/dev/null
callgrind_control -i off "$leader" >/dev/null
out=$(ls "$work"/callgrind.out.* | tail -1)
if [ -n "${KEEP:-}" ]; then cp "$out" "$KEEP"; fi
"$bin/bench" layers "$out" "$n"
echo
echo "inclusive instructions per request:"
callgrind_annotate --inclusive=yes "$out" 2>/dev/null | awk -v n="$n" '
    function show(label) { if (!(label in seen)) { seen[label] = 1; printf "  %-60s %9.0f\n", label, c / n } }
    { c = $1; gsub(",", "", c) }
    /:uv_run / { show("libdqlite thread (uv_run)") }
    /worker::Context::run / { show("tokio workers (Context::run)") }
    /serve::dispatch::/ { show("microcluster rest::serve::dispatch") }
    /endpoints::sql::run::/ { show("microcluster endpoints::sql::run") }
    /writer::run::/ { show("microcluster write queue (writer::run)") }
    /dqlite::sql_text::split_statements/ { show("dqlite::sql_text::split_statements") }
    /dqlite::sql_text::classify/ { show("dqlite::sql_text::classify") }
    /serve::render/ { show("microcluster rest::serve::render (JSON out)") }
    /Request::json/ { show("microcluster rest::Request::json (JSON in)") }
    /tunnel::/ { show("microcluster tunnel (first entry)") }
    /gateway__handle/ { show("libdqlite gateway__handle") }
    /db__open_follower/ { show("libdqlite db__open_follower (per applied entry)") }
    /:sqlite3_prepare_v2 / { show("sqlite3_prepare_v2") }
    /:sqlite3InitOne / { show("sqlite3InitOne (schema parse)") }
    /:sqlite3_step / { show("sqlite3_step") }
    /Connection::roundtrip::/ { show("dqlite client round trips (Connection::roundtrip)") }
    /:raft_apply / { show("raft_apply") }
    /:fsync|:fdatasync/ { show("fsync wrapper") }'
