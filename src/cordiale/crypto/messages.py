"""The public configuration and the messages of Cordiale's secure-aggregation protocol.

Hand-written. Every message is a frozen dataclass whose fields are only ``int``, ``str``,
``bytes``, tuples of ``str`` or ``bytes`` (parallel tuples instead of nested records) and, for
the masked input, a 1-D unsigned numpy array, so that the project's wire codec (JSON header +
safetensors) can carry them without pickle. Constructors validate field types and raise
:class:`~cordiale.core.errors.WireError` for malformed content; lists are accepted and stored as
tuples, arrays are copied and made read-only.

The stages (Bonawitz et al. 2017; SecAgg+ of Bell et al. 2020; keys and round secrets set up
once for an *epoch* of rounds, see :mod:`cordiale.crypto.secagg_client`). Stages 0-1 run once
per epoch, stages 2-3 once per round::

    stage 0 ADVERTISE_KEYS  server -> AdvertiseKeysRequest  -> client -> KeyAdvertisement
    stage 1 SHARE_KEYS      server -> ShareKeysRequest      -> client -> ShareKeysResponse
    stage 2 MASKED_INPUT    server -> MaskedInputRequest    -> client -> MaskedInputResponse
    stage 3 UNMASK          server -> UnmaskRequest         -> client -> UnmaskResponse

A :class:`SharePackage` (the reply of stage 1) carries its sender's secrets for every round of
the epoch, Shamir-shared and encrypted for each neighbour, with hash commitments the server
checks what is later revealed against; the server relays each client's ciphertexts with its
first stage-2 request of the epoch.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import numpy as np

from cordiale.core.errors import CryptoError, WireError

from .graph import neighbour_graph
from .prg import ring_dtype
from .shamir import MAX_SHARES

MAX_EPOCH_ROUNDS = 100
"""The most rounds one epoch's secrets are set up for: bounds a share package and the Shamir split
(64 bytes of secrets a round; a 100-round split on a complete graph of 101 sites is ~33 MB of
temporaries)."""

__all__ = [
    "MAX_EPOCH_ROUNDS",
    "AdvertiseKeysRequest",
    "AggregateResult",
    "KeyAdvertisement",
    "MaskedInputRequest",
    "MaskedInputResponse",
    "SecAggConfig",
    "ShareKeysRequest",
    "ShareKeysResponse",
    "SharePackage",
    "Stage",
    "UnmaskRequest",
    "UnmaskResponse",
]


class Stage(enum.IntEnum):
    """The protocol stages, in order."""

    ADVERTISE_KEYS = 0
    SHARE_KEYS = 1
    MASKED_INPUT = 2
    UNMASK = 3


@dataclass(frozen=True)
class SecAggConfig:
    """Public parameters of one secure-aggregation epoch, identical at server and clients.

    ``epoch_id`` names the epoch and its first round; the epoch serves ``rounds`` rounds,
    numbered ``epoch_id .. epoch_id + rounds - 1`` (each client masks each at most once, in
    increasing order). Keys, graph, the clients' share positions and the round secrets are fixed
    for the epoch; the clients of a round are a subset of ``client_ids``.

    ``threshold`` (t) is counted within each client's *closed* neighbourhood (the client and
    its neighbours): the secrets of a client can be reconstructed from any t members of it.
    ``degree`` (k) is the number of neighbours on the SecAgg+ graph; None (or ``n - 1``) gives
    the complete graph, i.e. the original protocol. Require ``2 <= t <= k + 1``; ``t`` above
    half of ``k + 1`` is recommended so that a minority of colluding clients cannot reconstruct.
    ``bits`` is the ring width (32 or 64) and ``vector_length`` the number of ring words.
    """

    epoch_id: int
    client_ids: tuple[str, ...]
    threshold: int
    vector_length: int
    bits: int = 32
    degree: int | None = None
    graph_seed: bytes = b""
    rounds: int = 1
    _graph: dict[str, frozenset[str]] = field(init=False, repr=False, compare=False)
    _positions: dict[str, dict[str, int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "client_ids", tuple(sorted(self.client_ids)))
        for name in ("epoch_id", "threshold", "vector_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CryptoError(f"{name} is a non-negative integer, got {value!r}")
        ring_dtype(self.bits)
        n = len(self.client_ids)
        if n < 2:
            raise CryptoError(f"secure aggregation needs at least 2 clients, got {n}")
        degree = n - 1 if self.degree is None else self.degree
        graph, positions = _topology(self.client_ids, degree, self.graph_seed)
        smallest = min(len(v) for v in graph.values()) + 1
        largest = max(len(v) for v in graph.values()) + 1
        if largest > MAX_SHARES:
            raise CryptoError(
                f"a neighbourhood of {largest} clients exceeds the {MAX_SHARES} shares a secret "
                f"can have; use SecAgg+ with degree < {MAX_SHARES}"
            )
        if not 2 <= self.threshold <= smallest:
            raise CryptoError(
                f"the threshold lies in 2..{smallest} (the smallest neighbourhood, client "
                f"included), got {self.threshold}"
            )
        if self.vector_length < 1:
            raise CryptoError("vector_length is at least 1")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int):
            raise CryptoError(f"rounds is an integer, got {self.rounds!r}")
        if not 1 <= self.rounds <= MAX_EPOCH_ROUNDS:
            raise CryptoError(f"an epoch serves 1..{MAX_EPOCH_ROUNDS} rounds, got {self.rounds}")
        object.__setattr__(self, "_graph", graph)
        object.__setattr__(self, "_positions", positions)

    @property
    def round_ids(self) -> range:
        """The rounds of the epoch."""
        return range(self.epoch_id, self.epoch_id + self.rounds)

    @property
    def dtype(self) -> np.dtype[np.unsignedinteger]:
        """The numpy dtype of the ring words."""
        return ring_dtype(self.bits)

    def neighbours(self, client_id: str) -> frozenset[str]:
        """The neighbours of ``client_id`` on the public graph (itself excluded)."""
        try:
            return self._graph[client_id]
        except KeyError:
            raise CryptoError(f"{client_id!r} is not a client of this epoch") from None

    def share_index(self, owner: str, holder: str) -> int:
        """The Shamir index (1-based) of the share of ``owner``'s secrets held by ``holder``."""
        try:
            return self._positions[owner][holder]
        except KeyError:
            raise CryptoError(f"{holder!r} holds no share of {owner!r}'s secrets") from None


