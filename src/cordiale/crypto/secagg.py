"""Secure aggregation (Bonawitz et al. CCS 2017, SecAgg+ of Bell et al. CCS 2020): the façade.

Hand-written protocol; primitives from ``cryptography``. The state machines live in
:mod:`cordiale.crypto.secagg_client` and :mod:`cordiale.crypto.secagg_server`, the messages and
the public configuration in :mod:`cordiale.crypto.messages`. This module re-exports them and
adds two pure, in-process drivers used by the tests and the simulation:

* :func:`run_rounds` runs an epoch of rounds on ring vectors (uint32/uint64 words), and
  :func:`run_protocol` an epoch of one round;
* :func:`run_secagg_round` encodes float vectors with :class:`FixedPointCodec`, runs one round
  and decodes the sum of the survivors' inputs.

``drop_at`` maps a :class:`Stage` (or its number) to the clients that drop *at* that stage:
they receive the stage's request but never reply, and are gone for the rest of the round (a
client that dropped at stage 3 did send its masked input and may take part in the next round;
one that dropped earlier is left out of the epoch).

**Weighted averages.** Pass ``weights`` (non-negative integers) to :func:`run_secagg_round`
together with inputs that are already ``weight * update``: each client's ring vector is its
encoded weighted update followed by its weight as one exact integer word, so one secure sum
yields both ``sum w_u x_u`` (:attr:`SecAggResult.total`, within the quantisation bound) and the
exact ``sum w_u`` (:attr:`SecAggResult.total_weight`); :meth:`SecAggResult.mean` divides them.
The clip bound applies to the weighted update ``w_u x_u``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from cordiale.core.errors import ConfigError

from .fixedpoint import FixedPointCodec, choose_bits, decode_weighted, encode_weighted
from .messages import AggregateResult, SecAggConfig, Stage
from .secagg_client import SecAggClient
from .secagg_server import SecAggServer

__all__ = [
    "AggregateResult",
    "SecAggClient",
    "SecAggConfig",
    "SecAggResult",
    "SecAggServer",
    "Stage",
    "default_threshold",
    "run_protocol",
    "run_rounds",
    "run_secagg_round",
]

DropSchedule = Mapping[Stage | int, Collection[str]]
_Request = TypeVar("_Request")


@dataclass(frozen=True, eq=False)
class SecAggResult:
    """The decoded outcome of :func:`run_secagg_round`.

    ``total`` is the sum of the survivors' (clipped) inputs, shape of the inputs; it differs
    from the exact sum by at most ``quantisation_bound`` per element. ``total_weight`` is the
    exact sum of the survivors' weights (None when no weights were given).
    """

    total: np.ndarray
    survivors: tuple[str, ...]
    total_weight: int | None
    codec: FixedPointCodec
    quantisation_bound: float

    def mean(self) -> np.ndarray:
        """The weighted mean (``total / total_weight``) or the plain mean over survivors."""
        denominator = self.total_weight if self.total_weight is not None else len(self.survivors)
        if denominator == 0:
            raise ConfigError("the survivors' total weight is 0: no mean is defined")
        return self.total / denominator


def default_threshold(neighbourhood_size: int) -> int:
    """A strict majority of a closed neighbourhood, at least 2: ``max(2, size // 2 + 1)``."""
    return max(2, neighbourhood_size // 2 + 1)


def run_protocol(
    config: SecAggConfig,
    vectors: Mapping[str, np.ndarray],
    drop_at: DropSchedule | None = None,
    *,
    spare_holders: int | None = None,
) -> AggregateResult:
    """Run an epoch of one round (number ``config.epoch_id``) in-process; returns the server's
    :class:`AggregateResult`.

    ``vectors`` holds one 1-D ``config.dtype`` array of ``config.vector_length`` words per
    client of ``config.client_ids``. Raises SecAggAbort when the dropouts leave too few clients.
    ``spare_holders``: see :class:`SecAggServer` (None: every survivor is asked to unmask).
    """
    return run_rounds(config, [vectors], [drop_at], spare_holders=spare_holders)[0]


def run_rounds(
    config: SecAggConfig,
    rounds: Sequence[Mapping[str, np.ndarray]],
    drop_at: Sequence[DropSchedule | None] | None = None,
    *,
    spare_holders: int | None = None,
) -> list[AggregateResult]:
    """Run one epoch: key set-up once, then one round per item of ``rounds`` (numbered from
    ``config.epoch_id``, at most ``config.rounds`` of them), each over the clients ready for
    it; ``drop_at[i]`` is round i's schedule (stages 0 and 1 count in round 0 only).

    Each item of ``rounds`` holds a vector for (at least) every client that takes part.
    """
    for vectors in rounds:
        if not set(vectors) <= set(config.client_ids):
            raise ConfigError("run_rounds: vectors name clients that are not in the config")
    if not rounds or set(rounds[0]) != set(config.client_ids):
        raise ConfigError("the first round needs exactly one vector per client of the config")
    if len(rounds) > config.rounds:
        raise ConfigError(f"{len(rounds)} rounds given, the epoch serves {config.rounds}")
    schedules = list(drop_at or [None] * len(rounds))
    if len(schedules) != len(rounds):
        raise ConfigError("drop_at needs one schedule per round")
    clients = {c: SecAggClient(c, config) for c in config.client_ids}
    server = SecAggServer(config, spare_holders=spare_holders)
    drops = _drop_schedule(schedules[0], config.client_ids)
    adverts = [
        clients[c].advertise_keys(r)
        for c, r in _live(server.advertise_keys(), drops[Stage.ADVERTISE_KEYS])
    ]
    shares = [
        clients[c].share_keys(r)
        for c, r in _live(server.share_keys(adverts), drops[Stage.SHARE_KEYS])
    ]
    server.collect_shares(shares)
    results = []
    for i, (vectors, schedule) in enumerate(zip(rounds, schedules, strict=True)):
        drops = _drop_schedule(schedule, config.client_ids) if i else drops
        round_id = config.epoch_id + i
        members = server.ready(round_id) & set(vectors)
        masked = [
            clients[c].masked_input(r, vectors[c])
            for c, r in _live(server.masked_input(round_id, members), drops[Stage.MASKED_INPUT])
        ]
        answers = [
            clients[c].unmask(r) for c, r in _live(server.unmask(masked), drops[Stage.UNMASK])
        ]
        more = server.unmask_more(answers)  # asks others if a survivor asked was silent
        answers = [clients[c].unmask(r) for c, r in _live(more, drops[Stage.UNMASK])]
        results.append(server.aggregate(answers))
    return results


def _live(requests: Mapping[str, _Request], dropped: Collection[str]) -> list[tuple[str, _Request]]:
    """The requests of the clients that answer (the others drop at this stage)."""
    return [(c, r) for c, r in requests.items() if c not in dropped]


def run_secagg_round(
    inputs: Mapping[str, np.ndarray],
    *,
    clip: float,
    frac_bits: int = 16,
    threshold: int | None = None,
    degree: int | None = None,
    weights: Mapping[str, int] | None = None,
    drop_at: DropSchedule | None = None,
    round_id: int = 0,
    graph_seed: bytes = b"",
    bits: int | None = None,
    stochastic: bool = False,
    rng: np.random.Generator | None = None,
) -> SecAggResult:
    """Securely sum float arrays (all of one shape) of the surviving clients.

    ``clip`` and ``frac_bits`` define the :class:`FixedPointCodec`; ``bits`` defaults to the
    smallest width without overflow (:func:`choose_bits`). ``degree`` is the SecAgg+ graph
    degree (None: complete graph, the original protocol) and ``threshold`` defaults to
    :func:`default_threshold` of the smallest closed neighbourhood.
    """
    ids = sorted(inputs)
    if len(ids) < 2:
        raise ConfigError("secure aggregation needs at least 2 clients")
    shapes = {np.shape(inputs[c]) for c in ids}
    if len(shapes) != 1:
        raise ConfigError(f"all inputs must have one shape, got {sorted(shapes)}")
    (shape,) = shapes
    if weights is not None and set(weights) != set(ids):
        raise ConfigError("weights must name exactly the clients of inputs")
    max_weight = max(weights.values()) if weights else 0
    width = bits if bits is not None else choose_bits(len(ids), clip, frac_bits, max_weight)
    codec = FixedPointCodec(clip=clip, frac_bits=frac_bits, bits=width, stochastic=stochastic)
    if weights is None:
        words = {c: codec.encode(np.ravel(inputs[c]), rng=rng) for c in ids}
    else:
        words = {c: encode_weighted(codec, inputs[c], weights[c], rng=rng) for c in ids}
    k = len(ids) - 1 if degree is None else min(degree, len(ids) - 1)
    config = SecAggConfig(
        epoch_id=round_id,
        client_ids=tuple(ids),
        threshold=threshold if threshold is not None else default_threshold(k + 1),
        vector_length=int(np.prod(shape, dtype=np.int64)) + (weights is not None),
        bits=width,
        degree=degree,
        graph_seed=graph_seed,
    )
    result = run_protocol(config, words, drop_at)
    if weights is None:
        total, total_weight = codec.decode(result.total), None
    else:
        total, total_weight = decode_weighted(codec, result.total)
    return SecAggResult(
        total=total.reshape(shape),
        survivors=result.survivors,
        total_weight=total_weight,
        codec=codec,
        quantisation_bound=codec.quantisation_bound(len(result.survivors)),
    )


def _drop_schedule(
    drop_at: DropSchedule | None, client_ids: Collection[str]
) -> dict[Stage, set[str]]:
    schedule: dict[Stage, set[str]] = {stage: set() for stage in Stage}
    for stage, dropped in (drop_at or {}).items():
        try:
            key = Stage(stage)
        except ValueError:
            raise ConfigError(f"drop_at names stage {stage!r}; stages are 0..3") from None
        unknown = sorted(set(dropped) - set(client_ids))
        if unknown:
            raise ConfigError(f"drop_at names unknown clients {unknown}")
        schedule[key] |= set(dropped)
    return schedule
