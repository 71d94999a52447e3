"""The database and its payload files are the caller's alone, even when they
existed before: another local user can neither read nor change them."""

import errno
import os
import pwd
import stat
import subprocess
import sys

import pytest

from sheepdog.storage import Storage, StorageError
from sheepdog.storage.file_safety import (
    UnsafePathError,
    check_database_files,
    check_directory,
    private_directory,
    private_file,
)

OTHER_UID = 1501  # a user that is not the one running the tests

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="gives files to another user (chown)")


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def shared_directory(tmp_path):
    """The caller's own directory, where files of another user's appear (root makes them
    and gives them away: a folder that others may write is refused as a whole)."""
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o700)
    return directory


def test_a_new_database_is_created_readable_by_its_owner_only(dbfile):
    Storage(dbfile).close()
    assert mode(dbfile) == 0o600


def test_a_database_file_made_readable_by_all_with_touch_is_tightened_before_use(dbfile):
    subprocess.run(["touch", dbfile], check=True)
    os.chmod(dbfile, 0o644)
    storage = Storage(dbfile)
    storage.create_request(b"fn", [b"a"], "secret", "local")
    storage.close()
    assert mode(dbfile) == 0o600
    for suffix in ("-wal", "-shm"):
        if os.path.exists(dbfile + suffix):
            assert mode(dbfile + suffix) == 0o600


