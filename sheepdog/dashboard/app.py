"""The live dashboard's Flask app: one page and a JSON API over one database, for the caller alone.

``map`` and ``map_async`` start it beside the callback server (see
``Session.dashboard``) and log its link; ``sheepdog dashboard`` serves it for
an existing database (:func:`~sheepdog.dashboard.server.run_dashboard`). The
page (``page.html``) polls the JSON API and redraws itself, so it stays live
without a reload.

Who may read it: the database holds every task's arguments, errors and
output, so the page is the caller's alone. It listens on a socket of its own
(loopback unless the ``dashboard`` config key says otherwise), never on the
workers' port, and every route, the JSON API included, wants the session's
token: a random string made here, not any request's worker key, so a
worker's signature opens nothing. The token travels in the link's query
(``?token=``) or an ``Authorization: Bearer`` header, and is compared in
constant time. No cookie is set, so there is no ambient credential for
another page to ride on, and nothing is sent to other ports of the same
host. A request whose ``Host`` header names none of the dashboard's own
addresses is refused before the token is looked at, so that a page that
rebinds its own name to this machine's address (DNS rebinding) reaches
nothing. Every answer says ``Cache-Control: no-store``; the page runs only its
own script (a nonce in its ``Content-Security-Policy``) and puts text from
the database into the page as text, never as markup, since a task's error is
whatever the task raised.

``server.py`` hosts it on Tornado's ``WSGIContainer``, on an I/O loop thread
of its own with a few threads for the reads, so the workers' callback loop
never waits for it.
"""

from __future__ import annotations

import hmac
import importlib.resources
import math
import os
import re
import secrets
import time
from typing import Any, Optional, Sequence, Union

from flask import Flask, Response, abort, jsonify, request

from ..storage.states import CANCELLED, DONE, FAILED, LOST, PENDING, RUNNING
from ..storage import Storage
from ..storage.connection import MAX_INTEGER
from ..storage.summaries import RequestSummary, TaskSummary
from .charts import Charts

#: The states in the order the page shows them.
STATES = (PENDING, RUNNING, DONE, FAILED, LOST, CANCELLED)
#: Bars of the duration histogram, and buckets of the throughput chart.
HISTOGRAM_BINS = 20
THROUGHPUT_BUCKETS = 40
#: The shortest span of the throughput chart's buckets.
MIN_BUCKET_SECONDS = 0.1
#: The most failures one answer carries (with their errors and output tails).
MAX_FAILURES = 50
#: The most tasks one page of ``/tasks`` holds.
MAX_TASKS_PAGE = 5000
#: The most failed tasks whose errors are grouped by what they raised.
MAX_GROUPED = 10_000
#: What a message's pattern hides: addresses, numbers and quoted text, which vary per task.
_VARYING = re.compile(r"0x[0-9a-fA-F]+|[-+]?\b\d+(?:\.\d+)?(?:e[-+]?\d+)?\b|'[^']*'|\"[^\"]*\"")
#: The last line of a traceback: a class name (its last part capitalised) and the message.
_EXCEPTION_LINE = re.compile(r"(?P<type>(?:[A-Za-z_]\w*\.)*[A-Z]\w*)(?::\s*(?P<message>.*))?")


def error_kind(error: str) -> tuple[str, str]:
    """(exception type, message pattern) of an error text: its last line, with what varies
    from task to task (numbers, quoted text, addresses) as ``…``."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    last = lines[-1] if lines else "(no error text)"
    match = _EXCEPTION_LINE.fullmatch(last)
    kind, message = (match["type"], match["message"] or "") if match else ("", last)
    return kind, _VARYING.sub("…", message)[:200]


def failure_groups(tails: Sequence[tuple[int, str]]) -> list[dict[str, Any]]:
    """Failed tasks grouped by exception type and message pattern, the largest group first:
    its count, the type, the pattern, and its first task."""
    groups: dict[tuple[str, str], list[int]] = {}
    for index, tail in tails:
        groups.setdefault(error_kind(tail), []).append(index)
    return [{"count": len(indices), "exception": kind, "pattern": pattern, "first": indices[0]}
            for (kind, pattern), indices in sorted(groups.items(),
                                                   key=lambda item: (-len(item[1]), item[1][0]))]


def eta(summary: RequestSummary, now: float) -> Optional[float]:
    """Seconds until every task has finished at the rate so far; None before any has,
    and 0 once all have."""
    finished = sum(summary.counts.get(state, 0) for state in (DONE, FAILED, LOST, CANCELLED))
    if finished >= summary.n_tasks:
        return 0.0
    if not finished or now <= summary.created:
        return None
    return (summary.n_tasks - finished) * (now - summary.created) / finished


def _request_fields(summary: RequestSummary, now: float) -> dict[str, Any]:
    """What the list and the detail say of a request alike."""
    end = summary.ended if summary.ended is not None else now
    return {"id": summary.request_id, "created": summary.created, "backend": summary.backend,
            "tasks": summary.n_tasks, "counts": summary.counts,
            "function": summary.function_name, "module": summary.function_module,
            "executing": summary.executing, "remembered": summary.remembered,
            "queued": summary.counts.get(RUNNING, 0) - summary.executing,
            "elapsed": max(end - summary.created, 0.0), "eta": eta(summary, now)}


def histogram(values: Sequence[float], bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """Counts of ``values`` in ``bins`` equal bars from 0 to the largest value."""
    top = max(values, default=0.0)
    width = top / bins if top > 0 else 1.0
    counts = [0] * bins
    for value in values:
        counts[min(int(max(value, 0.0) / width), bins - 1)] += 1
    return {"width": width, "counts": counts, "total": len(values)}


def throughput(storage: Storage, summary: RequestSummary, now: float,
               buckets: int = THROUGHPUT_BUCKETS) -> dict[str, Any]:
    """How many tasks finished in each of (at most) ``buckets`` equal spans from the
    request's creation to its last finish (or to ``now``, while tasks are still open)."""
    created = summary.created
    end = summary.ended if summary.ended is not None else now
    width = max((end - created) / buckets, MIN_BUCKET_SECONDS)
    shown = max(min(buckets, math.ceil((end - created) / width)), 1)
    finished = storage.dashboard_finishes(summary.request_id, created, width)
    counts = [finished.get(bucket, 0) for bucket in range(shown)]
    counts[-1] += sum(n for bucket, n in finished.items() if bucket >= shown)
    return {"start": created, "width": width, "counts": counts}


