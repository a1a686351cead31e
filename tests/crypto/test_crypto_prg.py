"""Mask expansion: deterministic, exact length, the AES-256-CTR keystream (known answers)."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

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


def _aes_block(key: bytes, block: bytes) -> bytes:
    return Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(block)


def test_aes_known_answers():
    # FIPS-197 appendix C.3 (AES-256) and the AESAVS zero-key, zero-block answer
    key = bytes(range(32))
    plain = bytes.fromhex("00112233445566778899aabbccddeeff")
    assert _aes_block(key, plain).hex() == "8ea2b7ca516745bfeafc49904b496089"
    assert _aes_block(bytes(32), bytes(16)).hex() == "dc95c078a2408989ad48a21492842087"


@pytest.mark.parametrize("bits", [32, 64])
def test_the_mask_is_the_aes_256_ctr_keystream_from_counter_2(bits):
    """Rebuilt block by block from AES itself (checked above): counter blocks 0^96 || 2, 3, ..."""
    blocks = b"".join(_aes_block(SEED, bytes(12) + (2 + i).to_bytes(4, "big")) for i in range(7))
    words = 28 if bits == 32 else 14  # 7 blocks
    expected = np.frombuffer(blocks[: words * bits // 8], dtype=f"<u{bits // 8}")
    assert np.array_equal(expand_mask(SEED, words, bits), expected.astype(ring_dtype(bits)))


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
