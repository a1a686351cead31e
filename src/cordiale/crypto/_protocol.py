"""Derivations shared by the secure-aggregation client and server (hand-written, private).

Every key, associated data and commitment is bound to a domain label, the epoch or round id and
the (ordered) client ids through an unambiguous length-prefixed encoding (:func:`pack`), so no value
of one round, stage or pair of clients can be replayed as another.
"""

from __future__ import annotations

import functools
import hashlib
import struct

import numpy as np

from cordiale.core.errors import CryptoError

from .prg import SEED_BYTES, expand_mask
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
    """An unambiguous context string for HKDF info, AES-GCM associated data and hashes:
    ``pack(domain, label, str(round_id), *client_ids)``, its parts encoded once and kept."""
    return _label(label) + _field(str(round_id)) + b"".join(map(_field, client_ids))


@functools.lru_cache(maxsize=64)
def _label(label: str) -> bytes:
    return pack(_DOMAIN, label.encode())


@functools.lru_cache(maxsize=1 << 14)
def _field(text: str) -> bytes:
    return pack(text.encode())


def channel_key(own: KeyPair, peer_public: bytes, epoch_id: int, a: str, b: str) -> bytes:
    """The AES-GCM key of clients ``a`` and ``b`` for the epoch (same from both sides)."""
    return agree(own, peer_public, context("enc-key", epoch_id, *sorted((a, b))))


def pair_key(own: KeyPair, peer_public: bytes, epoch_id: int, a: str, b: str) -> bytes:
    """The epoch's pairwise mask key of ``a`` and ``b``; never revealed, only its round seeds."""
    return agree(own, peer_public, context("mask-key", epoch_id, *sorted((a, b))))


def round_seeds(key: bytes, rounds: int) -> list[bytes]:
    """The pairwise mask seeds of the epoch's ``rounds`` rounds, in order, from the epoch's pair
    key (bound to the epoch and the pair): consecutive 32-byte blocks of its AES-256-CTR
    keystream (:func:`~cordiale.crypto.prg.expand_mask`), one call for all rounds. The keystream
    is a PRF of the key, so revealing one round's seed tells nothing of another's."""
    stream = expand_mask(key, rounds * SEED_BYTES // 4, 32).tobytes()
    return [stream[i : i + SEED_BYTES] for i in range(0, len(stream), SEED_BYTES)]


def seed_commitment(round_id: int, a: str, b: str, seed: bytes) -> bytes:
    """SHA-256 commitment to a round seed of ``a`` and ``b`` (both ends compute the same)."""
    return hashlib.sha256(context("seed-commitment", round_id, *sorted((a, b))) + seed).digest()


def seed_commitments(round_ids: range, a: str, b: str, seeds: list[bytes]) -> bytes:
    """:func:`seed_commitment` of each round's seed, concatenated (the context built once)."""
    label, pair = _label("seed-commitment"), b"".join(map(_field, sorted((a, b))))
    return b"".join(
        hashlib.sha256(label + _field(str(r)) + pair + seed).digest()
        for r, seed in zip(round_ids, seeds, strict=True)
    )


def share_associated_data(round_id: int, sender: str, receiver: str) -> bytes:
    """AES-GCM associated data of a share ciphertext: binds the round and the route."""
    return context("shares", round_id, sender, receiver)


def sealed_seeds_associated_data(round_id: int, owner: str) -> bytes:
    """AES-GCM associated data of a package's sealed round seeds: binds the round and owner."""
    return context("sealed-seeds", round_id, owner)


def self_mask_commitment(round_id: int, owner: str, seed: bytes) -> bytes:
    """SHA-256 commitment to a self-mask seed (hiding: the seed is 256 random bits)."""
    return hashlib.sha256(context("self-mask", round_id, owner) + seed).digest()


def split_round_seeds(raw: bytes, peers: tuple[str, ...]) -> dict[str, bytes]:
    """The pairwise round seeds of opened sealed seeds, by peer (``peers`` sorted)."""
    if len(raw) != SEED_BYTES * len(peers):
        raise CryptoError(
            f"the sealed seeds hold {len(raw)} bytes, expected {SEED_BYTES * len(peers)}"
        )
    return {v: raw[i * SEED_BYTES : (i + 1) * SEED_BYTES] for i, v in enumerate(peers)}


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
