"""What ``sheepdog serve`` serves: which requests, over which scheme, on which port.

A later process serves requests whose workers were told, when the request was
made, a scheme (HTTP or HTTPS, as the request's ``tls`` key said) and a port
(fixed in the request's config, or chosen then; the database records it
either way). One server speaks one scheme and listens on one port, so
requests that need two are served by two commands. This module
reads the requests' stored config and decides, or says what to pass instead.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple, Optional, Sequence

from ..server.callbacks import DEFAULT_MAX_BODY_BYTES
from ..caller.request import recorded_port
from ..storage import Storage

log = logging.getLogger("sheepdog")


class CommandError(Exception):
    """A ``sheepdog`` command cannot go on; the message says why and what to do instead."""


class ServePlan(NamedTuple):
    """What ``sheepdog serve`` serves: over which scheme, on which port, for whom."""

    scheme: str
    port: int
    request_ids: list[int]
    max_body_bytes: int


def listing(request_ids: Sequence[int]) -> str:
    """``request 3`` or ``requests 3, 4``, for messages."""
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
                f"the workers of {listing(by_scheme['https'])} call back over HTTPS, those of "
                f"{listing(by_scheme['http'])} over HTTP, and one server speaks one scheme: "
                f"run 'sheepdog serve --scheme https' and 'sheepdog serve --scheme http'")
        scheme = next(iter(by_scheme))
    for other, left_out in by_scheme.items():
        if other != scheme:
            log.warning("not serving %s, whose workers call back over %s: serve them with "
                        "'sheepdog serve --scheme %s'", listing(left_out), other.upper(), other)
    served = by_scheme.get(scheme, [])
    if port is None:
        port = _workers_port(storage, served or request_ids, configs)
    limits = [configs[request_id]["max_body_bytes"] for request_id in served
              if isinstance(configs[request_id].get("max_body_bytes"), int)]
    return ServePlan(scheme, port, served, max(limits, default=DEFAULT_MAX_BODY_BYTES))


def _workers_port(storage: Storage, request_ids: Sequence[int],
                  configs: dict[int, dict[str, Any]]) -> int:
    """The one port the workers of ``request_ids`` call back on: the one the database
    recorded for each, else the one its config fixed."""
    by_port: dict[int, list[int]] = {}
    unknown = []
    for request_id in request_ids:
        port = recorded_port(storage, request_id) or configs[request_id].get("port")
        if port:
            by_port.setdefault(port, []).append(request_id)
        else:
            unknown.append(request_id)
    if not by_port:
        raise CommandError(
            f"no port is recorded for {listing(unknown)}: give the one their workers call back "
            f"on with --port (it is in the job file's url)")
    if len(by_port) > 1:
        ports = sorted(by_port.items())
        raise CommandError(
            "the workers of " + ", those of ".join(
                f"{listing(ids)} call back on port {port}" for port, ids in ports)
            + ", and one server listens on one port: choose one with --port, as in "
            + " and ".join(f"'sheepdog serve {' '.join(map(str, ids))} --port {port}'"
                           for port, ids in ports))
    (port, _), = by_port.items()
    if unknown:
        log.warning("no port is recorded for %s: their workers may call back on another port "
                    "than %s", listing(unknown), port)
    return port
