#!/usr/bin/env bash
# How fast a node that lost its disk is whole again (docs/benchmarks.md):
# three kvd on 127.0.0.1 (N=3), RECORDS keys of 100-byte values loaded,
# node 3 killed, its data directory deleted, node 3 restarted empty, then
# `kvctl repair` on node 3 while kv-bench keeps workload a running on all
# three nodes at RATE ops/s (open loop). Prints the repair's keys/s and
# the load's throughput and latency during it.
#
#   scripts/repair-bench.sh [--records N] [--rate OPS_PER_S] [--durability D]
#
# KV_BIN_DIR=DIR runs the binaries in DIR instead of building this tree's.
set -euo pipefail

records=1000000
rate=5000
durability=always
while [ $# -gt 0 ]; do
    case "$1" in
        --records) records=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --durability) durability=$2; shift 2 ;;
        -h|--help) sed -n 2,11p "$0"; exit 0 ;;
        *) echo "repair-bench: unknown argument $1" >&2; exit 2 ;;
    esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. scripts/three-nodes.sh
work=$(mktemp -d /tmp/kv-repair.XXXXXX)
load_pid=
trap '[ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null; stop_nodes; rm -rf "$work"' EXIT

if pgrep -x kvd >/dev/null; then
    echo "repair-bench: a kvd is already running (pgrep -a kvd); stop it first" >&2
    exit 1
fi
start_three_nodes "$work" "$durability"
echo "loading $records keys..."
"$BIN"/kv-bench --nodes "$NODES" --records "$records" --ops 1 --warmup-ops 0 \
    --workload c >"$work/load.txt"
grep -E "load|ops/s" "$work/load.txt" | head -3

echo "node 3 loses its disk"
kill -9 "${pids[2]}"
wait "${pids[2]}" 2>/dev/null || true
rm -rf "$work/n3"
"$BIN"/kvd --node-id 3 --listen 127.0.0.1:7003 --data-dir "$work/n3" \
    --member 1@127.0.0.1:7001 --member 2@127.0.0.1:7002 --member 3@127.0.0.1:7003 \
    --durability "$durability" --log warn >"$work/n3.log" 2>&1 &
pids[2]=$!
for _ in $(seq 1 100); do
    timeout 5 "$BIN"/kvctl --node 127.0.0.1:7003 status >/dev/null 2>&1 && break
    sleep 0.1
done

"$BIN"/kv-bench --nodes "$NODES" --records "$records" --no-load --workload a \
    --rate "$rate" --ops 100000000 --warmup-ops 0 --duration-secs 600 \
    >"$work/during.txt" 2>&1 &
load_pid=$!
start=$(date +%s.%N)
"$BIN"/kvctl --node 127.0.0.1:7003 repair 2>"$work/progress.txt"
end=$(date +%s.%N)
kill -INT "$load_pid" 2>/dev/null || true
wait "$load_pid" 2>/dev/null || true
load_pid=
tail -1 "$work/progress.txt"
awk -v s="$start" -v e="$end" -v n="$records" \
    'BEGIN { printf "repair of %d keys: %.1f s, %.0f keys/s\n", n, e - s, n / (e - s) }'
echo "load during the repair (workload a, open loop at $rate ops/s):"
grep -E "ops/s|p50|p99|errors" "$work/during.txt" | head -6
