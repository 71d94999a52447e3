"""The progress display of ``map``: one line, and a display that suits where it runs
(a notebook, a terminal, a log), or none with ``verbose=False``."""

import io
import logging
import sys
import types

import pytest

import sheepdog
from sheepdog.caller import progress
from sheepdog.caller.progress import (
    LineDisplay,
    NotebookDisplay,
    Shown,
    TerminalDisplay,
    bar_style,
    describe,
    progress_display,
    stream_writer,
)
from sheepdog.storage import Progress

def test_progress_line_shows_counts_rate_and_time_left():
    assert describe(Progress(total=4), elapsed=0) == (
        "sheepdog: [------------------------] 0/4 finished")
    line = describe(Progress(total=4, running=1, done=1, failed=1, lost=1), elapsed=30)
    assert line == ("sheepdog: [##################------] 3/4 finished, 1 running, 1 failed, "
                    "1 lost | 0.1/s | elapsed 0:00:30, about 0:00:10 left")
    assert describe(Progress(total=2, done=1, cancelled=1), elapsed=3725) == (
        "sheepdog: [########################] 2/2 finished, 1 cancelled | 0.0/s | "
        "elapsed 1:02:05")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_on_a_terminal_is_redrawn_in_place_and_ends_its_line():
    terminal = Terminal()
    display = TerminalDisplay(terminal)
    display.update(Progress(total=2, running=2))
    display.update(Progress(total=2, running=1, done=1))
    display.update(Progress(total=2, done=2))
    display.close()
    first, second, third = terminal.getvalue().split("\r")[1:]
    assert first == "sheepdog: [------------------------] 0/2 finished, 2 running"
    assert second.startswith("sheepdog: [############------------] 1/2 finished, 1 running | ")
    assert third.startswith("sheepdog: [########################] 2/2 finished | ")
    assert third.endswith("\n") and third.count("\n") == 1
    assert len(third.rstrip("\n")) >= len(second)  # a shorter line is padded over the longer


def test_progress_in_a_log_is_a_line_per_interval_and_the_last_line_always():
    log = io.StringIO()
    display = LineDisplay(stream_writer(log), interval=3600)
    for done in range(5):
        display.update(Progress(total=5, done=done))
    display.update(Progress(total=5, done=5))
    display.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in log.getvalue()
    assert lines[0] == "sheepdog: [------------------------] 0/5 finished"
    assert lines[1].startswith("sheepdog: [########################] 5/5 finished | ")



def test_at_a_terminal_the_line_is_redrawn_in_place():
    assert isinstance(progress_display(Terminal()), TerminalDisplay)


def test_elsewhere_a_line_goes_to_the_stream_every_30_seconds_at_most():
    log = io.StringIO()
    display = progress_display(log)
    assert isinstance(display, LineDisplay) and display.interval == 30
    display.update(Progress(total=3, running=3))
    display.update(Progress(total=3, done=1, running=2))
    display.update(Progress(total=3, done=3))
    display.update(Progress(total=3, done=3))
    lines = log.getvalue().splitlines()
    assert len(lines) == 2
    assert "0/3 finished, 3 running" in lines[0] and "3/3 finished" in lines[1]


def test_elsewhere_with_logging_set_up_the_lines_go_to_the_log(caplog):
    caplog.set_level(logging.INFO, logger="sheepdog.caller.progress")
    stream = io.StringIO()
    display = progress_display(stream)
    display.update(Progress(total=2, done=2))
    assert stream.getvalue() == ""
    assert [record.getMessage()[:49] for record in caplog.records] == [
        "sheepdog: [########################] 2/2 finished"]


class FakeShell:
    def __init__(self, kernel):
        self.kernel = kernel


def fake_ipython(monkeypatch, kernel=True):
    """An IPython whose display calls are recorded in the returned list."""
    shown = []

    class HTML:
        def __init__(self, data):
            self.data = data

    class Handle:
        def update(self, obj):
            shown.append(("update", obj.data))

    def display(obj, display_id=False):
        shown.append(("display", getattr(obj, "data", obj)))
        return Handle() if display_id else None

    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: FakeShell(object() if kernel else None)
    ipython_display = types.ModuleType("IPython.display")
    ipython_display.HTML, ipython_display.display = HTML, display
    ipython.display = ipython_display
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", ipython_display)
    return shown


