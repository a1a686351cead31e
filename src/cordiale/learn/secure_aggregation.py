"""Secure aggregation of training rounds, around any strategy: hub driver and node handler.

With :attr:`FederationConfig.secure_aggregation <cordiale.learn.federation.FederationConfig>`
set, a training round runs the protocol of :mod:`cordiale.crypto` (Bonawitz et al. 2017 with the
SecAgg+ graph of Bell et al. 2020, keys kept for an epoch of rounds) over the study's transport,
in messages of stage ``"secagg"`` (:mod:`cordiale.learn.secagg_wire`):

1. at the start of an epoch only, ``advertise_keys`` (with the epoch's public parameters) and
   ``share_keys``: two key agreements per pair of neighbours, and each node's secrets for every
   round of the epoch, Shamir-shared and encrypted for its neighbours, once;
2. ``masked_input``: each node gets the training task with the round's neighbours (and, in its
   first round of the epoch, the relayed share ciphertexts); it trains
   (:func:`~cordiale.learn.tasks.train_update`), encodes its update and answers with the masked
   vector (uniformly random on its own);
3. ``unmask``: each survivor's shares of the secrets that remove the masks of the sum (the
   survivors' self-mask seeds, the dropped nodes' seal keys), of this round only.

So a round of an epoch costs two exchanges instead of one, and no key agreement or secret
sharing. The hub (:class:`SecureAggregator`) keeps the epoch for up to
:attr:`SecureAggregationConfig.rekey_every` rounds (fewer when the study ends sooner) while
every sampled site is still in it; a failed round, a site that dropped out or was not in the
epoch, or a change of the update's layout starts a new one. It unmasks the *sum*
of the survivors' inputs, divides by their total weight and hands the mean update to
:meth:`Strategy.server_update <cordiale.learn.strategies.Strategy.server_update>`, so every
strategy works unchanged: privacy by wrapping.

**What a node encodes.** Its update ``delta`` (float arrays other than the local layers,
flattened in the order of names fixed by the hub), weighted by its example count ``n``: the
vector ``[n * delta, (n / max_weight) * loss]`` in fixed point (:class:`FixedPointCodec`,
``clip`` and ``frac_bits``), followed by ``n`` as one exact word (:func:`encode_weighted`). One
secure sum thus gives ``sum n * delta``, the exact ``sum n`` and the weighted mean training loss.

**Clipping.** Each element of ``n * delta`` is clipped to ``[-clip, clip]`` before encoding.
Clipping changes the result only when it happens; a node counts the elements it clipped and
writes the count to its *local* log only (never to the hub). The default clip,
:data:`DEFAULT_CLIP` = 1000, is far above what the bundled studies produce: on Pima with an
MLP 8-32-1, SGD at lr 0.05 and sites of up to ~700 rows, ``max |n * delta|`` stays below 70
(SGD) and below 450 (Adam at lr 0.05, whose steps are bounded by ``lr`` per step and element).

**Precision.** With ``frac_bits`` = 16 each encoded value is within ``2^-17`` of its input, so
the mean update differs from the plain weighted mean by at most ``k * 2^-17 / sum n`` per
element for ``k`` survivors (about ``1e-8`` for Pima).

**Dropouts and refusals.** A node that does not answer a step is dropped by the protocol; its
update is then not in the sum (its round seeds with its neighbours are opened with the
survivors' shares of its seal key). If fewer than ``threshold`` nodes remain the round fails with
:class:`~cordiale.core.errors.SecAggAbort`. A node that refuses a request (a replayed step, a
tampered request such as one asking for both shares of a node) answers with an error reply,
which the hub records as that node's failure.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cordiale.core.errors import (
    ConfigError,
    CryptoError,
    ProtocolError,
    SecAggAbort,
    WireError,
)
from cordiale.core.messages import Content, Message
from cordiale.core.records import ArrayRecord
from cordiale.crypto import (
    FixedPointCodec,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    choose_bits,
    decode_weighted,
    default_threshold,
    encode_weighted,
)
from cordiale.crypto.messages import MAX_EPOCH_ROUNDS
from cordiale.data.local import LocalDataset
from cordiale.learn.secagg_wire import (
    REQUESTS,
    RESPONSES,
    TRAINING_STEP,
    EpochParameters,
    from_content,
    parameters_from_config,
    parameters_to_config,
    step_of,
    to_content,
)
from cordiale.learn.tasks import NodeState, train_update

__all__ = [
    "DEFAULT_CLIP",
    "DEFAULT_FRAC_BITS",
    "DEFAULT_REKEY_EVERY",
    "DEFAULT_SPARE_HOLDERS",
    "Exchange",
    "SecAggSession",
    "SecureAggregationConfig",
    "SecureAggregator",
    "SecureRoundResult",
    "run_secagg",
    "update_shapes",
]

log = logging.getLogger(__name__)

# Defaults live with the fixed-point codec (a light module the CLI can import at start-up).
from cordiale.crypto.fixedpoint import (  # noqa: E402
    DEFAULT_CLIP,
    DEFAULT_FRAC_BITS,
    DEFAULT_REKEY_EVERY,
    DEFAULT_SPARE_HOLDERS,
)

#: Sends one message of stage "secagg" per node; returns (replies by node, failures by node).
Exchange = Callable[[dict[str, Content]], tuple[dict[str, Message], dict[str, str]]]


@dataclass(frozen=True)
class SecureAggregationConfig:
    """Secure aggregation of a study's training rounds.

    ``threshold``: how many members of each node's neighbourhood must survive (None: a strict
    majority, :func:`~cordiale.crypto.default_threshold`). ``degree``: SecAgg+ neighbours per
    node (None: every other sampled node, the original protocol). ``clip``: bound on each
    element of ``n * update`` (n: the node's example count). ``frac_bits``: fixed-point
    resolution. ``rekey_every``: rounds one epoch's keys serve at most (1: fresh keys every
    round, as in the original protocol). ``spare_holders``: at unmasking, the hub asks only
    enough survivors to hold ``threshold + spare_holders`` shares of each secret (fewer
    messages; if more of them are silent it asks others, one more exchange); None asks every
    survivor.
    """

    threshold: int | None = None
    degree: int | None = None
    clip: float = DEFAULT_CLIP
    frac_bits: int = DEFAULT_FRAC_BITS
    rekey_every: int = DEFAULT_REKEY_EVERY
    spare_holders: int | None = DEFAULT_SPARE_HOLDERS

    def __post_init__(self) -> None:
        problems = []
        if self.threshold is not None and (_not_int(self.threshold) or self.threshold < 2):
            problems.append(f"threshold must be an integer >= 2 (or None); got {self.threshold!r}")
        if self.degree is not None and (_not_int(self.degree) or self.degree < 1):
            problems.append(f"neighbours must be an integer >= 1 (or None); got {self.degree!r}")
        if _not_int(self.rekey_every) or not 1 <= self.rekey_every <= MAX_EPOCH_ROUNDS:
            problems.append(
                f"rekey_every must be an integer in 1..{MAX_EPOCH_ROUNDS}; got {self.rekey_every!r}"
            )
        if self.spare_holders is not None and (
            _not_int(self.spare_holders) or self.spare_holders < 0
        ):
            problems.append(
                f"spare_holders must be an integer >= 0 (or None); got {self.spare_holders!r}"
            )
        if (
            isinstance(self.clip, bool)
            or not isinstance(self.clip, int | float)
            or not math.isfinite(self.clip)
            or self.clip <= 0
        ):
            problems.append(f"clip must be a finite positive number; got {self.clip!r}")
        if _not_int(self.frac_bits) or not 0 <= self.frac_bits <= 52:
            problems.append(f"frac_bits must be an integer in 0..52; got {self.frac_bits!r}")
        if not problems:
            try:
                FixedPointCodec(clip=float(self.clip), frac_bits=self.frac_bits, bits=64)
            except CryptoError as exc:
                problems.append(str(exc))
        if problems:
            raise ConfigError("invalid secure aggregation settings: " + "; ".join(problems))

    def to_json(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "neighbours": self.degree,
            "clip": float(self.clip),
            "frac_bits": self.frac_bits,
            "rekey_every": self.rekey_every,
            "spare_holders": self.spare_holders,
        }

    def epoch_parameters(
        self,
        first_round: int,
        nodes: Sequence[str],
        shapes: Mapping[str, tuple[int, ...]],
        max_weight: int,
        *,
        rounds: int = 1,
    ) -> EpochParameters:
        """The public parameters of an epoch of ``rounds`` rounds over ``nodes`` starting at
        ``first_round`` (ConfigError if impossible)."""
        n = len(nodes)
        if n < 2:
            raise ConfigError(f"secure aggregation needs at least 2 sites in a round; got {n}")
        if max_weight < 1:
            raise ProtocolError("no site of this round reported training examples at setup")
        k = n - 1 if self.degree is None else min(self.degree, n - 1)
        threshold = self.threshold if self.threshold is not None else default_threshold(k + 1)
        length = sum(math.prod(s) for s in shapes.values())
        try:
            bits = choose_bits(n, float(self.clip), self.frac_bits, max_weight)
            protocol = SecAggConfig(
                epoch_id=first_round,
                client_ids=tuple(nodes),
                threshold=threshold,
                vector_length=length + 2,  # the update, the loss, the weight
                bits=bits,
                degree=None if k == n - 1 else k,
                graph_seed=os.urandom(16),
                rounds=rounds,
            )
        except CryptoError as exc:
            raise ConfigError(
                f"secure aggregation over {n} sites (threshold {threshold}, {k} neighbours "
                f"each): {exc}"
            ) from None
        codec = FixedPointCodec(clip=float(self.clip), frac_bits=self.frac_bits, bits=bits)
        return EpochParameters(protocol, codec, tuple(shapes), max_weight)


def _not_int(value: object) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


def update_shapes(
    weights: ArrayRecord, local_layers: tuple[str, ...] = ()
) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a node's update: the float arrays of ``weights`` not kept local."""
    return {
        k: tuple(v.shape)
        for k, v in weights.items()
        if np.issubdtype(v.dtype, np.floating) and not (local_layers and k.startswith(local_layers))
    }


