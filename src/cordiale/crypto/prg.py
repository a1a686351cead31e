"""Deterministic mask expansion: a 32-byte seed into ``n`` uniformly random ring words.

Hand-written for Cordiale's secure aggregation. The pseudo-random generator is the ChaCha20
keystream of the ``cryptography`` package (key = seed, 16-byte nonce = 32-bit block counter 0 ||
96-bit zero nonce), written straight into a numpy buffer with ``update_into`` over a zero buffer,
so expansion is vectorised and allocation-light (about 1-5 ms per million 32-bit words).

Words are read little-endian, so the output is identical on every platform. Each seed must be
used for one mask only (the seeds of secure aggregation are fresh random values or HKDF outputs
bound to the round and the pair of clients, so this holds by construction). A single ChaCha20
stream covers 2**32 blocks of 64 bytes (256 GiB); longer masks are refused.
"""

from __future__ import annotations

import sys

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from cordiale.core.errors import CryptoError

__all__ = ["SEED_BYTES", "expand_mask", "ring_dtype"]

SEED_BYTES = 32
"""Length of a PRG seed (a ChaCha20 key)."""
_NONCE = bytes(16)
_MAX_BYTES = 64 * 2**32


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
            out = np.empty(length, dtype=dtype)
            encryptor = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
            encryptor.update_into(bytes(out.nbytes), memoryview(out).cast("B"))
            return out
    if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
        got = f"{len(seed)} bytes" if isinstance(seed, bytes | bytearray) else type(seed).__name__
        raise CryptoError(f"a PRG seed has {SEED_BYTES} bytes, got {got}")
    if not isinstance(length, int | np.integer) or isinstance(length, bool) or length < 0:
        raise CryptoError(f"a mask length is a non-negative integer, got {length!r}")
    dtype = ring_dtype(bits)
    out = np.empty(int(length), dtype=dtype.newbyteorder("<"))
    if out.nbytes > _MAX_BYTES:
        raise CryptoError(f"a mask of {out.nbytes} bytes exceeds one ChaCha20 stream")
    if out.nbytes:
        encryptor = Cipher(algorithms.ChaCha20(bytes(seed), _NONCE), mode=None).encryptor()
        encryptor.update_into(bytes(out.nbytes), memoryview(out).cast("B"))
    return out.astype(dtype, copy=False)
