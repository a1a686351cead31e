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
    After stage 3 the server aggregates (``results``) and the next round starts at stage 2.
    """

    def __init__(
        self,
        n: int = 5,
        t: int = 3,
        degree: int | None = None,
        length: int = 16,
        bits: int = 32,
        graph_seed: bytes = b"",
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

    def step(self, skip: Collection[str] = ()) -> None:
        """Honest clients (but those in ``skip``, who drop) answer; the server moves on."""
        self.advance(self.replies_to(skip))

    def advance(self, replies: Iterable[Any]) -> None:
        """Hand ``replies`` to the server's next step and take its requests."""
        self.replies = list(replies)
        self.received.extend(self.replies)
        server, stage = self.server, self.stage
        if stage is Stage.UNMASK:
            self.results.append(server.aggregate(self.replies))
            self.round_id += 1
            self.vectors = self._draw()
            self.requests, self.stage = server.masked_input(self.round_id), Stage.MASKED_INPUT
            return
        if stage is Stage.SHARE_KEYS:
            server.collect_shares(self.replies)
            self.requests = server.masked_input(self.round_id)
        else:
            following = {
                Stage.ADVERTISE_KEYS: server.share_keys,
                Stage.MASKED_INPUT: server.unmask,
            }
            self.requests = following[stage](self.replies)
        self.stage = Stage(stage + 1)

    def until(self, stage: Stage, round_id: int | None = None) -> Epoch:
        """Run honestly until ``stage`` of ``round_id`` (default: the round in progress)."""
        target = (self.round_id if round_id is None else round_id, stage)
        while (self.round_id, self.stage) < target:
            self.step()
        return self

    def run_round(self, drop_at: Drops | None = None) -> AggregateResult:
        """Finish the round in progress, ``drop_at[stage]`` dropping at each stage."""
        drops = {Stage(s): set(c) for s, c in (drop_at or {}).items()}
        done = len(self.results)
        while len(self.results) == done:
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

    def package(self, owner: str, shares_round: int) -> SharePackage | None:
        """The share package ``owner`` sent for round ``shares_round``, if the server got one."""
        packages = [
            p
            for p in self.received
            if isinstance(p, SharePackage) and (p.sender, p.shares_round) == (owner, shares_round)
        ]
        assert len(packages) <= 1
        return packages[0] if packages else None


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


def open_sealed_seeds(package: SharePackage, seal_key: bytes) -> dict[str, bytes]:
    """The pairwise round seeds that ``package`` sealed, by peer, opened with ``seal_key`` (as
    the server does for a dropped node)."""
    ad = _protocol.sealed_seeds_associated_data(package.shares_round, package.sender)
    opened = decrypt(seal_key, package.sealed_seeds, ad)
    return _protocol.split_round_seeds(opened, package.receivers)


def refuse(
    epoch: Epoch, client: str, request: Any, match: str, error: type[Exception] | None = None
) -> None:
    """``client`` refuses ``request`` with ``error`` (default SecAggAbort) matching ``match``,
    is aborted for the epoch and answers nothing more."""
    with pytest.raises(error or SecAggAbort, match=match):
        epoch.answer(client, request)
    assert epoch.clients[client].aborted and epoch.clients[client].expects == ()
    assert epoch.clients[client].next_round is None
    with pytest.raises(ProtocolError, match="aborted"):
        epoch.answer(client, request)
