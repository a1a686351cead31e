"""Mask expansion: deterministic, exact length, ChaCha20 known answer, fast."""

from __future__ import annotations

import time

import numpy as np
import pytest

from cordiale.core.errors import CryptoError
from cordiale.crypto.prg import expand_mask, ring_dtype

SEED = bytes(range(32))


def test_deterministic_per_seed_and_seeds_differ():
    assert np.array_equal(expand_mask(SEED, 1000), expand_mask(SEED, 1000))
    other = expand_mask(bytes(reversed(SEED)), 1000)
    assert np.mean(other == expand_mask(SEED, 1000)) < 0.01


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("length", [0, 1, 3, 17, 1000, 4097])
def test_exact_length_dtype_and_prefix(bits, length):
    mask = expand_mask(SEED, length, bits)
    assert mask.shape == (length,)
    assert mask.dtype == ring_dtype(bits)
    assert mask.flags.writeable
    assert np.array_equal(mask, expand_mask(SEED, length + 5, bits)[:length])


def test_chacha20_known_answer():
    # RFC 8439 (RFC 7539) A.1 test vector 1: all-zero key and nonce, block counter 0.
    keystream = bytes.fromhex("76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7")
    expected32 = np.frombuffer(keystream, dtype="<u4").astype(np.uint32)
    expected64 = np.frombuffer(keystream, dtype="<u8").astype(np.uint64)
    assert np.array_equal(expand_mask(bytes(32), 8, 32), expected32)
    assert np.array_equal(expand_mask(bytes(32), 4, 64), expected64)


@pytest.mark.parametrize("seed", [b"", bytes(31), bytes(33), "x" * 32])
def test_bad_seed_is_refused(seed):
    with pytest.raises(CryptoError, match="seed"):
        expand_mask(seed, 4)


@pytest.mark.parametrize("length", [-1, 2.5, True])
def test_bad_length_is_refused(length):
    with pytest.raises(CryptoError, match="length"):
        expand_mask(SEED, length)


def test_bad_width_is_refused():
    with pytest.raises(CryptoError, match="32 or 64"):
        expand_mask(SEED, 4, 16)


def test_one_million_words_is_fast():
    best = min(_timed(lambda: expand_mask(SEED, 1_000_000)) for _ in range(3))
    assert best < 0.1  # a few ms on an idle core; generous for a shared machine


def _timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start
