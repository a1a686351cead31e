"""Shamir sharing over GF(2^8): every t-subset reconstructs, fewer do not, errors are clear."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cordiale.core.errors import CryptoError
from cordiale.crypto.shamir import MAX_SHARES, Share, combine_at, combine_shares, split_secret

SECRET = bytes(range(100, 132))


@pytest.mark.parametrize("n", range(1, 7))
def test_every_subset_of_at_least_t_shares_reconstructs(n):
    for t in range(1, n + 1):
        shares = split_secret(SECRET, t, n)
        assert [s.index for s in shares] == list(range(1, n + 1))
        for size in range(t, n + 1):
            for subset in itertools.combinations(shares, size):
                assert combine_shares(list(subset), t) == SECRET
        for subset in itertools.combinations(shares, t - 1):
            with pytest.raises(CryptoError, match=f"at least {t} needed"):
                combine_shares(list(subset), t)


def test_fewer_than_t_shares_give_a_wrong_secret():
    shares = split_secret(SECRET, 4, 6)
    for subset in itertools.combinations(shares, 3):
        assert combine_shares(list(subset), 3) != SECRET


def test_t_minus_one_shares_are_independent_of_the_secret():
    # For t = 2 a single share byte is uniform whatever the secret byte: chi-square on 256 bins.
    for secret in (b"\x00", b"\xff"):
        values = np.array([split_secret(secret, 2, 3)[0].value[0] for _ in range(2560)])
        counts = np.bincount(values, minlength=256)
        chi2 = float(((counts - 10.0) ** 2 / 10.0).sum())
        assert chi2 < 400  # 255 degrees of freedom: p ≈ 1e-8 at 400


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_random_subsets_reconstruct(data):
    secret = data.draw(st.binary(min_size=1, max_size=64))
    n = data.draw(st.integers(1, 20))
    t = data.draw(st.integers(1, n))
    shares = split_secret(secret, t, n)
    subset = data.draw(st.lists(st.sampled_from(shares), min_size=t, max_size=n, unique=True))
    assert combine_shares(subset, t) == secret


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_combine_at_rebuilds_many_secrets_shared_at_the_same_points(data):
    n = data.draw(st.integers(1, 12), label="n")
    t = data.draw(st.integers(1, n), label="t")
    length = data.draw(st.integers(1, 40), label="length")
    secrets = data.draw(
        st.lists(st.binary(min_size=length, max_size=length), min_size=1, max_size=6)
    )
    points = sorted(data.draw(st.sets(st.integers(1, n), min_size=t, max_size=t)))
    shared = [{s.index: s for s in split_secret(secret, t, n)} for secret in secrets]
    values = np.array(
        [[list(by_index[x].value) for x in points] for by_index in shared], dtype=np.uint8
    )
    rebuilt = combine_at(points, values)
    assert rebuilt.shape == (len(secrets), length) and rebuilt.dtype == np.uint8
    assert [row.tobytes() for row in rebuilt] == secrets
    for by_index, row in zip(shared, rebuilt, strict=True):
        assert combine_shares([by_index[x] for x in points], t) == row.tobytes()


def test_combine_at_refuses_bad_points_and_values():
    values = np.zeros((2, 3, 4), dtype=np.uint8)
    for points in ([1, 1, 2], [0, 1, 2], [1, 2, MAX_SHARES + 1], [1, 2, True], [1, 2, 3.0]):
        with pytest.raises(CryptoError, match="share indices must be distinct integers"):
            combine_at(points, values)
    for bad in (values.astype(np.int64), values[0], np.zeros((2, 2, 4), dtype=np.uint8)):
        with pytest.raises(CryptoError, match=r"share values must be uint8 of shape"):
            combine_at([1, 2, 3], bad)


def test_corrupted_share_is_detected_when_more_than_t_are_given():
    shares = split_secret(SECRET, 3, 5)
    bad = Share(shares[4].index, bytes(a ^ 1 for a in shares[4].value))
    with pytest.raises(CryptoError, match=r"inconsistent: shares \[5\]"):
        combine_shares([*shares[:4], bad], 3)
    other = split_secret(os.urandom(32), 3, 5)
    with pytest.raises(CryptoError, match="inconsistent"):
        combine_shares([*shares[:3], other[3]], 3)


def test_duplicate_and_invalid_indices_are_refused():
    shares = split_secret(SECRET, 2, 3)
    with pytest.raises(CryptoError, match=r"duplicate share indices \[1\]"):
        combine_shares([shares[0], shares[0], shares[1]], 2)
    for index in (0, 256, -1):
        with pytest.raises(CryptoError, match="index"):
            Share(index, b"\x01")
    with pytest.raises(CryptoError, match="integer"):
        Share(True, b"\x01")  # type: ignore[arg-type]
    with pytest.raises(CryptoError, match="different lengths"):
        combine_shares([shares[0], Share(2, b"\x01")], 2)
    with pytest.raises(CryptoError, match="Share objects"):
        combine_shares([shares[0], shares[1].to_bytes()], 2)  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("secret", "t", "n", "match"),
    [
        (b"", 1, 1, "non-empty"),
        (SECRET, 0, 3, "threshold"),
        (SECRET, 4, 3, "threshold"),
        (SECRET, 2, 0, "number of shares"),
        (SECRET, 2, MAX_SHARES + 1, "number of shares"),
    ],
)
def test_bad_parameters_are_refused(secret, t, n, match):
    with pytest.raises(CryptoError, match=match):
        split_secret(secret, t, n)


def test_bad_threshold_in_combine():
    with pytest.raises(CryptoError, match="positive integer"):
        combine_shares(split_secret(SECRET, 1, 2), 0)


def test_share_bytes_round_trip():
    for share in split_secret(SECRET, 3, 5):
        assert Share.from_bytes(share.to_bytes()) == share
    with pytest.raises(CryptoError):
        Share.from_bytes(b"\x01")
    with pytest.raises(CryptoError):
        Share.from_bytes(b"\x00\x01")


def test_maximum_number_of_shares():
    shares = split_secret(SECRET, 128, MAX_SHARES)
    assert combine_shares(shares[-128:], 128) == SECRET
    shares = split_secret(SECRET, 51, 100)  # a complete-graph round at 100 sites
    assert combine_shares(shares, 51) == SECRET
