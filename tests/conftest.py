"""Shared fixtures (a private database and a local-backend config per test), and
the rules of a run: the golden file is never rewritten by a test, and under
``SHEEPDOG_REQUIRE_CLUSTER`` every cluster test must run.

With ``SHEEPDOG_REQUIRE_CLUSTER`` set to 1, true or yes (as in CI), the run
fails when any test in ``tests/cluster`` was skipped, deselected (``-k``,
``-m``, ``--deselect``), left out (``--ignore``, or a test file not named on
the command line) or not run, and says which. The cluster tests' conftest
only skips them where there is no cluster; this one turns that into a failure.
"""

import os
from pathlib import Path
from typing import Mapping, NamedTuple

import pytest

CLUSTER_TESTS = Path(__file__).resolve().parent / "cluster"


def cluster_required() -> bool:
    """Whether SHEEPDOG_REQUIRE_CLUSTER asks that every cluster test run (1, true or yes)."""
    return os.environ.get("SHEEPDOG_REQUIRE_CLUSTER", "").strip().lower() in ("1", "true", "yes")


#: Variables with which golden tests once rewrote the files they compare with.
GOLDEN_WRITERS = ("SHEEPDOG_REGENERATE_GOLDEN", "SHEEPDOG_WRITE_GOLDEN")


def pytest_configure(config):
    for name in GOLDEN_WRITERS:
        if os.environ.get(name):
            raise pytest.UsageError(
                f"{name} is set, but a test never rewrites the file it compares with: "
                f"regenerate the golden files as a step of their own, "
                f"'python -m tests.support.regenerate_golden', review the diff, and run the tests "
                f"without {name}")
    if cluster_required():
        config.pluginmanager.register(ClusterTestsMustRun(config.rootpath),
                                      "sheepdog-cluster-tests-must-run")


def _is_cluster_test(path) -> bool:
    return CLUSTER_TESTS in Path(path).resolve().parents


