"""An attacker's flood of idle connections, run as a process of its own.

:func:`idle_flood` keeps up to ``held`` idle TCP connections open to
``127.0.0.1:port`` (connecting from ``source``), renewing each one the other
end closes, with at most ``rate`` new connections a second. It is bounded:
it stops by itself after ``seconds`` or ``max_opened`` connections, or when
the block ends, which starts once the first ``held`` connections are open. It runs in another process so that it does not share the
server's GIL, as a real attacker would not. It connects to a port that
nothing listens on yet, too (and counts those connections as refused), so it
can be started before the server it floods.
"""

import contextlib
import json
import subprocess
import sys

_FLOOD = r"""
import errno, json, selectors, socket, sys, time
port, held, rate, max_opened, seconds, source = (
    int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]),
    float(sys.argv[5]), sys.argv[6])
selector = selectors.DefaultSelector()
selector.register(sys.stdin, selectors.EVENT_READ, None)
stats = {"opened": 0, "closed_by_server": 0, "refused": 0, "most_held": 0}
started = time.monotonic()
deadline = started + seconds
open_now = 0
while time.monotonic() < deadline and stats["opened"] < max_opened:
    allowed = int((time.monotonic() - started) * rate) + held - stats["opened"]
    for _ in range(max(0, min(held - open_now, allowed, max_opened - stats["opened"]))):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.setblocking(False)
        code = sock.connect_ex(("127.0.0.1", port))
        stats["opened"] += 1
        if code not in (0, errno.EINPROGRESS):
            stats["refused"] += 1
            sock.close()
            continue
        selector.register(sock, selectors.EVENT_READ, "flood")
        open_now += 1
    stats["most_held"] = max(stats["most_held"], open_now)
    if stats["opened"] >= held and not stats.get("announced"):
        stats["announced"] = 1
        print("holding", flush=True)  # the first ``held`` are open
    for key, _ in selector.select(0.01):
        if key.data is None:
            if not sys.stdin.buffer.read1(1):
                deadline = 0.0  # the test is done with us
            continue
        try:
            ended = key.fileobj.recv(1) == b""
        except ConnectionRefusedError:
            ended, stats["refused"] = True, stats["refused"] + 1
        except OSError:
            ended = True
        if ended:
            stats["closed_by_server"] += 1
            selector.unregister(key.fileobj)
            key.fileobj.close()
            open_now -= 1
print(json.dumps(stats), flush=True)
"""


@contextlib.contextmanager
def idle_flood(port, held=600, rate=400.0, max_opened=40_000, seconds=120.0,
               source="127.0.0.1"):
    """Flood ``port`` while the block runs; yields a dict that gets the flood's counts
    when the block ends (``opened``, ``closed_by_server``, ``refused``, ``most_held``)."""
    process = subprocess.Popen(
        [sys.executable, "-c", _FLOOD, str(port), str(held), str(rate), str(max_opened),
         str(seconds), source], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    stats = {}
    try:
        assert process.stdout.readline() == b"holding\n", "the flood did not start"
        yield stats
    finally:
        try:
            process.stdin.close()
            out = process.stdout.read()  # the flood ends on EOF, and says what it did
            process.wait(timeout=30)
            stats.update(json.loads(out or b"{}"))
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
