"""The ``inline`` scheduler, for debugging: the tasks run in the caller's own thread.

No job is submitted: :meth:`Request.submit_job` sees :attr:`runs_in_caller`
and runs the pending tasks itself, one after another (``caller/inline.py``),
through the same serialisation round trip as a worker's and with the same
records in the database. This class only names the scheduler, so that the
config accepts it and a later process can read its requests; it has no jobs
to watch or cancel, and no key to deliver.
"""

from __future__ import annotations

from .base import Backend, TaskEnd


class InlineBackend(Backend):
    """Runs nothing itself: its tasks run in the caller (see the module's docstring)."""

    name = "inline"
    task_variable = "SHEEPDOG_TASK_ID"
    outlives_caller = False
    runs_in_caller = True

    def submit(self, script: str, request_id: int, n_array_tasks: int) -> str:
        raise RuntimeError("the inline scheduler submits no job: its tasks run in the caller "
                           "(caller/inline.py)")

    def ended_tasks(self, job_id: str, candidates: set[int]) -> dict[int, TaskEnd]:
        return {}

    def cancel(self, job_id: str) -> None:
        """Nothing runs elsewhere: an inline run is stopped by Ctrl-C."""

    def deliver_key(self, request_id: int, key: str) -> str:
        raise RuntimeError("the inline scheduler's tasks need no key: nothing calls back")

    def withdraw_key(self, path: str) -> None:
        """No key file was written."""

    def running_tasks(self, job_id: str) -> set[int]:
        return set()

    def task_output(self, job_id: str, task_id: int) -> str:
        return ""