# -- hub side ------------------------------------------------------------------------------------


@dataclass
class SecureRoundResult:
    """What the hub learns from a secure round: aggregates of the survivors, nothing per node."""

    mean_update: ArrayRecord
    nodes: list[str]
    train_loss: float
    total_weight: int
    failures: dict[str, str] = field(default_factory=dict)
    privacy: dict[str, float] = field(default_factory=dict)  # epsilon each site reports spent


@dataclass
class _Epoch:
    server: SecAggServer
    params: EpochParameters


class SecureAggregator:
    """The hub's side of secure aggregation over a study's rounds; keeps an epoch's keys.

    :meth:`run_round` runs one training round. It reuses the current epoch when every sampled
    node is still in it, the update's layout and weight bound are the epoch's, and the round is
    one of the epoch's (an epoch serves ``rekey_every`` rounds, fewer if the study ends
    sooner); otherwise it first sets up fresh keys and secrets. Any failure ends the epoch.
    """

    def __init__(self, settings: SecureAggregationConfig) -> None:
        self.settings = settings
        self._epoch: _Epoch | None = None

    def run_round(
        self,
        exchange: Exchange,
        server_round: int,
        tasks: Mapping[str, Content],
        shapes: Mapping[str, tuple[int, ...]],
        *,
        max_weight: int,
        last_round: int | None = None,
    ) -> SecureRoundResult:
        """Run one training round through secure aggregation; return the survivors' mean update.

        ``tasks`` holds each sampled node's training task (weights, scaler, configuration), as
        for a plain round; ``shapes`` the names and shapes of the update
        (:func:`update_shapes`); ``max_weight`` the largest example count a node may carry;
        ``last_round`` the study's last round (None: unknown), past which an epoch is not set up.
        Raises SecAggAbort when fewer than ``threshold`` nodes survive, ConfigError when the
        settings cannot fit the round.
        """
        nodes = sorted(tasks)
        failures: dict[str, str] = {}
        epoch = self._reusable(server_round, nodes, shapes, max_weight)
        self._epoch = None  # until this round succeeds
        try:
            if epoch is None:
                left = self.settings.rekey_every
                if last_round is not None:
                    left = max(1, min(left, last_round - server_round + 1))
                params = self.settings.epoch_parameters(
                    server_round, nodes, shapes, max_weight, rounds=left
                )
                server = SecAggServer(params.protocol, spare_holders=self.settings.spare_holders)
                epoch = _Epoch(server, params)
                ready = self._set_up(exchange, epoch, failures)
            else:
                ready = frozenset(nodes)
            result, privacy = self._round(exchange, epoch, server_round, tasks, ready, failures)
        except SecAggAbort as exc:
            detail = "; ".join(f"{n}: {why}" for n, why in sorted(failures.items()))
            detail = f" (failed sites: {detail})" if detail else ""
            raise SecAggAbort(f"round {server_round}: {exc.message}{detail}") from None
        except ProtocolError as exc:
            message = f"round {server_round}: secure aggregation failed: {exc.message}"
            raise ProtocolError(message) from None
        self._epoch = epoch
        private = any("dp.mode" in c.config for c in tasks.values())
        survivors = list(result.survivors)
        for node in nodes:
            if node not in survivors and node not in failures:
                failures[node] = "left out of secure aggregation: too few live neighbours"
        return _mean_update(
            result.total, survivors, epoch, shapes, server_round, private, failures, privacy
        )

    def _reusable(
        self,
        server_round: int,
        nodes: Sequence[str],
        shapes: Mapping[str, tuple[int, ...]],
        max_weight: int,
    ) -> _Epoch | None:
        epoch = self._epoch
        if epoch is None:
            return None
        params = epoch.params
        same_layout = list(params.names) == list(shapes) and max_weight <= params.max_weight
        expected = sum(math.prod(s) for s in shapes.values()) + 2
        if not same_layout or expected != params.protocol.vector_length:
            return None
        return epoch if set(nodes) <= epoch.server.ready(server_round) else None

    def _set_up(
        self, exchange: Exchange, epoch: _Epoch, failures: dict[str, str]
    ) -> frozenset[str]:
        """Agree on the epoch's keys; returns the nodes ready for its first round."""
        server, public = epoch.server, parameters_to_config(epoch.params)
        base = Content(config=public)
        adverts = _step(exchange, "advertise_keys", server.advertise_keys(), failures, base)
        shares = _step(exchange, "share_keys", server.share_keys(adverts), failures)
        return server.collect_shares(shares)

    def _round(
        self,
        exchange: Exchange,
        epoch: _Epoch,
        server_round: int,
        tasks: Mapping[str, Content],
        members: frozenset[str],
        failures: dict[str, str],
    ) -> tuple[Any, dict[str, float]]:
        server = epoch.server
        requests = server.masked_input(server_round, members & set(tasks))
        contents = {n: to_content(TRAINING_STEP, r, tasks[n]) for n, r in requests.items()}
        ok, failed = exchange(contents)
        failures.update(failed)
        privacy = {
            n: float(m.content.metrics["privacy.epsilon"])
            for n, m in ok.items()
            if "privacy.epsilon" in m.content.metrics
        }
        masked = _replies(TRAINING_STEP, ok, server_round, failures)
        answers = _step(exchange, "unmask", server.unmask(masked), failures)
        more = server.unmask_more(answers)  # only if a site asked was silent
        answers = _step(exchange, "unmask", more, failures) if more else []
        return server.aggregate(answers), privacy


