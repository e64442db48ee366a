#!/bin/sh
# What applying a write costs each member inside libdqlite (docs/performance.md, "Where the time
# goes"): after every raft entry it applies, libdqlite's maybeCheckpoint opens a SQLite
# connection (rebuilding a follower's WAL index, which the entry invalidated), checks the WAL's
# size against the checkpoint threshold and closes it. Uprobes on libsqlite3's exported
# sqlite3_open_v2 and sqlite3_close (libdqlite's own symbols are hidden on 1.18) time that
# connection's life on each member during sequential writes through member 1 (the leader).
#   usage (as root, from the checkout): [PLATFORM=debian13] [OPS=3000] [MFLAGS=...] \
#          sh tests/src/bin/bench/follower-apply.sh
#   PLATFORM=debian13 runs the members in the Debian 13 root (libdqlite 1.18; release binaries
#   built there, as `make bench-debian13` does); otherwise on this machine (target/release).
#   Needs perf (uprobes) on this machine.
set -eu
ops=${OPS:-3000}
work=target/follower-apply

if [ "${1:-}" = __members ]; then
    # In the platform: three members, the writes when asked, then wait to be stopped.
    bin=$2
    pids=""
    # Stopped and waited for, so that their addresses are free for the next run.
    trap 'for p in $pids; do kill "$p" 2>/dev/null || true; done; for p in $pids; do wait "$p" 2>/dev/null || true; done' EXIT
    for i in 1 2 3; do
        "$bin/microd" --state-dir "$work/m$i" ${MFLAGS:-} >"$work/m$i.log" 2>&1 &
        pids="$pids $!"
        until [ -S "$work/m$i/control.socket" ]; do sleep 0.05; done
    done
    ctl() { i=$1; shift; "$bin/microctl" --state-dir "$work/m$i" "$@"; }
    ctl 1 init m1 127.0.0.71:9471 --bootstrap >/dev/null
    for i in 2 3; do
        t=$(ctl 1 tokens add "m$i")
        ctl "$i" init "m$i" "127.0.0.7$i:947$i" --token "$t" >/dev/null
    done
    "$bin/bench" drive --socket "$work/m1/control.socket" --op write --ops 300 --workers 1 >/dev/null
    echo $pids >"$work/pids"
    until [ -f "$work/go" ]; do sleep 0.05; done
    "$bin/bench" drive --socket "$work/m1/control.socket" --op write --ops "$ops" --workers 1 >"$work/drive.txt"
    touch "$work/done"
    until [ -f "$work/stop" ]; do sleep 0.1; done
    exit 0
fi

command -v perf >/dev/null || { echo "follower-apply: needs perf (apt-get install linux-perf)" >&2; exit 1; }
rm -rf "$work"
mkdir -p "$work"
if [ "${PLATFORM:-}" = debian13 ]; then
    sh .ci/debian13 run env OPS="$ops" MFLAGS="${MFLAGS:-}" sh "$0" __members target/debian13/release &
else
    sh "$0" __members target/release &
fi
members=$!
cleanup() {
    touch "$work/stop"
    wait "$members" 2>/dev/null || true
    perf probe -q -d 'probe_libsqlite3:*' 2>/dev/null || true
}
trap cleanup EXIT
until [ -f "$work/pids" ]; do sleep 0.1; done
pids=$(cat "$work/pids")
set -- $pids
# The library each member maps (the root's, for members in the Debian 13 root).
lib=$(awk '/libsqlite3\.so/ {print $6; exit}' "/proc/$1/maps")
[ -e "$lib" ] || lib=/proc/$1/root$lib
dqlite=$(awk '/libdqlite\.so/ {print $6; exit}' "/proc/$1/maps")
perf probe -q -d 'probe_libsqlite3:*' 2>/dev/null || true
for probe in sqlite3_open_v2 sqlite3_close%return sqlite3_wal_checkpoint_v2 sqlite3_wal_checkpoint_v2%return; do
    perf probe -q -x "$lib" "$probe"
done
perf record -q -e 'probe_libsqlite3:*' -p "$(echo $pids | tr ' ' ,)" -o "$work/perf.data" >/dev/null 2>&1 &
recorder=$!
sleep 1
touch "$work/go"
until [ -f "$work/done" ]; do sleep 0.1; done
kill -INT "$recorder"
wait "$recorder" || true
echo "libdqlite: $dqlite; $ops sequential writes through m1 (the leader)"
cat "$work/drive.txt"
perf script -i "$work/perf.data" -F pid,tid,time,event 2>/dev/null | awk -v pids="$pids" '
    BEGIN { n = split(pids, p, " "); for (i = 1; i <= n; i++) name[p[i]] = "m" i }
    {
        pid = $1; split(pid, a, "/"); pid = a[1]; tid = a[2]; t = $2 + 0; ev = $3
        if (ev ~ /sqlite3_open_v2:/) { open[tid] = t }
        else if (ev ~ /sqlite3_close__return/ && (tid in open)) {
            d = t - open[tid]; delete open[tid]
            conns[pid]++; life[pid] += d; if (d > max[pid]) max[pid] = d
        }
        else if (ev ~ /sqlite3_wal_checkpoint_v2:/) { ck[tid] = t }
        else if (ev ~ /sqlite3_wal_checkpoint_v2__return/ && (tid in ck)) {
            ckn[pid]++; cks[pid] += t - ck[tid]; delete ck[tid]
        }
    }
    END {
        printf "%-4s %12s %16s %14s %12s %16s\n", "", "connections", "mean life (µs)", "max (µs)", "checkpoints", "mean (µs)"
        for (i = 1; i <= n; i++) {
            q = p[i]
            printf "%-4s %12d %16.1f %14.1f %12d %16.1f\n", name[q], conns[q], conns[q] ? life[q] / conns[q] * 1e6 : 0,
                max[q] * 1e6, ckn[q], ckn[q] ? cks[q] / ckn[q] * 1e6 : 0
        }
    }'
