#!/usr/bin/env bash
# Bring up a single-node GridEngine cluster and an sshd for sheepdog's tests.
#
# Run as root on Debian or Ubuntu. Idempotent: a second run finds what is
# already there and only starts what is not running. Everything listens inside
# the network namespace $SHEEPDOG_NETNS (loopback only), so no daemon is
# reachable from the machine's real interfaces; run the tests under
# `ip netns exec "$SHEEPDOG_NETNS" ...`. What the tests need to know is written
# to $SHEEPDOG_TEST_STATE/env (source it).
set -euo pipefail

NETNS=${SHEEPDOG_NETNS:-sheepdog}
TEST_USER=${SHEEPDOG_TEST_USER:-sheepdog}
# A second, unrelated account on the cluster: the tests' attacker, who may run
# `qstat -j '*'` and read execd's spool, as any other user of a shared cluster can.
OTHER_USER=${SHEEPDOG_TEST_OTHER_USER:-sheepdog-other}
STATE=${SHEEPDOG_TEST_STATE:-/var/lib/sheepdog-test}
SLOTS=${SHEEPDOG_TEST_SLOTS:-8}
SECOND_QUEUE_SLOTS=2
HOST=$(hostname)
PACKAGES=(gridengine-master gridengine-exec gridengine-client gridengine-common
          openssh-server openssh-client python3 python3-numpy iproute2)

# shellcheck source=ci/lib.sh
source "$(dirname "$0")/lib.sh"

