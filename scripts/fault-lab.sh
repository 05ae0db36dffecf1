#!/usr/bin/env bash
# The fault lab: five kvd processes, each in its own network namespace
# (veth pairs on one bridge), loaded by kv-bench with history recording
# (reads, updates and deletes of the same keys, tombstones collected after
# a short grace), while a nemesis partitions a random minority (iptables
# drops), heals, kills a node with SIGKILL and restarts it, pauses one with
# SIGSTOP then SIGCONT, wipes node 5's data directory and restarts it with
# the same id (a replaced disk), snapshots node 5 while it serves and later
# restarts it from that older copy (a restored backup, a lost tail), and
# fills node 4's disk (a small tmpfs) until its engine refuses writes, then
# frees it and restarts the node, and a stranger tries the nodes' ports
# (plaintext, another CA's certificate, a guessed token, a read token
# writing, a write token making a node leave, /metrics without a token,
# a framed internode hello in plaintext and over TLS with another CA):
# every attempt must be refused. A watch of every key runs through it all
# (the SDK's, moving between nodes as they fail): every acknowledged write
# must come through it, and no key may go backwards. The nodes run with mutual TLS and tokens
# (a CA made for the run). At the end everything heals, kv-bench
# waits until every written key is identical at all its replicas, and the
# checker runs over the history: any violation fails the lab.
#
#   scripts/fault-lab.sh [--duration SECS] [--fault-every SECS] [--seed N]
#                        [--grace SECS] [--loopback] [--strict]
#                        [--min-write-availability PERCENT]
#
# --strict turns sloppy quorum off (W=2, R=2, N=3) and has the checker also
# hold every read to every write acknowledged before it began. --grace is
# the tombstone grace period (30 s): hints older than it are dropped, so a
# partition is healed before it lasts half of it, and backups are restored
# only while younger than it, as an operator must (docs/operations.md).
# --min-write-availability fails the lab when fewer writes than that
# succeed (the report prints availability, reads and writes apart, and
# where the failures came from: scripts/error-breakdown.py).
#
# KV_BIN_DIR=dir runs the binaries there instead of building them.
# 180 s by default; --duration 600 for a soak. Needs root for the
# namespaces; without them (or with --loopback) the nodes run on 127.0.0.1
# and the nemesis only kills and pauses, and the report says so.
set -euo pipefail

duration=180
every=8
seed=1
grace=30
min_write=0
mode=netns
strict=()
sloppy=true
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) duration=$2; shift 2 ;;
        --fault-every) every=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --grace) grace=$2; shift 2 ;;
        --min-write-availability) min_write=$2; shift 2 ;;
        --loopback) mode=loopback; shift ;;
        --strict) strict=(--strict --w 2 --r 2); sloppy=false; shift ;;
        -h|--help) sed -n 2,30p "$0"; exit 0 ;;
        *) echo "fault-lab: unknown argument $1" >&2; exit 2 ;;
    esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. scripts/lab-lib.sh
# One lab at a time: they share namespace names and addresses.
exec 9>/tmp/kv-fault-lab.lock
flock -n 9 || { echo "fault-lab: another fault lab is running" >&2; exit 2; }
# KV_BIN_DIR: run the kvd, kvctl and kv-bench found there instead of
# building them (CI builds them beside the example cluster, in one go).
if [ -n "${KV_BIN_DIR:-}" ]; then
    bin=$(cd "$KV_BIN_DIR" && pwd)
else
    echo "fault-lab: building kvd and kv-bench (release)"
    cargo build --release -q -p kv-server -p kv-bench --bin kvd --bin kvctl --bin kv-bench
    bin=$root/target/release
