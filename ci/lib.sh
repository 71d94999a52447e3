# shellcheck shell=bash
# Helpers shared by the test cluster's bring-up and tear-down scripts.
#
# Source it after setting NETNS (and STATE if used); messages are prefixed
# with the name of the script that sources it. Every wait is bounded.

say() { echo "$(basename "$0" .sh): $*" >&2; }

# Run a command inside the cluster's network namespace, for at most a minute.
in_ns() { timeout 60 ip netns exec "$NETNS" "$@"; }

have_ns() { [[ -e /run/netns/$1 ]]; }

# Wait up to $1 seconds for the command that follows to succeed.
wait_for() {
    local seconds=$1; shift
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            say "gave up after ${seconds}s waiting for: $*"
            return 1
        fi
        sleep 0.2
    done
}

# A daemon is alive when its pid file ($1) names a live process called $2: pids
# are reused, so a stale pid file may name another program's process.
alive() {
    [[ -s $1 ]] || return 1
    local pid
    pid=$(cat "$1")
    kill -0 "$pid" 2>/dev/null && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]]
}

# Stop process $1: TERM, then KILL after 20 s (polled every 0.1 s; tail --pid
# polls only every second).
stop_pid() {
    local deadline=$((SECONDS + 20))
    kill "$1" 2>/dev/null || return 0
    while kill -0 "$1" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            kill -9 "$1" 2>/dev/null
            return 0
        fi
        sleep 0.1
    done
}

# Stop the daemon named by pid file $1, and remove the file.
stop() {
    if [[ -s $1 ]]; then
        stop_pid "$(cat "$1")"
    fi
    rm -f "$1"
}

# Install Debian packages ($@) without letting their scripts start daemons
# (there is no init system here to stop them again).
apt_install() {
    local made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    timeout 300 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends \
        "$@" >/dev/null
    if ((made_policy)); then rm -f /usr/sbin/policy-rc.d; fi
}

# Put file $1.new in place of $1 only when it differs, so that a run that
# changes nothing leaves the file as it was.
replace_if_changed() {
    if cmp -s "$1.new" "$1"; then
        rm "$1.new"
    else
        mv "$1.new" "$1"
    fi
}
