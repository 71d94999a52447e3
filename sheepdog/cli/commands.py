"""The ``sheepdog`` command: look at, collect, cancel and serve requests in a database.

Each subcommand is one small function below, ``_<name>(arguments, session)``,
that returns the exit code; :func:`main` builds the parser, resolves
``--dbfile`` and turns a :class:`CommandError` (or a database it cannot use, a
:class:`~sheepdog.storage.StorageError`) into a message and exit code 2.
The help text is plain text (see :func:`help_epilog`), not the
reStructuredText of the docs. No command creates a database: a missing
dbfile is an error that names it. The reading commands (all but ``cancel``,
``serve``, ``config``, ``rm`` and ``prune``) open it read-only and change nothing, not even an
older schema, which only a writer brings up to date. How ``serve`` picks its
scheme and port is ``serving.py``'s; ``dashboard`` serves the live dashboard's
page (``dashboard/``); ``script`` lives in ``script.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import textwrap
import time
from typing import Any, Callable, Optional, Sequence

from .. import __version__, userconfig
from ..caller.progress import describe
from ..caller.request import Request
from ..caller.session import Session
from ..config import DEFAULT_DASHBOARD, Config, parse_address, resolve_with_sources
from ..server import Server
from ..storage import STREAMS, Progress, Storage, StorageError
from ..storage.states import CANCELLED, DONE, FAILED, LOST, PENDING, RUNNING
from ..storage.summaries import RequestSummary, TaskLog
from . import housekeeping, records, script
from .records import age  # noqa: F401 - named here before records held it
from .serving import CommandError, listing, plan_serving

log = logging.getLogger("sheepdog")

#: Exit codes of the commands about one request: whether it succeeded.
EXIT_DONE, EXIT_UNSUCCESSFUL, EXIT_USAGE, EXIT_RUNNING = 0, 1, 2, 3
#: The bounds of ``status --watch --interval``.
MIN_WATCH_SECONDS, MAX_WATCH_SECONDS = 0.1, 60.0


def help_epilog() -> str:
    """Where the database comes from, and the exit codes: the end of every help text."""
    return f"""\
The database is --dbfile, else the 'dbfile' of your config (the config file
{userconfig.config_file_path()}, its profile --profile or SHEEPDOG_PROFILE,
or SHEEPDOG_DBFILE), else ./sheepdog.sqlite. 'sheepdog config' shows which.

Exit codes of status, results, errors, logs and cancel (the others exit 0 or 2):
  {EXIT_DONE}  the request has finished and every task is done
  {EXIT_UNSUCCESSFUL}  the request has finished, and some tasks failed, were lost or were cancelled
  {EXIT_USAGE}  the command could not run: a usage error, no such database or request,
     or a config that does not resolve
  {EXIT_RUNNING}  the request is still running: some tasks are pending or running
