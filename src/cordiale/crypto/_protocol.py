"""Derivations shared by the secure-aggregation client and server (hand-written, private).

Every key, associated data and commitment is bound to a domain label, the round id and the
(ordered) client ids through an unambiguous length-prefixed encoding (:func:`pack`), so no value
of one round, stage or pair of clients can be replayed as another.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

from cordiale.core.errors import CryptoError

from .prg import expand_mask
from .primitives import KeyPair, agree

_DOMAIN = b"cordiale/secagg/v1"
COMMITMENT_BYTES = 32
"""Length of a self-mask commitment (a SHA-256 digest)."""
_LENGTH = struct.Struct(">I")


def pack(*parts: bytes) -> bytes:
    """Concatenate byte strings, each prefixed with its 4-byte big-endian length."""
    return b"".join(_LENGTH.pack(len(p)) + p for p in parts)


def unpack(data: bytes, count: int) -> list[bytes]:
    """Inverse of :func:`pack` for exactly ``count`` parts; raises CryptoError otherwise."""
    parts, offset = [], 0
    for _ in range(count):
        if offset + _LENGTH.size > len(data):
            raise CryptoError("truncated packed message")
        (size,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + size > len(data):
            raise CryptoError("truncated packed message")
        parts.append(data[offset : offset + size])
        offset += size
    if offset != len(data):
        raise CryptoError("trailing bytes after packed message")
    return parts


def context(label: str, round_id: int, *client_ids: str) -> bytes:
    """An unambiguous context string for HKDF info, AES-GCM associated data and hashes."""
    return pack(_DOMAIN, label.encode(), str(round_id).encode(), *(c.encode() for c in client_ids))


def encryption_key(own: KeyPair, peer_public: bytes, round_id: int, a: str, b: str) -> bytes:
    """The symmetric AES-GCM key of clients ``a`` and ``b`` (same from both sides)."""
    return agree(own, peer_public, context("enc-key", round_id, *sorted((a, b))))


def share_associated_data(round_id: int, sender: str, receiver: str) -> bytes:
    """AES-GCM associated data of a stage-1 share ciphertext: binds round, stage and route."""
    return context("shares", round_id, sender, receiver)


def mask_seed(own: KeyPair, peer_public: bytes, round_id: int, a: str, b: str) -> bytes:
    """The pairwise mask seed s_ab of clients ``a`` and ``b`` (same from both sides)."""
    return agree(own, peer_public, context("mask-seed", round_id, *sorted((a, b))))


def self_mask_commitment(round_id: int, owner: str, seed: bytes) -> bytes:
    """SHA-256 commitment to a self-mask seed (hiding: the seed is 256 random bits)."""
    return hashlib.sha256(context("self-mask", round_id, owner) + seed).digest()


def add_pairwise_mask(
    acc: np.ndarray, seed: bytes, owner: str, peer: str, *, subtract: bool = False
) -> None:
    """Add, in place, the pairwise mask that ``owner`` applies for ``peer`` (``-`` to remove).

    ``owner`` adds ``+PRG(s)`` when ``owner < peer`` and ``-PRG(s)`` otherwise, so the masks of
    the pair cancel in the sum.
    """
    mask = expand_mask(seed, acc.size, acc.dtype.itemsize * 8)
    if (owner < peer) != subtract:
        acc += mask
    else:
        acc -= mask
