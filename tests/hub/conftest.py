"""Hub fixtures: a migrated database on each backend the hub supports."""

from __future__ import annotations

import pytest

from consortium import LocalConsortium
from cordiale.hub.db import Database


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """A migrated, empty :class:`Database`: SQLite in ``tmp_path`` or a fresh PostgreSQL database
    (skipped when no PostgreSQL server can be started here)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'hub.db'}"
    else:
        url = request.getfixturevalue("postgres_db_url")
    db = Database(url)
    try:
        db.migrate()
        yield db
    finally:
        db.dispose()


@pytest.fixture
def consortium(tmp_path):
    """A consortium on loopback: hub over mutual TLS and three node agents, all running."""
    with LocalConsortium(tmp_path).start() as c:
        yield c
