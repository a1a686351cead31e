"""Fixed-point ring encoding: round trip within the documented bound, sums, width selection."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cordiale.core.errors import CryptoError
from cordiale.crypto.fixedpoint import (
    FixedPointCodec,
    choose_bits,
    decode_weighted,
    encode_weighted,
)

CLIPS = st.sampled_from([0.5, 1.0, 3.0, 100.0])
FRAC_BITS = st.integers(0, 20)


@settings(max_examples=50, deadline=None)
@given(
    clip=CLIPS,
    f=FRAC_BITS,
    bits=st.sampled_from([32, 64]),
    stochastic=st.booleans(),
    data=st.data(),
)
def test_round_trip_within_bound(clip, f, bits, stochastic, data):
    codec = FixedPointCodec(clip=clip, frac_bits=f, bits=bits, stochastic=stochastic)
    x = data.draw(arrays(np.float64, st.integers(1, 50), elements=st.floats(-2 * clip, 2 * clip)))
    words = codec.encode(x, rng=np.random.default_rng(0))
    assert words.dtype == codec.dtype and words.shape == x.shape
    error = np.abs(codec.decode(words) - np.clip(x, -clip, clip))
    assert error.max() <= codec.quantisation_bound(1)
    if not stochastic:
        assert codec.quantisation_bound(1) == 2.0 ** -(f + 1)


@settings(max_examples=40, deadline=None)
@given(
    clip=CLIPS,
    f=st.integers(4, 20),
    n=st.integers(1, 30),
    stochastic=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_ring_sum_decodes_to_the_sum_within_n_times_the_bound(clip, f, n, stochastic, seed):
    bits = choose_bits(n, clip, f)
    codec = FixedPointCodec(clip=clip, frac_bits=f, bits=bits, stochastic=stochastic)
    rng = np.random.default_rng(seed)
    xs = rng.uniform(-clip, clip, size=(n, 20))
    xs[0, :3] = [clip, -clip, 0.0]  # extremes included
    total = np.zeros(20, dtype=codec.dtype)
    for x in xs:
        total += codec.encode(x, rng=rng)
    assert np.abs(codec.decode(total) - xs.sum(axis=0)).max() <= codec.quantisation_bound(n)


def test_clipping_and_infinities():
    codec = FixedPointCodec(clip=1.0, frac_bits=10)
    decoded = codec.decode(codec.encode(np.array([5.0, -5.0, np.inf, -np.inf, 0.25])))
    assert decoded.tolist() == [1.0, -1.0, 1.0, -1.0, 0.25]
    with pytest.raises(CryptoError, match="NaN"):
        codec.encode(np.array([0.0, np.nan]))


def test_negative_values_use_twos_complement():
    codec32 = FixedPointCodec(clip=1.0, frac_bits=0, bits=32)
    assert codec32.encode(np.array([-1.0]))[0] == 2**32 - 1
    codec64 = FixedPointCodec(clip=1.0, frac_bits=0, bits=64)
    assert codec64.encode(np.array([-1.0]))[0] == 2**64 - 1
    assert codec64.decode(codec64.encode(np.array([-1.0, 1.0]))).tolist() == [-1.0, 1.0]


def test_stochastic_rounding_is_unbiased():
    codec = FixedPointCodec(clip=1.0, frac_bits=2, stochastic=True)
    x = np.full(40_000, 0.1)  # between the grid points 0 and 0.25
    decoded = codec.decode(codec.encode(x, rng=np.random.default_rng(1)))
    assert set(np.unique(decoded)) == {0.0, 0.25}
    assert abs(decoded.mean() - 0.1) < 0.005
    deterministic = FixedPointCodec(clip=1.0, frac_bits=2).decode(
        FixedPointCodec(clip=1.0, frac_bits=2).encode(x)
    )
    assert set(np.unique(deterministic)) == {0.0}


def test_width_selection_and_capacity_are_tight():
    codec = FixedPointCodec(clip=1.0, frac_bits=16, bits=32)
    capacity = codec.capacity()
    assert capacity == (2**31 - 1) // 2**16
    assert choose_bits(capacity, 1.0, 16) == 32
    assert choose_bits(capacity + 1, 1.0, 16) == 64
    # The bound is real: one input more than the capacity, all at +clip, wraps in 32 bits.
    total = np.zeros(1, dtype=np.uint32)
    for _ in range(capacity + 1):
        total += codec.encode(np.array([1.0]))
    assert codec.decode(total)[0] < 0
    assert choose_bits(10, 1.0, 16, max_weight=2**31) == 64
    with pytest.raises(CryptoError, match="overflow even a 64-bit ring"):
        choose_bits(2**40, 1000.0, 20)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clip": 0.0, "frac_bits": 8},
        {"clip": float("inf"), "frac_bits": 8},
        {"clip": 1.0, "frac_bits": -1},
        {"clip": 1.0, "frac_bits": 53},
        {"clip": 1.0, "frac_bits": 8, "bits": 16},
        {"clip": 2.0**20, "frac_bits": 16, "bits": 32},
    ],
)
def test_bad_codec_parameters(kwargs):
    with pytest.raises(CryptoError):
        FixedPointCodec(**kwargs)


@pytest.mark.parametrize("count", [0, -3, True])
def test_choose_bits_needs_a_positive_count(count):
    with pytest.raises(CryptoError, match="positive integer"):
        choose_bits(count, 1.0, 8)


def test_choose_bits_reports_invalid_parameters_as_such():
    with pytest.raises(CryptoError, match=r"frac_bits lies in 0\.\.52"):
        choose_bits(3, 1.0, 60)
    with pytest.raises(CryptoError, match="max_weight"):
        choose_bits(3, 1.0, 8, max_weight=-1)


def test_weighted_encoding_sums_weights_exactly():
    codec = FixedPointCodec(clip=50.0, frac_bits=16, bits=choose_bits(3, 50.0, 16, 1000))
    updates = [np.array([0.5, -0.25]), np.array([0.1, 0.2]), np.array([-0.3, 0.0])]
    weights = [10, 1000, 7]
    total = sum(
        (encode_weighted(codec, w * u / 100, w) for u, w in zip(updates, weights, strict=True)),
        np.zeros(3, dtype=codec.dtype),
    )
    weighted_sum, total_weight = decode_weighted(codec, total)
    assert total_weight == sum(weights)
    expected = sum(w * u / 100 for u, w in zip(updates, weights, strict=True))
    assert np.abs(weighted_sum - expected).max() <= codec.quantisation_bound(3)
    with pytest.raises(CryptoError, match="non-negative integer"):
        encode_weighted(codec, updates[0], -1)
    with pytest.raises(CryptoError, match="does not fit"):
        encode_weighted(codec, updates[0], 2**40)
    with pytest.raises(CryptoError, match="1-D"):
        decode_weighted(codec, np.zeros((2, 2), dtype=codec.dtype))


def test_decode_refuses_words_of_the_wrong_width():
    with pytest.raises(CryptoError, match="dtype"):
        FixedPointCodec(clip=1.0, frac_bits=8).decode(np.zeros(3, dtype=np.uint64))