"""


RESULTS_JSON_HELP = """\
print a JSON array, one item per task in argument order: the result itself when
JSON holds it exactly (null, booleans, numbers, strings, and lists and objects of
these); {"__repr__": "<its repr>"} for any other result (a tuple, a set, an
object); null for a task without a result (see 'sheepdog errors')"""

LIST_JSON_HELP = """\
print {"dbfile": ..., "now": ..., "requests": [...]}: each request's id, function,
module, created, elapsed, state, backend, total, finished and counts (by state,
running and queued apart); see the docs for the schema"""

Command = Callable[[argparse.Namespace, Session], int]


def outcome(progress: Progress) -> int:
    """The exit code that says how a request is doing."""
    if not progress.complete:
        return EXIT_RUNNING
    return EXIT_DONE if progress.done == progress.total else EXIT_UNSUCCESSFUL


def _existing_storage(session: Session, dbfile: str, read_only: bool = True) -> Storage:
    """The database ``dbfile``, which must exist: reading never creates one, nor changes it."""
    try:
        return session.storage(dbfile, create=False, read_only=read_only)
    except FileNotFoundError as error:
        raise CommandError(str(error)) from None


def _progress(storage: Storage, request_id: int) -> Progress:
    try:
        return storage.progress(request_id)
    except KeyError as error:
        raise CommandError(error.args[0]) from None


def _list(arguments: argparse.Namespace, session: Session) -> int:
    storage = _existing_storage(session, arguments.dbfile)
    now = time.time()
    summaries = records.chosen(storage.request_summaries(), arguments.running, arguments.failed,
                               arguments.since, arguments.last, now)
    sizes = storage.request_sizes([summary.request_id for summary in summaries])
    if arguments.json:
        print(json.dumps({"dbfile": storage.dbfile, "now": now, "requests": [
            records.request_record(summary, now, sizes.get(summary.request_id, 0))
            for summary in summaries]}, indent=2))
    elif not summaries:
        filtered = (arguments.running or arguments.failed or arguments.since is not None
                    or arguments.last is not None)
        print(f"no requests in {storage.dbfile}{' that the filters keep' if filtered else ''}")
    else:
        print("\n".join(records.table(summaries, now, sizes)))
    return EXIT_DONE


def _summary(storage: Storage, request_id: int) -> RequestSummary:
    summaries = storage.request_summaries(request_id)
    if not summaries:
        raise CommandError(f"request {request_id} is not in {storage.dbfile}")
    return summaries[0]


def _status(arguments: argparse.Namespace, session: Session) -> int:
    storage = _existing_storage(session, arguments.dbfile)
    progress = _progress(storage, arguments.request_id)
    if arguments.watch:
        return _watch(storage, arguments.request_id, arguments.interval, progress)
    summary, now = _summary(storage, arguments.request_id), time.time()
    if arguments.json:
        size = storage.request_sizes([arguments.request_id]).get(arguments.request_id, 0)
        print(json.dumps(records.request_record(summary, now, size), indent=2))
    else:
        print(describe(progress, elapsed=records.elapsed(summary, now)))
    return outcome(progress)


def _watch(storage: Storage, request_id: int, interval: float, progress: Progress) -> int:
    """``status --watch``: redraw the status every ``interval`` seconds (within bounds)
    until the request ends, or Ctrl-C; the exit code of ``status`` then."""
    interval = min(max(interval, MIN_WATCH_SECONDS), MAX_WATCH_SECONDS)
    redraw = sys.stdout.isatty()
    shown = ""
    try:
        while True:
            summary = _summary(storage, request_id)
            text = describe(progress, elapsed=records.elapsed(summary, time.time()))
            if redraw:  # one line, redrawn in place
                print("\r" + text.ljust(len(shown)), end="\n" if progress.complete else "",
                      flush=True)
            elif text != shown or progress.complete:  # a log: a line when it changes
                print(text, flush=True)
            shown = text
            if progress.complete:
                return outcome(progress)
            time.sleep(interval)
            progress = _progress(storage, request_id)
    except KeyboardInterrupt:
        if redraw:
            print()
        return outcome(progress)


#: Types whose every value JSON holds exactly (a float only when finite).
_JSON_EXACT = (str, int, bool, type(None))


def json_value(value: Any) -> Any:
    """``value`` itself when JSON holds it exactly, else ``{"__repr__": repr(value)}``."""
    kind = type(value)
    if kind in _JSON_EXACT or (kind is float and math.isfinite(value)):
        return value  # the common case, without a round trip through JSON
    try:
        if json.loads(json.dumps(value, allow_nan=False)) == value:
            return value
    except (TypeError, ValueError):
        pass
    return {"__repr__": repr(value)}


def json_text(values: list[Any]) -> str:
    """``values`` as the items of a JSON list (without its brackets), each as
    :func:`json_value` gives it; in one call when all are plain numbers and strings."""
    if set(map(type, values)) <= _JSON_PLAIN:
        try:
            return json.dumps(values, allow_nan=False)[1:-1]
        except ValueError:  # a float that is not finite
            pass
    return json.dumps([json_value(value) for value in values])[1:-1]


#: Types that JSON holds exactly except a float that is not finite.
_JSON_PLAIN = {*_JSON_EXACT, float}


def _results(arguments: argparse.Namespace, session: Session) -> int:
    storage = _existing_storage(session, arguments.dbfile)
    progress = _progress(storage, arguments.request_id)
    unloadable = 0
    separator = ", " if arguments.json else "\n"
    written = False
    if arguments.json:
        sys.stdout.write("[")
    for chunk in storage.loaded_results(arguments.request_id):
        for index, reason in chunk.unloadable.items():
            print(f"sheepdog: task {index}: its result cannot be loaded in this process: "
                  f"{reason}", file=sys.stderr)
        unloadable += len(chunk.unloadable)
        text = (json_text(chunk.values) if arguments.json
                else separator.join(map(repr, chunk.values)))
        sys.stdout.write((separator if written else "") + text)
        written = True
    sys.stdout.write("]\n" if arguments.json else "\n" if written else "")
    without = progress.total - progress.done + unloadable
    if without:
        print(f"sheepdog: {without} of {progress.total} tasks have no result here; see "
              f"'sheepdog errors {arguments.request_id}'", file=sys.stderr)
    code = outcome(progress)
    return EXIT_UNSUCCESSFUL if unloadable and code == EXIT_DONE else code


def _errors(arguments: argparse.Namespace, session: Session) -> int:
    if arguments.json:
        storage = _existing_storage(session, arguments.dbfile)
        entries = _task_logs(storage, arguments.request_id, None)
        reprs = storage.argument_reprs(arguments.request_id, [entry.task for entry in entries])
        print(json.dumps({"request": arguments.request_id, "errors": [
            records.log_record(entry, reprs.get(entry.task, "")) for entry in entries]},
            indent=2))
        return outcome(storage.progress(arguments.request_id))
    request = _request(session, arguments)
    for task_arguments, error in request.errors():
        print(f"=== arguments {task_arguments!r} ===")
        print(error.rstrip())
    return outcome(request.progress())


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


def _logs(arguments: argparse.Namespace, session: Session) -> int:
    storage = _existing_storage(session, arguments.dbfile)
    entries = _task_logs(storage, arguments.request_id, arguments.index)
    if arguments.json:
        print(json.dumps({"request": arguments.request_id,
                          "tasks": [records.log_record(entry) for entry in entries]}, indent=2))
    elif not entries:
        print(f"request {arguments.request_id}: no task failed, was lost or was cancelled")
    else:
        for entry in entries:
            print(format_log(entry))
    return outcome(storage.progress(arguments.request_id))


def _task_logs(storage: Storage, request_id: int, index: Optional[int]) -> list[TaskLog]:
    try:
        return storage.task_logs(request_id, index)
    except KeyError as error:
        raise CommandError(error.args[0]) from None


def _request(session: Session, arguments: argparse.Namespace, read_only: bool = True
             ) -> Request:
    """The handle of the request the command names, in a database that must exist."""
    _existing_storage(session, arguments.dbfile, read_only)
    try:
        return session.request(arguments.request_id, arguments.dbfile, read_only=read_only)
    except KeyError as error:
        raise CommandError(error.args[0]) from None


def _cancel(arguments: argparse.Namespace, session: Session) -> int:
    request = _request(session, arguments, read_only=False)
    cancelled = request.cancel()
    print(f"request {request.id}: {cancelled} unfinished tasks cancelled")
    return outcome(request.progress())


def _serve(arguments: argparse.Namespace, session: Session) -> int:
    storage = _existing_storage(session, arguments.dbfile, read_only=False)
    plan = plan_serving(storage, arguments.request_ids, arguments.scheme, arguments.port)
    if plan.request_ids:
        log.info("serving %s over %s", listing(plan.request_ids), plan.scheme.upper())
    server = Server(storage, port=plan.port, bind=arguments.bind,
                    max_body_bytes=plan.max_body_bytes, use_tls=plan.scheme == "https")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return EXIT_DONE


def _config(arguments: argparse.Namespace, session: Session) -> int:
    conf: dict[str, Any] = {"profile": arguments.profile}
    if arguments.given_dbfile:
        conf["dbfile"] = arguments.given_dbfile
    config, sources = _resolved(conf)
    path = userconfig.config_file_path()
    profile, _ = userconfig.chosen_profile(arguments.profile)
    chosen_by = "--profile" if arguments.profile else userconfig.PROFILE_VARIABLE
    values = {key: list(value) if isinstance(value, tuple) else value
              for key, value in dataclasses.asdict(config).items()}
    if arguments.json:
        print(json.dumps({"file": str(path), "file_exists": path.exists(), "profile": profile,
                          "settings": {key: {"value": value, "source": sources[key]}
                                       for key, value in values.items()}}, indent=2))
        return EXIT_DONE
    print(f"config file: {path}{'' if path.exists() else ' (there is none)'}")
    print(f"profile: {profile} (from {chosen_by})" if profile else "profile: none")
    shown = {key: "(unset)" if value is None else json.dumps(value)
             for key, value in values.items()}
    key_width = max(map(len, shown))
    source_width = max(map(len, sources.values()))
    for key, text in shown.items():
        print(f"{key.ljust(key_width)}  {sources[key].ljust(source_width)}  {text}")
    return EXIT_DONE


def _dashboard(arguments: argparse.Namespace, session: Session) -> int:
    try:
        parse_address(arguments.address, "--address")
    except ValueError as error:
        raise CommandError(str(error)) from None
    from ..dashboard import run_dashboard  # Flask, only for this command

    run_dashboard(_existing_storage(session, arguments.dbfile),
                  open_browser=not arguments.no_browser, address=arguments.address)
    return EXIT_DONE


def _parser() -> argparse.ArgumentParser:
    """The command line, declared in one place: long, as argparse declarations are, so
    that every subcommand's options can be read together."""
    parser = argparse.ArgumentParser(
        prog="sheepdog", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Look at, collect, cancel and serve sheepdog requests.",
        epilog=help_epilog())
    parser.add_argument("--version", action="version", version=f"sheepdog {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    for options in (parser, common):  # before the command or after it
        # SUPPRESS: the subcommand's unset option must not hide the one given before it.
        options.add_argument("--dbfile", dest="given_dbfile", metavar="DBFILE",
                             default=argparse.SUPPRESS,
                             help="the sheepdog database (default: from your config)")
        options.add_argument("--profile", default=argparse.SUPPRESS,
                             help="the profile of your config file to use "
                                  "(default: SHEEPDOG_PROFILE)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Command, summary: str, description: str = "") -> Any:
        subparser = commands.add_parser(
            name, parents=[common], help=summary, description=textwrap.fill(description or summary),
            epilog=help_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
        subparser.set_defaults(run=run)
        return subparser

    def request_command(name: str, run: Command, summary: str, description: str = "") -> Any:
        subparser = command(name, run, summary, description)
        subparser.add_argument("request_id", type=int, metavar="RID", help="the request's id")
        return subparser

    listed = command("list", _list, "list the requests: their function, age, state and how "
                                    "many tasks are in each state")
    listed.add_argument("--running", action="store_true",
                        help="only requests with tasks still to finish")
    listed.add_argument("--failed", action="store_true",
                        help="only requests with tasks that failed or were lost")
    listed.add_argument("--since", type=_duration, metavar="DURATION",
                        help="only requests made within DURATION (30m, 2h, 1d)")
    listed.add_argument("--last", type=_positive, metavar="N",
                        help="only the N newest requests (after the other filters)")
    listed.add_argument("--json", action="store_true", help=LIST_JSON_HELP)
    status = request_command("status", _status, "show how far a request has come")
    status.add_argument("--json", action="store_true", help="print the request as a JSON object "
                                                            "(the items of 'list --json')")
    status.add_argument("--watch", action="store_true",
                        help="redraw the status until the request ends (or Ctrl-C); the exit "
                             "code is the status's then")
    status.add_argument("--interval", type=float, default=2.0, metavar="SECONDS",
                        help=f"seconds between redraws of --watch (default: %(default)s; "
                             f"{MIN_WATCH_SECONDS} to {MAX_WATCH_SECONDS:.0f})")
    results = request_command(
        "results", _results, "print a request's results in argument order",
        "Print a request's results in argument order, one repr() a line; None for a task "
        "without a result.")
    results.add_argument("--json", action="store_true", help=RESULTS_JSON_HELP)
    errors = request_command("errors", _errors, "print the errors of the tasks that failed, "
                                                "were lost or were cancelled, with their arguments")
    errors.add_argument("--json", action="store_true",
                        help='print {"request": RID, "errors": [...]}: each task\'s index, '
                             'state, arguments (a repr, cut short), error and output')
    logs = request_command(
        "logs", _logs, "show the errors and output of a request's tasks",
        "Show what tasks left behind: the error and the tail of the stdout and stderr of "
        "task INDEX, or of every task that failed, was lost or was cancelled.")
    logs.add_argument("index", type=int, nargs="?", metavar="INDEX",
                      help="the task (1-based argument index; default: every task that "
                           "failed, was lost or was cancelled)")
    logs.add_argument("--json", action="store_true",
                      help='print {"request": RID, "tasks": [...]}: each task\'s index, state, '
                           'error and output')
    request_command("cancel", _cancel, "remove a request's jobs from the scheduler and mark "
                                       "its unfinished tasks cancelled")
    housekeeping.add_commands(command)
    serve = command(
        "serve", _serve, "serve results for requests in a database",
        "Restart the callback server for requests already in the database (after the "
        "process that submitted them ended or crashed), so that tasks still running can "
        "deliver their results. It serves the named requests, or else those with tasks "
        "still open, over the scheme and on the port their workers call back on, unless "
        "--scheme and --port say otherwise. One server speaks one scheme: requests that "
        "need both are served by two commands, one --scheme each.")
    serve.add_argument("request_ids", type=int, nargs="*", metavar="RID",
                       help="the requests to serve (default: those with tasks still open)")
    serve.add_argument("--port", type=int,
                       help="the port the workers call back on (default: the one the database "
                            "recorded for the requests)")
    serve.add_argument("--scheme", choices=("http", "https"),
                       help="serve HTTP or HTTPS (default: what the requests' workers use)")
    serve.add_argument("--bind", default="0.0.0.0", help="address to listen on")
    config = command("config", _config, "print the resolved config and where each value "
                                        "came from")
    config.add_argument("--json", action="store_true", help="print it as JSON")
    dashboard = command(
        "dashboard", _dashboard, "serve the live dashboard of every request in a database",
        "Serve the live dashboard of every request in the database until Ctrl-C, and open "
        "it in a browser. Only holders of the printed link's token can read it.")
    dashboard.add_argument("--address", default=DEFAULT_DASHBOARD,
                           help="HOST:PORT to listen on (default: %(default)s, this machine "
                                "only, a free port)")
    dashboard.add_argument("--no-browser", action="store_true",
                           help="print the link without opening a browser")
    script.add_command(command)
    return parser


def _resolved(conf: dict[str, Any]) -> tuple[Config, dict[str, str]]:
    """The config and its sources; a config file or variable that is wrong stops the command."""
    try:
        return resolve_with_sources(conf)
    except (TypeError, ValueError) as error:
        raise CommandError(str(error)) from None


def _dbfile(arguments: argparse.Namespace) -> str:
    """``--dbfile``, else the one the config file or environment sets, else the default."""
    if arguments.given_dbfile is not None:
        dbfile, source = str(arguments.given_dbfile), "--dbfile"
    else:
        config, sources = _resolved({"profile": arguments.profile})
        dbfile, source = config.dbfile, sources["dbfile"]
    if not dbfile.strip():
        raise CommandError(f"the dbfile is empty (from {source}): name a sheepdog database, "
                           f"or leave it unset for ./sheepdog.sqlite")
    return dbfile


def _duration(text: str) -> float:
    try:
        return records.duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return int(text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    arguments = _parser().parse_args(argv)
    arguments.given_dbfile = getattr(arguments, "given_dbfile", None)
    arguments.profile = getattr(arguments, "profile", None)
    logging.basicConfig(level=logging.INFO, format="sheepdog: %(message)s")
    try:
        if arguments.run is not _config:  # config shows the dbfile, even an empty one
            arguments.dbfile = _dbfile(arguments)
        with Session() as session:
            return int(arguments.run(arguments, session))
    except (CommandError, StorageError) as error:
        print(f"sheepdog: {error}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # the reader left (``sheepdog results RID | head``): no error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # for the exit's flush
        return 128 + signal.SIGPIPE  # as a program the signal ended


if __name__ == "__main__":
    sys.exit(main())
