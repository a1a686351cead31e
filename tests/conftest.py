"""Shared fixtures: small prepared federations (session-scoped, read-only) and a throwaway
PostgreSQL server with a fresh database per test that asks for one."""

from __future__ import annotations

import pytest

from cordiale.sim.runner import DataSource, SimulationSpec, prepare_sites
from postgres import PostgresUnavailable, create_database, drop_database, start_server


@pytest.fixture(scope="session")
def pima_sites():
    spec = SimulationSpec(source=DataSource(dataset="pima"), sites=4, partition="dirichlet:0.5")
    return prepare_sites(spec)[1]


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server for the whole session (skips when none can be started)."""
    try:
        server = start_server()
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL tests skipped: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server):
    """``postgresql://cordiale@127.0.0.1:PORT/cordiale_test``, shared by the session."""
    return create_database(postgres_server.url("postgres"), "cordiale_test")


@pytest.fixture
def postgres_db_url(postgres_server):
    """A fresh, empty database on the session's server for one test, dropped afterwards."""
    url = create_database(postgres_server.url("postgres"))
    try:
        yield url
    finally:
        drop_database(url)
