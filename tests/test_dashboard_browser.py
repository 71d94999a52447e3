"""The dashboard in a real browser: headless Chromium against a running map_async.

Tasks wait for a gate file each, so the test decides when each finishes and
watches the page follow without a reload. It needs Debian's ``chromium`` and
``chromium-driver`` (``ci/browser-up.sh``) and selenium (the ``test`` extra);
without them it is skipped, or fails under ``SHEEPDOG_REQUIRE_CLUSTER``, as
in CI. The screenshot goes to ``$SHEEPDOG_DASHBOARD_SCREENSHOT``, else into
the test's temporary directory.
"""

import os
import shutil
import urllib.parse
from pathlib import Path

import pytest

from sheepdog.caller.session import Session

from .conftest import cluster_required

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: What task 3 raises: markup that would run if the page parsed errors as HTML.
INJECTION = '<img src=x onerror="window.injected=1"><script>window.injected=2</script>'
N_TASKS = 12


def gated(index, gates):
    """Wait for this task's gate file, then return ``index`` (task 3 raises instead)."""
    import pathlib
    import sys
    import time

    gate = pathlib.Path(gates, str(index))
    while not gate.exists():
        time.sleep(0.02)
    if index == 3:
        print("about to fail: <b>not bold</b>", file=sys.stderr)
        raise ValueError(INJECTION)
    return index


@pytest.fixture
def browser():
    """Headless Chromium through selenium and Debian's chromedriver."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    if missing:
        message = f"the dashboard's browser test needs {', '.join(missing)}: run ci/browser-up.sh"
        if cluster_required():
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1280,960", "--disable-gpu"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def screenshot_path(tmp_path) -> Path:
    chosen = os.environ.get("SHEEPDOG_DASHBOARD_SCREENSHOT")
    path = Path(chosen) if chosen else tmp_path / "dashboard.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def open_gates(gates, indices):
    for index in indices:
        (gates / str(index)).touch()


def test_dashboard_follows_a_running_map_live_and_shows_failures_as_text(browser, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    gates = tmp_path / "gates"
    gates.mkdir()
    config = {"scheduler": "local", "dbfile": str(tmp_path / "db.sqlite"), "workers": N_TASKS}
    with Session() as session:
        request = session.submit(gated, [(i, str(gates)) for i in range(1, N_TASKS + 1)], config)
        link = session.dashboard_link(request)
        try:
            browser.get(link)
            # The page redraws itself every second: an element found may be replaced
            # before it is read, so every read is retried until it is consistent.
            wait = WebDriverWait(browser, 30, poll_frequency=0.1,
                                 ignored_exceptions=(StaleElementReferenceException,))

            def read(what):
                """``what()`` once it ran without the page redrawing under it."""
                return wait.until(lambda _: (what(),))[0]

            def text(selector):
                return browser.find_element(By.CSS_SELECTOR, selector).text

            def state_of(index):
                return read(lambda: browser.find_element(
                    By.CSS_SELECTOR, f'.task[data-index="{index}"]').get_attribute("data-state"))

            def shows(selector, expected):
                wait.until(lambda _: expected in text(selector),
                           f"{selector} never showed {expected!r}")

            shows("#progress-text", f"0 / {N_TASKS} finished")
            browser.execute_script("window.notReloaded = true")
            open_gates(gates, [1, 2, 4, 5])
            shows("#progress-text", f"4 / {N_TASKS} finished")
            shows("#count-done", "done 4")
            assert state_of(2) == "done"
            assert state_of(3) in ("pending", "running")

            open_gates(gates, [3])
            shows("#count-failed", "failed 1")
            failure = read(lambda: text('.failure[data-task="3"]'))
            assert "ValueError" in failure and "Traceback" in failure
            assert INJECTION in failure  # shown as text...
            assert "about to fail: <b>not bold</b>" in failure  # ...and so is its output
            assert not browser.find_elements(By.CSS_SELECTOR, "#failures img, #failures b")
            assert browser.execute_script("return window.injected") is None  # ...never run

            open_gates(gates, range(6, N_TASKS + 1))
            shows("#progress-text", f"{N_TASKS} / {N_TASKS} finished (100%)")
            shows("#count-done", f"done {N_TASKS - 1}")
            states = read(lambda: {
                cell.get_attribute("data-index"): cell.get_attribute("data-state")
                for cell in browser.find_elements(By.CSS_SELECTOR, "#tasks .task")})
            assert states == {str(i): "failed" if i == 3 else "done"
                              for i in range(1, N_TASKS + 1)}
            shows("#histogram-note", f"{N_TASKS} tasks, 0 to")  # every task's duration
            drawn = read(lambda: [float(bar.get_attribute("height")) for bar in
                                  browser.find_elements(By.CSS_SELECTOR, "#histogram rect")])
            assert len(drawn) == 20 and sum(height > 0 for height in drawn) >= 2
            row = read(lambda: text(f'tr[data-request="{request.id}"]'))
            assert f"{N_TASKS - 1} done, 1 failed" in row
            assert browser.execute_script("return window.notReloaded") is True
            assert browser.save_screenshot(str(screenshot_path(tmp_path)))
        finally:
            open_gates(gates, range(1, N_TASKS + 1))
        request.wait(timeout=60)


def test_dashboard_refuses_a_browser_without_the_token(browser, tmp_path):
    from selenium.webdriver.common.by import By

    with Session() as session:
        request = session.submit(len, [("abc",)], {"scheduler": "local",
                                                   "dbfile": str(tmp_path / "db.sqlite")})
        link = urllib.parse.urlsplit(session.dashboard_link(request))
        for query in ("", "token=" + "x" * 43):
            browser.get(link._replace(query=query, fragment="").geturl())
            body = browser.find_element(By.TAG_NAME, "body").text
            assert body.startswith("403 Forbidden") and "Sheepdog" not in browser.title
        request.wait(timeout=60)
