#!/bin/bash
# An idle member's memory over time (docs/performance.md, item 22 of "What was done"): three
# members of ours with a short heartbeat (each round is a write, so the raft log and the WAL
# fill as they would over hours at the default 10 s), then the VmRSS of each, in KiB, every
# STEP seconds for TOTAL seconds; the first is the bootstrapping member (the leader).
#   env: BIN (dir of microd and microctl; default target/release), HEARTBEAT (200ms), STEP (60),
#        TOTAL (600), NET (8: members on 127.0.0.81-83, ports 9481-9483; 7 for 71-73 runs a
#        second cluster beside the first), GLIBC_TUNABLES etc. pass through to the members.
set -u
bin=${BIN:-target/release}
heartbeat=${HEARTBEAT:-200ms}; step=${STEP:-60}; total=${TOTAL:-600}; net=${NET:-8}
work=$(mktemp -d); pids=""
cleanup() { for p in $pids; do kill $p 2>/dev/null; done; sleep 1; for p in $pids; do kill -9 $p 2>/dev/null; done; rm -rf $work; }
trap cleanup EXIT
for i in 1 2 3; do
  $bin/microd --state-dir $work/m$i --heartbeat $heartbeat > $work/m$i.log 2>&1 & pids="$pids $!"
done
for i in 1 2 3; do until [ -S $work/m$i/control.socket ]; do sleep 0.05; done; done
ctl() { i=$1; shift; $bin/microctl --state-dir $work/m$i "$@"; }
ctl 1 init m1 127.0.0.${net}1:94${net}1 --bootstrap > /dev/null || exit 1
for i in 2 3; do
  t=$(ctl 1 tokens add m$i) || exit 1
  ctl $i init m$i 127.0.0.${net}$i:94${net}$i --token "$t" > /dev/null || exit 1
done
started=$(date +%s)
while :; do
  elapsed=$(( $(date +%s) - started ))
  line="t=${elapsed}s"
  for p in $pids; do line="$line $(awk '/^VmRSS:/{print $2}' /proc/$p/status)"; done
  echo "$line"
  [ $elapsed -ge $total ] && break
  sleep $step
done
