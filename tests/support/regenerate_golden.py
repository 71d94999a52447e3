"""Rewrite the golden files in tests/support/golden/ from what sheepdog renders now.

``jobscript.txt`` pins the job file's shape; ``header-<scheduler>.txt`` each
batch backend's job header; ``script-<scheduler>.txt`` what ``job_script``
shows for each backend with every resource set by name. Regenerating them is a step of its own, never
part of a test run (tests/conftest.py refuses to run with a golden-writing
variable set), so that a golden test cannot pass by rewriting what it
compares with. Run it after an intended change, then review the diff before
committing it::

    .venv/bin/python -m tests.support.regenerate_golden
    git diff tests/support/golden/
"""

import difflib
import importlib.util
import sys
from pathlib import Path

from sheepdog.caller import jobscript

from ..test_jobscript import GOLDEN, render


def golden_text() -> str:
    """The rendered job file with each embedded source replaced by its name, as pinned."""
    text = render()
    for name, (_is_package, source) in jobscript.embedded_sources().items():
        text = text.replace(repr(source), f"<source of {name}>")
    text = text.replace(repr(importlib.util.MAGIC_NUMBER), "<this Python's magic number>")
    return text.replace(repr(jobscript.compiled_modules()), "<the modules compiled>")


def golden_headers() -> dict[Path, str]:
    """Each batch backend's header, as ``test_the_header_matches_the_golden_file`` renders it."""
    from ..test_backends import GOLDEN as HEADERS, Contract

    return {HEADERS / f"header-{contract.scheduler}.txt":
            "\n".join(contract().backend(max_running=4).header(250)) + "\n"
            for contract in Contract.__subclasses__()}


def golden_scripts() -> dict[Path, str]:
    """``job_script`` of each backend with every resource, as ``test_resources.py`` renders it."""
    from ..test_backends import GOLDEN as FOLDER
    from ..test_resources import SCRIPT_SCHEDULERS, resource_script

    return {FOLDER / f"script-{scheduler}.txt": resource_script(scheduler)
            for scheduler in SCRIPT_SCHEDULERS}


def rewrite(path: Path, new: str) -> None:
    old = path.read_text() if path.exists() else ""
    if old == new:
        print(f"{path} is up to date")
        return
    sys.stdout.writelines(difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), str(path), "rendered"))
    path.write_text(new)
    print(f"rewrote {path}: review the diff above before committing it")


def main() -> int:
    for path, text in {GOLDEN: golden_text(), **golden_headers(), **golden_scripts()}.items():
        rewrite(path, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