def test_in_a_notebook_without_ipywidgets_one_html_display_is_updated_in_place(monkeypatch):
    shown = fake_ipython(monkeypatch)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import fails
    display = progress_display(Terminal())
    assert isinstance(display, NotebookDisplay) and display._widgets is None  # HTML, no widget
    display.update(Progress(total=4, done=1, running=3))
    display.update(Progress(total=4, done=2, running=2))  # within the interval: not sent
    display.update(Progress(total=4, done=4))
    display.close()
    assert [kind for kind, _ in shown] == ["display", "update", "update"]
    assert '<progress value="1" max="4">' in shown[1][1] and "1/4 finished" in shown[1][1]
    assert '<progress value="4" max="4">' in shown[2][1] and "4/4 finished" in shown[2][1]


def test_in_a_notebook_with_ipywidgets_a_bar_and_label_are_updated(monkeypatch):
    shown = fake_ipython(monkeypatch)
    widgets = types.ModuleType("ipywidgets")

    class Widget:
        def __init__(self, *children, **attributes):
            self.children = children
            self.__dict__.update(attributes)

    widgets.IntProgress = widgets.HTML = widgets.HBox = Widget
    monkeypatch.setitem(sys.modules, "ipywidgets", widgets)
    display = progress_display()
    assert isinstance(display, NotebookDisplay) and display._widgets is not None
    display.update(Progress(total=5, done=5))
    display.close()
    # the box, shown once (the widgets update themselves), and its text at the end
    assert [kind for kind, _ in shown] == ["display", "update"]
    bar, label = display._widgets
    assert (bar.value, bar.max, bar.bar_style) == (5, 5, "success")
    assert label.value.startswith("5/5 finished")


@pytest.mark.parametrize("progress, during, end", [
    (Progress(total=4, done=4), "", "success"),
    (Progress(total=4, done=2, running=2), "", ""),
    (Progress(total=4, done=3, lost=1), "warning", "warning"),
    (Progress(total=4, done=1, lost=1, failed=2), "danger", "danger"),
])
def test_the_widget_bar_turns_to_a_warning_or_error_colour_when_tasks_were_lost_or_failed(
        progress, during, end):
    assert (bar_style(progress), bar_style(progress, closing=True)) == (during, end)


def test_the_plain_text_of_a_notebook_display_is_the_progress_line_not_a_repr():
    shown = Shown("<progress></progress>", "sheepdog: [####] 4/4 finished")
    assert shown._repr_mimebundle_() == {"text/html": "<progress></progress>",
                                         "text/plain": "sheepdog: [####] 4/4 finished"}
    widget_view = {"text/plain": "HBox(children=(IntProgress(...)))",
                   "application/vnd.jupyter.widget-view+json": {"model_id": "m"}}
    bundle = Shown(widget_view, "sheepdog: 1/4 finished")._repr_mimebundle_()
    assert bundle["text/plain"] == "sheepdog: 1/4 finished"
    assert bundle["application/vnd.jupyter.widget-view+json"] == {"model_id": "m"}


def test_terminal_ipython_without_a_kernel_is_not_a_notebook(monkeypatch):
    fake_ipython(monkeypatch, kernel=False)
    assert not progress.in_notebook()
    assert isinstance(progress_display(Terminal()), TerminalDisplay)


def test_map_without_verbose_shows_nothing(local_conf, capsys, monkeypatch):
    def no_display(*args):
        raise AssertionError("verbose=False made a progress display")

    monkeypatch.setattr("sheepdog.caller.request.progress_display", no_display)
    assert sheepdog.map(abs, [(-1,), (-2,)], local_conf, verbose=False) == [1, 2]
    assert capsys.readouterr().err == ""


def test_a_resumed_wait_counts_its_rate_from_what_finishes_while_it_waits(monkeypatch):
    """get_results in a later process finds 90 of 100 done: the rate is of the 10 that
    finish while it waits, not 100 in its few seconds."""
    from sheepdog.caller import progress as progress_module

    now = [1000.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    clock = progress_module.WaitClock()
    assert "/s" not in clock.counts(Progress(total=100, done=90))
    now[0] += 5.0
    line = clock.counts(Progress(total=100, done=100))
    assert "| 2.0/s |" in line and "elapsed 0:00:05" in line
