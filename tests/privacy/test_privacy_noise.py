"""Gaussian mechanism: central and distributed noise, dropouts, reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from cordiale.core.errors import ConfigError, PrivacyError
from cordiale.privacy import (
    add_gaussian_noise,
    central_noise_std,
    node_noise_std,
    realised_noise_multiplier,
)

Z, C = 1.3, 0.7
SAMPLES = 200_000  # coordinates per node: the variance is estimated to about 0.3 %


def _sum_of_shares(*, num_nodes: int, survivors: int, min_survivors: int, seed: int) -> np.ndarray:
    """Each node adds its noise share to a zero update; the surviving shares are summed."""
    std = node_noise_std(
        noise_multiplier=Z, clip_norm=C, num_nodes=num_nodes, min_survivors=min_survivors
    )
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(num_nodes)]
    zero = {"w": np.zeros(SAMPLES)}
    shares = [add_gaussian_noise(zero, std=std, rng=rng)["w"] for rng in rngs]
    return np.sum(shares[:survivors], axis=0)


def _variance_p_value(sample: np.ndarray, variance: float) -> float:
    """Two-sided chi-square test of H0: the sample is i.i.d. with this variance."""
    dof = sample.size - 1
    statistic = dof * sample.var(ddof=1) / variance
    tail = stats.chi2.cdf(statistic, dof)
    return 2 * min(tail, 1 - tail)


def _mean_is_zero(sample: np.ndarray, variance: float) -> bool:
    return abs(sample.mean()) < 4 * math.sqrt(variance / sample.size)


def test_node_shares_add_up_to_the_central_std():
    # Execute
    central = central_noise_std(noise_multiplier=Z, clip_norm=C)
    share = node_noise_std(noise_multiplier=Z, clip_norm=C, num_nodes=9)

    # Assert
    assert central == pytest.approx(Z * C)
    assert share * 3 == pytest.approx(central)


def test_sum_of_all_shares_has_the_central_variance_and_mean_zero():
    # Execute
    total = _sum_of_shares(num_nodes=7, survivors=7, min_survivors=7, seed=2024)

    # Assert
    variance = (Z * C) ** 2
    assert _variance_p_value(total, variance) > 1e-3
    assert total.var() == pytest.approx(variance, rel=0.02)
    assert _mean_is_zero(total, variance)


def test_a_wrong_variance_is_detected():
    # The same test rejects a sum that is 5 % short of the variance (the test has power).
    total = _sum_of_shares(num_nodes=7, survivors=7, min_survivors=7, seed=2024)
    assert _variance_p_value(total, 1.05 * (Z * C) ** 2) < 1e-6


def test_shares_sized_for_min_survivors_cover_dropouts():
    # Prepare: 7 nodes, shares sized for at least 5 survivors; exactly 5 survive.
    total = _sum_of_shares(num_nodes=7, survivors=5, min_survivors=5, seed=11)
    everyone = _sum_of_shares(num_nodes=7, survivors=7, min_survivors=5, seed=11)

    # Assert: 5 survivors carry the full variance; 7 carry 7/5 of it (more noise, never less).
    variance = (Z * C) ** 2
    assert _variance_p_value(total, variance) > 1e-3
    assert _variance_p_value(everyone, variance * 7 / 5) > 1e-3
    assert _mean_is_zero(everyone, variance * 7 / 5)
    assert realised_noise_multiplier(noise_multiplier=Z, min_survivors=5, survivors=7) == (
        pytest.approx(Z * math.sqrt(7 / 5))
    )


def test_too_few_survivors_is_a_privacy_error():
    with pytest.raises(PrivacyError, match="only 4 node") as info:
        realised_noise_multiplier(noise_multiplier=Z, min_survivors=5, survivors=4)
    assert "4" not in info.value.public_message


def test_noise_is_reproducible_and_keeps_dtypes():
    # Prepare
    update = {"w": np.ones((3, 4), dtype=np.float32), "b": np.zeros(2)}

    # Execute
    first = add_gaussian_noise(update, std=0.5, rng=np.random.default_rng(3))
    again = add_gaussian_noise(update, std=0.5, rng=np.random.default_rng(3))
    other = add_gaussian_noise(update, std=0.5, rng=np.random.default_rng(4))

    # Assert
    for name in update:
        np.testing.assert_array_equal(first[name], again[name])
        assert not np.array_equal(first[name], other[name])
        assert first[name].dtype == update[name].dtype
        assert first[name].shape == update[name].shape
    np.testing.assert_array_equal(update["w"], np.ones((3, 4)))  # input untouched


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_nodes": 0}, "num_nodes must be >= 1"),
        ({"num_nodes": 3, "min_survivors": 4}, "min_survivors must be at most num_nodes=3"),
        ({"num_nodes": 3, "min_survivors": 0}, "min_survivors must be >= 1"),
        ({"num_nodes": 3, "noise_multiplier": -1.0}, "noise_multiplier must be > 0"),
    ],
)
def test_invalid_noise_parameters_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        node_noise_std(**{"noise_multiplier": Z, "clip_norm": C, **kwargs})


def test_rng_must_be_a_generator():
    with pytest.raises(ConfigError, match=r"rng must be a numpy\.random\.Generator"):
        add_gaussian_noise({"w": np.zeros(2)}, std=1.0, rng=42)  # type: ignore[arg-type]