def _step(
    exchange: Exchange,
    step: str,
    requests: Mapping[str, Any],
    failures: dict[str, str],
    base: Content | None = None,
) -> list[Any]:
    """Send one protocol step's requests; the well-formed replies (others become failures)."""
    ok, failed = exchange({n: to_content(step, r, base) for n, r in requests.items()})
    failures.update(failed)
    round_id = next(iter(requests.values())).round_id if requests else 0
    return _replies(step, ok, round_id, failures)


def _replies(
    step: str, ok: Mapping[str, Message], round_id: int, failures: dict[str, str]
) -> list[Any]:
    replies = []
    for node, message in sorted(ok.items()):
        try:
            reply = from_content(RESPONSES[step], message.content)
            if (reply.sender, reply.round_id) != (node, round_id):
                raise ProtocolError("the reply names another sender or round")
        except (WireError, ProtocolError) as exc:
            failures[node] = f"{type(exc).__name__}: {exc.message}"
            continue
        replies.append(reply)
    return replies


def _mean_update(
    total: np.ndarray,
    survivors: list[str],
    epoch: _Epoch,
    shapes: Mapping[str, tuple[int, ...]],
    server_round: int,
    private: bool,
    failures: dict[str, str],
    privacy: dict[str, float],
) -> SecureRoundResult:
    """Decode the unmasked ring sum into the survivors' weighted mean update."""
    params = epoch.params
    sums, total_weight = decode_weighted(params.codec, total)
    if not 0 < total_weight <= len(survivors) * params.max_weight:
        raise ProtocolError(
            f"round {server_round}: the unmasked total weight {total_weight} is impossible for "
            f"{len(survivors)} sites: the secure sum is corrupt"
        )
    mean = sums[:-1] / total_weight
    out, offset = ArrayRecord(), 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        out[name] = mean[offset : offset + size].reshape(shape)
        offset += size
    return SecureRoundResult(
        mean_update=out,
        nodes=survivors,
        train_loss=(  # nodes under differential privacy put 0 in the loss slot: not released
            math.nan if private else float(sums[-1] * params.max_weight / total_weight)
        ),
        total_weight=total_weight,
        failures=failures,
        privacy={n: e for n, e in privacy.items() if n in survivors},
    )


