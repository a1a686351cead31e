"""A secure-aggregation epoch driven one step at a time, shared by the secagg test modules.

Honest clients answer the server's requests; a test stops anywhere to inspect or tamper with a
request or a reply (playing a malicious server or client) and checks the refusal. No protocol
logic is replaced: the harness only carries messages between the real client and server.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import strategies as st

from cordiale.core.errors import ProtocolError, SecAggAbort
from cordiale.crypto import (
    AggregateResult,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    Share,
    SharePackage,
    Stage,
    UnmaskResponse,
    _protocol,
    decrypt,
)

EPOCH = 7
"""The epoch id of every harness epoch, and so the number of its first round."""

Drops = Mapping[Stage | int, Collection[str]]


def drop_schedule(
    draw_order: list[str], counts: list[int], stages: list[Stage] | None = None
) -> dict[Stage, set[str]]:
    """Drop the first counts[0] clients of draw_order at stages[0] (default: every stage in
    order), the next counts[1] at stages[1]..."""
    schedule, start = {}, 0
    for stage, count in zip(stages or list(Stage), counts, strict=True):
        schedule[stage] = set(draw_order[start : start + count])
        start += count
    return schedule


def draw_counts(
    data: st.DataObject, stages: int, budget: int, least: Sequence[int] = ()
) -> list[int]:
    """Numbers of clients dropping at each of ``stages`` stages, at most ``budget`` in all and
    at least ``least[i]`` at the i-th stage (``budget`` must cover the least numbers)."""
    floors = [*least, *[0] * (stages - len(least))]
    counts: list[int] = []
    for i in range(stages):
        room = budget - sum(counts) - sum(floors[i + 1 :])
        counts.append(data.draw(st.integers(floors[i], room)))
    return counts


class Epoch:
    """An honest epoch whose requests and replies can be inspected and tampered with.

    ``stage`` is the stage whose ``requests`` are pending in round ``round_id``; ``replies``
    are the last replies handed to the server and ``received`` every reply it was given.
    After stage 1, and after each round's stage 3 (the server aggregates: ``results``), a round
    starts at stage 2: by default the next one over every client still in the epoch, or
    ``next_round`` over ``members`` when a step names them. After the epoch's last round no
    round starts (``finished``).
    """

    def __init__(
        self,
        n: int = 5,
        t: int = 3,
        degree: int | None = None,
        length: int = 16,
        bits: int = 32,
        graph_seed: bytes = b"",
        rounds: int = 3,
    ) -> None:
        self.ids = [f"c{i}" for i in range(n)]
        self.config = SecAggConfig(
            epoch_id=EPOCH,
            client_ids=tuple(self.ids),
            threshold=t,
            vector_length=length,
            bits=bits,
            degree=degree,
            graph_seed=graph_seed,
            rounds=rounds,
        )
        self.clients = {c: SecAggClient(c, self.config) for c in self.ids}
        self.server = SecAggServer(self.config)
        self._rng = np.random.default_rng(0)
        self.round_id = EPOCH
        self.vectors = self._draw()
        self.inputs: dict[int, dict[str, np.ndarray]] = {}
        self.results: list[AggregateResult] = []
        self.received: list[Any] = []
        self.replies: list[Any] = []
        self.finished = False
        self.stage = Stage.ADVERTISE_KEYS
        self.requests: dict[str, Any] = self.server.advertise_keys()

    def _draw(self) -> dict[str, np.ndarray]:
        dtype, bits = self.config.dtype, self.config.bits
        return {
            c: self._rng.integers(0, 2**bits, self.config.vector_length, dtype=dtype)
            for c in self.ids
        }

    def answer(self, client: str, request: Any) -> Any:
        """The honest reply of ``client`` to ``request``."""
        c = self.clients[client]
        if request.stage is Stage.MASKED_INPUT:
            self.inputs.setdefault(request.round_id, {})[client] = self.vectors[client]
            return c.masked_input(request, self.vectors[client])
        handlers = {
            Stage.ADVERTISE_KEYS: c.advertise_keys,
            Stage.SHARE_KEYS: c.share_keys,
            Stage.UNMASK: c.unmask,
        }
        return handlers[request.stage](request)

    def replies_to(self, skip: Collection[str] = ()) -> list[Any]:
        """The honest replies to the pending requests of every client not in ``skip``."""
        return [self.answer(c, r) for c, r in self.requests.items() if c not in skip]

    def step(
        self,
        skip: Collection[str] = (),
        next_round: int | None = None,
        members: Collection[str] | None = None,
    ) -> None:
        """Honest clients (but those in ``skip``, who drop) answer; the server moves on (see
        :meth:`advance`)."""
        self.advance(self.replies_to(skip), next_round, members)

    def advance(
        self,
        replies: Iterable[Any],
        next_round: int | None = None,
        members: Collection[str] | None = None,
    ) -> None:
        """Hand ``replies`` to the server's next step and take its requests; after stages 1
        and 3, start round ``next_round`` (default: the next one) over ``members`` (default:
        every client still in the epoch)."""
        assert not self.finished, "the epoch is over"
        self.replies = list(replies)
        self.received.extend(self.replies)
        server, stage = self.server, self.stage
        if stage is Stage.UNMASK:
            self.results.append(server.aggregate(self.replies))
            if next_round is None and self.round_id + 1 not in self.config.round_ids:
                self.finished, self.requests = True, {}  # the epoch's last round is over
                return
            self.start(self.round_id + 1 if next_round is None else next_round, members)
            return
        if stage is Stage.SHARE_KEYS:
            server.collect_shares(self.replies)
            self.start(self.round_id if next_round is None else next_round, members)
            return
        assert next_round is None and members is None, "a round starts after stage 1 or 3"
        following = {
            Stage.ADVERTISE_KEYS: server.share_keys,
            Stage.MASKED_INPUT: server.unmask,
        }
        self.requests = following[stage](self.replies)
        self.stage = Stage(stage + 1)

    def start(self, round_id: int, members: Collection[str] | None = None) -> None:
        """Have the server start ``round_id`` over ``members`` (stage 2 requests)."""
        self.round_id, self.stage, self.vectors = round_id, Stage.MASKED_INPUT, self._draw()
        self.requests = self.server.masked_input(round_id, members)

    def until(self, stage: Stage, round_id: int | None = None) -> Epoch:
        """Run honestly until ``stage`` of ``round_id`` (default: the round in progress)."""
        target = (self.round_id if round_id is None else round_id, stage)
        while (self.round_id, self.stage) < target:
            self.step()
        return self

    def run_round(
        self,
        drop_at: Drops | None = None,
        next_round: int | None = None,
        members: Collection[str] | None = None,
    ) -> AggregateResult:
        """Finish the round in progress, ``drop_at[stage]`` dropping at each stage; then start
        ``next_round`` over ``members`` (see :meth:`advance`)."""
        drops = {Stage(s): set(c) for s, c in (drop_at or {}).items()}
        done = len(self.results)
        while len(self.results) == done:
            if self.stage is Stage.UNMASK:
                self.step(drops.get(self.stage, ()), next_round, members)
            else:
                self.step(drops.get(self.stage, ()))
        return self.results[-1]

    def plain_sum(self, result: AggregateResult) -> np.ndarray:
        """The ring sum of the inputs of ``result``'s survivors."""
        total = np.zeros(self.config.vector_length, dtype=self.config.dtype)
        for c in result.survivors:
            total += self.inputs[result.round_id][c]
        return total

    def unmask_replies(self, round_id: int) -> list[UnmaskResponse]:
        """The stage-3 replies the server received in round ``round_id``."""
        return [
            r for r in self.received if isinstance(r, UnmaskResponse) and r.round_id == round_id
        ]

    def package(self, owner: str) -> SharePackage | None:
        """The share package ``owner`` sent for the epoch (stage 1), if the server got one."""
        packages = [p for p in self.received if isinstance(p, SharePackage) and p.sender == owner]
        assert len(packages) <= 1
        return packages[0] if packages else None

    def can_mask(self, client: str) -> list[int]:
        """The rounds of the epoch that ``client`` would still mask now."""
        return [r for r in self.config.round_ids if self.clients[client].can_mask(r)]


