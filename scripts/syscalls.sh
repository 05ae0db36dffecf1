#!/usr/bin/env bash
# What a node does in the kernel under load: three kvd on 127.0.0.1
# (N=3, W=2, R=2), records loaded, one workload for 12 s, and node 1's
# system calls (fdatasync, futex, sendto, recvfrom, epoll_wait) and context
# switches counted by perf over 5 s of it.
#
#   scripts/syscalls.sh [--workload a] [--durability always]
set -euo pipefail

workload=a
durability=always
while [ $# -gt 0 ]; do
    case "$1" in
        --workload) workload=$2; shift 2 ;;
        --durability) durability=$2; shift 2 ;;
        -h|--help) sed -n 2,7p "$0"; exit 0 ;;
        *) echo "syscalls: unknown argument $1" >&2; exit 2 ;;
    esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. scripts/three-nodes.sh
loaded_cluster syscalls "$durability" "$workload" 20000
"$BIN"/kv-bench --nodes "$NODES" --workload "$workload" --records 20000 --no-load \
    --duration-secs 12 --concurrency 64 --value-size 100 > "$work/bench.out" &
bench=$!
sleep 4
perf stat -e syscalls:sys_enter_fdatasync,syscalls:sys_enter_futex,syscalls:sys_enter_sendto \
    -e syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait,context-switches \
    -p "${pids[0]}" -- sleep 5 2>&1 | grep -E "syscalls|context|elapsed"
wait "$bench"
grep -E "throughput|latency:" "$work/bench.out"
