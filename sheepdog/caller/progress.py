"""The live progress that ``map(verbose=True)`` shows while it waits, in a form that
suits where it runs.

:func:`progress_display` picks one display:

- in a Jupyter notebook (an IPython kernel), one display that updates in
  place: an ipywidgets progress bar when ipywidgets is installed, otherwise
  an HTML display updated through its ``display_id``. A stream of stderr
  lines would pile up in the cell's output;
- at a terminal, one line on stderr redrawn in place;
- anywhere else (a log file, a batch job's captured stderr, a service) a
  fresh line at most every :data:`LOG_INTERVAL` seconds, and the last line
  always, so logs stay readable. It goes through :mod:`logging` when logging
  is set up to show it, and to stderr otherwise.

``verbose=False`` shows nothing: no display is made at all.
"""

from __future__ import annotations

import html
import logging
import sys
import time
from typing import Any, Callable, Optional, Protocol, TextIO

from ..storage import Progress

BAR_WIDTH = 24
#: Seconds between lines where progress cannot be redrawn in place.
LOG_INTERVAL = 30.0
#: Seconds between updates of a notebook display (each update is a message to the browser).
NOTEBOOK_INTERVAL = 0.25

log = logging.getLogger(__name__)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def describe(progress: Progress, elapsed: float, already: int = 0) -> str:
    """One line: bar, counts, rate and time left (the rate of what finished after the
    ``already`` finished tasks that were there when the wait began)."""
    total = max(progress.total, 1)
    filled = BAR_WIDTH * progress.finished // total
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    return f"sheepdog: [{bar}] {_counts(progress, elapsed, already)}"


class WaitClock:
    """When a display's wait began, and how many tasks had finished by then.

    A wait that resumes an earlier request (``get_results`` in a later
    process) starts with tasks already finished: its rate and time left count
    only what finishes while it waits.
    """

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.already: Optional[int] = None

    def elapsed(self, progress: Progress) -> tuple[float, int]:
        if self.already is None:
            self.already = progress.finished
        return time.monotonic() - self.started, self.already

    def describe(self, progress: Progress) -> str:
        return describe(progress, *self.elapsed(progress))

    def counts(self, progress: Progress) -> str:
        return _counts(progress, *self.elapsed(progress))


def _counts(progress: Progress, elapsed: float, already: int = 0) -> str:
    """Counts, rate and time left, without the bar."""
    named = ((progress.remembered, "remembered"), (progress.executing, "running"),
             (progress.queued, "queued at workers"), (progress.failed, "failed"),
             (progress.lost, "lost"), (progress.cancelled, "cancelled"))
    text = ", ".join([f"{progress.finished}/{progress.total} finished",
                      *(f"{count} {words}" for count, words in named if count)])
    if progress.finished > already and elapsed > 0:
        rate = (progress.finished - already) / elapsed
        left = (progress.total - progress.finished) / rate
        text += f" | {rate:.1f}/s | elapsed {_clock(elapsed)}"
        if not progress.complete:
            text += f", about {_clock(left)} left"
    return text


class Display(Protocol):
    """Shows a request's progress as it changes; ``close`` when the wait ends."""

    def update(self, progress: Progress) -> None: ...

    def close(self) -> None: ...


class TerminalDisplay:
    """One line on a terminal, redrawn in place."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.clock = WaitClock()
        self._last_text = ""

    def update(self, progress: Progress) -> None:
        text = self.clock.describe(progress)
        padding = " " * max(0, len(self._last_text) - len(text))
        self.stream.write("\r" + text + padding)
        self.stream.flush()
        self._last_text = text

    def close(self) -> None:
        if self._last_text:
            self.stream.write("\n")
            self.stream.flush()


class LineDisplay:
    """A fresh line at most every ``interval`` seconds, and the last one always.

    ``write`` takes one line of text; :func:`progress_display` gives it a
    logger's ``info`` or a stream's writer.
    """

    def __init__(self, write: Callable[[str], None], interval: float = LOG_INTERVAL) -> None:
        self.write = write
        self.interval = interval
        self.clock = WaitClock()
        self._last_shown = -float("inf")
        self._shown_complete = False

    def update(self, progress: Progress) -> None:
        now = time.monotonic()
        if progress.complete and self._shown_complete:
            return
        if progress.complete or now - self._last_shown >= self.interval:
            self.write(self.clock.describe(progress))
            self._last_shown = now
            self._shown_complete = progress.complete

    def close(self) -> None:
        pass


def stream_writer(stream: TextIO) -> Callable[[str], None]:
    """Write one line to ``stream`` and flush it, so that a log shows it at once."""

    def write(line: str) -> None:
        stream.write(line + "\n")
        stream.flush()

    return write


def bar_style(progress: Progress, closing: bool = False) -> str:
    """The ipywidgets bar's colour: ``danger`` once a task failed, ``warning`` once one
    was lost or cancelled, ``success`` when every task is done at the end, else none."""
    if progress.failed:
        return "danger"
    if progress.lost or progress.cancelled:
        return "warning"
    return "success" if closing and progress.complete else ""


class Shown:
    """What a notebook display shows: a rich view (``data``, HTML, or the mime bundle of
    widgets), and the progress text where it cannot be shown (a saved notebook read
    as text, a console), rather than an object's repr."""

    def __init__(self, data: Any, text: str) -> None:
        self.data = data
        self.text = text

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle = dict(self.data) if isinstance(self.data, dict) else {"text/html": self.data}
        bundle["text/plain"] = self.text
        return bundle


