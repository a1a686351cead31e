"""Differential privacy wired into studies: the wrapper, the node's step, the reported epsilon.

Noise comes from OS entropy (the hub must not predict it), so noise is checked statistically and
exact comparisons use a negligible noise multiplier. Every statistical check has a false-alarm
probability below 1e-6.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from cordiale.core.errors import ConfigError, ProtocolError
from cordiale.core.messages import Content, Envelope, Message
from cordiale.core.records import ArrayRecord, ConfigRecord
from cordiale.learn.dp import ClientDP, DPSettings, privatise_update, release_epsilon
from cordiale.learn.models import ModelSpec, build_model, get_weights
from cordiale.learn.secure_aggregation import SecureAggregationConfig
from cordiale.learn.strategies import FitResult, make_strategy
from cordiale.node.runtime import NodeRuntime
from cordiale.privacy import epsilon, global_l2_norm, noise_multiplier_for
from cordiale.sim.runner import DataSource, SimulationSpec, simulate

ALPHA = 1e-6


def _variance_p(sample: np.ndarray, variance: float) -> float:
    dof = sample.size - 1
    tail = stats.chi2.cdf(dof * sample.var(ddof=1) / variance, dof)
    return 2 * min(tail, 1 - tail)


def _config(**dp: object) -> ConfigRecord:
    base = {"dp.mode": "client", "dp.delta": 1e-5, "dp.clip_norm": 1.0, "dp.rounds": 10}
    return ConfigRecord({**base, **dp})


def test_node_clips_its_update_and_adds_a_share_of_the_right_variance():
    big = ArrayRecord({"w": np.full(200_000, 0.5, dtype=np.float64)})  # norm ~224
    cfg = _config(**{"dp.noise": "distributed", "dp.noise_multiplier": 2.0, "dp.min_nodes": 4})

    sent, norm = privatise_update(big, cfg)

    assert norm == pytest.approx(0.5 * np.sqrt(200_000))
    # the clipped update is uniform 1/sqrt(n); what is left is the noise share
    noise = sent["w"] - 1.0 / np.sqrt(200_000)
    assert _variance_p(noise, (2.0 * 1.0) ** 2 / 4) > ALPHA
    assert _variance_p(noise, 1.05 * (2.0 * 1.0) ** 2 / 4) < ALPHA  # the test has power


def test_central_mode_sends_the_clipped_update_only():
    update = ArrayRecord({"a": np.ones(10), "b": np.full(5, 3.0)})
    sent, _ = privatise_update(update, _config(**{"dp.noise": "central"}))
    assert global_l2_norm(dict(sent)) == pytest.approx(1.0, rel=1e-9)
    ratio = sent["b"] / update["b"]
    np.testing.assert_allclose(ratio, sent["a"][0] / 1.0)  # a scaling, not a distortion


def test_wrapper_averages_with_equal_weights_and_adds_central_noise():
    z, clip, n = 3.0, 1.0, 4
    inner = make_strategy("fedavg", min_fit_nodes=n)
    dp = ClientDP(inner, DPSettings(mode="client", noise_multiplier=z, noise="central"), rounds=5)
    updates = [np.full(100_000, v / np.sqrt(100_000)) for v in (0.1, 0.2, 0.3, 0.4)]
    results = [
        FitResult(f"s{i}", ArrayRecord({"w": u}), num_examples=10 ** (i + 1))
        for i, u in enumerate(updates)
    ]
    current = ArrayRecord({"w": np.zeros(100_000)})

    new = dp.aggregate_fit(1, current, results)

    # equal weights, not example counts: the mean of the clipped updates, plus N(0, (zC/n)^2)
    noise = new["w"] - np.mean(updates, axis=0)
    assert _variance_p(noise, (z * clip / n) ** 2) > ALPHA


def test_wrapper_refuses_an_update_above_the_clip_norm():
    dp = ClientDP(
        make_strategy("fedavg"),
        DPSettings(mode="client", noise_multiplier=1.0, noise="central"),
        rounds=1,
    )
    results = [FitResult("rogue", ArrayRecord({"w": np.full(4, 10.0)}), num_examples=5)]
    with pytest.raises(ProtocolError, match="rogue sent an update of norm"):
        dp.aggregate_fit(1, ArrayRecord({"w": np.zeros(4)}), results)


def test_a_target_epsilon_becomes_the_accountants_noise_multiplier():
    settings = DPSettings(mode="client", epsilon=2.0, delta=1e-5)
    z = settings.client_noise_multiplier(rounds=30)
    assert z == noise_multiplier_for(target_epsilon=2.0, delta=1e-5, sampling_rate=1.0, steps=30)
    assert epsilon(noise_multiplier=z, sampling_rate=1.0, steps=30, delta=1e-5) <= 2.0
    with pytest.raises(ConfigError, match="exactly one"):
        DPSettings(mode="client", epsilon=1.0, noise_multiplier=1.0)


def test_node_accounting_composes_its_releases():
    cfg = _config(**{"dp.noise_multiplier": 1.1})
    eps = [release_epsilon(cfg, k, num_examples=100) for k in (1, 5, 10)]
    assert eps == [
        pytest.approx(epsilon(noise_multiplier=1.1, sampling_rate=1.0, steps=k, delta=1e-5))
        for k in (1, 5, 10)
    ]
    assert eps[0] < eps[1] < eps[2] < 5 * eps[0]  # composition, tighter than adding epsilons


def _spec(**kw: object) -> SimulationSpec:
    base = dict(
        source=DataSource(dataset="pima"),
        sites=4,
        rounds=6,
        model=ModelSpec(kind="logreg"),
        strategy_params={"min_fit_nodes": 4},
        pooled=False,
    )
    return SimulationSpec(**{**base, **kw})  # type: ignore[arg-type]


def test_a_client_dp_study_reports_the_epsilon_each_site_spent(pima_sites):
    dp = DPSettings(mode="client", epsilon=4.0, clip_norm=0.5)
    result = simulate(_spec(dp=dp), sites=pima_sites)
    target_z = dp.client_noise_multiplier(6)
    for r in result.federated.history:
        expected = epsilon(noise_multiplier=target_z, sampling_rate=1.0, steps=r.round, delta=1e-5)
        assert r.privacy == {s: pytest.approx(expected) for s in pima_sites}
    assert max(result.federated.history[-1].privacy.values()) <= 4.0


@pytest.mark.parametrize(
    "dp",
    [
        DPSettings(mode="client", epsilon=8.0, clip_norm=0.5),
        DPSettings(mode="sample", epsilon=8.0, clip_norm=1.0),
    ],
    ids=["client", "sample"],
)
def test_a_dp_study_never_releases_the_training_loss(pima_sites, dp):
    """The loss is computed from the raw rows, outside the accounting: DP replies omit it."""
    study = _spec(dp=dp, rounds=2)
    ds = pima_sites["site-0"]
    node = NodeRuntime("site-0", ds)
    task = Message(
        Envelope(study_id="s", round=1, stage="train", sender="hub", recipient="site-0"),
        Content(
            arrays={"weights": get_weights(build_model(study.model, ds.num_features, seed=0))},
            config=ConfigRecord(
                {
                    **study.model.to_config(),
                    **study.train.to_config(),
                    **dp.to_config(2, 4),
                    "seed": 1,
                }
            ),
        ),
    )
    reply = node.handle(task).content
    assert reply.error is None and "update" in reply.arrays
    assert "train_loss" not in reply.metrics and "privacy.epsilon" in reply.metrics

    result = simulate(study, sites=pima_sites)
    assert all(math.isnan(r.train_loss) for r in result.federated.history)
    assert all(r["train_loss"] is None for r in result.to_json()["rounds"])
    no_dp = simulate(_spec(rounds=2), sites=pima_sites)  # the same study without DP reports it
    assert all(math.isfinite(r.train_loss) for r in no_dp.federated.history)


def test_secure_aggregation_with_distributed_noise_equals_the_plain_dp_mean(pima_sites):
    # a negligible noise multiplier makes the comparison exact up to the fixed-point resolution
    dp = DPSettings(mode="client", noise_multiplier=1e-9, clip_norm=0.5)
    plain = simulate(_spec(dp=dp, seed=3), sites=pima_sites)
    secure = simulate(
        _spec(dp=dp, seed=3, secure_aggregation=SecureAggregationConfig()), sites=pima_sites
    )
    for name, value in plain.federated.weights.items():
        np.testing.assert_allclose(secure.federated.weights[name], value, atol=1e-4)
    assert secure.federated.history[-1].privacy.keys() == set(pima_sites)
    assert all(math.isnan(r.train_loss) for r in secure.federated.history)  # loss slot empty


def _secure_spec(**privacy):
    return {
        "study": {"name": "n", "purpose": "p", "sites": ["a", "b"], "rounds": 2},
        "data": {
            "dataset": "pima",
            "contract": {
                "name": "c",
                "fields": [{"name": "x", "type": "float"}],
                "target": {"name": "y", "positive": ["1"]},
            },
        },
        "privacy": {"secure_aggregation": True, **privacy},
    }


def test_the_study_spec_sets_how_long_secure_aggregation_keys_last():
    from cordiale.learn.study import StudySpec

    spec = StudySpec.parse(_secure_spec(secagg_rekey_every=4, secagg_neighbours=1))
    secagg = spec.federation_config("s").secure_aggregation
    assert (secagg.rekey_every, secagg.degree) == (4, 1)
    default = StudySpec.parse(_secure_spec()).federation_config("s").secure_aggregation
    assert default.rekey_every == 10
    with pytest.raises(ConfigError, match="secagg_rekey_every"):
        StudySpec.parse(_secure_spec(secagg_rekey_every=0))


def test_central_noise_with_secure_aggregation_is_refused_by_the_study_spec():
    from cordiale.learn.study import StudySpec

    raw = _secure_spec(dp="client", epsilon=4.0, noise="central")
    with pytest.raises(ConfigError, match="distributed"):
        StudySpec.parse(raw)