Shares = dict[str, list[Share]]


def received_shares(replies: Iterable[UnmaskResponse]) -> tuple[Shares, Shares]:
    """The shares that stage-3 replies reveal, by the node they belong to: of self-mask seeds,
    and of seal keys."""
    selves: Shares = {}
    seals: Shares = {}
    for reply in replies:
        for owners, shares, into in (
            (reply.self_mask_owners, reply.self_mask_shares, selves),
            (reply.seed_owners, reply.seed_shares, seals),
        ):
            for owner, data in zip(owners, shares, strict=True):
                into.setdefault(owner, []).append(Share.from_bytes(data))
    return selves, seals


def open_sealed_seeds(package: SharePackage, round_id: int, seal_key: bytes) -> dict[str, bytes]:
    """The pairwise seeds of ``round_id`` that ``package`` sealed, by peer, opened with
    ``seal_key`` (as the server does for a dropped node); CryptoError if the key does not open
    them."""
    sealed = package.sealed_seeds[round_id - package.round_id]
    ad = _protocol.sealed_seeds_associated_data(round_id, package.sender)
    return _protocol.split_round_seeds(decrypt(seal_key, sealed, ad), package.receivers)


def commitment_of(commitments: bytes, package: SharePackage, round_id: int) -> bytes:
    """The commitment of ``round_id`` among a package's (one per round of the epoch)."""
    at = (round_id - package.round_id) * _protocol.COMMITMENT_BYTES
    return commitments[at : at + _protocol.COMMITMENT_BYTES]


def refuse(
    epoch: Epoch, client: str, request: Any, match: str, error: type[Exception] | None = None
) -> None:
    """``client`` refuses ``request`` with ``error`` (default SecAggAbort) matching ``match``,
    is aborted for the epoch and answers nothing more."""
    with pytest.raises(error or SecAggAbort, match=match):
        epoch.answer(client, request)
    assert epoch.clients[client].aborted and epoch.clients[client].expects == ()
    assert epoch.can_mask(client) == []
    with pytest.raises(ProtocolError, match="aborted"):
        epoch.answer(client, request)