def test_a_database_file_anyone_could_write_is_refused_not_tightened(dbfile):
    # Someone else may have planted results in it, which the caller would unpickle.
    os.close(os.open(dbfile, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(dbfile, 0o666)
    with pytest.raises(StorageError, match=rf"{dbfile} can be written by others.*chmod 600"):
        Storage(dbfile)
    assert mode(dbfile) == 0o666


@pytest.mark.parametrize("group_writable", [0o660, 0o620], ids=["0660", "0620"])
def test_a_group_writable_database_file_is_refused_not_tightened(dbfile, group_writable):
    # Anyone in the group may have planted results in it, as anyone at all could at 0666.
    os.close(os.open(dbfile, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(dbfile, group_writable)
    with pytest.raises(StorageError, match=rf"{dbfile} can be written by others.*chmod 600"):
        Storage(dbfile)
    assert mode(dbfile) == group_writable


@needs_root
def test_a_wal_file_planted_by_another_user_is_refused(shared_directory):
    # SQLite would replay its frames into the database on opening it.
    dbfile = str(shared_directory / "sheepdog.sqlite")
    Storage(dbfile).close()
    wal = dbfile + "-wal"
    os.close(os.open(wal, os.O_CREAT | os.O_WRONLY, 0o666))
    os.chown(wal, OTHER_UID, OTHER_UID)
    with pytest.raises(StorageError,
                       match=rf"{wal} \(the write-ahead log .*belongs to .*uid {OTHER_UID}"):
        Storage(dbfile)


@needs_root
def test_a_database_file_owned_by_another_user_is_refused(shared_directory):
    dbfile = str(shared_directory / "sheepdog.sqlite")
    os.close(os.open(dbfile, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chown(dbfile, OTHER_UID, OTHER_UID)
    with pytest.raises(StorageError, match=rf"{dbfile} belongs to .*uid {OTHER_UID}.*not to you"):
        Storage(dbfile)


@needs_root
def test_a_database_path_that_links_to_another_users_file_is_refused(shared_directory, tmp_path):
    theirs = str(tmp_path / "theirs.sqlite")
    os.close(os.open(theirs, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chown(theirs, OTHER_UID, OTHER_UID)
    dbfile = str(shared_directory / "sheepdog.sqlite")
    os.symlink(theirs, dbfile)
    with pytest.raises(StorageError, match=rf"{dbfile} \(a link to {theirs}\) belongs to"):
        Storage(dbfile)


@needs_root
def test_a_link_planted_by_another_user_is_refused_even_when_it_leads_to_our_file(
        shared_directory, tmp_path):
    ours = str(tmp_path / "precious")
    with open(ours, "w") as handle:
        handle.write("not a database")
    os.chmod(ours, 0o600)
    dbfile = str(shared_directory / "sheepdog.sqlite")
    os.symlink(ours, dbfile)
    os.lchown(dbfile, OTHER_UID, OTHER_UID)
    with pytest.raises(StorageError, match=rf"{dbfile} is a symbolic link made by .*{OTHER_UID}"):
        Storage(dbfile)
    with open(ours) as handle:
        assert handle.read() == "not a database"


def test_a_payload_directory_others_can_write_is_refused(dbfile):
    os.mkdir(dbfile + ".payloads")
    os.chmod(dbfile + ".payloads", 0o777)
    with pytest.raises(StorageError, match=rf"{dbfile}.payloads can be written by others"):
        Storage(dbfile)


def test_a_group_writable_payload_directory_is_refused_not_tightened(dbfile):
    os.mkdir(dbfile + ".payloads")
    os.chmod(dbfile + ".payloads", 0o770)
    with pytest.raises(StorageError, match=rf"{dbfile}.payloads can be written by others"):
        Storage(dbfile)
    assert mode(dbfile + ".payloads") == 0o770


def test_a_payload_directory_made_after_the_database_was_opened_is_checked_before_use(dbfile):
    storage = Storage(dbfile)
    os.mkdir(storage.payloads.root)
    os.chmod(storage.payloads.root, 0o777)
    with pytest.raises(RuntimeError, match="can be written by others"):
        storage.create_request(b"fn", [b"x" * (2 << 20)], "secret", "local")
    storage.close()


def test_a_readable_payload_directory_is_tightened(dbfile):
    os.mkdir(dbfile + ".payloads")
    os.chmod(dbfile + ".payloads", 0o755)
    Storage(dbfile).close()
    assert mode(dbfile + ".payloads") == 0o700


@needs_root
def test_a_payload_directory_owned_by_another_user_is_refused(dbfile):
    os.mkdir(dbfile + ".payloads", 0o700)
    os.chown(dbfile + ".payloads", OTHER_UID, OTHER_UID)
    with pytest.raises(StorageError, match=rf"{dbfile}.payloads belongs to .*uid {OTHER_UID}"):
        Storage(dbfile)


def _hot_journal_of_another_database(tmp_path, journal):
    """A real hot rollback journal, made by a process that died inside a write."""
    victim = tmp_path / "hers.sqlite"
    program = (
        "import os, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA journal_mode=DELETE')\n"
        "c.execute('CREATE TABLE t (x)'); c.execute('INSERT INTO t VALUES (1)')\n"
        "c.execute('BEGIN'); c.execute('UPDATE t SET x = 2')\n"
        "c.execute('PRAGMA cache_size=1'); c.execute('INSERT INTO t SELECT 3')\n"
        "os._exit(0)\n")
    subprocess.run([sys.executable, "-c", program, str(victim)], check=True)
    os.replace(str(victim) + "-journal", journal)


@needs_root
def test_a_journal_planted_by_another_user_is_refused_before_any_connection(
        shared_directory, tmp_path):
    """Her hot journal is never rolled in: the database keeps its bytes, the error says why."""
    dbfile = str(shared_directory / "mine.sqlite")
    storage = Storage(dbfile)
    request_id = storage.create_request(b"fn", [b"a"], "secret", "local")
    storage.close()
    before = open(dbfile, "rb").read()
    journal = dbfile + "-journal"
    _hot_journal_of_another_database(tmp_path, journal)
    os.chown(journal, OTHER_UID, OTHER_UID)
    with pytest.raises(StorageError, match=rf"{journal} \(the rollback journal .*belongs to"):
        Storage(dbfile)
    assert open(dbfile, "rb").read() == before  # nothing of hers was rolled in
    os.remove(journal)
    assert Storage(dbfile).n_tasks(request_id) == 1


@pytest.mark.parametrize("folder_mode", [0o1777, 0o2775, 0o777])
def test_a_database_in_a_folder_others_can_write_is_refused_sticky_or_not(tmp_path,
                                                                         folder_mode):
    """In /tmp anybody may create the names SQLite uses beside a database before SQLite
    does: a journal or a write-ahead log of theirs, planted in the moment between a check
    and a connection."""
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(folder_mode)
    with pytest.raises(StorageError, match="can be written by others than you"):
        Storage(str(folder / "mine.sqlite"))
    assert not (folder / "mine.sqlite").exists()


@needs_root
def test_a_database_in_a_folder_of_another_user_is_refused(tmp_path):
    folder = tmp_path / "hers"
    folder.mkdir(mode=0o755)
    os.chown(folder, OTHER_UID, OTHER_UID)
    with pytest.raises(StorageError, match=f"belongs to .*uid {OTHER_UID}"):
        Storage(str(folder / "mine.sqlite"))


def test_a_database_below_a_folder_anyone_may_rename_in_is_refused(tmp_path):
    """A world-writable folder above, not sticky: another user could swap ours for hers."""
    above = tmp_path / "above"
    (above / "mine").mkdir(parents=True)
    above.chmod(0o777)
    (above / "mine").chmod(0o700)
    with pytest.raises(StorageError, match="a directory above"):
        Storage(str(above / "mine" / "db.sqlite"))


def test_one_database_reached_by_two_spellings_keeps_every_result(tmp_path):
    """A link to the database's folder, or a doubled slash, is the same file: the second
    handle must not open and close it by hand beside the first one's connections."""
    import sqlite3
    from sheepdog.caller.session import Session

    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    conf = {"scheduler": "local", "dashboard": False}
    with Session() as first, Session() as second:
        first.submit(len, [("a",)], {**conf, "dbfile": str(tmp_path / "real" / "db.sqlite")}
                     ).wait(timeout=120)
        second.submit(len, [("bb",)], {**conf, "dbfile": str(tmp_path / "alias" / "db.sqlite")}
                      ).wait(timeout=120)
        subprocess.run([sys.executable, "-c", "import sqlite3, sys; sqlite3.connect(sys.argv[1])"
                        ".execute('SELECT count(*) FROM requests').fetchall()",
                        str(tmp_path / "real" / "db.sqlite")], check=True, timeout=60)
        third = first.submit(len, [("ccc",)], {**conf, "dbfile": "/" + str(tmp_path / "real" /
                                                                         "db.sqlite")})
        third.wait(timeout=120)
        assert third.values() == [3]
    with sqlite3.connect(str(tmp_path / "real" / "db.sqlite")) as connection:
        assert connection.execute("SELECT count(*) FROM requests").fetchone()[0] == 3


def test_a_database_deleted_and_made_again_in_one_process_is_private_again(tmp_path):
    dbfile = str(tmp_path / "db.sqlite")
    Storage(dbfile).close()
    for path in tmp_path.glob("db.sqlite*"):
        os.remove(path)
    Storage(dbfile).close()
    assert mode(dbfile) == 0o600


def test_a_database_with_a_second_name_is_refused(tmp_path):
    dbfile = str(tmp_path / "db.sqlite")
    Storage(dbfile).close()
    os.link(dbfile, str(tmp_path / "other-name.sqlite"))
    with pytest.raises(StorageError, match="2 names"):
        Storage(str(tmp_path / "other-name.sqlite"))


def test_a_journal_that_appears_after_opening_is_refused_at_the_next_connection(dbfile):
    storage = Storage(dbfile)
    journal = dbfile + "-journal"
    with open(journal, "wb") as planted:
        planted.write(b"\0" * 512)
    os.chmod(journal, 0o666)
    try:
        with pytest.raises(StorageError, match="journal"):
            threading_result(storage.request_ids)
    finally:
        os.remove(journal)
        storage.close()


def threading_result(call):
    """``call()`` in a new thread (which opens a connection of its own); its error raised."""
    import threading

    outcome = []

    def run():
        try:
            outcome.append(call())
        except BaseException as error:  # handed to the test's thread
            outcome.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=60)
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _refusal(check):
    """The message of the UnsafePathError that ``check()`` raises."""
    with pytest.raises(UnsafePathError) as refused:
        check()
    return str(refused.value)


def _other_users_file(directory, uid):
    path = str(directory / "theirs")
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chown(path, uid, uid)
    return path


def _me():
    return f"{pwd.getpwuid(os.geteuid()).pw_name} (uid {os.geteuid()})"


def test_a_file_that_already_has_a_second_name_is_refused_when_first_made_private(tmp_path):
    """The check on an open descriptor, as on the first open of a database in a process."""
    path = str(tmp_path / "db.sqlite")
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    os.link(path, str(tmp_path / "other-name.sqlite"))
    assert _refusal(lambda: private_file(path)) == (
        f"{path} has 2 names (hard links): sheepdog could not tell them apart and keep its "
        f"locks. Remove the other names, or copy the file")


def test_a_fifo_or_a_directory_where_a_file_belongs_is_refused_as_not_a_file(tmp_path):
    fifo, directory = str(tmp_path / "fifo"), str(tmp_path / "directory")
    os.mkfifo(fifo, 0o600)
    os.mkdir(directory, 0o700)
    for path in (fifo, directory):
        assert _refusal(lambda path=path: private_file(path)) == (
            f"{path} is not a file: remove it, or choose another path")


def test_a_file_where_a_directory_belongs_is_refused_as_not_a_directory(tmp_path):
    path = str(tmp_path / "payloads")
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    for create in (True, False):
        assert _refusal(lambda create=create: private_directory(path, create=create)) == (
            f"{path} is not a directory: remove it, or choose another path")


def _nameless_uid():
    """A uid that no user of this machine has."""
    return next(uid for uid in range(54321, 60000) if _has_no_name(uid))


@needs_root
@pytest.mark.parametrize("named", [True, False], ids=["a named user", "a uid with no name"])
def test_a_file_of_another_user_is_refused_naming_both_users_and_the_way_out(
        shared_directory, named):
    if named and _has_no_name(OTHER_UID):
        pytest.skip(f"uid {OTHER_UID} has no user name here")
    uid = OTHER_UID if named else _nameless_uid()
    owner = f"{pwd.getpwuid(uid).pw_name} (uid {uid})" if named else f"uid {uid}"
    path = _other_users_file(shared_directory, uid)
    assert _refusal(lambda: private_file(path)) == (
        f"{path} belongs to {owner}, not to you ({_me()}): they could read or change the "
        f"secrets sheepdog keeps in it. Remove it, or choose another path")


@needs_root
def test_a_link_of_another_user_is_refused_naming_the_link_its_maker_and_the_way_out(
        shared_directory, tmp_path):
    ours = str(tmp_path / "ours")
    os.close(os.open(ours, os.O_CREAT | os.O_WRONLY, 0o600))
    link = str(shared_directory / "link")
    os.symlink(ours, link)
    uid = _nameless_uid()
    os.lchown(link, uid, uid)
    assert _refusal(lambda: private_file(link)) == (
        f"{link} is a symbolic link made by uid {uid}, not by you ({_me()}): it could "
        f"lead sheepdog to write your secrets where they can read them. Remove the link, or "
        f"choose another path")


def _has_no_name(uid):
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return True
    return False


@pytest.mark.parametrize("is_directory", [False, True], ids=["file", "directory"])
def test_a_path_others_can_write_is_refused_with_the_chmod_that_would_trust_it(
        tmp_path, is_directory):
    path = str(tmp_path / "secret")
    if is_directory:
        os.mkdir(path)
    else:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(path, 0o666 if not is_directory else 0o777)
    make_private = private_directory if is_directory else private_file
    mode_was, private = ("777", "700") if is_directory else ("666", "600")
    assert _refusal(lambda: make_private(path)) == (
        f"{path} can be written by others than you (mode {mode_was}): what it holds may have "
        f"been changed, and sheepdog loads it. If you trust it, run 'chmod {private} {path}'; "
        f"otherwise remove it")


def test_a_readable_file_is_tightened_with_a_warning_only_when_it_held_something(
        tmp_path, caplog):
    empty, full, private = (str(tmp_path / name) for name in ("empty", "full", "private"))
    for path, content, permissions in [(empty, b"", 0o644), (full, b"secret", 0o640),
                                       (private, b"secret", 0o600)]:
        with open(path, "wb") as handle:
            handle.write(content)
        os.chmod(path, permissions)
    with caplog.at_level("WARNING", logger="sheepdog.storage.file_safety"):
        for path in (empty, full, private):
            private_file(path)
    assert [mode(path) for path in (empty, full, private)] == [0o600] * 3
    assert [record.getMessage() for record in caplog.records] == [
        (f"{full} was readable by others than you (mode 640); it is now 600, but what it held "
         f"may have been read")]


@pytest.mark.parametrize("is_directory", [False, True], ids=["file", "directory"])
def test_a_link_swapped_in_after_the_check_of_links_is_not_followed(
        tmp_path, monkeypatch, is_directory):
    """The open itself refuses a symbolic link (O_NOFOLLOW): what it finds is what it checks."""
    from sheepdog.storage import file_safety

    target = str(tmp_path / "target")
    if is_directory:
        os.mkdir(target, 0o700)
    else:
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o600))
    link = str(tmp_path / "link")
    os.symlink(target, link)
    monkeypatch.setattr(file_safety, "_followed", lambda path: path)  # the link came after
    with pytest.raises((OSError, UnsafePathError)) as refused:  # ELOOP; "not a directory"
        (private_directory if is_directory else private_file)(link, create=False)
    assert getattr(refused.value, "errno", errno.ELOOP) == errno.ELOOP


def test_a_directory_made_for_secrets_is_the_owners_alone(tmp_path):
    path = str(tmp_path / "payloads")
    old_umask = os.umask(0)  # whatever the user's umask, nobody else gets any bit
    try:
        private_directory(path)
    finally:
        os.umask(old_umask)
    assert mode(path) == 0o700


@pytest.mark.parametrize("suffix, kind", [("-journal", "rollback journal"),
                                          ("-wal", "write-ahead log"), ("-shm", "shared memory")])
def test_every_file_sqlite_keeps_beside_the_database_is_checked_before_a_connection(
        shared_directory, suffix, kind):
    from sheepdog.storage.file_safety import check_companions

    dbfile = str(shared_directory / "sheepdog.sqlite")
    planted = dbfile + suffix
    os.close(os.open(planted, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(planted, 0o620)
    assert _refusal(lambda: check_companions(dbfile)) == (
        f"{planted} (the {kind} of {dbfile}) can be written by others than you (mode 620): "
        f"what it holds may have been changed, and sheepdog loads it. Remove it if you do "
        f"not trust it")


def test_a_file_made_for_secrets_is_the_owners_alone_and_needs_its_directory(tmp_path):
    path = str(tmp_path / "secret")
    old_umask = os.umask(0)
    try:
        private_file(path)
    finally:
        os.umask(old_umask)
    assert mode(path) == 0o600
    with pytest.raises(FileNotFoundError):
        private_file(str(tmp_path / "missing" / "secret"))
    private_file(str(tmp_path / "absent"), create=False)  # left missing, quietly
    assert not os.path.exists(tmp_path / "absent")


def test_a_fifo_found_where_a_file_should_already_be_is_refused_without_blocking(tmp_path):
    fifo = str(tmp_path / "db.sqlite-wal")
    os.mkfifo(fifo, 0o600)
    assert _refusal(lambda: private_file(fifo, create=False)) == (
        f"{fifo} is not a file: remove it, or choose another path")


def test_a_database_in_a_missing_or_foreign_directory_is_refused_saying_what_to_do(tmp_path):
    from sheepdog.storage.file_safety import check_directory

    missing = tmp_path / "missing"
    assert _refusal(lambda: check_directory(str(missing / "db.sqlite"))) == (
        f"{missing}/db.sqlite is in {missing}, which does not exist: create it (mode 0700), "
        f"or choose another path")
    if os.geteuid() != 0:
        return
    hers = tmp_path / "hers"
    hers.mkdir(mode=0o700)
    uid = _nameless_uid()
    os.chown(hers, uid, uid)
    assert _refusal(lambda: check_directory(str(hers / "db.sqlite"))) == (
        f"{hers}/db.sqlite is in {hers}, which belongs to uid {uid}: they could replace the "
        f"database, or what SQLite keeps beside it, and sheepdog would load it. Use a "
        f"directory of your own")


def test_a_link_planted_where_sqlite_keeps_a_file_is_refused_saying_what_to_do(tmp_path):
    from sheepdog.storage.file_safety import check_companions

    dbfile = str(tmp_path / "db.sqlite")
    os.symlink(str(tmp_path / "elsewhere"), dbfile + "-wal")
    assert _refusal(lambda: check_companions(dbfile)) == (
        f"{dbfile}-wal (the write-ahead log of {dbfile}) has become a symbolic link: remove "
        f"it, or choose another path")


def test_an_open_databases_companions_and_directories_are_checked_each_as_what_it_is(tmp_path):
    """Without opening anything (a read-only reader): what is missing is skipped, the
    rest is checked, files as files and directories as directories."""
    tmp_path.chmod(0o700)
    dbfile, payloads = tmp_path / "d.sqlite", tmp_path / "payloads"
    dbfile.touch(0o600)
    check = [str(dbfile), ("-wal", "-shm"), (str(payloads),)]
    check_database_files(*check)  # no companion, no payload directory yet
    payloads.mkdir(0o700)
    (tmp_path / "d.sqlite-wal").touch(0o600)
    check_database_files(*check)
    (tmp_path / "d.sqlite-wal").unlink()
    (tmp_path / "d.sqlite-shm").touch()
    (tmp_path / "d.sqlite-shm").chmod(0o620)  # past a missing -wal: still checked
    with pytest.raises(UnsafePathError, match="d.sqlite-shm"):
        check_database_files(*check)
    (tmp_path / "d.sqlite-shm").chmod(0o600)
    payloads.chmod(0o770)
    with pytest.raises(UnsafePathError, match="payloads"):
        check_database_files(*check)
    payloads.rmdir()
    payloads.touch(0o600)
    assert _refusal(lambda: check_database_files(*check)) == (
        f"{payloads} is not a directory: remove it, or choose another path")
    payloads.unlink()
    os.link(dbfile, tmp_path / "other-name.sqlite")
    assert _refusal(lambda: check_database_files(*check)) == (
        f"{dbfile} has 2 names (hard links): sheepdog could not tell them apart and keep its "
        f"locks. Remove the other names, or copy the file")


def test_a_directory_others_can_write_on_the_way_to_a_database_is_named_with_the_way_out(
        tmp_path):
    tmp_path.chmod(0o700)
    shared = tmp_path / "shared"
    (shared / "mine").mkdir(parents=True, mode=0o700)
    shared.chmod(0o770)
    for dbfile, where in [(shared / "d.sqlite", "the directory of"),
                          (shared / "mine" / "d.sqlite", "a directory above")]:
        assert _refusal(lambda: check_directory(str(dbfile))) == (
            f"{shared}, {where} {dbfile}, can be written by others than you (mode 770): they "
            f"could plant a journal or a write-ahead log beside the database, or swap its "
            f"directory, and sheepdog would load what they put there. Keep the database in a "
            f"directory of your own (mode 0700), such as a subdirectory of this one")
