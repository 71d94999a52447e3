"""``sheepdog script``: print the job header a submission would use, without submitting.

``sheepdog script --profile fear cores=4 memory=8G walltime=2h`` prints what
:func:`sheepdog.job_script` gives for the config of that profile with those
keys set: the shebang, the scheduler's options (resources by name, translated,
then the user's own) and the limits each worker keeps itself. Values are
written as for ``SHEEPDOG_<KEY>`` variables (``userconfig.from_text``): lists
as JSON arrays, ``ge_opts='["-l lr=0"]'``. A bad value is the same error a
submission would raise, before anything is submitted.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from .. import userconfig
from ..caller.jobscript import job_script
from ..caller.session import Session
from ..config import _TYPES
from .serving import CommandError

DESCRIPTION = (
    "Print the start of the job file that a submission would use: the scheduler's header, "
    "with the resources named in the config (cores, memory, walltime, gpus, queue, account) "
    "translated into its options, and the limits each worker keeps itself. Nothing is "
    "submitted. KEY=VALUE pairs set config keys over your config file and profile, as the "
    "config dict would; lists are JSON arrays, such as ge_opts='[\"-l lr=0\"]'.")


def add_command(command: Callable[..., Any]) -> None:
    """Declare ``script`` with the parser's ``command(name, run, summary, description)``."""
    script = command("script", run, "print the job header a submission would use, without "
                                    "submitting", DESCRIPTION)
    script.add_argument("settings", nargs="*", metavar="KEY=VALUE",
                        help="config keys to set, such as cores=4 memory=8G walltime=2:00:00")
    script.add_argument("--tasks", type=int, default=1, metavar="N",
                        help="the array's size (default: %(default)s; a submission picks it "
                             "from the pending tasks and the cluster's slots)")


def settings(pairs: list[str]) -> dict[str, Any]:
    """``["cores=4", "memory=8G"]`` as config values, converted by each key's types."""
    conf: dict[str, Any] = {}
    for pair in pairs:
        key, equals, text = pair.partition("=")
        if not equals or not key:
            raise CommandError(f"{pair!r} is not KEY=VALUE, such as cores=4")
        if key not in _TYPES:
            conf[key] = text  # the config names the valid keys
            continue
        try:
            conf[key] = userconfig.from_text(text, _TYPES[key])
        except ValueError as error:
            raise CommandError(f"{pair!r}: config key {key!r}: {error}") from None
    return conf


def run(arguments: argparse.Namespace, session: Session) -> int:
    conf = {"profile": arguments.profile, **settings(arguments.settings)}
    if arguments.given_dbfile:
        conf["dbfile"] = arguments.given_dbfile
    try:
        print(job_script(conf, tasks=arguments.tasks), end="")
    except (TypeError, ValueError) as error:
        raise CommandError(str(error)) from None
    return 0
