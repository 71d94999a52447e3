"""``sheepdog rm`` and ``sheepdog prune``: remove requests, and say what that freed.

Both write through the database's :class:`~sheepdog.storage.Storage`, which
removes rows in one transaction under the lock every writer takes (see
``storage/housekeeping.py``), so other processes may keep reading and
writing the database meanwhile. Bad input (an unknown request, a request
with tasks still open, a duration that is not one) removes nothing, and the
command exits 2 with a message that says what to do.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

from ..caller.session import Session
from ..storage import Storage
from ..storage.housekeeping import Freed, StillOpen
from . import records
from .serving import CommandError

Command = Callable[[argparse.Namespace, Session], int]


def _storage(session: Session, dbfile: str) -> Storage:
    """The database ``dbfile`` opened to be written; it must exist."""
    try:
        return session.storage(dbfile, create=False)
    except FileNotFoundError as error:
        raise CommandError(str(error)) from None


def _report(freed: Freed) -> None:
    ids = ", ".join(map(str, freed.requests))
    print(f"removed request{'s' if len(freed.requests) > 1 else ''} {ids} "
          f"({freed.tasks} tasks): freed {records.size(freed.bytes)}")


def _remove(storage: Storage, request_ids: list[int]) -> Freed:
    try:
        return storage.remove_requests(request_ids)
    except KeyError as error:
        raise CommandError(error.args[0]) from None
    except StillOpen as error:
        raise CommandError(str(error)) from None


def _rm(arguments: argparse.Namespace, session: Session) -> int:
    _report(_remove(_storage(session, arguments.dbfile), arguments.request_ids))
    return 0


def _prune(arguments: argparse.Namespace, session: Session) -> int:
    storage = _storage(session, arguments.dbfile)
    chosen = storage.removable_before(time.time() - arguments.older_than, arguments.keep_cached)
    if not chosen:
        kept = " that the cache cannot reuse" if arguments.keep_cached else ""
        print(f"nothing to remove: no finished request{kept} is older than "
              f"{records.span(arguments.older_than)}")
        return 0
    _report(_remove(storage, chosen))
    return 0


def _duration(text: str) -> float:
    try:
        return records.duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_commands(command: Callable[..., Any]) -> None:
    """Declare ``rm`` and ``prune`` with ``command(name, run, summary, description)``, the
    parser's way to add a subcommand (see ``commands._parser``)."""
    rm = command("rm", _rm, "remove requests with their tasks, results, output and files",
                 "Remove the requests RID... with everything that is theirs, and say how much "
                 "that freed. A request with tasks still open is refused (cancel it first); "
                 "so is an unknown id. Either way nothing is removed.")
    rm.add_argument("request_ids", type=int, nargs="+", metavar="RID",
                    help="the requests to remove")
    prune = command("prune", _prune, "remove the finished requests older than a duration",
                    "Remove every request made more than DURATION ago whose tasks have all "
                    "finished, and say how much that freed.")
    prune.add_argument("--older-than", type=_duration, required=True, metavar="DURATION",
                       help="the age of the requests to remove (30m, 12h, 7d)")
    prune.add_argument("--keep-cached", action="store_true",
                       help="keep the requests with results that the cache (config key "
                            "'cache') may reuse")
