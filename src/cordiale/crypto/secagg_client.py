"""The honest client of Cordiale's secure aggregation (Bonawitz et al. 2017 with SecAgg+, keys kept
for an epoch of rounds).

Hand-written, pure and I/O-free: :class:`SecAggClient` consumes one server request per stage
and returns its reply; a transport carries the messages. Cryptographic primitives come from
``cryptography`` via :mod:`cordiale.crypto.primitives`.

**Epochs.** Key agreement and secret sharing are the expensive part of the protocol (two X25519
exchanges, a Shamir split and AES-GCM encryptions per neighbour), so they run once per *epoch*
of ``config.rounds`` rounds (stages 0-1) and each round (stages 2-3) only masks and unmasks.
What makes this safe is that every secret is one round's, and no long-term secret is ever
revealed:

* stage 0 (once): two X25519 key pairs (c: channels, s: masks);
* stage 1 (once): checks the broadcast key list, derives one AES-GCM channel key and one pair
  key ``K_uv`` per neighbour, and sends its *share package* for the epoch: for each round r a
  fresh 32-byte self-mask seed ``b_u,r`` and the round's pairwise seeds ``s_uv,r``, the
  (r - epoch)-th 32 bytes of the AES-256-CTR keystream under ``K_uv`` (a PRF: one round's seed tells
  nothing about another's), sealed with AES-GCM under a fresh *seal key* ``e_u,r``; all
  rounds' ``b_u,r`` and ``e_u,r`` are Shamir-shared (t of its closed neighbourhood; Shamir works
  byte by byte, so the shares of one round's secrets are a slice of the shares) and encrypted
  for each neighbour, with SHA-256 commitments to each ``b_u,r`` and each ``s_uv,r``;
* stage 2 (each round): in its first round only, it opens the relayed share ciphertexts of its
  neighbours; then ``y_u = x_u + PRG(b_u,r) + sum_v ±PRG(s_uv,r) mod 2^bits`` over the round's
  neighbours ``V_u`` (named by the server, all holding shares it accepted);
* stage 3: reveals the Shamir shares it holds (its own included) of each survivor's ``b_v,r``
  and of each dropped node's ``e_v,r``, which opens ``v``'s sealed seeds of round r (``v``'s
  input is not in the sum). Only shares leave, so every secret the server learns needs ``t``
  holders, and it is one round's: the other rounds' masks stay hidden.

This departs from the original protocol, where a dropped node's mask *key* is reconstructed: with
keys kept over rounds, that would hand the server the node's masks of every earlier round, whose
self-masks it already knows. Sharing the round's seeds instead bounds every reveal to one round
(the multi-round setting of Flamingo, Ma et al., S&P 2023).

The checks. A request in the wrong place raises :class:`~cordiale.core.errors.ProtocolError`
and is simply refused (the client's state is unchanged); a failed check inside a stage raises
:class:`~cordiale.core.errors.SecAggAbort` and aborts the client for the epoch (it answers
nothing more):

* every request: a stage it expects now (a replayed stage or a stage out of order is refused),
  the expected epoch or round, this receiver;
* stage 1: its own public keys echoed exactly; every listed client is a neighbour on the public
  graph and listed once; all listed public keys are distinct; at least ``t`` members of its
  closed neighbourhood are listed;
* stage 2: the round is one of the epoch's, after every round it masked (each round is masked
  once); the share ciphertexts come once, in its first round: each is addressed to this
  client, comes from a listed neighbour, at most one per sender, authenticates under this
  epoch, and its plaintext names the same sender and receiver and holds a share of the
  expected Shamir index and length; the round's neighbours are distinct and all sent shares,
  and with the client they number at least ``t``;
* stage 3, the **consistency check**. Let ``S`` be the requested survivors and ``D`` the
  dropped nodes. The client answers only if ``S`` and ``D`` are disjoint (it never reveals both
  shares of one node), ``u`` is in ``S`` (it did send its masked input), ``S ∪ D`` is exactly
  ``V_u ∪ {u}`` and ``|S| >= t``. Since stage 3 runs once per round, no sequence of requests
  obtains both shares of a node's round secrets from this client.

Limitation (documented, not hidden): these checks are per client, and the public keys of stage 0
are not signed. A malicious server that shows *different* clients contradictory views of a round
(a victim told only ``t - 1`` neighbours take part; those told they survived and the victim's other
holders told they dropped) can unmask the victim without holding both secrets of any one node;
one that substitutes its own keys for a victim's neighbours' reads the victim's shares. Detecting
either needs the signed keys and the signed consistency round of Bonawitz et al. (malicious
model), which this semi-honest-server implementation does not have yet.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from cordiale.core.errors import CryptoError, ProtocolError, SecAggAbort

from . import _protocol as proto
from .messages import (
    AdvertiseKeysRequest,
    ClientReply,
    KeyAdvertisement,
    MaskedInputRequest,
    MaskedInputResponse,
    SecAggConfig,
    ShareKeysRequest,
    ShareKeysResponse,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
)
from .prg import SEED_BYTES, expand_mask
from .primitives import KeyPair, decrypt, encrypt, generate_keypair
from .shamir import Share, split_secret

__all__ = ["SecAggClient"]

_Request = TypeVar(
    "_Request",
    AdvertiseKeysRequest,
    ShareKeysRequest,
    MaskedInputRequest,
    UnmaskRequest,
)

# What the client accepts in each phase of the epoch.
_EXPECTS: dict[str, tuple[Stage, ...]] = {
    "new": (Stage.ADVERTISE_KEYS,),
    "advertised": (Stage.SHARE_KEYS,),
    "ready": (Stage.MASKED_INPUT,),
    "masked": (Stage.UNMASK, Stage.MASKED_INPUT),
}


@dataclass
class _Secrets:
    """The client's own secrets for one round: its self-mask seed and pairwise round seeds."""

    round_id: int
    self_seed: bytes
    seal_key: bytes
    seeds: dict[str, bytes]


