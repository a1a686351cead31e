"""The honest client of Cordiale's secure aggregation (Bonawitz et al. 2017 with SecAgg+).

Hand-written, pure and I/O-free: :class:`SecAggClient` consumes one server request per stage
and returns its reply; a transport carries the messages. Cryptographic primitives come from
``cryptography`` via :mod:`cordiale.crypto.primitives`.

What the client does:

* stage 0: generates two X25519 key pairs (c: encryption, s: masks) and a 32-byte self-mask
  seed ``b_u``;
* stage 1: Shamir-shares ``b_u`` and the 32-byte private key ``s_u^SK`` (t of its closed
  neighbourhood) and encrypts each neighbour's pair of shares with AES-GCM under the pairwise
  c-key, the associated data binding round, stage, sender and receiver;
* stage 2: ``y_u = x_u + PRG(b_u) + sum_v ±PRG(s_uv) mod 2^bits`` over the neighbours ``v``
  whose share ciphertexts it accepted (``V_u``);
* stage 3: reveals the ``b``-share of each survivor and the ``s_sk``-share of each dropped
  neighbour.

The checks. A request in the wrong place raises :class:`~cordiale.core.errors.ProtocolError`
and is simply refused (the client's state is unchanged); a failed check inside a stage raises
:class:`~cordiale.core.errors.SecAggAbort` and aborts the client for the round (it answers
nothing more):

* every request: the expected stage (a stage out of order or a second time, i.e. a replay, is
  refused), this round, this receiver;
* stage 1: its own public keys echoed exactly; every listed client is a neighbour on the public
  graph and listed once; all listed public keys are distinct; at least ``t`` members of its
  closed neighbourhood are listed;
* stage 2: each ciphertext is addressed to this client, comes from a listed neighbour, at most
  one per sender, authenticates, and its plaintext names the same sender and receiver and
  holds shares with the expected Shamir indices; at least ``t`` members of its closed
  neighbourhood remain;
* stage 3, the **consistency check**. Let ``V_u`` be the neighbours whose shares ``u`` accepted
  in stage 2 (exactly those it masked with), ``S`` the requested survivors and ``D`` the
  requested dropped nodes. The client answers only if ``S`` and ``D`` are disjoint (it never
  reveals both shares of one node), ``u`` is in ``S`` (it did send its masked input), ``S ∪ D``
  is exactly ``V_u ∪ {u}`` (a node it never masked with is never asked about and every node it
  masked with is accounted for) and ``|S| >= t``. Since stage 3 runs once, no sequence of
  requests obtains both shares of a node from this client.

Limitation (documented, not hidden): these checks are per client. A malicious server that shows
*different* clients contradictory survivor sets (node v survived to some, dropped to others)
is not detected by any single client; detecting that needs the signed consistency round of
Bonawitz et al. (malicious model), which this semi-honest-server implementation does not have.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from cordiale.core.errors import CryptoError, ProtocolError, SecAggAbort

from . import _protocol as proto
from .messages import (
    AdvertiseKeysRequest,
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
    "_Request", AdvertiseKeysRequest, ShareKeysRequest, MaskedInputRequest, UnmaskRequest
)
_Reply = TypeVar("_Reply", KeyAdvertisement, ShareKeysResponse, MaskedInputResponse, UnmaskResponse)


class SecAggClient:
    """One client's state machine for one round: call the four stage methods in order."""

    def __init__(self, client_id: str, config: SecAggConfig) -> None:
        self.client_id = client_id
        self.config = config
        self._neighbours = config.neighbours(client_id)
        self._next: Stage | None = Stage.ADVERTISE_KEYS
        self._aborted = False
        self._enc_keys: KeyPair | None = None
        self._mask_keys: KeyPair | None = None
        self._self_seed = b""
        self._peer_keys: dict[str, tuple[bytes, bytes]] = {}
        self._channel_keys: dict[str, bytes] = {}
        self._own_shares: tuple[Share, Share] | None = None
        self._held: dict[str, tuple[Share, Share]] = {}

    @property
    def next_stage(self) -> Stage | None:
        """The stage this client expects next; None when finished or aborted."""
        return None if self._aborted else self._next

    @property
    def aborted(self) -> bool:
        """Whether the client refused a request (it then answers nothing more)."""
        return self._aborted

    # -- stages ------------------------------------------------------------------------------

    def advertise_keys(self, request: AdvertiseKeysRequest) -> KeyAdvertisement:
        """Stage 0: generate fresh keys and the self-mask seed; advertise the public keys."""
        return self._run(request, self._advertise_keys)

    def share_keys(self, request: ShareKeysRequest) -> ShareKeysResponse:
        """Stage 1: check the broadcast key list; send encrypted shares to each neighbour."""
        return self._run(request, self._share_keys)

    def masked_input(self, request: MaskedInputRequest, vector: np.ndarray) -> MaskedInputResponse:
        """Stage 2: accept the relayed shares; mask ``vector`` (ring words) and send it.

        ``vector`` must be 1-D with ``config.vector_length`` words of ``config.dtype``; a wrong
        vector raises CryptoError without consuming the stage.
        """
        x = np.asarray(vector)
        if x.shape != (self.config.vector_length,) or x.dtype != self.config.dtype:
            raise CryptoError(
                f"the input is {self.config.vector_length} words of {self.config.dtype}, "
                f"got shape {x.shape} of {x.dtype}"
            )
        return self._run(request, lambda r: self._masked_input(r, x))

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Stage 3: after the consistency check, reveal one share per neighbour."""
        return self._run(request, self._unmask)

    # -- machinery ---------------------------------------------------------------------------

    def _run(self, request: _Request, body: Callable[[_Request], _Reply]) -> _Reply:
        stage = request.stage
        if self._aborted:
            raise ProtocolError(f"client {self.client_id!r} has aborted this round")
        if self._next is None or stage < self._next:
            raise ProtocolError(
                f"client {self.client_id!r}: stage {stage.name} already completed "
                "(replayed request refused)"
            )
        if stage != self._next:
            raise ProtocolError(
                f"client {self.client_id!r}: stage {stage.name} requested out of order, "
                f"expected {self._next.name}"
            )
        if request.round_id != self.config.round_id:
            raise ProtocolError(
                f"client {self.client_id!r}: request for round {request.round_id}, "
                f"this is round {self.config.round_id}"
            )
        if request.receiver != self.client_id:
            raise ProtocolError(
                f"request for {request.receiver!r} delivered to client {self.client_id!r}"
            )
        try:
            reply = body(request)
        except (CryptoError, ProtocolError):
            self._aborted = True
            raise
        self._next = Stage(stage + 1) if stage < Stage.UNMASK else None
        return reply

    def _refuse(self, reason: str) -> SecAggAbort:
        return SecAggAbort(f"client {self.client_id!r} refuses: {reason}")

    def _advertise_keys(self, request: AdvertiseKeysRequest) -> KeyAdvertisement:
        self._enc_keys, self._mask_keys = generate_keypair(), generate_keypair()
        self._self_seed = os.urandom(SEED_BYTES)
        return KeyAdvertisement(
            round_id=request.round_id,
            sender=self.client_id,
            enc_public_key=self._enc_keys.public,
            mask_public_key=self._mask_keys.public,
        )

    def _share_keys(self, request: ShareKeysRequest) -> ShareKeysResponse:
        assert self._enc_keys is not None and self._mask_keys is not None
        me, t = self.client_id, self.config.threshold
        listed = list(
            zip(request.client_ids, request.enc_public_keys, request.mask_public_keys, strict=True)
        )
        ids = [c for c, _, _ in listed]
        if len(set(ids)) != len(ids):
            raise self._refuse(
                f"the key list names {sorted({c for c in ids if ids.count(c) > 1})} more than once"
            )
        own = [(e, m) for c, e, m in listed if c == me]
        if own != [(self._enc_keys.public, self._mask_keys.public)]:
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
        self._peer_keys = {c: (e, m) for c, e, m in listed if c != me}
        b_shares = self._split(self._self_seed)
        s_shares = self._split(self._mask_keys.private_bytes())
        self._own_shares = (b_shares[me], s_shares[me])
        receivers, ciphertexts = [], []
        for peer in sorted(self._peer_keys):
            key = proto.encryption_key(
                self._enc_keys, self._peer_keys[peer][0], request.round_id, me, peer
            )
            self._channel_keys[peer] = key
            plaintext = proto.pack(
                me.encode(), peer.encode(), b_shares[peer].to_bytes(), s_shares[peer].to_bytes()
            )
            ad = proto.share_associated_data(request.round_id, me, peer)
            receivers.append(peer)
            ciphertexts.append(encrypt(key, plaintext, ad))
        return ShareKeysResponse(
            round_id=request.round_id,
            sender=me,
            receivers=tuple(receivers),
            ciphertexts=tuple(ciphertexts),
            self_mask_commitment=proto.self_mask_commitment(request.round_id, me, self._self_seed),
        )

    def _split(self, secret: bytes) -> dict[str, Share]:
        """Shares of ``secret`` for every member of the closed neighbourhood, by holder."""
        holders = sorted(self._neighbours | {self.client_id})
        shares = split_secret(secret, self.config.threshold, len(holders))
        return {h: shares[self.config.share_index(self.client_id, h) - 1] for h in holders}

    def _masked_input(self, request: MaskedInputRequest, x: np.ndarray) -> MaskedInputResponse:
        assert self._mask_keys is not None
        me, t = self.client_id, self.config.threshold
        held: dict[str, tuple[Share, Share]] = {}
        for sender, receiver, ciphertext in zip(
            request.senders, request.receivers, request.ciphertexts, strict=True
        ):
            if receiver != me:
                raise self._refuse(
                    f"a ciphertext from {sender!r} addressed to {receiver!r} was routed to it"
                )
            if sender not in self._peer_keys:
                raise self._refuse(f"a ciphertext comes from {sender!r}, not a listed neighbour")
            if sender in held:
                raise self._refuse(f"two ciphertexts come from {sender!r}")
            held[sender] = self._open(request.round_id, sender, ciphertext)
        if len(held) + 1 < t:
            raise self._refuse(
                f"only {len(held) + 1} clients of its neighbourhood shared keys, threshold is {t}"
            )
        self._held = held
        masked = x.copy()
        masked += expand_mask(self._self_seed, masked.size, self.config.bits)
        for peer in sorted(held):
            seed = proto.mask_seed(
                self._mask_keys, self._peer_keys[peer][1], request.round_id, me, peer
            )
            proto.add_pairwise_mask(masked, seed, me, peer)
        return MaskedInputResponse(round_id=request.round_id, sender=me, masked=masked)

    def _open(self, round_id: int, sender: str, ciphertext: bytes) -> tuple[Share, Share]:
        """Decrypt and check one neighbour's pair of shares (self-mask share, key share)."""
        me = self.client_id
        ad = proto.share_associated_data(round_id, sender, me)
        try:
            plaintext = decrypt(self._channel_keys[sender], ciphertext, ad)
            named_sender, named_receiver, b_raw, s_raw = proto.unpack(plaintext, 4)
            shares = (Share.from_bytes(b_raw), Share.from_bytes(s_raw))
        except CryptoError as exc:
            raise self._refuse(f"the ciphertext from {sender!r} is invalid: {exc}") from None
        if (named_sender, named_receiver) != (sender.encode(), me.encode()):
            raise self._refuse(f"the ciphertext from {sender!r} names another sender or receiver")
        expected = self.config.share_index(sender, me)
        if any(s.index != expected for s in shares):
            raise self._refuse(f"the shares from {sender!r} do not carry index {expected}")
        return shares

    def _unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        assert self._own_shares is not None
        me, t = self.client_id, self.config.threshold
        survivors, dropped = set(request.survivors), set(request.dropped)
        if len(survivors) != len(request.survivors) or len(dropped) != len(request.dropped):
            raise self._refuse("the unmasking request names a client twice")
        both = sorted(survivors & dropped)
        if both:
            raise self._refuse(
                f"consistency check failed: the server asks for both the self-mask share and the "
                f"mask-key share of {both}"
            )
        if me not in survivors:
            raise self._refuse(
                "the server does not list this client, which sent its masked "
                "input, among the survivors"
            )
        masked_with = set(self._held) | {me}
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
        held = {**self._held, me: self._own_shares}
        reply = UnmaskResponse(
            round_id=request.round_id,
            sender=me,
            self_mask_owners=tuple(sorted(survivors)),
            self_mask_shares=tuple(held[v][0].to_bytes() for v in sorted(survivors)),
            key_owners=tuple(sorted(dropped)),
            key_shares=tuple(held[v][1].to_bytes() for v in sorted(dropped)),
        )
        self._forget()
        return reply

    def _forget(self) -> None:
        """Drop the secrets once the round is over for this client."""
        self._self_seed = b""
        self._enc_keys = self._mask_keys = None
        self._held, self._channel_keys, self._own_shares = {}, {}, None
