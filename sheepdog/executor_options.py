"""``Executor.options(cores=4, memory="8G")``: an executor's submits with other resources.

:class:`ExecutorOptions` shares its :class:`~sheepdog.Executor`'s session,
threads and watcher; only the config of its requests differs, so its tasks
go out in requests (and jobs) of their own, and never share workers with
tasks that asked for other resources. Leaving it (``with``, ``shutdown``)
waits for the futures that its ``submit`` gave, and leaves the executor running.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from concurrent.futures import Future
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Protocol

from .config import Config, restore
from .resources import RESOURCE_KEYS

#: What ``options`` may set: the resources, and the GridEngine keys that translate them.
OPTION_KEYS = (*RESOURCE_KEYS, "pe_name", "gpu_resource")


def with_resources(config: Config, resources: Mapping[str, Any]) -> Config:
    """``config`` with ``resources`` set, checked as the config dict's would be."""
    unknown = sorted(set(resources) - set(OPTION_KEYS))
    if unknown:
        raise TypeError(f"Executor.options takes resources, not {', '.join(map(repr, unknown))}; "
                        f"valid: {', '.join(OPTION_KEYS)} (other settings belong in the "
                        f"Executor's config)")
    return restore({**dataclasses.asdict(config), **resources})


class Submitter(Protocol):
    """What this module needs of :class:`~sheepdog.Executor` (which imports it)."""

    def _submit(self, fn: Callable[..., Any],
                calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
                config: Config) -> "list[Future[Any]]": ...

    def _map(self, fn: Callable[..., Any], iterables: tuple[Iterable[Any], ...],
             timeout: Optional[float], chunksize: int, config: Config) -> Iterator[Any]: ...


class ExecutorOptions(concurrent.futures.Executor):
    """An executor whose submits carry other resources; made by :meth:`Executor.options`."""

    def __init__(self, executor: Submitter, config: Config) -> None:
        self.executor = executor
        #: The config of this executor's requests.
        self.config = config
        self._futures: "list[Future[Any]]" = []

    def __repr__(self) -> str:
        return f"<sheepdog.Executor.options {self.config.scheduler} of {self.executor!r}>"

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> "Future[Any]":
        """As :meth:`Executor.submit`, with this executor's resources."""
        (future,) = self.executor._submit(fn, [(args, kwargs)], self.config)
        self._futures.append(future)
        return future

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],
            timeout: Optional[float] = None, chunksize: int = 1) -> Iterator[Any]:
        """As :meth:`Executor.map`, with this executor's resources."""
        return self.executor._map(fn, iterables, timeout, chunksize, self.config)

    def options(self, **resources: Any) -> "ExecutorOptions":
        """This executor's resources, with ``resources`` set over them."""
        return ExecutorOptions(self.executor, with_resources(self.config, resources))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Wait for the futures submitted here (cancelling those not started first, with
        ``cancel_futures``); the executor it came from goes on."""
        if cancel_futures:
            for future in self._futures:
                future.cancel()
        if wait:
            concurrent.futures.wait(self._futures)
