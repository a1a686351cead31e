"""Hub fixtures: a migrated database on each backend the hub supports."""

from __future__ import annotations

import pytest

from consortium import SITES, LocalConsortium
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
    c = LocalConsortium(tmp_path)
    c.start_hub()
    for site in SITES:
        c.start_node(site)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def shared_consortium(tmp_path_factory):
    """One running consortium for a module of read-mostly tests (access, uploads)."""
    c = LocalConsortium(tmp_path_factory.mktemp("consortium"))
    c.start_hub()
    for site in SITES:
        c.start_node(site)
    try:
        yield c
    finally:
        c.close()