#: The names by which a browser on this machine reaches a loopback dashboard.
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def _host_name(host_header: str) -> str:
    """The name in a ``Host`` header, without its port or IPv6 brackets."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rpartition(":")[0] if host_header.count(":") == 1 else host_header


def create_app(storage: Union[Storage, str, os.PathLike[str]], token: str,
               host_names: frozenset[str] = LOOPBACK_NAMES) -> Flask:
    """The dashboard's Flask app over ``storage``, open to holders of ``token`` only.

    Long because Flask's routes are closures over the app, the storage and the
    token: each route below is short, and reads best beside the others.
    """
    if len(token) < 16:
        raise ValueError("the dashboard token must be at least 16 characters: use new_token()")
    store = storage if isinstance(storage, Storage) else Storage(storage)
    expected = token.encode()
    page = importlib.resources.files(__package__).joinpath("page.html").read_text("utf-8")
    app = Flask("sheepdog.dashboard.app")
    charts = Charts(lambda summary, now: {
        "durations": histogram(store.dashboard_durations(summary.request_id)),
        "throughput": throughput(store, summary, now)})

    @app.before_request
    def require_token() -> Optional[Response]:
        """Every route, unknown ones too, is refused without the token, or when the
        request's ``Host`` is not one of the dashboard's own names."""
        if _host_name(request.headers.get("Host", "")).lower() not in host_names:
            return Response("403 Forbidden: this sheepdog dashboard answers only to its own "
                            "address\n", 403, {"Content-Type": "text/plain; charset=utf-8"})
        scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            offered = request.args.get("token", "")
        if not hmac.compare_digest(offered.encode(), expected):
            return Response("403 Forbidden: this sheepdog dashboard needs the token of the link "
                            "that map logged (or 'sheepdog dashboard' printed)\n", 403,
                            {"Content-Type": "text/plain; charset=utf-8"})
        return None

    @app.after_request
    def private(response: Response) -> Response:
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Content-Security-Policy",
                                    "default-src 'none'; frame-ancestors 'none'")
        return response

    @app.get("/dashboard")
    def dashboard_page() -> Response:
        nonce = secrets.token_urlsafe(16)
        policy = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
                  "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
                  "frame-ancestors 'none'")
        return Response(page.replace("{{nonce}}", nonce), 200,
                        {"Content-Type": "text/html; charset=utf-8",
                         "Content-Security-Policy": policy})

    @app.get("/dashboard/api/requests")
    def requests_list() -> Response:
        now = time.time()
        return jsonify(database=store.dbfile, now=now, states=STATES, requests=[
            _request_fields(summary, now) for summary in store.request_summaries()])

    @app.get("/dashboard/api/requests/<int:request_id>")
    def request_detail(request_id: int) -> Response:
        summary = _summary(store, request_id)
        now = time.time()
        failures = store.dashboard_failures(request_id, MAX_FAILURES)
        arguments = store.argument_reprs(request_id, [failure.task for failure in failures])
        tails = store.error_tails(request_id, MAX_GROUPED)
        return jsonify(
            **_request_fields(summary, now), now=now, **charts.of(summary, now),
            failures=[{"index": failure.task, "state": failure.state,
                       "arguments": arguments.get(failure.task, ""),
                       "error": failure.error or "", "output": failure.output}
                      for failure in failures],
            failure_groups=failure_groups(tails), grouped=len(tails))

    @app.get("/dashboard/api/requests/<int:request_id>/tasks")
    def request_tasks(request_id: int) -> Response:
        summary = _summary(store, request_id)
        offset = max(request.args.get("offset", 0, type=int) or 0, 0)
        if offset > MAX_INTEGER:
            return Response(f"400 Bad Request: offset {offset} is beyond any task: offsets go up "
                            f"to {MAX_INTEGER}\n", 400,
                            {"Content-Type": "text/plain; charset=utf-8"})
        limit = min(max(request.args.get("limit", 1000, type=int) or 1000, 1), MAX_TASKS_PAGE)
        return jsonify(id=request_id, total=summary.n_tasks, offset=offset, limit=limit, tasks=[
            {"index": task.task, "state": task.state, "attempts": task.attempts,
             "started": task.started, "updated": task.updated, "seconds": _seconds(task),
             "began": task.began}
            for task in store.dashboard_tasks(request_id, offset, limit)])

    @app.errorhandler(404)
    def not_found(error: Exception) -> Response:
        return Response("404 Not Found\n", 404, {"Content-Type": "text/plain; charset=utf-8"})

    return app


def _seconds(task: TaskSummary) -> Optional[float]:
    """How long ``f`` ran for a task that reported, as its worker measured it (else from
    its lease to its report), if known."""
    if task.state not in (DONE, FAILED):
        return None
    if task.seconds is not None:
        return task.seconds
    if task.started is None or task.updated is None:
        return None
    return task.updated - task.started


def _summary(storage: Storage, request_id: int) -> RequestSummary:
    """The request's summary, or a 404."""
    summaries = storage.request_summaries(request_id)
    if not summaries:
        abort(404)
    return summaries[0]
