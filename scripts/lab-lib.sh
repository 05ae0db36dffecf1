# Sourced by fault-lab.sh and scale-lab.sh: nodes in network namespaces
# and the cluster's credentials.
#
#   lab_netns_up COUNT     # namespaces kvlab1..COUNT on the bridge kvlabbr,
#                          # node i at 10.77.0.i; sets ip[i], addr[i]
#                          # (gRPC, :7001), http[i] (:8001) and prefix[i]
#                          # (the command prefix that runs in its namespace);
#                          # installs iptables if missing; fails without
#                          # the rights to make namespaces
#   lab_netns_down COUNT   # removes them (also what is left of an earlier run)
#   lab_certs DIR COUNT    # a CA, node certificates for 1..COUNT and an admin
#                          # token in DIR (admin.token); exports KV_CERTS_DIR
#                          # (needs $kvctl)

lab_netns_down() {
    for i in $(seq 1 "$1"); do ip netns del "kvlab$i" 2>/dev/null || true; done
    ip link del kvlabbr 2>/dev/null || true
}

lab_netns_up() {
    local count=$1
    if ! command -v iptables >/dev/null 2>&1; then
        echo "lab: installing iptables"
        (apt-get install -y -q iptables >/dev/null 2>&1 ||
            (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q iptables >/dev/null 2>&1)) || return 1
    fi
    lab_netns_down "$count"
    ip link add kvlabbr type bridge || return 1
    ip addr add 10.77.0.254/24 dev kvlabbr
    ip link set kvlabbr up
    for i in $(seq 1 "$count"); do
        ip netns add "kvlab$i" || return 1
        ip link add "kvlabv$i" type veth peer name eth0 netns "kvlab$i"
        ip link set "kvlabv$i" master kvlabbr up
        ip netns exec "kvlab$i" ip addr add "10.77.0.$i/24" dev eth0
        ip netns exec "kvlab$i" ip link set eth0 up
        ip netns exec "kvlab$i" ip link set lo up
        ip netns exec "kvlab$i" iptables -L >/dev/null 2>&1 || return 1
        ip[$i]=10.77.0.$i
        addr[$i]=10.77.0.$i:7001
        http[$i]=10.77.0.$i:8001
        prefix[$i]="ip netns exec kvlab$i"
    done
}

lab_certs() {
    local dir=$1 count=$2
    "$kvctl" --certs-dir "$dir" certs init --days 2 >/dev/null
    for i in $(seq 1 "$count"); do "$kvctl" --certs-dir "$dir" certs node --id "$i" --days 2 >/dev/null; done
    "$kvctl" --certs-dir "$dir" token new --name lab --role admin | head -1 >"$dir/admin.token"
    export KV_CERTS_DIR=$dir
}
