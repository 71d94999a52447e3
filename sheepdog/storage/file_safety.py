"""Files and directories that hold secrets, checked to be the caller's alone.

The database holds each request's secret and the server's TLS key, and the
caller unpickles the results stored in it and beside it, so another local
user must be able neither to read these files nor to change them. A path
that sheepdog creates is made private (files 0600, directories 0700). One
that already exists is checked before any secret goes in:

- it must belong to the caller (the effective uid, so root is no exception),
  and a symbolic link must be the caller's own and lead to the caller's own;
- if group or others can write it, it is refused rather than tightened: its
  contents may have been changed by someone else, and tightening the mode
  would not close a descriptor opened meanwhile;
- if group or others can only read it, it is tightened at once (with a
  warning when it is not empty: what it held may have been read).

The checks run on an open descriptor (``fstat``, ``fchmod``), which opening
with ``O_NOFOLLOW`` ties to the path's final file.

A database the process already has open is checked without any descriptor
(:func:`check_database_files`): POSIX drops every lock a process holds on a
file when *any* of its descriptors of that file closes, and SQLite relies on
those locks to know that the file is in use, so opening and closing the
database by hand beside an open connection lets another process remove the
write-ahead log under it, and committed results with it.

The files SQLite keeps beside the database (the rollback journal
``<dbfile>-journal``, ``-wal`` and ``-shm``) are checked before every
connection: a "hot" journal or a write-ahead log that another user planted
would be rolled into the database on the next open, and her pages would
then be loaded (and unpickled) as the caller's results. A check cannot close
that race by itself, so the database's directory must be the caller's (or
root's) and writable by nobody else, sticky or not: in /tmp anybody may
create the names SQLite uses beside a database before SQLite does. Every
directory above it must belong to the caller or root and be writable by
nobody else unless it is sticky (as ssh's ``StrictModes`` asks), so that
nobody can swap the database's directory for one of their own. A database
file with more than one name (a hard link) is refused too.
"""

from __future__ import annotations

import logging
import os
import pwd
import stat

log = logging.getLogger(__name__)

_GROUP_OR_OTHERS = 0o077
_WRITABLE_BY_GROUP_OR_OTHERS = 0o022


class UnsafePathError(RuntimeError):
    """A file or directory for sheepdog's secrets is not the caller's alone."""


