#!/usr/bin/env bash
# Bring up a single-node Slurm cluster beside the GridEngine one of
# ci/gridengine-up.sh (run that first): the same network namespace, the same
# sshd and the same test user, so that
#
#   ssh -i $SHEEPDOG_TEST_KEY -o UserKnownHostsFile=$SHEEPDOG_TEST_KNOWN_HOSTS \
#       $SHEEPDOG_TEST_USER@$SHEEPDOG_TEST_HOST sbatch ...
#
# works inside the namespace. One node (this host's name) with 8 CPUs,
# counted memory (so --mem is enforced) and two GPUs as a generic resource
# (GRES: device nodes made for the test, no real GPU), a default partition
# and a second one, arrays up to 100000 tasks, fast scheduling, a short
# KillWait, and accounting (sacct) through slurmdbd and a local MariaDB. Debian's packages: munge, slurmctld,
# slurmd, slurm-client, slurmdbd, mariadb-server.
#
# Run as root. Idempotent: a second run finds it up and changes nothing. Every
# wait is bounded. ci/slurm-down.sh stops it again. What the tests need is
# exported in $SHEEPDOG_TEST_STATE/env (SHEEPDOG_SLURM=1, ...).
set -euo pipefail

NETNS=${SHEEPDOG_NETNS:-sheepdog}
STATE=${SHEEPDOG_TEST_STATE:-/var/lib/sheepdog-test}
TEST_USER=${SHEEPDOG_TEST_USER:-sheepdog}
HOST=$(hostname)

CLUSTER=sheepdog
PARTITION=debug
SECOND_PARTITION=long   # for the tests of sheepdog's 'queue' key
GPUS=2                  # /dev/sheepdog-gpu0 and 1: character devices like /dev/null
CPUS=8
MEMORY_MB=8192          # the node's memory as Slurm counts it
DEF_MEM_PER_CPU_MB=1024 # what a job without --mem gets: 8 such tasks fill the node
KILL_WAIT=5             # seconds between SIGTERM and SIGKILL (scancel, time limits)
MAX_ARRAY_SIZE=100001   # allows --array=1-100000
# Set SHEEPDOG_SLURM_ACCOUNTING=0 for a cluster without slurmdbd (no sacct).
ACCOUNTING=${SHEEPDOG_SLURM_ACCOUNTING:-1}

PACKAGES=(munge slurmctld slurmd slurm-client)
((ACCOUNTING)) && PACKAGES+=(slurmdbd mariadb-server)

SLURM_CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
SLURMDBD_CONF=/etc/slurm/slurmdbd.conf
MUNGED_PID=/run/munge/munged.pid
MARIADB_PID=/run/mysqld/mysqld.pid
MARIADB_SOCKET=/run/mysqld/mysqld.sock
SLURMDBD_PID=/run/slurmdbd.pid
SLURMCTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
CLEAN_ENV=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8)

# shellcheck source=ci/lib.sh
source "$(dirname "$0")/lib.sh"

# Replace file $1 (mode $2, owner $3) with stdin when that changes it; then
# say so by exit status 0, else 1.
write_if_changed() {
    local file=$1 mode=$2 owner=$3 new
    new=$(cat)
    if [[ -f $file ]] && [[ $(cat "$file") == "$new" ]]; then
        return 1
    fi
    install -m "$mode" -o "${owner%:*}" -g "${owner#*:}" /dev/null "$file.new"
    printf '%s\n' "$new" > "$file.new"
    mv "$file.new" "$file"
}

