"""How ``computation_keys`` holds a request's computation keys: in buckets of records.

A request's keys are kept in buckets by their first 12 bits, a row per
bucket holding its records (key, task index), rather than a row per task:
storing the keys of 100,000 tasks is then 4,096 row writes, not 100,000 rows
and as many random inserts into an index on the key. Rows are found by the
function's digest and the bucket, so a lookup reads only the rows that the
requests of its function have in its keys' buckets, however many requests
there are. The cache reads them (``memo.py``), the schema moves an older
file's keys into them (``schema.py``), and pruning asks which tasks have one
(``housekeeping.py``).
"""

from __future__ import annotations

import sqlite3
import struct
from collections import defaultdict
from typing import Iterable, Iterator

#: The bytes of a computation key: a SHA-256 digest.
KEY_BYTES = 32
#: A record of a bucket: a key, then its task's index.
RECORD = struct.Struct(f">{KEY_BYTES}sQ")


def bucket_of(key: bytes) -> int:
    """The bucket of ``key``: its first 12 bits."""
    return key[0] << 4 | key[1] >> 4


def bucket_rows(keyed: Iterable[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
    """The buckets (bucket, records) of a request's tasks ``keyed`` as (task index, key).
    A key that is not a SHA-256 digest is a ValueError: a record would keep it padded
    or cut short, the key of another computation."""
    buckets: defaultdict[int, list[bytes]] = defaultdict(list)
    pack = RECORD.pack
    for index, key in keyed:
        if len(key) != KEY_BYTES:
            raise ValueError(f"the computation key of task {index} is {len(key)} bytes, "
                             f"not a SHA-256 digest of {KEY_BYTES} (caller/fingerprint.py "
                             f"makes them)")
        buckets[key[0] << 4 | key[1] >> 4].append(pack(key, index))  # bucket_of, inlined
    return ((bucket, b"".join(records)) for bucket, records in buckets.items())


def store_buckets(db: sqlite3.Connection, function_digest: bytes, request_id: int,
                  keyed: Iterable[tuple[int, bytes]]) -> None:
    """Inside a transaction: the keys of the request's tasks ``keyed`` as (task index,
    key), for its function ``function_digest``."""
    db.executemany(
        "INSERT INTO computation_keys (computation, bucket, request_id, records) "
        "VALUES (?, ?, ?, ?)", ((function_digest, bucket, request_id, records)
                                for bucket, records in bucket_rows(keyed)))


def keyed_indices(connection: sqlite3.Connection, request_id: int) -> list[int]:
    """The indices of the request's tasks that have a key: those it computed."""
    return [index for (records,) in connection.execute(
        "SELECT records FROM computation_keys WHERE request_id = ?", (request_id,))
        for _key, index in RECORD.iter_unpack(records)]
