#!/usr/bin/env bash
# Turn the single-node test cluster of ci/gridengine-up.sh into the topology of
# a real, shared cluster (run that script first):
#
#   * a caller ("laptop") in a network namespace of its own that can SSH into
#     the cluster, but that the cluster cannot connect back to (as behind NAT);
#   * a second execution host "node1" whose loopback is not the head node's;
#
# and export what the tests need into $SHEEPDOG_TEST_STATE/env. The picture
# is in docs/testing.rst. Run as root. Idempotent: a second run finds what is
# there and changes nothing. ci/nat-down.sh takes it all away again.
#
# Only link-local addresses (169.254.0.0/16), on veth pairs between namespaces
# created here: nothing touches the machine's own network.
set -euo pipefail

NETNS=${SHEEPDOG_NETNS:-sheepdog}             # the cluster: head node, qmaster, sshd
STATE=${SHEEPDOG_TEST_STATE:-/var/lib/sheepdog-test}
HOST=$(hostname)                              # the head node's name

CALLER_NS=sdcaller
CALLER_NAME=laptop
CALLER_ADDR=169.254.77.1                      # caller side of the caller <-> cluster veth
CLUSTER_ADDR=169.254.77.2                     # cluster side; the second sshd listens here
CALLER_IF=to-cluster                          # in $CALLER_NS
CLUSTER_IF=to-caller                          # in $NETNS

NODE=node1
NODE_NS=sdnode1
NODE_UTS=/run/uts/$NODE                       # bind mount that keeps node1's UTS namespace alive
HEAD_NODE_ADDR=169.254.78.1                   # head side of the head <-> node1 veth
NODE_ADDR=169.254.78.2                        # node1 side
HEAD_IF=to-$NODE                              # in $NETNS
NODE_IF=to-head                               # in $NODE_NS
NODE_GID_RANGE=65501-65600                    # the head uses the global 65400-65500

NFT_TABLE=sheepdog_nat
CALLER_SSHD_PID=$STATE/sshd-caller.pid
NODE_EXECD_PID=/var/spool/gridengine/execd/$NODE/execd.pid
AS_CALLER=$(cd "$(dirname "$0")" && pwd)/as-caller.sh

# shellcheck source=ci/lib.sh
source "$(dirname "$0")/lib.sh"

# Replace file $1 with stdin, but only when that changes it, and by rewriting
# the same inode: processes in a namespace see /etc/netns/*/hosts through a
# bind mount of that inode, so a new file (sed -i, mv) would be invisible to
# them.
write_in_place() {
    local new
    new=$(cat)
    if [[ ! -f $1 ]] || [[ $(cat "$1") != "$new" ]]; then
        printf '%s\n' "$new" > "$1"
    fi
}

# Append line $2 to file $1 (in place) unless it is there already.
append_once() {
    grep -qxF "$2" "$1" 2>/dev/null || printf '%s\n' "$2" >> "$1"
}

install_nftables() {
    command -v nft >/dev/null && return 0
    say "installing nftables"
    apt_install nftables
}

make_netns() {
    [[ -e /run/netns/$1 ]] || ip netns add "$1"
    ip -n "$1" link set lo up
}

# make_veth NS_A IF_A ADDR_A NS_B IF_B ADDR_B: a veth pair straight between
# two namespaces (created inside them, never in the machine's own namespace),
# a /30 on each end, and IPv6 off on both ends, so that no fe80:: path gets
# around the IPv4 firewall. Loopback keeps its ::1.
make_veth() {
    local ns_a=$1 if_a=$2 addr_a=$3 ns_b=$4 if_b=$5 addr_b=$6
    if ! ip -n "$ns_a" link show "$if_a" >/dev/null 2>&1; then
        ip -n "$ns_a" link add "$if_a" type veth peer name "$if_b" netns "$ns_b"
    fi
    local end ns iface addr
    for end in "$ns_a $if_a $addr_a" "$ns_b $if_b $addr_b"; do
        read -r ns iface addr <<<"$end"
        # Before the link goes up, so that no link-local IPv6 address appears.
        ip netns exec "$ns" sysctl -qw "net.ipv6.conf.$iface.disable_ipv6=1"
        ip -n "$ns" addr replace "$addr/30" dev "$iface"
        ip -n "$ns" link set "$iface" up
    done
}

