"""Every result an API call returned is still in the database, whatever else happened.

Tested the way SQLite tests itself: several processes share one database,
each through several sessions, an Executor, ``map`` and extra ``Storage``
handles, while ``sheepdog list`` and ``sheepdog status`` read it in a loop
from other processes and some writers are killed with SIGKILL at random
points. Each writer appends what an API call returned to a journal of its
own (flushed and synced before it goes on); afterwards every journalled
result must be in the database, and ``PRAGMA integrity_check`` must say ok.

``SHEEPDOG_DURABILITY_ROUNDS`` sets how many calls each writer makes (a few
in a test run; ``benchmarks/durability.py`` runs it for longer).
"""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import sheepdog

ROUNDS = int(os.environ.get("SHEEPDOG_DURABILITY_ROUNDS", "8"))
WRITERS = int(os.environ.get("SHEEPDOG_DURABILITY_WRITERS", "3"))

_WRITER = r'''
import os, random, sys
import sheepdog
from sheepdog.caller.session import Session
from sheepdog.storage import Storage

dbfile, journal, seed, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
conf = {"scheduler": "local", "dbfile": dbfile, "dashboard": False, "workers": 2,
        "retry_seconds": 5}


def f(x):
    return 2 * x + 1


def keep(out, kind, request_id, index, value):
    out.write(f"{kind} {request_id} {index} {value}\n")
    out.flush()
    os.fsync(out.fileno())


sessions = [Session(), Session()]
extra_handles = []
with open(journal, "a") as out, sheepdog.Executor(conf) as executor:
    for _ in range(rounds):
        kind = rng.choice(["map", "session", "executor", "storage"])
        x = rng.randrange(10 ** 6)
        if kind == "storage":  # a second handle on the file, as a library user may make
            extra_handles.append(Storage(dbfile))
            extra_handles[-1].request_ids()
        elif kind == "map":
            request_id = sheepdog.map_async(f, [(x,), (x + 1,)], conf)
            for index, (_args, value) in enumerate(sheepdog.get_results(request_id, dbfile), 1):
                keep(out, kind, request_id, index, value)
        elif kind == "session":
            request = rng.choice(sessions).submit(f, [(x,)], conf)
            request.wait(timeout=120)
            keep(out, kind, request.id, 1, request.values()[0])
        else:
            keep(out, kind, 0, x, executor.submit(f, x).result(timeout=120))
for handle in extra_handles:
    handle.close()
for session in sessions:
    session.close()
'''


def _read_in_a_loop(dbfile, stop):
    """``sheepdog list`` and ``status`` against the database until ``stop`` is set."""
    while not stop.is_set():
        for command in (["list"], ["status", "1"]):
            subprocess.run([sys.executable, "-m", "sheepdog", *command, "--dbfile", dbfile],
                           capture_output=True, timeout=60)


def _journalled(journals):
    for journal in journals:
        if not os.path.exists(journal):
            continue
        with open(journal) as lines:
            for line in lines:
                kind, request_id, index, value = line.split()
                yield kind, int(request_id), int(index), int(value)


def test_results_returned_to_any_caller_survive_other_handles_readers_and_kills(tmp_path):
    dbfile = str(tmp_path / "shared.sqlite")
    sheepdog.map(len, [("seed",)], {"scheduler": "local", "dbfile": dbfile,
                                    "dashboard": False}, verbose=False)
    journals = [str(tmp_path / f"journal-{n}.txt") for n in range(WRITERS)]
    stop = threading.Event()
    readers = [threading.Thread(target=_read_in_a_loop, args=(dbfile, stop)) for _ in range(2)]
    for reader in readers:
        reader.start()
    rng = random.Random(os.getpid())
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, dbfile, journal,
                                 str(rng.randrange(1 << 30)), str(ROUNDS)])
               for journal in journals]
    victims = writers[: max(1, WRITERS // 3)]
    try:
        for victim in victims:  # killed at a random point of its work
            time.sleep(rng.uniform(0.5, 3.0))
            victim.send_signal(signal.SIGKILL)
        for writer in writers:
            writer.wait(timeout=600)
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=120)
        for writer in writers:
            writer.kill()
    survivors = [writer for writer in writers if writer not in victims]
    assert all(writer.returncode == 0 for writer in survivors)

    sheepdog.api.default_session().close()
    checked = 0
    results = {}
    for kind, request_id, index, value in _journalled(journals):
        if kind == "executor":  # the Executor names no request: the value must be somewhere
            if not results:
                with sqlite3.connect(dbfile) as connection:
                    ids = [row[0] for row in connection.execute("SELECT id FROM requests")]
                for rid in ids:
                    results[rid] = [v for _a, v in sheepdog.get_results(rid, dbfile, block=False)]
            assert any(value in values for values in results.values()), (kind, index, value)
        else:
            stored = sheepdog.get_results(request_id, dbfile, block=False)
            assert stored[index - 1][1] == value, (kind, request_id, index)
        checked += 1
    print(f"\n{checked} returned results checked; {len(victims)} of {WRITERS} writers killed")
    assert checked >= len(survivors) * ROUNDS // 4  # the writers did return results
    with sqlite3.connect(dbfile) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_second_handle_and_another_process_cannot_make_committed_results_vanish(tmp_path):
    """The issue's minimal case: a second ``Storage`` of the file, another process that
    opens and closes it, and a request made after both is still there afterwards."""
    from sheepdog.caller.session import Session
    from sheepdog.storage import Storage

    dbfile = str(tmp_path / "shared.sqlite")
    conf = {"scheduler": "local", "dbfile": dbfile, "dashboard": False}
    with Session() as session:
        assert session.submit(len, [("one",)], conf).wait(timeout=120) is None
        second = Storage(dbfile)
        subprocess.run([sys.executable, "-c", "import sqlite3, sys; "
                        "sqlite3.connect(sys.argv[1]).execute('SELECT count(*) FROM requests').fetchall()", dbfile],
                       check=True, timeout=60)
        request = session.submit(len, [("three",)], conf)
        request.wait(timeout=120)
        assert request.values() == [5]
        seen = subprocess.run(  # another process sees it while this one still runs
            [sys.executable, "-c", "import sqlite3, sys; print(sqlite3.connect(sys.argv[1])"
             ".execute('SELECT count(*) FROM requests').fetchone()[0])", dbfile],
            check=True, timeout=60, capture_output=True, text=True).stdout
        assert seen.split() == ["2"]
        second.close()
    with sqlite3.connect(dbfile) as connection:
        assert connection.execute("SELECT count(*) FROM requests").fetchone()[0] == 2
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
