"""Simulation with secure aggregation: the plain study's result, and the settings in the JSON."""

import numpy as np
import pytest

from cordiale.learn.secure_aggregation import SecureAggregationConfig
from cordiale.sim.runner import DataSource, SimulationSpec, prepare_sites, simulate


@pytest.fixture(scope="module")
def eight_sites():
    spec = SimulationSpec(source=DataSource(dataset="pima"), sites=8, partition="iid")
    return prepare_sites(spec)[1]


def _spec(secure):
    return SimulationSpec(
        source=DataSource(dataset="pima"),
        sites=8,
        partition="iid",
        strategy="fedadam",
        rounds=3,
        pooled=False,
        evaluate_every=0,
        secure_aggregation=secure,
    )


def test_secagg_plus_simulation_matches_the_plain_one(eight_sites):
    secure = SecureAggregationConfig(threshold=3, degree=4)
    plain = simulate(_spec(None), sites=eight_sites)
    masked = simulate(_spec(secure), sites=eight_sites)
    for k, v in plain.federated.weights.items():
        np.testing.assert_allclose(masked.federated.weights[k], v, atol=1e-3, rtol=0)
    a, b = plain.to_json(), masked.to_json()
    assert abs(a["federated"]["auc"] - b["federated"]["auc"]) <= 0.005
    assert a["config"]["secure_aggregation"] is None
    assert b["config"]["secure_aggregation"] == {
        "threshold": 3,
        "neighbours": 4,
        "clip": 1000.0,
        "frac_bits": 16,
        "rekey_every": 10,
        "spare_holders": 1,
    }
    assert [r["nodes"] for r in b["rounds"]] == [8, 8, 8]