class _Message:
    """Validation shared by all messages: field types, parallel tuple lengths."""

    stage: ClassVar[Stage]
    _parallel: ClassVar[tuple[tuple[str, ...], ...]] = ()

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name, kind in _field_kinds(type(self)):
            value = getattr(self, name)
            object.__setattr__(self, name, _check_field(owner, name, kind, value))
        for group in self._parallel:
            lengths = {name: len(getattr(self, name)) for name in group}
            if len(set(lengths.values())) > 1:
                raise WireError(f"{owner}: parallel fields differ in length {lengths}")


@functools.cache
def _field_kinds(cls: type) -> tuple[tuple[str, str], ...]:
    """The (name, annotated type) of each field of a message class, computed once."""
    return tuple((f.name, str(f.type)) for f in fields(cls))


_RING_DTYPES = (np.dtype(np.uint32), np.dtype(np.uint64))


def _check_field(owner: str, name: str, kind: str, value: Any) -> Any:
    where = f"{owner}.{name}"
    if kind == "int":
        if type(value) is int and value >= 0:  # the common case, first
            return value
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise WireError(f"{where} is a non-negative integer, got {value!r}")
        return int(value)
    if kind == "str":
        if not isinstance(value, str) or not value:
            raise WireError(f"{where} is a non-empty string, got {type(value).__name__}")
        return value
    if kind == "bytes":
        if type(value) is bytes:
            return value
        if not isinstance(value, bytes | bytearray):
            raise WireError(f"{where} is bytes, got {type(value).__name__}")
        return bytes(value)
    if kind in ("tuple[str, ...]", "tuple[bytes, ...]"):
        item = str if kind == "tuple[str, ...]" else bytes
        if not isinstance(value, tuple | list) or not (
            set(map(type, value)) <= {item} or all(isinstance(v, item) for v in value)
        ):
            raise WireError(f"{where} is a sequence of {item.__name__}")
        return tuple(value)
    if kind == "np.ndarray":
        if not isinstance(value, np.ndarray) or value.ndim != 1:
            raise WireError(f"{where} is a 1-D numpy array")
        if value.dtype not in _RING_DTYPES:
            raise WireError(f"{where} has dtype uint32 or uint64, got {value.dtype}")
        array = value.copy()
        array.setflags(write=False)
        return array
    raise WireError(f"{where} has an unsupported type {kind}")  # pragma: no cover


@dataclass(frozen=True)
class AdvertiseKeysRequest(_Message):
    """Stage 0, server to client: start the epoch (``round_id`` is the epoch id)."""

    stage: ClassVar[Stage] = Stage.ADVERTISE_KEYS
    round_id: int
    receiver: str


@dataclass(frozen=True)
class KeyAdvertisement(_Message):
    """Stage 0, client to server: the client's two X25519 public keys (c for encryption, s for
    masks), kept for the epoch."""

    stage: ClassVar[Stage] = Stage.ADVERTISE_KEYS
    round_id: int
    sender: str
    enc_public_key: bytes
    mask_public_key: bytes


@dataclass(frozen=True)
class ShareKeysRequest(_Message):
    """Stage 1, server to client: the keys of the receiver and of its neighbours still alive.
    The client answers with its share package for every round of the epoch ``round_id``."""

    stage: ClassVar[Stage] = Stage.SHARE_KEYS
    _parallel: ClassVar[tuple[tuple[str, ...], ...]] = (
        ("client_ids", "enc_public_keys", "mask_public_keys"),
    )
    round_id: int
    receiver: str
    client_ids: tuple[str, ...]
    enc_public_keys: tuple[bytes, ...]
    mask_public_keys: tuple[bytes, ...]


