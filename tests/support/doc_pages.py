"""Run a docs page's examples as one doctest, in the page's order: its Python
examples, and its console lines (``$ sheepdog ...``) run through ``cli.main``
as a shell would show them."""

import contextlib
import os
import re
import shlex
import sys
import textwrap
from pathlib import Path

from sheepdog.cli import commands as cli

from .quickstart import run_doctest

DOCS = Path(__file__).resolve().parents[2] / "docs"
_CONSOLE_LINE = re.compile(r"^( *)\$ (.*)$", re.MULTILINE)
_TOML_BLOCK = re.compile(r"^\.\. code-block:: toml\n\n((?:(?: {4}.*)?\n)+)", re.MULTILINE)
_ECHO_STATUS = "; echo $?"


def shell(command_line):
    """``[NAME=value ...] sheepdog ARGS [; echo $?]``: stdout and stderr, then the exit code."""
    echo_status = command_line.endswith(_ECHO_STATUS)
    words = shlex.split(command_line[: -len(_ECHO_STATUS)] if echo_status else command_line)
    variables = {}
    while "=" in words[0]:
        name, value = words.pop(0).split("=", 1)
        variables[name] = value
    assert words[0] == "sheepdog", f"the docs may only run the sheepdog command: {command_line}"
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        with contextlib.redirect_stderr(sys.stdout):
            status = cli.main(words[1:])
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    if echo_status:
        print(status)


def page(name):
    return (DOCS / name).read_text()


def toml_example(name):
    """The page's one ``.. code-block:: toml``, as a file would hold it."""
    (block,) = _TOML_BLOCK.findall(page(name))
    return textwrap.dedent(block)


def run_page(name):
    """Run every example of docs/``name``; the doctest's (failed, attempted)."""
    text = _CONSOLE_LINE.sub(lambda line: f"{line.group(1)}>>> shell({line.group(2)!r})",
                             page(name))
    return run_doctest(text, {}, {"shell": shell})
