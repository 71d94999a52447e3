"""The original Sheepdog functions (map, map_async, get_results, get_errors, wait,
cancel), and as_completed.

Each is a thin wrapper over this process's default :class:`~sheepdog.caller.session.Session`
(see :func:`default_session`), so that scripts written for the original
library run as they are; new code may hold a ``Session`` and ``Request``
handles instead. Requests are named by id and database file, and every
function works from any process, not only the one that submitted the request.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Iterable, Iterator, Mapping, NoReturn, Optional

from .caller import completion, outcomes
from .config import resolve
from .caller.request import Request
from .caller.session import RequestInterrupted, Session

_default_session = Session()


def default_session() -> Session:
    """The session the functions of this module use."""
    return _default_session


def _request(request_id: int, dbfile: Optional[str]) -> Request:
    """The handle of a stored request; without ``dbfile``, in the one your settings name
    (config file or ``SHEEPDOG_DBFILE``), else ``./sheepdog.sqlite``."""
    return _default_session.request(request_id, dbfile or resolve(None).dbfile)


def map_async(
    f: Callable[..., Any],
    args: Iterable[Any],
    config: Optional[Mapping[str, Any]] = None,
    ns: Optional[Mapping[str, Any]] = None,
) -> int:
    """Submit ``f(*a)`` for every ``a`` in ``args``; return the request id at once.

    The checks and errors are those of :meth:`Session.submit`.
    """
    return _default_session.submit(f, args, config, ns).id


def wait(
    request_id: int,
    dbfile: Optional[str] = None,
    verbose: bool = False,
    timeout: Optional[float] = None,
) -> None:
    """Block until every task of the request has finished (done, failed, lost or cancelled)."""
    _request(request_id, dbfile).wait(timeout=timeout, verbose=verbose)


def get_results(
    request_id: int,
    dbfile: Optional[str] = None,
    block: bool = True,
    verbose: bool = False,
    timeout: Optional[float] = None,
) -> list[tuple[tuple[Any, ...], Any]]:
    """``[(args, result), ...]`` in argument order; ``None`` where there is no result.

    With ``block`` it first waits until every task has finished.
    """
    request = _request(request_id, dbfile)
    if block:
        request.wait(timeout=timeout, verbose=verbose)
    return request.results()


def as_completed(
    request_id: int,
    dbfile: Optional[str] = None,
    timeout: Optional[float] = None,
    errors: str = "raise",
) -> Iterator[tuple[int, Any]]:
    """``(index, result)`` for each task of the request as it finishes, in finishing order.

    ``index`` is the task's 1-based position in ``args`` (as the CLI numbers
    tasks). A task that raised, was lost or was cancelled raises
    :class:`~sheepdog.TaskError`, :class:`~sheepdog.TaskLost` or
    ``concurrent.futures.CancelledError`` when its turn comes, which ends the
    iteration; with ``errors="yield"`` that exception is yielded as the
    task's result instead, and the iteration goes on. Each task is yielded
    once, when its last attempt has ended (see ``retries``). ``timeout``
    bounds the whole iteration (``TimeoutError``). Works from any process,
    and watches the scheduler while it waits, as :func:`wait` does.
    """
    return completion.as_completed(_request(request_id, dbfile), timeout, errors)


def get_errors(request_id: int, dbfile: Optional[str] = None) -> list[tuple[tuple[Any, ...], str]]:
    """``[(args, error text), ...]`` for tasks that raised, were lost or were cancelled."""
    return _request(request_id, dbfile).errors()


def cancel(request_id: int, dbfile: Optional[str] = None) -> int:
    """Remove the request's jobs from the scheduler; return how many tasks were cancelled.

    Works from any process: the request's config is kept in ``dbfile``.
    """
    return _request(request_id, dbfile).cancel()


class Interrupted(KeyboardInterrupt):
    """Ctrl-C in :func:`map`, after sheepdog said what became of the request's tasks.

    A ``KeyboardInterrupt`` still, for code that catches one; left uncaught in
    a script, it ends with its one line instead of a traceback through the
    wait loop (see :func:`_one_line_for_interruptions`).
    """


def _after_interrupt(request: Request) -> None:
    """Ctrl-C in map: cancel the unfinished tasks, asking first when someone can answer."""
    progress = request.progress()
    unfinished = progress.total - progress.finished
    if not unfinished:
        return
    dbfile = request.storage.dbfile
    later = f"sheepdog.get_results({request.id}, {dbfile!r})"
    if request.backend.outlives_caller:
        run_on = f"leave them running on the cluster; collect them later with {later}"
    elif _interactive_session():
        run_on = (f"leave them running in this Python session (they end when it exits); "
                  f"collect them with {later}")
    else:
        run_on = (f"leave them running, but only while this script runs, and it ends now "
                  f"unless it catches KeyboardInterrupt; a later {later} starts them again")
    answer = "y"
    if sys.stdin is not None and sys.stdin.isatty():
        print(f"\nsheepdog: interrupted. The {unfinished} unfinished tasks of request "
              f"{request.id} keep running while this question waits.\n"
              f"  y: cancel them.  n: {run_on}.", file=sys.stderr)
        try:
            answer = input(f"sheepdog: cancel the {unfinished} unfinished tasks of request "
                           f"{request.id}? [Y/n] ").strip().lower() or "y"
        except (EOFError, KeyboardInterrupt):
            answer = "y"
    if answer.startswith("n"):
        if request.backend.outlives_caller:
            print(f"sheepdog: request {request.id} keeps running on the cluster; collect it "
                  f"with {later}", file=sys.stderr)
        else:
            print(f"sheepdog: request {request.id} keeps running while this Python process "
                  f"lives; its tasks run here and end when it exits. Collect it with "
                  f"{later}", file=sys.stderr)
        return
    cancelled = request.cancel()
    jobs = ", ".join(job.job_id for job in request.storage.jobs(request.id))
    print(f"sheepdog: cancelled request {request.id}: job {jobs} removed from the scheduler, "
          f"{cancelled} unfinished tasks marked cancelled", file=sys.stderr)


def _interrupted(request: Request) -> NoReturn:
    """Ctrl-C in :func:`map` while ``request`` runs: say what becomes of its tasks, and raise
    :class:`Interrupted`."""
    _after_interrupt(request)
    _one_line_for_interruptions()
    raise Interrupted(f"sheepdog.map of request {request.id} interrupted") from None


def _interactive_session() -> bool:
    """Whether Python runs a prompt (the REPL, ``python -i``, IPython or Jupyter), where
    the process lives on after a Ctrl-C, rather than a script that it ends."""
    return hasattr(sys, "ps1") or bool(sys.flags.interactive) or "IPython" in sys.modules


def _one_line_for_interruptions() -> None:
    """Make an uncaught :class:`Interrupted` print its one line, and any other exception
    what it printed before; installed once, on the first Ctrl-C in :func:`map`."""
    previous = sys.excepthook
    if getattr(previous, "sheepdog_one_line", False):
        return

    def excepthook(kind: type[BaseException], error: BaseException, trace: Any) -> None:
        if isinstance(error, Interrupted):
            print(f"KeyboardInterrupt: {error}", file=sys.stderr)
        else:
            previous(kind, error, trace)

    excepthook.sheepdog_one_line = True  # type: ignore[attr-defined]
    sys.excepthook = excepthook


def map(  # noqa: A001 - the original API's name
    f: Callable[..., Any],
    args: Iterable[Any],
    config: Optional[Mapping[str, Any]] = None,
    ns: Optional[Mapping[str, Any]] = None,
    verbose: bool = True,
    errors: str = "none",
) -> list[Any]:
    """``[f(*a) for a in args]``, run on the cluster; ``None`` where a task failed.

    Returns once every task has finished. With ``errors="raise"`` a failed
    task raises instead, as the built-in ``map`` would: the exception of the
    first task in argument order that has no result (the task's own
    exception rebuilt here, or :class:`~sheepdog.TaskError`,
    :class:`~sheepdog.TaskLost`, ``CancelledError``), with a note that names
    the request, whose other results ``get_results`` still reads. The
    default, ``errors="none"``, gives ``None`` for such a task, as the
    original library did. Ctrl-C cancels the request's remaining tasks
    (asking first when a terminal can answer, and saying what each answer
    means there), says so, and raises :class:`Interrupted`, a
    ``KeyboardInterrupt`` that ends an uncaught script with one line.
    """
    if errors not in ("none", "raise"):
        raise ValueError(f"errors must be 'none' or 'raise', not {errors!r}")
    try:
        request = _default_session.submit(f, args, config, ns)
    except RequestInterrupted as interrupted:  # as its job was submitted
        _interrupted(interrupted.request)
    try:
        request.wait(verbose=verbose, link=_default_session.dashboard_link(request))
    except KeyboardInterrupt:
        _interrupted(request)
    results = request.values()
    if errors == "raise":
        failure = outcomes.first_failure(request)
        if failure is not None:
            raise failure
    progress = request.progress()
    failures = progress.total - progress.done
    if verbose and failures:
        print(f"sheepdog: {failures} of {progress.total} tasks failed; see "
              f"sheepdog.get_errors({request.id}, {request.storage.dbfile!r})", file=sys.stderr)
    return results


map_sync = map
