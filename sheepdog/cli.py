"""The ``sheepdog`` command: serve an earlier request's results, or show its progress.

``sheepdog serve [RID ...] --dbfile F`` restarts the callback server for
requests already in ``F`` (after the process that submitted them ended or
crashed), so that tasks still running can deliver their results. It serves
the named requests, or else those with tasks still open, over the scheme
their workers call back with (HTTP or HTTPS, as each request's ``tls`` key
said) and on the port fixed in their config, unless ``--scheme`` and
``--port`` say otherwise. One server speaks one scheme: requests that need
both are served by two commands, one ``--scheme`` each.
``sheepdog status RID --dbfile F`` prints how far a request has come.
``sheepdog logs RID [INDEX] --dbfile F`` prints what tasks left behind: the
error and the tail of the stdout and stderr of task INDEX (1-based, in the
order of the arguments), or of every task that failed, was lost or was
cancelled. ``sheepdog dashboard --dbfile F`` serves the live dashboard of
every request in ``F`` and opens it in a browser. Reading commands never
create a database: a missing dbfile is an error that names it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, NamedTuple, Optional, Sequence

from .callbacks import DEFAULT_MAX_BODY_BYTES
from .config import DEFAULT_DASHBOARD
from .dashboard import parse_address, run_dashboard
from .progress import describe
from .server import Server
from .session import Session
from .storage import STREAMS, Storage, TaskLog

log = logging.getLogger("sheepdog")


class CommandError(Exception):
    """The command cannot go on; the message says why and what to do instead."""


class ServePlan(NamedTuple):
    """What ``sheepdog serve`` serves: over which scheme, on which port, for whom."""

    scheme: str
    port: int
    request_ids: list[int]
    max_body_bytes: int


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sheepdog", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve results for requests in a database")
    serve.add_argument("request_ids", type=int, nargs="*", metavar="RID",
                       help="the requests to serve (default: those with tasks still open)")
    serve.add_argument("--dbfile", default="./sheepdog.sqlite")
    serve.add_argument("--port", type=int,
                       help="the port the workers call back on (default: the port fixed in "
                            "the requests' config)")
    serve.add_argument("--scheme", choices=("http", "https"),
                       help="serve HTTP or HTTPS (default: what the requests' workers use)")
    serve.add_argument("--bind", default="0.0.0.0", help="address to listen on")
    status = commands.add_parser("status", help="show the progress of a request")
    status.add_argument("request_id", type=int)
    status.add_argument("--dbfile", default="./sheepdog.sqlite")
    logs = commands.add_parser("logs", help="show the errors and output of a request's tasks")
    logs.add_argument("request_id", type=int)
    logs.add_argument("index", type=int, nargs="?",
                      help="the task (1-based argument index; default: every task that "
                           "failed, was lost or was cancelled)")
    logs.add_argument("--dbfile", default="./sheepdog.sqlite")
    _add_dashboard_command(commands)
    return parser


def _add_dashboard_command(commands: Any) -> None:
    dashboard = commands.add_parser("dashboard", help="serve the live dashboard of a database")
    dashboard.add_argument("--dbfile", default="./sheepdog.sqlite")
    dashboard.add_argument("--address", default=DEFAULT_DASHBOARD,
                           help="HOST:PORT to listen on (default: %(default)s, this machine "
                                "only, a free port)")
    dashboard.add_argument("--no-browser", action="store_true",
                           help="print the link without opening a browser")


def _dashboard(arguments: argparse.Namespace) -> int:
    try:
        parse_address(arguments.address, "--address")
    except ValueError as error:
        raise CommandError(str(error)) from None
    run_dashboard(_existing_storage(arguments.dbfile), open_browser=not arguments.no_browser,
                  address=arguments.address)
    return 0


def _existing_storage(dbfile: str) -> Storage:
    """The database ``dbfile``, which must exist: reading never creates one."""
    try:
        return Session().storage(dbfile, create=False)
    except FileNotFoundError as error:
        raise CommandError(str(error)) from None


def format_log(log_entry: TaskLog) -> str:
    """One task's state, error and output, as ``sheepdog logs`` prints it."""
    lines = [f"=== task {log_entry.task}: {log_entry.state} ==="]
    if log_entry.error:
        lines.append(log_entry.error.rstrip())
    for stream in STREAMS:
        if stream in log_entry.output:
            lines.append(f"--- {stream} (the last part) ---")
            lines.append(log_entry.output[stream].rstrip())
    if not log_entry.output:
        lines.append("(no output was kept)")
    return "\n".join(lines)


