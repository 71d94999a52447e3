"""The tables of a sheepdog database, and how an older file is brought up to date.

Each version of the schema is a script that brings the one before it up a
version; opening a file of version N runs the scripts from N on in one
transaction, and a file of a newer version than this sheepdog knows is
refused rather than misread. A file opened to be read (:func:`check_readable`)
is never migrated: one that is not of this version is refused. Arguments and
results live in tables of their own, so that the small, frequent state
updates never rewrite a large payload, and how many tasks are in each state
is kept in a table that a trigger updates in the same transaction as each
change, so reading progress does not scan tasks.
"""

from __future__ import annotations

import sqlite3
from typing import Callable, Iterator

from .connection import Database, StorageError
from .key_buckets import store_buckets

_SCHEMA = """
CREATE TABLE requests (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    secret TEXT NOT NULL,
    function BLOB NOT NULL,
    n_tasks INTEGER NOT NULL,
    backend TEXT NOT NULL,
    config TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE tasks (
    request_id INTEGER NOT NULL REFERENCES requests(id),
    idx INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    error TEXT,
    updated REAL,
    heartbeat REAL,
    kill_notice REAL,
    attempts INTEGER NOT NULL DEFAULT 1,
    retryable INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (request_id, idx)
) WITHOUT ROWID;
CREATE INDEX tasks_by_state ON tasks (request_id, state);
CREATE TABLE arguments (
    request_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (request_id, idx)
);
CREATE TABLE results (
    request_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (request_id, idx)
);
CREATE TABLE jobs (
    request_id INTEGER NOT NULL REFERENCES requests(id),
    job_id TEXT NOT NULL,
    submitted REAL NOT NULL,
    chunksize INTEGER NOT NULL,
    indices TEXT
);
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
)
"""

#: From version 1: payload files, and task counts kept per state.
_UPGRADE_TO_2 = """
ALTER TABLE arguments ADD COLUMN in_file INTEGER NOT NULL DEFAULT 0;
ALTER TABLE results ADD COLUMN in_file INTEGER NOT NULL DEFAULT 0;
CREATE TABLE task_counts (
    request_id INTEGER NOT NULL,
    state TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (request_id, state)
) WITHOUT ROWID;
INSERT INTO task_counts SELECT request_id, state, count(*) FROM tasks GROUP BY request_id, state;
CREATE TRIGGER count_task_states AFTER UPDATE OF state ON tasks
WHEN OLD.state != NEW.state
BEGIN
    UPDATE task_counts SET n = n - 1 WHERE request_id = OLD.request_id AND state = OLD.state;
    INSERT INTO task_counts VALUES (NEW.request_id, NEW.state, 1)
        ON CONFLICT (request_id, state) DO UPDATE SET n = n + 1;
END
"""

#: From version 2: the tail of each task's stdout and stderr.
_UPGRADE_TO_3 = """
CREATE TABLE outputs (
    request_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    stream TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (request_id, idx, stream)
)
"""

#: From version 3: workers that pull their tasks, and hold them on a lease.
#: Jobs are numbered per request (their ``launch``) and run ``n_workers``
#: workers; a task names the worker that holds it and the pull (``batch``)
#: that gave it, and when it was handed out.
_UPGRADE_TO_4 = """
ALTER TABLE tasks ADD COLUMN worker INTEGER;
ALTER TABLE tasks ADD COLUMN batch INTEGER;
ALTER TABLE tasks ADD COLUMN started REAL;
ALTER TABLE jobs ADD COLUMN launch INTEGER;
ALTER TABLE jobs ADD COLUMN n_workers INTEGER;
CREATE TABLE workers (
    id INTEGER PRIMARY KEY,
    request_id INTEGER NOT NULL,
    launch INTEGER NOT NULL,
    array_task INTEGER NOT NULL,
    pulls INTEGER NOT NULL DEFAULT 0,
    heartbeat REAL,
    kill_notice REAL,
    ended REAL,
    end_reason TEXT,
    end_retryable INTEGER,
    UNIQUE (request_id, launch, array_task)
);
CREATE INDEX tasks_by_worker ON tasks (request_id, worker);
ALTER TABLE jobs DROP COLUMN chunksize;
ALTER TABLE jobs DROP COLUMN indices
"""