fi
kvd=$bin/kvd
bench=$bin/kv-bench
work=$(mktemp -d /tmp/kv-fault-lab.XXXXXX)
nodes=5
RANDOM=$seed
declare -a addr pid prefix ip http
declare -A faults=([partition]=0 [kill9]=0 [pause]=0 [heal]=0 [wipe]=0 [backup]=0 [restore]=0 [diskfull]=0 [stranger]=0)
# The node whose disk is wiped and restored, and the one whose disk fills.
disk_node=5
full_node=4
# The node whose log syncer yields (kvd's `syncer = "yielding"`), so the
# faults meet both ways of waking a syncer.
yielding_node=2
# Whether node $full_node's data directory is a small tmpfs of its own.
small_disk=false
# How many times the full node said its storage was failing.
refused=0
breaches=0

cleanup() {
    for i in $(seq 1 $nodes); do
        if [ -n "${pid[$i]:-}" ]; then
            kill -CONT "${pid[$i]}" 2>/dev/null || true
            kill -9 "${pid[$i]}" 2>/dev/null || true
        fi
    done
    if [ "$small_disk" = true ]; then
        for _ in 1 2 3 4 5; do umount "$work/n$full_node" 2>/dev/null && break; sleep 0.2; done
    fi
    if [ "$mode" = netns ]; then
        lab_netns_down "$nodes"
    fi
}
trap cleanup EXIT

setup_netns() {
    lab_netns_up "$nodes"
}

setup_loopback() {
    for i in $(seq 1 $nodes); do
        ip[$i]=127.0.0.1
        addr[$i]=127.0.0.1:$((17300 + i))
        http[$i]=127.0.0.1:$((17350 + i))
        prefix[$i]=""
    done
}

if [ "$mode" = netns ] && ! setup_netns; then
    echo "fault-lab: network namespaces cannot be made here; running the loopback variant (no partitions)"
    cleanup
    mode=loopback
fi
[ "$mode" = loopback ] && setup_loopback

members=()
for i in $(seq 1 $nodes); do members+=(--member "$i@${addr[$i]}"); done

# The cluster's CA, a certificate per node, and tokens: admin (kv-bench's
# checker reads replicas; kvctl status), read and write (the stranger's).
kvctl=$bin/kvctl
certs=$work/certs
lab_certs "$certs" "$nodes"
"$kvctl" --certs-dir "$certs" token new --name reader --role read | head -1 >"$work/read.token"
"$kvctl" --certs-dir "$certs" token new --name writer --role write | head -1 >"$work/write.token"
# The stranger: a CA of its own, an admin client certificate from it, and
# the cluster's CA certificate (so that it does trust the nodes).
stranger_certs=$work/stranger
"$kvctl" --certs-dir "$stranger_certs" certs init --days 2 >/dev/null
"$kvctl" --certs-dir "$stranger_certs" certs client --name mallory --role admin --days 2 >/dev/null
cp "$certs/ca.pem" "$stranger_certs/ca.pem"

# A 1 MiB memtable on the small disk: its engine writes tables and new
# log segments often, so a full disk shows within seconds.
if mkdir -p "$work/n$full_node" && mount -t tmpfs -o size=96m kvlabdisk "$work/n$full_node" 2>/dev/null; then
    small_disk=true
fi

start_node() {
    local i=$1
    local extra=()
    [ "$i" = "$full_node" ] && [ "$small_disk" = true ] && extra=(--memtable-mib 1)
    [ "$i" = "$yielding_node" ] && extra+=(--syncer yielding)
    # shellcheck disable=SC2086
    # The five-host example's configuration (deploy/), with the lab's
    # addresses, directories and fault-friendly timings as flags on top.
    ${prefix[$i]} "$kvd" --config "$root/deploy/five-hosts/n$i.toml" \
        --node-id "$i" --listen "${addr[$i]}" --data-dir "$work/n$i" --http "${http[$i]}" \
        --certs-dir "$certs" --http-token "${members[@]}" --durability always --gossip-interval-ms 300 \
        --anti-entropy-interval-ms 2000 --request-timeout-ms 500 --max-siblings 1000 \
        --tombstone-grace-secs "$grace" --maintenance-interval-ms 500 \
        --sloppy-quorum "$sloppy" "${extra[@]}" >>"$work/n$i.log" 2>&1 9>&- &
    pid[$i]=$!
    # (The lab's lock, fd 9, is not passed on: a node left running must
    # not hold it.) Not a job of this shell: no "Killed" notices; waited for by polling.
    disown "${pid[$i]}"
}

