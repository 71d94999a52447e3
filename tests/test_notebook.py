"""The Executor, as_completed and map's progress in a real Jupyter kernel (nbclient).

The notebook is built here with nbformat and run on an ipykernel kernel of
this test's own Python, through a kernelspec written to a temporary
directory.
"""

import json
import sys
import textwrap

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

KERNEL = "sheepdog-test-python"


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """A kernelspec that runs ipykernel on this Python, found through JUPYTER_PATH."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "sheepdog test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return KERNEL


def run_notebook(cells, kernel_name, directory):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(textwrap.dedent(source)) for source in cells]
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name=kernel_name,
                                     resources={"metadata": {"path": str(directory)}})
    client.execute()
    return notebook


def text_of(cell):
    """What the cell printed to stdout."""
    return "".join(output.get("text", "") for output in cell.outputs
                   if output.output_type == "stream" and output.name == "stdout")


@pytest.mark.parametrize("widgets", [False, True], ids=["html", "ipywidgets"])
def test_executor_and_progress_in_a_jupyter_kernel(kernel, tmp_path, widgets):
    if widgets:
        pytest.importorskip("ipywidgets")
    hide_widgets = "" if widgets else "sys.modules['ipywidgets'] = None  # as if not installed"
    cells = [
        f"""
        import asyncio, concurrent.futures, sys
        {hide_widgets}
        import sheepdog
        conf = {{"scheduler": "local", "dbfile": {str(tmp_path / "db.sqlite")!r}}}
        executor = sheepdog.Executor(conf)
        futures = [executor.submit(pow, x, 2) for x in range(5)]
        print(sorted(f.result() for f in concurrent.futures.as_completed(futures, timeout=60)))
        """,
        """
        def nap(seconds):
            import time
            time.sleep(seconds)
            return "woke"

        ticks = 0

        async def tick():
            global ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        woke = await asyncio.wrap_future(executor.submit(nap, 1.5))
        ticker.cancel()
        print(woke, "ticks:", ticks)
        """,
        """
        request_id = sheepdog.map_async(pow, [(2, 3), (3, 2), (2, 0)], conf)
        print(sorted(sheepdog.as_completed(request_id, conf["dbfile"], timeout=60)))
        """,
        """
        sheepdog.map(nap, [(0.2,)] * 4, conf)
        """,
        """
        executor.shutdown()
        print("shut down")
        """,
    ]
    notebook = run_notebook(cells, kernel, tmp_path)
    first, awaited, completed, mapped, last = notebook.cells
    assert text_of(first) == "[0, 1, 4, 9, 16]\n"
    woke, _, ticks = text_of(awaited).split()
    assert woke == "woke" and int(ticks) >= 10  # the event loop ran while the future did
    assert text_of(completed) == "[(1, 8), (2, 9), (3, 1)]\n"
    assert text_of(last) == "shut down\n"

    streams = [output for output in mapped.outputs if output.output_type == "stream"]
    displays = [output for output in mapped.outputs if output.output_type == "display_data"]
    results = [output for output in mapped.outputs if output.output_type == "execute_result"]
    assert not streams  # no stderr lines of progress
    assert len(displays) == 1
    assert displays[0].data["text/plain"].startswith("sheepdog: [")  # the text, not a repr
    assert "4/4 finished" in displays[0].data["text/plain"]
    assert results[0].data["text/plain"] == "['woke', 'woke', 'woke', 'woke']"
    if widgets:
        view = displays[0].data["application/vnd.jupyter.widget-view+json"]
        states = notebook.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
        bars = [model["state"] for model in states.values()
                if model["model_name"] == "IntProgressModel"]
        assert view["model_id"] in states
        assert [(bar["value"], bar["max"]) for bar in bars] == [(4, 4)]
    else:
        html = displays[0].data["text/html"]  # updated in place to the last state
        assert '<progress value="4" max="4">' in html and "4/4 finished" in html


def test_a_failing_cell_function_shows_the_cells_own_lines_in_its_traceback(kernel, tmp_path):
    """What IPython shows for the cell: its name for the cell's file, and the line."""
    cells = [
        f"""
        import sheepdog
        conf = {{"scheduler": "local", "dbfile": {str(tmp_path / "nb.sqlite")!r},
                 "dashboard": False}}
        """,
        """
        def divides(x):
            return 10 // x  # the line a traceback should show
        """,
        """
        sheepdog.map(divides, [(0,)], conf, verbose=False)
        request_id = 1
        print(sheepdog.get_errors(request_id, conf["dbfile"])[0][1])
        """,
    ]
    notebook = run_notebook(cells, kernel, tmp_path)
    error = text_of(notebook.cells[2])
    assert "ZeroDivisionError" in error
    assert "return 10 // x  # the line a traceback should show" in error
    assert "<dynamic-code>" not in error