# -- node side -----------------------------------------------------------------------------------


@dataclass
class SecAggSession:
    """A node's secure-aggregation state for one study: the epoch in progress, if any.

    ``clipped``: the number of elements clipped in the last round (local only, never sent).
    ``highest_masked_round``: the node never masks a second update for a round it already sent
    a masked input for, in any epoch (a hub that re-runs a round could otherwise combine two
    maskings).
    """

    client: SecAggClient | None = None
    params: EpochParameters | None = None
    clipped: int = 0
    highest_masked_round: int = -1


def run_secagg(
    node_id: str,
    ds: LocalDataset | None,
    content: Content,
    state: NodeState,
    study: str,
    server_round: int,
) -> Content:
    """Answer one secure-aggregation message at a node (the ``secagg`` stage).

    ``ds`` is needed by the training step (:data:`TRAINING_STEP`) only: the other steps carry
    protocol secrets, no task, and touch no data.

    Protocol refusals raise SecAggAbort or ProtocolError whose public message names only
    protocol steps, node ids and counts, so that the hub learns why.
    """
    step = step_of(content)
    session = state.secagg.setdefault(study, SecAggSession())
    try:
        if step == "advertise_keys":
            return _start_epoch(node_id, content, session, server_round)
        client, params = session.client, session.params
        if client is None or params is None:
            raise ProtocolError(
                f"no secure-aggregation epoch in progress at this node for step {step!r}"
            )
        request = from_content(REQUESTS[step], content)
        if request.round_id != server_round:
            raise ProtocolError(
                f"step {step!r} names round {request.round_id} in a message of round {server_round}"
            )
        if step == TRAINING_STEP:
            if ds is None:
                raise ProtocolError("the training step needs the study's dataset")
            reply: Any = _train_and_mask(ds, content, state, session, study, request)
        else:
            reply = getattr(client, step)(request)
        return to_content(step, reply)
    except SecAggAbort as exc:
        session.client = session.params = None
        raise SecAggAbort(exc.message, public_message=exc.message) from None


