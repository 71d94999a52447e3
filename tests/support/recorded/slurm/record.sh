#!/usr/bin/env bash
# Record real Slurm output (and what a task sees when it is ended) for
# sheepdog's Slurm parsers and tests.
#
# Run as root, outside the namespace, with the test cluster up
# (ci/gridengine-up.sh, then ci/slurm-up.sh):
#   bash tests/support/recorded/slurm/record.sh /tmp/recorded
#   cp /tmp/recorded/* tests/support/recorded/slurm/
# Every Slurm command runs inside the namespace as the test user, except the
# two that need root: marking the node DOWN and killing slurmd (the node
# failures at the end). It takes about six minutes; the node is busy and goes
# DOWN twice meanwhile, so do not run it while others use the Slurm cluster.
# README.rst in this directory says what each file holds. Job ids differ
# between recordings: jobs.txt names them.
set -euo pipefail
out=${1:?usage: record.sh OUTPUT_DIRECTORY}
out=$(realpath -m "$out")
# shellcheck source=/dev/null
source "${SHEEPDOG_TEST_STATE:-/var/lib/sheepdog-test}/env"
: "${SHEEPDOG_SLURM:?no Slurm cluster: run ci/slurm-up.sh first}"
ci=$(cd "$(dirname "$0")/../../../ci" && pwd)
mkdir -p "$out"
rm -f "$out"/*.txt "$out"/*.log
work=$(mktemp -d /tmp/sheepdog-slurm-record.XXXXXX)
chmod 755 "$work"
chown "$SHEEPDOG_TEST_USER" "$work"
trap 'rm -rf "$work"' EXIT
home=$(getent passwd "$SHEEPDOG_TEST_USER" | cut -d: -f6)

# As the test user, in the namespace, in $work, with a plain environment.
u() {
    timeout 60 ip netns exec "$SHEEPDOG_NETNS" runuser -u "$SHEEPDOG_TEST_USER" -- \
        env -i PATH=/usr/bin:/bin HOME="$home" LANG=C.UTF-8 bash -c "cd $work && $1"
}
root() { timeout 60 ip netns exec "$SHEEPDOG_NETNS" "$@"; }
say() { echo "record.sh: $*" >&2; }
now() { date +%s.%N | cut -c1-14; }
wait_for() {  # wait_for SECONDS COMMAND...: until COMMAND succeeds
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then say "timed out: $*"; exit 1; fi
        sleep 0.3
    done
}
state_of() { u "squeue -h -r -t all -j $1 -o %t" 2>/dev/null; }   # a task's state, e.g. R
running() { [[ $(state_of "$1") == R ]]; }
running_count() { [[ $(u "squeue -h -r -t R -j $1 -o %i" | wc -l) -ge $2 ]]; }
gone() { [[ -z $(u "squeue -h -r -j $1 -o %i") ]]; }             # no task pending/running/completing
node_idle() { [[ $(root sinfo -h -n "$SHEEPDOG_TEST_HOST" -o %t) =~ ^(idle|mix)$ ]]; }
sacct_() { u "sacct -X -P -n -j $1 --format=JobID,State,ExitCode"; }
accounted() {  # every one of the $2 records of job $1 shows an ended state
    local lines
    lines=$(sacct_ "$1")
    [[ $(grep -c . <<<"$lines") -ge $2 ]] && ! grep -qE '\|(PENDING|RUNNING|REQUEUED)\|' <<<"$lines"
}
log() { echo "$(now) controller $1" >> "$work/$2"; }  # log WHAT FILE: a controller line in a task's log
# signal FILE COMMAND: run a command as the test user, and log it and what it
# printed in the task's log.
signal() {
    log "$2" "$1"
    local said
    said=$(u "$2" 2>&1) || said="$said (exit status $?)"
    [[ -z $said ]] || log "said: $said" "$1"
}

# The task scripts. sleep.sh sleeps; ends.sh ends in four ways; sigtask.py
# is the batch script itself (as sheepdog's job file is: a Python script with
# a shebang), logs every signal it can catch to the file named by its first
# argument, and starts one child Python that does the same. With a second
# argument N it first allocates and touches N MB.
printf '#!/bin/sh\nsleep 60\n' > "$work/sleep.sh"
printf '#!/bin/sh\ntrue\n' > "$work/true.sh"
printf '#!/bin/sh\nsleep 10\n' > "$work/sleep10.sh"
printf '#!/bin/sh\nsleep 300\n' > "$work/sleep300.sh"
cat > "$work/ends.sh" <<'EOF'
#!/bin/sh
case "$SLURM_ARRAY_TASK_ID" in 1) exit 0;; 2) exit 3;; 3) kill -9 $$;; 4) kill -15 $$;; esac
EOF
printf '#!/nonexistent/python9.9\nprint("never")\n' > "$work/bad-interpreter.py"
cat > "$work/sigtask.py" <<'EOF'
#!/usr/bin/python3
import os, signal, subprocess, sys, time
log, role = sys.argv[1], (sys.argv[3] if len(sys.argv) > 3 else "batch")
def write(what):
    with open(log, "a") as f:
        f.write(f"{time.time():.3f} {role} {what}\n")
def handler(signum, frame):
    write(signal.Signals(signum).name)
for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, handler)
hog = None
if role == "batch" and len(sys.argv) > 2 and sys.argv[2] != "0":
    hog = bytearray(int(sys.argv[2]) << 20)
    hog[::4096] = b"x" * len(hog[::4096])
write(f"start pid={os.getpid()} task={os.environ.get('SLURM_ARRAY_TASK_ID')}" + (f" holding {sys.argv[2]} MB" if hog else ""))
if role == "batch":
    subprocess.Popen([sys.executable, __file__, log, "0", "child"])
deadline = time.time() + 900
while time.time() < deadline:
    time.sleep(0.05)
EOF
chmod 755 "$work"/*.sh "$work"/*.py
common="-o /dev/null -e /dev/null -J sheepdog_recorded"
jobs_txt=()
remember() { jobs_txt+=("$1 $2"); }

# Turn a log's epoch times into seconds since its first line, sorted.
relative() {
    sort -n "$1" | awk 'NR == 1 {t0 = $1} {printf "%+8.3f", $1 - t0; $1 = ""; print}'
}

say "phase 1: a queue with running, pending, held and requeued tasks"
u "sbatch --parsable $common --array=1-6%2 sleep.sh" > "$out/sbatch-parsable-array.txt"
split=$(cat "$out/sbatch-parsable-array.txt")
held=$(u "sbatch --parsable $common --hold --array=1-5 sleep.sh")
range=$(u "sbatch --parsable $common --array=1-40%1 sleep.sh")
requeued=$(u "sbatch --parsable $common --array=1-3 sleep.sh")
later=$(u "sbatch --parsable $common --array=1-4 --begin=now+3600 sleep.sh")
remember split "$split"; remember held "$held"; remember range "$range"
remember requeued "$requeued"; remember later "$later"
wait_for 30 running_count "$split" 2
wait_for 30 running_count "$range" 1
wait_for 30 running_count "$requeued" 3
u "scontrol requeuehold state=SpecialExit ${requeued}_1; scontrol requeuehold ${requeued}_2; scontrol requeue ${requeued}_3; scontrol hold ${later}_2"
wait_for 30 bash -c "[[ \$(ip netns exec $SHEEPDOG_NETNS squeue -h -r -j $requeued -t SE -o %i) == ${requeued}_1 ]]"
wait_for 30 bash -c "[[ -n \$(ip netns exec $SHEEPDOG_NETNS squeue -h -r -j ${requeued}_3 -t PD -o %i) ]]"
queue="$split,$held,$range,$requeued,$later"
u "squeue -r" > "$out/squeue-r.txt"
u "squeue -r -h -j $queue -o '%i %t %r'" > "$out/squeue-r-i-t-r.txt"
u "squeue -r -h -j $queue -o '%F %K %t %r'" > "$out/squeue-r-F-K-t-r.txt"
u "squeue -h -j $queue -o '%F %K %t %r'" > "$out/squeue-F-K-t-r.txt"
u "squeue -r -h -j $queue -o '%i|%F|%K|%A|%t|%T|%r'" > "$out/squeue-r-rich.txt"
u "sacct -X -P -n -j $queue --format=JobID,State,ExitCode" > "$out/sacct-queue.txt"
sleep 3  # sacct lags
u "sacct -X -P -n -j $queue --format=JobID,State,ExitCode" > "$out/sacct-queue-later.txt"
u "scancel $held $range $requeued $later"
# split: two tasks running and four pending when it is cancelled.
u "scancel $split"

say "phase 2: the slow ones (time limits, warning signals)"
timelimit=$(u "sbatch --parsable $common --array=1 --time=0:01 sigtask.py $work/timelimit.log")
warn_b=$(u "sbatch --parsable $common --array=1 --time=2 --signal=B:USR2@60 sigtask.py $work/signal-B-USR2.log")
warn=$(u "sbatch --parsable $common --array=1 --time=2 --signal=USR2@60 sigtask.py $work/signal-USR2.log")
remember timelimit "$timelimit"; remember warn_b "$warn_b"; remember warn "$warn"
wait_for 60 gone "$split"
wait_for 60 gone "$range"
for job in "$timelimit" "$warn_b" "$warn"; do wait_for 30 running "${job}_1"; done

say "phase 3: tasks that end in different ways"
lag=$(u "sbatch --parsable $common --array=1-4 true.sh")
remember lag "$lag"
# sacct right after submission, as often as it can be asked, until every
# task's record is there: the distinct answers, with their times.
t0=$(now); last=; deadline=$((SECONDS + 30))
: > "$out/sacct-lag.txt"
while ((SECONDS < deadline)); do
    answer=$(sacct_ "$lag")
    if [[ $answer != "$last" ]]; then
        printf '# %s s after sbatch returned\n%s\n' "$(awk -v a="$t0" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}')" "$answer" >> "$out/sacct-lag.txt"
        last=$answer
    fi
    accounted "$lag" 4 && [[ $(grep -c "^${lag}_" <<<"$answer") -eq 4 ]] && break
    sleep 0.1
done
u "sbatch --parsable $common --array=1-4 ends.sh" > "$out/sbatch-parsable-ends.txt"
ends=$(cat "$out/sbatch-parsable-ends.txt")
u "sbatch --parsable $common ends.sh" > "$out/sbatch-parsable-single.txt"
single=$(cat "$out/sbatch-parsable-single.txt")
u "sbatch --parsable -M $SHEEPDOG_SLURM_CLUSTER $common true.sh" > "$out/sbatch-parsable-cluster.txt"
cluster_job=$(cut -d';' -f1 "$out/sbatch-parsable-cluster.txt")
oom=$(u "sbatch --parsable $common --array=1 --mem=50M sigtask.py $work/oom.log 300")
bad_output=$(u "sbatch --parsable -o /nonexistent/dir/out -J sheepdog_recorded true.sh")
bad_interpreter=$(u "sbatch --parsable $common bad-interpreter.py")
remember ends "$ends"; remember single "$single"; remember cluster "$cluster_job"
remember oom "$oom"; remember bad_output "$bad_output"; remember bad_interpreter "$bad_interpreter"
# What sbatch says (on stderr, exit status 1) when it refuses a job.
u "sbatch --parsable $common -p nonexistent true.sh" 2> "$out/sbatch-refused-partition.txt" && exit 1
u "sbatch --parsable $common --mem=100G true.sh" 2> "$out/sbatch-refused-memory.txt" && exit 1
u "sbatch --parsable $common --array=1-100001 true.sh" 2> "$out/sbatch-refused-array.txt" && exit 1

say "phase 4: signals on scancel"
# sig-scancel: scancel JOB_1. sig-usr2-full: scancel --signal=USR2 --full,
# sig-usr2: the same without --full, sig-usr2-batch: --batch instead; each
# then scancel'ed two seconds later.
declare -A sigjob
for name in scancel usr2-full usr2 usr2-batch; do
    sigjob[$name]=$(u "sbatch --parsable $common --array=1 sigtask.py $work/signal-$name.log")
    remember "signal-$name" "${sigjob[$name]}"
done
for name in scancel usr2-full usr2 usr2-batch; do
    wait_for 30 running "${sigjob[$name]}_1"
    wait_for 10 bash -c "[[ \$(grep -c start $work/signal-$name.log) -eq 2 ]]"
done
sleep 1
signal signal-scancel.log "scancel ${sigjob[scancel]}_1"
signal signal-usr2-full.log "scancel --signal=USR2 --full ${sigjob[usr2-full]}_1"
signal signal-usr2.log "scancel --signal=USR2 ${sigjob[usr2]}_1"
signal signal-usr2-batch.log "scancel --signal=USR2 --batch ${sigjob[usr2-batch]}_1"
sleep 2
for name in usr2-full usr2 usr2-batch; do
    signal "signal-$name.log" "scancel ${sigjob[$name]}_1"
done
for name in scancel usr2-full usr2 usr2-batch; do
    wait_for 30 gone "${sigjob[$name]}"
    log "task gone from squeue" "signal-$name.log"
done

say "phase 5: waiting for the time limits (up to three minutes after phase 2)"
wait_for 150 gone "$timelimit"
log "task gone from squeue" timelimit.log
wait_for 200 gone "$warn_b"
log "task gone from squeue" signal-B-USR2.log
wait_for 30 gone "$warn"
log "task gone from squeue" signal-USR2.log
for job in "$ends" "$single" "$cluster_job" "$oom" "$bad_output" "$bad_interpreter"; do wait_for 60 gone "$job"; done
wait_for 30 accounted "$ends" 4
wait_for 30 accounted "$oom" 1
wait_for 30 accounted "$timelimit" 1
wait_for 30 accounted "$split" 1
sacct_ "$split" > "$out/sacct-cancelled.txt"
sacct_ "$ends" > "$out/sacct-ends.txt"
sacct_ "$single" > "$out/sacct-single.txt"
sacct_ "$oom" > "$out/sacct-oom.txt"
sacct_ "$timelimit" > "$out/sacct-timeout.txt"
sacct_ "$bad_output" > "$out/sacct-bad-output.txt"
sacct_ "$bad_interpreter" > "$out/sacct-bad-interpreter.txt"
u "sacct -P -n -j $ends,$split,$oom,$timelimit --format=JobID,State,ExitCode" > "$out/sacct-steps.txt"
u "sacct -X -P -n -j ${sigjob[scancel]},${sigjob[usr2-full]},$warn_b,$warn --format=JobID,State,ExitCode" \
    > "$out/sacct-signalled.txt"

say "phase 6: node failures"
# The node is marked DOWN while two tasks run, one that may be requeued
# (Slurm's default) and one submitted with --no-requeue; then resumed.
nf_requeue=$(u "sbatch --parsable $common --array=1 sleep10.sh")
nf=$(u "sbatch --parsable $common --array=1 --no-requeue sleep10.sh")
remember node_fail_requeued "$nf_requeue"; remember node_fail "$nf"
wait_for 30 running "${nf_requeue}_1"
wait_for 30 running "${nf}_1"
root scontrol update nodename="$SHEEPDOG_TEST_HOST" state=down reason="recorded node failure"
wait_for 30 bash -c "[[ \$(ip netns exec $SHEEPDOG_NETNS squeue -h -r -t all -j ${nf}_1 -o %t) == NF ]]"
sleep 3
u "squeue -r -h -t all -j $nf,$nf_requeue -o '%i %t %r'" > "$out/squeue-node-fail.txt"
sacct_ "$nf,$nf_requeue" > "$out/sacct-node-fail.txt"
# With ReturnToService=2 the node is back by itself as soon as slurmd answers
# (then resume is refused as an invalid state transition).
root scontrol update nodename="$SHEEPDOG_TEST_HOST" state=resume 2>/dev/null || true
wait_for 30 node_idle
# slurmd killed (its task's processes stay): after SlurmdTimeout (30 s) the
# node is DOWN (not responding) and the task ends NODE_FAIL.
sd=$(u "sbatch --parsable $common --array=1 --no-requeue sleep300.sh")
remember slurmd_killed "$sd"
wait_for 30 running "${sd}_1"
kill -9 "$(cat /run/slurmd.pid)"
t_kill=$SECONDS
wait_for 120 bash -c "[[ \$(ip netns exec $SHEEPDOG_NETNS squeue -h -r -t all -j ${sd}_1 -o %t) == NF ]]"
say "slurmd killed: task NODE_FAIL after $((SECONDS - t_kill)) s"
root sinfo -h -o '%t %E' > "$out/sinfo-slurmd-killed.txt"
bash "$ci/slurm-up.sh"
sleep 3
sacct_ "$sd" > "$out/sacct-slurmd-killed.txt"
# The requeued task runs again once the node is back (not at once: a
# requeued job waits before it may start again).
wait_for 200 accounted "$nf_requeue" 1
sacct_ "$nf_requeue" > "$out/sacct-node-fail-requeued-later.txt"
u "sacct -X -D -P -n -j $nf_requeue --format=JobID,State,ExitCode" > "$out/sacct-D-node-fail-requeued.txt"

say "phase 7: after the end, and the cluster's size"
all=$(printf '%s\n' "${jobs_txt[@]}" | awk '{print $2}' | paste -sd,)
u "squeue -r -h -t all -j $all -o '%i %t %r'" > "$out/squeue-t-all-ended.txt"
u "squeue -r -h -j $ends -o '%i %t %r'" > "$out/squeue-ended.txt"
u "squeue -r -h -j 999999999 -o '%i %t %r'" > "$out/squeue-not-found.txt" 2>&1 && exit 1
u "sacct -X -P -n -j 999999999 --format=JobID,State,ExitCode" > "$out/sacct-not-found.txt" 2>&1
u "sinfo -h -o '%C'" > "$out/sinfo-C.txt"
u "sinfo -h -o '%P|%a|%C|%c|%m|%D|%t'" > "$out/sinfo-summary.txt"
u "scontrol show config" > "$out/scontrol-show-config.txt"
u "scontrol show config | grep MaxArraySize" > "$out/scontrol-maxarraysize.txt"

for name in timelimit signal-B-USR2 signal-USR2 signal-scancel signal-usr2-full signal-usr2 signal-usr2-batch oom; do
    relative "$work/$name.log" > "$out/$name.log"
done
printf '%s\n' "${jobs_txt[@]}" > "$out/jobs.txt"
say "recorded into $out ($SECONDS s)"