class NotebookDisplay:
    """One display in a notebook cell that updates in place.

    An ipywidgets bar and label when ipywidgets can be imported (the bar turns
    to a warning or error colour when tasks were lost or failed); otherwise an
    HTML ``<progress>`` element, replaced through its ``display_id``. Either
    way the display's plain text is the progress line.
    """

    def __init__(self, interval: float = NOTEBOOK_INTERVAL, link: Optional[str] = None) -> None:
        from IPython.display import display

        self._link = (f' <a href="{html.escape(link)}" target="_blank">live dashboard</a>'
                      if link else "")
        self.interval = interval
        self.clock = WaitClock()
        self._last_shown = -float("inf")
        self._widgets: Optional[tuple[Any, Any]] = None
        self._handle: Any = None
        self._last_progress = Progress(total=0)
        self._box: Any = None
        try:
            import ipywidgets
        except ImportError:
            self._handle = display(self._shown(Progress(total=0)), display_id=True)
        else:
            bar = ipywidgets.IntProgress(value=0, min=0, max=1, description="sheepdog")
            label = ipywidgets.HTML()
            self._widgets = (bar, label)
            self._box = ipywidgets.HBox([bar, label])
            self._handle = display(self._shown(Progress(total=0)), display_id=True)

    def _render(self, progress: Progress) -> str:
        counts = html.escape(self.clock.counts(progress))
        return (f'<progress value="{progress.finished}" max="{max(progress.total, 1)}">'
                f"</progress> <code>sheepdog: {counts}</code>{self._link}")

    def _shown(self, progress: Progress) -> Shown:
        """The display's content now: the widgets' view or the HTML, and the progress text."""
        text = self.clock.describe(progress)
        if self._box is not None:
            bundle = getattr(self._box, "_repr_mimebundle_", None)
            return Shown(bundle() if bundle is not None else {}, text)
        return Shown(self._render(progress), text)

    def update(self, progress: Progress) -> None:
        now = time.monotonic()
        if not progress.complete and now - self._last_shown < self.interval:
            return
        self._last_shown = now
        self._last_progress = progress
        if self._widgets is not None:
            bar, label = self._widgets
            bar.max = max(progress.total, 1)
            bar.value = progress.finished
            bar.bar_style = bar_style(progress)
            label.value = html.escape(self.clock.counts(progress)) + self._link
        else:
            self._handle.update(self._shown(progress))

    def close(self) -> None:
        if self._widgets is not None:
            self._widgets[0].bar_style = bar_style(self._last_progress, closing=True)
            if self._handle is not None:  # the last text, for where widgets are not shown
                self._handle.update(self._shown(self._last_progress))


def in_notebook() -> bool:
    """Whether this process is an IPython kernel (Jupyter), not a terminal or a script.

    IPython is not imported to find out: a kernel has imported it already.
    """
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


def progress_display(stream: Optional[TextIO] = None, link: Optional[str] = None) -> Display:
    """The display that suits where this process runs (see the module's docstring).

    ``stream`` is where terminal and plain lines go (stderr by default).
    ``link``, the live dashboard's, is shown with it: a link in a notebook's
    display, else a line of its own before the progress.
    """
    if in_notebook():
        return NotebookDisplay(link=link)
    stream = stream if stream is not None else sys.stderr
    if link:
        stream_writer(stream)(f"sheepdog: live dashboard: {link}")
    if bool(getattr(stream, "isatty", lambda: False)()):
        return TerminalDisplay(stream)
    if log.isEnabledFor(logging.INFO) and log.hasHandlers():
        return LineDisplay(log.info)
    return LineDisplay(stream_writer(stream))