install_packages() {
    if dpkg-query -W -f='${Status}\n' "${PACKAGES[@]}" 2>/dev/null | grep -v "install ok installed" >/dev/null \
        || [[ $(dpkg-query -W -f='${Status}\n' "${PACKAGES[@]}" 2>/dev/null | wc -l) -ne ${#PACKAGES[@]} ]]; then
        say "installing ${PACKAGES[*]}"
        for package in gridengine-common gridengine-master gridengine-exec gridengine-client; do
            echo "$package shared/gridenginemaster string $HOST"
        done | debconf-set-selections
        for package in gridengine-common gridengine-master; do
            printf '%s shared/gridengineconfig boolean true\n%s shared/gridenginecell string default\n' \
                "$package" "$package"
        done | debconf-set-selections
        apt_install "${PACKAGES[@]}"
    fi
}

make_namespace() {
    if ! ip netns list | grep -w "$NETNS" >/dev/null; then
        ip netns add "$NETNS"
    fi
    ip -n "$NETNS" link set lo up
    # GridEngine wants the host name to resolve forwards and backwards alike.
    # ci/nat-up.sh appends lines (node1, laptop) after these two, and running
    # daemons see this file through a bind mount: leave it alone when it is
    # already right, rather than truncating their view of it.
    mkdir -p "/etc/netns/$NETNS"
    local want
    want=$(printf '127.0.0.1 %s localhost\n::1 localhost' "$HOST")
    if [[ $(head -n 2 "/etc/netns/$NETNS/hosts" 2>/dev/null) != "$want" ]]; then
        printf '%s\n' "$want" > "/etc/netns/$NETNS/hosts"
    fi
}

make_user_and_keys() {
    if ! id "$TEST_USER" >/dev/null 2>&1; then
        useradd --create-home --shell /bin/bash --uid 1500 "$TEST_USER"
    fi
    usermod -p '*' "$TEST_USER"  # no password, but not locked: key login works
    mkdir -p "$STATE"
    chmod 700 "$STATE"
    if [[ ! -f $STATE/id_ed25519 ]]; then
        ssh-keygen -q -t ed25519 -N '' -C "sheepdog-tests" -f "$STATE/id_ed25519"
    fi
    local home
    home=$(getent passwd "$TEST_USER" | cut -d: -f6)
    install -d -m 700 -o "$TEST_USER" -g "$TEST_USER" "$home/.ssh" "$home/.sheepdog"
    install -m 600 -o "$TEST_USER" -g "$TEST_USER" "$STATE/id_ed25519.pub" "$home/.ssh/authorized_keys"
    # The attacker needs no login of its own: the tests become it with runuser.
    if ! id "$OTHER_USER" >/dev/null 2>&1; then
        useradd --create-home --shell /bin/bash --uid 1501 "$OTHER_USER"
    fi
}

start_sshd() {
    mkdir -p /run/sshd
    ssh-keygen -A >/dev/null
    if ! alive "$STATE/sshd.pid" sshd; then
        in_ns /usr/sbin/sshd -o ListenAddress=127.0.0.1 -o Port=22 \
            -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no \
            -o PidFile="$STATE/sshd.pid"
    fi
    wait_for 10 alive "$STATE/sshd.pid" sshd
    # Host key checking stays on in the tests: they trust exactly this key.
    # ci/nat-up.sh adds a line for its own sshd: keep other lines, and only
    # write when ours is missing.
    local key line
    key=$(cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub)
    line="$HOST,localhost,127.0.0.1 $key"
    if ! grep -qxF "$line" "$STATE/known_hosts" 2>/dev/null; then
        { grep -v "^$HOST,localhost,127.0.0.1 " "$STATE/known_hosts" 2>/dev/null || true
          echo "$line"; } > "$STATE/known_hosts.new"
        mv "$STATE/known_hosts.new" "$STATE/known_hosts"
    fi
}

queue_instance_ready() {
    # Ready = the queue instance (of queue $1) has a load value and no state flags.
    in_ns qstat -f -q "$1@$HOST" | awk -v q="$1@$HOST" '$1 == q && $4 != "-NA-" && NF == 5 {ok=1} END {exit !ok}'
}

configure_cluster() {
    local tmp
    tmp=$(mktemp -d)
    if ! in_ns qconf -se "$HOST" >/dev/null 2>&1; then
        printf 'hostname %s\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n' \
            "$HOST" > "$tmp/exechost"
        in_ns qconf -Ae "$tmp/exechost" >/dev/null
    fi
    in_ns qconf -ss 2>/dev/null | grep -x "$HOST" >/dev/null || in_ns qconf -as "$HOST" >/dev/null
    if ! in_ns qconf -shgrp @allhosts >/dev/null 2>&1; then
        printf 'group_name @allhosts\nhostlist %s\n' "$HOST" > "$tmp/hostgroup"
        in_ns qconf -Ahgrp "$tmp/hostgroup" >/dev/null
    fi
    # mem_grab: the requestable memory complex of the original Sheepdog's home
    # cluster, which the worker enforces as an address-space limit.
    if ! in_ns qconf -sc | grep '^mem_grab ' >/dev/null; then
        in_ns qconf -sc > "$tmp/complexes"
        echo "mem_grab mem_grab MEMORY <= YES NO 0 0" >> "$tmp/complexes"
        in_ns qconf -Mc "$tmp/complexes" >/dev/null
    fi
    # smp: the parallel environment of sheepdog's 'cores' key (its default
    # 'pe_name'), all slots on one host; both queues take it.
    cat > "$tmp/pe" <<EOF
pe_name            smp
slots              999
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    \$pe_slots
control_slaves     FALSE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
EOF
    if in_ns qconf -sp smp >/dev/null 2>&1; then
        in_ns qconf -Mp "$tmp/pe" >/dev/null
    else
        in_ns qconf -Ap "$tmp/pe" >/dev/null
    fi
    # all.q, and long.q: a second, small queue on this host alone (ci/nat-up.sh
    # adds node1 to @allhosts), for the tests of sheepdog's 'queue' key.
    write_queue all.q 0 "$SLOTS" @allhosts "$tmp"
    write_queue long.q 1 "$SECOND_QUEUE_SLOTS" "$HOST" "$tmp"
    # Schedule every second rather than every fifteen.
    in_ns qconf -ssconf > "$tmp/sconf"
    sed -i -e 's/^schedule_interval .*/schedule_interval 0:0:1/' \
        -e 's/^flush_submit_sec .*/flush_submit_sec 1/' \
        -e 's/^flush_finish_sec .*/flush_finish_sec 1/' "$tmp/sconf"
    in_ns qconf -Msconf "$tmp/sconf" >/dev/null
    rm -rf "$tmp"
}

# Add or update queue $1 (seq_no $2, $3 slots, on hosts $4), writing its file in folder $5.
write_queue() {
    local name=$1 seq=$2 slots=$3 hosts=$4 tmp=$5
    cat > "$tmp/queue" <<EOF
qname                 $name
hostlist              $hosts
seq_no                $seq
load_thresholds       NONE
suspend_thresholds    NONE
nsuspend              1
suspend_interval      00:05:00
priority              0
min_cpu_interval      00:05:00
processors            UNDEFINED
qtype                 BATCH INTERACTIVE
ckpt_list             NONE
pe_list               smp
rerun                 FALSE
slots                 $slots
tmpdir                /tmp
shell                 /bin/sh
prolog                NONE
epilog                NONE
shell_start_mode      posix_compliant
starter_method        NONE
suspend_method        NONE
resume_method         NONE
terminate_method      NONE
notify                00:00:60
owner_list            NONE
user_lists            NONE
xuser_lists           NONE
subordinate_list      NONE
complex_values        mem_grab=64G
projects              NONE
xprojects             NONE
calendar              NONE
initial_state         default
s_rt                  INFINITY
h_rt                  INFINITY
s_cpu                 INFINITY
h_cpu                 INFINITY
s_fsize               INFINITY
h_fsize               INFINITY
s_data                INFINITY
h_data                INFINITY
s_stack               INFINITY
h_stack               INFINITY
s_core                INFINITY
h_core                INFINITY
s_rss                 INFINITY
h_rss                 INFINITY
s_vmem                INFINITY
h_vmem                INFINITY
EOF
    if in_ns qconf -sq "$name" >/dev/null 2>&1; then
        in_ns qconf -Mq "$tmp/queue" >/dev/null
    else
        in_ns qconf -Aq "$tmp/queue" >/dev/null
    fi
}

start_gridengine() {
    mkdir -p /var/run/gridengine
    chown sgeadmin:sgeadmin /var/run/gridengine
    local qmaster_pid=/var/spool/gridengine/qmaster/qmaster.pid
    local execd_pid=/var/spool/gridengine/execd/$HOST/execd.pid
    if ! alive "$qmaster_pid" sge_qmaster; then
        say "starting sge_qmaster"
        in_ns /usr/sbin/sge_qmaster
    fi
    wait_for 60 in_ns qstat -f
    configure_cluster
    if ! alive "$execd_pid" sge_execd; then
        say "starting sge_execd"
        in_ns /usr/sbin/sge_execd
    fi
    wait_for 30 alive "$execd_pid" sge_execd
    # A queue instance can be left in error or disabled state by an earlier run.
    local queue
    for queue in all.q long.q; do
        in_ns qmod -c "$queue@$HOST" >/dev/null 2>&1 || true
        in_ns qmod -e "$queue@$HOST" >/dev/null 2>&1 || true
        wait_for 60 queue_instance_ready "$queue"
    done
}

write_env() {
    # Our lines first, then whatever else is there (ci/nat-up.sh adds its
    # own); the file is only replaced when it would change.
    local keys='^export (SHEEPDOG_NETNS|SHEEPDOG_TEST_HOST|SHEEPDOG_TEST_USER|SHEEPDOG_TEST_OTHER_USER|SHEEPDOG_TEST_KEY|SHEEPDOG_TEST_KNOWN_HOSTS)='
    {
        cat <<EOF
export SHEEPDOG_NETNS=$NETNS
export SHEEPDOG_TEST_HOST=$HOST
export SHEEPDOG_TEST_USER=$TEST_USER
export SHEEPDOG_TEST_OTHER_USER=$OTHER_USER
export SHEEPDOG_TEST_KEY=$STATE/id_ed25519
export SHEEPDOG_TEST_KNOWN_HOSTS=$STATE/known_hosts
EOF
        grep -Ev "$keys" "$STATE/env" 2>/dev/null || true
    } > "$STATE/env.new"
    replace_if_changed "$STATE/env"
}

main() {
    if [[ $(id -u) -ne 0 ]]; then
        say "run me as root: I install packages and start daemons"
        exit 1
    fi
    local started=$SECONDS
    install_packages
    make_namespace
    make_user_and_keys
    start_sshd
    start_gridengine
    write_env
    say "cluster ready on $HOST in namespace $NETNS ($((SECONDS - started)) s); source $STATE/env"
}

main "$@"