def _owner(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _followed(path: str) -> str:
    """``path`` with its final symbolic link resolved, after checking the link is ours."""
    try:
        link = os.lstat(path)
    except FileNotFoundError:
        return path
    if not stat.S_ISLNK(link.st_mode):
        return path
    if link.st_uid != os.geteuid():
        raise UnsafePathError(
            f"{path} is a symbolic link made by {_owner(link.st_uid)}, not by you "
            f"({_owner(os.geteuid())}): it could lead sheepdog to write your secrets where "
            f"they can read them. Remove the link, or choose another path")
    return os.path.realpath(path)


def _not_a(kind: str, shown: str) -> UnsafePathError:
    return UnsafePathError(f"{shown} is not a {kind}: remove it, or choose another path")


def _refuse_foreign(shown: str, uid: int) -> UnsafePathError:
    return UnsafePathError(
        f"{shown} belongs to {_owner(uid)}, not to you ({_owner(os.geteuid())}): they could "
        f"read or change the secrets sheepdog keeps in it. Remove it, or choose another path")


def _check(descriptor: int, path: str, shown: str, is_directory: bool) -> None:
    """Refuse or tighten the open file ``descriptor`` of ``path`` (named ``shown``)."""
    status = os.fstat(descriptor)
    if not (stat.S_ISDIR if is_directory else stat.S_ISREG)(status.st_mode):
        raise _not_a("directory" if is_directory else "file", shown)
    if status.st_uid != os.geteuid():
        raise _refuse_foreign(shown, status.st_uid)
    mode = stat.S_IMODE(status.st_mode)
    if not is_directory and status.st_nlink > 1:
        raise UnsafePathError(
            f"{shown} has {status.st_nlink} names (hard links): sheepdog could not tell "
            f"them apart and keep its locks. Remove the other names, or copy the file")
    if mode & _WRITABLE_BY_GROUP_OR_OTHERS:
        private = 0o700 if is_directory else 0o600
        raise UnsafePathError(
            f"{shown} can be written by others than you (mode {mode:o}): what it holds may "
            f"have been changed, and sheepdog loads it. If you trust it, run "
            f"'chmod {private:o} {path}'; otherwise remove it")
    if mode & _GROUP_OR_OTHERS:
        os.fchmod(descriptor, mode & ~_GROUP_OR_OTHERS)
        if is_directory or status.st_size:
            log.warning("%s was readable by others than you (mode %o); it is now %o, but "
                        "what it held may have been read", shown, mode, mode & ~_GROUP_OR_OTHERS)


def _make_private(path: str, create: bool, is_directory: bool) -> None:
    target = _followed(path)
    shown = path if target == path else f"{path} (a link to {target})"
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    if is_directory:
        flags |= os.O_DIRECTORY
        if create:
            try:
                os.mkdir(target, 0o700)
                return
            except FileExistsError:
                pass
    else:
        flags |= os.O_NONBLOCK | (os.O_CREAT if create else 0)  # a FIFO must not block us
    try:
        descriptor = os.open(target, flags, 0o600)
    except FileNotFoundError:
        if create and not is_directory:
            raise
        return
    except (IsADirectoryError, NotADirectoryError):
        raise _not_a("directory" if is_directory else "file", shown) from None
    except PermissionError:
        owner = os.stat(target).st_uid
        if owner == os.geteuid():
            raise
        raise _refuse_foreign(shown, owner) from None
    try:
        _check(descriptor, target, shown, is_directory)
    finally:
        os.close(descriptor)


def _refuse_unsafe_status(status: os.stat_result, shown: str, is_directory: bool) -> None:
    """Refuse a file (or directory) that is not the caller's alone, from its ``lstat``."""
    if stat.S_ISLNK(status.st_mode):
        raise UnsafePathError(f"{shown} has become a symbolic link: remove it, or choose "
                              f"another path")
    if not (stat.S_ISDIR if is_directory else stat.S_ISREG)(status.st_mode):
        raise _not_a("directory" if is_directory else "file", shown)
    if status.st_uid != os.geteuid():
        raise _refuse_foreign(shown, status.st_uid)
    mode = stat.S_IMODE(status.st_mode)
    if mode & _WRITABLE_BY_GROUP_OR_OTHERS:
        raise UnsafePathError(
            f"{shown} can be written by others than you (mode {mode:o}): what it holds may "
            f"have been changed, and sheepdog loads it. Remove it if you do not trust it")
    if not is_directory and status.st_nlink > 1:
        raise UnsafePathError(
            f"{shown} has {status.st_nlink} names (hard links): sheepdog could not tell "
            f"them apart and keep its locks. Remove the other names, or copy the file")


#: The files SQLite may keep beside a database, and what each is.
COMPANIONS = {"-journal": "rollback journal", "-wal": "write-ahead log", "-shm": "shared memory"}


def check_companions(dbfile: str) -> None:
    """Refuse a journal, write-ahead log or shared-memory file beside ``dbfile`` that is
    not the caller's alone.

    Runs before every connection, with ``lstat`` only (no descriptor of a
    database the process may have open): SQLite would roll a hot journal or
    a write-ahead log into the database on open.
    """
    for suffix, kind in COMPANIONS.items():
        try:
            status = os.lstat(dbfile + suffix)
        except FileNotFoundError:
            continue
        _refuse_unsafe_status(status, f"{dbfile}{suffix} (the {kind} of {dbfile})",
                              is_directory=False)


def check_directory(dbfile: str) -> None:
    """Refuse a database whose directory, or any directory above it, others could change.

    The database's own directory must belong to the caller or root and be
    writable by nobody else; the directories above it likewise, except that a
    sticky one (as /tmp) may be writable by all.
    """
    directory = os.path.realpath(os.path.dirname(os.path.abspath(dbfile)) or ".")
    try:
        status = os.stat(directory)
    except FileNotFoundError:
        raise UnsafePathError(f"{dbfile} is in {directory}, which does not exist: create it "
                              f"(mode 0700), or choose another path") from None
    _refuse_changeable(directory, status, dbfile, sticky_allowed=False)
    parent = os.path.dirname(directory)
    while parent != directory:
        directory, status = parent, os.stat(parent)
        _refuse_changeable(directory, status, dbfile, sticky_allowed=True)
        parent = os.path.dirname(directory)


def _refuse_changeable(directory: str, status: os.stat_result, dbfile: str,
                       sticky_allowed: bool) -> None:
    """Refuse ``directory`` (on the way to ``dbfile``) if someone else could change it."""
    if status.st_uid not in (0, os.geteuid()):
        raise UnsafePathError(
            f"{dbfile} is in {directory}, which belongs to {_owner(status.st_uid)}: they "
            f"could replace the database, or what SQLite keeps beside it, and sheepdog would "
            f"load it. Use a directory of your own")
    writable = stat.S_IMODE(status.st_mode) & _WRITABLE_BY_GROUP_OR_OTHERS
    if writable and not (sticky_allowed and status.st_mode & stat.S_ISVTX):
        where = "the directory of" if not sticky_allowed else "a directory above"
        raise UnsafePathError(
            f"{directory}, {where} {dbfile}, can be written by others than you "
            f"(mode {stat.S_IMODE(status.st_mode):o}): they could plant a journal or a "
            f"write-ahead log beside the database, or swap its directory, and sheepdog would "
            f"load what they put there. Keep the database in a directory of your own "
            f"(mode 0700), such as a subdirectory of this one")


def check_database_files(dbfile: str, suffixes: tuple[str, ...], directories: tuple[str, ...],
                         follow_own_link: bool = False) -> None:
    """Check a database that this process may already have open, without a descriptor.

    The same rules as :func:`private_file`, but nothing is opened (so no lock
    of an open connection is dropped) and nothing is tightened. With
    ``follow_own_link``, ``dbfile`` may be a symbolic link of the caller's own
    to a file of the caller's own (as on a first open).
    """
    first = _followed(dbfile) if follow_own_link else dbfile
    for path, is_directory in [(first, False)] + [(dbfile + s, False) for s in suffixes] + [
            (d, True) for d in directories]:
        try:
            status = os.lstat(path)
        except FileNotFoundError:
            continue
        _refuse_unsafe_status(status, path, is_directory)


def private_file(path: str, create: bool = True) -> None:
    """Make sure the file ``path`` is the caller's alone, creating it (0600) if asked.

    Raises :class:`UnsafePathError` naming the file and the fix otherwise. A
    missing file is left missing when ``create`` is false.
    """
    _make_private(path, create, is_directory=False)


def private_directory(path: str, create: bool = True) -> None:
    """Make sure the directory ``path`` is the caller's alone, creating it (0700) if asked.

    Raises :class:`UnsafePathError` naming the directory and the fix otherwise. A
    missing directory is left missing when ``create`` is false.
    """
    _make_private(path, create, is_directory=True)
