"""Clipping: global norm, fixed clipping (properties), adaptive clipping (Andrew et al. 2021)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cordiale.core.errors import ConfigError, PrivacyError
from cordiale.privacy import (
    adaptive_clipping_noise_multiplier,
    clip_update,
    epsilon_for_events,
    global_l2_norm,
    next_clip_norm,
    noised_fraction_below,
)
from cordiale.privacy.accounting import GaussianEvent

_ARRAY = st.sampled_from([np.float32, np.float64]).flatmap(
    lambda dtype: hnp.arrays(
        dtype,
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
        elements=st.floats(-1e6, 1e6, width=32),
    )
)
UPDATES = st.dictionaries(st.sampled_from(["w", "b", "layer.0", "layer.1"]), _ARRAY, max_size=4)


def test_global_norm_is_the_norm_of_the_concatenation():
    # Prepare
    update = {"w": np.array([[3.0, 0.0]], dtype=np.float32), "b": np.array([4.0, 12.0])}

    # Execute / Assert
    assert global_l2_norm(update) == pytest.approx(13.0)
    assert global_l2_norm({}) == 0.0


@settings(max_examples=60, deadline=None)
@given(update=UPDATES, clip_norm=st.floats(1e-3, 1e3))
def test_clipping_bounds_the_norm_and_keeps_direction(update, clip_norm):
    # Prepare
    before = {name: a.copy() for name, a in update.items()}

    # Execute
    clipped, norm = clip_update(update, clip_norm=clip_norm)

    # Assert
    assert norm == global_l2_norm(before)
    assert global_l2_norm(clipped) <= clip_norm
    assert {n: a.dtype for n, a in clipped.items()} == {n: a.dtype for n, a in update.items()}
    for name, array in update.items():
        np.testing.assert_array_equal(array, before[name])  # input untouched
        if norm <= clip_norm:
            np.testing.assert_array_equal(clipped[name], array)  # unchanged below the bound
        else:
            expected = array.astype(np.float64) * (clip_norm / norm)
            np.testing.assert_allclose(clipped[name], expected, rtol=1e-5, atol=1e-6 * clip_norm)


def test_clipping_scales_an_update_outside_the_ball_onto_its_surface():
    # Execute
    clipped, norm = clip_update({"w": np.array([30.0, 40.0])}, clip_norm=1.0)

    # Assert
    assert norm == 50.0
    np.testing.assert_allclose(clipped["w"], [0.6, 0.8])
    assert 1.0 - 1e-9 < global_l2_norm(clipped) <= 1.0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_update_is_refused(bad):
    with pytest.raises(PrivacyError, match="NaN or infinite") as info:
        clip_update({"w": np.array([1.0, bad])}, clip_norm=1.0)
    assert info.value.public_message == "the update contains non-finite values"


@pytest.mark.parametrize(
    ("update", "clip_norm", "message"),
    [
        ({"w": np.array([1, 2])}, 1.0, "'w' must be a floating numpy array; got int64"),
        ({"w": [1.0, 2.0]}, 1.0, "'w' must be a floating numpy array; got list"),
        ([np.zeros(2)], 1.0, "an update must be a mapping"),
        ({"w": np.zeros(2)}, 0.0, "clip_norm must be > 0"),
        ({"w": np.zeros(2)}, np.inf, "clip_norm must be finite"),
    ],
)
def test_invalid_clipping_inputs_are_config_errors(update, clip_norm, message):
    with pytest.raises(ConfigError, match=message):
        clip_update(update, clip_norm=clip_norm)


@settings(max_examples=50, deadline=None)
@given(
    clip_norm=st.floats(1e-3, 1e3),
    fraction=st.floats(-0.5, 1.5),
    quantile=st.floats(0.0, 1.0),
)
def test_next_clip_norm_moves_against_the_excess_fraction(clip_norm, fraction, quantile):
    # Execute
    new = next_clip_norm(
        clip_norm=clip_norm, noised_fraction_below=fraction, target_quantile=quantile
    )

    # Assert: too many clients under the bound -> shrink; too few -> grow; geometric step.
    if fraction > quantile + 1e-9:
        assert new < clip_norm
    elif fraction < quantile - 1e-9:
        assert new > clip_norm
    assert new / clip_norm == pytest.approx(np.exp(-0.2 * (fraction - quantile)))


@pytest.mark.parametrize("start", [0.01, 100.0])
def test_adaptive_clipping_converges_to_the_target_quantile(start):
    # Prepare: 100 clients a round, update norms log-normal around 1, target the median.
    rng = np.random.default_rng(7)
    clip_norm, clients, target = start, 100, 0.5

    # Execute
    for _ in range(400):
        norms = rng.lognormal(mean=0.0, sigma=0.5, size=clients)
        fraction = noised_fraction_below(
            norms, clip_norm=clip_norm, count_noise_std=clients / 20, rng=rng
        )
        clip_norm = next_clip_norm(
            clip_norm=clip_norm, noised_fraction_below=fraction, target_quantile=target
        )

    # Assert: the bound sits near the median of the norm distribution (exp(0) = 1).
    below = np.mean(rng.lognormal(mean=0.0, sigma=0.5, size=100_000) <= clip_norm)
    assert below == pytest.approx(target, abs=0.1)


def test_noised_fraction_without_noise_is_the_exact_fraction():
    fraction = noised_fraction_below(
        [0.5, 1.0, 2.0, 3.0], clip_norm=1.0, count_noise_std=0.0, rng=np.random.default_rng(0)
    )
    assert fraction == 0.5


def test_adaptive_noise_split_costs_exactly_one_gaussian_query():
    # Prepare: the study's multiplier z, the count's noise std (the paper's m / 20 for m = 100).
    z, count_std = 1.1, 5.0

    # Execute
    z_updates = adaptive_clipping_noise_multiplier(noise_multiplier=z, count_noise_std=count_std)

    # Assert: updates at z_updates plus the count (sensitivity 1/2) compose to one query at z.
    pair = [
        GaussianEvent(noise_multiplier=z_updates, sampling_rate=1.0, steps=10),
        GaussianEvent(noise_multiplier=2 * count_std, sampling_rate=1.0, steps=10),
    ]
    single = [GaussianEvent(noise_multiplier=z, sampling_rate=1.0, steps=10)]
    assert z_updates > z
    assert epsilon_for_events(pair, delta=1e-5) == pytest.approx(
        epsilon_for_events(single, delta=1e-5), rel=1e-9
    )


def test_adaptive_noise_split_refuses_too_little_count_noise():
    with pytest.raises(ConfigError, match=r"must exceed 0\.5"):
        adaptive_clipping_noise_multiplier(noise_multiplier=1.0, count_noise_std=0.5)
