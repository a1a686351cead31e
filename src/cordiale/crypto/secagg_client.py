"""The honest client of Cordiale's secure aggregation (Bonawitz et al. 2017 with SecAgg+, keys kept
for an epoch of rounds).

Hand-written, pure and I/O-free: :class:`SecAggClient` consumes one server request per stage
and returns its reply; a transport carries the messages. Cryptographic primitives come from
``cryptography`` via :mod:`cordiale.crypto.primitives`.

**Epochs.** Key agreement is the expensive part of the protocol (two X25519 exchanges per
neighbour), so it runs once per *epoch* (stages 0-1) and each round of the epoch (stages 2-3)
reuses its results. What makes the reuse safe is that no long-term secret is ever revealed:

* stage 0 (once): two X25519 key pairs (c: channels, s: masks);
* stage 1 (once): checks the broadcast key list, derives one AES-GCM channel key and one pair
  key ``K_uv`` per neighbour, and sends its *share package* for the epoch's first round;
* a share package for round r: a fresh 32-byte self-mask seed ``b_u`` and the round's pairwise
  seeds ``s_uv,r = HMAC-SHA256(K_uv, r)`` (a PRF: one round's seed tells nothing about
  another's), sealed with AES-GCM under a fresh *seal key* ``e_u``; ``b_u`` and ``e_u`` are
  Shamir-shared (t of its closed neighbourhood) and encrypted for each neighbour, with SHA-256
  commitments to ``b_u`` and to each ``s_uv,r``;
* stage 2 (each round): ``y_u = x_u + PRG(b_u) + sum_v ±PRG(s_uv,r) mod 2^bits`` over the
  neighbours ``v`` whose round shares it accepted (``V_u``), sent with its package for the
  next round;
* stage 3: reveals the Shamir shares it holds (its own included) of each survivor's ``b`` and
  of each dropped node's seal key ``e_v``, which opens ``v``'s sealed round seeds (``v``'s input
  is not in the sum). Only shares leave, so every secret the server learns needs ``t`` holders.

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
* stage 2: the round is the one its last package was made for (each round is masked once);
  each ciphertext is addressed to this client, comes from a listed neighbour, at most one per
  sender, authenticates under this round, and its plaintext names the same sender and receiver
  and holds a share with the expected Shamir index; at least ``t`` members of its closed
  neighbourhood remain;
* stage 3, the **consistency check**. Let ``S`` be the requested survivors and ``D`` the
  dropped nodes. The client answers only if ``S`` and ``D`` are disjoint (it never reveals both
  shares of one node), ``u`` is in ``S`` (it did send its masked input), ``S ∪ D`` is exactly
  ``V_u ∪ {u}`` and ``|S| >= t``. Since stage 3 runs once per round, no sequence of requests
  obtains both shares of a node's round secrets from this client.

Limitation (documented, not hidden): these checks are per client. A malicious server that shows
*different* clients contradictory survivor sets (node v survived to some, dropped to others)
is not detected by any single client; detecting that needs the signed consistency round of
Bonawitz et al. (malicious model), which this semi-honest-server implementation does not have.
As in the original protocol, such a lie gains a node's two secrets only from ``2t`` holders,
more than a neighbourhood has when ``t`` is a majority of it (the default).
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
    own_share: Share | None = None  # its own share of (self_seed, seal_key)


@dataclass
class _Round:
    """A round after stage 2: its secrets and the shares it holds (of ``V_u``)."""

    secrets: _Secrets
    held: dict[str, Share]


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
        self._pending: _Secrets | None = None
        self._round: _Round | None = None

    @property
    def expects(self) -> tuple[Stage, ...]:
        """The stages this client accepts now; empty once aborted."""
        return () if self._aborted else _EXPECTS[self._phase]

    @property
    def aborted(self) -> bool:
        """Whether the client refused a request (it then answers nothing more this epoch)."""
        return self._aborted

    @property
    def next_round(self) -> int | None:
        """The round its last share package was made for (the only round it masks next)."""
        return None if self._pending is None or self._aborted else self._pending.round_id

    # -- stages ------------------------------------------------------------------------------

    def advertise_keys(self, request: AdvertiseKeysRequest) -> KeyAdvertisement:
        """Stage 0: generate the epoch's key pairs; advertise the public keys."""
        return self._run(request, self.config.epoch_id, self._advertise_keys)

    def share_keys(self, request: ShareKeysRequest) -> ShareKeysResponse:
        """Stage 1: check the broadcast key list; send the first round's share package."""
        return self._run(request, self.config.epoch_id, self._share_keys)

    def masked_input(self, request: MaskedInputRequest, vector: np.ndarray) -> MaskedInputResponse:
        """Stage 2: accept the relayed shares; mask ``vector`` (ring words) and send it with the
        next round's share package.

        ``vector`` must be 1-D with ``config.vector_length`` words of ``config.dtype``; a wrong
        vector raises CryptoError without consuming the stage.
        """
        x = np.asarray(vector)
        if x.shape != (self.config.vector_length,) or x.dtype != self.config.dtype:
            raise CryptoError(
                f"the input is {self.config.vector_length} words of {self.config.dtype}, "
                f"got shape {x.shape} of {x.dtype}"
            )
        expected = self._pending.round_id if self._pending is not None else None
        return self._run(request, expected, lambda r: self._masked_input(r, x))

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Stage 3: after the consistency check, reveal one share per node it masked with."""
        return self._run(request, self._round_id(), self._unmask)

    # -- machinery ---------------------------------------------------------------------------

    def _round_id(self) -> int | None:
        return None if self._round is None else self._round.secrets.round_id

    def _run(
        self, request: _Request, round_id: int | None, body: Callable[[_Request], ClientReply]
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
        if request.round_id != round_id:
            raise ProtocolError(
                f"client {me!r}: stage {stage.name} for round {request.round_id}, expected "
                f"round {round_id} (a replayed or out-of-order request)"
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
        self._keys, self._pending, self._round = None, None, None
        self._channel, self._pair = {}, {}

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
        self._pending, package = self._package(epoch)
        self._phase = "ready"
        return ShareKeysResponse(round_id=epoch, sender=me, **package)

    def _package(self, round_id: int) -> tuple[_Secrets, dict[str, Any]]:
        """Fresh secrets for ``round_id`` and the share package that carries them."""
        me = self.client_id
        secrets = _Secrets(
            round_id,
            os.urandom(SEED_BYTES),
            os.urandom(SEED_BYTES),
            {v: proto.round_seed(self._pair[v], round_id, me, v) for v in self._peers},
        )
        sealed = encrypt(
            secrets.seal_key,
            b"".join(secrets.seeds[v] for v in self._peers),
            proto.sealed_seeds_associated_data(round_id, me),
        )
        holders = self._neighbours | {me}
        shares = split_secret(
            secrets.self_seed + secrets.seal_key, self.config.threshold, len(holders)
        )
        secrets.own_share = shares[self.config.share_index(me, me) - 1]
        ciphertexts = []
        for v in self._peers:
            share = shares[self.config.share_index(me, v) - 1]
            plaintext = proto.pack(me.encode(), v.encode(), share.to_bytes())
            ad = proto.share_associated_data(round_id, me, v)
            ciphertexts.append(encrypt(self._channel[v], plaintext, ad))
        return secrets, {
            "shares_round": round_id,
            "receivers": self._peers,
            "ciphertexts": tuple(ciphertexts),
            "self_mask_commitment": proto.self_mask_commitment(round_id, me, secrets.self_seed),
            "seed_commitments": tuple(
                proto.seed_commitment(round_id, me, v, secrets.seeds[v]) for v in self._peers
            ),
            "sealed_seeds": sealed,
        }

    def _masked_input(self, request: MaskedInputRequest, x: np.ndarray) -> MaskedInputResponse:
        assert self._pending is not None
        me, t, r = self.client_id, self.config.threshold, request.round_id
        if request.next_round <= r:
            raise self._refuse(f"the next round {request.next_round} does not follow round {r}")
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
            held[sender] = self._open(r, sender, ciphertext)
        if len(held) + 1 < t:
            raise self._refuse(
                f"only {len(held) + 1} clients of its neighbourhood shared keys, threshold is {t}"
            )
        secrets = self._pending
        masked = x.copy()
        masked += expand_mask(secrets.self_seed, masked.size, self.config.bits)
        for peer in sorted(held):
            proto.add_pairwise_mask(masked, secrets.seeds[peer], me, peer)
        self._round = _Round(secrets, held)
        self._pending, package = self._package(request.next_round)
        self._phase = "masked"
        return MaskedInputResponse(round_id=r, sender=me, masked=masked, **package)

    def _open(self, round_id: int, sender: str, ciphertext: bytes) -> Share:
        """Decrypt and check one neighbour's share of its round secrets."""
        me = self.client_id
        ad = proto.share_associated_data(round_id, sender, me)
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
        if len(share.value) != 2 * SEED_BYTES:
            raise self._refuse(
                f"the share from {sender!r} has {len(share.value)} bytes, not {2 * SEED_BYTES}"
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
        masked_with = set(self._round.held) | {me}
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
        held = {**self._round.held, me: self._round.secrets.own_share}
        self._round, self._phase = None, "ready"
        own, dead = sorted(survivors), sorted(dropped)
        return UnmaskResponse(
            round_id=request.round_id,
            sender=me,
            self_mask_owners=tuple(own),
            self_mask_shares=tuple(_part(held[v], 0, SEED_BYTES) for v in own),
            seed_owners=tuple(dead),
            seed_shares=tuple(_part(held[v], SEED_BYTES, None) for v in dead),
        )


def _part(share: Share | None, start: int, stop: int | None) -> bytes:
    """The encoded share of one part of the shared secret (Shamir works byte by byte)."""
    assert share is not None
    return Share(share.index, share.value[start:stop]).to_bytes()