make_networks() {
    make_netns "$CALLER_NS"
    make_netns "$NODE_NS"
    make_veth "$NETNS" "$CLUSTER_IF" "$CLUSTER_ADDR" "$CALLER_NS" "$CALLER_IF" "$CALLER_ADDR"
    make_veth "$NETNS" "$HEAD_IF" "$HEAD_NODE_ADDR" "$NODE_NS" "$NODE_IF" "$NODE_ADDR"
    # node1 can send to the caller through the head node, where the firewall
    # drops it: a task on node1 that tries the caller directly times out, as
    # it would on a real cluster, rather than failing at once with "network
    # unreachable". The head forwards nothing else (see the forward chain).
    ip -n "$NODE_NS" route replace "$CALLER_ADDR/32" via "$HEAD_NODE_ADDR" dev "$NODE_IF"
    ip netns exec "$NETNS" sysctl -qw net.ipv4.ip_forward=1
}

# The cluster's firewall, in its namespace only: new connections to the caller
# are dropped (so they time out, as behind NAT, rather than being refused),
# replies to the caller's own connections (its SSH sessions) pass. Nothing is
# forwarded between node1 and the caller. The table's comment holds a hash
# of the rules, so a changed script reloads them and an unchanged one does not.
firewall() {
    local rules hash
    rules=$(cat <<EOF
    chain output {
        type filter hook output priority filter; policy accept;
        ip daddr $CALLER_ADDR ct state established,related accept
        ip daddr $CALLER_ADDR drop
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
    }
EOF
)
    hash=$(printf '%s' "$rules" | sha256sum | cut -c1-16)
    if in_ns nft list table inet "$NFT_TABLE" 2>/dev/null | grep -F "ci/nat-up.sh $hash" >/dev/null; then
        return 0
    fi
    say "loading the firewall"
    # One transaction: create (so that delete cannot fail), delete, recreate.
    in_ns nft -f - <<EOF
table inet $NFT_TABLE
delete table inet $NFT_TABLE
table inet $NFT_TABLE {
    comment "ci/nat-up.sh $hash"
$rules
}
EOF
}

hosts_files() {
    # The cluster's namespace: its own name stays 127.0.0.1 (the first line,
    # from gridengine-up.sh); node1 is on its veth; and the caller's name
    # resolves, so that a worker trying the caller directly gets an address
    # and then times out on the firewall.
    append_once "/etc/netns/$NETNS/hosts" "$NODE_ADDR $NODE"
    append_once "/etc/netns/$NETNS/hosts" "$CALLER_ADDR $CALLER_NAME"
    # The caller: its own name first on its line (the canonical name), and the
    # head node at the address its sshd listens on.
    mkdir -p "/etc/netns/$CALLER_NS" "/etc/netns/$NODE_NS"
    write_in_place "/etc/netns/$CALLER_NS/hosts" <<EOF
$CALLER_ADDR $CALLER_NAME
127.0.0.1 localhost
::1 localhost
$CLUSTER_ADDR $HOST
EOF
    # node1: each side maps only what the other checks (SGE wants names to
    # resolve forwards and backwards alike). The caller is reachable by name
    # here too, and just as unreachable.
    write_in_place "/etc/netns/$NODE_NS/hosts" <<EOF
$NODE_ADDR $NODE
127.0.0.1 localhost
::1 localhost
$HEAD_NODE_ADDR $HOST
$CALLER_ADDR $CALLER_NAME
EOF
}

# A second sshd in the cluster's namespace, on the address the caller sees;
# the loopback one stays as it is. Same host keys, so the same known_hosts
# entry fits, with one more line for the address.
caller_sshd() {
    mkdir -p /run/sshd
    if ! alive "$CALLER_SSHD_PID" sshd; then
        say "starting sshd on $CLUSTER_ADDR"
        in_ns /usr/sbin/sshd -o ListenAddress="$CLUSTER_ADDR" -o Port=22 \
            -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no \
            -o PidFile="$CALLER_SSHD_PID"
    fi
    wait_for 10 alive "$CALLER_SSHD_PID" sshd
    local key
    key=$(cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub)
    append_once "$STATE/known_hosts" "$CLUSTER_ADDR $key"
}

# node1's host name lives in a UTS namespace kept alive by a bind mount, so
# that every process started in it later (execd, its jobs) sees "node1".
node_uts() {
    mkdir -p /run/uts
    if [[ $(nsenter --uts="$NODE_UTS" hostname 2>/dev/null) == "$NODE" ]]; then
        return 0
    fi
    if ! nsenter --uts="$NODE_UTS" true 2>/dev/null; then
        touch "$NODE_UTS"
        unshare --uts="$NODE_UTS" true
    fi
    nsenter --uts="$NODE_UTS" hostname "$NODE"
}

