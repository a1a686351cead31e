import numpy as np
import pytest

from cordiale.core.errors import ConfigError, ProtocolError, UnknownNameError
from cordiale.core.records import ArrayRecord
from cordiale.learn.aggregate import weighted_mean
from cordiale.learn.strategies import STRATEGIES, FitResult, make_strategy


def _results(rng, n=3):
    return [
        FitResult(
            f"s{i}", ArrayRecord({"w": rng.normal(size=4), "b": rng.normal(size=1)}), 10 * (i + 1)
        )
        for i in range(n)
    ]


def test_fedavg_is_the_example_weighted_mean():
    rng = np.random.default_rng(0)
    current = ArrayRecord({"w": np.ones(4), "b": np.zeros(1)})
    res = _results(rng)
    new = make_strategy("fedavg").aggregate_fit(1, current, res)
    manual = sum(r.num_examples * r.update["w"] for r in res) / sum(r.num_examples for r in res)
    np.testing.assert_allclose(new["w"], 1 + manual)


def _adam_reference(deltas, eta, b1, b2, tau, yogi=False, adagrad=False):
    """Reddi et al. 2021, Algorithm 2, written out for a single vector."""
    x = np.zeros_like(deltas[0])
    m = np.zeros_like(x)
    v = np.full_like(x, tau**2)
    for d in deltas:
        m = b1 * m + (1 - b1) * d
        if adagrad:
            v = v + d**2
        elif yogi:
            v = v - (1 - b2) * d**2 * np.sign(v - d**2)
        else:
            v = b2 * v + (1 - b2) * d**2
        x = x + eta * m / (np.sqrt(v) + tau)
    return x


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_adaptive_strategies_follow_reddi_et_al(name):
    rng = np.random.default_rng(2)
    deltas = [rng.normal(size=5) for _ in range(6)]
    strat = make_strategy(name, eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
    w = ArrayRecord({"w": np.zeros(5)})
    for r, d in enumerate(deltas, start=1):
        w = strat.aggregate_fit(r, w, [FitResult("a", ArrayRecord({"w": d}), 5)])
    ref = _adam_reference(
        deltas, 0.1, 0.9, 0.99, 1e-3, yogi=name == "fedyogi", adagrad=name == "fedadagrad"
    )
    np.testing.assert_allclose(w["w"], ref, rtol=1e-10)


def test_strategy_state_round_trips_through_checkpoint():
    rng = np.random.default_rng(3)
    for name in ("fedavgm", "fedadam"):
        a, b = make_strategy(name), make_strategy(name)
        w = ArrayRecord({"w": np.zeros(4), "b": np.zeros(1)})
        w = a.aggregate_fit(1, w, _results(rng))
        b.load_state(a.state())
        res = _results(rng)
        assert a.aggregate_fit(2, w, res).equals(b.aggregate_fit(2, w, res))


def test_fedavgm_accumulates_momentum():
    s = make_strategy("fedavgm", server_momentum=0.5)
    w = ArrayRecord({"w": np.zeros(1)})
    for r in (1, 2):
        w = s.aggregate_fit(r, w, [FitResult("a", ArrayRecord({"w": np.ones(1)}), 1)])
    assert w["w"][0] == pytest.approx(1 + 1.5)


def test_fedprox_sends_mu_to_nodes():
    assert make_strategy("fedprox", proximal_mu=0.3).fit_config(1)["train.proximal_mu"] == 0.3


def test_registry_errors_list_valid_choices():
    assert set(STRATEGIES) == {"fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"}
    with pytest.raises(UnknownNameError, match="fedadagrad, fedadam, fedavg"):
        make_strategy("scaffold")
    with pytest.raises(ConfigError, match=r"does not take momentum; it takes: .*eta"):
        make_strategy("fedadam", momentum=0.9)


def test_aggregation_refuses_mismatched_updates():
    with pytest.raises(ProtocolError, match="different names or shapes"):
        weighted_mean([ArrayRecord({"w": np.zeros(2)}), ArrayRecord({"w": np.zeros(3)})], [1, 1])
    with pytest.raises(ProtocolError, match="positive sum"):
        weighted_mean([ArrayRecord({"w": np.zeros(2)})], [0])