# SIGKILLs node $1 and waits until it is gone.
kill_node() {
    kill -9 "${pid[$1]}" 2>/dev/null || true
    gone "${pid[$1]}"
}

gone() {
    for _ in $(seq 1 100); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.05
    done
}

for i in $(seq 1 $nodes); do start_node "$i"; done
for i in $(seq 1 $nodes); do
    for _ in $(seq 1 100); do
        timeout 5 "$kvctl" --node "${addr[$i]}" status >/dev/null 2>&1 && break
        sleep 0.1
    done
done

node_list=$(for i in $(seq 1 $nodes); do printf '%s,' "${addr[$i]}"; done)
"$bench" --nodes "${node_list%,}" --workload d --distribution zipfian --records 1000 --ops 1000000000 \
    --duration-secs "$duration" --concurrency 16 --timeout-ms 1500 \
    --history "$work/history.jsonl" --max-siblings 1000 --converge-secs 180 --watch \
    --seed "$seed" "${strict[@]}" >"$work/bench.txt" 2>"$work/bench.err" &
bench_pid=$!

# The fault log (faults.tsv): kind, node, start and end in Unix ms, for
# scripts/error-breakdown.py.
now_ms() { date +%s%3N; }
log_fault() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(now_ms)" >>"$work/faults.tsv"; }
part_start=""
part_nodes=""

heal() {
    if [ "$mode" = netns ]; then
        for i in $(seq 1 $nodes); do ip netns exec "kvlab$i" iptables -F; done
    fi
    if [ -n "$part_start" ]; then
        for n in $part_nodes; do log_fault partition "$n" "$part_start"; done
        part_start=""
    fi
}

partition() {
    heal
    local first=$((RANDOM % nodes + 1))
    local minority=("$first")
    [ $((RANDOM % 2)) = 0 ] && minority+=($((first % nodes + 1)))
    for a in "${minority[@]}"; do
        for b in $(seq 1 $nodes); do
            [[ " ${minority[*]} " == *" $b "* ]] && continue
            ip netns exec "kvlab$a" iptables -A INPUT -s "${ip[$b]}" -j DROP
            ip netns exec "kvlab$a" iptables -A OUTPUT -d "${ip[$b]}" -j DROP
        done
    done
    part_start=$(now_ms)
    part_nodes="${minority[*]}"
    echo "$(date +%T) partition: {${minority[*]}} from the rest"
}

kill9() {
    local i=$((RANDOM % nodes + 1))
    fault_node=$i
    kill_node "$i"
    echo "$(date +%T) kill -9 node $i"
    sleep $((RANDOM % 3 + 1))
    start_node "$i"
    echo "$(date +%T) restart node $i"
}

# Node $disk_node's disk is replaced: killed, its directory deleted,
# restarted with the same id on an empty one.
wipe() {
    local i=$disk_node
    fault_node=$i
    kill_node "$i"
    rm -rf "$work/n$i"
    start_node "$i"
    echo "$(date +%T) wipe node $i: restarted on an empty data directory"
}

