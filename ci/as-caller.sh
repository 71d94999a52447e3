#!/bin/sh
# Run a command as "the caller": the user's laptop, behind NAT, that the
# cluster cannot reach (see ci/nat-up.sh and docs/testing.rst).
#
#     ci/as-caller.sh python -m pytest ...
#
# The command runs as root in the network namespace $SHEEPDOG_CALLER_NETNS,
# whose /etc/hosts maps the caller's own name and the head node, and in a UTS
# namespace of its own whose host name is $SHEEPDOG_CALLER_NAME, so that the
# caller does not share the head node's host name (which resolves to the head's
# loopback inside the cluster and would make callbacks succeed by accident).
# Works from the machine's own namespaces and from inside the cluster's
# namespace (pytest runs there): `ip netns exec` finds namespaces by path.
set -e
netns=${SHEEPDOG_CALLER_NETNS:-sdcaller}
name=${SHEEPDOG_CALLER_NAME:-laptop}
if [ $# -eq 0 ]; then
    echo "usage: $0 COMMAND [ARGS...]" >&2
    exit 2
fi
# sh -c 'SCRIPT' NAME CMD ARGS...: inside, $0 is NAME and "$@" is CMD ARGS...,
# so no argument is ever re-parsed by a shell.
# shellcheck disable=SC2016  # expanded by the inner sh, on purpose
exec ip netns exec "$netns" unshare --uts \
    sh -c 'hostname "$0" && exec "$@"' "$name" "$@"
