"""Shared fixtures: small prepared federations reused across tests (session-scoped, read-only)."""

from __future__ import annotations

import pytest

from cordiale.sim.runner import DataSource, SimulationSpec, prepare_sites


@pytest.fixture(scope="session")
def pima_sites():
    spec = SimulationSpec(source=DataSource(dataset="pima"), sites=4, partition="dirichlet:0.5")
    return prepare_sites(spec)[1]