# Node $disk_node is backed up while it serves (kvctl snapshot; a copy of
# the stopped directory when the snapshot fails), and a few seconds of
# load later restarted from that copy: everything it took since is gone
# from it, as after a restored backup or a crash that lost an unsynced
# tail. The copy is younger than the tombstone grace, as an operator's
# restore must be (docs/operations.md).
restore() {
    local i=$disk_node
    fault_node=$i
    rm -rf "$work/backup"
    if timeout 30 "$kvctl" --node "${addr[$i]}" snapshot "$work/backup" >/dev/null 2>&1; then
        echo "$(date +%T) snapshot of node $i taken while it serves"
    else
        rm -rf "$work/backup"
        kill_node "$i"
        cp -a "$work/n$i" "$work/backup"
        start_node "$i"
        echo "$(date +%T) backup of node $i taken (stopped copy: the snapshot failed)"
    fi
    faults[backup]=$((faults[backup] + 1))
    local age=$((RANDOM % 5 + 2))
    sleep "$age"
    kill_node "$i"
    rm -rf "$work/n$i"
    mv "$work/backup" "$work/n$i"
    start_node "$i"
    echo "$(date +%T) restore node $i from its copy of $age s ago"
    faults[restore]=$((faults[restore] + 1))
}

# Node $full_node's disk fills up until its engine refuses writes (it then
# says so in gossip and steps aside), is freed, and the node restarted.
disk_full() {
    local i=$full_node
    fault_node=$i
    dd if=/dev/zero of="$work/n$i/filler" bs=1M >/dev/null 2>&1 || true
    echo "$(date +%T) disk of node $i full"
    local failing=false
    # The engine fails at its next table or segment: within seconds under
    # load (a 1 MiB memtable); give it up to 30 s.
    for _ in $(seq 1 120); do
        if timeout 2 "$kvctl" --node "${addr[$i]}" status 2>/dev/null | grep -E "^ +$i .*FAILING" >/dev/null; then
            failing=true
            break
        fi
        sleep 0.25
    done
    if [ "$failing" = true ]; then
        refused=$((refused + 1))
        echo "$(date +%T) node $i reports its storage failing"
    fi
    rm -f "$work/n$i/filler"
    kill_node "$i"
    start_node "$i"
    echo "$(date +%T) disk of node $i freed; node restarted"
}

# A stranger on a node's port: every attempt must be refused; one that
# is not counts as a breach and fails the lab.
stranger() {
    local i=$((RANDOM % nodes + 1))
    fault_node=$i
    local a=${addr[$i]} got=""
    env -u KV_CERTS_DIR timeout 5 "$kvctl" --node "$a" put lab:stranger x >/dev/null 2>&1 && got+=" plaintext-put"
    KV_CERTS_DIR=$stranger_certs timeout 5 "$kvctl" --node "$a" --client-cert mallory hints >/dev/null 2>&1 && got+=" other-ca-hints"
    timeout 5 "$kvctl" --node "$a" --token kv_guess get lab:stranger >/dev/null 2>&1 && got+=" guessed-token-get"
    timeout 5 "$kvctl" --node "$a" --token "$(cat "$work/read.token")" put lab:stranger x >/dev/null 2>&1 && got+=" read-token-put"
    timeout 5 "$kvctl" --node "$a" --token "$(cat "$work/write.token")" leave >/dev/null 2>&1 && got+=" write-token-leave"
    # shellcheck disable=SC2086
    ${prefix[$i]} python3 -c "
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen('http://${http[$i]}/metrics', timeout=5)
except urllib.error.HTTPError as e:
    sys.exit(0 if e.code == 401 else 1)
except Exception:
    sys.exit(0)
sys.exit(1)
" || got+=" metrics-without-token"
    # Framed internode connections on the same port: a plaintext hello,
    # and a TLS one with the stranger's own CA; a hello answered is a
    # breach.
    python3 - "$a" "$stranger_certs" <<'PY' || got+=" framed-hello"
import socket, ssl, struct, sys
host, port = sys.argv[1].rsplit(":", 1)
certs = sys.argv[2]
hello = struct.pack(">IB", 13, 1) + struct.pack(">IQ", 2, 2)
def greeted(tls):
    try:
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(b"KVF1")
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.load_cert_chain(certs + "/client-mallory.pem", certs + "/client-mallory.key")
            s = ctx.wrap_socket(s)
        s.sendall(hello)
        reply = s.recv(64)
        return len(reply) >= 5 and reply[4] == 1
    except Exception:
        return False
sys.exit(1 if greeted(False) or greeted(True) else 0)
PY
    if [ -n "$got" ]; then
        breaches=$((breaches + 1))
        echo "$(date +%T) stranger on node $i's port got through:$got" >&2
    else
        echo "$(date +%T) stranger on node $i's port: all 7 attempts refused"
    fi
}