@dataclass(frozen=True)
class SharePackage(_Message):
    """A client's secrets for every round of the epoch, for its neighbours.

    For round ``epoch_id + i`` the client draws a self-mask seed and a 32-byte *seal key*;
    ``sealed_seeds[i]`` holds the round's pairwise seeds (one per receiver, in order), encrypted
    with AES-GCM under that seal key. ``ciphertexts[j]`` (AES-GCM under the pair's channel key)
    holds ``receivers[j]``'s Shamir share of all the rounds' (self-mask seed, seal key) pairs,
    64 bytes a round (sharing a short key instead of the seeds keeps the shares small for any
    degree). ``self_mask_commitments`` concatenates one SHA-256 commitment to each round's
    self-mask seed, ``seed_commitments[j]`` one to each round's pairwise seed shared with
    ``receivers[j]`` (both ends of a pair commit to the same values).
    """

    stage: ClassVar[Stage] = Stage.SHARE_KEYS
    _parallel: ClassVar[tuple[tuple[str, ...], ...]] = (
        ("receivers", "ciphertexts", "seed_commitments"),
    )
    round_id: int
    sender: str
    receivers: tuple[str, ...]
    ciphertexts: tuple[bytes, ...]
    self_mask_commitments: bytes
    seed_commitments: tuple[bytes, ...]
    sealed_seeds: tuple[bytes, ...]


@dataclass(frozen=True)
class ShareKeysResponse(SharePackage):
    """Stage 1, client to server: the share package for the epoch."""


@dataclass(frozen=True)
class MaskedInputRequest(_Message):
    """Stage 2, server to client: the round's ``neighbours`` (those of the client's neighbours
    that take part, whose masks it adds) and, in the client's first round of the epoch only,
    the share ciphertexts addressed to it, relayed as is."""

    stage: ClassVar[Stage] = Stage.MASKED_INPUT
    _parallel: ClassVar[tuple[tuple[str, ...], ...]] = (("senders", "receivers", "ciphertexts"),)
    round_id: int
    receiver: str
    neighbours: tuple[str, ...]
    senders: tuple[str, ...]
    receivers: tuple[str, ...]
    ciphertexts: tuple[bytes, ...]


@dataclass(frozen=True, eq=False)
class MaskedInputResponse(_Message):
    """Stage 2, client to server: the masked input ``y_u`` (ring words)."""

    stage: ClassVar[Stage] = Stage.MASKED_INPUT
    round_id: int
    sender: str
    masked: np.ndarray


@dataclass(frozen=True)
class UnmaskRequest(_Message):
    """Stage 3, server to client: which of the nodes it masked with survived stage 2 (reveal
    their self-mask shares) and which dropped (reveal their seal-key shares)."""

    stage: ClassVar[Stage] = Stage.UNMASK
    round_id: int
    receiver: str
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


@dataclass(frozen=True)
class UnmaskResponse(_Message):
    """Stage 3, client to server: encoded Shamir shares (see ``Share.to_bytes``) of the
    survivors' self-mask seeds and, in ``seed_shares``, of the dropped nodes' seal keys."""

    stage: ClassVar[Stage] = Stage.UNMASK
    _parallel: ClassVar[tuple[tuple[str, ...], ...]] = (
        ("self_mask_owners", "self_mask_shares"),
        ("seed_owners", "seed_shares"),
    )
    round_id: int
    sender: str
    self_mask_owners: tuple[str, ...]
    self_mask_shares: tuple[bytes, ...]
    seed_owners: tuple[str, ...]
    seed_shares: tuple[bytes, ...]


@dataclass(frozen=True, eq=False)
class AggregateResult:
    """The server's output: the ring sum of the inputs of ``survivors`` (stage-2 senders)."""

    round_id: int
    total: np.ndarray
    survivors: tuple[str, ...]


ClientReply = TypeVar(
    "ClientReply",
    KeyAdvertisement,
    ShareKeysResponse,
    MaskedInputResponse,
    UnmaskResponse,
)
"""Any client reply (for the typing of the state machines)."""


@functools.lru_cache(maxsize=32)
def _topology(
    client_ids: tuple[str, ...], degree: int, seed: bytes
) -> tuple[dict[str, frozenset[str]], dict[str, dict[str, int]]]:
    """The epoch's graph and each neighbourhood's share positions, computed once per process.

    A deployed node builds them once per epoch; in a simulation, hundreds of nodes share a
    process and would otherwise each rebuild the whole graph. Callers only read the result.
    """
    graph = neighbour_graph(client_ids, degree, seed)
    positions = {
        owner: {holder: i + 1 for i, holder in enumerate(sorted(graph[owner] | {owner}))}
        for owner in client_ids
    }
    return graph, positions