def _logs(arguments: argparse.Namespace) -> int:
    storage = _existing_storage(arguments.dbfile)
    try:
        entries = storage.task_logs(arguments.request_id, arguments.index)
    except KeyError as error:
        raise CommandError(error.args[0]) from None
    if not entries:
        print(f"request {arguments.request_id}: no task failed, was lost or was cancelled")
    for entry in entries:
        print(format_log(entry))
    return 0


def _listing(request_ids: Sequence[int]) -> str:
    return ("request " if len(request_ids) == 1 else "requests ") + ", ".join(map(str, request_ids))


def plan_serving(storage: Storage, request_ids: Sequence[int], scheme: Optional[str] = None,
                 port: Optional[int] = None) -> ServePlan:
    """Choose the scheme and port for serving ``request_ids`` (default: the open ones)."""
    request_ids = list(request_ids) or storage.open_requests()
    if not request_ids:
        raise CommandError(f"no request in {storage.dbfile} has tasks still open; name the "
                           f"requests to serve them anyway")
    try:
        configs: dict[int, dict[str, Any]] = {
            request_id: storage.request_config(request_id) for request_id in request_ids}
    except KeyError as error:
        raise CommandError(error.args[0]) from None
    by_scheme: dict[str, list[int]] = {}
    for request_id, config in configs.items():
        by_scheme.setdefault("https" if config.get("tls", True) else "http", []).append(request_id)
    if scheme is None:
        if len(by_scheme) > 1:
            raise CommandError(
                f"the workers of {_listing(by_scheme['https'])} call back over HTTPS, those of "
                f"{_listing(by_scheme['http'])} over HTTP, and one server speaks one scheme: "
                f"run 'sheepdog serve --scheme https' and 'sheepdog serve --scheme http'")
        scheme = next(iter(by_scheme))
    for other, left_out in by_scheme.items():
        if other != scheme:
            log.warning("not serving %s, whose workers call back over %s: serve them with "
                        "'sheepdog serve --scheme %s'", _listing(left_out), other.upper(), other)
    served = by_scheme.get(scheme, [])
    if port is None:
        fixed = sorted({configs[request_id].get("port") or 0 for request_id in served} - {0})
        if not fixed:
            raise CommandError(
                f"no port was fixed in the config of {_listing(served or request_ids)}: give "
                f"the one their workers call back on with --port (it is in the job file's url)")
        if len(fixed) > 1:
            raise CommandError(
                f"the config of {_listing(served)} fixed ports {', '.join(map(str, fixed))}: "
                f"choose one with --port, and serve the others with another command")
        port = fixed[0]
        unfixed = [request_id for request_id in served if configs[request_id].get("port") != port]
        if unfixed:
            log.warning("no port was fixed in the config of %s: their workers may call back "
                        "on another port than %s", _listing(unfixed), port)
    limits = [configs[request_id]["max_body_bytes"] for request_id in served
              if isinstance(configs[request_id].get("max_body_bytes"), int)]
    return ServePlan(scheme, port, served, max(limits, default=DEFAULT_MAX_BODY_BYTES))


def _serve(arguments: argparse.Namespace) -> int:
    storage = Storage(arguments.dbfile)
    try:
        plan = plan_serving(storage, arguments.request_ids, arguments.scheme, arguments.port)
    except CommandError as error:
        print(f"sheepdog: {error}", file=sys.stderr)
        return 2
    if plan.request_ids:
        log.info("serving %s over %s", _listing(plan.request_ids), plan.scheme.upper())
    server = Server(storage, port=plan.port, bind=arguments.bind,
                    max_body_bytes=plan.max_body_bytes, use_tls=plan.scheme == "https")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def _status(arguments: argparse.Namespace) -> int:
    try:
        progress = _existing_storage(arguments.dbfile).progress(arguments.request_id)
    except KeyError as error:
        raise CommandError(error.args[0]) from None
    print(describe(progress, elapsed=0))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    arguments = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="sheepdog: %(message)s")
    if arguments.command == "serve":
        return _serve(arguments)
    try:
        return {"status": _status, "logs": _logs,
                "dashboard": _dashboard}[arguments.command](arguments)
    except CommandError as error:
        print(f"sheepdog: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
