"""The feedback suite runs against SQLite and against a real PostgreSQL server."""

from __future__ import annotations

import itertools

import pytest

from ..postgres import postgres_server

_names = itertools.count()


@pytest.fixture(scope="session")
def postgres():
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'predictions.db'}"
    server = request.getfixturevalue("postgres")
    return server.create_database(f"test_{next(_names)}")
