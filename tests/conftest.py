"""Shared fixtures: a private database and a local-backend config per test."""

import pytest

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
