"""Deterministic mask expansion: a 32-byte seed into ``n`` uniformly random ring words.

Hand-written for Cordiale's secure aggregation. The pseudo-random generator is AES-256 in counter
mode from the ``cryptography`` package: key = seed, counter blocks ``0^96 || 2, 0^96 || 3, ...``.
It runs as the keystream of a one-shot AES-GCM encryption of zeros under the all-zero 96-bit
nonce (GCM encrypts exactly so; its 16-byte tag is dropped), written straight into a numpy buffer
with ``encrypt_into``: the cheapest way through ``cryptography`` (about 4.5 us for a mask of a
few hundred words, where a ChaCha20 ``Cipher`` object costs 7; a few ms per million 32-bit words
with the AES instructions every current x86 and ARM server has).

Words are read little-endian, so the output is identical on every platform. Each seed must be
used for one mask only (the seeds of secure aggregation are fresh random values or derived per
round and pair of clients, so this holds by construction; both ends of a pair expanding the
same seed get the same mask, which is the point). One GCM stream covers 2**32 - 2 blocks of 16
bytes (64 GiB); longer masks are refused.
"""

from __future__ import annotations

import sys

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cordiale.core.errors import CryptoError

__all__ = ["SEED_BYTES", "expand_mask", "ring_dtype"]

SEED_BYTES = 32
"""Length of a PRG seed (an AES-256 key)."""
_NONCE = bytes(12)
_TAG = 16
_MAX_BYTES = 16 * (2**32 - 2)

# the fast path's dtypes: native little-endian words (a big-endian host takes the general path)
_DTYPES = {32: np.dtype("<u4"), 64: np.dtype("<u8")} if sys.byteorder == "little" else {}


def ring_dtype(bits: int) -> np.dtype[np.unsignedinteger]:
    """The native unsigned numpy dtype of the ring Z_{2^bits}; ``bits`` is 32 or 64."""
    if bits == 32:
        return np.dtype(np.uint32)
    if bits == 64:
        return np.dtype(np.uint64)
    raise CryptoError(f"the ring has 32 or 64 bits, got {bits!r}")


def expand_mask(seed: bytes, length: int, bits: int = 32) -> np.ndarray:
    """Expand ``seed`` into ``length`` pseudo-random words of ``bits`` bits (uint32 or uint64).

    Deterministic: the same seed, length and width always give the same words, and a shorter
    mask is a prefix of a longer one. The returned array is fresh and writeable.
    """
    if type(seed) is bytes and len(seed) == SEED_BYTES and type(length) is int and length > 0:
        # the common case, checked cheaply: thousands of masks a round at 100 sites
        dtype = _DTYPES.get(bits)
        if dtype is not None and length * dtype.itemsize <= _MAX_BYTES:
            return _keystream(seed, length, dtype)
    if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
        got = f"{len(seed)} bytes" if isinstance(seed, bytes | bytearray) else type(seed).__name__
        raise CryptoError(f"a PRG seed has {SEED_BYTES} bytes, got {got}")
    if not isinstance(length, int | np.integer) or isinstance(length, bool) or length < 0:
        raise CryptoError(f"a mask length is a non-negative integer, got {length!r}")
    dtype = ring_dtype(bits)
    if int(length) * dtype.itemsize > _MAX_BYTES:
        raise CryptoError(f"a mask of {int(length) * dtype.itemsize} bytes exceeds one AES stream")
    if not length:
        return np.empty(0, dtype=dtype)
    return _keystream(bytes(seed), int(length), dtype.newbyteorder("<")).astype(dtype, copy=False)


def _keystream(seed: bytes, length: int, dtype: np.dtype[np.unsignedinteger]) -> np.ndarray:
    """``length`` words of the AES-256-CTR keystream under ``seed`` (``dtype`` little-endian)."""
    nbytes = length * dtype.itemsize
    buffer = np.empty(nbytes + _TAG, dtype=np.uint8)  # room for the tag GCM appends
    AESGCM(seed).encrypt_into(_NONCE, bytes(nbytes), None, buffer)
    return buffer[:nbytes].view(dtype)
