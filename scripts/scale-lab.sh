#!/usr/bin/env bash
# The scale lab (docs/fault-lab.md, "Ten nodes"): ten network namespaces;
# five kvd start as the cluster (mutual TLS, tokens, the five-host example's
# configuration), kv-bench loads them with history recording, then nodes 6
# to 10 join one by one through a seed, and nodes 3 and 8 are killed and
# removed from other nodes (kvctl remove), all under load. Prints how long
# each change took; at the end kv-bench waits until every written key is
# identical at all its replicas and the checker runs over the history: any
# violation, or a change that did not finish, fails the lab.
#
#   scripts/scale-lab.sh [--rate OPS_PER_S] [--records N] [--settle SECS]
#
# Needs root (namespaces). Bounded: every wait has a deadline, and the
# processes it started are stopped by their pids on exit.
set -euo pipefail

rate=1500
records=5000
settle=5
while [ $# -gt 0 ]; do
    case "$1" in
        --rate) rate=$2; shift 2 ;;
        --records) records=$2; shift 2 ;;
        --settle) settle=$2; shift 2 ;;
        -h|--help) sed -n 2,14p "$0"; exit 0 ;;
        *) echo "scale-lab: unknown argument $1" >&2; exit 2 ;;
    esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. scripts/lab-lib.sh
exec 9>/tmp/kv-fault-lab.lock
flock -n 9 || { echo "scale-lab: another lab is running" >&2; exit 2; }
echo "scale-lab: building kvd, kvctl and kv-bench (release)"
cargo build --release -q -p kv-server -p kv-bench --bin kvd --bin kvctl --bin kv-bench
kvd=$root/target/release/kvd
kvctl=$root/target/release/kvctl
bench=$root/target/release/kv-bench
work=$(mktemp -d /tmp/kv-scale-lab.XXXXXX)
nodes=10
declare -a addr pid prefix ip http
bench_pid=

cleanup() {
    if [ -n "$bench_pid" ]; then kill -9 "$bench_pid" 2>/dev/null || true; fi
    for i in $(seq 1 $nodes); do
        if [ -n "${pid[$i]:-}" ]; then kill -9 "${pid[$i]}" 2>/dev/null || true; fi
    done
    lab_netns_down "$nodes"
}
trap cleanup EXIT

lab_netns_up "$nodes" || { echo "scale-lab: cannot make network namespaces here (root needed)" >&2; exit 1; }
lab_certs "$work/certs" "$nodes"

# Node $1 with the lab's timings; the first five from the five-host
# example's files, the later ones by seed and join.
start_node() {
    local i=$1 config=()
    local cluster=(--member "1@${addr[1]}" --member "2@${addr[2]}" --member "3@${addr[3]}"
        --member "4@${addr[4]}" --member "5@${addr[5]}")
    if [ "$i" -le 5 ]; then
        config=(--config "$root/deploy/five-hosts/n$i.toml")
    else
        cluster=(--seed "${addr[1]}" --join)
    fi
    # shellcheck disable=SC2086
    ${prefix[$i]} "$kvd" "${config[@]}" --node-id "$i" --listen "${addr[$i]}" --data-dir "$work/n$i" \
        --http "${http[$i]}" --http-token --certs-dir "$work/certs" "${cluster[@]}" --durability always \
        --gossip-interval-ms 300 --anti-entropy-interval-ms 2000 --vnodes 64 --log warn \
        >>"$work/n$i.log" 2>&1 9>&- &
    pid[$i]=$!
    disown "${pid[$i]}"
}

# Seconds (with a fraction) since $1 (date +%s.%N).
since() { awk -v s="$1" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }'; }

# Waits until node $1's status shows ring epoch $2 and its owners are $3
# (space-separated ids, ascending); fails after $4 seconds.
await_ring() {
    local at=$1 epoch=$2 owners=$3 limit=$4 deadline=$((SECONDS + $4)) got
    while [ $SECONDS -lt "$deadline" ]; do
        got=$(timeout 5 "$kvctl" --json --node "${addr[$at]}" status 2>/dev/null | python3 -c "
import json, sys
s = json.load(sys.stdin)
print(s['ring_epoch'], ' '.join(str(m['id']) for m in s['members'] if m['in_ring']))
" 2>/dev/null || true)
        [ "$got" = "$epoch $owners" ] && return 0
        sleep 0.2
    done
    echo "scale-lab: node $at never showed ring epoch $epoch with owners $owners (last: $got) within $limit s" >&2
    return 1
}

for i in 1 2 3 4 5; do start_node "$i"; done
for i in 1 2 3 4 5; do
    for _ in $(seq 1 150); do timeout 5 "$kvctl" --node "${addr[$i]}" status >/dev/null 2>&1 && break; sleep 0.1; done
done
await_ring 1 1 "1 2 3 4 5" 30

list=$(for i in 1 2 4 5; do printf '%s,' "${addr[$i]}"; done)
"$bench" --nodes "${list%,}" --workload a --records "$records" --ops 1000000000 \
    --rate "$rate" --concurrency 32 --timeout-ms 2000 --duration-secs 1200 \
    --history "$work/history.jsonl" --converge-secs 180 >"$work/bench.txt" 2>"$work/bench.err" &
bench_pid=$!
sleep "$settle"
changes=()
owners="1 2 3 4 5"
epoch=1
for i in 6 7 8 9 10; do
    started=$(date +%s.%N)
    start_node "$i"
    epoch=$((epoch + 1))
    owners=$(echo $owners "$i" | tr ' ' '\n' | sort -n | tr '\n' ' ' | sed 's/ $//')
    await_ring 1 "$epoch" "$owners" 240
    await_ring "$i" "$epoch" "$owners" 60
    took=$(since "$started")
    changes+=("join of node $i (start to ring epoch $epoch everywhere asked): ${took} s")
    echo "$(date +%T) node $i joined: ring epoch $epoch, ${took} s"
    sleep "$settle"
done
for pair in "3 1" "8 2"; do
    set -- $pair
    gone=$1 via=$2
    kill -9 "${pid[$gone]}"
    started=$(date +%s.%N)
    out=""
    for _ in $(seq 1 30); do
        if out=$(timeout 300 "$kvctl" --node "${addr[$via]}" remove "$gone" 2>&1); then break; fi
        sleep 1
    done
    echo "$out"
    epoch=$((epoch + 1))
    owners=$(echo $owners | tr ' ' '\n' | grep -vx "$gone" | tr '\n' ' ' | sed 's/ $//')
    await_ring "$via" "$epoch" "$owners" 60
    await_ring 1 "$epoch" "$owners" 60
    took=$(since "$started")
    changes+=("removal of node $gone through node $via (kill to ring epoch $epoch): ${took} s")
    echo "$(date +%T) node $gone removed: ring epoch $epoch, ${took} s"
    sleep "$settle"
done
kill -INT "$bench_pid"
status=0
wait "$bench_pid" || status=$?
bench_pid=
cat "$work/bench.txt"
echo
echo "scale lab report (10 namespaces; 5 nodes, 5 joins, 2 removals under load at $rate ops/s; work in $work)"
for c in "${changes[@]}"; do echo "  $c"; done
violations=$(sed -n 's/^violations: \([0-9]*\).*/\1/p' "$work/bench.txt" | tail -1)
echo "violations: ${violations:-unknown}"
if [ "$status" != 0 ] || [ "${violations:-1}" != 0 ]; then
    tail -20 "$work/bench.err" >&2
    exit 1
fi
rm -rf "$work"
