#!/usr/bin/env bash
# The benchmark table of docs/benchmarks.md: three kvd on 127.0.0.1
# (N=3, W=2, R=2), kv-bench with 100-byte values and 64 requests in
# flight, workloads a, b, c and w, for each durability policy given.
#
#   scripts/bench.sh [--durability "always interval:100"] [--records N] [--ops N]
#                    [--workloads "a b c w"] [--rate OPS_PER_S (open loop)]
set -euo pipefail

durabilities="always interval:100"
records=100000
ops=300000
workloads="a b c w"
rate=()
while [ $# -gt 0 ]; do
    case "$1" in
        --durability) durabilities=$2; shift 2 ;;
        --records) records=$2; shift 2 ;;
        --ops) ops=$2; shift 2 ;;
        --workloads) workloads=$2; shift 2 ;;
        --rate) rate=(--rate "$2"); shift 2 ;;
        -h|--help) sed -n 2,8p "$0"; exit 0 ;;
        *) echo "bench: unknown argument $1" >&2; exit 2 ;;
    esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release -q -p kv-server -p kv-bench --bin kvd --bin kvctl --bin kv-bench
work=$(mktemp -d /tmp/kv-bench.XXXXXX)
pids=()
stop() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    done
    pids=()
}
trap 'stop; rm -rf "$work"' EXIT

for durability in $durabilities; do
    dir="$work/$durability"
    for i in 1 2 3; do
        target/release/kvd --node-id "$i" --listen "127.0.0.1:$((7000 + i))" --data-dir "$dir/n$i" \
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
    load=""
    for w in $workloads; do
        echo "== durability $durability, workload $w"
        target/release/kv-bench --nodes 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 \
            --workload "$w" --records "$records" --ops "$ops" --concurrency 64 \
            --value-size 100 --w 2 --r 2 "${rate[@]}" $load
        load="--no-load"
    done
    stop
done