#: From version 4: the exception a failed task raised, pickled by its worker
#: (or a pickled ``str`` saying why it could not be), beside its error text.
_UPGRADE_TO_5 = """
CREATE TABLE exceptions (
    request_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (request_id, idx)
)
"""

#: From version 5: what each request is (its function's module and qualified name),
#: and each task's own times as its worker measured them: ``began`` (the server's
#: time when it heard the task start; a running task without it is queued at its
#: worker) and ``seconds`` (how long ``f`` ran). The partial index keeps the count
#: of tasks executing now a read of the few that are.
_UPGRADE_TO_6 = """
ALTER TABLE requests ADD COLUMN function_module TEXT;
ALTER TABLE requests ADD COLUMN function_name TEXT;
ALTER TABLE tasks ADD COLUMN began REAL;
ALTER TABLE tasks ADD COLUMN seconds REAL;
CREATE INDEX tasks_executing ON tasks (request_id) WHERE state = 'running' AND began IS NOT NULL
"""

#: From version 6: the key of each task's computation (``digest``, see
#: ``caller/fingerprint.py``), kept for the requests made with the ``cache`` config
#: key, so that a later request finds an earlier success by key. The index is on
#: ``key``, the digest's first 64 bits as an integer: a quarter of the size of an
#: index on the digest, which makes storing 100,000 keys about twice as fast.
#: A task that reused an earlier result has no row: its source holds the key.
#: A request keeps its function's digest (``computation``): only requests of the same
#: function can hold a task's key, so a new function asks no index. ``remembered``
#: counts a request's remembered tasks, so that reading progress does not count them.
_UPGRADE_TO_7 = """
CREATE TABLE computations (
    request_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    key INTEGER NOT NULL,
    digest BLOB NOT NULL,
    PRIMARY KEY (request_id, idx)
) WITHOUT ROWID;
CREATE INDEX computations_by_key ON computations (key);
ALTER TABLE requests ADD COLUMN computation BLOB;
ALTER TABLE requests ADD COLUMN remembered INTEGER NOT NULL DEFAULT 0
"""

#: From version 7: what ``sheepdog list`` shows without reading every task. Each
#: request's payload bytes in the database (``request_bytes``: its function, and the
#: data of its arguments, results, outputs and exceptions), which the writers of those
#: rows add to (``housekeeping.add_bytes``) in their own transaction; and, in
#: ``task_counts``, when a task last entered each state (``last``), kept by the trigger
#: that counts the moves, so that when a request's last task finished is one small read.
#: An older file gets both from its rows, once.
_UPGRADE_TO_8 = """
CREATE TABLE request_bytes (
    request_id INTEGER PRIMARY KEY,
    bytes INTEGER NOT NULL
);
INSERT INTO request_bytes
SELECT rid, sum(n) FROM (
    SELECT id AS rid, length(function) AS n FROM requests
    UNION ALL SELECT request_id, sum(length(data)) FROM arguments GROUP BY request_id
    UNION ALL SELECT request_id, sum(length(data)) FROM results GROUP BY request_id
    UNION ALL SELECT request_id, sum(length(data)) FROM outputs GROUP BY request_id
    UNION ALL SELECT request_id, sum(length(data)) FROM exceptions GROUP BY request_id
) WHERE rid IN (SELECT id FROM requests) GROUP BY rid;
ALTER TABLE task_counts ADD COLUMN last REAL;
UPDATE task_counts SET last = (SELECT max(t.updated) FROM tasks t
    WHERE t.request_id = task_counts.request_id AND t.state = task_counts.state);
DROP TRIGGER count_task_states;
CREATE TRIGGER count_task_states AFTER UPDATE OF state ON tasks
WHEN OLD.state != NEW.state
BEGIN
    UPDATE task_counts SET n = n - 1 WHERE request_id = OLD.request_id AND state = OLD.state;
    INSERT INTO task_counts (request_id, state, n, last) VALUES
        (NEW.request_id, NEW.state, 1, NEW.updated)
        ON CONFLICT (request_id, state) DO UPDATE SET n = n + 1,
        last = CASE WHEN excluded.last > last THEN excluded.last
                    ELSE coalesce(last, excluded.last) END;
END
"""

