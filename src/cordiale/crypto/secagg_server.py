"""The server of Cordiale's secure aggregation (Bonawitz et al. 2017 with SecAgg+).

Hand-written, pure and I/O-free. :class:`SecAggServer` turns the replies of one stage into the
requests of the next, and finally into the sum of the survivors' inputs. It never sees a
plaintext input or share ciphertext content: it relays ciphertexts and, in stage 3, receives
exactly one share per (holder, node) pair.

Sets (each a subset of the previous): ``U0`` all clients, ``U1`` advertised keys, ``U2`` sent
their share ciphertexts (the server relays those), ``U3`` sent masked inputs (the survivors,
whose inputs are summed), ``U4`` answered the unmasking request. With ``V_u = N(u) ∩ U2``
(the neighbours ``u`` masks with), the server asks ``u ∈ U3`` for the self-mask shares of
``(V_u ∪ {u}) ∩ U3`` and the mask-key shares of ``V_u \\ U3``, then

    sum_{u in U3} x_u = sum_{u in U3} y_u - sum_{u in U3} PRG(b_u)
                        - sum_{v in U2 \\ U3} sum_{w in U3 ∩ N(v)} ±PRG(s_wv).

Dropout handling: a client that does not answer a stage is dropped from then on. A client whose
closed neighbourhood would fall below ``t`` in stage 1 or 2 is dropped too (its shares are not
relayed), so the others can go on; the round aborts with :class:`~cordiale.core.errors.SecAggAbort`
as soon as fewer than ``t`` clients remain, or some secret needed for unmasking has fewer than
``t`` holders left. Malformed replies, replies from unexpected senders or duplicates, and calls
out of order raise :class:`~cordiale.core.errors.ProtocolError`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn, TypeVar

import numpy as np

from cordiale.core.errors import CordialeError, CryptoError, ProtocolError, SecAggAbort

from . import _protocol as proto
from .messages import (
    AdvertiseKeysRequest,
    AggregateResult,
    KeyAdvertisement,
    MaskedInputRequest,
    MaskedInputResponse,
    SecAggConfig,
    ShareKeysRequest,
    ShareKeysResponse,
    UnmaskRequest,
    UnmaskResponse,
)
from .prg import expand_mask
from .primitives import KEY_BYTES, keypair_from_private_bytes
from .shamir import Share, combine_shares

__all__ = ["SecAggServer"]

_Reply = TypeVar("_Reply", KeyAdvertisement, ShareKeysResponse, MaskedInputResponse, UnmaskResponse)
_Method = TypeVar("_Method", bound=Callable[..., Any])
_STEPS = ("advertise_keys", "share_keys", "masked_input", "unmask", "aggregate")


def _transition(step: int) -> Callable[[_Method], _Method]:
    """Make a server method step ``step`` of 0..4: refused unless it is the next one, and any
    error inside it aborts the server (it then refuses every further call)."""

    def decorate(method: _Method) -> _Method:
        @functools.wraps(method)
        def run(self: SecAggServer, *args: Any) -> Any:
            name = method.__name__
            if self._aborted:
                raise ProtocolError(f"the server has aborted this round; {name} refused")
            if step != self._step:
                state = "already done" if step < self._step else "called out of order"
                expected = _STEPS[self._step] if self._step < len(_STEPS) else "nothing (done)"
                raise ProtocolError(f"server step {name} {state}: the next step is {expected}")
            self._step = step + 1
            try:
                return method(self, *args)
            except CordialeError:
                self._aborted = True
                raise

        return run  # type: ignore[return-value]

    return decorate


class SecAggServer:
    """The server's state machine for one round.

    Call, in order: :meth:`advertise_keys` (no replies yet), :meth:`share_keys` with the stage-0
    replies, :meth:`masked_input` with the stage-1 replies, :meth:`unmask` with the stage-2
    replies and :meth:`aggregate` with the stage-3 replies. Each returns the requests of the next
    stage by receiver (only for clients still in the round). Pass only the replies received
    for the current stage: a reply from a client no longer in the round, a duplicate or a
    malformed reply raises ProtocolError. Any error aborts the server: every later call is
    refused with ProtocolError.
    """

    def __init__(self, config: SecAggConfig) -> None:
        self.config = config
        self._step = 0
        self._aborted = False
        self._alive: set[str] = set(config.client_ids)
        self._keys: dict[str, tuple[bytes, bytes]] = {}
        self._ciphertexts: dict[str, dict[str, bytes]] = {}
        self._commitments: dict[str, bytes] = {}
        self._masked_with: dict[str, frozenset[str]] = {}
        self._sum = np.zeros(config.vector_length, dtype=config.dtype)
        self._requested: dict[str, UnmaskRequest] = {}

    @property
    def alive(self) -> frozenset[str]:
        """The clients still in the round."""
        return frozenset(self._alive)

    @_transition(0)
    def advertise_keys(self) -> dict[str, AdvertiseKeysRequest]:
        """Start the round: stage-0 requests for every client."""
        return {
            c: AdvertiseKeysRequest(round_id=self.config.round_id, receiver=c)
            for c in sorted(self._alive)
        }

    @_transition(1)
    def share_keys(self, replies: Iterable[KeyAdvertisement]) -> dict[str, ShareKeysRequest]:
        """Collect the advertised keys (U1); send each client its neighbours' keys."""
        adverts = self._collect(replies, KeyAdvertisement)
        for a in adverts.values():
            if len(a.enc_public_key) != KEY_BYTES or len(a.mask_public_key) != KEY_BYTES:
                raise ProtocolError(f"{a.sender!r} advertised a key that is not {KEY_BYTES} bytes")
        owners: dict[bytes, list[str]] = {}
        for a in adverts.values():
            for key in {a.enc_public_key, a.mask_public_key}:
                owners.setdefault(key, []).append(a.sender)
        duplicated = {c for names in owners.values() if len(names) > 1 for c in names}
        self._alive = set(adverts) - duplicated  # clients sharing a public key are excluded
        self._keys = {c: (adverts[c].enc_public_key, adverts[c].mask_public_key) for c in adverts}
        self._prune("advertised keys")
        requests = {}
        for c in sorted(self._alive):
            listed = sorted(self._closed_neighbourhood(c))
            requests[c] = ShareKeysRequest(
                round_id=self.config.round_id,
                receiver=c,
                client_ids=tuple(listed),
                enc_public_keys=tuple(self._keys[v][0] for v in listed),
                mask_public_keys=tuple(self._keys[v][1] for v in listed),
            )
        return requests

    @_transition(2)
    def masked_input(self, replies: Iterable[ShareKeysResponse]) -> dict[str, MaskedInputRequest]:
        """Collect the share ciphertexts (U2); relay to each client those addressed to it."""
        responses = self._collect(replies, ShareKeysResponse)
        for c, r in responses.items():
            expected = sorted(self._closed_neighbourhood(c) - {c})
            if sorted(r.receivers) != expected:
                raise ProtocolError(
                    f"{c!r} sent ciphertexts to {sorted(r.receivers)}, expected exactly {expected}"
                )
            if len(r.self_mask_commitment) != proto.COMMITMENT_BYTES:
                raise ProtocolError(f"{c!r} sent a malformed self-mask commitment")
        self._alive = set(responses)
        self._prune("shared keys")
        self._ciphertexts = {
            c: dict(zip(r.receivers, r.ciphertexts, strict=True))
            for c, r in responses.items()
            if c in self._alive
        }
        self._commitments = {c: responses[c].self_mask_commitment for c in self._alive}
        self._masked_with = {c: self._closed_neighbourhood(c) - {c} for c in self._alive}
        requests = {}
        for c in sorted(self._alive):
            senders = sorted(self._masked_with[c])
            requests[c] = MaskedInputRequest(
                round_id=self.config.round_id,
                receiver=c,
                senders=tuple(senders),
                receivers=(c,) * len(senders),
                ciphertexts=tuple(self._ciphertexts[v][c] for v in senders),
            )
        return requests

    @_transition(3)
    def unmask(self, replies: Iterable[MaskedInputResponse]) -> dict[str, UnmaskRequest]:
        """Collect the masked inputs (U3, the survivors); ask each survivor for its shares."""
        responses = self._collect(replies, MaskedInputResponse)
        for c, r in responses.items():
            if r.masked.shape != (self.config.vector_length,) or r.masked.dtype != self._sum.dtype:
                raise ProtocolError(
                    f"{c!r} sent a masked input of shape {r.masked.shape} and dtype "
                    f"{r.masked.dtype}, expected ({self.config.vector_length},) {self._sum.dtype}"
                )
        survivors = set(responses)
        self._require(len(survivors), "clients sent masked inputs")
        for v in sorted(self._masked_with):
            holders = self._masked_with[v] & survivors | ({v} & survivors)
            needed = v in survivors or bool(self._masked_with[v] & survivors)
            if needed and len(holders) < self.config.threshold:
                secret = "self mask" if v in survivors else "mask key"
                self._abort(
                    f"the {secret} of {v!r} has only {len(holders)} surviving share "
                    f"holders, threshold is {self.config.threshold}"
                )
        for c in sorted(survivors):
            self._sum += responses[c].masked
        self._alive = survivors
        self._requested = {
            c: UnmaskRequest(
                round_id=self.config.round_id,
                receiver=c,
                survivors=tuple(sorted((self._masked_with[c] | {c}) & survivors)),
                dropped=tuple(sorted(self._masked_with[c] - survivors)),
            )
            for c in sorted(survivors)
        }
        return dict(self._requested)

    @_transition(4)
    def aggregate(self, replies: Iterable[UnmaskResponse]) -> AggregateResult:
        """Collect the shares (U4), reconstruct the masks and return the sum of ``U3``'s inputs."""
        responses = self._collect(replies, UnmaskResponse)
        self_shares: dict[str, list[Share]] = {}
        key_shares: dict[str, list[Share]] = {}
        for c, r in responses.items():
            request = self._requested[c]
            if (r.self_mask_owners, r.key_owners) != (request.survivors, request.dropped):
                raise ProtocolError(f"{c!r} answered for other nodes than it was asked about")
            for owners, raw, into in (
                (r.self_mask_owners, r.self_mask_shares, self_shares),
                (r.key_owners, r.key_shares, key_shares),
            ):
                for owner, data in zip(owners, raw, strict=True):
                    into.setdefault(owner, []).append(self._share(owner, c, data))
        total = self._sum.copy()
        for v in sorted(self._alive):
            seed = self._reconstruct(v, "self mask", self_shares.get(v, []))
            if proto.self_mask_commitment(self.config.round_id, v, seed) != self._commitments[v]:
                self._abort(f"the reconstructed self mask of {v!r} does not match its commitment")
            total -= expand_mask(seed, total.size, self.config.bits)
        for v in sorted(set(self._masked_with) - self._alive):
            partners = sorted(self._masked_with[v] & self._alive)
            if not partners:
                continue
            raw = self._reconstruct(v, "mask key", key_shares.get(v, []))
            try:
                mask_keys = keypair_from_private_bytes(raw)
            except CryptoError:
                mask_keys = None
            if mask_keys is None or mask_keys.public != self._keys[v][1]:
                self._abort(f"the reconstructed mask key of {v!r} does not match its public key")
            for w in partners:
                seed = proto.mask_seed(mask_keys, self._keys[w][1], self.config.round_id, v, w)
                proto.add_pairwise_mask(total, seed, w, v, subtract=True)
        return AggregateResult(
            round_id=self.config.round_id, total=total, survivors=tuple(sorted(self._alive))
        )

    # -- machinery ---------------------------------------------------------------------------

    def _abort(self, reason: str) -> NoReturn:
        self._aborted = True
        raise SecAggAbort(f"secure aggregation of round {self.config.round_id} aborted: {reason}")

    def _require(self, count: int, what: str) -> None:
        if count < self.config.threshold:
            self._abort(f"only {count} {what}, threshold is {self.config.threshold}")

    def _collect(self, replies: Iterable[_Reply], kind: type[_Reply]) -> Mapping[str, _Reply]:
        """Replies by sender, checked for type, round, expected sender and duplicates."""
        out: dict[str, _Reply] = {}
        for reply in replies:
            if not isinstance(reply, kind):
                raise ProtocolError(f"expected {kind.__name__}, got {type(reply).__name__}")
            if reply.round_id != self.config.round_id:
                raise ProtocolError(
                    f"{reply.sender!r} replied for round {reply.round_id}, "
                    f"this is round {self.config.round_id}"
                )
            if reply.sender not in self._alive:
                raise ProtocolError(
                    f"unexpected {kind.__name__} from {reply.sender!r} "
                    "(not a client still in the round)"
                )
            if reply.sender in out:
                raise ProtocolError(f"duplicate {kind.__name__} from {reply.sender!r}")
            out[reply.sender] = reply
        return out

    def _closed_neighbourhood(self, client: str) -> frozenset[str]:
        return (self.config.neighbours(client) | {client}) & self._alive

    def _prune(self, what: str) -> None:
        """Check that t clients remain, then drop those whose closed neighbourhood fell below t
        (repeatedly, as each removal shrinks other neighbourhoods) and check again."""
        t = self.config.threshold
        self._require(len(self._alive), f"clients {what}")
        while True:
            starved = {c for c in self._alive if len(self._closed_neighbourhood(c)) < t}
            if not starved:
                break
            self._alive -= starved
        self._require(len(self._alive), f"clients {what} with {t} live neighbourhood members")

    def _share(self, owner: str, holder: str, data: bytes) -> Share:
        try:
            share = Share.from_bytes(data)
        except CryptoError as exc:
            raise ProtocolError(f"{holder!r} sent a malformed share of {owner!r}: {exc}") from None
        if share.index != self.config.share_index(owner, holder):
            raise ProtocolError(f"{holder!r} sent a share of {owner!r} with a wrong index")
        return share

    def _reconstruct(self, owner: str, what: str, shares: list[Share]) -> bytes:
        if len(shares) < self.config.threshold:
            self._abort(
                f"cannot reconstruct the {what} of {owner!r}: {len(shares)} shares "
                f"received, threshold is {self.config.threshold}"
            )
        try:
            return combine_shares(shares, self.config.threshold)
        except CryptoError as exc:
            self._abort(f"cannot reconstruct the {what} of {owner!r}: {exc}")
