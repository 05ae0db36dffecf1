#!/usr/bin/env bash
# Latency against offered load: three kvd on 127.0.0.1 (N=3, W=2, R=2),
# records loaded, then kv-bench's open-loop sweep at each rate; prints a
# line per rate and draws the sweep to an SVG.
#
#   scripts/sweep.sh [--workload a] [--durability always] [--secs 8]
#                    [--records 20000] [--rates 2000,4000,...] [--plot FILE.svg]
set -euo pipefail

workload=a
durability=always
secs=8
records=20000
rates=2000,4000,6000,8000,10000,12000,14000,16000,18000,20000,24000
plot=sweep.svg
while [ $# -gt 0 ]; do
    case "$1" in
        --workload) workload=$2; shift 2 ;;
        --durability) durability=$2; shift 2 ;;
        --secs) secs=$2; shift 2 ;;
        --records) records=$2; shift 2 ;;
        --rates) rates=$2; shift 2 ;;
        --plot) plot=$2; shift 2 ;;
        -h|--help) sed -n 2,8p "$0"; exit 0 ;;
        *) echo "sweep: unknown argument $1" >&2; exit 2 ;;
    esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. scripts/three-nodes.sh
loaded_cluster sweep "$durability" "$workload" "$records"
"$BIN"/kv-bench --nodes "$NODES" --workload "$workload" --records "$records" --no-load \
    --concurrency 64 --value-size 100 --sweep "$rates" --duration-secs "$secs" --plot "$plot"
