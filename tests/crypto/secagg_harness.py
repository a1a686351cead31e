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
    RecoverResponse,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    Stage,
    UnmaskResponse,
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
    After stage 4 the server aggregates (``results``) and the next round starts at stage 2.
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
            Stage.RECOVER: c.recover,
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
        if stage is Stage.RECOVER:
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
                Stage.UNMASK: server.recover,
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

    def revealed(self, round_id: int) -> tuple[set[str], set[str], set[frozenset[str]]]:
        """What the server received about round ``round_id``'s secrets: the nodes whose
        self-mask seed (or shares of it) it got, the nodes whose round seeds it can open (shares
        of their seal keys), and the pairs whose round seed it learnt (revealed at stage 3, or
        among the opened round seeds of a node)."""
        selves: set[str] = set()
        seed_owners: set[str] = set()
        pairs: set[frozenset[str]] = set()
        for reply in self.received:
            if reply.round_id != round_id:
                continue
            if isinstance(reply, UnmaskResponse):
                assert len(reply.self_mask_seed) == 32
                selves.add(reply.sender)
                pairs |= {frozenset((reply.sender, v)) for v in reply.seed_peers}
            elif isinstance(reply, RecoverResponse):
                assert len(reply.self_mask_shares) == len(reply.self_mask_owners)
                assert len(reply.seed_shares) == len(reply.seed_owners)
                selves |= set(reply.self_mask_owners)
                seed_owners |= set(reply.seed_owners)
        for v in seed_owners:
            pairs |= {frozenset((v, w)) for w in self.config.neighbours(v)}
        return selves, seed_owners, pairs


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