queue_instance_ready() {
    # Ready = the queue instance has a load value and no state flags.
    in_ns qstat -f -q "all.q@$1" | awk -v q="all.q@$1" '$1 == q && $4 != "-NA-" && NF == 5 {ok=1} END {exit !ok}'
}

node_config() {
    local tmp
    tmp=$(mktemp -d)
    in_ns qconf -sh 2>/dev/null | grep -x "$NODE" >/dev/null || in_ns qconf -ah "$NODE" >/dev/null
    if ! in_ns qconf -se "$NODE" >/dev/null 2>&1; then
        printf 'hostname %s\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n' \
            "$NODE" > "$tmp/exechost"
        in_ns qconf -Ae "$tmp/exechost" >/dev/null
    fi
    # Both execds share one kernel: with separate gid ranges, the additional
    # group id that execd uses to find (and kill) a job's processes cannot
    # match a job on the other host.
    if ! in_ns qconf -sconf "$NODE" 2>/dev/null | grep "^gid_range *$NODE_GID_RANGE\$" >/dev/null; then
        # qconf -Aconf takes the configuration's name from the file's name.
        printf 'gid_range %s\n' "$NODE_GID_RANGE" > "$tmp/$NODE"
        if in_ns qconf -sconf "$NODE" >/dev/null 2>&1; then
            in_ns qconf -Mconf "$tmp/$NODE" >/dev/null
        else
            in_ns qconf -Aconf "$tmp/$NODE" >/dev/null
        fi
    fi
    if ! in_ns qconf -shgrp @allhosts | grep -w "$NODE" >/dev/null; then
        in_ns qconf -aattr hostgroup hostlist "$NODE" @allhosts >/dev/null
    fi
    rm -rf "$tmp"
}

node_execd() {
    if ! alive "$NODE_EXECD_PID" sge_execd; then
        say "starting sge_execd on $NODE"
        # In node1's UTS and network namespaces, with a clean environment (the
        # jobs inherit from execd). It daemonises by itself.
        (cd / && env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
            nsenter --uts="$NODE_UTS" ip netns exec "$NODE_NS" /usr/sbin/sge_execd)
    fi
    wait_for 30 alive "$NODE_EXECD_PID" sge_execd
    if ! queue_instance_ready "$NODE"; then
        # A queue instance can be left in error or disabled state by an
        # earlier run (nat-down.sh disables it to drain it).
        in_ns qmod -c "all.q@$NODE" >/dev/null 2>&1 || true
        in_ns qmod -e "all.q@$NODE" >/dev/null 2>&1 || true
    fi
    wait_for 60 queue_instance_ready "$NODE"
}

write_env() {
    local keys='^export (SHEEPDOG_CALLER_NETNS|SHEEPDOG_CALLER_NAME|SHEEPDOG_CALLER_ADDRESS|SHEEPDOG_CLUSTER_ADDRESS|SHEEPDOG_NODE1|SHEEPDOG_AS_CALLER)='
    {
        grep -Ev "$keys" "$STATE/env" 2>/dev/null || true
        cat <<EOF
export SHEEPDOG_CALLER_NETNS=$CALLER_NS
export SHEEPDOG_CALLER_NAME=$CALLER_NAME
export SHEEPDOG_CALLER_ADDRESS=$CALLER_ADDR
export SHEEPDOG_CLUSTER_ADDRESS=$CLUSTER_ADDR
export SHEEPDOG_NODE1=$NODE
export SHEEPDOG_AS_CALLER=$AS_CALLER
EOF
    } > "$STATE/env.new"
    replace_if_changed "$STATE/env"
}

main() {
    if [[ $(id -u) -ne 0 ]]; then
        say "run me as root: I create namespaces and start daemons"
        exit 1
    fi
    if [[ ! -e /run/netns/$NETNS ]] || ! in_ns qstat -f >/dev/null 2>&1; then
        say "no cluster in namespace $NETNS: run ci/gridengine-up.sh first"
        exit 1
    fi
    local started=$EPOCHREALTIME
    install_nftables
    make_networks
    firewall
    hosts_files
    caller_sshd
    node_uts
    node_config
    node_execd
    write_env
    say "caller $CALLER_NAME ($CALLER_NS, $CALLER_ADDR) -> cluster $HOST ($CLUSTER_ADDR);" \
        "exec host $NODE ($NODE_NS, $NODE_ADDR); ready in" \
        "$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}') s; source $STATE/env"
}

main "$@"
