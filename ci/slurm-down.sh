#!/usr/bin/env bash
# Stop what ci/slurm-up.sh started: cancel every Slurm job (waiting, bounded,
# for them to end), then stop slurmd, slurmctld, slurmdbd, MariaDB and munged,
# take the second loopback address away and the Slurm lines out of the env
# file. GridEngine, sshd and the namespace stay; packages, configuration and
# the accounting database stay too, so the next bring-up takes seconds. Safe
# to run when nothing (or only part) is up.
set -uo pipefail

NETNS=${SHEEPDOG_NETNS:-sheepdog}
STATE=${SHEEPDOG_TEST_STATE:-/var/lib/sheepdog-test}

# shellcheck source=ci/lib.sh
source "$(dirname "$0")/lib.sh"

main() {
    if [[ $(id -u) -ne 0 ]]; then
        say "run me as root"
        exit 1
    fi
    # Jobs first, while slurmctld and slurmd can still end them: a task's
    # processes (under slurmstepd) outlive slurmd.
    if have_ns "$NETNS" && alive /run/slurmctld.pid slurmctld && alive /run/slurmd.pid slurmd; then
        local jobs
        jobs=$(in_ns squeue -h -o %A 2>/dev/null | sort -u)
        if [[ -n $jobs ]]; then
            # shellcheck disable=SC2086
            in_ns scancel $jobs 2>/dev/null
            local deadline=$((SECONDS + 30))
            while [[ -n $(in_ns squeue -h -o %A 2>/dev/null) ]]; do
                if ((SECONDS >= deadline)); then
                    say "jobs still there after 30 s; stopping the daemons anyway"
                    break
                fi
                sleep 0.5
            done
        fi
    fi
    stop /run/slurmd.pid
    stop /run/slurmctld.pid
    stop /run/slurmdbd.pid
    stop /run/mysqld/mysqld.pid
    stop /run/munge/munged.pid
    if have_ns "$NETNS"; then
        ip -n "$NETNS" addr del 127.0.0.2/8 dev lo 2>/dev/null
    fi
    if [[ -f $STATE/env ]]; then
        grep -Ev '^export (SHEEPDOG_SLURM|SHEEPDOG_SLURM_PARTITION|SHEEPDOG_SLURM_CLUSTER|SHEEPDOG_SLURM_ACCOUNTING|SHEEPDOG_SLURM_KILL_WAIT)=' \
            "$STATE/env" > "$STATE/env.new"
        replace_if_changed "$STATE/env"
    fi
    say "stopped"
}

main "$@"
