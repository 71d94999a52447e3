#!/usr/bin/env bash
# Check that the topology of ci/nat-up.sh behaves like a real, shared cluster
# (run as root after ci/gridengine-up.sh and ci/nat-up.sh; takes ~15 s):
#
#   * the caller ("laptop") logs in to the cluster over SSH, with host key
#     checking on, and has its own host name;
#   * the cluster cannot connect back to the caller: connects time out;
#   * a job sent to node1 runs there, cannot reach the head node's loopback,
#     can reach a head node service bound to 0.0.0.0 by the head's name, and
#     times out trying the caller;
#   * the attacker account sees other users' jobs (qstat -j, execd's spool).
#
# Exits non-zero on the first check that fails.
set -euo pipefail
cd "$(dirname "$0")"

STATE=${SHEEPDOG_TEST_STATE:-/var/lib/sheepdog-test}
# shellcheck source=/dev/null
source "$STATE/env"
NETNS=$SHEEPDOG_NETNS
HOST=$SHEEPDOG_TEST_HOST
PORT=47731   # listeners on this port in several namespaces; nothing else uses it

say() { echo "nat-check: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }
in_ns() { timeout 60 ip netns exec "$NETNS" "$@"; }
as_user() { in_ns runuser -u "$1" -- "${@:2}"; }

# probe HOST PORT: prints connected, refused, timeout or an error, after at
# most 3 s. The same one-liner runs inside the jobs.
PROBE='import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close(); print("connected")
except socket.timeout: print("timeout")
except ConnectionRefusedError: print("refused")
except OSError as e: print(type(e).__name__, e)'

# A listener that accepts connections into its backlog for a minute.
LISTEN='import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(64); time.sleep(60)'
listeners=()
work=$(mktemp -d)
chown "$SHEEPDOG_TEST_USER" "$work"
cleanup() {
    for pid in "${listeners[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# Listeners: on the head node's loopback, on all of the head node's
# addresses on another port, and in the caller's namespace.
# (`ip netns exec` execs its command, so $! is the listener's own pid.)
ip netns exec "$NETNS" python3 -c "$LISTEN" 127.0.0.1 "$PORT" & listeners+=($!)
ip netns exec "$NETNS" python3 -c "$LISTEN" 0.0.0.0 $((PORT + 1)) & listeners+=($!)
ip netns exec "$SHEEPDOG_CALLER_NETNS" python3 -c "$LISTEN" 0.0.0.0 "$PORT" & listeners+=($!)
sleep 0.5

say "the caller"
name=$("$SHEEPDOG_AS_CALLER" hostname)
[[ $name == "$SHEEPDOG_CALLER_NAME" ]] || fail "caller's host name is $name"
name=$(in_ns "$SHEEPDOG_AS_CALLER" hostname)
[[ $name == "$SHEEPDOG_CALLER_NAME" ]] || fail "from inside $NETNS, the caller's host name is $name"
own=$("$SHEEPDOG_AS_CALLER" getent hosts "$SHEEPDOG_CALLER_NAME")
[[ $own == "$SHEEPDOG_CALLER_ADDRESS "* ]] || fail "the caller's name resolves to $own"
out=$(timeout 30 "$SHEEPDOG_AS_CALLER" ssh -i "$SHEEPDOG_TEST_KEY" \
    -o UserKnownHostsFile="$SHEEPDOG_TEST_KNOWN_HOSTS" -o StrictHostKeyChecking=yes \
    -o BatchMode=yes -o ConnectTimeout=5 \
    "$SHEEPDOG_TEST_USER@$SHEEPDOG_CLUSTER_ADDRESS" qstat -f) || fail "ssh from the caller"
grep -q "all.q@$SHEEPDOG_NODE1" <<<"$out" || fail "qstat over ssh from the caller: $out"
say "  ssh $SHEEPDOG_TEST_USER@$SHEEPDOG_CLUSTER_ADDRESS qstat from $name: ok"

say "the cluster cannot connect to the caller"
result=$(in_ns python3 -c "$PROBE" "$SHEEPDOG_CALLER_ADDRESS" "$PORT")
[[ $result == timeout ]] || fail "head -> $SHEEPDOG_CALLER_ADDRESS:$PORT: $result"
result=$(in_ns python3 -c "$PROBE" "$SHEEPDOG_CALLER_NAME" "$PORT")
[[ $result == timeout ]] || fail "head -> $SHEEPDOG_CALLER_NAME:$PORT: $result"
result=$("$SHEEPDOG_AS_CALLER" python3 -c "$PROBE" "$SHEEPDOG_CALLER_ADDRESS" "$PORT")
[[ $result == connected ]] || fail "the caller's own listener: $result"
say "  head -> $SHEEPDOG_CALLER_NAME:$PORT: timeout (the caller itself connects)"

say "a job on $SHEEPDOG_NODE1"
cat > "$work/job.sh" <<EOF
#!/bin/sh
hostname
for target in 127.0.0.1:$PORT $HOST:$((PORT + 1)) $SHEEPDOG_CALLER_NAME:$PORT; do
    echo "\$target \$(python3 -c '$PROBE' \${target%:*} \${target#*:})"
done
EOF
chmod 755 "$work/job.sh"
as_user "$SHEEPDOG_TEST_USER" qsub -sync y -l hostname="$SHEEPDOG_NODE1" -N natcheck \
    -o "$work/job.out" -j y -S /bin/sh "$work/job.sh" >/dev/null || fail "qsub -l hostname=$SHEEPDOG_NODE1"
cat "$work/job.out" >&2
expected="$SHEEPDOG_NODE1
127.0.0.1:$PORT refused
$HOST:$((PORT + 1)) connected
$SHEEPDOG_CALLER_NAME:$PORT timeout"
[[ $(cat "$work/job.out") == "$expected" ]] || fail "the job on $SHEEPDOG_NODE1 saw something else"
# and the plain form of the brief
as_user "$SHEEPDOG_TEST_USER" qsub -sync y -l hostname="$SHEEPDOG_NODE1" -b y \
    -o "$work/hostname.out" -j y hostname >/dev/null
[[ $(cat "$work/hostname.out") == "$SHEEPDOG_NODE1" ]] || fail "qsub -b y hostname: $(cat "$work/hostname.out")"

say "the attacker ($SHEEPDOG_TEST_OTHER_USER)"
printf '#!/bin/sh\n# SECRET_IN_SCRIPT\nsleep 60\n' > "$work/sleep.sh"
jobs=()
trap 'for job in "${jobs[@]}"; do in_ns qdel -f "$job" >/dev/null 2>&1 || true; done; cleanup' EXIT
running() { in_ns qstat -s r -u "$SHEEPDOG_TEST_USER" | awk -v j="$1" '$1 == j {ok=1} END {exit !ok}'; }
for host in "$HOST" "$SHEEPDOG_NODE1"; do
    jobs+=("$(as_user "$SHEEPDOG_TEST_USER" qsub -terse -l hostname="$host" -N natcheck \
        -v SECRET_IN_ENV=hunter2 -o /dev/null -j y -S /bin/sh "$work/sleep.sh")")
done
set -- "${jobs[@]}"
for host in "$HOST" "$SHEEPDOG_NODE1"; do
    job=$1; shift
    deadline=$((SECONDS + 30))
    until running "$job"; do ((SECONDS < deadline)) || fail "job $job did not start on $host"; sleep 0.2; done
    as_user "$SHEEPDOG_TEST_OTHER_USER" qstat -j "*" | grep 'SECRET_IN_ENV=hunter2' >/dev/null \
        || fail "the attacker cannot see env_list in qstat -j '*'"
    spool=/var/spool/gridengine/execd/$host
    deadline=$((SECONDS + 10))
    until as_user "$SHEEPDOG_TEST_OTHER_USER" cat "$spool/job_scripts/$job" 2>/dev/null | grep SECRET_IN_SCRIPT >/dev/null; do
        ((SECONDS < deadline)) || fail "the attacker cannot read $spool/job_scripts/$job"
        sleep 0.2
    done
    as_user "$SHEEPDOG_TEST_OTHER_USER" cat "$spool/active_jobs/$job.1/environment" | grep SECRET_IN_ENV=hunter2 >/dev/null \
        || fail "the attacker cannot read $spool/active_jobs/$job.1/environment"
    say "  on $host: qstat -j '*', job_scripts/$job and active_jobs/$job.1/environment: readable"
done
say "all checks passed"