@dataclass
class _Round:
    """A round after stage 2: its id and the neighbours it masked with (``V_u``)."""

    round_id: int
    masked_with: frozenset[str]


class SecAggClient:
    """One client's state machine for one epoch: stages 0 and 1 once, then 2 and 3 for each
    round."""

    def __init__(self, client_id: str, config: SecAggConfig) -> None:
        self.client_id = client_id
        self.config = config
        self._neighbours = config.neighbours(client_id)
        self._phase = "new"
        self._aborted = False
        self._keys: tuple[KeyPair, KeyPair] | None = None
        self._peers: tuple[str, ...] = ()
        self._channel: dict[str, bytes] = {}
        self._pair: dict[str, bytes] = {}
        self._pending: dict[int, _Secrets] = {}  # the rounds it has not masked yet
        self._own_share: Share | None = None  # of every round's (self seed, seal key)
        self._held: dict[str, Share] | None = None  # neighbours' shares, once relayed
        self._round: _Round | None = None

    @property
    def expects(self) -> tuple[Stage, ...]:
        """The stages this client accepts now; empty once aborted."""
        return () if self._aborted else _EXPECTS[self._phase]

    @property
    def aborted(self) -> bool:
        """Whether the client refused a request (it then answers nothing more this epoch)."""
        return self._aborted

    def can_mask(self, round_id: int) -> bool:
        """Whether it would mask an input for ``round_id`` now: a round of the epoch after every
        round it masked, once the keys are set up."""
        return (
            not self._aborted and self._phase in ("ready", "masked") and round_id in self._pending
        )

    # -- stages ------------------------------------------------------------------------------

    def advertise_keys(self, request: AdvertiseKeysRequest) -> KeyAdvertisement:
        """Stage 0: generate the epoch's key pairs; advertise the public keys."""
        return self._run(request, [self.config.epoch_id], self._advertise_keys)

    def share_keys(self, request: ShareKeysRequest) -> ShareKeysResponse:
        """Stage 1: check the broadcast key list; send the share package for the epoch."""
        return self._run(request, [self.config.epoch_id], self._share_keys)

    def masked_input(self, request: MaskedInputRequest, vector: np.ndarray) -> MaskedInputResponse:
        """Stage 2: accept the relayed shares (in its first round only); mask ``vector`` (ring
        words) with the round's neighbours and send it.

        ``vector`` must be 1-D with ``config.vector_length`` words of ``config.dtype``; a wrong
        vector raises CryptoError without consuming the stage.
        """
        x = np.asarray(vector)
        if x.shape != (self.config.vector_length,) or x.dtype != self.config.dtype:
            raise CryptoError(
                f"the input is {self.config.vector_length} words of {self.config.dtype}, "
                f"got shape {x.shape} of {x.dtype}"
            )
        return self._run(request, sorted(self._pending), lambda r: self._masked_input(r, x))

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Stage 3: after the consistency check, reveal one share per node it masked with."""
        return self._run(
            request, [] if self._round is None else [self._round.round_id], self._unmask
        )

    # -- machinery ---------------------------------------------------------------------------

    def _run(
        self, request: _Request, rounds: list[int], body: Callable[[_Request], ClientReply]
    ) -> ClientReply:
        stage, me = request.stage, self.client_id
        if self._aborted:
            raise ProtocolError(f"client {me!r} has aborted this epoch")
        expects = _EXPECTS[self._phase]
        if stage not in expects:
            names = " or ".join(s.name for s in expects)
            raise ProtocolError(
                f"client {me!r}: stage {stage.name} refused, it expects {names} now "
                "(a replayed or out-of-order request)"
            )
        if request.round_id not in rounds:
            expected = (
                f"a round in {rounds[0]}..{rounds[-1]}"
                if len(rounds) > 1
                else (f"round {rounds[0]}" if rounds else "no round")
            )
            raise ProtocolError(
                f"client {me!r}: stage {stage.name} for round {request.round_id}, expected "
                f"{expected} (a replayed or out-of-order request)"
            )
        if request.receiver != me:
            raise ProtocolError(f"request for {request.receiver!r} delivered to client {me!r}")
        try:
            return body(request)
        except (CryptoError, ProtocolError):
            self._abort()
            raise

    def _refuse(self, reason: str) -> SecAggAbort:
        return SecAggAbort(f"client {self.client_id!r} refuses: {reason}")

    def _abort(self) -> None:
        """Refuse everything from now on and drop every secret."""
        self._aborted = True
        self._keys, self._own_share, self._held, self._round = None, None, None, None
        self._pending, self._channel, self._pair = {}, {}, {}

    def _advertise_keys(self, request: AdvertiseKeysRequest) -> KeyAdvertisement:
        enc, mask = generate_keypair(), generate_keypair()
        self._keys = (enc, mask)
        self._phase = "advertised"
        return KeyAdvertisement(
            round_id=request.round_id,
            sender=self.client_id,
            enc_public_key=enc.public,
            mask_public_key=mask.public,
        )

    def _share_keys(self, request: ShareKeysRequest) -> ShareKeysResponse:
        assert self._keys is not None
        enc, mask = self._keys
        me, t, epoch = self.client_id, self.config.threshold, self.config.epoch_id
        listed = list(
            zip(request.client_ids, request.enc_public_keys, request.mask_public_keys, strict=True)
        )
        ids = [c for c, _, _ in listed]
        if len(set(ids)) != len(ids):
            raise self._refuse(
                f"the key list names {sorted({c for c in ids if ids.count(c) > 1})} more than once"
            )
        own = [(e, m) for c, e, m in listed if c == me]
        if own != [(enc.public, mask.public)]:
            raise self._refuse("the server did not echo this client's own public keys correctly")
        strangers = sorted(set(ids) - self._neighbours - {me})
        if strangers:
            raise self._refuse(f"the key list names {strangers}, not neighbours on the graph")
        keys = [k for _, e, m in listed for k in (e, m)]
        if len(set(keys)) != len(keys):
            raise self._refuse("two listed public keys are equal (public keys must be unique)")
        if len(ids) < t:
            raise self._refuse(
                f"only {len(ids)} clients of its neighbourhood advertised keys, threshold is {t}"
            )
        peers = {c: (e, m) for c, e, m in listed if c != me}
        self._peers = tuple(sorted(peers))
        for peer, (peer_enc, peer_mask) in peers.items():
            self._channel[peer] = proto.channel_key(enc, peer_enc, epoch, me, peer)
            self._pair[peer] = proto.pair_key(mask, peer_mask, epoch, me, peer)
        self._keys = None  # the pairwise keys are all the epoch needs
        package = self._package()
        self._phase = "ready"
        return ShareKeysResponse(round_id=epoch, sender=me, **package)

    def _package(self) -> dict[str, Any]:
        """Fresh secrets for every round of the epoch and the share package that carries them."""
        me, epoch, peers, round_ids = (
            self.client_id,
            self.config.epoch_id,
            self._peers,
            self.config.round_ids,
        )
        pair_seeds = {v: proto.round_seeds(self._pair[v], len(round_ids)) for v in peers}
        for i, r in enumerate(round_ids):
            seeds = {v: pair_seeds[v][i] for v in peers}
            self._pending[r] = _Secrets(r, os.urandom(SEED_BYTES), os.urandom(SEED_BYTES), seeds)
        rounds = list(self._pending.values())
        holders = self._neighbours | {me}
        secret = b"".join(s.self_seed + s.seal_key for s in rounds)
        shares = split_secret(secret, self.config.threshold, len(holders))
        self._own_share = shares[self.config.share_index(me, me) - 1]
        ciphertexts = []
        for v in peers:
            share = shares[self.config.share_index(me, v) - 1]
            plaintext = proto.pack(me.encode(), v.encode(), share.to_bytes())
            ad = proto.share_associated_data(epoch, me, v)
            ciphertexts.append(encrypt(self._channel[v], plaintext, ad))
        return {
            "receivers": peers,
            "ciphertexts": tuple(ciphertexts),
            "self_mask_commitments": b"".join(
                proto.self_mask_commitment(s.round_id, me, s.self_seed) for s in rounds
            ),
            "seed_commitments": tuple(
                proto.seed_commitments(round_ids, me, v, pair_seeds[v]) for v in peers
            ),
            "sealed_seeds": tuple(
                encrypt(
                    s.seal_key,
                    b"".join(s.seeds[v] for v in peers),
                    proto.sealed_seeds_associated_data(s.round_id, me),
                )
                for s in rounds
            ),
        }

    def _masked_input(self, request: MaskedInputRequest, x: np.ndarray) -> MaskedInputResponse:
        me, t, r = self.client_id, self.config.threshold, request.round_id
        if self._held is None:
            self._held = self._accept_shares(request)
        elif request.senders:
            raise self._refuse("share ciphertexts were relayed to it a second time this epoch")
        neighbours = set(request.neighbours)
        if len(neighbours) != len(request.neighbours):
            raise self._refuse("the round's neighbours name a client twice")
        strangers = sorted(neighbours - set(self._held))
        if strangers:
            raise self._refuse(f"the round's neighbours {strangers} sent it no shares")
        if len(neighbours) + 1 < t:
            raise self._refuse(
                f"only {len(neighbours) + 1} clients of its neighbourhood take part in round "
                f"{r}, threshold is {t}"
            )
        secrets = self._pending[r]
        for done in [q for q in self._pending if q <= r]:  # never mask these rounds again
            del self._pending[done]
        masked = x.copy()
        masked += expand_mask(secrets.self_seed, masked.size, self.config.bits)
        for peer in sorted(neighbours):
            proto.add_pairwise_mask(masked, secrets.seeds[peer], me, peer)
        self._round = _Round(r, frozenset(neighbours))
        self._phase = "masked"
        return MaskedInputResponse(round_id=r, sender=me, masked=masked)

    def _accept_shares(self, request: MaskedInputRequest) -> dict[str, Share]:
        """Open and check the neighbours' share ciphertexts (relayed in its first round)."""
        me, t = self.client_id, self.config.threshold
        held: dict[str, Share] = {}
        for sender, receiver, ciphertext in zip(
            request.senders, request.receivers, request.ciphertexts, strict=True
        ):
            if receiver != me:
                raise self._refuse(
                    f"a ciphertext from {sender!r} addressed to {receiver!r} was routed to it"
                )
            if sender not in self._channel:
                raise self._refuse(f"a ciphertext comes from {sender!r}, not a listed neighbour")
            if sender in held:
                raise self._refuse(f"two ciphertexts come from {sender!r}")
            held[sender] = self._open(sender, ciphertext)
        if len(held) + 1 < t:
            raise self._refuse(
                f"only {len(held) + 1} clients of its neighbourhood shared keys, threshold is {t}"
            )
        return held

    def _open(self, sender: str, ciphertext: bytes) -> Share:
        """Decrypt and check one neighbour's share of its secrets for the epoch."""
        me = self.client_id
        ad = proto.share_associated_data(self.config.epoch_id, sender, me)
        try:
            plaintext = decrypt(self._channel[sender], ciphertext, ad)
            named_sender, named_receiver, raw = proto.unpack(plaintext, 3)
            share = Share.from_bytes(raw)
        except CryptoError as exc:
            raise self._refuse(f"the ciphertext from {sender!r} is invalid: {exc}") from None
        if (named_sender, named_receiver) != (sender.encode(), me.encode()):
            raise self._refuse(f"the ciphertext from {sender!r} names another sender or receiver")
        expected = self.config.share_index(sender, me)
        if share.index != expected:
            raise self._refuse(f"the share from {sender!r} does not carry index {expected}")
        size = 2 * SEED_BYTES * self.config.rounds
        if len(share.value) != size:
            raise self._refuse(
                f"the share from {sender!r} has {len(share.value)} bytes, not {size}"
            )
        return share

    def _unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        assert self._round is not None
        me, t = self.client_id, self.config.threshold
        survivors, dropped = set(request.survivors), set(request.dropped)
        if len(survivors) != len(request.survivors) or len(dropped) != len(request.dropped):
            raise self._refuse("the unmasking request names a client twice")
        both = sorted(survivors & dropped)
        if both:
            raise self._refuse(
                f"consistency check failed: the server lists {both} both as survivors and as "
                "dropped (it would learn both secrets of a node)"
            )
        if me not in survivors:
            raise self._refuse(
                "the server does not list this client, which sent its masked "
                "input, among the survivors"
            )
        masked_with = set(self._round.masked_with) | {me}
        unknown = sorted((survivors | dropped) - masked_with)
        missing = sorted(masked_with - survivors - dropped)
        if unknown or missing:
            raise self._refuse(
                "the survivor and dropped sets must partition the nodes it masked with "
                f"(unknown: {unknown}, unaccounted for: {missing})"
            )
        if len(survivors) < t:
            raise self._refuse(
                f"only {len(survivors)} survivors in its neighbourhood, threshold is {t}"
            )
        assert self._held is not None and self._own_share is not None
        held = {**self._held, me: self._own_share}
        at = 2 * SEED_BYTES * (self._round.round_id - self.config.epoch_id)
        self._round, self._phase = None, "ready"
        own, dead = sorted(survivors), sorted(dropped)
        return UnmaskResponse(
            round_id=request.round_id,
            sender=me,
            self_mask_owners=tuple(own),
            self_mask_shares=tuple(_part(held[v], at, SEED_BYTES) for v in own),
            seed_owners=tuple(dead),
            seed_shares=tuple(_part(held[v], at + SEED_BYTES, SEED_BYTES) for v in dead),
        )


def _part(share: Share, start: int, size: int) -> bytes:
    """The encoded share of ``size`` bytes of the shared secret from ``start`` (Shamir works
    byte by byte, so a slice of a share is a share of the slice)."""
    return bytes([share.index]) + share.value[start : start + size]
