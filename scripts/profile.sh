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
cargo build --release -q -p kv-server -p kv-bench --bin kvd --bin kvctl --bin kv-bench
work=$(mktemp -d /tmp/kv-profile.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
nodes=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
for i in 1 2 3; do
    target/release/kvd --node-id "$i" --listen "127.0.0.1:$((7000 + i))" --data-dir "$work/n$i" \
        --member 1@127.0.0.1:7001 --member 2@127.0.0.1:7002 --member 3@127.0.0.1:7003 \
        --durability "$durability" --log warn >"$work/n$i.log" 2>&1 &
    pids+=($!)
done
for i in 1 2 3; do
    for _ in $(seq 1 100); do
        timeout 5 target/release/kvctl --node "127.0.0.1:$((7000 + i))" status >/dev/null 2>&1 && break
        sleep 0.1
    done
done
target/release/kv-bench --nodes "$nodes" --workload "$workload" --records 20000 --ops 1 \
    --concurrency 64 --value-size 100 >/dev/null
target/release/kv-bench --nodes "$nodes" --workload "$workload" --records 20000 --no-load \
    --duration-secs "$secs" --concurrency "$concurrency" --value-size 100 "${rate[@]}" \
    2>/dev/null | grep -E '^(throughput|latency|errors):' &
bench=$!
if [ -n "$perf_out" ]; then
    sleep $((secs / 3))
    perf record -F 499 --call-graph dwarf,16384 -p "${pids[0]}" -o "$perf_out" -- sleep 6 \
        >/dev/null 2>&1
fi
wait "$bench"
