"""The database and its payload files are the caller's alone, even when they
existed before: another local user can neither read nor change them."""

import os
import stat
import subprocess

import pytest

from sheepdog.storage.store import Storage, StorageError

OTHER_UID = 1501  # a user that is not the one running the tests

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="gives files to another user (chown)")


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def shared_directory(tmp_path):
    """A directory every local user may create files in, as /tmp is."""
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o1777)
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


@needs_root
def test_a_wal_file_planted_by_another_user_is_refused(shared_directory):
    # SQLite would replay its frames into the database on opening it.
    dbfile = str(shared_directory / "sheepdog.sqlite")
    Storage(dbfile).close()
    wal = dbfile + "-wal"
    os.close(os.open(wal, os.O_CREAT | os.O_WRONLY, 0o666))
    os.chown(wal, OTHER_UID, OTHER_UID)
    with pytest.raises(StorageError, match=rf"{wal} belongs to .*uid {OTHER_UID}"):
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
