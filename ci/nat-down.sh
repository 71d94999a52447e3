#!/usr/bin/env bash
# Take away what ci/nat-up.sh built: node1 (from GridEngine's configuration,
# its execd, its namespaces), the caller's namespace, the second sshd, the
# firewall, and the lines added to hosts files, known_hosts and the env file.
# The single-node cluster of ci/gridengine-up.sh stays up. Safe to run when
# nothing (or only part) is up; every wait is bounded.
set -uo pipefail

NETNS=${SHEEPDOG_NETNS:-sheepdog}
STATE=${SHEEPDOG_TEST_STATE:-/var/lib/sheepdog-test}

CALLER_NS=sdcaller
CALLER_NAME=laptop
CALLER_ADDR=169.254.77.1
CLUSTER_ADDR=169.254.77.2
CLUSTER_IF=to-caller
NODE=node1
NODE_NS=sdnode1
NODE_UTS=/run/uts/$NODE
NODE_ADDR=169.254.78.2
HEAD_IF=to-$NODE
NFT_TABLE=sheepdog_nat
CALLER_SSHD_PID=$STATE/sshd-caller.pid
NODE_SPOOL=/var/spool/gridengine/execd/$NODE

# shellcheck source=ci/lib.sh
source "$(dirname "$0")/lib.sh"

# Remove the lines matching the fixed strings that follow from file $1, by
# rewriting the same inode: running daemons see /etc/netns/*/hosts through a
# bind mount, and would not see a new file.
remove_lines() {
    local file=$1; shift
    [[ -f $file ]] || return 0
    local args=() line kept
    for line in "$@"; do args+=(-e "$line"); done
    kept=$(grep -vxF "${args[@]}" "$file")
    [[ $kept == "$(cat "$file")" ]] || printf '%s\n' "$kept" > "$file"
}

qmaster_up() { have_ns "$NETNS" && in_ns qstat -f >/dev/null 2>&1; }

# node1 out of GridEngine: disable its queue instance, let running jobs end
# (bounded), take it out of @allhosts, shut its execd down, then delete its
# exec host entry, its host-local configuration and its admin host entry.
unconfigure_node() {
    qmaster_up || return 0
    in_ns qconf -se "$NODE" >/dev/null 2>&1 || in_ns qconf -sh 2>/dev/null | grep -x "$NODE" >/dev/null || return 0
    in_ns qmod -d "all.q@$NODE" >/dev/null 2>&1
    local deadline=$((SECONDS + 30))
    while in_ns qstat -s rs -u '*' -q "all.q@$NODE" 2>/dev/null | grep "all.q@$NODE" >/dev/null; do
        if ((SECONDS >= deadline)); then
            say "jobs still running on $NODE after 30 s; going on without them"
            break
        fi
        sleep 0.5
    done
    if in_ns qconf -shgrp @allhosts 2>/dev/null | grep -w "$NODE" >/dev/null; then
        in_ns qconf -dattr hostgroup hostlist "$NODE" @allhosts >/dev/null
    fi
    in_ns qconf -ke "$NODE" >/dev/null 2>&1
    if [[ -s $NODE_SPOOL/execd.pid ]]; then
        timeout 20 tail --pid="$(cat "$NODE_SPOOL/execd.pid")" -f /dev/null
    fi
    in_ns qconf -de "$NODE" >/dev/null 2>&1
    in_ns qconf -dconf "$NODE" >/dev/null 2>&1
    in_ns qconf -dh "$NODE" >/dev/null 2>&1
}

main() {
    if [[ $(id -u) -ne 0 ]]; then
        say "run me as root"
        exit 1
    fi
    unconfigure_node
    # Cut the links from the cluster's side first: whatever is left running
    # in the other namespaces is then cut off at once.
    if have_ns "$NETNS"; then
        ip -n "$NETNS" link del "$CLUSTER_IF" 2>/dev/null
        ip -n "$NETNS" link del "$HEAD_IF" 2>/dev/null
    fi
    # Deleting a namespace does not stop its processes: stop them by pid.
    stop "$CALLER_SSHD_PID"
    stop "$NODE_SPOOL/execd.pid"
    local ns pid
    for ns in "$CALLER_NS" "$NODE_NS"; do
        have_ns "$ns" || continue
        for pid in $(ip netns pids "$ns"); do stop_pid "$pid"; done
        ip netns delete "$ns"
    done
    rm -rf "/etc/netns/$CALLER_NS" "/etc/netns/$NODE_NS"
    if have_ns "$NETNS"; then
        in_ns nft delete table inet "$NFT_TABLE" 2>/dev/null
        in_ns sysctl -qw net.ipv4.ip_forward=0
    fi
    # The bind mount is what keeps node1's UTS namespace alive.
    umount "$NODE_UTS" 2>/dev/null
    rm -f "$NODE_UTS"
    # execd keeps its spool; a later node1 starts afresh.
    rm -rf "$NODE_SPOOL"
    remove_lines "/etc/netns/$NETNS/hosts" "$NODE_ADDR $NODE" "$CALLER_ADDR $CALLER_NAME"
    local known
    known=$(grep -m1 "^$CLUSTER_ADDR " "$STATE/known_hosts" 2>/dev/null) && remove_lines "$STATE/known_hosts" "$known"
    if [[ -f $STATE/env ]]; then
        grep -Ev '^export (SHEEPDOG_CALLER_NETNS|SHEEPDOG_CALLER_NAME|SHEEPDOG_CALLER_ADDRESS|SHEEPDOG_CLUSTER_ADDRESS|SHEEPDOG_NODE1|SHEEPDOG_AS_CALLER)=' \
            "$STATE/env" > "$STATE/env.new"
        mv "$STATE/env.new" "$STATE/env"
    fi
    say "stopped"
}

main "$@"
