"""Run the docs' quickstart examples as doctests, with a config of the caller's choosing."""

import doctest
from pathlib import Path

#: The quickstart page of the docs: its examples are the contract.
QUICKSTART = (Path(__file__).resolve().parents[2] / "docs" / "quickstart.rst").read_text()


def run_doctest(text, conf, extra_globals=None):
    """Run doctest ``text`` with every ``conf = {...}`` line pointing at ``conf``."""
    text = "\n".join(
        line[: line.index(">>>")] + f">>> conf = {conf!r}" if ">>> conf = " in line else line
        for line in text.splitlines()
    )
    parser = doctest.DocTestParser()
    globs = {"__name__": "__main__", **(extra_globals or {})}
    test = parser.get_doctest(text, globs, "quickstart", "quickstart.txt", 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    return runner.summarize(verbose=False)
