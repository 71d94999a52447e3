"""The reading commands change nothing, and a database file no command can use is refused
with ``sheepdog: ...`` and exit code 2, never a traceback.

The reading commands (list, status, results, errors, logs, dashboard) open the database
read-only (``storage/read_only.py``): a file that is not a sheepdog database of this
version is refused and left as it was, its mode too, with nothing created beside it.
"""

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from contextlib import closing
from pathlib import Path

import pytest

from sheepdog.caller import owner
from sheepdog.cli import commands as cli
from sheepdog.storage import SCHEMA_VERSION, Storage, StorageError

from .test_cli import REPOSITORY, run
from .test_file_safety import OTHER_UID, mode, needs_root
from .test_storage import VERSION_3_SCHEMA

READING = [["list"], ["status", "1"], ["results", "1"], ["errors", "1"], ["logs", "1"],
           ["dashboard", "--no-browser"]]
WRITING = [["cancel", "1"], ["serve", "1", "--port", "1"]]


def snapshot(path):
    """What reading must not change: the file's bytes and mode, its write-ahead log, and
    which files lie beside it."""
    wal = Path(f"{path}-wal")
    return (Path(path).read_bytes(), mode(path), wal.read_bytes() if wal.exists() else None,
            sorted(os.listdir(os.path.dirname(path))))


def refused(capsys, argv, path, *words):
    """Run ``sheepdog ARGV --dbfile PATH``: it must exit 2 with a message holding ``words``."""
    code, _, err = run(capsys, *argv, "--dbfile", str(path))
    assert code == cli.EXIT_USAGE, err
    assert err.startswith("sheepdog: ") and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


@pytest.fixture(params=["wal", "wal in use", "rollback"])
def foreign_file(tmp_path, request):
    """Another program's SQLite file (mode 644), in WAL mode (closed, or held open with
    changes still in its log) or in rollback-journal mode."""
    path = tmp_path / "other-app.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=" + ("delete" if request.param == "rollback" else "wal"))
    db.execute("CREATE TABLE notes (text TEXT)")
    db.execute("PRAGMA user_version = 7")
    if request.param != "wal in use":
        db.close()
    else:
        db.execute("PRAGMA wal_autocheckpoint = 0")
        db.execute("INSERT INTO notes VALUES ('still in the log')")
    path.chmod(0o644)
    yield str(path)
    db.close()


@pytest.mark.parametrize("command", READING, ids=lambda argv: argv[0])
def test_reading_commands_leave_a_foreign_sqlite_file_byte_for_byte_unchanged(
        foreign_file, command, capsys):
    before = snapshot(foreign_file)
    refused(capsys, command, foreign_file, "is not a sheepdog database")
    assert snapshot(foreign_file) == before