class ClusterTestsMustRun:
    """Fails the session unless every test of every file in tests/cluster ran, none skipped."""

    def __init__(self, rootpath):
        self.rootpath = Path(rootpath)
        self.deselected = []
        self.selected = []
        self.ran = set()
        self.skipped = {}
        self.problems = []

    def pytest_deselected(self, items):
        self.deselected += [item.nodeid for item in items if _is_cluster_test(item.path)]

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session):
        self.selected = [item for item in session.items if _is_cluster_test(item.path)]

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        if _is_cluster_test(item.path) and report.skipped and not hasattr(report, "wasxfail"):
            self.skipped[item.nodeid] = str(report.longrepr)
            report.outcome = "failed"
            report.longrepr = (f"cluster test skipped, but SHEEPDOG_REQUIRE_CLUSTER is set: "
                               f"{report.longrepr}")

    def _reports_on_cluster_test(self, report) -> bool:
        return _is_cluster_test(self.rootpath / report.nodeid.split("::")[0])

    def pytest_runtest_logreport(self, report):
        if report.when == "call" and self._reports_on_cluster_test(report):
            self.ran.add(report.nodeid)

    def pytest_collectreport(self, report):
        if report.skipped and self._reports_on_cluster_test(report):
            self.skipped[report.nodeid] = str(report.longrepr)

    def pytest_sessionfinish(self, session):
        on_disk = sorted(CLUSTER_TESTS.glob("test_*.py"))
        collected = {Path(item.path).resolve() for item in self.selected}
        missing = [path.name for path in on_disk if path not in collected]
        if missing:
            self.problems.append(f"cluster test files not collected or with no test selected: "
                                 f"{', '.join(missing)}")
        if self.deselected:
            self.problems.append(f"{len(self.deselected)} cluster tests deselected: "
                                 f"{', '.join(self.deselected)}")
        if self.skipped:
            self.problems.append(f"cluster tests skipped: {', '.join(self.skipped)}")
        if not session.config.option.collectonly:
            not_run = [item.nodeid for item in self.selected if item.nodeid not in self.ran]
            if not_run:
                self.problems.append(f"{len(not_run)} cluster tests not run: {', '.join(not_run)}")
        if self.problems and session.exitstatus in (pytest.ExitCode.OK,
                                                    pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        ran = len(self.ran)
        terminalreporter.write_sep("=", f"cluster tests: {ran} ran of {len(self.selected)} "
                                        f"selected (SHEEPDOG_REQUIRE_CLUSTER)")
        for problem in self.problems:
            terminalreporter.write_line(f"SHEEPDOG_REQUIRE_CLUSTER: {problem}", red=True)

from sheepdog.storage import Storage


@pytest.fixture
def dbfile(tmp_path):
    return str(tmp_path / "sheepdog.sqlite")


@pytest.fixture
def local_conf(dbfile):
    """A config that runs tasks as local processes, as the demo does."""
    return {"scheduler": "local", "dbfile": dbfile}


@pytest.fixture
def storage(dbfile):
    store = Storage(dbfile)
    yield store
    store.close()


class Answer(NamedTuple):
    """What a request got: its status, headers and whole body."""

    status_code: int
    headers: Mapping[str, str]
    data: bytes


class SignedClient:
    """Sends requests to the callback protocol's framework-free core, in-process, as the
    Tornado host hands them over: ``Callbacks.admit``, then (for an admitted request)
    ``Callbacks.respond`` with the body. Each request is signed under ``key`` as a
    worker signs it; pass ``headers=`` to send other headers instead (an attacker's, say).
    """

    def __init__(self, callbacks, key):
        self.callbacks = callbacks
        self.key = key

    def open(self, method, path, data=b"", headers=None):
        from email.message import Message

        from sheepdog.server.callbacks import Reply
        from sheepdog.storage.payloads import PayloadFile
        from sheepdog.wire.protocol import auth_headers

        if headers is None:
            headers = auth_headers(self.key, method, path, data)
        sent = Message()  # headers looked up regardless of case, as in Tornado
        for name, value in headers.items():
            sent[name] = value
        if method == "POST" or data:
            sent["Content-Length"] = str(len(data))
        admitted = self.callbacks.admit(method, path, sent)
        reply = admitted if isinstance(admitted, Reply) else self.callbacks.respond(
            method, path, sent, data if method == "POST" else b"", route=admitted)
        body = b"".join(b"".join(part.chunks()) if isinstance(part, PayloadFile) else bytes(part)
                        for part in reply.parts)
        return Answer(reply.status, {"Content-Type": reply.content_type, **reply.headers}, body)

    def get(self, path, **kwargs):
        return self.open("GET", path, **kwargs)

    def post(self, path, **kwargs):
        return self.open("POST", path, **kwargs)


@pytest.fixture(autouse=True)
def no_user_settings(tmp_path_factory, monkeypatch):
    """No test reads the real user's config file, nor SHEEPDOG_<KEY> variables of the shell.

    Tests that want a config file write one and point SHEEPDOG_CONFIG_FILE at it.
    """
    from sheepdog.config import VALID_KEYS
    from sheepdog.userconfig import CONFIG_FILE_VARIABLE, ENVIRONMENT_PREFIX, PROFILE_VARIABLE

    absent = tmp_path_factory.getbasetemp() / "no-user-config" / "config.toml"
    monkeypatch.setenv(CONFIG_FILE_VARIABLE, str(absent))
    for name in (PROFILE_VARIABLE, *(ENVIRONMENT_PREFIX + key.upper() for key in VALID_KEYS)):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def a_fresh_default_session():
    """Each test starts and ends with the default session holding nothing: its servers,
    dashboards and databases, one set per database a test used, would otherwise live as
    long as the process and hold more than a thousand file descriptors by the end of a
    run (and select() refuses descriptors past 1023)."""
    yield
    from sheepdog import api

    api.default_session().close()
