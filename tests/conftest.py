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


class SignedClient:
    """Flask's test client, signing each request under ``key`` as a worker does.

    Pass ``headers=`` to send other headers instead (an attacker's, say).
    """

    def __init__(self, test_client, key):
        self.test_client = test_client
        self.key = key

    def open(self, method, path, data=b"", headers=None):
        from sheepdog.protocol import auth_headers

        if headers is None:
            headers = auth_headers(self.key, method, path, data)
        return self.test_client.open(path, method=method, data=data, headers=headers)

    def get(self, path, **kwargs):
        return self.open("GET", path, **kwargs)

    def post(self, path, **kwargs):
        return self.open("POST", path, **kwargs)