def test_python_m_sheepdog_refuses_a_foreign_file_and_leaves_it_unchanged(foreign_file):
    before = snapshot(foreign_file)
    listed = subprocess.run([sys.executable, "-m", "sheepdog", "list", "--dbfile", foreign_file],
                            cwd=REPOSITORY, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": REPOSITORY})
    assert listed.returncode == cli.EXIT_USAGE
    assert listed.stderr == (f"sheepdog: {foreign_file} is not a sheepdog database (it holds no "
                             f"sheepdog tables): pass the dbfile your requests were made with\n")
    assert snapshot(foreign_file) == before


@pytest.fixture
def closed_database(dbfile):
    """A sheepdog database with one finished request, closed (so it has no -wal or -shm)."""
    storage = Storage(dbfile)
    request_id = storage.create_request(b"fn", [b"a"], "secret", "local")
    storage.record_reports(request_id, [(1, False, b"result")])
    storage.close()
    return dbfile


@pytest.mark.parametrize("command", READING[:-1], ids=lambda argv: argv[0])
def test_reading_commands_read_a_sheepdog_database_without_changing_it(
        closed_database, command, capsys):
    os.chmod(closed_database, 0o640)  # not tightened by a reader
    content = Path(closed_database).read_bytes()
    code, _, err = run(capsys, *command, "--dbfile", closed_database)
    assert code in (cli.EXIT_DONE, cli.EXIT_UNSUCCESSFUL), err
    assert (Path(closed_database).read_bytes(), mode(closed_database)) == (content, 0o640)


def test_reading_commands_never_migrate_an_older_schema_and_say_how_to_upgrade(dbfile, capsys):
    with closing(sqlite3.connect(dbfile)) as raw:
        raw.executescript(VERSION_3_SCHEMA)
    os.chmod(dbfile, 0o600)
    before = snapshot(dbfile)
    for command in READING:
        refused(capsys, command, dbfile, "schema version 3, older than the version "
                f"{SCHEMA_VERSION}", "sheepdog.Storage(")
    assert snapshot(dbfile) == before
    Storage(dbfile).close()  # the upgrade the message gives
    assert run(capsys, "status", "1", "--dbfile", dbfile)[0] == cli.EXIT_RUNNING


@pytest.mark.parametrize("command", READING + WRITING, ids=lambda argv: argv[0])
def test_a_newer_schema_is_refused_with_exit_2(closed_database, command, capsys):
    with closing(sqlite3.connect(closed_database)) as raw:
        raw.execute("PRAGMA user_version = 99")
    refused(capsys, command, closed_database, "schema version 99")


@pytest.mark.parametrize("command", READING + WRITING, ids=lambda argv: argv[0])
def test_a_corrupt_database_file_is_refused_with_exit_2_and_left_unchanged(
        tmp_path, command, capsys):
    path = tmp_path / "sheepdog.sqlite"
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    path.chmod(0o600)
    before = snapshot(path)
    refused(capsys, command, path, str(path))
    assert snapshot(path) == before


@pytest.mark.parametrize("command", READING + WRITING, ids=lambda argv: argv[0])
def test_a_directory_as_the_database_is_refused_with_exit_2(tmp_path, command, capsys):
    refused(capsys, command, tmp_path, f"{tmp_path} is not a file")


def test_an_empty_dbfile_from_the_environment_is_refused_with_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("SHEEPDOG_DBFILE", "")
    code, _, err = run(capsys, "list")
    assert code == cli.EXIT_USAGE
    assert err == ("sheepdog: the dbfile is empty (from env SHEEPDOG_DBFILE): name a sheepdog "
                   "database, or leave it unset for ./sheepdog.sqlite\n")
    assert run(capsys, "config")[0] == cli.EXIT_DONE  # which still shows where it comes from


@needs_root
@pytest.mark.parametrize("command", READING + WRITING, ids=lambda argv: argv[0])
def test_a_database_of_another_user_is_refused_with_exit_2_and_left_unchanged(
        closed_database, command, capsys):
    os.chown(closed_database, OTHER_UID, OTHER_UID)
    before = snapshot(closed_database)
    refused(capsys, command, closed_database, f"(uid {OTHER_UID}), not to you")
    assert snapshot(closed_database) == before
    assert os.stat(closed_database).st_uid == OTHER_UID


@pytest.mark.parametrize("command", READING + WRITING, ids=lambda argv: argv[0])
def test_a_world_writable_database_is_refused_with_exit_2_and_left_unchanged(
        closed_database, command, capsys):
    os.chmod(closed_database, 0o666)
    before = snapshot(closed_database)
    refused(capsys, command, closed_database, "can be written by others than you (mode 666)")
    assert snapshot(closed_database) == before


@pytest.mark.parametrize("command", [["status"], ["results"], ["errors"], ["logs"], ["cancel"],
                                     ["logs", "1"]], ids=" ".join)
def test_an_id_beyond_sqlite_integers_names_nothing_and_exits_2(closed_database, command,
                                                                 capsys):
    huge = "99999999999999999999"
    what = "has no task" if command == ["logs", "1"] else f"request {huge} is not in"
    refused(capsys, [*command, huge], closed_database, what)


AS_OTHER_USER = ["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups"]


@needs_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="runs a reader as another user")
def test_a_wal_database_whose_shm_file_cannot_be_created_is_refused_saying_why():
    """SQLite's read-only connection to a database in WAL mode creates the -shm file: in a
    directory the reader cannot write (another user's here, since root writes anywhere)
    the read is refused with why, and nothing changes."""
    directory = tempfile.mkdtemp(prefix="sheepdog-read-only-")
    try:
        dbfile = os.path.join(directory, "sheepdog.sqlite")
        Storage(dbfile).close()
        for path in (directory, dbfile):
            os.chown(path, OTHER_UID, OTHER_UID)
        os.chmod(directory, 0o500)
        before = snapshot(dbfile)
        listed = subprocess.run(
            [*AS_OTHER_USER, sys.executable, "-m", "sheepdog", "list", "--dbfile", dbfile],
            cwd=directory, capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": REPOSITORY, "HOME": directory})
        assert listed.returncode == cli.EXIT_USAGE, listed.stderr
        assert listed.stderr.startswith(f"sheepdog: {dbfile} cannot be read (")
        assert "sheepdog.sqlite-shm file exists or can be created" in listed.stderr
        assert snapshot(dbfile) == before
    finally:
        os.chmod(directory, 0o700)
        subprocess.run(["rm", "-rf", directory], check=True)


def test_a_database_open_read_only_here_cannot_be_had_to_write(closed_database):
    reader = owner.acquire(closed_database, read_only=True)
    try:
        with pytest.raises(StorageError, match="is open read-only in this process"):
            owner.acquire(closed_database)
        with pytest.raises(StorageError, match="is open read-only here"):
            reader.storage.set_meta_once("key", b"value")
    finally:
        owner.release(reader)
    writer = owner.acquire(closed_database)  # once the reader let go
    assert owner.acquire(closed_database, read_only=True) is writer  # a writer reads too
    owner.release(writer)
    owner.release(writer)
    assert stat.S_IMODE(os.stat(closed_database).st_mode) == 0o600
