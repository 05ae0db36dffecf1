# Sourced by bench.sh and profile.sh: three kvd on 127.0.0.1:7001-7003
# (N=3), built in release, stopped on exit.
#
#   start_three_nodes DIR DURABILITY [tls]   # data in DIR/n1..n3, logs beside;
#                                      # tls: a CA, node certificates and an
#                                      # admin token in DIR/certs, exported
#                                      # as KV_CERTS_DIR for kvctl and kv-bench
#   stop_nodes
#   loaded_cluster NAME DURABILITY WORKLOAD RECORDS [kv-bench args]
#                                      # three fresh nodes in a temporary
#                                      # directory ($work, removed with the
#                                      # nodes on exit), RECORDS loaded
#   NODES                              # the kv-bench --nodes list
#   HTTP                               # the nodes' status pages and metrics
#                                      # (127.0.0.1:7101-7103), comma-separated
#   BIN                                # where kvd, kvctl and kv-bench are:
#                                      # target/release (built here), or
#                                      # $KV_BIN_DIR when set (binaries of
#                                      # another commit, for before/after)
#   KVD_ARGS                           # more kvd flags for every node, for
#                                      # example "--internode frames"

NODES=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
HTTP=127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103
pids=()

if [ -n "${KV_BIN_DIR:-}" ]; then
    BIN=$KV_BIN_DIR
else
    cargo build --release -q -p kv-server -p kv-bench --bin kvd --bin kvctl --bin kv-bench
    BIN=target/release
fi

start_three_nodes() {
    local dir=$1 durability=$2 security=${3:-plaintext}
    local tls=()
    mkdir -p "$dir"
    unset KV_CERTS_DIR
    if [ "$security" = tls ]; then
        "$BIN"/kvctl --certs-dir "$dir/certs" certs init --days 2 >/dev/null
        for i in 1 2 3; do
            "$BIN"/kvctl --certs-dir "$dir/certs" certs node --id "$i" --days 2 >/dev/null
        done
        "$BIN"/kvctl --certs-dir "$dir/certs" token new --name bench --role admin \
            | head -1 >"$dir/certs/admin.token"
        tls=(--certs-dir "$dir/certs")
        export KV_CERTS_DIR=$dir/certs
    fi
    for i in 1 2 3; do
        "$BIN"/kvd --node-id "$i" --listen "127.0.0.1:$((7000 + i))" --data-dir "$dir/n$i" \
            --http "127.0.0.1:$((7100 + i))" --member 1@127.0.0.1:7001 --member 2@127.0.0.1:7002 --member 3@127.0.0.1:7003 \
            --durability "$durability" --log warn "${tls[@]}" ${KVD_ARGS:-} >"$dir/n$i.log" 2>&1 &
        pids+=($!)
    done
    for i in 1 2 3; do
        for _ in $(seq 1 100); do
            timeout 5 "$BIN"/kvctl --node "127.0.0.1:$((7000 + i))" status >/dev/null 2>&1 && break
            sleep 0.1
        done
    done
}

# Stops the nodes and waits (up to 5 s each) until they are gone.
stop_nodes() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    done
    pids=()
}

# Three fresh nodes in a temporary directory (kept in $work), stopped and
# removed on exit, with RECORDS records of WORKLOAD loaded (100-byte values;
# more kv-bench arguments after RECORDS).
loaded_cluster() {
    local name=$1 durability=$2 workload=$3 records=$4
    shift 4
    work=$(mktemp -d "/tmp/kv-$name.XXXXXX")
    trap 'stop_nodes; rm -rf "$work"' EXIT
    start_three_nodes "$work" "$durability"
    "$BIN"/kv-bench --nodes "$NODES" --workload "$workload" --records "$records" --ops 1 \
        --concurrency 64 --value-size 100 "$@" >/dev/null
}
