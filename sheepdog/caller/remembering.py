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
:func:`recall` once the request is stored; both do nothing with the cache off.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional, Sequence

from ..config import CACHE_REFRESH, Config
from ..storage import Storage
from ..storage.memo import EarlierResult
from ..storage.payloads import payload_bytes
from ..wire import serialisation
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


def recall(storage: Storage, request_id: int, config: Config, function_digest: Optional[bytes],
           arguments: Sequence[Any]) -> int:
    """Store the key of each task of a new request and, with ``cache: true``, give the
    tasks computed before their results; how many were given one."""
    if function_digest is None or not arguments:
        return 0
    keys = fingerprint.task_keys(function_digest, arguments)
    earlier = ([] if config.cache == CACHE_REFRESH
               else storage.earlier_results(function_digest, keys))
    remembered = storage.remember(request_id, function_digest, keys,
                                  [found for found in earlier if _loads(request_id, found)])
    log.info("request %s: %d of %d tasks remembered (config key 'cache')", request_id,
             remembered, len(arguments))
    return remembered


def _loads(request_id: int, found: EarlierResult) -> bool:
    """Whether the earlier result loads here; one that does not is computed again."""
    try:
        loaded, why = serialisation.load_or_describe(payload_bytes(found.result))
    except OSError as error:  # its file went missing
        loaded, why = False, str(error)
    if not loaded:
        log.info("request %s: task %s is computed again: the remembered result of request %s "
                 "task %s cannot be loaded here (%s)", request_id, found.task,
                 found.source_request, found.source_index, why)
    return loaded
