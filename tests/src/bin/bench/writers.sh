#!/bin/bash
# 16 writers through member 1 of three (docs/performance.md, item 12 of "What was done"): three
# members of ours on 127.0.0.61-63, then ROUNDS rounds of OPS writes by WORKERS workers, each
# with the CPU ticks of every member before and after (and their context switches, voluntary/
# involuntary), and the members' RSS and the write queue's metrics at the end.
#   env: BIN (dir of microd, microctl, bench; default target/release, built by `make bench-cluster`),
#        ROUNDS (3), OPS (20000), WORKERS (16), MFLAGS (extra microd flags), DRIVE_ARGS (extra
#        `bench drive` flags, e.g. --think-ms 3),
#        PERF=1 (perf record members 1 and 2 for 6 s of the first round into $OUT/leader.data and
#        $OUT/follower.data; OUT defaults to the current directory)
set -u
bin=${BIN:-target/release}
rounds=${ROUNDS:-3}; ops=${OPS:-20000}; workers=${WORKERS:-16}; out=${OUT:-.}
work=$(mktemp -d)
pids=""
cleanup() { for p in $pids; do kill $p 2>/dev/null; done; sleep 2; for p in $pids; do kill -9 $p 2>/dev/null; done; rm -rf $work; }
trap cleanup EXIT
for i in 1 2 3; do
  $bin/microd --state-dir $work/m$i ${MFLAGS:-} > $work/m$i.log 2>&1 & pids="$pids $!"
  until [ -S $work/m$i/control.socket ]; do sleep 0.05; done
done
ctl() { i=$1; shift; $bin/microctl --state-dir $work/m$i "$@"; }
ctl 1 init m1 127.0.0.61:9461 --bootstrap >/dev/null
for i in 2 3; do t=$(ctl 1 tokens add m$i); ctl $i init m$i 127.0.0.6$i:946$i --token $t > /dev/null; done
sleep 2
cpu() {
  echo -n "cpu ticks (context switches):"
  for p in $pids; do
    echo -n " $(awk '{print $14+$15}' /proc/$p/stat)"
    cat /proc/$p/task/*/status | awk '/^voluntary/{v+=$2} /^nonvoluntary/{n+=$2} END{printf " (%d/%d)", v, n}'
  done
  echo
}
set -- $pids
for r in $(seq $rounds); do
  cpu
  if [ "${PERF:-0}" = 1 ] && [ $r = 1 ]; then
    (sleep 2; perf record -e cpu-clock -F 2000 -g -o $out/leader.data -p $1 -- sleep 6 >/dev/null 2>&1) &
    (sleep 2; perf record -e cpu-clock -F 2000 -g -o $out/follower.data -p $2 -- sleep 6 >/dev/null 2>&1) &
  fi
  $bin/bench drive --socket $work/m1/control.socket --op write --ops $ops --workers $workers ${DRIVE_ARGS:-}
  cpu
done
echo "VmRSS (kB):$(for p in $pids; do awk '/^VmRSS/{printf " %s", $2}' /proc/$p/status; done)"
curl -s --unix-socket $work/m1/control.socket http://member/core/1.0/metrics | grep -E '^microcluster_write_(batch_size_(sum|count)|batch_duration_seconds_(sum|count)|batches_merged)'
