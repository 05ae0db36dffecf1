#!/usr/bin/env bash
# Where a run's tail comes from: three fresh kvd on 127.0.0.1, records
# loaded, then kv-bench's open loop at one rate with --timeline while
# scripts/timeline.py samples each node's engine counters and CPU; prints
# each second's p99 and max beside what each node did in it.
#
#   scripts/timeline.sh [--workload a] [--durability always] [--rate 8000]
#                       [--secs 60] [--records 20000] [--slow-ms 5]
#                       [--out DIR]   # keep bench.csv and samples.csv there
set -euo pipefail

workload=a
durability=always
rate=8000
secs=60
records=20000
slow=5
out=
while [ $# -gt 0 ]; do
    case "$1" in
        --workload) workload=$2; shift 2 ;;
        --durability) durability=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --secs) secs=$2; shift 2 ;;
        --records) records=$2; shift 2 ;;
        --slow-ms) slow=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) sed -n 2,9p "$0"; exit 0 ;;
        *) echo "timeline: unknown argument $1" >&2; exit 2 ;;
    esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. scripts/three-nodes.sh
loaded_cluster timeline "$durability" "$workload" "$records"
dir=${out:-$work}
mkdir -p "$dir"
pidlist=$(IFS=,; echo "${pids[*]}")
python3 scripts/timeline.py sample "$dir/samples.csv" "$HTTP" "$pidlist" &
sampler=$!
"$BIN"/kv-bench --nodes "$NODES" --workload "$workload" --records "$records" --no-load \
    --concurrency 64 --value-size 100 --rate "$rate" --ops $((rate * secs * 2)) \
    --duration-secs "$secs" --warmup-ops "$rate" --timeline "$dir/bench.csv" | grep -E "throughput|latency|errors|_us"
kill "$sampler"
wait "$sampler" || true
python3 scripts/timeline.py join "$dir/bench.csv" "$dir/samples.csv" --slow-ms "$slow"