#: From version 8: a request's computation keys in buckets (``key_buckets.py``), a row per
#: bucket of records rather than a row per task with an index on its key, found by the
#: function's digest (``requests.computation``) and the bucket, or by the request.
_CREATE_KEY_BUCKETS = """
CREATE TABLE computation_keys (
    computation BLOB NOT NULL,
    bucket INTEGER NOT NULL,
    request_id INTEGER NOT NULL,
    records BLOB NOT NULL,
    PRIMARY KEY (computation, bucket, request_id)
) WITHOUT ROWID;
CREATE INDEX computation_keys_by_request ON computation_keys (request_id)
"""


def _upgrade_to_9(db: sqlite3.Connection) -> None:
    """From version 8: the keys kept a row per task move into buckets, so that what an
    older file remembered is still found (a request without its function's digest
    could not be found by its keys before either)."""
    for statement in _statements(_CREATE_KEY_BUCKETS):
        db.execute(statement)
    for request_id, function_digest in db.execute(
            "SELECT id, computation FROM requests WHERE computation IS NOT NULL").fetchall():
        keyed = db.execute("SELECT idx, digest FROM computations WHERE request_id = ?",
                           (request_id,)).fetchall()
        store_buckets(db, function_digest, request_id, keyed)
    db.execute("DROP TABLE computations")


#: The schema as steps, each bringing it one version up (an SQL script, or a function
#: where rows must be rewritten): a database of version N runs the steps from N on,
#: in one transaction.
_MIGRATIONS: tuple[str | Callable[[sqlite3.Connection], None], ...] = (
    _SCHEMA, _UPGRADE_TO_2, _UPGRADE_TO_3, _UPGRADE_TO_4, _UPGRADE_TO_5, _UPGRADE_TO_6,
    _UPGRADE_TO_7, _UPGRADE_TO_8, _upgrade_to_9)
SCHEMA_VERSION = len(_MIGRATIONS)


def _statements(script: str) -> Iterator[str]:
    """The SQL statements of ``script`` one by one (trigger bodies hold semicolons too)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement
            statement = ""
    if statement.strip():
        yield statement


def _refuse_unknown_version(dbfile: str, version: int) -> None:
    if not 0 <= version <= SCHEMA_VERSION:
        raise StorageError(
            f"{dbfile} has sheepdog schema version {version}; this sheepdog reads version "
            f"{SCHEMA_VERSION}: use another dbfile, or a newer sheepdog"
        )


def migrate(database: Database) -> None:
    """Create the tables of a new file, or bring an older one up to :data:`SCHEMA_VERSION`."""
    try:
        with database.write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            _refuse_unknown_version(database.dbfile, version)
            for step in _MIGRATIONS[version:]:
                if callable(step):
                    step(db)
                    continue
                for statement in _statements(step):
                    db.execute(statement)
            if version != SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except sqlite3.DatabaseError as error:
        raise StorageError(
            f"{database.dbfile} is not a usable sheepdog database: {error}") from error


def check_readable(connection: sqlite3.Connection, dbfile: str) -> None:
    """Refuse ``dbfile`` (read through ``connection``) unless it is a sheepdog database
    of :data:`SCHEMA_VERSION`, changing nothing: reading never migrates.

    An older schema is refused too, since this sheepdog's reads need the
    current one; the message says how to bring the file up to date.
    """
    try:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        has_requests = connection.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'requests'"
        ).fetchone()[0]
    except sqlite3.DatabaseError as error:
        raise StorageError(f"{dbfile} is not a usable sheepdog database: {error}") from error
    if version == 0 or not has_requests:
        raise StorageError(
            f"{dbfile} is not a sheepdog database (it holds no sheepdog tables): pass the "
            f"dbfile your requests were made with")
    _refuse_unknown_version(dbfile, version)
    if version < SCHEMA_VERSION:
        raise StorageError(
            f"{dbfile} has sheepdog schema version {version}, older than the version "
            f"{SCHEMA_VERSION} this sheepdog reads, and reading never changes a database: "
            f"bring it up to date (its requests are kept) with "
            f"python -c 'import sheepdog; sheepdog.Storage(\"{dbfile}\")', then read it")
