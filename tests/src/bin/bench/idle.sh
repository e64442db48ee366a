#!/bin/bash
# Idle CPU of N members (docs/performance.md, "Idle CPU of sixteen members"): members of ours on
# 127.0.0.71 and up, joined one after the other, then the CPU ticks of each over IDLE seconds
# and their sum as % of one core; optionally strace -c or perf record of some members.
#   env: BIN (default target/release), N (16, at most 40), IDLE (20), MFLAGS (extra microd flags,
#        e.g. "--network-latency 80ms"), MEMBERS (which members STRACE/PERF look at: "1 16"),
#        STRACE=1 (10 s of strace -c -f each), PERF=1 (10 s of perf record into $OUT/idle-mK.data)
set -u
bin=${BIN:-target/release}
n=${N:-16}; idle=${IDLE:-20}; out=${OUT:-.}
work=$(mktemp -d)
pids=""
cleanup() { for p in $pids; do kill $p 2>/dev/null; done; sleep 2; for p in $pids; do kill -9 $p 2>/dev/null; done; rm -rf $work; }
trap cleanup EXIT
for i in $(seq $n); do
  $bin/microd --state-dir $work/m$i ${MFLAGS:-} > $work/m$i.log 2>&1 & pids="$pids $!"
done
for i in $(seq $n); do until [ -S $work/m$i/control.socket ]; do sleep 0.05; done; done
ctl() { i=$1; shift; $bin/microctl --state-dir $work/m$i "$@"; }
ctl 1 init m1 127.0.0.71:9471 --bootstrap >/dev/null
for i in $(seq 2 $n); do a=$((70+i)); t=$(ctl 1 tokens add m$i); ctl $i init m$i 127.0.0.$a:94$a --token $t > /dev/null; done
# Let formation's role changes and first heartbeats pass.
sleep 8
ctl 1 cluster list | awk -F'|' 'NR>3 && NF>3 {print $4}' | sort | uniq -c | tr -s ' ' | tr '\n' ';'; echo
ticks() { for p in $pids; do awk '{printf "%d ", $14+$15}' /proc/$p/stat; done; }
before=$(ticks); sleep $idle; after=$(ticks)
python3 -c "
a, b = '$before'.split(), '$after'.split()
d = [int(y) - int(x) for x, y in zip(a, b)]
print('ticks per member', d, 'total %.2f %% of a core' % (sum(d) / $idle))"
set -- $pids
for m in ${MEMBERS:-1 $n}; do
  eval p=\${$m}
  if [ "${STRACE:-0}" = 1 ]; then echo "== member $m: strace -c -f, 10 s"; timeout -s INT 10 strace -c -f -p $p 2>&1 | grep -v attached | grep -v detached | head -14; fi
  if [ "${PERF:-0}" = 1 ]; then perf record -e cpu-clock -F 4000 -g -o $out/idle-m$m.data -p $p -- sleep 10 >/dev/null 2>&1; fi
done