pause() {
    local i=$((RANDOM % nodes + 1))
    fault_node=$i
    kill -STOP "${pid[$i]}" 2>/dev/null || true
    echo "$(date +%T) SIGSTOP node $i"
    sleep $((RANDOM % 4 + 1))
    kill -CONT "${pid[$i]}" 2>/dev/null || true
    echo "$(date +%T) SIGCONT node $i"
}

end=$((SECONDS + duration))
sleep 3
# Every kind of fault fires once, in a seeded order, before the rest are
# drawn at random, so a short run still sees each.
kinds=(kill9 pause wipe restore stranger)
[ "$mode" = netns ] && kinds+=(partition heal)
[ "$small_disk" = true ] && kinds+=(diskfull)
schedule=()
for k in "${kinds[@]}"; do schedule+=("$k"); done
for ((j = ${#schedule[@]} - 1; j > 0; j--)); do
    r=$((RANDOM % (j + 1)))
    t=${schedule[$j]}; schedule[$j]=${schedule[$r]}; schedule[$r]=$t
done
fired=0
while [ $SECONDS -lt $((end - every)) ] && kill -0 $bench_pid 2>/dev/null; do
    if [ $fired -lt ${#schedule[@]} ]; then
        choice=${schedule[$fired]}
    else
        choice=${kinds[$((RANDOM % ${#kinds[@]}))]}
    fi
    fired=$((fired + 1))
    # A partition must not outlive the grace period: hints for the cut-off
    # nodes are dropped after it, and a write acknowledged by a hint and a
    # copy the nemesis then destroys would be lost, legitimately.
    if [ -n "$part_start" ] && [ $(($(now_ms) - part_start)) -gt $((grace * 500)) ]; then
        heal
        echo "$(date +%T) heal: the partition reached half the grace period"
    fi
    fault_start=$(now_ms)
    fault_node=0
    case $choice in
        partition) partition; faults[partition]=$((faults[partition] + 1)) ;;
        kill9) kill9; faults[kill9]=$((faults[kill9] + 1)) ;;
        pause) pause; faults[pause]=$((faults[pause] + 1)) ;;
        heal) heal; faults[heal]=$((faults[heal] + 1)); echo "$(date +%T) heal" ;;
        wipe) wipe; faults[wipe]=$((faults[wipe] + 1)) ;;
        restore) restore ;;
        diskfull) disk_full; faults[diskfull]=$((faults[diskfull] + 1)) ;;
        stranger) stranger; faults[stranger]=$((faults[stranger] + 1)) ;;
    esac
    case $choice in
        partition | heal) ;;
        *) log_fault "$choice" "$fault_node" "$fault_start" ;;
    esac
    sleep "$every"
done
# The final heal: every link, every process.
heal
for i in $(seq 1 $nodes); do
    kill -CONT "${pid[$i]}" 2>/dev/null || true
    kill -0 "${pid[$i]}" 2>/dev/null || start_node "$i"
