#!/usr/bin/env bash
# The benchmark table of docs/benchmarks.md: three kvd on 127.0.0.1
# (N=3, W=2, R=2), kv-bench with 100-byte values and 64 requests in
# flight, workloads a, b, c and w, for each durability policy and
# security given (plaintext, or tls: mutual TLS between the nodes, TLS and
# a token for kv-bench).
#
#   scripts/bench.sh [--durability "always interval:100"] [--records N] [--ops N]
#                    [--workloads "a b c w"] [--rate OPS_PER_S (open loop)]
#                    [--security "plaintext tls"]
#
# KV_BIN_DIR=DIR runs the binaries in DIR instead of building this tree's
# (a before/after comparison in one sitting).
set -euo pipefail

durabilities="always interval:100"
records=100000
ops=300000
workloads="a b c w"
rate=()
securities="plaintext"
while [ $# -gt 0 ]; do
    case "$1" in
        --durability) durabilities=$2; shift 2 ;;
        --records) records=$2; shift 2 ;;
        --ops) ops=$2; shift 2 ;;
        --workloads) workloads=$2; shift 2 ;;
        --rate) rate=(--rate "$2"); shift 2 ;;
        --security) securities=$2; shift 2 ;;
        -h|--help) sed -n 2,11p "$0"; exit 0 ;;
        *) echo "bench: unknown argument $1" >&2; exit 2 ;;
    esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. scripts/three-nodes.sh
work=$(mktemp -d /tmp/kv-bench.XXXXXX)
trap 'stop_nodes; rm -rf "$work"' EXIT

for durability in $durabilities; do
  for security in $securities; do
    start_three_nodes "$work/$durability-$security" "$durability" "$security"
    load=""
    for w in $workloads; do
        echo "== durability $durability, security $security, workload $w"
        "$BIN"/kv-bench --nodes "$NODES" \
            --workload "$w" --records "$records" --ops "$ops" --concurrency 64 \
            --value-size 100 --w 2 --r 2 "${rate[@]}" $load
        load="--no-load"
    done
    stop_nodes
  done
done
