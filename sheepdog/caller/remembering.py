"""What the ``cache`` config key does to a new request, between storing its tasks and
submitting its job.

With ``cache`` on (``True`` or ``"refresh"``) the computation key
(``fingerprint.py``) of each task that is computed is stored with it. With
``True``, a task whose key an earlier success in the same database has, and
whose stored result loads in this process, gets that result at once, as
done, and counts as remembered;
only the others are left for the job, and a request with nothing left
submits none. With ``"refresh"`` every task is computed, and its result
becomes the one that later requests reuse. Failed, lost and cancelled tasks
have no result, so they are never reused.

The submission code calls :func:`function_key` where it has the function and
:func:`recall` before the request is stored, which stores what it recalled
with the request's tasks; both do nothing with the cache off. The results
recalled are loaded once, to check that they load here, and the request
hands them out from there (a map of remembered tasks loads nothing twice).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, NamedTuple, Optional, Sequence

from ..config import CACHE_REFRESH, Config
from ..storage import Storage
from ..storage.memo import Computation
from ..storage.payloads import payload_bytes
from ..wire import serialisation
from ..wire.protocol import Buffer
from . import fingerprint

log = logging.getLogger(__name__)


def function_key(config: Config, function: Any, namespace: Optional[Mapping[str, Any]]
                 ) -> Optional[bytes]:
    """The function's part of its tasks' keys, or None when nothing is to be remembered:
    the cache is off, or the key cannot be made (then every task is computed, and a
    warning says why)."""
    if not config.cache:
        return None
    try:
        return fingerprint.function_key(function, namespace)
    except fingerprint.FingerprintError as error:
        log.warning("the results of %s are not remembered (config key 'cache'): what it "
                    "computes cannot be read (%s); every task is computed",
                    getattr(function, "__qualname__", repr(function)), error)
        return None


class Recalled(NamedTuple):
    """What the cache gives a new request: what to store with it, and the results
    given to some of its tasks, loaded (task index -> result)."""

    computation: Computation
    results: dict[int, Any]


def recall(storage: Storage, config: Config, function_digest: Optional[bytes],
           arguments: Sequence[Any]) -> Optional[Recalled]:
    """The key of each task of a new request and, with ``cache: true``, the results of
    the tasks computed before that load here; None with the cache off."""
    if function_digest is None or not arguments:
        return None
    keys = fingerprint.task_keys(function_digest, arguments)
    earlier = ([] if config.cache == CACHE_REFRESH
               else storage.earlier_results(function_digest, keys))
    payloads: list[Optional[Buffer]] = []
    missing: dict[int, str] = {}
    for position, found in enumerate(earlier):
        try:
            payloads.append(payload_bytes(found.result))
        except OSError as error:  # its file went missing
            payloads.append(None)
            missing[position] = str(error)
    values, reasons = serialisation.load_many(payloads)
    chosen, results = [], {}
    for position, (found, value) in enumerate(zip(earlier, values)):
        reason = missing.get(position) or reasons.get(position)
        if reason is None:
            chosen.append(found)
            results[found.task] = value
        else:
            log.info("a task is computed again: the remembered result of request %s task %s "
                     "cannot be loaded here (%s)", found.source_request, found.source_index,
                     reason)
    return Recalled(Computation(function_digest, keys, chosen), results)
