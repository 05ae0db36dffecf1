#!/usr/bin/env bash
# A quick measurement for profiling work: three kvd on 127.0.0.1 (N=3,
# W=2, R=2), 20,000 records loaded, then one workload for a fixed time,
# optionally under perf.
#
#   scripts/profile.sh [--workload a] [--durability interval:100] [--secs 20]
#                      [--rate OPS_PER_S] [--concurrency 64]
#                      [--perf FILE (perf record -g of node 1, 6 s, mid-run)]
set -euo pipefail

workload=a
durability=interval:100
secs=20
rate=()
concurrency=64
perf_out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --workload) workload=$2; shift 2 ;;
        --durability) durability=$2; shift 2 ;;
        --secs) secs=$2; shift 2 ;;
        --rate) rate=(--rate "$2"); shift 2 ;;
        --concurrency) concurrency=$2; shift 2 ;;
        --perf) perf_out=$2; shift 2 ;;
        -h|--help) sed -n 2,8p "$0"; exit 0 ;;
        *) echo "profile: unknown argument $1" >&2; exit 2 ;;
    esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. scripts/three-nodes.sh
loaded_cluster profile "$durability" "$workload" 20000
nodes=$NODES
"$BIN"/kv-bench --nodes "$nodes" --workload "$workload" --records 20000 --no-load \
    --duration-secs "$secs" --concurrency "$concurrency" --value-size 100 "${rate[@]}" \
    2>/dev/null | grep -E '^(throughput|latency|errors):' &
bench=$!
if [ -n "$perf_out" ]; then
    sleep $((secs / 3))
    perf record -F 499 --call-graph dwarf,16384 -p "${pids[0]}" -o "$perf_out" -- sleep 6 \
        >/dev/null 2>&1
fi
wait "$bench"
