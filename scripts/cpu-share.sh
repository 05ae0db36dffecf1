#!/usr/bin/env bash
# Where the CPU goes under load: three kvd on 127.0.0.1 and kv-bench, one
# workload for a fixed time; prints the CPU seconds each process used
# (user + system, from /proc) and its share of the total.
#
#   scripts/cpu-share.sh [--workload a] [--durability always] [--secs 15]
#                        [--records 20000] [-- extra kv-bench arguments]
set -euo pipefail

workload=a
durability=always
secs=15
records=20000
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --workload) workload=$2; shift 2 ;;
        --durability) durability=$2; shift 2 ;;
        --secs) secs=$2; shift 2 ;;
        --records) records=$2; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n 2,7p "$0"; exit 0 ;;
        *) echo "cpu-share: unknown argument $1" >&2; exit 2 ;;
    esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. scripts/three-nodes.sh
loaded_cluster cpu "$durability" "$workload" "$records" "${extra[@]}"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
before=()
for p in "${pids[@]}"; do before+=("$(ticks "$p")"); done
"$BIN"/kv-bench --nodes "$NODES" --workload "$workload" --records "$records" --no-load \
    --duration-secs "$secs" --concurrency 64 --value-size 100 "${extra[@]}" > "$work/bench.out" &
bench=$!
# The client's own CPU, read just before it exits.
client=0
while kill -0 "$bench" 2>/dev/null; do
    t=$(ticks "$bench" 2>/dev/null) && client=$t
    sleep 0.2
done
wait "$bench"
grep -E "throughput|latency:" "$work/bench.out"
total=$client
used=()
for i in "${!pids[@]}"; do
    u=$(( $(ticks "${pids[$i]}") - ${before[$i]} ))
    used+=("$u")
    total=$((total + u))
done
for i in "${!pids[@]}"; do
    awk -v n="kvd $((i + 1))" -v u="${used[$i]}" -v t="$total" -v hz="$hz" \
        'BEGIN { printf "%-10s %6.1f cpu-s %5.1f%%\n", n, u / hz, 100 * u / t }'
done
awk -v u="$client" -v t="$total" -v hz="$hz" -v s="$secs" \
    'BEGIN { printf "%-10s %6.1f cpu-s %5.1f%%  (total %.1f cpu-s in %d s)\n", "kv-bench", u / hz, 100 * u / t, t / hz, s }'
