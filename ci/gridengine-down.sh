#!/usr/bin/env bash
# Stop what ci/gridengine-up.sh, ci/nat-up.sh and ci/slurm-up.sh started:
# Slurm, GridEngine's daemons, the test sshds, node1, the caller, and the
# network namespaces.
# Packages, the test users and the key stay, so the next bring-up takes
# seconds.
set -uo pipefail

NETNS=${SHEEPDOG_NETNS:-sheepdog}
STATE=${SHEEPDOG_TEST_STATE:-/var/lib/sheepdog-test}
HOST=$(hostname)

# shellcheck source=ci/lib.sh
source "$(dirname "$0")/lib.sh"

# Slurm (ci/slurm-up.sh) runs in the same namespace: stop it first.
bash "$(dirname "$0")/slurm-down.sh"

# Then what ci/nat-up.sh added (node1, the caller): it needs qmaster to take
# node1 out of the configuration.
bash "$(dirname "$0")/nat-down.sh"

stop "/var/spool/gridengine/execd/$HOST/execd.pid"
stop /var/spool/gridengine/qmaster/qmaster.pid
stop "$STATE/sshd.pid"
ip netns delete "$NETNS" 2>/dev/null
echo "gridengine-down: stopped" >&2
