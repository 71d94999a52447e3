"""The CI scripts' own pitfalls, pinned so that a later edit cannot bring them back."""

import re
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).parent.parent / "ci").glob("*.sh"))
QUIET_GREP_AT_END_OF_PIPE = re.compile(r"\|\s*grep\s+-\w*q")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_no_pipeline_ends_in_a_grep_that_stops_reading(script: Path) -> None:
    """Under ``pipefail``, ``cmd | grep -q x`` fails now and then although x is there.

    ``grep -q`` exits at its first match; if ``cmd`` is still writing, it dies of
    SIGPIPE and the pipeline's status is that of ``cmd``. A CI run failed this way
    ("Address already assigned" from slurm-up.sh, which then added an address it had
    just found). ``grep x >/dev/null`` reads to the end and has no such race.
    """
    offending = [
        f"{script.name}:{number}: {line.strip()}"
        for number, line in enumerate(script.read_text().splitlines(), start=1)
        if QUIET_GREP_AT_END_OF_PIPE.search(line)
    ]
    assert not offending, "\n".join(offending)