def _start_epoch(
    node_id: str, content: Content, session: SecAggSession, server_round: int
) -> Content:
    params = parameters_from_config(content.config)
    config = params.protocol
    if config.epoch_id != server_round:
        raise ProtocolError(
            f"secure-aggregation parameters for an epoch starting at round {config.epoch_id} in "
            f"a message of round {server_round}"
        )
    if node_id not in config.client_ids:
        raise ProtocolError("this node is not a client of the secure-aggregation epoch")
    if server_round <= session.highest_masked_round:
        raise ProtocolError(
            f"this node already sent a masked update for round {session.highest_masked_round} "
            f"of this study; it refuses an epoch starting at round {server_round}"
        )
    request = from_content(REQUESTS["advertise_keys"], content)
    client = SecAggClient(node_id, config)  # a new epoch replaces one left unfinished
    reply = client.advertise_keys(request)
    session.client, session.params = client, params
    return to_content("advertise_keys", reply)


def _train_and_mask(
    ds: LocalDataset,
    content: Content,
    state: NodeState,
    session: SecAggSession,
    study: str,
    request: Any,
) -> Any:
    """Train on the task of ``content``, encode the weighted update, mask it and send it."""
    client, params = session.client, session.params
    assert client is not None and params is not None
    server_round = request.round_id
    if not client.can_mask(server_round):
        raise ProtocolError(
            f"this node's secure-aggregation epoch does not cover round {server_round} (or it "
            "masked it already); it does not train for it"
        )
    if server_round <= session.highest_masked_round:
        raise ProtocolError(
            f"this node already sent a masked update for round {session.highest_masked_round} "
            f"of this study; it refuses to mask another for round {server_round}"
        )
    config = params.protocol
    update, outcome = train_update(ds, content, state, study)
    if sorted(params.names) != sorted(update) or len(set(params.names)) != len(params.names):
        raise ProtocolError(
            "the epoch's update layout does not name exactly the arrays of this node's update"
        )
    flat = np.concatenate([update[k].astype(np.float64).ravel() for k in params.names])
    if flat.size + 2 != config.vector_length:
        raise ProtocolError(
            f"the epoch's vector length {config.vector_length} does not fit the update "
            f"({flat.size} elements, plus the loss and the weight)"
        )
    # client-level DP needs equal weights: each site's whole contribution is bounded by the clip
    weight = 1 if content.config.get_str("dp.mode", "") == "client" else outcome.num_examples
    if weight > params.max_weight:
        raise ProtocolError("this node's example count exceeds the epoch's maximum weight")
    weighted = weight * flat
    clip = params.codec.clip
    clipped = int(np.count_nonzero(np.abs(weighted) > clip))
    # under differential privacy the loss (computed from the raw rows) is not released
    private = content.config.get_str("dp.mode", "") != ""
    loss_slot = 0.0 if private else weight / params.max_weight * outcome.loss
    if clipped:
        log.warning(
            "secure aggregation, study %s round %d: clipped %d of %d elements of the weighted "
            "update to ±%g (local information, not sent)",
            study,
            server_round,
            clipped,
            weighted.size,
            clip,
        )
    if abs(loss_slot) > clip:
        log.warning(
            "secure aggregation, study %s round %d: the training loss was clipped (local "
            "information, not sent)",
            study,
            server_round,
        )
    try:
        vector = encode_weighted(params.codec, np.append(weighted, loss_slot), weight)
    except CryptoError:
        raise ProtocolError(
            "local training produced a non-finite update; nothing was sent"
        ) from None
    reply = client.masked_input(request, vector)
    session.highest_masked_round, session.clipped = server_round, clipped
    return reply
