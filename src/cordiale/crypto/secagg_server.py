"""The server of Cordiale's secure aggregation (Bonawitz et al. 2017 with SecAgg+, keys kept for
an epoch of rounds; see :mod:`cordiale.crypto.secagg_client` for the protocol).

Hand-written, pure and I/O-free. :class:`SecAggServer` turns the replies of one stage into the
requests of the next, and each round's replies into the sum of its survivors' inputs. It never
sees a plaintext input or the content of a share ciphertext: it relays ciphertexts (once an
epoch, with each client's first stage-2 request) and, in stage 3, receives exactly one share
per (holder, node) pair; it learns the secrets that remove the masks of the sum - the
survivors' self-mask seeds and the round seeds between survivors and dropped nodes, of that
round only - each checked against its commitment.

Sets of a round: ``R`` the round's members (clients still in the epoch that the caller picks),
``S`` the survivors (sent masked inputs). With ``V_u = N(u) ∩ R`` (the neighbours ``u`` masks
with, named in its request)

    sum_{u in S} x_u = sum_{u in S} y_u - sum_{u in S} PRG(b_u)
                       - sum_{u in S} sum_{v in V_u \\ S} ±PRG(s_uv,r).

Stage 3 asks survivors ``u`` (all, or with ``spare_holders`` only enough of them) for their
shares of the self masks of ``(V_u ∪ {u}) ∩ S`` and of the seal keys of ``V_u \\ S``; any ``t``
shares rebuild ``b_u`` for each survivor and, for each dropped ``v`` with a surviving partner,
``v``'s seal key, which opens the round seeds ``v`` sealed in its package.

Dropout handling: a client that does not answer a stage is out of the round, and one that did
not send its masked input is out of the epoch (a survivor silent at stage 3 stays in it).
Clients whose closed neighbourhood falls below ``t`` are left out of the round (repeatedly, as
each removal shrinks other neighbourhoods); the round aborts with
:class:`~cordiale.core.errors.SecAggAbort` as soon as fewer than ``t`` clients remain, a
survivor has fewer than ``t`` surviving members in its closed neighbourhood, or a secret to
reconstruct has fewer than ``t`` shares. Malformed
replies, replies from unexpected senders or duplicates, and calls out of order raise
:class:`~cordiale.core.errors.ProtocolError`. Any error ends the epoch: the server then refuses
every call, and the driver starts a new epoch.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, NoReturn, TypeVar

import numpy as np

from cordiale.core.errors import CordialeError, CryptoError, ProtocolError, SecAggAbort

from . import _protocol as proto
from .messages import (
    AdvertiseKeysRequest,
    AggregateResult,
    ClientReply,
    KeyAdvertisement,
    MaskedInputRequest,
    MaskedInputResponse,
    SecAggConfig,
    ShareKeysRequest,
    ShareKeysResponse,
    SharePackage,
    UnmaskRequest,
    UnmaskResponse,
)
from .prg import SEED_BYTES, expand_mask
from .primitives import KEY_BYTES, decrypt
from .shamir import combine_at

__all__ = ["SecAggServer"]

_RETRIES = 64
"""Other t-subsets of a secret's shares tried when the one of lowest indices fails its check."""

_Method = TypeVar("_Method", bound=Callable[..., Any])

# Each step: the phase it runs in and the phase it leads to.
_STEPS = {
    "advertise_keys": ("new", "advertised"),
    "share_keys": ("advertised", "sharing"),
    "collect_shares": ("sharing", "keyed"),
    "masked_input": ("keyed", "masking"),
    "unmask": ("masking", "unmasking"),
    "unmask_more": ("unmasking", "unmasking"),
    "aggregate": ("unmasking", "keyed"),
}


def _step(method: _Method) -> _Method:
    """Run a server step only in its phase; any error inside it aborts the epoch."""
    before, after = _STEPS[method.__name__]

    @functools.wraps(method)
    def run(self: SecAggServer, *args: Any, **kwargs: Any) -> Any:
        name = method.__name__
        if self._aborted:
            raise ProtocolError(f"the server has aborted this epoch; {name} refused")
        if self._phase != before:
            expected = [s for s, (phase, _) in _STEPS.items() if phase == self._phase]
            raise ProtocolError(
                f"server step {name} refused (already done or out of order): the next step "
                f"is {' or '.join(expected)}"
            )
        try:
            result = method(self, *args, **kwargs)
        except CordialeError:
            self._aborted = True
            raise
        self._phase = after
        return result

    return run  # type: ignore[return-value]