install_packages() {
    local installed
    installed=$(dpkg-query -W -f='${Status}\n' "${PACKAGES[@]}" 2>/dev/null | grep -c "install ok installed" || true)
    ((installed == ${#PACKAGES[@]})) && return 0
    say "installing ${PACKAGES[*]}"
    apt_install "${PACKAGES[@]}"
}

# A second loopback address: the Slurm notes found that slurmctld could not
# find its own address in a namespace whose loopback has only 127.0.0.1. (On
# the machine where this script was written it could; the address is
# harmless, so it stays.)
loopback() {
    ip -n "$NETNS" addr show dev lo | grep 'inet 127\.0\.0\.2/8' >/dev/null \
        || ip -n "$NETNS" addr add 127.0.0.2/8 dev lo
}

configure() {  # exit status 0 when a configuration file changed
    local changed=1 accounting_lines
    if ((ACCOUNTING)); then
        accounting_lines=$(cat <<EOF
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$HOST
EOF
)
    else
        accounting_lines=AccountingStorageType=accounting_storage/none
    fi
    write_if_changed "$SLURM_CONF" 644 root:root <<EOF && changed=0
# Written by ci/slurm-up.sh: sheepdog's single-node test cluster.
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
SlurmctldPidFile=$SLURMCTLD_PID
SlurmdPidFile=$SLURMD_PID
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
SwitchType=switch/none
# No cgroups: processes are tracked by parentage, nothing is confined.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# Memory is counted, and a task that uses more than its --mem (sampled
# every second) is killed with SIGKILL: FAILED 0:9 in sacct.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$DEF_MEM_PER_CPU_MB
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
$accounting_lines
JobCompType=jobcomp/none
# Fast scheduling: at once on submission, and on every task's end (the
# Epilog makes slurmctld schedule when a task ends, not on its next tick).
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
Epilog=/bin/true
KillWait=$KILL_WAIT
MaxArraySize=$MAX_ARRAY_SIZE
MaxJobCount=200000
# A dead slurmd is noticed within about 30 s (the node goes DOWN and its
# jobs end NODE_FAIL); a slurmd that comes back makes the node usable again.
SlurmdTimeout=30
ReturnToService=2
# 8 CPUs, the memory above and the GPUs of gres.conf, whatever this machine has.
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=$HOST CPUs=$CPUS RealMemory=$MEMORY_MB Gres=gpu:$GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=$SECOND_PARTITION Nodes=$HOST MaxTime=INFINITE State=UP
EOF
    write_if_changed "$GRES_CONF" 644 root:root <<EOF && changed=0
# Written by ci/slurm-up.sh: GPUs that are device nodes made for the tests.
NodeName=$HOST Name=gpu File=/dev/sheepdog-gpu[0-$((GPUS - 1))]
EOF
    if ((ACCOUNTING)); then
        write_if_changed "$SLURMDBD_CONF" 600 slurm:slurm <<EOF && changed=0
# Written by ci/slurm-up.sh.
AuthType=auth/munge
DbdHost=$HOST
DbdPort=6819
SlurmUser=slurm
PidFile=$SLURMDBD_PID
LogFile=/var/log/slurm/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=slurm
StorageLoc=slurm_acct_db
EOF
    fi
    return "$changed"
}

# The GPUs' device nodes: Slurm needs a File= for each GPU, not a GPU behind it.
make_gpu_devices() {
    local n
    for ((n = 0; n < GPUS; n++)); do
        [[ -c /dev/sheepdog-gpu$n ]] || mknod -m 666 "/dev/sheepdog-gpu$n" c 1 3
    done
}

start_munge() {
    if ! alive "$MUNGED_PID" munged; then
        say "starting munged"
        install -d -o munge -g munge -m 755 /run/munge
        (cd / && in_ns "${CLEAN_ENV[@]}" runuser -u munge -- /usr/sbin/munged)
    fi
    wait_for 10 alive "$MUNGED_PID" munged
}

start_mariadb() {
    if ! alive "$MARIADB_PID" mariadbd; then
        say "starting mariadbd"
        install -d -o mysql -g mysql -m 755 /run/mysqld /var/log/mysql
        # Unix socket only. It does not daemonise by itself (and so must not
        # run under `timeout`, as in_ns does). Nothing may keep this script's
        # stdout or stderr open: a caller reading them through a pipe would
        # wait for MariaDB to end.
        (cd / && exec ip netns exec "$NETNS" "${CLEAN_ENV[@]}" setsid /usr/sbin/mariadbd --user=mysql \
            --skip-networking --socket="$MARIADB_SOCKET" --pid-file="$MARIADB_PID" \
            --log-error=/var/log/mysql/error.log) </dev/null >/dev/null 2>&1 &
    fi
    wait_for 60 alive "$MARIADB_PID" mariadbd
    wait_for 60 mariadb --socket="$MARIADB_SOCKET" -e 'select 1'
    # slurmdbd logs in as the system user slurm, by unix socket, no password.
    if [[ -z $(mariadb --socket="$MARIADB_SOCKET" -N -e \
            "select 1 from mysql.global_priv where User='slurm' and Host='localhost'") ]]; then
        mariadb --socket="$MARIADB_SOCKET" -e "
            create user if not exists 'slurm'@'localhost' identified via unix_socket;
            grant all on slurm_acct_db.* to 'slurm'@'localhost';"
    fi
}

dbd_ready() { in_ns sacctmgr -n -P list cluster format=cluster; }

start_slurmdbd() {
    if ! alive "$SLURMDBD_PID" slurmdbd; then
        say "starting slurmdbd"
        (cd / && in_ns "${CLEAN_ENV[@]}" /usr/sbin/slurmdbd)
    fi
    wait_for 60 dbd_ready
    # The cluster, an account and the test user in the accounting database
    # (nothing is enforced; this only makes sacct's records look as usual).
    in_ns sacctmgr -n -P list cluster format=cluster | grep -x "$CLUSTER" >/dev/null \
        || in_ns sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null
    in_ns sacctmgr -n -P list account format=account | grep -x "$TEST_USER" >/dev/null \
        || in_ns sacctmgr -i -Q add account "$TEST_USER" cluster="$CLUSTER" >/dev/null
    in_ns sacctmgr -n -P list user format=user | grep -x "$TEST_USER" >/dev/null \
        || in_ns sacctmgr -i -Q add user "$TEST_USER" account="$TEST_USER" cluster="$CLUSTER" >/dev/null
}

start_slurmctld() {
    if ! alive "$SLURMCTLD_PID" slurmctld; then
        say "starting slurmctld"
        (cd / && in_ns "${CLEAN_ENV[@]}" /usr/sbin/slurmctld)
    fi
    wait_for 60 in_ns scontrol ping
}

node_ready() {
    # Up with 8 CPUs, and not down, drained or unknown.
    [[ $(in_ns sinfo -h -n "$HOST" -p "$PARTITION" -o '%C %t') =~ ^[0-9]+/[0-9]+/0/$CPUS\ (idle|mix|alloc)$ ]]
}

start_slurmd() {
    if ! alive "$SLURMD_PID" slurmd; then
        say "starting slurmd"
        # Not under `ip netns exec`: that remounts /sys, and slurmd needs
        # /sys/fs/cgroup. Its own mount namespace gets the cluster
        # namespace's hosts file (bind-mounted, as ip netns exec would), so
        # that tasks resolve names as everything else in the namespace does.
        (cd / && "${CLEAN_ENV[@]}" timeout 60 nsenter --net="/run/netns/$NETNS" \
            unshare --mount --propagation private sh -c \
            "mount --bind /etc/netns/$NETNS/hosts /etc/hosts && exec /usr/sbin/slurmd")
    fi
    wait_for 30 alive "$SLURMD_PID" slurmd
    wait_for 60 node_ready
}

write_env() {
    local keys='^export (SHEEPDOG_SLURM|SHEEPDOG_SLURM_PARTITION|SHEEPDOG_SLURM_CLUSTER|SHEEPDOG_SLURM_ACCOUNTING|SHEEPDOG_SLURM_KILL_WAIT)='
    {
        grep -Ev "$keys" "$STATE/env" 2>/dev/null || true
        cat <<EOF
export SHEEPDOG_SLURM=1
export SHEEPDOG_SLURM_PARTITION=$PARTITION
export SHEEPDOG_SLURM_CLUSTER=$CLUSTER
export SHEEPDOG_SLURM_ACCOUNTING=$ACCOUNTING
export SHEEPDOG_SLURM_KILL_WAIT=$KILL_WAIT
EOF
    } > "$STATE/env.new"
    replace_if_changed "$STATE/env"
}

main() {
    if [[ $(id -u) -ne 0 ]]; then
        say "run me as root: I install packages and start daemons"
        exit 1
    fi
    if [[ ! -e /run/netns/$NETNS ]] || ! id "$TEST_USER" >/dev/null 2>&1 || [[ ! -f $STATE/env ]]; then
        say "no test cluster in namespace $NETNS: run ci/gridengine-up.sh first"
        exit 1
    fi
    local started=$EPOCHREALTIME
    install_packages
    loopback
    make_gpu_devices
    if configure; then
        # A changed configuration: restart what runs with the old one.
        say "configuration changed"
        stop "$SLURMD_PID"
        stop "$SLURMCTLD_PID"
        stop "$SLURMDBD_PID"
    fi
    start_munge
    if ((ACCOUNTING)); then
        start_mariadb
        start_slurmdbd
    fi
    start_slurmctld
    start_slurmd
    write_env
    say "$CPUS CPUs on $HOST, partition $PARTITION, accounting $( ((ACCOUNTING)) && echo on || echo off);" \
        "ready in $(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}') s;" \
        "source $STATE/env"
}

main "$@"
