#!/usr/bin/env bash
# Record real GridEngine output for tests/test_gridengine_recorded.py.
#
# Run as the test cluster's unprivileged user, inside its namespace:
#   source /var/lib/sheepdog-test/env
#   cp tests/support/recorded/gridengine/record.sh /tmp/ && chmod 755 /tmp/record.sh
#   ip netns exec "$SHEEPDOG_NETNS" su - "$SHEEPDOG_TEST_USER" -c 'bash /tmp/record.sh /tmp/recorded'
#   cp /tmp/recorded/* tests/support/recorded/gridengine/
# It submits a few small jobs (about two minutes in all) and writes what
# qsub -terse, qstat -xml -g d, qstat -j and qacct -j print about them, as
# README.rst in this directory lists. Job ids differ between recordings; the
# tests read them from the recorded qsub output.
set -euo pipefail
out=${1:?usage: record.sh OUTPUT_DIRECTORY}
mkdir -p "$out"
work=$(mktemp -d)
cd "$work"

wait_for() {  # wait_for SECONDS COMMAND...: until COMMAND succeeds
    local deadline=$((SECONDS + $1)); shift
    until "$@"; do
        if ((SECONDS > deadline)); then echo "record.sh: timed out: $*" >&2; exit 1; fi
        sleep 1
    done
}
running_count() { [[ $(qstat -g d | awk -v j="$1" '$1 == j && $5 == "r"' | wc -l) -ge $2 ]]; }
gone() { ! qstat | awk '{print $1}' | grep -qx "$1"; }
accounted() { qacct -j "$1" >/dev/null 2>&1; }

printf '#!/bin/sh\nsleep 60\n' > sleep.sh
printf '#!/bin/sh\ncase "$SGE_TASK_ID" in 1) exit 0;; 2) exit 3;; 3) kill -9 $$;; esac\n' > ends.sh
common=(-notify -cwd -o /dev/null -e /dev/null -N sheepdog_recorded)

# A: six tasks, at most two at a time: two run, four wait as one range.
qsub -terse "${common[@]}" -S /bin/sh -t 1-6 -tc 2 sleep.sh > "$out/qsub-terse-array.txt"
range_job=$(cut -d. -f1 "$out/qsub-terse-array.txt")
# B: a shell that does not exist: GridEngine puts its tasks in error state (Eqw).
error_job=$(qsub -terse "${common[@]}" -S /nonexistent/python9.9 -t 1-3 sleep.sh | cut -d. -f1)
# H: held (hqw), less its task 3: qstat lists the rest as a list, 1,2,4,5.
held_job=$(qsub -terse "${common[@]}" -S /bin/sh -h -t 1-5 sleep.sh | cut -d. -f1)
qdel "$held_job" -t 3 >/dev/null
# P: a plain job, not an array, that runs (qstat gives it no <tasks>).
plain_job=$(qsub -terse "${common[@]}" -S /bin/sh sleep.sh)
# R: forty tasks, one at a time: one runs, the rest wait as a range (2-40:1).
slow_job=$(qsub -terse "${common[@]}" -S /bin/sh -t 1-40 -tc 1 sleep.sh | cut -d. -f1)
# A plain job, not an array.
qsub -terse "${common[@]}" -S /bin/sh ends.sh > "$out/qsub-terse-single.txt"
single_job=$(cat "$out/qsub-terse-single.txt")

wait_for 60 running_count "$range_job" 2
wait_for 60 running_count "$slow_job" 1
wait_for 60 running_count "$plain_job" 1
wait_for 60 bash -c "qstat -g d | awk '\$1 == $error_job && \$5 == \"Eqw\"' | grep -q ."
qstat -xml -g d > "$out/qstat-running-pending-eqw.xml"
# Without -g d, qstat lists the pending tasks of an array as ranges.
qstat -xml > "$out/qstat-ranges.xml"
qstat -j "$error_job" > "$out/qstat-j-eqw.txt"
printf 'split %s\nerror %s\nheld %s\nrange %s\nplain %s\n' "$range_job" "$error_job" \
    "$held_job" "$slow_job" "$plain_job" > "$out/jobs-in-qstat.txt"
qdel "$error_job" "$held_job" "$slow_job" "$plain_job" >/dev/null

# Tasks 1-2 of A are killed while running, 3-6 deleted before they ran.
qdel "$range_job" >/dev/null
# C: exit 0, exit 3, killed by SIGKILL.
qsub -terse "${common[@]}" -S /bin/sh -t 1-3 ends.sh > "$out/qsub-terse-ends.txt"
ends_job=$(cut -d. -f1 "$out/qsub-terse-ends.txt")
# D: over its h_rt.
limit_job=$(qsub -terse "${common[@]}" -S /bin/sh -l h_rt=0:0:3 sleep.sh)
echo "$limit_job" > "$out/qsub-terse-h_rt.txt"

for job in "$range_job" "$error_job" "$held_job" "$slow_job" "$plain_job" "$ends_job" "$limit_job" "$single_job"; do
    wait_for 120 gone "$job"
done
wait_for 60 accounted "$limit_job"
sleep 5  # let qmaster write every record of the jobs to the accounting file
qacct -j "$range_job" > "$out/qacct-deleted.txt"
qacct -j "$ends_job" > "$out/qacct-ends.txt"
qacct -j "$limit_job" > "$out/qacct-h_rt.txt"
qacct -j "$single_job" > "$out/qacct-single.txt"
qstat -xml -g d > "$out/qstat-after.xml"
# What qacct says (on stderr, with exit status 1) of a job it has no record of.
qacct -j 999999999 2> "$out/qacct-not-found.txt" >/dev/null && exit 1
# And what qstat -j says (on stderr, with exit status 1) of a job it does not know.
qstat -j 999999999 2> "$out/qstat-j-not-found.txt" >/dev/null && exit 1
# The cluster's size and array limit, as GridEngineBackend.capacity asks them.
qstat -g c > "$out/qstat-g-c.txt"
qconf -sconf > "$out/qconf-sconf.txt"
rm -rf "$work"
echo "recorded into $out"
