#!/bin/bash
# Sequential point reads of ours beside dqlite-demo's, alternating (docs/performance.md, "Why a
# sequential read waits"): three members of ours on 127.0.0.41-43 and three dqlite-demo nodes on
# 127.0.0.51-53, OPS sequential writes to each, then ROUNDS rounds of OPS sequential reads.
#   env: BIN (dir of microd, microctl, bench; default target/release, built by `make bench-cluster`),
#        ROUNDS (3), OPS (3000), DEMO=0 (ours only), PAUSE (seconds between rounds),
#        SPIN=1 (two `nice -n 19` busy loops keep both CPUs out of their idle state),
#        PIN (a wrapper for our members, e.g. "taskset -c 0"); needs dqlite-demo (go-dqlite).
set -u
bin=${BIN:-target/release}
rounds=${ROUNDS:-3}; ops=${OPS:-3000}
work=$(mktemp -d)
pids=""
# dqlite-demo may not stop on SIGTERM once its peers are gone: what is left after 2 s is killed.
cleanup() { for p in $pids; do kill $p 2>/dev/null; done; sleep 2; for p in $pids; do kill -9 $p 2>/dev/null; done; rm -rf $work; }
trap cleanup EXIT
for i in 1 2 3; do
  ${PIN:-} $bin/microd --state-dir $work/m$i > $work/m$i.log 2>&1 & pids="$pids $!"
  until [ -S $work/m$i/control.socket ]; do sleep 0.05; done
done
ctl() { i=$1; shift; $bin/microctl --state-dir $work/m$i "$@"; }
ctl 1 init m1 127.0.0.41:9441 --bootstrap >/dev/null
for i in 2 3; do t=$(ctl 1 tokens add m$i); ctl $i init m$i 127.0.0.4$i:944$i --token $t > /dev/null; done
for i in 1 2 3; do
  a=""; [ $i -gt 1 ] && a="--join 127.0.0.51:9551"
  dqlite-demo --api 127.0.0.5$i:8551 --db 127.0.0.5$i:9551 --dir $work/d$i $a >/dev/null 2>&1 & pids="$pids $!"
  sleep 1
done
sleep 3
$bin/bench drive --socket $work/m1/control.socket --op write --ops $ops | sed 's/^/ours  /'
$bin/bench drive --tcp 127.0.0.51:8551 --api demo --op write --ops $ops | sed 's/^/demo  /'
spin=""
if [ "${SPIN:-0}" = 1 ]; then for k in 1 2; do nice -n 19 sh -c 'while :; do :; done' & spin="$spin $!"; done; pids="$pids $spin"; fi
for r in $(seq $rounds); do
  $bin/bench drive --socket $work/m1/control.socket --op read --ops $ops | sed 's/^/ours  /'
  [ "${DEMO:-1}" = 1 ] && $bin/bench drive --tcp 127.0.0.51:8551 --api demo --op read --ops $ops | sed 's/^/demo  /'
  sleep ${PAUSE:-0}
done