class SecAggServer:
    """The server's state machine for one epoch.

    Once: :meth:`advertise_keys` (no replies yet), :meth:`share_keys` with the stage-0 replies,
    :meth:`collect_shares` with the stage-1 replies. Then for each round: :meth:`masked_input`
    (the round and its members), :meth:`unmask` with the stage-2 replies and :meth:`aggregate`
    with the stage-3 replies. Each returns the requests of the next stage by receiver. Pass only
    the replies received for the current stage: a reply from a client not asked, a duplicate or
    a malformed reply raises ProtocolError.

    ``spare_holders`` (None: off) asks at stage 3 only enough survivors to hold
    ``threshold + spare_holders`` shares of each secret to rebuild (about two thirds of them at
    10 neighbours, ``threshold + spare_holders`` on the complete graph): fewer messages, the
    same secrets learnt. Then call :meth:`unmask_more` with the stage-3 replies before
    :meth:`aggregate`: if more of the survivors asked were silent than there are spares, it
    asks the others that hold the missing shares (an extra exchange), and :meth:`aggregate`
    takes their replies.
    """

    def __init__(self, config: SecAggConfig, *, spare_holders: int | None = None) -> None:
        if spare_holders is not None and (
            isinstance(spare_holders, bool)
            or not isinstance(spare_holders, int)
            or spare_holders < 0
        ):
            raise CryptoError(f"spare_holders is None or an integer >= 0, got {spare_holders!r}")
        self.config = config
        self.spare_holders = spare_holders
        self._phase = "new"
        self._aborted = False
        self._alive: set[str] = set(config.client_ids)  # the stage or round in progress
        self._keys: dict[str, tuple[bytes, bytes]] = {}
        self._peers: dict[str, tuple[str, ...]] = {}  # who each client shares with (stage 1)
        self._packages: dict[str, SharePackage] = {}  # the epoch's, by sender
        self._in_epoch: set[str] = set()  # clients that may take part in the next rounds
        self._relayed: set[str] = set()  # clients sent the ciphertexts addressed to them
        self._last_round = config.epoch_id - 1
        # the round in progress
        self._round = -1
        self._index_in_epoch = 0  # of the round in progress
        self._members: set[str] = set()
        self._masked_with: dict[str, frozenset[str]] = {}
        self._sum = np.zeros(config.vector_length, dtype=config.dtype)
        self._survivors: frozenset[str] = frozenset()
        self._requested: dict[str, UnmaskRequest] = {}  # what each survivor asked was asked
        self._asked: set[str] = set()
        self._shares: dict[str, dict[str, dict[int, bytes]]] = {}  # secret -> owner -> shares

    @property
    def alive(self) -> frozenset[str]:
        """The clients still in the epoch (stages 0-1), in the round in progress (stage 2), or
        asked to unmask and not answered yet (stage 3)."""
        return frozenset(self._alive)

    @property
    def asked(self) -> frozenset[str]:
        """The survivors asked to unmask in the round in progress (so far)."""
        return frozenset(self._asked)

    @property
    def aborted(self) -> bool:
        return self._aborted

    def ready(self, round_id: int) -> frozenset[str]:
        """The clients that can take part in ``round_id`` (none if the epoch cannot run it)."""
        if self._aborted or self._phase != "keyed" or not self._runs(round_id):
            return frozenset()
        return frozenset(self._in_epoch)

    def _runs(self, round_id: int) -> bool:
        return self._last_round < round_id < self.config.epoch_id + self.config.rounds

    # -- epoch set-up --------------------------------------------------------------------------

    @_step
    def advertise_keys(self) -> dict[str, AdvertiseKeysRequest]:
        """Start the epoch: stage-0 requests for every client."""
        epoch = self.config.epoch_id
        return {c: AdvertiseKeysRequest(round_id=epoch, receiver=c) for c in sorted(self._alive)}

    @_step
    def share_keys(self, replies: Iterable[KeyAdvertisement]) -> dict[str, ShareKeysRequest]:
        """Collect the advertised keys; send each client its neighbours' keys."""
        adverts = self._collect(replies, KeyAdvertisement, self.config.epoch_id)
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
        self._prune(self._alive, "advertised keys")
        requests = {}
        for c in sorted(self._alive):
            listed = sorted(self._closed(c, self._alive))
            self._peers[c] = tuple(v for v in listed if v != c)
            requests[c] = ShareKeysRequest(
                round_id=self.config.epoch_id,
                receiver=c,
                client_ids=tuple(listed),
                enc_public_keys=tuple(self._keys[v][0] for v in listed),
                mask_public_keys=tuple(self._keys[v][1] for v in listed),
            )
        return requests

    @_step
    def collect_shares(self, replies: Iterable[ShareKeysResponse]) -> frozenset[str]:
        """Collect the share packages; returns the clients ready for the epoch's rounds."""
        responses = self._collect(replies, ShareKeysResponse, self.config.epoch_id)
        self._packages = self._check_packages(responses)
        self._alive = set(self._packages)
        self._require(len(self._alive), "clients shared keys")
        self._in_epoch = set(self._alive)
        return frozenset(self._packages)

    # -- one round -----------------------------------------------------------------------------

    @_step
    def masked_input(
        self, round_id: int, members: Collection[str] | None = None
    ) -> dict[str, MaskedInputRequest]:
        """Start round ``round_id`` over ``members`` (default: every client still in the epoch):
        name to each the neighbours it masks with, and relay the share ciphertexts addressed to
        it if this is its first round."""
        if not self._runs(round_id):
            first, last = self._last_round + 1, self.config.round_ids[-1]
            left = (
                f"runs rounds {first}..{last} now"
                if first <= last
                else f"(rounds {self.config.epoch_id}..{last}) has no round left"
            )
            raise ProtocolError(f"round {round_id} cannot start: the epoch {left}")
        chosen = set(self._in_epoch) if members is None else set(members)
        unready = sorted(chosen - self._in_epoch)
        if unready:
            raise ProtocolError(f"{unready} are not in the epoch (no share package, or dropped)")
        self._begin(round_id, chosen)
        requests = {}
        for c in sorted(self._alive):
            senders = (
                [] if c in self._relayed else [v for v in self._peers[c] if v in self._packages]
            )
            self._relayed.add(c)
            requests[c] = MaskedInputRequest(
                round_id=round_id,
                receiver=c,
                neighbours=tuple(sorted(self._masked_with[c])),
                senders=tuple(senders),
                receivers=(c,) * len(senders),
                ciphertexts=tuple(
                    self._packages[v].ciphertexts[self._index(v, c)] for v in senders
                ),
            )
        return requests

    @_step
    def unmask(self, replies: Iterable[MaskedInputResponse]) -> dict[str, UnmaskRequest]:
        """Collect the masked inputs (the survivors); ask survivors (all, or with
        ``spare_holders`` enough of them) for their shares of the survivors' self masks and the
        dropped nodes' seal keys."""
        responses = self._collect(replies, MaskedInputResponse, self._round)
        for c, r in responses.items():
            if r.masked.shape != (self.config.vector_length,) or r.masked.dtype != self._sum.dtype:
                raise ProtocolError(
                    f"{c!r} sent a masked input of shape {r.masked.shape} and dtype "
                    f"{r.masked.dtype}, expected ({self.config.vector_length},) {self._sum.dtype}"
                )
        survivors = frozenset(responses)
        self._in_epoch -= self._members - survivors
        self._require(len(survivors), "clients sent masked inputs")
        for v in sorted(self._members):
            holders = len((self._masked_with[v] | {v}) & survivors)
            needed = v in survivors or bool(self._masked_with[v] & survivors)
            if needed and holders < self.config.threshold:
                secret = "self mask" if v in survivors else "seal key"
                self._abort(
                    f"the {secret} of {v!r} has only {holders} surviving share holders, "
                    f"threshold is {self.config.threshold}"
                )
        for u in sorted(survivors):
            self._sum += responses[u].masked
        self._survivors = survivors
        self._shares = {"self mask": {}, "seal key": {}}
        return self._ask(self._cover())

    @_step
    def unmask_more(self, replies: Iterable[UnmaskResponse]) -> dict[str, UnmaskRequest]:
        """Collect stage-3 replies; ask the survivors not asked yet that hold shares of a secret
        still short of ``t`` (none: every secret can be rebuilt, or no one else holds shares)."""
        self._take_shares(replies)
        t = self.config.threshold
        lacking = {
            o
            for what, owners in self._owners().items()
            for o in owners
            if len(self._shares[what].get(o, {})) < t
        }
        extra = {c for c in self._survivors - self._asked if self._holds(c) & lacking}
        return self._ask(extra)

    @_step
    def aggregate(self, replies: Iterable[UnmaskResponse]) -> AggregateResult:
        """Collect stage-3 replies, reconstruct the masks and return the sum of the survivors'
        inputs."""
        self._take_shares(replies)
        self_shares, seal_shares = self._shares["self mask"], self._shares["seal key"]
        total = self._sum.copy()
        survivors = sorted(self._survivors)
        seeds = self._reconstruct(survivors, "self mask", self_shares, self._self_seed_problem)
        for u in survivors:
            total -= expand_mask(seeds[u], total.size, self.config.bits)
        dropped = sorted(self._owners()["seal key"])
        keys = self._reconstruct(dropped, "seal key", seal_shares, self._seal_key_problem)
        for v in dropped:
            pair_seeds = self._open_sealed(v, keys[v])
            for w in sorted(self._masked_with[v] & self._survivors):
                proto.add_pairwise_mask(total, pair_seeds[w], w, v, subtract=True)
        return AggregateResult(
            round_id=self._round, total=total, survivors=tuple(sorted(self._survivors))
        )

    # -- machinery ---------------------------------------------------------------------------

    def _owners(self) -> dict[str, set[str]]:
        """The owners of the round's secrets to rebuild: each survivor's self mask, and the seal
        key of each dropped member some survivor masked with."""
        dropped = self._members - self._survivors
        return {
            "self mask": set(self._survivors),
            "seal key": {v for v in dropped if self._masked_with[v] & self._survivors},
        }

    def _holds(self, holder: str) -> set[str]:
        """The owners whose round secrets ``holder`` holds a share of (its own included)."""
        return set(self._masked_with[holder] | {holder})

    def _cover(self) -> set[str]:
        """The survivors to ask at stage 3: all of them (``spare_holders`` None), or enough to
        hold ``t + spare_holders`` shares of every secret to rebuild, where they exist - all,
        less those not needed (greedily, in id order)."""
        if self.spare_holders is None:
            return set(self._survivors)
        t, owners = self.config.threshold, set().union(*self._owners().values())
        count = {o: len(self._holds(o) & self._survivors) for o in owners}
        chosen = set(self._survivors)
        for c in sorted(self._survivors):
            needed = self._holds(c) & owners
            if all(count[o] > t + self.spare_holders for o in needed):
                chosen.discard(c)
                for o in needed:
                    count[o] -= 1
        return chosen

    def _ask(self, holders: set[str]) -> dict[str, UnmaskRequest]:
        """Stage-3 requests to ``holders``; only they may answer next."""
        self._asked |= holders
        self._alive = set(holders)
        for c in sorted(holders):
            self._requested[c] = UnmaskRequest(
                round_id=self._round,
                receiver=c,
                survivors=tuple(sorted((self._masked_with[c] | {c}) & self._survivors)),
                dropped=tuple(sorted(self._masked_with[c] - self._survivors)),
            )
        return {c: self._requested[c] for c in sorted(holders)}

    def _take_shares(self, replies: Iterable[UnmaskResponse]) -> None:
        """Collect the shares of stage-3 replies (each asked survivor answers once)."""
        responses = self._collect(replies, UnmaskResponse, self._round)
        for c, r in responses.items():
            request = self._requested[c]
            if (r.self_mask_owners, r.seed_owners) != (request.survivors, request.dropped):
                raise ProtocolError(f"{c!r} answered for other nodes than it was asked about")
            for owners, raw, what in (
                (r.self_mask_owners, r.self_mask_shares, "self mask"),
                (r.seed_owners, r.seed_shares, "seal key"),
            ):
                into = self._shares[what]
                for owner, data in zip(owners, raw, strict=True):
                    into.setdefault(owner, {})[self._share_index(owner, c, data)] = data
        self._alive -= set(responses)

    def _begin(self, round_id: int, members: set[str]) -> None:
        """Reset the round state; keep the members whose neighbourhoods reach ``t``."""
        self._round, self._last_round = round_id, round_id
        self._index_in_epoch = round_id - self.config.epoch_id
        self._alive = members
        self._prune(self._alive, "in the round")
        self._members = set(self._alive)
        self._masked_with = {c: frozenset(self._peers[c]) & self._members for c in self._members}
        self._sum = np.zeros(self.config.vector_length, dtype=self.config.dtype)
        self._survivors, self._requested, self._asked = frozenset(), {}, set()

    def _check_packages(self, responses: Mapping[str, SharePackage]) -> dict[str, SharePackage]:
        """Check each package's layout, and that both ends of every pair committed to the same
        round seeds (else their keys or packages do not match)."""
        rounds, digest = self.config.rounds, proto.COMMITMENT_BYTES
        for c, r in responses.items():
            if r.receivers != self._peers[c]:
                raise ProtocolError(
                    f"{c!r} sent ciphertexts to {list(r.receivers)}, expected exactly "
                    f"{list(self._peers[c])}"
                )
            commitments = (r.self_mask_commitments, *r.seed_commitments)
            if any(len(d) != rounds * digest for d in commitments) or len(r.sealed_seeds) != rounds:
                raise ProtocolError(
                    f"{c!r} sent a share package that is not for the epoch's {rounds} rounds"
                )
        for u in sorted(responses):
            for v in self._peers[u]:
                if (
                    u < v
                    and v in responses
                    and self._pair_commitments(responses, u, v)
                    != (self._pair_commitments(responses, v, u))
                ):
                    self._abort(
                        f"{u!r} and {v!r} committed to different round seeds: their keys or "
                        "packages do not match"
                    )
        return dict(responses)

    def _pair_commitments(
        self, packages: Mapping[str, SharePackage], owner: str, peer: str
    ) -> bytes:
        return packages[owner].seed_commitments[self._index(owner, peer)]

    def _index(self, owner: str, receiver: str) -> int:
        return self._peers[owner].index(receiver)

    def _commitment(self, owner: str, peer: str) -> bytes:
        return self._this_round(self._pair_commitments(self._packages, owner, peer))

    def _this_round(self, commitments: bytes) -> bytes:
        """The round's commitment among the epoch's (one per round, concatenated)."""
        at = self._index_in_epoch * proto.COMMITMENT_BYTES
        return commitments[at : at + proto.COMMITMENT_BYTES]

    def _self_seed_problem(self, owner: str, seed: bytes) -> str | None:
        """Why a rebuilt self-mask seed is wrong (it does not match its commitment), or None."""
        committed = self._this_round(self._packages[owner].self_mask_commitments)
        if len(seed) == SEED_BYTES and committed == proto.self_mask_commitment(
            self._round, owner, seed
        ):
            return None
        return f"the self-mask seed of {owner!r} does not match its commitment"

    def _open_sealed(self, owner: str, key: bytes) -> dict[str, bytes]:
        """The round seeds ``owner`` sealed, by peer, opened with a rebuilt seal key; CryptoError
        if they do not open or one does not match its commitment."""
        sealed = self._packages[owner].sealed_seeds[self._index_in_epoch]
        ad = proto.sealed_seeds_associated_data(self._round, owner)
        try:
            seeds = proto.split_round_seeds(decrypt(key, sealed, ad), self._peers[owner])
        except CryptoError as exc:
            raise CryptoError(f"the sealed round seeds of {owner!r} do not open: {exc}") from None
        for peer in sorted(self._masked_with[owner] & self._survivors):
            if self._commitment(owner, peer) != proto.seed_commitment(
                self._round, owner, peer, seeds[peer]
            ):
                raise CryptoError(
                    f"the round seed of {owner!r} and {peer!r} does not match its commitment"
                )
        return seeds

    def _seal_key_problem(self, owner: str, key: bytes) -> str | None:
        try:
            self._open_sealed(owner, key)
        except CryptoError as exc:
            return str(exc)
        return None

    def _abort(self, reason: str) -> NoReturn:
        self._aborted = True
        raise SecAggAbort(f"secure aggregation of round {self._round_name()} aborted: {reason}")

    def _round_name(self) -> str:
        return str(self._round) if self._round >= 0 else f"{self.config.epoch_id} (epoch set-up)"

    def _require(self, count: int, what: str) -> None:
        if count < self.config.threshold:
            self._abort(f"only {count} {what}, threshold is {self.config.threshold}")

    def _collect(
        self, replies: Iterable[ClientReply], kind: type[ClientReply], round_id: int
    ) -> Mapping[str, ClientReply]:
        """Replies by sender, checked for type, round, expected sender and duplicates."""
        out: dict[str, ClientReply] = {}
        for reply in replies:
            if not isinstance(reply, kind):
                raise ProtocolError(f"expected {kind.__name__}, got {type(reply).__name__}")
            if reply.round_id != round_id:
                raise ProtocolError(
                    f"{reply.sender!r} replied for round {reply.round_id}, expected {round_id}"
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

    def _closed(self, client: str, among: set[str]) -> frozenset[str]:
        return (self.config.neighbours(client) | {client}) & among

    def _prune(self, alive: set[str], what: str) -> None:
        """Check that t clients remain, then drop those whose closed neighbourhood fell below t
        (repeatedly, as each removal shrinks other neighbourhoods) and check again."""
        t = self.config.threshold
        self._require(len(alive), f"clients {what}")
        while True:
            starved = {c for c in alive if len(self._closed(c, alive)) < t}
            if not starved:
                break
            alive -= starved
        self._require(len(alive), f"clients {what} with {t} live neighbourhood members")

    def _share_index(self, owner: str, holder: str, data: bytes) -> int:
        """The index of one encoded share (index byte, then a 32-byte part), checked."""
        if len(data) != 1 + SEED_BYTES:
            raise ProtocolError(
                f"{holder!r} sent a malformed share of {owner!r}: {len(data)} bytes, expected "
                f"an index byte and {SEED_BYTES} value bytes"
            )
        if data[0] != self.config.share_index(owner, holder):
            raise ProtocolError(f"{holder!r} sent a share of {owner!r} with a wrong index")
        return data[0]

    def _reconstruct(
        self,
        owners: list[str],
        what: str,
        shares: Mapping[str, Mapping[int, bytes]],
        problem: Callable[[str, bytes], str | None],
    ) -> dict[str, bytes]:
        """Each owner's secret from ``t`` of its shares (those of the lowest indices), owners
        with the same indices at once, then checked (``problem``: a self-mask seed against its
        commitment, a seal key by opening the sealed seeds). The shares are not cross-checked
        up front (that costs 7x at 100 sites); a secret that fails its check is rebuilt from
        other ``t`` of its shares (up to :data:`_RETRIES` subsets), so a corrupted share is
        outvoted when a spare one came; otherwise the round aborts with the check's reason."""
        t = self.config.threshold
        groups: dict[tuple[int, ...], list[str]] = {}
        for owner in owners:
            held = shares.get(owner, {})
            if len(held) < t:
                self._abort(
                    f"cannot reconstruct the {what} of {owner!r}: {len(held)} shares "
                    f"received, threshold is {t}"
                )
            groups.setdefault(tuple(sorted(held)[:t]), []).append(owner)
        secrets: dict[str, bytes] = {}
        for xs, group in groups.items():
            raw = b"".join(shares[o][x][1:] for o in group for x in xs)
            values = np.frombuffer(raw, dtype=np.uint8).reshape(len(group), t, SEED_BYTES)
            for owner, secret in zip(group, combine_at(xs, values), strict=True):
                secrets[owner] = secret.tobytes()
        for owner in owners:
            reason = problem(owner, secrets[owner])
            if reason is not None:
                secrets[owner] = self._retry(owner, shares[owner], problem) or self._abort(reason)
        return secrets

    def _retry(
        self, owner: str, held: Mapping[int, bytes], problem: Callable[[str, bytes], str | None]
    ) -> bytes | None:
        """A secret of ``owner`` that passes its check, rebuilt from other ``t`` of its shares;
        None if none of the first :data:`_RETRIES` subsets does."""
        t = self.config.threshold
        subsets = itertools.islice(itertools.combinations(sorted(held), t), 1, 1 + _RETRIES)
        for xs in subsets:
            raw = b"".join(held[x][1:] for x in xs)
            values = np.frombuffer(raw, dtype=np.uint8).reshape(1, t, SEED_BYTES)
            secret = combine_at(xs, values)[0].tobytes()
            if problem(owner, secret) is None:
                return secret
        return None