done
echo "$(date +%T) final heal"
status=0
wait $bench_pid || status=$?
cat "$work/bench.txt"
ops=$(sed -n 's/^\(read\|update\|rmw\|delete\): ops=\([0-9]*\).*/\2/p' "$work/bench.txt" | awk '{s+=$1} END {print s+0}')
# Tombstones collected, summed over the nodes' metrics (since each node's
# last start, so a lower bound).
reaped=0
for i in $(seq 1 $nodes); do
    n=$(${prefix[$i]} python3 -c "
import urllib.request
token = open('$certs/admin.token').read().strip()
request = urllib.request.Request('http://${http[$i]}/metrics', headers={'Authorization': 'Bearer ' + token})
text = urllib.request.urlopen(request, timeout=5).read().decode()
print(sum(int(l.split()[-1]) for l in text.splitlines() if l.startswith('kv_tombstones_collected_total')))
" 2>/dev/null || echo 0)
    reaped=$((reaped + n))
done
# Keys whose tombstones were collected: no replica holds anything.
collected=$(grep -c '"type":"final".*"replicas":\[\[[0-9]*,null\],\[[0-9]*,null\],\[[0-9]*,null\]\]' "$work/history.jsonl" || true)
acked=$(sed -n 's/^history: [0-9]* writes (\([0-9]*\) acknowledged).*/\1/p' "$work/bench.txt")
violations=$(sed -n 's/^violations: //p' "$work/bench.txt")
converged=$(sed -n 's/^converged: \([0-9.]*\) s.*/\1/p' "$work/bench.txt")
echo
echo "fault lab report (mode $mode, $duration s, seed $seed, $nodes nodes, sloppy quorum $sloppy, work in $work)"
[ "$mode" = loopback ] && echo "note: loopback variant, no network partitions (kill -9, SIGSTOP and the disk faults only)"
echo "operations: ${ops:-0}"
echo "acknowledged writes: ${acked:-0}"
echo "faults: partition=${faults[partition]} kill9=${faults[kill9]} pause=${faults[pause]} heal=${faults[heal]} wipe=${faults[wipe]} backup=${faults[backup]} restore=${faults[restore]} diskfull=${faults[diskfull]} stranger=${faults[stranger]} (node $full_node reported its storage failing ${refused} times; strangers got through ${breaches} times)"
echo "tombstone grace: $grace s; tombstones collected: at least $reaped; keys with nothing left at any replica at the end: ${collected:-0}"
[ "$small_disk" = true ] || echo "note: no tmpfs could be mounted; the disk-full nemesis did not run"
changes=$(sed -n 's/^watch: \([0-9]*\) changes delivered/\1/p' "$work/bench.txt")
echo "watch of every key: ${changes:-0} changes delivered, each acknowledged write among them (the checker's feed rules)"
echo "violations: ${violations:-unknown}"
availability=$(sed -n 's/^availability: //p' "$work/bench.txt")
write_share=$(sed -n 's/^availability: .*writes=\([0-9.]*\)%.*/\1/p' "$work/bench.txt")
echo "availability: ${availability:-unknown} (successful over attempted)"
if [ -f "$work/faults.tsv" ] && python3 "$root/scripts/error-breakdown.py" "$work/history.jsonl" "$work/faults.tsv" >"$work/breakdown.txt" 2>&1; then
    echo "where the failures came from ($work/breakdown.txt):"
    sed -n '/^failures by fault (/,/^$/p' "$work/breakdown.txt"
fi
echo "converged after the final heal: ${converged:-unknown} s"
if [ "$status" != 0 ] || [ "${violations:-1}" != 0 ]; then
    echo "fault-lab: FAILED (kv-bench exit $status); see $work/bench.err and $work/n*.log" >&2
    tail -20 "$work/bench.err" >&2 || true
    exit 1
fi
if [ "$breaches" != 0 ]; then
    echo "fault-lab: FAILED: a stranger got through $breaches times (see above)" >&2
    exit 1
fi
if [ -n "$write_share" ] && awk -v got="$write_share" -v min="$min_write" 'BEGIN { exit !(got < min) }'; then
    echo "fault-lab: FAILED: write availability ${write_share}% is below --min-write-availability ${min_write}%" >&2
    exit 1
fi
