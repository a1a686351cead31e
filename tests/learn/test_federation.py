"""The round loop against independent references: hand-written gradient descent on pooled data."""

import numpy as np
import pytest

from cordiale.core.errors import ProtocolError
from cordiale.learn.federation import Federation, FederationConfig
from cordiale.learn.models import ModelSpec
from cordiale.learn.strategies import make_strategy
from cordiale.learn.trainer import TrainConfig
from cordiale.node.runtime import NodeRuntime
from cordiale.transport.inmemory import InMemoryTransport


def _transport(sites):
    return InMemoryTransport({s: NodeRuntime(s, d).handle_bytes for s, d in sites.items()})


def _numpy_logreg_gd(x, y, w, b, lr, steps):
    """Full-batch gradient descent on the mean logistic loss, written out by hand."""
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(x @ w + b)))
        w = w - lr * x.T @ (p - y) / len(y)
        b = b - lr * np.mean(p - y)
    return w, b


def test_fedavg_full_batch_equals_pooled_gradient_descent(pima_sites):
    """One full-batch local step per round, averaged by example counts, is exactly pooled GD."""
    rounds, lr = 6, 0.5
    cfg = FederationConfig(
        study_id="gd",
        rounds=rounds,
        seed=3,
        model=ModelSpec(kind="logreg"),
        train=TrainConfig(epochs=1, batch_size=10_000, lr=lr),
        evaluate_every=0,
    )
    fed = Federation(cfg, make_strategy("fedavg"), _transport(pima_sites))
    fed.setup()
    w0 = fed.weights["net.0.weight"].astype(np.float64).ravel()
    b0 = float(fed.weights["net.0.bias"][0])
    for r in range(1, rounds + 1):
        fed.step(r)
    x = np.concatenate([d.x_train for d in pima_sites.values()])
    y = np.concatenate([d.y_train for d in pima_sites.values()]).astype(np.float64)
    mean, std = np.nanmean(x, axis=0), np.nanstd(x, axis=0)
    xs = np.nan_to_num((x - mean) / std, nan=0.0).astype(np.float32).astype(np.float64)
    w, b = _numpy_logreg_gd(xs, y, w0, b0, lr, rounds)
    np.testing.assert_allclose(fed.weights["net.0.weight"].ravel(), w, atol=2e-5)
    assert float(fed.weights["net.0.bias"][0]) == pytest.approx(b, abs=2e-5)


def test_lost_node_is_reported_and_the_round_goes_on(pima_sites):
    transport = _transport(pima_sites)
    cfg = FederationConfig(study_id="drop", rounds=3, evaluate_every=0)
    fed = Federation(cfg, make_strategy("fedavg", min_fit_nodes=3), transport)
    fed.setup()
    fed.step(1)
    transport.disconnect("site-2")
    rec = fed.step(2)
    assert rec.nodes == ["site-0", "site-1", "site-3"]
    assert rec.failures == {"site-2": "no reply before the round timeout"}
    transport.disconnect("site-1")
    with pytest.raises(ProtocolError, match="round 3: 2 of 4 sites returned an update, 3 needed"):
        fed.step(3)


def test_personalised_layers_stay_at_the_site(pima_sites):
    cfg = FederationConfig(
        study_id="fedbn",
        rounds=2,
        model=ModelSpec(hidden=(8,), batchnorm=True),
        local_layers=("net.1.",),
        evaluate_every=0,
    )
    transport = _transport(pima_sites)
    fed = Federation(cfg, make_strategy("fedavg"), transport)
    result = fed.run()
    # The global batch-norm layer never moves: only the sites hold (and use) their own.
    assert np.all(result.weights["net.1.weight"] == 1.0)
    assert np.all(result.weights["net.1.running_mean"] == 0.0)
    assert result.evaluation.pooled["auc"] > 0.7
